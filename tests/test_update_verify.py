"""Verifying a bundle on the appliance: a dry run that says what would change, and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.access.labels import Labels
from appliance.errors import (
    BundleError,
    BundleMismatchError,
    BundleRollbackError,
    NotPermittedError,
)
from appliance.updates.build import build_bundle, load_spec
from appliance.updates.check import applied_state, trust_root, verify_bundle
from appliance.updates.keys import init_keys
from tests.helpers import BUILD_PASS, bundle_spec


def _bundle(tmp_path: Path, release: int = 1, name: str = "b1", now=None) -> Path:
    if not (tmp_path / "keys").exists():
        init_keys(tmp_path / "keys", BUILD_PASS)
    build_bundle(load_spec(bundle_spec(tmp_path, release)), tmp_path / "keys", BUILD_PASS,
                 tmp_path / "state", tmp_path / name,
                 now=now)
    return tmp_path / name


def test_dry_run_verifies_plans_and_changes_nothing(appliance, tmp_path: Path) -> None:
    media = _bundle(tmp_path)
    olga = appliance.accounts().get("olga")
    trust_root(appliance.update_site(), olga, media / "metadata" / "1.root.json")
    before = appliance.knowledge().catalog.counts()
    plan = verify_bundle(appliance.update_site(), olga, media, "northgate")
    assert plan.summary() == {"bundle": "northgate-knowledge", "class": "northgate", "release": 1, "targets": 2,
                              "add": ["canteen.txt", "keys.txt"], "replace": [], "revoke": [], "models": [],
                              "adapters": [], "policy": []}
    assert appliance.knowledge().catalog.counts() == before
    assert not list((appliance.settings.data_dir / "updates").glob("meta-*"))  # nothing trusted changed
    assert applied_state(appliance.update_site()) == {"release": 0}
    kinds = [e.value()["kind"] for e in appliance.audit().entries()]
    assert kinds[-1] == "bundle.verify" and "bundle.trust_root" in kinds


def test_plan_names_what_would_be_replaced_and_revoked(appliance, tmp_path: Path) -> None:
    media = _bundle(tmp_path)
    olga = appliance.accounts().get("olga")
    trust_root(appliance.update_site(), olga, media / "metadata" / "1.root.json")
    (tmp_path / "old-menu.txt").write_text("The old canteen menu.\n")
    (tmp_path / "canteen.txt").write_text("An older canteen text.\n")
    with appliance.writing("test") as kb:
        kb.ingest_files([tmp_path / "old-menu.txt", tmp_path / "canteen.txt"], Labels("UNCLASSIFIED"),
                        collection="facility-handbook")
    plan = verify_bundle(appliance.update_site(), olga, media, "northgate")
    assert plan.replace == ["canteen.txt"] and plan.revoke == ["old-menu.txt"] and plan.add == ["keys.txt"]


def test_refusals_are_clear_and_audited(appliance, tmp_path: Path) -> None:
    media = _bundle(tmp_path)
    olga = appliance.accounts().get("olga")
    with pytest.raises(BundleError, match="no trusted root"):
        verify_bundle(appliance.update_site(), olga, media, "northgate")
    trust_root(appliance.update_site(), olga, media / "metadata" / "1.root.json")
    with pytest.raises(BundleError, match="already provisioned"):
        trust_root(appliance.update_site(), olga, media / "metadata" / "1.root.json")
    with pytest.raises(BundleMismatchError, match="for appliance class 'northgate', this is 'other'"):
        verify_bundle(appliance.update_site(), olga, media, "other")
    with pytest.raises(NotPermittedError, match="bundles.manage needs"):
        from appliance.app.updates import verify

        verify(appliance, appliance.accounts().get("ann"), media)
    (appliance.settings.data_dir / "updates" / "state.json").write_text(json.dumps({"release": 3}))
    with pytest.raises(BundleRollbackError, match="release 1, not above the applied release 3"):
        verify_bundle(appliance.update_site(), olga, media, "northgate")
    reasons = [e.value() for e in appliance.audit().entries() if e.value()["kind"] == "bundle.refused"]
    assert len(reasons) == 3 and "no trusted root" in reasons[0]["reason"]


def test_signature_over_different_bytes_refused(appliance, tmp_path: Path) -> None:
    media = _bundle(tmp_path)
    olga = appliance.accounts().get("olga")
    trust_root(appliance.update_site(), olga, media / "metadata" / "1.root.json")
    targets = media / "metadata" / "1.targets.json"
    doc = json.loads(targets.read_text())
    doc["signed"]["x-appliance"]["release"] = 99  # the signature no longer covers these bytes
    targets.write_text(json.dumps(doc))
    with pytest.raises(BundleMismatchError):  # the snapshot's signed length and hash catch it before the signature
        verify_bundle(appliance.update_site(), olga, media, "northgate")


def test_unsigned_data_appended_to_signed_metadata_refused(appliance, tmp_path: Path) -> None:
    media = _bundle(tmp_path)
    olga = appliance.accounts().get("olga")
    trust_root(appliance.update_site(), olga, media / "metadata" / "1.root.json")
    ts = media / "metadata" / "timestamp.json"
    ts.write_bytes(ts.read_bytes() + b'\n{"extra": true}')
    with pytest.raises(BundleError, match="refused"):
        verify_bundle(appliance.update_site(), olga, media, "northgate")


def test_payload_one_byte_long_refused(appliance, tmp_path: Path) -> None:
    media = _bundle(tmp_path)
    olga = appliance.accounts().get("olga")
    trust_root(appliance.update_site(), olga, media / "metadata" / "1.root.json")
    blob = next((media / "targets" / "knowledge" / "security").iterdir())
    blob.write_bytes(blob.read_bytes() + b"x")
    with pytest.raises(BundleMismatchError):
        verify_bundle(appliance.update_site(), olga, media, "northgate")
    assert not list((appliance.settings.data_dir / "updates" / "staging").iterdir())  # the bad blob is not kept


@pytest.mark.processes
def test_bundle_trust_and_verify_through_the_cli(tmp_path: Path) -> None:
    from tests.helpers import make_accounts as _accounts
    from tests.helpers import run_cli as _run

    media = _bundle(tmp_path)
    store = type("S", (), {"root": tmp_path / "models"})()
    tokens = _accounts(tmp_path, store, {"olga": ("officer", "SECRET:CRYPTO")})
    proc = _run(["bundle", "trust", str(media / "metadata" / "1.root.json")], tmp_path, store, token=tokens["olga"])
    assert proc.returncode == 0, proc.stderr
    proc = _run(["bundle", "verify", str(media), "--json"], tmp_path, store, token=tokens["olga"])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["add"] == ["canteen.txt", "keys.txt"]
    bad = _run(["bundle", "verify", str(tmp_path / "docs")], tmp_path, store, token=tokens["olga"])
    assert bad.returncode == 2 and "not a bundle" in bad.stderr


def test_an_officer_cannot_overwrite_a_document_above_their_clearance(appliance, tmp_path: Path) -> None:
    from appliance.app import documents as operations
    from appliance.errors import KnowledgeError

    top = tmp_path / "top"
    top.mkdir()
    (top / "plan.txt").write_text("The top secret plan.\n")
    admin = appliance.accounts().get("root")
    operations.ingest(appliance, admin, [top / "plan.txt"], Labels("TOP SECRET"))
    (tmp_path / "plan.txt").write_text("An innocent plan.\n")
    report = operations.ingest(appliance, appliance.accounts().get("olga"), [tmp_path / "plan.txt"], Labels("SECRET"))
    assert report.count("failed") == 1 and "cannot be used" in report.outcomes[0].reason
    assert appliance.knowledge().catalog.get("plan.txt").labels == Labels("TOP SECRET")
    with pytest.raises(KnowledgeError, match="no document 'plan.txt'"):
        operations.show_document(appliance, appliance.accounts().get("olga"), "plan.txt")
    kinds = [e.value()["kind"] for e in appliance.audit().entries()]
    assert "document.ingest" in kinds and "document.show" not in kinds  # refused reads leave no show entry
    operations.search(appliance, appliance.accounts().get("olga"), "plan")
    last = list(appliance.audit().entries())[-1].value()
    assert last["kind"] == "search" and last["query"] == "plan" and last["chunks"] == []
