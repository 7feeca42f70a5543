"""Signed checkpoints: C2SP tlog-checkpoint bodies in C2SP signed notes, with Ed25519.

A checkpoint commits the appliance to "log <origin> had <size> entries with this root".
An officer keeps the last one taken away; the next export must be consistent with it,
so entries can be added but never changed or dropped unnoticed. Parsing is strict
(UTF-8, no control characters, canonical numbers and base64) and the signature is
checked before the body is trusted. All but the key-file helpers at the bottom work on
bytes and do no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from appliance.audit.merkle import EMPTY_ROOT, HASH_SIZE, verify_consistency
from appliance.errors import AuditError, AuditVerifyError, CheckpointError
from appliance.private_files import write_private

__all__ = [
    "MAX_CHECKPOINT_BYTES", "Checkpoint", "Signer", "Verifier", "generate_key", "key_id",
    "load_signer", "open_checkpoint", "same_tree", "verifier_from_vkey",
]

MAX_CHECKPOINT_BYTES = 1 << 20
MAX_SIGNATURES = 100  # the spec asks verifiers to accept at least 16
ED25519 = 0x01  # signed-note signature type
_DASH = "\u2014 "
_SIZE = re.compile(r"0|[1-9][0-9]{0,19}")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")  # C0 but newline, DEL, C1


def key_id(name: str, public_key: bytes) -> bytes:
    """Signed-note key ID: SHA-256(name || 0x0A || 0x01 || public key)[:4]."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([ED25519]) + public_key).digest()[:4]


class Verifier:
    """A trusted log key: a key name and a 32-byte Ed25519 public key."""

    def __init__(self, name: str, public_key: bytes) -> None:
        if not name or "+" in name or any(ch.isspace() for ch in name) or _CONTROL.search(name):
            raise CheckpointError(f"key name {name!r} must be non-empty, without spaces, '+' or control characters")
        if len(public_key) != 32:
            raise CheckpointError(f"Ed25519 public key for {name} is {len(public_key)} bytes, expected 32")
        self.name, self.public_key = name, bytes(public_key)
        self.key_id = key_id(name, self.public_key)
        self._key = ed25519.Ed25519PublicKey.from_public_bytes(self.public_key)  # any 32 bytes load

    @property
    def vkey(self) -> str:
        """The verifier key string ``<name>+<hex key ID>+<base64(0x01 || public key)>``."""
        b64 = base64.b64encode(bytes([ED25519]) + self.public_key).decode()
        return f"{self.name}+{self.key_id.hex()}+{b64}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        """True if ``signature`` is this key's Ed25519 signature of ``message``."""
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


class Signer:
    """The appliance's log key: an Ed25519 private key and its key name."""

    def __init__(self, name: str, private_key: ed25519.Ed25519PrivateKey) -> None:
        self._key = private_key
        self.verifier = Verifier(name, private_key.public_key().public_bytes_raw())
        self.name, self.key_id, self.vkey = name, self.verifier.key_id, self.verifier.vkey

    def sign(self, message: bytes) -> bytes:
        """The raw 64-byte Ed25519 signature of ``message``."""
        return self._key.sign(message)


def verifier_from_vkey(vkey: str) -> Verifier:
    """Parse a verifier key string (as printed by :attr:`Signer.vkey`) and check its key ID."""
    name, hex_id, public_key = _key_fields(vkey.strip(), "verifier key")
    verifier = Verifier(name, public_key)
    if verifier.key_id.hex() != hex_id:
        raise CheckpointError(f"verifier key for {name}: key ID {hex_id} does not match the key")
    return verifier


def _key_fields(text: str, what: str) -> tuple[str, str, bytes]:
    """Split the signed-note key encoding ``<name>+<hex key ID>+<base64(0x01 || 32 bytes)>``."""
    parts = text.split("+", 2)  # the base64 key may itself contain "+"
    if len(parts) != 3 or not re.fullmatch(r"[0-9a-f]{8}", parts[1]):
        raise CheckpointError(f"{what} is not <name>+<8 hex digits>+<base64 key>")
    raw = _b64(parts[2], what)
    if len(raw) != 33 or raw[0] != ED25519:
        raise CheckpointError(f"{what} does not hold a type 0x01 (Ed25519) 32-byte key")
    return parts[0], parts[1], raw[1:]


@dataclass(frozen=True)
class Checkpoint:
    """A tree head: the log's origin, its size and the RFC 6962 root at that size."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for what, line in [("origin", self.origin), *(("extension line", e) for e in self.extensions)]:
            if not line or "\n" in line or _CONTROL.search(line):
                raise CheckpointError(f"{what} {line!r} must be one non-empty line without control characters")
        if not 0 <= self.size < 2**64:
            raise CheckpointError(f"tree size {self.size} is not between 0 and 2**64 - 1")
        if len(self.root) != HASH_SIZE:
            raise CheckpointError(f"root hash is {len(self.root)} bytes, expected {HASH_SIZE}")

    def body(self) -> bytes:
        """The note text that is signed."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode(), *self.extensions]
        return ("\n".join(lines) + "\n").encode()

    def sign(self, signer: Signer) -> bytes:
        """The complete signed note."""
        text = self.body()
        sig = base64.b64encode(signer.key_id + signer.sign(text)).decode()
        return text + f"\n{_DASH}{signer.name} {sig}\n".encode()


def open_checkpoint(
    note: bytes, verifier: Verifier, max_bytes: int = MAX_CHECKPOINT_BYTES, origin: str | None = None
) -> Checkpoint:
    """Check the signature on ``note`` by ``verifier``, then parse the checkpoint it signs.

    Signatures by other keys are ignored (that allows key rotation and witnesses); a
    signature that claims to be by ``verifier`` and fails is rejected outright. If
    ``origin`` is given the checkpoint must be for that log.
    """
    if len(note) > max_bytes:
        raise CheckpointError(f"checkpoint is {len(note)} bytes, above the limit of {max_bytes}")
    try:
        text = bytes(note).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"checkpoint is not valid UTF-8 (byte {exc.start})") from exc
    bad = _CONTROL.search(text)
    if bad:
        raise CheckpointError(f"checkpoint contains control character U+{ord(bad[0]):04X} at character {bad.start()}")
    split = text.rfind("\n\n")
    if split < 0 or split + 2 == len(text) or not text.endswith("\n"):
        raise CheckpointError("checkpoint has no blank line followed by signature lines")
    body, sig_lines = text[: split + 1], text[split + 2 : -1].split("\n")
    if len(sig_lines) > MAX_SIGNATURES:
        raise CheckpointError(f"checkpoint has {len(sig_lines)} signatures, more than {MAX_SIGNATURES}")
    signed = False
    for n, line in enumerate(sig_lines, 1):
        name, sig = _signature_line(line, n)
        if name != verifier.name or sig[:4] != verifier.key_id:
            continue  # someone else's key: ignored, as the spec requires
        if len(sig) != 4 + 64 or not verifier.verify(body.encode(), sig[4:]):
            raise CheckpointError(f"signature {n} by {name} does not verify: the checkpoint was altered")
        signed = True
    if not signed:
        raise CheckpointError(f"checkpoint is not signed by {verifier.name}")
    checkpoint = _parse_body(body)
    if origin is not None and checkpoint.origin != origin:
        raise CheckpointError(f"checkpoint is for log {checkpoint.origin!r}, expected {origin!r}")
    return checkpoint


def same_tree(older: Checkpoint, newer: Checkpoint, proof: Sequence[bytes] = ()) -> None:
    """Check that ``newer`` describes the same append-only log as ``older``, grown or not.

    Equal sizes need equal roots: two signed roots for one size prove the log forked.
    A larger size needs a consistency proof; a smaller one is a rollback.
    """
    if older.origin != newer.origin:
        raise CheckpointError(f"checkpoints are for different logs: {older.origin!r} and {newer.origin!r}")
    if newer.size < older.size:
        raise CheckpointError(f"log {older.origin} shrank from {older.size} to {newer.size} entries")
    if older.size == newer.size and older.root != newer.root:
        raise AuditVerifyError(f"log {older.origin} forked: two different roots signed for size {older.size}")
    if older.size == 0:  # every tree extends the empty one; no proof exists or is needed
        if older.root != EMPTY_ROOT or proof:
            raise AuditVerifyError(f"log {older.origin}: a checkpoint of size 0 must have the empty-tree root")
        return
    verify_consistency(older.size, newer.size, list(proof), older.root, newer.root)


def _parse_body(body: str) -> Checkpoint:
    lines = body[:-1].split("\n")
    if len(lines) < 3:
        raise CheckpointError("checkpoint body needs origin, tree size and root hash lines")
    origin, size, root_b64, *extensions = lines
    if not _SIZE.fullmatch(size):
        raise CheckpointError(f"checkpoint tree size {size!r} is not a decimal number without leading zeros")
    root = _b64(root_b64, "checkpoint root hash")
    if len(root) != HASH_SIZE:
        raise CheckpointError(f"checkpoint root hash is {len(root)} bytes, expected {HASH_SIZE}")
    return Checkpoint(origin, int(size), root, tuple(extensions))


def _signature_line(line: str, n: int) -> tuple[str, bytes]:
    fields = line[len(_DASH) :].split(" ") if line.startswith(_DASH) else []
    if len(fields) != 2 or not fields[0]:
        raise CheckpointError(f"signature line {n} is not '— <key name> <base64 signature>'")
    sig = _b64(fields[1], f"signature {n}")
    if len(sig) < 5:
        raise CheckpointError(f"signature {n} is too short to hold a key ID and a signature")
    return fields[0], sig


def _b64(text: str, what: str) -> bytes:
    """Strict standard base64: the only accepted spelling is the one we would write."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CheckpointError(f"{what} is not valid base64") from exc
    if base64.b64encode(raw).decode() != text:
        raise CheckpointError(f"{what} is not canonical base64")
    return raw


# -- key files (the only code here that touches the filesystem) ---------------------------

_SKEY_PREFIX = "PRIVATE+KEY+"
_MAX_KEY_FILE = 4096


def generate_key(path: Path, name: str) -> Signer:
    """Create a new log key at ``path`` (mode 0600, in a 0700 directory); never overwrite one.

    The file holds the signed-note private key string ``PRIVATE+KEY+<name>+<hex key
    ID>+<base64(0x01 || seed)>``, so the name travels with the key. A 0600 temp file is
    renamed into place: a crash never leaves a partial or briefly readable key.
    """
    path = Path(path)
    if path.exists():
        raise AuditError(f"key file {path} already exists; load it instead of replacing the log key")
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
        os.chmod(path.parent, 0o700)
    private_key = ed25519.Ed25519PrivateKey.generate()
    signer, seed = Signer(name, private_key), private_key.private_bytes_raw()
    text = f"{_SKEY_PREFIX}{name}+{signer.key_id.hex()}+{base64.b64encode(bytes([ED25519]) + seed).decode()}\n"
    try:
        write_private(path, text.encode("ascii"), exclusive=True)
    except FileExistsError as exc:  # another process created it first
        raise AuditError(f"key file {path} already exists; load it instead of replacing the log key") from exc
    return signer


def load_signer(path: Path) -> Signer:
    """Load the log key written by :func:`generate_key`; refuse a file others can read."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise AuditError(f"cannot open key file {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode & 0o777
        if mode & 0o077:
            raise AuditError(f"key file {path} has mode {mode:04o}, readable by others: run chmod 600 {path}")
        text = f.read(_MAX_KEY_FILE).decode("ascii", "replace").strip()
    if not text.startswith(_SKEY_PREFIX):
        raise AuditError(f"key file {path} does not start with {_SKEY_PREFIX}")
    try:
        name, hex_id, seed = _key_fields(text[len(_SKEY_PREFIX) :], f"key file {path}")
        signer = Signer(name, ed25519.Ed25519PrivateKey.from_private_bytes(seed))
    except CheckpointError as exc:
        raise AuditError(str(exc)) from exc
    if signer.key_id.hex() != hex_id:
        raise AuditError(f"key file {path}: key ID {hex_id} does not match the key")
    return signer
