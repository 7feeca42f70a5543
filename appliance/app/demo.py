"""The demo data set: a fictional facility's documents, SciFact abstracts and demo accounts.

``bundles/demo/`` holds ``manifest.toml`` (every document with its labels, collection and
description, plus a ``[research]`` corpus) and ``accounts.toml`` (the demo accounts, their
published passphrases, and ``ingest_as``: the account that ingests). :func:`load_bundle`
validates both before anything changes: sizes (1 MiB per TOML file, the knowledge limits
per document), paths inside the bundle, labels, and that the ingesting account is cleared
for every label. :func:`install_demo` then creates the absent demo accounts and ingests
every entry through :func:`appliance.app.documents.ingest` (authorized and audited). It is
idempotent: unchanged documents are skipped by the knowledge base without re-embedding.

Each document is ingested into its manifest collection (the catalog's ``collection``);
:func:`collection_of` answers the same from the manifest alone.
"""

from __future__ import annotations

import re
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath

from appliance.access.accounts import _NAME, ROLES, Account, AccountStore
from appliance.access.authz import ACTIONS
from appliance.access.labels import Labels, LevelScale, Principal, parse_labels
from appliance.app.documents import ingest
from appliance.config import KnowledgeSettings
from appliance.errors import ApplianceError, DemoError
from appliance.knowledge.base import FileOutcome
from appliance.knowledge.parsers import SUPPORTED, ParseLimits, parse_file
from appliance.services import Services

__all__ = ["DEMO_ROOT", "DEMO_SPEC", "demo_bundle", "MAX_TOML_BYTES", "DemoAccount", "DemoBundle", "DemoEntry",
           "DemoError", "collection_of", "install_demo", "load_bundle"]

DEMO_ROOT = Path(__file__).resolve().parents[2] / "bundles" / "demo"
MAX_TOML_BYTES = 1 << 20
MAX_ENTRIES = 10_000
_COLLECTION = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_ENTRY_KEYS = {"path", "labels", "collection", "description"}
_ACCOUNT_KEYS = {"name", "role", "level", "compartments", "passphrase", "description"}



@dataclass(frozen=True)
class DemoAccount:
    name: str
    role: str
    level: str
    compartments: tuple[str, ...]
    passphrase: str  # demo only: published in the README
    description: str

    @property
    def principal(self) -> Principal:
        return Principal(self.name, self.level, frozenset(self.compartments))


@dataclass(frozen=True)
class DemoEntry:
    rel: str  # path inside the bundle, as written in the manifest
    path: Path
    labels: Labels
    collection: str
    description: str
    doc_ids: tuple[str, ...]  # what the catalog will call its document(s)


@dataclass(frozen=True)
class DemoBundle:
    root: Path
    entries: tuple[DemoEntry, ...]  # documents, then the research corpus
    accounts: tuple[DemoAccount, ...]
    ingest_as: str

    @property
    def admin(self) -> DemoAccount:
        return next(a for a in self.accounts if a.role == "admin")

    def account(self, name: str) -> DemoAccount:
        return next(a for a in self.accounts if a.name == name)


# -- loading and validation (no change to anything) ------------------------------------


def _read_toml(path: Path) -> dict:
    try:
        size = path.stat().st_size
        if size > MAX_TOML_BYTES:
            raise DemoError(f"{path}: {size} bytes, over the {MAX_TOML_BYTES} byte limit")
        with path.open("rb") as f:
            data = f.read(MAX_TOML_BYTES + 1)
    except OSError as exc:
        raise DemoError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if len(data) > MAX_TOML_BYTES:
        raise DemoError(f"{path}: over the {MAX_TOML_BYTES} byte limit")
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise DemoError(f"{path}: not valid TOML: {exc}") from exc


def _text(table: dict, key: str, where: str, *, required: bool = True, limit: int = 500) -> str:
    value = table.get(key, None if required else "")
    if not isinstance(value, str) or (required and not value.strip()) or len(value) > limit:
        raise DemoError(f"{where}: '{key}' must be a non-empty string of at most {limit} characters")
    return value


def _entry(raw: object, manifest: Path, which: str, scale: LevelScale, limits: ParseLimits) -> DemoEntry:
    where, root = f"{manifest}: {which}", manifest.parent
    if not isinstance(raw, dict):
        raise DemoError(f"{where}: expected a table")
    unknown = set(raw) - _ENTRY_KEYS
    if unknown:
        raise DemoError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    rel = _text(raw, "path", where)
    where = f"{manifest}: {rel}"
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or "\\" in rel:
        raise DemoError(f"{where}: the path must be relative and inside the bundle")
    path = root / pure
    if not path.resolve().is_relative_to(root.resolve()):
        raise DemoError(f"{where}: the path leads outside the bundle")
    if path.suffix.lower() not in SUPPORTED:
        raise DemoError(f"{where}: unsupported file type (supported: {', '.join(sorted(SUPPORTED))})")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DemoError(f"{where}: cannot read: {exc.strerror or exc}") from exc
    if not path.is_file():
        raise DemoError(f"{where}: not a regular file")
    if size > limits.max_file_bytes:
        raise DemoError(f"{where}: {size} bytes, over the limit of {limits.max_file_bytes} "
                        "([knowledge] max_file_bytes)")
    try:
        labels = parse_labels(_text(raw, "labels", where), scale)
        docs = parse_file(path, limits)  # also checks max_text_chars; nothing is stored
    except ApplianceError as exc:
        raise DemoError(f"{where}: {exc}") from exc
    collection = _text(raw, "collection", where, limit=63)
    if not _COLLECTION.match(collection):
        raise DemoError(f"{where}: bad collection {collection!r} (a-z, 0-9 and '-')")
    doc_ids = tuple(d.doc_id or d.source_name for d in docs)
    return DemoEntry(rel, path, labels, collection, _text(raw, "description", where, required=False), doc_ids)


def _account(raw: object, where: str, scale: LevelScale, min_chars: int) -> DemoAccount:
    if not isinstance(raw, dict):
        raise DemoError(f"{where}: expected a table")
    unknown = set(raw) - _ACCOUNT_KEYS
    if unknown:
        raise DemoError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    name = _text(raw, "name", where, limit=32)
    where = f"{where} ({name})"
    role = _text(raw, "role", where)
    comps = raw.get("compartments", [])
    if not _NAME.match(name) or role not in ROLES:
        raise DemoError(f"{where}: bad name or role (roles: {', '.join(ROLES)})")
    if not isinstance(comps, list) or not all(isinstance(c, str) for c in comps):
        raise DemoError(f"{where}: 'compartments' must be a list of strings")
    try:
        labels = parse_labels(_text(raw, "level", where) + ":" + ",".join(comps), scale)
    except ApplianceError as exc:
        raise DemoError(f"{where}: {exc}") from exc
    passphrase = _text(raw, "passphrase", where, limit=1024)
    if len(passphrase) < min_chars:
        raise DemoError(f"{where}: the passphrase needs at least {min_chars} characters")
    return DemoAccount(name, role, labels.level, tuple(sorted(labels.compartments)), passphrase,
                       _text(raw, "description", where, required=False))


def load_bundle(root: Path = DEMO_ROOT, *, scale: LevelScale | None = None,
                knowledge: KnowledgeSettings | None = None, min_passphrase_chars: int = 12) -> DemoBundle:
    """Read and validate ``manifest.toml`` and ``accounts.toml``; every error names the file."""
    root, scale, knowledge = Path(root), scale or LevelScale(), knowledge or KnowledgeSettings()
    manifest, accounts_file = root / "manifest.toml", root / "accounts.toml"
    doc = _read_toml(manifest)
    unknown = set(doc) - {"bundle", "document", "research"}
    if unknown:
        raise DemoError(f"{manifest}: unknown key(s) {', '.join(sorted(unknown))}")
    raw_docs = doc.get("document", [])
    if not isinstance(raw_docs, list) or len(raw_docs) > MAX_ENTRIES:
        raise DemoError(f"{manifest}: [[document]] must be a list of at most {MAX_ENTRIES} tables")
    limits = ParseLimits(max_file_bytes=knowledge.max_file_bytes, max_pages=knowledge.max_pages,
                         max_text_chars=knowledge.max_text_chars)
    entries = [_entry(raw, manifest, f"document {i + 1}", scale, limits) for i, raw in enumerate(raw_docs)]
    if "research" in doc:
        entries.append(_entry(doc["research"], manifest, "[research]", scale, limits))
    if not entries:
        raise DemoError(f"{manifest}: no documents")
    seen: dict[str, str] = {}
    for e in entries:  # a catalog id is a file name or a record id: two entries must not share one
        for doc_id in e.doc_ids:
            if doc_id in seen:
                raise DemoError(f"{manifest}: {e.rel}: document id {doc_id!r} is also in {seen[doc_id]}")
            seen[doc_id] = e.rel

    acc = _read_toml(accounts_file)
    unknown = set(acc) - {"ingest_as", "account"}
    raw_accounts = acc.get("account", [])
    if unknown or not isinstance(raw_accounts, list) or len(raw_accounts) > 100:
        raise DemoError(f"{accounts_file}: expected `ingest_as` and at most 100 [[account]] tables")
    accounts = tuple(_account(raw, f"{accounts_file}: account {i + 1}", scale, min_passphrase_chars)
                     for i, raw in enumerate(raw_accounts))
    names = [a.name for a in accounts]
    if len(set(names)) != len(names):
        raise DemoError(f"{accounts_file}: an account name appears twice")
    if sum(a.role == "admin" for a in accounts) != 1:
        raise DemoError(f"{accounts_file}: exactly one admin account is needed (the demo admin)")
    ingest_as = acc.get("ingest_as")
    if ingest_as not in names:
        raise DemoError(f"{accounts_file}: ingest_as must name one of the accounts ({', '.join(names)})")
    bundle = DemoBundle(root, tuple(entries), accounts, ingest_as)
    ingester = bundle.account(ingest_as)
    if ingester.role not in ACTIONS["documents.manage"]:
        raise DemoError(f"{accounts_file}: ingest_as {ingest_as!r} is {ingester.role}; ingesting needs the role "
                        f"{' or '.join(ACTIONS['documents.manage'])}")
    clearance = str(Labels(ingester.level, frozenset(ingester.compartments)))
    for e in entries:
        if not ingester.principal.can_read(e.labels, scale):
            raise DemoError(f"{manifest}: {e.rel}: labelled {e.labels}, which {ingest_as} ({clearance}) "
                            "is not cleared for")
    return bundle


# -- installing -------------------------------------------------------------------------


def _login(store: AccountStore, demo: DemoAccount, why: str) -> tuple[Account, str]:
    try:
        session = store.login(demo.name, demo.passphrase)
    except ApplianceError as exc:
        raise DemoError(f"cannot log in as the demo account {demo.name!r} with its demo passphrase ({why}); "
                        "it was changed, locked or disabled: refusing to touch this installation") from exc
    return session.account, session.token


def _install_accounts(store: AccountStore, bundle: DemoBundle) -> tuple[list[str], list[str], list[str]]:
    """Create the absent demo accounts; returns (created, existing, warnings)."""
    present = {a.name: a for a in store.list()}
    admin = bundle.admin
    if present and admin.name not in present:
        raise DemoError(f"this appliance already has accounts and no {admin.name!r}: refusing to add demo accounts "
                        "with published passphrases to a real installation (use a fresh data directory)")
    if admin.name in present and present[admin.name].role != "admin":
        raise DemoError(f"account {admin.name!r} exists but is not an admin: refusing to touch this installation")
    missing = [a for a in bundle.accounts if a.name not in present]
    created: list[str] = []
    if missing:
        token = None
        if not present:  # a fresh appliance: the demo admin is the bootstrap account
            acting = store.add(admin.name, role="admin", level=admin.level, compartments=admin.compartments,
                               passphrase=admin.passphrase, by=None)
            created.append(admin.name)
            missing.remove(admin)
        else:
            acting, token = _login(store, admin, "to add the missing demo accounts")
        try:
            for a in missing:
                store.add(a.name, role=a.role, level=a.level, compartments=a.compartments, passphrase=a.passphrase,
                          by=acting)
                created.append(a.name)
        finally:
            if token:
                store.logout(token)
    existing = [a.name for a in bundle.accounts if a.name in present]
    warnings = [f"account {a.name} differs from accounts.toml (left as it is)" for a in bundle.accounts
                if a.name in present and (present[a.name].role, present[a.name].level,
                                          present[a.name].compartments) != (a.role, a.level, frozenset(a.compartments))]
    return created, existing, warnings


def install_demo(services: Services, root: Path = DEMO_ROOT, progress: Callable[[str, int], None] | None = None,
                 *, bundle: DemoBundle | None = None, accounts_only: bool = False) -> dict:
    """Install (or bring up to date) the demo accounts and documents; returns a summary.

    ``accounts_only``: the documents arrive another way (`appliance demo bundle`: signed).
    """
    started = time.monotonic()
    s = services.settings
    bundle = bundle or load_bundle(root, scale=services.scale, knowledge=s.knowledge,
                                   min_passphrase_chars=s.access.min_passphrase_chars)
    store = services.accounts()
    created, existing, warnings = _install_accounts(store, bundle)
    officer, token = _login(store, bundle.account(bundle.ingest_as), "to ingest the demo documents")
    groups: dict[tuple[str, Labels], list[DemoEntry]] = {}
    for e in () if accounts_only else bundle.entries:
        groups.setdefault((e.collection, e.labels), []).append(e)
    outcomes: dict[str, list[FileOutcome]] = {}
    try:
        for (_, labels), group in groups.items():
            report = ingest(services, officer, [e.path for e in group], labels, progress=progress,
                            collection=group[0].collection)
            for o in report.outcomes:
                outcomes.setdefault(o.source, []).append(o)
    finally:
        store.logout(token)

    collections: dict[str, dict[str, int]] = {}
    documents, failed = [], []
    for e in () if accounts_only else bundle.entries:
        mine = outcomes.get(e.path.name, [])
        counts = {k: sum(o.status == k for o in mine) for k in ("added", "replaced", "unchanged", "failed")}
        total = collections.setdefault(e.collection, dict.fromkeys((*counts, "chunks"), 0))
        for k, v in counts.items():
            total[k] += v
        total["chunks"] += sum(o.chunks for o in mine)
        failed += [{"path": e.rel, "reason": o.reason} for o in mine if o.status == "failed"]
        statuses = {o.status for o in mine}
        documents.append({"path": e.rel, "collection": e.collection, "labels": str(e.labels),
                          "status": statuses.pop() if len(statuses) == 1 else "mixed", "counts": counts,
                          "doc_ids": sorted({i for o in mine for i in o.doc_ids})})
    return {"root": str(bundle.root), "ingested_by": bundle.ingest_as,
            "accounts": {"created": created, "existing": existing},
            "collections": collections, "documents": documents, "failed": failed, "warnings": warnings,
            "seconds": round(time.monotonic() - started, 2)}


DEMO_SPEC = DEMO_ROOT.parent / "demo.toml"
DEMO_KEY_PASSPHRASE = "demo-build-station-pass"  # demo only: published, like the demo accounts' passphrases


def demo_bundle(services: Services, progress: Callable[[str, int, int], None] | None = None,
                spec_path: Path = DEMO_SPEC, root: Path = DEMO_ROOT) -> dict:
    """Build the demo bundle (demo build-station keys under ``<data>/demo-station``), trust its root
    on first use, and apply it as the demo officer: the signed path, as an officer would take it.

    Idempotent: a release already built is reused, and applying it again changes nothing.
    """
    from appliance.updates.apply import apply_bundle
    from appliance.updates.build import build_bundle, load_spec
    from appliance.updates.check import trust_root as _trust
    from appliance.updates.check import trusted_metadata
    from appliance.updates.keys import init_keys

    demo = load_bundle(root, scale=services.scale, knowledge=services.settings.knowledge,
                       min_passphrase_chars=services.settings.access.min_passphrase_chars)
    station = services.settings.data_dir / "demo-station"
    spec = load_spec(spec_path, services.scale)
    out = station / f"bundle-r{spec.release}"
    if not (station / "keys").is_dir():
        init_keys(station / "keys", DEMO_KEY_PASSPHRASE)
    if not out.is_dir():
        build_bundle(spec, station / "keys", DEMO_KEY_PASSPHRASE, station / "state", out)
    store = services.accounts()
    site = services.update_site()
    officer, token = _login(store, demo.account(demo.ingest_as), "to apply the demo bundle")
    try:
        if trusted_metadata(site) is None and not (site.updates_dir / "trusted" / "root.json").is_file():
            _trust(site, officer, out / "metadata" / "1.root.json")
        result = apply_bundle(site, officer, out, progress)
    finally:
        store.logout(token)
    return {"bundle": str(out), **result.as_dict()}


@lru_cache(maxsize=4)
def _collections(root: Path) -> dict[str, str]:
    return {doc_id: e.collection for e in load_bundle(root).entries for doc_id in e.doc_ids}


def collection_of(doc_id: str, root: Path = DEMO_ROOT) -> str | None:
    """The demo collection of a catalogued document (looked up in the manifest), or None."""
    return _collections(Path(root)).get(doc_id)
