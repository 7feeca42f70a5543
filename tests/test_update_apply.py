"""Applying bundles: generations, the atomic switch, no-op re-apply, rollback, history, recovery."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from appliance.errors import BundleError, BundleRollbackError, NotPermittedError
from appliance.updates.apply import apply_bundle, history, recover, rollback
from appliance.updates.build import build_bundle, load_spec
from appliance.updates.check import applied_state, trust_root, trusted_metadata, verify_bundle
from appliance.updates.generations import current_info, current_path
from appliance.updates.keys import init_keys
from tests.helpers import BUILD_PASS, ScriptedEngine, bundle_spec


def _build(tmp_path: Path, release: int, name: str, extra: str = "", docs: dict[str, str] | None = None) -> Path:
    if not (tmp_path / "keys").exists():
        init_keys(tmp_path / "keys", BUILD_PASS)
    spec = bundle_spec(tmp_path, release, extra)
    for fname, text in (docs or {}).items():
        (tmp_path / "docs" / fname).write_text(text)
    build_bundle(load_spec(spec), tmp_path / "keys", BUILD_PASS, tmp_path / "state", tmp_path / name)
    return tmp_path / name


def _docs(services) -> dict[str, str]:  # noqa: ANN001
    kb = services.knowledge()
    return {d.doc_id: (d.collection or "") for d in kb.catalog.documents()}


def _trusted(appliance, tmp_path: Path, media: Path):  # noqa: ANN001, ANN202
    olga = appliance.accounts().get("olga")
    trust_root(appliance.update_site(), olga, media / "metadata" / "1.root.json")
    return olga


def test_apply_makes_a_new_generation_and_switches_to_it(appliance, tmp_path: Path) -> None:
    media = _build(tmp_path, 1, "b1")
    olga = _trusted(appliance, tmp_path, media)
    first = current_path(appliance.settings.data_dir)
    steps: list[str] = []
    result = apply_bundle(appliance.update_site(), olga, media, lambda phase, done, total: steps.append(phase))
    assert result.generation == 1 and not result.noop
    assert result.changes == {"added": 2, "replaced": 0, "unchanged": 0, "revoked": 0}
    assert current_path(appliance.settings.data_dir) != first and first.is_dir()  # the old one is kept
    assert _docs(appliance) == {"canteen.txt": "facility-handbook", "keys.txt": "security"}
    info = current_info(appliance.settings.data_dir)
    assert (info.bundle, info.release, info.parent, info.by) == ("northgate-knowledge", 1, 0, "olga")
    state = applied_state(appliance.update_site())
    assert state["release"] == 1 and trusted_metadata(appliance.update_site()).is_dir()
    assert {"staging", "verifying", "ingesting knowledge", "health check", "switching"} <= set(steps)
    kinds = [e.value()["kind"] for e in appliance.audit().entries()]
    assert kinds[-2:] == ["bundle.verify", "bundle.apply"]
    hits = appliance.knowledge().catalog.bm25(appliance.knowledge().catalog.documents()[0].labels.partition,
                                              "canteen lunch", 5)
    assert hits  # the switched-to index answers


def test_the_same_bundle_twice_is_a_no_op(appliance, tmp_path: Path) -> None:
    media = _build(tmp_path, 1, "b1")
    olga = _trusted(appliance, tmp_path, media)
    apply_bundle(appliance.update_site(), olga, media)
    serving = current_path(appliance.settings.data_dir)
    again = apply_bundle(appliance.update_site(), olga, media)
    assert again.noop and again.generation is None
    assert current_path(appliance.settings.data_dir) == serving
    assert verify_bundle(appliance.update_site(), olga, media, "northgate").already_applied
    assert [e.value()["kind"] for e in appliance.audit().entries()][-2] == "bundle.noop"


def test_delta_replaces_and_revokes_and_rollback_restores(appliance, tmp_path: Path) -> None:
    media = _build(tmp_path, 1, "b1")
    olga = _trusted(appliance, tmp_path, media)
    apply_bundle(appliance.update_site(), olga, media)
    # release 2: canteen changed, keys.txt gone from the security collection
    delta = _build(tmp_path, 2, "b2", docs={"canteen.txt": "The canteen now serves lunch from one o'clock.\n"})
    (tmp_path / "docs" / "keys.txt").unlink()
    text = (tmp_path / "demo.toml").read_text().replace('paths = ["docs/keys.txt"]', "paths = []")
    (tmp_path / "demo.toml").write_text(text.replace("release = 2", "release = 3"))
    third = tmp_path / "b3"
    build_bundle(load_spec(tmp_path / "demo.toml"), tmp_path / "keys", BUILD_PASS, tmp_path / "state", third)
    r2 = apply_bundle(appliance.update_site(), olga, delta)
    assert r2.changes["replaced"] == 1 and r2.changes["unchanged"] == 1
    r3 = apply_bundle(appliance.update_site(), olga, third)
    assert r3.changes["revoked"] == 1 and _docs(appliance) == {"canteen.txt": "facility-handbook"}
    serving, kept, state = history(appliance.update_site(), olga)
    assert serving == 3 and [g.generation for g in kept] == [1, 2, 3]  # three kept: generation 0 pruned
    back = rollback(appliance.update_site(), olga)
    assert back.generation == 2 and set(_docs(appliance)) == {"canteen.txt", "keys.txt"}
    assert applied_state(appliance.update_site())["release"] == 3  # the high-water mark stays
    with pytest.raises(BundleRollbackError, match="timestamp version 2 must be >= 3"):
        apply_bundle(appliance.update_site(), olga, delta)  # a rolled-back bundle cannot be replayed
    with pytest.raises(BundleRollbackError, match=r"serve it again with `appliance bundle rollback --to 3`"):
        verify_bundle(appliance.update_site(), olga, third, "northgate")  # the newest bundle again, after the rollback
    rollback(appliance.update_site(), olga, to=3)
    assert set(_docs(appliance)) == {"canteen.txt"}
    assert apply_bundle(appliance.update_site(), olga, third).noop
    kinds = [e.value()["kind"] for e in appliance.audit().entries()]
    assert kinds.count("bundle.rollback") == 2 and "bundle.refused" in kinds


def test_analysts_may_not_apply_or_roll_back(appliance, tmp_path: Path) -> None:
    media = _build(tmp_path, 1, "b1")
    _trusted(appliance, tmp_path, media)
    ann = appliance.accounts().get("ann")
    from appliance.app import updates

    for use_case, args in ((updates.apply, (media,)), (updates.roll_back, ()), (updates.verify, (media,)),
                           (updates.generations, ()), (updates.accept, (1,)),
                           (updates.trust, (media / "metadata" / "1.root.json",))):
        with pytest.raises(NotPermittedError, match="bundles.manage needs the role officer or admin"):
            use_case(appliance, ann, *args)
    assert current_info(appliance.settings.data_dir).generation == 0
    olga = appliance.accounts().get("olga")
    result, gate = updates.apply(appliance, olga, media)  # the officer may
    assert result.generation == 1 and gate.verdict == "not run"


def test_a_failed_apply_leaves_the_serving_generation_and_trust_alone(appliance, tmp_path: Path) -> None:
    media = _build(tmp_path, 1, "b1")
    olga = _trusted(appliance, tmp_path, media)
    calls = {"n": 0}

    def failing_embed(texts):  # noqa: ANN001, ANN202 - the embedder dies during the apply
        calls["n"] += 1
        raise BundleError("embedder went away")

    appliance.fixed_engine = ScriptedEngine(embed=failing_embed)
    with pytest.raises(BundleError):
        apply_bundle(appliance.update_site(), olga, media)
    assert current_info(appliance.settings.data_dir).generation == 0
    site = appliance.update_site()
    assert applied_state(site) == {"release": 0} and trusted_metadata(site) is None
    assert not list((appliance.settings.data_dir / "updates").glob("meta-*"))
    assert not list((appliance.settings.data_dir / "generations").glob(".building-*"))
    assert [e.value()["kind"] for e in appliance.audit().entries()][-1] == "bundle.refused"


def test_a_payload_that_does_not_parse_is_refused_and_audited(appliance, tmp_path: Path) -> None:
    media = _build(tmp_path, 1, "b1", extra="""
[[knowledge]]
collection = "research"
labels = "UNCLASSIFIED"
paths = ["docs/corpus.jsonl"]
""", docs={"corpus.jsonl": "{not json\n"})
    olga = _trusted(appliance, tmp_path, media)
    with pytest.raises(BundleError, match="corpus.jsonl"):
        apply_bundle(appliance.update_site(), olga, media)
    assert [e.value()["kind"] for e in appliance.audit().entries()][-1] == "bundle.refused"
    assert not list((appliance.settings.data_dir / "updates" / "staging").iterdir())
    assert current_info(appliance.settings.data_dir).generation == 0


def test_evaluation_sets_arrive_with_the_policy_and_a_bad_one_is_refused(appliance, tmp_path: Path) -> None:
    good = '{"kind": "qa", "input": "When is lunch?", "expected": {"answers": ["noon"], "sources": ["canteen.txt"]}}\n'
    extra = """
[[evaluation]]
name = "gate"
path = "docs/gate.jsonl"
description = "lunch"
"""
    bad = _build(tmp_path, 1, "b1", extra=extra, docs={"gate.jsonl": good + '{"kind": "qa", "input": "x"}\n'})
    olga = _trusted(appliance, tmp_path, bad)
    with pytest.raises(BundleError, match=r"policy/evaluation/gate.jsonl: the evaluation set is refused: gate.jsonl:2"):
        apply_bundle(appliance.update_site(), olga, bad)
    assert appliance.eval_store().list() == [] and current_info(appliance.settings.data_dir).generation == 0
    (tmp_path / "docs" / "gate.jsonl").write_text(good)
    media = _build(tmp_path, 2, "b2", extra=extra)
    apply_bundle(appliance.update_site(), olga, media)
    [made] = appliance.eval_store().list()
    assert (made["name"], made["n_items"], made["description"]) == ("gate", 1, "lunch")
    assert made["origin"] == "bundle northgate-knowledge release 2"
    assert [e.value()["kind"] for e in appliance.audit().entries()][-2:] == ["bundle.apply", "evaluation.set.bundle"]


def test_recover_finishes_an_apply_interrupted_after_the_switch(appliance, tmp_path: Path) -> None:
    media = _build(tmp_path, 1, "b1")
    olga = _trusted(appliance, tmp_path, media)
    apply_bundle(appliance.update_site(), olga, media)
    state_file = appliance.settings.data_dir / "updates" / "state.json"
    state_file.write_text(json.dumps({"release": 0}))  # as if killed between the switch and the state write
    os.sync()
    done = recover(appliance.update_site())
    assert done and applied_state(appliance.update_site())["release"] == 1
    assert recover(appliance.update_site()) == []


def test_root_rotation_arrives_in_a_bundle_and_is_trusted_from_then_on(appliance, tmp_path: Path) -> None:
    from tuf.api.metadata import Metadata

    from appliance.updates.keys import load_keyring, rotate_role

    media = _build(tmp_path, 1, "b1")
    olga = _trusted(appliance, tmp_path, media)
    apply_bundle(appliance.update_site(), olga, media)
    rotate_role(tmp_path / "keys", "root", BUILD_PASS)  # new root keys; the old ones sign the handover
    rotate_role(tmp_path / "keys", "targets", BUILD_PASS)
    b2 = _build(tmp_path, 2, "b2")
    assert (b2 / "metadata" / "2.root.json").is_file()
    apply_bundle(appliance.update_site(), olga, b2)
    root = Metadata.from_file(str(trusted_metadata(appliance.update_site()) / "root.json")).signed
    ring = load_keyring(tmp_path / "keys")
    assert root.version == 2
    assert set(root.roles["root"].keyids) == {k.keyid for k in ring["root"].keys}
    assert set(root.roles["targets"].keyids) == {k.keyid for k in ring["targets"].keys}
    # from now on a bundle is verified against root 2 (the chain is not walked from root 1 again)
    b3 = _build(tmp_path, 3, "b3")
    for f in (b3 / "metadata").glob("[0-9]*.root.json"):
        if f.name == "1.root.json":
            f.unlink()  # an appliance at root 2 never needs root 1
    assert apply_bundle(appliance.update_site(), olga, b3).release == 3
