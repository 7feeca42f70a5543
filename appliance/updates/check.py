"""Verify a bundle on the appliance and say what applying it would change (a dry run).

Order: the bundle is copied from the media into staging (unsafe members refused); the
TUF client (python-tuf) verifies the staged metadata against the appliance's trusted
root and its last applied metadata (signatures and thresholds, root chain, expiry,
versions, snapshot/targets consistency) in a scratch copy, then every payload's length
and hash; only verified bytes are parsed. The bundle must be for this appliance class
and carry a higher release than the one applied. Nothing the appliance trusts or serves
is changed: the trusted metadata is only replaced by a successful apply.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import secrets
import shutil
from dataclasses import dataclass, field
from collections.abc import Callable
from pathlib import Path

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, Root, TargetFile
from tuf.ngclient import Updater

from appliance.access.accounts import Account
from appliance.access.authz import authorize
from appliance.errors import BundleError, UnknownModelError
from appliance.services import Services
from appliance.updates.keys import DELEGATED
from appliance.updates.media import MEDIA_URL, MediaFetcher
from appliance.updates.staging import stage

__all__ = ["Plan", "PlannedTarget", "Progress", "trust_root", "verify_bundle", "updates_dir", "applied_state",
           "trusted_metadata", "doc_ids_of", "named_copy", "blob_cache", "same_target"]

MAX_ROOT_BYTES = 1 << 20
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

    def summary(self) -> dict:
        return {"bundle": self.bundle, "class": self.appliance_class, "release": self.release,
                "targets": len(self.targets), "add": self.add, "replace": self.replace, "revoke": self.revoke,
                **({"already_applied": True} if self.already_applied else {}),
                "models": [t.path for t in self.targets if t.role == "models"],
                "adapters": [t.path for t in self.targets if t.role == "adapters"],
                "policy": [t.path for t in self.targets if t.role == "policy"]}


def updates_dir(services: Services) -> Path:
    return services.settings.data_dir / "updates"


def applied_state(services: Services) -> dict:
    """The high-water mark of applied bundles: release, trusted metadata set, last trusted time.

    A rollback of generations never lowers it: a rolled-back bundle cannot be replayed.
    """
    f = updates_dir(services) / "state.json"
    return json.loads(f.read_text()) if f.is_file() else {"release": 0}


def trusted_metadata(services: Services) -> Path | None:
    """The directory of metadata the last applied bundle left, or None before the first."""
    name = applied_state(services).get("metadata")
    return updates_dir(services) / name if name else None


def _check_clock(services: Services, now: dt.datetime) -> None:
    last = applied_state(services).get("last_trusted_time")
    if last and now < dt.datetime.fromisoformat(last) - CLOCK_SKEW:
        raise BundleError(f"the appliance clock reads {now.isoformat(timespec='seconds')}, before the last trusted "
                          f"time {last}: the clock was set back; correct it before applying bundles")


def trust_root(services: Services, account: Account, root_file: Path) -> str:
    """Provision the appliance's first trusted root (an officer, once); returns its key ids."""
    by = authorize(services.accounts().get(account.name), "bundles.manage")
    target = updates_dir(services) / "trusted" / "root.json"
    if target.exists():
        raise BundleError("a trusted root is already provisioned; new roots arrive inside signed bundles")
    if not root_file.is_file() or root_file.stat().st_size > MAX_ROOT_BYTES:
        raise BundleError(f"{root_file}: missing or over {MAX_ROOT_BYTES} bytes")
    data = root_file.read_bytes()
    try:
        md = Metadata[Root].from_bytes(data)
        md.signed.verify_delegate("root", md.signed_bytes, md.signatures)  # signed by its own threshold
    except Exception as exc:  # noqa: BLE001 - any parse or signature failure is a refusal
        raise BundleError(f"{root_file.name} is not a valid, self-signed TUF root: {exc}") from None
    services.audit().record("bundle.trust_root", by.name, version=md.signed.version,
                            keyids=sorted(md.signed.roles["root"].keyids))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(target)
    return ",".join(sorted(md.signed.roles["root"].keyids))


def _bootstrap(services: Services) -> bytes:
    up = updates_dir(services)
    last = trusted_metadata(services)
    trusted = up / "trusted" / "root.json"
    if last is not None and (last / "root.json").is_file():
        return (last / "root.json").read_bytes()
    if trusted.is_file():
        return trusted.read_bytes()
    raise BundleError("no trusted root: an officer must first run `appliance bundle trust ROOT.json`")


Progress = Callable[[str, int, int], None]  # phase, done, total


def verify_bundle(services: Services, account: Account, media: Path, appliance_class: str,
                  progress: Progress | None = None, now: dt.datetime | None = None) -> Plan:
    """Verify ``media`` fully and return the plan; raises BundleError with the reason if refused."""
    by = authorize(services.accounts().get(account.name), "bundles.manage")
    up = updates_dir(services)
    token = secrets.token_hex(6)
    staged = up / "staging" / token
    work = up / "work" / token
    audit = services.audit()
    step = progress or (lambda phase, done, total: None)
    try:
        _check_clock(services, now or dt.datetime.now(dt.timezone.utc))
        root = _bootstrap(services)
        step("staging", 0, 1)
        stage(media, staged, progress=lambda done, total: step("staging", done, total))
        (work / "metadata").mkdir(parents=True)
        (work / "targets").mkdir()
        last_md = trusted_metadata(services)
        if last_md is not None and last_md.is_dir():  # the last applied metadata: versions may only grow from it
            shutil.copytree(last_md, work / "metadata", dirs_exist_ok=True)
        updater = Updater(str(work / "metadata"), MEDIA_URL + "metadata/", str(work / "targets"),
                          MEDIA_URL + "targets/", fetcher=MediaFetcher(staged), bootstrap=root)
        try:
            step("verifying", 0, 1)
            updater.refresh()
            targets_bytes = (work / "metadata" / "targets.json").read_bytes()
            head = Metadata.from_bytes(targets_bytes).signed
            info = head.unrecognized_fields.get("x-appliance", {})
            klass, release, name = info.get("class"), info.get("release"), info.get("bundle", "?")
            if klass != appliance_class:
                raise BundleError(f"bundle {name!r} is for appliance class {klass!r}, this is {appliance_class!r}")
            state = applied_state(services)
            last = state.get("release", 0)
            digest = hashlib.sha256(targets_bytes).hexdigest()
            again = release == last and digest == state.get("targets_sha256")
            if not isinstance(release, int) or (release <= last and not again):
                raise BundleError(f"bundle {name!r} has release {release}, not above the applied release {last}")
            targets: list[PlannedTarget] = []
            total = 0
            for role in DELEGATED:
                updater.get_targetinfo(f"{role}/-/-")  # loads and verifies the delegated role
                path = work / "metadata" / f"{role}.json"
                if not path.is_file():
                    continue
                for tpath in sorted(Metadata.from_file(str(path)).signed.targets):
                    tinfo = updater.get_targetinfo(tpath)
                    if tinfo is None:
                        raise BundleError(f"{tpath} is listed by {role} but not delegated to it")
                    dest = _local_copy(services, updater, tinfo)
                    if dest is None:  # not on the appliance yet: it must be on the media
                        dest = work / "targets" / f"{tinfo.hashes['sha256']}.{Path(tpath).name}"
                        try:
                            updater.download_target(tinfo, str(dest))  # checks length and hash
                        except tuf_errors.DownloadHTTPError as exc:
                            if exc.status_code != 404:
                                raise
                            raise BundleError(f"{tpath} is neither on the media nor on this appliance (a delta "
                                              "bundle for an appliance that missed an earlier release?)") from None
                    total += tinfo.length
                    step("checking payloads", total, total)
                    targets.append(PlannedTarget(tpath, role, tinfo.length, tinfo.hashes["sha256"],
                                                 dict(tinfo.unrecognized_fields.get("custom", {})), dest))
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as exc:
            raise BundleError(f"refused: {type(exc).__name__}: {exc}") from None
        plan = Plan(name, klass, release, targets, work=work, targets_sha256=digest, already_applied=again)
        if not again:
            _diff(services, plan)
    except BundleError as exc:
        shutil.rmtree(work, ignore_errors=True)
        audit.record("bundle.refused", by.name, media=str(media), reason=str(exc)[:500])
        raise
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    audit.record("bundle.verify", by.name, **plan.summary())
    return plan


def blob_cache(services: Services) -> Path:
    """Verified payloads of applied bundles by sha256: a delta bundle need not carry them again."""
    return updates_dir(services) / "blobs"


def _local_copy(services: Services, updater: Updater, tinfo: TargetFile) -> Path | None:
    """A payload the appliance already holds, re-checked against the signed length and hash."""
    sha = tinfo.hashes.get("sha256", "")
    candidates = [blob_cache(services) / sha]
    try:
        candidates.append(services.store.by_sha256(sha).path)
    except (UnknownModelError, OSError):
        pass
    for path in candidates:
        if path.is_file() and path.stat().st_size == tinfo.length and updater.find_cached_target(tinfo, str(path)):
            return path
    return None


def doc_ids_of(target: PlannedTarget, services: Services, work: Path) -> list[str]:
    """The document ids a verified knowledge payload holds (a JSONL corpus holds many)."""
    name = Path(target.path).name
    if not name.endswith(".jsonl"):
        return [name]
    from appliance.knowledge.parsers import parse_file

    return [d.doc_id or d.source_name for d in parse_file(named_copy(target, work), services.knowledge().parse_limits)]


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


def _diff(services: Services, plan: Plan) -> None:
    """Add, replace, revoke. A payload the serving generation applied unchanged (same bytes,
    labels and collection, all its documents present) is not parsed again. Revoked: documents
    earlier bundles delivered, or in a collection this bundle names, that it no longer lists;
    documents an officer ingested locally into other collections stay."""
    from appliance.updates.generations import current_path, read_targets

    catalog = services.knowledge().catalog
    present = {d.doc_id: d for d in catalog.documents()}
    before = read_targets(current_path(services.settings.data_dir))
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
        plan.docs[t.path] = doc_ids_of(t, services, plan.work)
        for doc_id in plan.docs[t.path]:
            listed.add(doc_id)
            (plan.replace if doc_id in present else plan.add).append(doc_id)
    plan.revoke = sorted(d for d, row in present.items()
                         if (row.collection in collections or d in delivered) and d not in listed)
