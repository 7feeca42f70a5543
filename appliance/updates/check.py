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

import json
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, Root
from tuf.ngclient import Updater

from appliance.access.accounts import Account
from appliance.access.authz import authorize
from appliance.errors import BundleError
from appliance.services import Services
from appliance.updates.keys import DELEGATED
from appliance.updates.media import MEDIA_URL, MediaFetcher
from appliance.updates.staging import stage

__all__ = ["Plan", "PlannedTarget", "trust_root", "verify_bundle", "updates_dir", "applied_state", "doc_ids_of"]

MAX_ROOT_BYTES = 1 << 20


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

    def summary(self) -> dict:
        return {"bundle": self.bundle, "class": self.appliance_class, "release": self.release,
                "targets": len(self.targets), "add": self.add, "replace": self.replace, "revoke": self.revoke}


def updates_dir(services: Services) -> Path:
    return services.settings.data_dir / "updates"


def applied_state(services: Services) -> dict:
    f = updates_dir(services) / "state.json"
    return json.loads(f.read_text()) if f.is_file() else {"release": 0}


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


def _bootstrap(up: Path) -> bytes:
    current = up / "metadata" / "root.json"
    trusted = up / "trusted" / "root.json"
    if current.is_file():
        return current.read_bytes()
    if trusted.is_file():
        return trusted.read_bytes()
    raise BundleError("no trusted root: an officer must first run `appliance bundle trust ROOT.json`")


def verify_bundle(services: Services, account: Account, media: Path, appliance_class: str) -> Plan:
    """Verify ``media`` fully and return the plan; raises BundleError with the reason if refused."""
    by = authorize(services.accounts().get(account.name), "bundles.manage")
    up = updates_dir(services)
    token = secrets.token_hex(6)
    staged = up / "staging" / token
    work = up / "work" / token
    audit = services.audit()
    try:
        root = _bootstrap(up)
        stage(media, staged)
        (work / "metadata").mkdir(parents=True)
        (work / "targets").mkdir()
        if (up / "metadata").is_dir():  # the last applied metadata: versions may only grow from it
            for f in (up / "metadata").iterdir():
                shutil.copyfile(f, work / "metadata" / f.name)
        updater = Updater(str(work / "metadata"), MEDIA_URL + "metadata/", str(work / "targets"),
                          MEDIA_URL + "targets/", fetcher=MediaFetcher(staged), bootstrap=root)
        try:
            updater.refresh()
            head = Metadata.from_file(str(work / "metadata" / "targets.json")).signed
            info = head.unrecognized_fields.get("x-appliance", {})
            klass, release, name = info.get("class"), info.get("release"), info.get("bundle", "?")
            if klass != appliance_class:
                raise BundleError(f"bundle {name!r} is for appliance class {klass!r}, this is {appliance_class!r}")
            last = applied_state(services).get("release", 0)
            if not isinstance(release, int) or release <= last:
                raise BundleError(f"bundle {name!r} has release {release}, not above the applied release {last}")
            targets: list[PlannedTarget] = []
            for role in DELEGATED:
                updater.get_targetinfo(f"{role}/-/-")  # loads and verifies the delegated role
                path = work / "metadata" / f"{role}.json"
                if not path.is_file():
                    continue
                for tpath in sorted(Metadata.from_file(str(path)).signed.targets):
                    tinfo = updater.get_targetinfo(tpath)
                    if tinfo is None:
                        raise BundleError(f"{tpath} is listed by {role} but not delegated to it")
                    dest = work / "targets" / f"{tinfo.hashes['sha256']}.{Path(tpath).name}"
                    updater.download_target(tinfo, str(dest))  # checks length and hash
                    targets.append(PlannedTarget(tpath, role, tinfo.length, tinfo.hashes["sha256"],
                                                 dict(tinfo.unrecognized_fields.get("custom", {})), dest))
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as exc:
            raise BundleError(f"refused: {type(exc).__name__}: {exc}") from None
        plan = Plan(name, klass, release, targets, work=work)
        _diff(services, plan)
    except BundleError as exc:
        shutil.rmtree(work, ignore_errors=True)
        audit.record("bundle.refused", by.name, media=str(media), reason=str(exc)[:500])
        raise
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    audit.record("bundle.verify", by.name, **plan.summary())
    return plan


def doc_ids_of(target: PlannedTarget, services: Services) -> list[str]:
    """The document ids a verified knowledge payload holds (a JSONL corpus holds many)."""
    name = Path(target.path).name
    if not name.endswith(".jsonl"):
        return [name]
    from appliance.knowledge.parsers import parse_file

    named = target.verified_file.parent / "named" / name
    named.parent.mkdir(exist_ok=True)
    shutil.copyfile(target.verified_file, named)
    return [d.doc_id or d.source_name for d in parse_file(named, services.knowledge().parse_limits)]


def _diff(services: Services, plan: Plan) -> None:
    catalog = services.knowledge().catalog
    present = {d.doc_id: d for d in catalog.documents()}
    listed: set[str] = set()
    collections: set[str] = set()
    for t in plan.targets:
        if t.role != "knowledge":
            continue
        collections.add(t.custom.get("collection", ""))
        for doc_id in doc_ids_of(t, services):
            listed.add(doc_id)
            (plan.replace if doc_id in present else plan.add).append(doc_id)
    plan.revoke = sorted(d for d, row in present.items() if row.collection in collections and d not in listed)
