"""Verify a bundle on the appliance and say what applying it would change (a dry run).

Order: every member of the bundle is checked (unsafe members refused) and its metadata
copied from the media into staging; the TUF client (python-tuf) verifies the staged
metadata against the appliance's trusted root and its last applied metadata (signatures
and thresholds, root chain, expiry, versions, snapshot/targets consistency) in a scratch
copy, then copies every payload from the media into staging, checking its length and
hash as it reads (a payload the appliance already holds is re-checked and used instead);
only verified bytes are parsed. The bundle must be for this appliance class
and carry a higher release than the one applied. Nothing the appliance trusts or serves
is changed: the trusted metadata is only replaced by a successful apply.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.ngclient import Updater

from appliance.access.accounts import Account
from appliance.errors import (
    ApplianceError,
    BundleError,
    BundleExpiredError,
    BundleMismatchError,
    BundleRollbackError,
    BundleSignatureError,
    UnknownModelError,
)
from appliance.updates.keys import DELEGATED
from appliance.updates.media import MEDIA_URL, MediaFetcher, copy_verified
from appliance.updates.site import UpdateSite
from appliance.updates.staging import stage

__all__ = ["Plan", "PlannedTarget", "Progress", "trust_root", "verify_bundle", "applied_state",
           "trusted_metadata", "doc_ids_of", "named_copy", "blob_cache", "same_target"]

MAX_ROOT_BYTES = 1 << 20
# what the build station writes; a signed path outside it (``..``, ``/abs``, NUL ...) is refused
_TARGET = re.compile(r"(knowledge|adapters|models|policy)/[a-z0-9][a-z0-9._-]{0,62}/[A-Za-z0-9][A-Za-z0-9._-]{0,200}")
CLOCK_SKEW = dt.timedelta(minutes=10)


@dataclass(frozen=True)
class PlannedTarget:
    path: str
    role: str
    length: int
    sha256: str
    custom: dict
    verified_file: Path


@dataclass
class Plan:
    bundle: str
    appliance_class: str
    release: int
    targets: list[PlannedTarget]
    add: list[str] = field(default_factory=list)
    replace: list[str] = field(default_factory=list)  # documents already present (re-ingested if changed)
    revoke: list[str] = field(default_factory=list)  # documents of the bundle's collections it no longer lists
    work: Path | None = None  # the verified metadata and payloads (for apply)
    targets_sha256: str = ""  # digest of the signed targets metadata: the same bundle has the same
    already_applied: bool = False  # this very bundle is the last one applied: applying it again does nothing
    docs: dict[str, list[str]] = field(default_factory=dict)  # knowledge target path -> its document ids
    unchanged_targets: set[str] = field(default_factory=set)  # applied as they are by the serving generation
    checked: Any = None  # payloads.Checked: the validated models, adapters and policy
    parsed: dict[str, list] = field(default_factory=dict)  # corpus target path -> its parsed documents

    def summary(self) -> dict:
        return {"bundle": self.bundle, "class": self.appliance_class, "release": self.release,
                "targets": len(self.targets), "add": self.add, "replace": self.replace, "revoke": self.revoke,
                **({"already_applied": True} if self.already_applied else {}),
                "models": [t.path for t in self.targets if t.role == "models"],
                "adapters": [t.path for t in self.targets if t.role == "adapters"],
                "policy": [t.path for t in self.targets if t.role == "policy"]}


def applied_state(site: UpdateSite) -> dict:
    """The high-water mark of applied bundles: release, trusted metadata set, last trusted time.

    A rollback of generations never lowers it: a rolled-back bundle cannot be replayed.
    """
    f = site.updates_dir / "state.json"
    return json.loads(f.read_text()) if f.is_file() else {"release": 0}


def trusted_metadata(site: UpdateSite) -> Path | None:
    """The directory of metadata the last applied bundle left, or None before the first."""
    name = applied_state(site).get("metadata")
    return site.updates_dir / name if name else None


def _refusal(exc: Exception) -> type[BundleError]:
    """The bundle error class for a TUF client error."""
    if isinstance(exc, tuf_errors.ExpiredMetadataError):
        return BundleExpiredError
    if isinstance(exc, tuf_errors.BadVersionNumberError):
        return BundleRollbackError
    if isinstance(exc, tuf_errors.UnsignedMetadataError):
        return BundleSignatureError
    if isinstance(exc, (tuf_errors.LengthOrHashMismatchError, tuf_errors.DownloadLengthMismatchError)):
        return BundleMismatchError
    return BundleError


def _check_clock(site: UpdateSite, now: dt.datetime) -> None:
    last = applied_state(site).get("last_trusted_time")
    if last and now < dt.datetime.fromisoformat(last) - CLOCK_SKEW:
        raise BundleError(f"the appliance clock reads {now.isoformat(timespec='seconds')}, before the last trusted "
                          f"time {last}: the clock was set back; correct it before applying bundles")


def trust_root(site: UpdateSite, account: Account, root_file: Path) -> str:
    """Provision the appliance's first trusted root (an officer, once); returns its key ids."""
    by = account  # authorized by the caller (appliance.app.updates)
    target = site.updates_dir / "trusted" / "root.json"
    if target.exists():
        raise BundleError("a trusted root is already provisioned; new roots arrive inside signed bundles")
    if not root_file.is_file() or root_file.stat().st_size > MAX_ROOT_BYTES:
        raise BundleError(f"{root_file}: missing or over {MAX_ROOT_BYTES} bytes")
    data = root_file.read_bytes()
    try:
        md = Metadata[Root].from_bytes(data)
        md.signed.verify_delegate("root", md.signed_bytes, md.signatures)  # signed by its own threshold
    except Exception as exc:  # noqa: BLE001 - any parse or signature failure is a refusal
        raise BundleError(f"{root_file.name} is not a valid, self-signed TUF root: {exc}") from exc
    if md.signed.is_expired():
        raise BundleExpiredError(f"{root_file.name} expired on {md.signed.expires.isoformat()}: ask the build station "
                          "for a current root")
    site.audit().record("bundle.trust_root", by.name, version=md.signed.version,
                            keyids=sorted(md.signed.roles["root"].keyids))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(target)
    return ",".join(sorted(md.signed.roles["root"].keyids))


def _bootstrap(site: UpdateSite) -> bytes:
    up = site.updates_dir
    last = trusted_metadata(site)
    trusted = up / "trusted" / "root.json"
    if last is not None and (last / "root.json").is_file():
        return (last / "root.json").read_bytes()
    if trusted.is_file():
        return trusted.read_bytes()
    raise BundleError("no trusted root: an officer must first run `appliance bundle trust ROOT.json`")


Progress = Callable[[str, int, int], None]  # phase, done, total


def _serving_or_refuse(site: UpdateSite, name: str, release: int, digest: str) -> None:
    """The last applied bundle again: a no-op if its generation serves; after a rollback, say how to return."""
    from appliance.updates.generations import current_info, list_generations

    data = site.data_dir
    if current_info(data).targets_sha256 == digest:
        return
    kept = [g.generation for g in list_generations(data) if g.targets_sha256 == digest]
    if kept:
        raise BundleRollbackError(f"bundle {name!r} release {release} was applied and then rolled back from: "
                                  f"serve it again with `appliance bundle rollback --to {kept[-1]}`")
    raise BundleRollbackError(f"bundle {name!r} release {release} was applied earlier and its generation is no "
                              "longer kept: a newer release is needed")


def _mismatched(md: Path) -> str:
    """Which staged metadata file differs from the length and hash its referrer signed (for the message)."""
    try:
        ts = Metadata[Timestamp].from_file(str(md / "timestamp.json")).signed
        refs = {f"{ts.snapshot_meta.version}.snapshot.json": ts.snapshot_meta}
        snap_file = md / f"{ts.snapshot_meta.version}.snapshot.json"
        if snap_file.is_file():
            snap = Metadata[Snapshot].from_file(str(snap_file)).signed
            refs.update({f"{m.version}.{name}": m for name, m in snap.meta.items()})
        for name, meta in refs.items():
            f = md / name
            if f.is_file():
                try:
                    meta.verify_length_and_hashes(f.read_bytes())
                except tuf_errors.LengthOrHashMismatchError:
                    return name
    except Exception:  # noqa: BLE001 - only for a better message
        pass
    return "a metadata file"


def verify_bundle(site: UpdateSite, account: Account, media: Path, appliance_class: str,
                  progress: Progress | None = None, now: dt.datetime | None = None) -> Plan:
    """Verify ``media`` fully and return the plan; raises BundleError with the reason if refused."""
    by = account  # authorized by the caller (appliance.app.updates)
    up = site.updates_dir
    token = secrets.token_hex(6)
    staged = up / "staging" / token  # the media's metadata, copied
    work = up / "staging" / f"{token}.work"  # the verified metadata and payloads
    audit = site.audit()
    step = progress or (lambda phase, done, total: None)
    try:
        _check_clock(site, now or dt.datetime.now(dt.UTC))
        root = _bootstrap(site)
        step("staging", 0, 1)
        stage(media, staged, progress=lambda done, total: step("staging", done, total), copy_targets=False)
        (work / "metadata").mkdir(parents=True)
        (work / "targets").mkdir()
        last_md = trusted_metadata(site)
        if last_md is not None and last_md.is_dir():  # the last applied metadata: versions may only grow from it
            shutil.copytree(last_md, work / "metadata", dirs_exist_ok=True)
        fetcher = MediaFetcher(staged, targets_root=media)
        updater = Updater(str(work / "metadata"), MEDIA_URL + "metadata/", str(work / "targets"),
                          MEDIA_URL + "targets/", fetcher=fetcher, bootstrap=root)
        try:
            step("verifying", 0, 1)
            try:
                updater.refresh()
            except tuf_errors.LengthOrHashMismatchError as exc:
                raise BundleMismatchError(f"refused: {_mismatched(staged / 'metadata')} does not match the length and "
                                          f"hash signed for it (metadata mixed from another bundle?): {exc}") from exc
            reached = Metadata[Root].from_file(str(work / "metadata" / "root.json")).signed.version
            offered = [int(m.group(1)) for f in (staged / "metadata").iterdir()
                       if (m := re.fullmatch(r"(\d{1,9})\.root\.json", f.name))]
            if offered and max(offered) > reached:
                raise BundleSignatureError(f"refused: the media offers root version {max(offered)} but the chain "
                                           f"of roots stops at version {reached} (root version {reached + 1} is "
                                           "missing or invalid)")
            targets_bytes = (work / "metadata" / "targets.json").read_bytes()
            head = Metadata.from_bytes(targets_bytes).signed
            info = head.unrecognized_fields.get("x-appliance", {})
            klass, release, name = info.get("class"), info.get("release"), info.get("bundle", "?")
            if klass != appliance_class:
                raise BundleMismatchError(f"bundle {name!r} is for appliance class {klass!r}, this is "
                                          f"{appliance_class!r}")
            state = applied_state(site)
            last = state.get("release", 0)
            digest = hashlib.sha256(targets_bytes).hexdigest()
            again = release == last and digest == state.get("targets_sha256")
            if not isinstance(release, int) or (release <= last and not again):
                raise BundleRollbackError(f"bundle {name!r} has release {release}, not above the applied release "
                                          f"{last}")
            if again:
                _serving_or_refuse(site, name, release, digest)
            targets: list[PlannedTarget] = []
            total = 0
            for role in DELEGATED:
                updater.get_targetinfo(f"{role}/-/-")  # loads and verifies the delegated role
                path = work / "metadata" / f"{role}.json"
                if not path.is_file():
                    continue
                for tpath in sorted(Metadata[Targets].from_file(str(path)).signed.targets):
                    if not _TARGET.fullmatch(tpath) or not tpath.startswith(f"{role}/"):
                        raise BundleError(f"refused: {role} signs an unsafe target path {tpath[:120]!r} (expected "
                                          f"{role}/<name>/<file>, letters, digits, . _ - only)")
                    tinfo = updater.get_targetinfo(tpath)
                    if tinfo is None:
                        raise BundleError(f"{tpath} is listed by {role} but not delegated to it")
                    dest = _local_copy(site, updater, tinfo)
                    if dest is None:  # not on the appliance yet: it must be on the media
                        dest = work / "targets" / f"{tinfo.hashes['sha256']}.{Path(tpath).name}"
                        try:
                            copy_verified(
                                fetcher, tinfo, dest,  # ignore: mypy can't type a lambda's default (mypy#15459)
                                lambda n, total=total: step("checking payloads", total + n, 0),  # type: ignore[misc]
                            )
                        except tuf_errors.DownloadHTTPError as exc:
                            if exc.status_code != 404:
                                raise BundleError(f"refused: {tpath}: {exc}") from exc
                            raise BundleError(f"{tpath} is neither on the media nor on this appliance (a delta "
                                              "bundle for an appliance that missed an earlier release?)") from exc
                        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as exc:
                            raise _refusal(exc)(f"refused: {tpath}: {type(exc).__name__}: {exc}") from exc
                    total += tinfo.length
                    step("checking payloads", total, total)
                    targets.append(PlannedTarget(tpath, role, tinfo.length, tinfo.hashes["sha256"],
                                                 dict(tinfo.unrecognized_fields.get("custom", {})), dest))
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as exc:
            cause = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
            raise _refusal(exc)(f"refused: {type(exc).__name__}: {exc}{cause}") from exc
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise BundleError(f"staging failed: the appliance's disk is full ({up / 'staging'}); nothing was "
                                  "changed") from exc
            raise BundleError(f"staging failed: {exc}") from exc
        plan = Plan(name, klass, release, targets, work=work, targets_sha256=digest, already_applied=again)
        if not again:
            from appliance.updates.payloads import check_payloads

            plan.checked = check_payloads(site, plan)  # models, adapters, policy: refused in a dry run too
            _diff(site, plan)
    except Exception as exc:  # every refusal is audited and leaves nothing behind
        shutil.rmtree(work, ignore_errors=True)
        audit.record("bundle.refused", by.name, media=str(media), reason=str(exc)[:500])
        if isinstance(exc, BundleError) or not isinstance(exc, ApplianceError):
            raise
        raise BundleError(f"refused: {exc}") from exc
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    audit.record("bundle.verify", by.name, **plan.summary())
    return plan


def blob_cache(site: UpdateSite) -> Path:
    """Verified payloads of applied bundles by sha256: a delta bundle need not carry them again."""
    return site.updates_dir / "blobs"


def _local_copy(site: UpdateSite, updater: Updater, tinfo: TargetFile) -> Path | None:
    """A payload the appliance already holds, re-checked against the signed length and hash."""
    sha = tinfo.hashes.get("sha256", "")
    candidates = [blob_cache(site) / sha]
    try:
        candidates.append(site.store.by_sha256(sha).path)
    except (UnknownModelError, OSError):
        pass
    for path in candidates:
        if path.is_file() and path.stat().st_size == tinfo.length and updater.find_cached_target(tinfo, str(path)):
            return path
    return None


def doc_ids_of(target: PlannedTarget, site: UpdateSite, plan: Plan) -> list[str]:
    """The document ids a verified knowledge payload holds (a JSONL corpus holds many).

    A corpus is parsed here once; the parsed documents stay on the plan for the apply.
    """
    name = Path(target.path).name
    if not name.endswith(".jsonl"):
        return [name]
    from appliance.knowledge.parsers import parse_file

    assert plan.work is not None
    docs = parse_file(named_copy(target, plan.work), site.knowledge().parse_limits)
    plan.parsed[target.path] = docs
    return [d.doc_id or d.source_name for d in docs]


def same_target(a: dict, t: PlannedTarget) -> bool:
    return (a.get("path"), a.get("sha256"), a.get("custom")) == (t.path, t.sha256, t.custom)


def named_copy(target: PlannedTarget, work: Path) -> Path:
    """The verified payload under its own file name (parsers go by the name's suffix), in ``work``."""
    named = work / "named" / target.sha256[:16] / Path(target.path).name
    if not named.is_file():
        named.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(target.verified_file, named)
        except OSError:
            shutil.copyfile(target.verified_file, named)
    return named


def _diff(site: UpdateSite, plan: Plan) -> None:
    """Add, replace, revoke. A payload the serving generation applied unchanged (same bytes,
    labels and collection, all its documents present) is not parsed again. Revoked: documents
    earlier bundles delivered, or in a collection this bundle names, that it no longer lists;
    documents an officer ingested locally into other collections stay."""
    from appliance.updates.generations import current_path, read_targets

    catalog = site.knowledge().catalog
    present = {d.doc_id: d for d in catalog.documents()}
    before = read_targets(current_path(site.data_dir))
    delivered = {d for a in before if a.get("role") == "knowledge" for d in a.get("docs", [])}
    listed: set[str] = set()
    collections: set[str] = set()
    for t in plan.targets:
        if t.role != "knowledge":
            continue
        collections.add(t.custom.get("collection", ""))
        old = next((a for a in before if same_target(a, t)), None)
        if old is not None and all(d in present for d in old.get("docs", [])):
            plan.docs[t.path] = list(old["docs"])
            plan.unchanged_targets.add(t.path)
            listed.update(plan.docs[t.path])
            continue
        plan.docs[t.path] = doc_ids_of(t, site, plan)
        for doc_id in plan.docs[t.path]:
            listed.add(doc_id)
            (plan.replace if doc_id in present else plan.add).append(doc_id)
    plan.revoke = sorted(d for d, row in present.items()
                         if (row.collection in collections or d in delivered) and d not in listed)
