"""Signing keys of the build station: root (M of N), the top-level roles and the delegations.

``<keys dir>/keys.json`` lists, for every role, its threshold and its public keys; each
private key is a PKCS#8 file encrypted with the passphrase (``<role>-<n>.key``, mode 0600,
in a 0700 directory). Rotating a role makes new keys and keeps the old ones listed as
retired: a root rotation must be signed by the old root keys and the new ones.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from securesystemslib.signer import CryptoSigner, SSlibKey

from appliance.errors import BundleKeyError
from appliance.private_files import write_private

__all__ = ["ROLES", "DELEGATED", "RoleKeys", "init_keys", "load_keyring", "load_signers", "rotate_role",
           "MIN_PASSPHRASE_CHARS"]

TOP = ("root", "timestamp", "snapshot", "targets")
DELEGATED = ("knowledge", "adapters", "models", "policy")
ROLES = TOP + DELEGATED
MIN_PASSPHRASE_CHARS = 12
MAX_KEYRING_BYTES = 1 << 20


@dataclass(frozen=True)
class RoleKeys:
    role: str
    threshold: int
    keys: tuple[SSlibKey, ...]
    files: tuple[str, ...]
    retired: tuple[SSlibKey, ...] = ()
    retired_files: tuple[str, ...] = ()


def _check_passphrase(passphrase: str) -> bytes:
    if not isinstance(passphrase, str) or len(passphrase) < MIN_PASSPHRASE_CHARS:
        raise BundleKeyError(f"a key passphrase needs at least {MIN_PASSPHRASE_CHARS} characters")
    return passphrase.encode("utf-8")


def _write_private(path: Path, key: ed25519.Ed25519PrivateKey, passphrase: bytes) -> None:
    write_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.BestAvailableEncryption(passphrase)))


def _public(key: ed25519.Ed25519PrivateKey) -> SSlibKey:
    return CryptoSigner(key).public_key


def _save(directory: Path, ring: dict[str, RoleKeys]) -> None:
    doc = {role: {"threshold": rk.threshold,
                  "keys": [dict(k.to_dict(), keyid=k.keyid, file=f) for k, f in zip(rk.keys, rk.files, strict=True)],
                  "retired": [dict(k.to_dict(), keyid=k.keyid, file=f)
                              for k, f in zip(rk.retired, rk.retired_files, strict=True)]}
           for role, rk in ring.items()}
    tmp = directory / ".keys.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True))
    os.replace(tmp, directory / "keys.json")


def _make(directory: Path, role: str, count: int, passphrase: bytes,
          start: int = 1) -> tuple[list[SSlibKey], list[str]]:
    keys, files = [], []
    for n in range(start, start + count):
        private = ed25519.Ed25519PrivateKey.generate()
        name = f"{role}-{n}.key"
        _write_private(directory / name, private, passphrase)
        keys.append(_public(private))
        files.append(name)
    return keys, files


def init_keys(directory: Path, passphrase: str, *, root_keys: int = 3, root_threshold: int = 2) -> dict[str, RoleKeys]:
    """New keys for every role (root: ``root_threshold`` of ``root_keys``); never overwrites a key ring."""
    secret = _check_passphrase(passphrase)
    if not 1 <= root_threshold <= root_keys <= 16:
        raise BundleKeyError(f"root threshold must be from 1 to the number of root keys (1-16), got "
                             f"{root_threshold} of {root_keys}")
    if (directory / "keys.json").exists():
        raise BundleKeyError(f"{directory} already holds a key ring; rotate keys instead of replacing them")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    ring = {}
    for role in ROLES:
        count, threshold = (root_keys, root_threshold) if role == "root" else (1, 1)
        keys, files = _make(directory, role, count, secret)
        ring[role] = RoleKeys(role, threshold, tuple(keys), tuple(files))
    _save(directory, ring)
    return ring


def load_keyring(directory: Path) -> dict[str, RoleKeys]:
    path = directory / "keys.json"
    if not path.is_file():
        raise BundleKeyError(f"no key ring at {directory} (run `appliance keys init`)")
    if path.stat().st_size > MAX_KEYRING_BYTES:
        raise BundleKeyError(f"{path} is over {MAX_KEYRING_BYTES} bytes")
    try:
        doc = json.loads(path.read_text())
        ring = {}
        for role in ROLES:
            entry = doc[role]

            def keys(items: list[dict]) -> tuple[tuple[SSlibKey, ...], tuple[str, ...]]:
                loaded = tuple(SSlibKey.from_dict(i["keyid"], {k: v for k, v in i.items()
                                                              if k not in ("keyid", "file")}) for i in items)
                return loaded, tuple(str(i["file"]) for i in items)

            current, files = keys(entry["keys"])
            retired, retired_files = keys(entry.get("retired", []))
            ring[role] = RoleKeys(role, int(entry["threshold"]), current, files, retired, retired_files)
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleKeyError(f"{path} is not a valid key ring: {exc}") from exc
    return ring


def load_signers(directory: Path, role: str, passphrase: str, *, retired: bool = False) -> list[CryptoSigner]:
    """The signers of ``role`` (its current keys, or the retired ones), unlocked with ``passphrase``."""
    ring = load_keyring(directory)
    if role not in ring:
        raise BundleKeyError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
    rk = ring[role]
    out = []
    for key, name in zip(rk.retired if retired else rk.keys, rk.retired_files if retired else rk.files, strict=True):
        path = directory / name
        if path.stat().st_mode & 0o077:
            raise BundleKeyError(f"{path} is readable by others: run chmod 600 {path}")
        try:
            private = serialization.load_pem_private_key(path.read_bytes()[:65536], password=passphrase.encode())
        except (ValueError, TypeError) as exc:
            raise BundleKeyError(f"cannot unlock {path.name}: wrong passphrase or not a key file") from exc
        if not isinstance(private, ed25519.Ed25519PrivateKey) or _public(private).keyval != key.keyval:
            raise BundleKeyError(f"{path.name} does not hold the key listed for {role}")
        out.append(CryptoSigner(private, key))
    return out


def rotate_role(directory: Path, role: str, passphrase: str) -> RoleKeys:
    """New keys for ``role`` (as many as before, same threshold); the old ones become retired."""
    secret = _check_passphrase(passphrase)
    load_signers(directory, role, passphrase)  # the passphrase must unlock the keys being replaced
    ring = load_keyring(directory)
    old = ring[role]
    used = len(old.files) + len(old.retired_files)
    keys, files = _make(directory, role, len(old.keys), secret, start=used + 1)
    ring[role] = RoleKeys(role, old.threshold, tuple(keys), tuple(files), old.retired + old.keys,
                          old.retired_files + old.files)
    _save(directory, ring)
    return ring[role]
