"""Attacks on and faults of signed update bundles: one named test per attack or fault.

Every refusal must be a BundleError that names the reason, leave nothing trusted changed
(applied state, trusted metadata, the serving generation, the model store) and leave a
``bundle.refused`` entry in the audit log.

Attacks covered by other test files are not repeated here: a signature over changed bytes
and unsigned data appended to metadata (test_update_verify.py), a payload one byte long
(test_update_verify.py), a replayed older timestamp (test_update_apply.py), ``../``, ``/abs``,
NUL and non-media URLs and symlinks in the fetcher (test_update_build.py), FIFO, symlink and
hard-link members in staging (test_update_staging.py).

Metadata is edited with python-tuf's Metadata API and re-signed with the build station's
keys; after editing one role, the roles that reference it (snapshot, timestamp) are
re-issued over the new bytes, so the edit is the only defect in the bundle.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from securesystemslib.signer import CryptoSigner
from tuf.api.exceptions import DownloadError
from tuf.api.metadata import Metadata, MetaFile
from tuf.api.serialization.json import JSONSerializer
from tuf.ngclient import Updater

from appliance.errors import (
    BundleError,
    BundleExpiredError,
    BundleMismatchError,
    BundleRollbackError,
    BundleSignatureError,
    BundleTooLargeError,
)
from appliance.runtime.lora_gguf import write_lora_adapter
from appliance.updates import keys as keyring
from appliance.updates.apply import apply_bundle
from appliance.updates.build import build_bundle, load_spec
from appliance.updates.check import (
    applied_state,
    trust_root,
    verify_bundle,
)
from appliance.updates.generations import current_info
from appliance.updates.keys import DELEGATED, init_keys, load_signers, rotate_role
from appliance.updates.media import BLOCK, MEDIA_URL, MediaFetcher
from tests.ggufs import tiny_model
from tests.helpers import BUILD_PASS, bundle_spec

CLASS = "northgate"
SERIALIZER = JSONSerializer(compact=False)
PAST = dt.datetime(2021, 1, 1, tzinfo=dt.UTC)


# -- building and tampering with bundles --------------------------------------------------


def _keys(tmp_path: Path) -> Path:
    d = tmp_path / "keys"
    if not d.exists():
        init_keys(d, BUILD_PASS)
    return d


def _two_of_two(keys_dir: Path, role: str) -> None:
    """Give ``role`` a second key and a threshold of 2 (init_keys makes one key per role)."""
    ring = keyring.load_keyring(keys_dir)
    old = ring[role]
    new, files = keyring._make(keys_dir, role, 1, BUILD_PASS.encode(),
                               start=len(old.files) + len(old.retired_files) + 1)
    ring[role] = keyring.RoleKeys(role, 2, old.keys + tuple(new), old.files + tuple(files), old.retired,
                                  old.retired_files)
    keyring._save(keys_dir, ring)


def _build(tmp_path: Path, release: int, name: str, *, extra: str = "", now: dt.datetime | None = None,
           state: str = "state", expires_days: int = 30) -> Path:
    keys = _keys(tmp_path)
    spec = bundle_spec(tmp_path, release, extra)
    spec.write_text(spec.read_text().replace("expires_days = 30", f"expires_days = {expires_days}"))
    build_bundle(load_spec(spec), keys, BUILD_PASS, tmp_path / state, tmp_path / name, now=now)
    return tmp_path / name


def _md_path(media: Path, role: str) -> Path:
    if role == "timestamp":
        return media / "metadata" / "timestamp.json"
    found = sorted(media.glob(f"metadata/*.{role}.json"), key=lambda p: int(p.name.split(".")[0]))
    assert found, f"no {role} metadata in {media}"
    return found[-1]


def _signers(tmp_path: Path, role: str, *, retired: bool = False) -> list:
    return load_signers(tmp_path / "keys", role, BUILD_PASS, retired=retired)


def _metafile(path: Path, version: int) -> MetaFile:
    data = path.read_bytes()
    return MetaFile(version=version, length=len(data), hashes={"sha256": hashlib.sha256(data).hexdigest()})


def _reissue(media: Path, tmp_path: Path, role: str) -> None:
    """Re-sign what references ``role`` (snapshot for targets roles, timestamp for snapshot) over its new bytes."""
    if role in ("targets", *DELEGATED):
        path = _md_path(media, role)
        snap_path = _md_path(media, "snapshot")
        snap = Metadata.from_file(str(snap_path))
        snap.signed.meta[f"{role}.json"] = _metafile(path, snap.signed.meta[f"{role}.json"].version)
        _sign(snap, _signers(tmp_path, "snapshot"))
        snap.to_file(str(snap_path), SERIALIZER)
        role = "snapshot"
    if role == "snapshot":
        snap_path = _md_path(media, "snapshot")
        ts_path = _md_path(media, "timestamp")
        ts = Metadata.from_file(str(ts_path))
        ts.signed.snapshot_meta = _metafile(snap_path, ts.signed.snapshot_meta.version)
        _sign(ts, _signers(tmp_path, "timestamp"))
        ts.to_file(str(ts_path), SERIALIZER)


def _sign(md: Metadata, signers: list) -> None:
    md.signatures.clear()
    for s in signers:
        md.sign(s, append=True)


def _tamper(media: Path, tmp_path: Path, role: str, *, edit: Callable[[Metadata], None] | None = None,
            signers: list | None = None, raw: Callable[[dict], None] | None = None, path: Path | None = None) -> None:
    """Edit one role's metadata, sign it with ``signers`` (default: its own keys), optionally
    edit the signed JSON (``raw``), then re-issue snapshot and timestamp over the new bytes."""
    path = path or _md_path(media, role)
    md = Metadata.from_file(str(path))
    if edit:
        edit(md)
    _sign(md, _signers(tmp_path, role) if signers is None else signers)
    if raw is None:
        md.to_file(str(path), SERIALIZER)
    else:
        doc = md.to_dict()
        raw(doc)
        path.write_text(json.dumps(doc, indent=1, sort_keys=True))
    _reissue(media, tmp_path, role)


def _expire(md: Metadata) -> None:
    md.signed.expires = PAST


def _blob(media: Path, name: str = "keys.txt") -> Path:
    return next(p for p in (media / "targets").rglob(f"*.{name}"))


def _adapter(path: Path) -> Path:
    rng = np.random.default_rng(7)
    a = rng.normal(0, 0.05, size=(2, 4)).astype(np.float32)
    b = rng.normal(0, 0.05, size=(8, 2)).astype(np.float32)
    write_lora_adapter(path, architecture="llama", alpha=2.0, tensors={"blk.0.attn_q.weight": (a, b)}, name="alpha")
    return path


# -- what the appliance trusts, and the refusal checks ------------------------------------------


def _tree(d: Path) -> dict[str, bytes]:
    return {str(f.relative_to(d)): f.read_bytes() for f in sorted(d.rglob("*")) if f.is_file()} if d.is_dir() else {}


def _trust(services) -> dict:
    """Everything an attack must not change: state, trusted metadata (bytes), serving generation, models."""
    up = services.update_site().updates_dir
    store = services.store
    return {"state": applied_state(services.update_site()),
            "state_bytes": (up / "state.json").read_bytes() if (up / "state.json").is_file() else None,
            "meta_dirs": sorted(d.name for d in up.glob("meta-*")),
            "metadata": {d.name: _tree(d) for d in up.glob("meta-*")},
            "trusted_root": _tree(up / "trusted"),
            "blob_cache": sorted(_tree(up / "blobs")),
            "generation": current_info(services.settings.data_dir).generation,
            "generations": sorted(p.name for p in (services.settings.data_dir / "generations").iterdir()),
            "models": sorted((m.name, m.kind, m.sha256) for m in store.list()),
            "documents": sorted(d.doc_id for d in services.knowledge().catalog.documents())}


def _refusals(services) -> list[dict]:
    return [e.value() for e in services.audit().entries() if e.value()["kind"] == "bundle.refused"]


def _assert_refused(services, media: Path, pattern: str, *, apply: bool = True,
                    now: dt.datetime | None = None, verify: bool = True, cls: type[BundleError] = BundleError) -> str:
    """``verify_bundle`` (and ``apply_bundle``) refuse ``media`` with ``cls`` naming ``pattern``; nothing trusted
    changes."""
    olga = services.accounts().get("olga")
    before = _trust(services)
    calls: list[Callable[[], object]] = []
    if verify:
        calls.append(lambda: verify_bundle(services.update_site(), olga, media, CLASS, now=now))
    if apply:
        calls.append(lambda: apply_bundle(services.update_site(), olga, media, now=now))
    message = ""
    up = services.update_site().updates_dir
    leftovers = {sub: sorted((up / sub).iterdir()) if (up / sub).is_dir() else [] for sub in ("work", "staging")}
    for call in calls:
        refused = len(_refusals(services))
        with pytest.raises(cls, match=pattern) as exc:
            call()
        message = str(exc.value)
        after = _trust(services)
        assert after == before, "a refused bundle changed what the appliance trusts"
        if before["state"] == {"release": 0}:
            assert not after["meta_dirs"]
        for sub in ("work", "staging"):  # nothing of the refused bundle is left behind
            assert (sorted((up / sub).iterdir()) if (up / sub).is_dir() else []) == leftovers[sub], sub
        assert not list((services.settings.data_dir / "generations").glob(".building-*"))
        entries = _refusals(services)
        assert len(entries) == refused + 1
        assert entries[-1]["user"] == "olga" and entries[-1]["media"] == str(media)
        assert re.search(pattern, entries[-1]["reason"]), entries[-1]["reason"]
        assert [e.value()["kind"] for e in services.audit().entries()][-1] == "bundle.refused"
    return message


def _fresh(services, tmp_path: Path, **build) -> Path:
    """Release 1 built, its root trusted by the appliance (nothing applied yet)."""
    media = _build(tmp_path, 1, "b1", **build)
    trust_root(services.update_site(), services.accounts().get("olga"), media / "metadata" / "1.root.json")
    return media


def _applied(services, tmp_path: Path) -> Path:
    """Release 1 built, trusted and applied."""
    media = _fresh(services, tmp_path)
    result = apply_bundle(services.update_site(), services.accounts().get("olga"), media)
    assert result.generation == 1
    return media


# -- signatures and keys --------------------------------------------------------------------------


def test_signature_below_threshold_refused(appliance, tmp_path: Path) -> None:
    _two_of_two(_keys(tmp_path), "targets")
    media = _fresh(appliance, tmp_path)
    assert len(Metadata.from_file(str(_md_path(media, "targets"))).signatures) == 2
    _tamper(media, tmp_path, "targets", signers=_signers(tmp_path, "targets")[:1])
    _assert_refused(appliance, media, r"targets was signed by 1/2 keys", cls=BundleSignatureError)


def _repeated_signature(appliance, tmp_path: Path) -> Path:
    """Targets (2 of 2 keys) carrying one key's signature twice."""
    _two_of_two(_keys(tmp_path), "targets")
    media = _fresh(appliance, tmp_path)

    def repeat(doc: dict) -> None:
        assert len(doc["signatures"]) == 1
        doc["signatures"] = doc["signatures"] * 2  # the same key's signature twice

    _tamper(media, tmp_path, "targets", signers=_signers(tmp_path, "targets")[:1], raw=repeat)
    return media


def test_one_signature_repeated_to_meet_the_threshold_refused(appliance, tmp_path: Path) -> None:
    media = _repeated_signature(appliance, tmp_path)
    _assert_refused(appliance, media, r"refused: DeserializationError")


def test_one_signature_repeated_refusal_names_the_repeated_signature(appliance, tmp_path: Path) -> None:
    media = _repeated_signature(appliance, tmp_path)
    _assert_refused(appliance, media, r"(?i)(multiple|duplicate|repeated) signatures?.*keyid", apply=False)


def test_signature_by_an_unknown_key_refused(appliance, tmp_path: Path) -> None:
    media = _fresh(appliance, tmp_path)
    stranger = CryptoSigner(ed25519.Ed25519PrivateKey.generate())
    _tamper(media, tmp_path, "targets", signers=[stranger])
    _assert_refused(appliance, media, r"targets was signed by 0/1 keys", cls=BundleSignatureError)


def test_signature_by_a_retired_key_refused(appliance, tmp_path: Path) -> None:
    _applied(appliance, tmp_path)  # the old targets key was trusted once
    rotate_role(tmp_path / "keys", "targets", BUILD_PASS)
    media = _build(tmp_path, 2, "b2")
    assert (media / "metadata" / "2.root.json").is_file()  # the new root lists the new targets key only
    _tamper(media, tmp_path, "targets", signers=_signers(tmp_path, "targets", retired=True))
    _assert_refused(appliance, media, r"targets was signed by 0/1 keys", cls=BundleSignatureError)


def test_signature_stripped_refused(appliance, tmp_path: Path) -> None:
    media = _fresh(appliance, tmp_path)
    _tamper(media, tmp_path, "knowledge", signers=[])
    assert Metadata.from_file(str(_md_path(media, "knowledge"))).signatures == {}
    _assert_refused(appliance, media, r"knowledge was signed by 0/1 keys", cls=BundleSignatureError)


def test_tampering_helpers_alone_keep_a_bundle_valid(appliance, tmp_path: Path) -> None:
    """The control: re-signing a role and re-issuing snapshot and timestamp, with no edit, leaves a
    bundle that verifies; so in the tests above the edit is the only defect."""
    _two_of_two(_keys(tmp_path), "targets")
    media = _fresh(appliance, tmp_path)
    for role in ("knowledge", "targets", "snapshot", "timestamp"):
        _tamper(media, tmp_path, role)
    plan = verify_bundle(appliance.update_site(), appliance.accounts().get("olga"), media, CLASS)
    assert plan.release == 1 and len(plan.targets) == 2
    shutil.rmtree(plan.work)


# -- the root chain ---------------------------------------------------------------------------------


def test_root_version_skipped_refused(appliance, tmp_path: Path) -> None:
    _fresh(appliance, tmp_path)
    rotate_role(tmp_path / "keys", "root", BUILD_PASS)
    _build(tmp_path, 2, "b2")
    rotate_role(tmp_path / "keys", "root", BUILD_PASS)
    media = _build(tmp_path, 3, "b3")
    assert sorted(p.name for p in (media / "metadata").glob("*.root.json")) == ["1.root.json", "2.root.json",
                                                                                 "3.root.json"]
    (media / "metadata" / "2.root.json").unlink()  # root 1, then root 3
    _assert_refused(appliance, media, r"root.*(version 2|2\.root\.json|skip|missing)")


def test_root_version_skipped_in_the_file_name_refused(appliance, tmp_path: Path) -> None:
    """Root 3 offered where root 2 belongs: the version inside is checked, not only the file name."""
    _fresh(appliance, tmp_path)
    rotate_role(tmp_path / "keys", "root", BUILD_PASS)
    _build(tmp_path, 2, "b2")
    rotate_role(tmp_path / "keys", "root", BUILD_PASS)
    media = _build(tmp_path, 3, "b3")
    os.replace(media / "metadata" / "3.root.json", media / "metadata" / "2.root.json")
    _assert_refused(appliance, media, r"Expected root version 2 instead got version 3")


def _rotated_root(appliance, tmp_path: Path) -> Path:
    _fresh(appliance, tmp_path)
    rotate_role(tmp_path / "keys", "root", BUILD_PASS)
    media = _build(tmp_path, 2, "b2")
    new_root = Metadata.from_file(str(media / "metadata" / "2.root.json"))
    assert len(new_root.signatures) == 6  # the handover: 3 old keys and 3 new ones
    return media


def test_root_rotation_signed_only_by_the_new_keys_refused(appliance, tmp_path: Path) -> None:
    media = _rotated_root(appliance, tmp_path)
    _tamper(media, tmp_path, "root", path=media / "metadata" / "2.root.json", signers=_signers(tmp_path, "root"))
    _assert_refused(appliance, media, r"root was signed by 0/2 keys", cls=BundleSignatureError)


def test_root_rotation_signed_only_by_the_old_keys_refused(appliance, tmp_path: Path) -> None:
    media = _rotated_root(appliance, tmp_path)
    _tamper(media, tmp_path, "root", path=media / "metadata" / "2.root.json",
            signers=_signers(tmp_path, "root", retired=True))
    _assert_refused(appliance, media, r"root was signed by 0/2 keys", cls=BundleSignatureError)


# -- expiry and the clock ---------------------------------------------------------------------------


def test_expired_root_refused(appliance, tmp_path: Path) -> None:
    # root expires 365 days after the build, the other roles after expires_days (still valid)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(days=400)
    media = _build(tmp_path, 1, "b1", now=now, expires_days=3650)
    with pytest.raises(BundleExpiredError, match=r"1\.root\.json expired on"):  # not trusted when already expired
        trust_root(appliance.update_site(), appliance.accounts().get("olga"), media / "metadata" / "1.root.json")
    # a root trusted while it was current, expired since: every bundle signed under it is refused
    trusted = appliance.update_site().updates_dir / "trusted" / "root.json"
    trusted.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(media / "metadata" / "1.root.json", trusted)
    _assert_refused(appliance, media, r"root\.json is expired", cls=BundleExpiredError)


def test_expired_timestamp_refused(appliance, tmp_path: Path) -> None:
    media = _fresh(appliance, tmp_path)
    _tamper(media, tmp_path, "timestamp", edit=_expire)
    _assert_refused(appliance, media, r"timestamp\.json is expired", cls=BundleExpiredError)


def test_expired_snapshot_refused(appliance, tmp_path: Path) -> None:
    media = _fresh(appliance, tmp_path)
    _tamper(media, tmp_path, "snapshot", edit=_expire)
    _assert_refused(appliance, media, r"snapshot\.json is expired", cls=BundleExpiredError)


def test_expired_targets_refused(appliance, tmp_path: Path) -> None:
    media = _fresh(appliance, tmp_path)
    _tamper(media, tmp_path, "targets", edit=_expire)
    _assert_refused(appliance, media, r"targets is expired", cls=BundleExpiredError)


def test_expired_delegated_role_refused(appliance, tmp_path: Path) -> None:
    media = _fresh(appliance, tmp_path)
    _tamper(media, tmp_path, "knowledge", edit=_expire)
    _assert_refused(appliance, media, r"knowledge is expired", cls=BundleExpiredError)


def test_clock_set_back_below_the_last_trusted_time_refused(appliance, tmp_path: Path) -> None:
    _applied(appliance, tmp_path)
    media = _build(tmp_path, 2, "b2")
    _assert_refused(appliance, media, r"clock was set back", now=dt.datetime(2001, 1, 1, tzinfo=dt.UTC))
    # with the clock right again the same bundle applies
    assert apply_bundle(appliance.update_site(), appliance.accounts().get("olga"), media).release == 2


# -- rollback and mix-and-match -----------------------------------------------------------------------


def test_older_snapshot_version_than_the_trusted_one_refused(appliance, tmp_path: Path) -> None:
    b1 = _applied(appliance, tmp_path)
    b2 = _build(tmp_path, 2, "b2")
    apply_bundle(appliance.update_site(), appliance.accounts().get("olga"), b2)  # trusted: timestamp 2, snapshot 2
    old = tmp_path / "b1-replay"
    shutil.copytree(b1, old)

    def newer_timestamp(md: Metadata) -> None:
        md.signed.version = 3  # a newer timestamp, but over the old snapshot (version 1)

    _tamper(old, tmp_path, "timestamp", edit=newer_timestamp)
    _assert_refused(appliance, old, r"snapshot version must be >= 2, got version 1", cls=BundleRollbackError)


def _other_build(tmp_path: Path) -> Path:
    """Another build with the same keys and the same metadata versions, other contents."""
    return _build(tmp_path, 7, "other", state="state-other")


def _mixed_targets(appliance, tmp_path: Path) -> Path:
    media = _fresh(appliance, tmp_path)
    other = _other_build(tmp_path)
    assert (other / "metadata" / "1.targets.json").read_bytes() != (media / "metadata" / "1.targets.json").read_bytes()
    shutil.copyfile(other / "metadata" / "1.targets.json", media / "metadata" / "1.targets.json")
    return media


def test_targets_from_another_build_refused(appliance, tmp_path: Path) -> None:
    _assert_refused(appliance, _mixed_targets(appliance, tmp_path),
                    r"does not match the length and hash signed for it \(metadata mixed from another bundle\?\)",
                    cls=BundleMismatchError)


def test_targets_from_another_build_refusal_names_the_file(appliance, tmp_path: Path) -> None:
    _assert_refused(appliance, _mixed_targets(appliance, tmp_path), r"targets(\.json)?\b.*hash|hash.*targets",
                    apply=False)


def test_snapshot_from_another_build_refused(appliance, tmp_path: Path) -> None:
    media = _fresh(appliance, tmp_path)
    other = _other_build(tmp_path)
    shutil.copyfile(other / "metadata" / "1.snapshot.json", media / "metadata" / "1.snapshot.json")
    _assert_refused(appliance, media,
                    r"does not match the length and hash signed for it \(metadata mixed from another bundle\?\)",
                    cls=BundleMismatchError)


# -- payloads on the media ---------------------------------------------------------------------------


def _one_byte_short(appliance, tmp_path: Path) -> Path:
    media = _fresh(appliance, tmp_path)
    blob = _blob(media)
    blob.write_bytes(blob.read_bytes()[:-1])
    return media


def test_target_one_byte_short_refused(appliance, tmp_path: Path) -> None:
    _assert_refused(appliance, _one_byte_short(appliance, tmp_path),
                    r"Observed length \d+ does not match expected length \d+", cls=BundleMismatchError)


def test_target_one_byte_short_refusal_names_the_target(appliance, tmp_path: Path) -> None:
    _assert_refused(appliance, _one_byte_short(appliance, tmp_path), r"knowledge/security/keys\.txt", apply=False)


def test_endless_target_refused_before_it_is_read(appliance, tmp_path: Path) -> None:
    media = _fresh(appliance, tmp_path)
    os.truncate(_blob(media), 40 * 2**30)  # sparse: no disk used
    _assert_refused(appliance, media, r"is 42949672960 bytes, over the \d+ byte limit", cls=BundleTooLargeError)


class _CountingFetcher(MediaFetcher):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.read = 0

    def _fetch(self, url: str) -> Iterator[bytes]:
        for block in super()._fetch(url):
            self.read += len(block)
            yield block


def test_fetcher_reads_no_more_than_the_signed_length_of_an_endless_target(tmp_path: Path) -> None:
    media = _build(tmp_path, 1, "b1")
    blob = _blob(media)
    signed = blob.stat().st_size
    os.truncate(blob, 40 * 2**30)
    fetcher = _CountingFetcher(media)
    (tmp_path / "a" / "md").mkdir(parents=True)
    client = Updater(str(tmp_path / "a" / "md"), MEDIA_URL + "metadata/", str(tmp_path / "a" / "dl"),
                     MEDIA_URL + "targets/", fetcher=fetcher,
                     bootstrap=(media / "metadata" / "1.root.json").read_bytes())
    client.refresh()
    info = client.get_targetinfo("knowledge/security/keys.txt")
    assert info is not None and info.length == signed
    (tmp_path / "a" / "dl").mkdir()
    before = fetcher.read
    with pytest.raises(DownloadError, match="length"):
        client.download_target(info, str(tmp_path / "a" / "dl" / "keys.txt"))
    assert signed < fetcher.read - before <= signed + BLOCK  # stopped at the first block past the signed length
    assert not (tmp_path / "a" / "dl" / "keys.txt").exists()


def test_media_fetcher_refuses_paths_that_climb_or_are_not_canonical(tmp_path: Path) -> None:
    media = _build(tmp_path, 1, "b1")
    fetcher = MediaFetcher(media)
    assert b"".join(fetcher.fetch(MEDIA_URL + "metadata/timestamp.json"))  # the canonical name works
    for rel in ("metadata/..", "metadata/../metadata/timestamp.json", "targets/knowledge/..",
                "metadata/./timestamp.json", "metadata//timestamp.json", "metadata/timestamp.json/",
                "../b1/metadata/timestamp.json", "/metadata/timestamp.json", "metadata/timestamp.json\x00.txt",
                "", "metadata", "targets/knowledge"):
        with pytest.raises(DownloadError, match=r"refused path|not a regular file"):
            b"".join(fetcher.fetch(MEDIA_URL + rel))


def test_device_node_on_the_media_refused(appliance, tmp_path: Path) -> None:
    media = _fresh(appliance, tmp_path)
    node = media / "targets" / "knowledge" / "security" / "zero"
    try:
        os.mknod(node, stat.S_IFCHR | 0o600, os.makedev(1, 5))  # like /dev/zero: endless
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD")
    _assert_refused(appliance, media, r"is a device, FIFO or socket, not a file")


def test_socket_on_the_media_refused(appliance, tmp_path: Path) -> None:
    media = _fresh(appliance, tmp_path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(media / "metadata" / "s"))
        _assert_refused(appliance, media, r"metadata/s is a device, FIFO or socket, not a file")
    finally:
        sock.close()


def test_media_changed_after_verification_is_not_used(appliance, tmp_path: Path) -> None:
    media = _fresh(appliance, tmp_path)
    original = "Cipher keys are rotated monthly.\n"
    blob = _blob(media)
    assert blob.read_text() == original
    swapped: list[str] = []

    def progress(phase: str, done: int, total: int) -> None:
        if phase == "health check" and not swapped:  # verified and ingested: swap the media copy
            blob.write_text("Cipher keys are never rotated, write them on the wall.\n")
            swapped.append(phase)

    result = apply_bundle(appliance.update_site(), appliance.accounts().get("olga"), media, progress)
    assert swapped and result.generation == 1 and "never rotated" in blob.read_text()
    kb = appliance.knowledge()
    text = "".join(c.text for c in kb.catalog.chunks_of("keys.txt"))
    assert text.strip() == original.strip()
    sha = hashlib.sha256(original.encode()).hexdigest()
    kept = appliance.update_site().updates_dir / "blobs" / sha
    assert kept.read_text() == original  # the kept copy is the verified one
    assert [e.value()["kind"] for e in appliance.audit().entries()][-1] == "bundle.apply"


# -- payloads that verify but must not be applied ----------------------------------------------------------


_BAD_MODEL = """
[[models]]
name = "evil-gen"
kind = "generator"
path = "models/evil.gguf"
"""


def _bad_model(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir(exist_ok=True)
    (tmp_path / "models" / "evil.gguf").write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64 + b"garbage")


def test_malformed_gguf_model_refused(appliance, tmp_path: Path) -> None:
    _bad_model(tmp_path)
    media = _fresh(appliance, tmp_path, extra=_BAD_MODEL)
    models_before = sorted(_tree(appliance.store.root))
    # correctly signed (TUF verification passes), refused by validation, in the dry run as in the apply
    message = _assert_refused(appliance, media, r"models/evil-gen/evil\.gguf: refused, not a valid GGUF model")
    assert "staging" not in message  # the appliance's own paths are not in the message
    assert sorted(_tree(appliance.store.root)) == models_before
    assert appliance.store.list() == []


def test_adapter_for_another_base_model_refused(appliance, tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    tiny_model(tmp_path / "models" / "tiny.gguf")
    _adapter(tmp_path / "models" / "alpha.gguf")
    extra = f"""
[[models]]
name = "tiny-gen"
kind = "generator"
path = "models/tiny.gguf"

[[adapters]]
name = "alpha"
path = "models/alpha.gguf"
base_sha256 = "{'ab' * 32}"
"""
    media = _fresh(appliance, tmp_path, extra=extra)
    tiny_sha = hashlib.sha256((tmp_path / "models" / "tiny.gguf").read_bytes()).hexdigest()
    _assert_refused(appliance, media, r"adapters/alpha/alpha\.gguf: adapter 'alpha' is for the base model "
                                      rf"abababababababab…, but the generator that would serve it is {tiny_sha[:16]}…",
                    verify=False)
    assert appliance.store.list() == []


def test_metadata_persisted_only_after_every_check_passed(appliance, tmp_path: Path) -> None:
    _applied(appliance, tmp_path)
    up = appliance.update_site().updates_dir
    trusted_before = {d.name: _tree(d) for d in up.glob("meta-*")}
    state_before = (up / "state.json").read_bytes()
    assert len(trusted_before) == 1
    shutil.copytree(tmp_path / "state", tmp_path / "state-good")  # for a good build with the same versions
    _bad_model(tmp_path)
    media = _build(tmp_path, 2, "b2", extra=_BAD_MODEL)
    olga = appliance.accounts().get("olga")
    _assert_refused(appliance, media, r"models/evil-gen/evil\.gguf: refused, not a valid GGUF model")
    assert {d.name: _tree(d) for d in up.glob("meta-*")} == trusted_before  # byte for byte
    assert (up / "state.json").read_bytes() == state_before
    assert applied_state(appliance.update_site())["release"] == 1
    # its metadata versions were not trusted: a good release 2 with the very same versions
    # (timestamp 2, snapshot 2 ...) but other bytes still applies
    good = _build(tmp_path, 2, "b2-good", state="state-good")
    assert (good / "metadata" / "timestamp.json").read_bytes() != (media / "metadata" / "timestamp.json").read_bytes()
    assert apply_bundle(appliance.update_site(), olga, good).release == 2


@pytest.mark.parametrize("evil", ["knowledge/../escape.txt", "knowledge/x/..", "knowledge//abs.txt",
                                  "knowledge/x/a\x00b.txt", "knowledge/sub/../../x.txt"])
def test_a_signed_but_unsafe_target_path_is_refused(appliance, tmp_path: Path, evil: str) -> None:
    """A compromised delegated key signs a path that climbs out: refused before anything is read."""
    media = _fresh(appliance, tmp_path)

    def rename(md: Metadata) -> None:
        targets = md.signed.targets
        old = next(iter(targets))
        tf = targets.pop(old)
        tf.path = evil
        targets[evil] = tf

    role = "knowledge"
    _tamper(media, tmp_path, role, edit=rename)
    _assert_refused(appliance, media, r"unsafe target path")
