"""The drift gate: figures compared with their thresholds, and over the real appliance a bundle that
makes answers worse is rolled back (or held until an officer accepts it), and audited."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.app.gate import GateResult, drops, figures, gate_text
from appliance.audit.log import AuditLog
from appliance.runtime.model_store import ModelStore
from tests.helpers import bundle_spec, cli_bundle, make_accounts, run_cli, run_cli_env

DOCS = {
    "kiosk.txt": "The Removable Media Kiosk is in room A-017 in Building A. Every USB drive is scanned there "
                 "before it is connected to a station computer.\n",
    "gym.txt": "The staff gym in Building E opens at six in the morning.\n",
}
QUESTIONS = [
    {"kind": "qa", "input": "Which room is the Removable Media Kiosk in?",
     "expected": {"answers": ["room A-017"], "sources": ["kiosk.txt"]}},
    {"kind": "qa", "input": "When does the canteen serve lunch?",
     "expected": {"answers": ["from noon"], "sources": ["canteen.txt"]}},
]


def test_drops_use_the_figure_threshold_then_the_metric_then_the_default() -> None:
    before = {"s:qa/token_f1": 0.5, "s:qa/groundedness": 1.0, "s:classify/accuracy": 0.9, "s:extract/f1": 0.4}
    after = {"s:qa/token_f1": 0.46, "s:qa/groundedness": 0.97, "s:classify/accuracy": 0.80, "s:extract/f1": 0.5}
    failed, compared = drops(before, after, 0.05, {"groundedness": 0.02, "s:classify/accuracy": 0.2})
    assert compared == 4
    assert [(f["figure"], f["threshold"]) for f in failed] == [("s:qa/groundedness", 0.02)]
    failed, _ = drops(before, after, 0.03, {})
    assert {f["figure"] for f in failed} == {"s:qa/token_f1", "s:classify/accuracy"}
    # a figure the new generation no longer yields (nothing left to measure it on) has fallen to 0
    assert drops({"a/x": 0.8}, {"b/y": 0.0}, 0.05, {}) == (
        [{"figure": "a/x", "before": 0.8, "after": None, "drop": 0.8, "threshold": 0.05}], 1)
    assert drops({"a/x": 0.0}, {}, 0.05, {}) == ([], 1)


def test_the_verdict_names_each_figure_and_a_run_that_failed() -> None:
    gate = GateResult("held", ["gate"], [
        {"figure": "gate: the gate run failed", "error": "engine crashed (exit -9)"},
        {"figure": "gate:qa/groundedness", "before": 0.9, "after": None, "drop": 0.9, "threshold": 0.05},
        {"figure": "gate:qa/token_f1", "before": 0.5, "after": 0.3, "drop": 0.2, "threshold": 0.05}], 4)
    text = gate_text(gate).plain
    assert "DRIFT GATE FAILED" in text and "held: accept it with `appliance bundle accept`" in text
    assert "gate: the gate run failed: engine crashed (exit -9)" in text
    assert "gate:qa/groundedness: 0.900 -> not measured (drop 0.900, allowed 0.050)" in text
    assert "gate:qa/token_f1: 0.500 -> 0.300" in text
    assert "passed: 4 figures of gate held up" in gate_text(GateResult("passed", ["gate"], [], 4)).plain


def test_figures_take_the_measured_architecture_of_each_kind() -> None:
    report = {"by_kind": {
        "qa": {"architectures": {"agentic": {"skipped": "not what is served"},
                                 "hybrid": {"token_f1": 0.4, "groundedness": 0.9, "exact_match": None,
                                            "p50_ms": 900}}},
        "classify": {"architectures": {"specialist": {"accuracy": 0.8, "macro_f1": 0.7, "p50_ms": 90}}}}}
    assert figures(report) == {"qa/token_f1": 0.4, "qa/groundedness": 0.9, "classify/accuracy": 0.8,
                               "classify/macro_f1": 0.7}


def _spec(tmp: Path, release: int, docs: list[str]) -> Path:
    """The update tests' bundle spec (the canteen and the cipher keys) with these documents besides."""
    (tmp / "docs").mkdir(exist_ok=True)
    for name in docs:
        (tmp / "docs" / name).write_text(DOCS[name])
    extra = f"""
[[knowledge]]
collection = "facility-handbook"
labels = "UNCLASSIFIED"
paths = {json.dumps([f"docs/{d}" for d in docs])}
""" if docs else ""
    return bundle_spec(tmp, release, extra)


def _apply(tmp: Path, store: ModelStore, token: str, media: Path, **env: str) -> tuple[int, dict]:
    extra = {"APPLIANCE_EVALUATION_GATE_SETS": "gate", **env}
    proc = run_cli_env(["bundle", "apply", str(media), "--json"], tmp / "data", store, token=token, extra=extra)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def _serving(tmp: Path, store: ModelStore, token: str) -> int:
    proc = run_cli(["bundle", "history", "--json"], tmp, store, token=token)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["serving"]


@pytest.mark.slow  # 35 s; the gate's rules are tested in the default run
def test_a_bundle_that_makes_answers_worse_is_rolled_back_or_held(tmp_path: Path, model_store: ModelStore) -> None:
    tok = make_accounts(tmp_path, model_store, {"olga": ("officer", "SECRET")})["olga"]
    first = cli_bundle(tmp_path, _spec(tmp_path, 1, ["kiosk.txt"]), "b1", model_store)
    assert run_cli(["bundle", "trust", str(first / "metadata" / "1.root.json")], tmp_path, model_store,
                token=tok).returncode == 0
    missing = run_cli_env(["bundle", "apply", str(first)], tmp_path / "data", model_store, token=tok,
                          extra={"APPLIANCE_EVALUATION_GATE_SETS": "gate"})
    assert missing.returncode == 2 and "drift gate: no evaluation set 'gate'" in missing.stderr
    assert run_cli(["bundle", "apply", str(first)], tmp_path, model_store, token=tok).returncode == 0
    (tmp_path / "gate.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    assert run_cli(["evalset", "import", "gate", str(tmp_path / "gate.jsonl")], tmp_path, model_store,
                token=tok).returncode == 0

    # release 2 drops the kiosk document: its question can no longer be answered from a source
    code, out = _apply(tmp_path, model_store, tok, cli_bundle(tmp_path, _spec(tmp_path, 2, []), "b2",
                                                           model_store))
    gate = out["gate"]
    assert code == 1 and gate["verdict"] == "rolled back", gate
    assert "gate:qa/source_recall" in {f["figure"] for f in gate["failed"]}
    assert _serving(tmp_path, model_store, tok) == 1
    runs = json.loads(run_cli(["eval", "runs", "--set", "gate", "--json"], tmp_path, model_store, token=tok).stdout)
    assert sorted(r["trigger"] for r in runs) == ["gate 2", "gate baseline"]

    # the same change held for an officer instead, then accepted
    code, out = _apply(tmp_path, model_store, tok, cli_bundle(tmp_path, _spec(tmp_path, 3, []), "b3",
                                                           model_store), APPLIANCE_EVALUATION_GATE_ACTION="hold")
    assert code == 1 and out["gate"]["verdict"] == "held"
    held = out["generation"]
    assert _serving(tmp_path, model_store, tok) == 1
    shown = run_cli(["bundle", "history"], tmp_path, model_store, token=tok)
    assert f"generation {held} is held by the drift gate" in shown.stdout
    wrong = run_cli(["bundle", "accept", "1"], tmp_path, model_store, token=tok)
    assert wrong.returncode == 2 and f"generation {held} is held" in wrong.stderr
    accepted = run_cli(["bundle", "accept", str(held)], tmp_path, model_store, token=tok)
    assert accepted.returncode == 0, accepted.stderr
    assert _serving(tmp_path, model_store, tok) == held
    assert json.loads(run_cli(["bundle", "history", "--json"], tmp_path, model_store, token=tok).stdout)["held"] is None

    # release 4 brings the kiosk back and adds a document: the gate passes against the accepted generation
    code, out = _apply(tmp_path, model_store, tok, cli_bundle(tmp_path, _spec(tmp_path, 4, list(DOCS)), "b4",
                                                           model_store))
    assert code == 0 and out["gate"]["verdict"] == "passed" and out["gate"]["compared"] >= 3, out["gate"]
    assert _serving(tmp_path, model_store, tok) == out["generation"]

    entries = [e.value() for e in AuditLog(tmp_path / "data" / "audit").entries()]
    verdicts = [e["verdict"] for e in entries if e["kind"] == "evaluation.gate"]
    assert verdicts == ["rolled back", "held", "passed"]
    accepted_entry = next(e for e in entries if e["kind"] == "evaluation.gate.accepted")
    assert accepted_entry["user"] == "olga" and accepted_entry["generation"] == held
