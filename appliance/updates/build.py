"""Build a signed bundle on the build station: a TUF repository snapshot for removable media.

A spec (``bundles/*.toml``) names the payloads; the build signs, with the key ring:

* root (every version since the appliance's, so a client walks the chain),
* targets (delegating ``knowledge/``, ``adapters/``, ``models/``, ``policy/`` to their
  roles, and carrying the bundle's name, appliance class and release counter; evaluation
  sets travel under ``policy/evaluation/``: what answers must keep meeting is policy),
* the four delegated targets roles (each payload with its hashes, length and custom fields:
  labels, collection, base-model digest ...), snapshot and timestamp.

Blobs go to ``targets/`` under consistent-snapshot names (``<sha256>.<name>``). The build
state (the last metadata and its versions) lives in a state directory so that every
build's versions only grow.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import shutil
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from securesystemslib.signer import Key
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from appliance.access.labels import LevelScale, parse_labels
from appliance.errors import ApplianceError, BundleError
from appliance.runtime.model_store import MODEL_KINDS
from appliance.updates.keys import DELEGATED, load_keyring, load_signers

__all__ = ["Payload", "BundleSpec", "load_spec", "build_bundle", "MAX_SPEC_BYTES", "MAX_PAYLOAD_BYTES"]

MAX_SPEC_BYTES = 1 << 20
MAX_PAYLOAD_BYTES = 32 * 2**30
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


@dataclass(frozen=True)
class Payload:
    role: str  # knowledge | adapters | models | policy
    target: str  # the TUF target path, e.g. knowledge/facility-handbook/welcome.md
    source: Path
    custom: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BundleSpec:
    name: str
    appliance_class: str
    release: int
    expires_days: int
    payloads: tuple[Payload, ...]


def _text(table: dict, key: str, where: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value.strip():
        raise BundleError(f"{where}: {key} must be a non-empty string")
    return value.strip()


def _source(base: Path, raw: str, where: str) -> Path:
    path = (base / raw).resolve()
    if not path.is_file():
        raise BundleError(f"{where}: no such file {raw!r}")
    if path.stat().st_size > MAX_PAYLOAD_BYTES:
        raise BundleError(f"{where}: {raw!r} is over the {MAX_PAYLOAD_BYTES} byte limit")
    if not _FILE.match(path.name):
        raise BundleError(f"{where}: file name {path.name!r} must be letters, digits, . _ - only")
    return path


def load_spec(path: Path, scale: LevelScale | None = None) -> BundleSpec:
    """Read and check a bundle spec; every problem names the spec and the entry."""
    scale = scale or LevelScale()
    if not path.is_file() or path.stat().st_size > MAX_SPEC_BYTES:
        raise BundleError(f"{path}: missing or over the {MAX_SPEC_BYTES} byte limit")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: not valid TOML: {exc}") from exc
    head = doc.get("bundle")
    if not isinstance(head, dict):
        raise BundleError(f"{path}: needs a [bundle] table")
    name, cls = _text(head, "name", f"{path} [bundle]"), _text(head, "appliance_class", f"{path} [bundle]")
    if not _NAME.match(name) or not _NAME.match(cls):
        raise BundleError(f"{path} [bundle]: name and appliance_class must be a-z 0-9 . _ - (1-63)")
    release, days = head.get("release"), head.get("expires_days", 30)
    if not isinstance(release, int) or release < 1 or not isinstance(days, int) or not 1 <= days <= 3650:
        raise BundleError(f"{path} [bundle]: release must be an integer >= 1 and expires_days from 1 to 3650")
    base = path.parent
    payloads: list[Payload] = []
    for i, entry in enumerate(doc.get("knowledge", [])):
        where = f"{path} [[knowledge]] #{i + 1}"
        collection = _text(entry, "collection", where)
        if not _NAME.match(collection):
            raise BundleError(f"{where}: bad collection name {collection!r}")
        try:
            labels = parse_labels(_text(entry, "labels", where), scale)
        except ApplianceError as exc:
            raise BundleError(f"{where}: {exc}") from exc
        for raw in entry.get("paths", []):
            src = _source(base, raw, where)
            payloads.append(Payload("knowledge", f"knowledge/{collection}/{src.name}", src,
                                    {"labels": str(labels), "collection": collection}))
    for i, entry in enumerate(doc.get("adapters", [])):
        where = f"{path} [[adapters]] #{i + 1}"
        adapter, base_sha = _text(entry, "name", where), _text(entry, "base_sha256", where)
        if not _NAME.match(adapter) or not re.fullmatch(r"[0-9a-f]{64}", base_sha):
            raise BundleError(f"{where}: name must be a-z 0-9 . _ - and base_sha256 64 hex digits")
        src = _source(base, _text(entry, "path", where), where)
        payloads.append(Payload("adapters", f"adapters/{adapter}/{src.name}", src,
                                {"name": adapter, "base_sha256": base_sha}))
    for i, entry in enumerate(doc.get("models", [])):
        where = f"{path} [[models]] #{i + 1}"
        model, kind = _text(entry, "name", where), _text(entry, "kind", where)
        if not _NAME.match(model) or kind not in MODEL_KINDS:
            raise BundleError(f"{where}: name must be a-z 0-9 . _ - and kind {', '.join(MODEL_KINDS)}")
        src = _source(base, _text(entry, "path", where), where)
        payloads.append(Payload("models", f"models/{model}/{src.name}", src, {"name": model, "kind": kind}))
    for i, entry in enumerate(doc.get("evaluation", [])):  # evaluation sets travel with the policy
        where = f"{path} [[evaluation]] #{i + 1}"
        set_name, description = _text(entry, "name", where), entry.get("description", "")
        if not _NAME.match(set_name) or not isinstance(description, str) or len(description) > 500:
            raise BundleError(f"{where}: name must be a-z 0-9 . _ - and description text of at most 500 characters")
        src = _source(base, _text(entry, "path", where), where)
        payloads.append(Payload("policy", f"policy/evaluation/{src.name}", src,
                                {"name": set_name, "description": description}))
    if "policy" in doc:
        where = f"{path} [policy]"
        src = _source(base, _text(doc["policy"], "path", where), where)
        payloads.append(Payload("policy", f"policy/access/{src.name}", src, {}))
    targets = [p.target for p in payloads]
    dupes = sorted({t for t in targets if targets.count(t) > 1})
    folded = [t.lower() for t in targets]
    if dupes or len(set(folded)) != len(folded):
        raise BundleError(f"{path}: two payloads share a target name (or differ only in case): {dupes or targets}")
    return BundleSpec(name, cls, release, days, tuple(payloads))



def _metafile(path: Path, version: int) -> MetaFile:
    """A reference with length and hash, so metadata from another bundle cannot be mixed in."""
    data = path.read_bytes()
    return MetaFile(version=version, length=len(data), hashes={"sha256": hashlib.sha256(data).hexdigest()})


def _versions(state: Path) -> dict[str, int]:
    f = state / "versions.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def build_bundle(spec: BundleSpec, keys_dir: Path, passphrase: str, state: Path, out: Path,
                 now: dt.datetime | None = None, delta: bool = False) -> dict:
    """Sign and write the bundle to ``out`` (a new directory); returns a summary.

    The metadata always lists every payload (the complete desired state). With ``delta``
    the blobs an earlier build from this state already shipped are left out: for
    appliances that applied every earlier release (others refuse it, naming the blob).
    """
    if out.exists():
        raise BundleError(f"{out} already exists: a bundle is written to a new directory")
    now = now or dt.datetime.now(dt.UTC).replace(microsecond=0)
    expires = now + dt.timedelta(days=spec.expires_days)
    ring = load_keyring(keys_dir)
    versions = _versions(state)
    if spec.release <= versions.get("release", 0):
        raise BundleError(f"release {spec.release} is not above the last built release {versions['release']}")
    state.mkdir(parents=True, exist_ok=True)
    serializer = JSONSerializer(compact=False)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if out.parent.exists() else None))
    try:
        md, tg = tmp / "metadata", tmp / "targets"
        md.mkdir()
        tg.mkdir()
        # root: a new version when the root or top-level keys changed since the last build
        key_ids = {r: [k.keyid for k in ring[r].keys] for r in ("root", "timestamp", "snapshot", "targets")}
        root_version = versions.get("root", 0)
        if versions.get("root_keys") != key_ids or not (state / f"{root_version}.root.json").is_file():
            root_version += 1
            root = Metadata(Root(version=root_version, expires=now + dt.timedelta(days=365), consistent_snapshot=True))
            for role in ("root", "timestamp", "snapshot", "targets"):
                for k in ring[role].keys:
                    root.signed.add_key(k, role)
                root.signed.roles[role].threshold = ring[role].threshold
            signers = load_signers(keys_dir, "root", passphrase)
            if root_version > 1 and ring["root"].retired:  # the handover: the old root signs the new one too
                signers += load_signers(keys_dir, "root", passphrase, retired=True)
            for s in signers:
                root.sign(s, append=True)
            root.to_file(str(state / f"{root_version}.root.json"), serializer)
        for n in range(1, root_version + 1):
            shutil.copyfile(state / f"{n}.root.json", md / f"{n}.root.json")
        # delegated roles: the payloads, each with hashes, length and its custom fields
        meta: dict[str, MetaFile] = {}
        delegated_versions: dict[str, int] = {}
        shipped = set(json.loads((state / "shipped.json").read_text())) if (state / "shipped.json").is_file() else set()
        carried: set[str] = set()
        for role in DELEGATED:
            entries = {}
            for p in (x for x in spec.payloads if x.role == role):
                with open(p.source, "rb") as fh:
                    tf = TargetFile.from_data(p.target, fh, ["sha256"])
                tf.unrecognized_fields["custom"] = p.custom
                entries[p.target] = tf
                if delta and tf.hashes["sha256"] in shipped:
                    continue
                blob = tg / Path(p.target).parent / f"{tf.hashes['sha256']}.{Path(p.target).name}"
                blob.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p.source, blob)
                carried.add(tf.hashes["sha256"])
            v = versions.get(role, 0) + 1
            delegated_versions[role] = v
            md_role = Metadata(Targets(version=v, expires=expires, targets=entries))
            for s in load_signers(keys_dir, role, passphrase):
                md_role.sign(s, append=True)
            md_role.to_file(str(md / f"{v}.{role}.json"), serializer)
            meta[f"{role}.json"] = _metafile(md / f"{v}.{role}.json", v)
        tv = versions.get("targets", 0) + 1
        roles = {r: DelegatedRole(r, [k.keyid for k in ring[r].keys], ring[r].threshold, True,
                                  paths=[f"{r}/*/*"]) for r in DELEGATED}
        keys: dict[str, Key] = {k.keyid: k for r in DELEGATED for k in ring[r].keys}
        top = Metadata(Targets(version=tv, expires=expires, delegations=Delegations(keys, roles),
                               unrecognized_fields={"x-appliance": {"bundle": spec.name, "class": spec.appliance_class,
                                                                    "release": spec.release}}))
        for s in load_signers(keys_dir, "targets", passphrase):
            top.sign(s, append=True)
        top.to_file(str(md / f"{tv}.targets.json"), serializer)
        meta["targets.json"] = _metafile(md / f"{tv}.targets.json", tv)
        sv = versions.get("snapshot", 0) + 1
        snap = Metadata(Snapshot(version=sv, expires=expires, meta=meta))
        for s in load_signers(keys_dir, "snapshot", passphrase):
            snap.sign(s, append=True)
        snap.to_file(str(md / f"{sv}.snapshot.json"), serializer)
        tsv = versions.get("timestamp", 0) + 1
        ts = Metadata(Timestamp(version=tsv, expires=expires, snapshot_meta=_metafile(md / f"{sv}.snapshot.json", sv)))
        for s in load_signers(keys_dir, "timestamp", passphrase):
            ts.sign(s, append=True)
        ts.to_file(str(md / "timestamp.json"), serializer)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    new_versions = {"root": root_version, "root_keys": key_ids, "targets": tv, "snapshot": sv, "timestamp": tsv,
                    "release": spec.release, **delegated_versions}
    (state / "versions.json").write_text(json.dumps(new_versions, indent=2))
    (state / "shipped.json").write_text(json.dumps(sorted(shipped | carried)))
    return {"bundle": spec.name, "release": spec.release, "class": spec.appliance_class, "root_version": root_version,
            "payloads": len(spec.payloads), "carried": len(carried), "expires": expires.isoformat(), "out": str(out)}
