"""The demo data set: bundle validation, idempotent install, access by clearance, cited answers."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from appliance.app.demo import DEMO_ROOT, MAX_TOML_BYTES, DemoError, collection_of, install_demo, load_bundle
from appliance.config import KnowledgeSettings, Settings
from appliance.errors import NotPermittedError
from appliance.runtime.model_store import ModelStore
from appliance.services import Services, build_services
from tests.helpers import ScriptedEngine, hashed_embed, run_cli, store_copy

CRYPTO_DOC = "crypto-key-rotation-schedule.md"


# -- the bundle as shipped ---------------------------------------------------------------


def test_shipped_bundle_is_valid_and_complete() -> None:
    bundle = load_bundle()
    docs = [e for e in bundle.entries if e.collection != "research"]
    assert 24 <= len(docs) <= 30
    listed = {e.path.name for e in bundle.entries}
    on_disk = {p.name for p in (DEMO_ROOT / "documents").iterdir()}
    assert on_disk <= listed, f"documents not in the manifest: {on_disk - listed}"
    labels = {str(e.labels) for e in docs}
    assert {"UNCLASSIFIED", "CONFIDENTIAL", "SECRET:CRYPTO", "TOP SECRET:HUMINT"} <= labels
    assert any("NUCLEAR" in x for x in labels)
    assert {e.collection for e in docs} >= {"facility-handbook", "security", "engineering", "red-team-samples"}
    assert all(str(e.labels) == "UNCLASSIFIED" for e in docs if e.collection == "red-team-samples")
    research = [e for e in bundle.entries if e.collection == "research"]
    assert len(research) == 1 and len(research[0].doc_ids) == 300 and str(research[0].labels) == "UNCLASSIFIED"
    attribution = (DEMO_ROOT / "research" / "ATTRIBUTION.md").read_text()
    assert "ODC-By 1.0" in attribution and "AllenAI" in attribution and "300" in attribution
    for e in docs:
        if e.path.suffix in (".md", ".txt", ".html"):
            words = len(e.path.read_text().split())
            assert 150 <= words <= 900, f"{e.rel}: {words} words"
    roles = sorted(a.role for a in bundle.accounts)
    assert roles == ["admin", "analyst", "analyst", "analyst", "auditor", "officer"]
    assert all(len(a.passphrase) >= 12 and a.passphrase.startswith("demo-") for a in bundle.accounts)
    readme = (DEMO_ROOT.parent.parent / "README.md").read_text()
    assert all(f"`{a.passphrase}`" in readme for a in bundle.accounts)


def test_collection_of_looks_up_the_manifest() -> None:
    assert collection_of(CRYPTO_DOC) == "security"
    assert collection_of("faq-wifi") == "facility-handbook"  # a record of the FAQ JSONL
    assert collection_of("4983") == "research"  # the first SciFact abstract
    assert collection_of("no-such-document.md") is None


# -- validation with a temporary bundle (no engine) -------------------------------------


def _bundle(tmp_path: Path, entries: Sequence[tuple[str, str]], *, text: str = "# Note\n\nSome words here.\n") -> Path:
    root = tmp_path / "bundle"
    (root / "documents").mkdir(parents=True)
    shutil.copy(DEMO_ROOT / "accounts.toml", root / "accounts.toml")
    lines = []
    for name, labels in entries:
        (root / "documents" / name).write_text(text)
        lines.append(f'[[document]]\npath = "documents/{name}"\nlabels = "{labels}"\ncollection = "test"\n'
                     'description = "a test document"\n')
    (root / "manifest.toml").write_text("\n".join(lines))
    return root


def test_a_bad_label_is_refused_naming_the_file(tmp_path: Path) -> None:
    root = _bundle(tmp_path, [("fine.md", "UNCLASSIFIED"), ("bad-label.md", "SECRETISH:CRYPTO")])
    with pytest.raises(DemoError, match=r"bad-label\.md.*unknown classification level"):
        load_bundle(root)


def test_an_oversize_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    root = _bundle(tmp_path, [("big.md", "UNCLASSIFIED")], text="# Big\n\n" + "word " * 400)
    with pytest.raises(DemoError, match=r"big\.md: \d+ bytes, over the limit of 1000"):
        load_bundle(root, knowledge=KnowledgeSettings(max_file_bytes=1000))
    assert load_bundle(root).entries[0].doc_ids == ("big.md",)


def test_an_oversize_manifest_is_refused(tmp_path: Path) -> None:
    root = _bundle(tmp_path, [("fine.md", "UNCLASSIFIED")])
    (root / "manifest.toml").write_text("# padding\n" * (MAX_TOML_BYTES // 10 + 1))
    with pytest.raises(DemoError, match=r"manifest\.toml: \d+ bytes, over the 1048576 byte limit"):
        load_bundle(root)


@pytest.mark.parametrize("path", ["../outside.md", "/etc/passwd.md", "documents/missing.md"])
def test_paths_must_exist_inside_the_bundle(tmp_path: Path, path: str) -> None:
    root = _bundle(tmp_path, [("fine.md", "UNCLASSIFIED")])
    (tmp_path / "outside.md").write_text("# Outside\n\ntext\n")
    (root / "manifest.toml").write_text(f'[[document]]\npath = "{path}"\nlabels = "UNCLASSIFIED"\n'
                                        'collection = "test"\n')
    with pytest.raises(DemoError, match=path.replace(".", r"\.")):
        load_bundle(root)


def test_a_label_the_ingesting_officer_lacks_is_refused(tmp_path: Path) -> None:
    root = _bundle(tmp_path, [("aliens.md", "SECRET:ALIENS")])
    with pytest.raises(DemoError, match=r"aliens\.md: labelled SECRET:ALIENS, which demo-officer .* is not cleared"):
        load_bundle(root)


# -- install logic with a fake embedder (no engine) -------------------------------------


def _fake_services(tmp_path: Path, calls: list[int], models: Path | None = None) -> Services:
    def embed(texts: Sequence[str]) -> list[list[float]]:
        calls.append(len(texts))
        return hashed_embed(texts)

    return build_services(Settings(data_dir=tmp_path / "data", models_dir_override=models),
                          engine=ScriptedEngine(embed=embed))  # a fake at the engine seam


def test_install_is_idempotent_and_does_not_re_embed(tmp_path: Path) -> None:
    calls: list[int] = []
    services = _fake_services(tmp_path, calls)
    first = install_demo(services)
    assert first["accounts"]["created"][0] == "demo-admin" and len(first["accounts"]["created"]) == 6
    assert not first["failed"] and calls
    catalog = {d.doc_id: d for d in services.knowledge().catalog.documents()}
    for entry in load_bundle().entries:
        for doc_id in entry.doc_ids:
            assert catalog[doc_id].labels == entry.labels and catalog[doc_id].ingested_by == "demo-officer"
    embedded = sum(calls)
    second = install_demo(services)
    assert sum(calls) == embedded, "the second install embedded again"
    assert second["accounts"] == {"created": [], "existing": [a["name"] for a in make_accounts()]}
    assert all(d["status"] == "unchanged" for d in second["documents"])
    assert all(c["added"] == c["replaced"] == c["chunks"] == 0 for c in second["collections"].values())
    ingests = [v for v in (e.value() for e in services.audit().entries()) if v.get("kind") == "document.ingest"]
    assert ingests and all(v.get("user") == "demo-officer" for v in ingests), "ingests are audited as the officer"


def make_accounts() -> list[dict]:
    return [{"name": a.name} for a in load_bundle().accounts]


def test_demo_bundle_matches_the_manifest_and_applies_once(tmp_path: Path, model_store) -> None:  # noqa: ANN001
    """The signed path `make run` takes: bundles/demo.toml lists exactly the manifest's documents and labels,
    and the demo specialists, which are served on the base model once it is applied."""
    from appliance.app.demo import demo_bundle
    from appliance.updates.build import load_spec

    calls: list[int] = []
    services = _fake_services(tmp_path, calls, store_copy(model_store, tmp_path / "models").root)
    install_demo(services, accounts_only=True)
    assert services.knowledge().catalog.documents() == []
    spec = load_spec(DEMO_ROOT.parent / "demo.toml")
    manifest = {e.path.name: (e.collection, str(e.labels)) for e in load_bundle().entries}
    shipped = {p.source.name: (p.custom["collection"], p.custom["labels"]) for p in spec.payloads
               if p.role == "knowledge"}
    assert shipped == manifest
    adapters = {p.custom["name"] for p in spec.payloads if p.role == "adapters"}
    assert adapters == {"banking77-intent", "wnut17-entities"}
    first = demo_bundle(services)
    found = services.specialists()
    assert {n: s.task for n, s in found.items()} == {"banking77-intent": "classify", "wnut17-entities": "extract"}
    assert first["generation"] == 1 and first["changes"]["added"] > 300
    [demo_set] = services.eval_store().list()  # the demo's evaluation set arrived with the signed policy
    assert demo_set["name"] == "demo" and demo_set["origin"] == f"bundle {spec.name} release {spec.release}"
    assert set(demo_set["kinds"]) == {"qa", "classify", "extract"}
    kb = services.knowledge()
    assert {d.doc_id: d.collection for d in kb.catalog.documents() if d.collection != "research"} == {
        doc_id: collection_of(doc_id) for doc_id in (d.doc_id for d in kb.catalog.documents())
        if collection_of(doc_id) != "research"}
    n = sum(calls)
    again = demo_bundle(services)
    assert again["noop"] and sum(calls) == n  # reused, verified again, nothing re-embedded


def test_install_refuses_a_real_installation(tmp_path: Path) -> None:
    services = _fake_services(tmp_path, [])
    services.accounts().add("root", role="admin", level="TOP SECRET", passphrase="a real admin passphrase", by=None)
    with pytest.raises(DemoError, match="already has accounts and no 'demo-admin'"):
        install_demo(services)
    assert [a.name for a in services.accounts().list()] == ["root"]
    assert services.knowledge().catalog.documents() == []


def test_install_refuses_when_the_demo_admin_passphrase_was_changed(tmp_path: Path) -> None:
    services = _fake_services(tmp_path, [])
    store = services.accounts()
    admin = store.add("demo-admin", role="admin", level="UNCLASSIFIED", passphrase="changed by the site", by=None)
    store.passwd("demo-admin", "another passphrase", by=admin)
    with pytest.raises(DemoError, match="cannot log in as the demo account 'demo-admin'"):
        install_demo(services)
    assert [a.name for a in store.list()] == ["demo-admin"]


def test_officer_clearance_is_enforced_by_the_operation(tmp_path: Path) -> None:
    """A demo officer whose clearance was lowered on the appliance cannot ingest above it."""
    services = _fake_services(tmp_path, [])
    install_demo(services)
    store = services.accounts()
    admin = store.login("demo-admin", "demo-admin-pass").account
    store.revoke("demo-officer", by=admin, compartments=["HUMINT"])
    with services.writing("test") as kb:
        kb.delete("source-protection-guidance.md")
    with pytest.raises(NotPermittedError, match="not cleared for TOP SECRET:HUMINT"):
        install_demo(services)
    assert services.knowledge().catalog.get("source-protection-guidance.md") is None


# -- over the real engine, through the command line -------------------------------------


def login(data: Path, store: ModelStore, name: str) -> str:
    proc = run_cli(["login", name, "--password-stdin", "--print-token"], data, store, input=f"{name}-pass\n")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, model_store: ModelStore) -> tuple[Path, dict, float]:
    base = tmp_path_factory.mktemp("demo")
    t0 = time.monotonic()
    proc = run_cli(["demo", "install", "--json"], base, model_store)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    return base, json.loads(proc.stdout), elapsed


def test_cli_install_catalogues_everything_and_second_run_is_unchanged(
        installed: tuple[Path, dict, float], model_store: ModelStore) -> None:
    base, first, first_s = installed
    assert len(first["accounts"]["created"]) == 6 and not first["failed"]
    assert first["collections"]["research"]["added"] == 300
    officer = login(base, model_store, "demo-officer")
    listed = run_cli(["docs", "list", "--json"], base, model_store, token=officer)
    assert listed.returncode == 0, listed.stderr
    catalog = {d["doc_id"]: d for d in json.loads(listed.stdout)}
    for entry in load_bundle().entries:
        for doc_id in entry.doc_ids:
            assert catalog[doc_id]["labels"] == str(entry.labels), doc_id

    analyst = login(base, model_store, "demo-analyst")
    seen = json.loads(run_cli(["docs", "list", "--json"], base, model_store, token=analyst).stdout)
    ids = {d["doc_id"] for d in seen}
    assert CRYPTO_DOC not in ids and "welcome-handbook.md" in ids
    assert {d["labels"] for d in seen} == {"UNCLASSIFIED"}

    t0 = time.monotonic()
    again = run_cli(["demo", "install", "--json"], base, model_store)
    second_s = time.monotonic() - t0
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout)
    assert second["accounts"]["created"] == [] and len(second["accounts"]["existing"]) == 6
    assert all(d["status"] == "unchanged" for d in second["documents"])
    assert sum(c["chunks"] for c in second["collections"].values()) == 0
    assert second_s < first_s, (first_s, second_s)
    print(f"demo install: first {first_s:.1f} s, second {second_s:.1f} s")


def test_ask_as_the_crypto_analyst_cites_the_key_rotation_schedule(
        installed: tuple[Path, dict, float], model_store: ModelStore) -> None:
    base, _, _ = installed
    question = "How often are the LE-400 link encryptor traffic keys rotated?"
    token = login(base, model_store, "demo-crypto")
    proc = run_cli(["ask", question, "--json"], base, model_store, token=token)
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert answer["outcome"] in ("answered", "quoted"), answer
    assert CRYPTO_DOC in {c["doc_id"] for c in answer["citations"]}
    assert "CRYPTO" in answer["marking"]

    token = login(base, model_store, "demo-analyst")
    proc = run_cli(["ask", question, "--json"], base, model_store, token=token)
    assert proc.returncode == 0, proc.stderr
    assert CRYPTO_DOC not in {c["doc_id"] for c in json.loads(proc.stdout)["citations"]}
