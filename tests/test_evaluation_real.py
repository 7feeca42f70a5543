"""Evaluation over the real appliance: the demo documents and specialists, the CLI, the engine."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from appliance.audit.log import AuditLog
from appliance.runtime.model_store import ModelStore
from tests.helpers import make_accounts, run_cli, store_copy

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "bundles" / "demo" / "documents"
ADAPTERS = REPO / "bundles" / "adapters"


def _items() -> list[dict]:
    qa = [
        ("Which room is the Removable Media Kiosk in?", ["room A-017"], ["removable-media-kiosk.md"]),
        ("Where do I leave my phone?", ["in the lockers in room A-003"], ["faq-lockers"]),
        ("What is the name of the station cat?", [], []),
    ]
    items = [{"kind": "qa", "input": q, "expected": {"answers": a, "sources": s, "unanswerable": not a}}
             for q, a, s in qa]
    with open(ADAPTERS / "banking77-intent" / "held_out.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    labels = ["card_arrival", "lost_or_stolen_card", "exchange_rate", "top_up_failed"]
    for label in labels:  # three of each: two may become the few-shot examples, one at least is evaluated
        items += [{"kind": "classify", "input": r["text"], "expected": {"label": label}}
                  for r in [r for r in rows if r["label"] == label][:3]]
    with open(ADAPTERS / "wnut17-entities" / "held_out.jsonl") as fh:
        sentences = [json.loads(line) for line in fh]
    items += [{"kind": "extract", "input": s["text"], "expected": {"spans": s["spans"]}}
              for s in [s for s in sentences if s["spans"]][:6]]
    return items


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory, model_store: ModelStore) -> tuple[Path, ModelStore, dict]:
    base = tmp_path_factory.mktemp("evaluation")
    store = store_copy(model_store, base / "models")
    tokens = make_accounts(base, store, {"olga": ("officer", "TOP SECRET"), "ann": ("analyst", "UNCLASSIFIED")})
    for name in ("banking77-intent", "wnut17-entities"):
        proc = run_cli(["models", "import", str(ADAPTERS / name / f"{name}.gguf"), "--name", name, "--kind", "adapter",
                     "--base", "smollm2-135m-instruct"], base, store, token=tokens["root"])
        assert proc.returncode == 0, proc.stderr
    docs = [str(DOCS / n) for n in ("removable-media-kiosk.md", "facility-faq.jsonl", "welcome-handbook.md")]
    proc = run_cli(["ingest", *docs, "--labels", "UNCLASSIFIED"], base, store, token=tokens["olga"])
    assert proc.returncode == 0, proc.stderr
    (base / "set.jsonl").write_text("".join(json.dumps(i) + "\n" for i in _items()))
    return base, store, tokens


@pytest.mark.slow  # 84 s; eval run on the real appliance stays in the default run (generators side by side)
def test_eval_run_compares_the_four_architectures_on_the_real_appliance(
        appliance: tuple[Path, ModelStore, dict]) -> None:
    base, store, tokens = appliance
    refused = run_cli(["evalset", "import", "facility", str(base / "set.jsonl")], base, store, token=tokens["ann"])
    assert refused.returncode == 2 and "evaluation.manage needs the role" in refused.stderr
    made = run_cli(["evalset", "import", "facility", str(base / "set.jsonl")], base, store, token=tokens["olga"])
    assert made.returncode == 0, made.stderr
    assert "21 items (3 qa, 12 classify, 6 extract)" in made.stdout

    out = base / "report"
    proc = run_cli(["eval", "run", "--set", "facility", "--out", str(out), "--json"], base, store, token=tokens["olga"])
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    qa, classify, extract = (report["by_kind"][k] for k in ("qa", "classify", "extract"))
    assert set(qa["architectures"]) == {"single_shot", "agentic", "hybrid"}
    assert set(classify["architectures"]) == set(extract["architectures"]) == {"single_shot", "specialist", "hybrid"}
    agentic = qa["architectures"]["agentic"]
    assert agentic["source_recall"] >= 0.5 and agentic["groundedness"] >= 0.5
    assert agentic["abstained_when_unanswerable"] == 1.0  # the cat is in no document
    assert agentic["p50_ms"] > 0 and agentic["tokens_mean"] > 0
    adapter, few_shot = classify["architectures"]["specialist"], classify["architectures"]["single_shot"]
    assert classify["items"] >= 4 and adapter["accuracy"] > few_shot["accuracy"]
    assert adapter["p50_ms"] < few_shot["p50_ms"]
    assert classify["recommendation"]["architecture"] == "specialist", classify["recommendation"]
    assert extract["architectures"]["specialist"]["f1"] > extract["architectures"]["single_shot"]["f1"]
    assert extract["architectures"]["specialist"]["tokens_mean"] > 0
    for section in (qa, classify, extract):
        assert section["recommendation"]["reasons"]

    assert (out / "report.md").read_text().startswith("# Evaluation of `facility`")
    assert json.loads((out / "report.json").read_text())["run_id"] == report["run_id"]
    for kind in ("qa", "classify", "extract"):
        assert (out / f"{kind}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    runs = json.loads(run_cli(["eval", "runs", "--json"], base, store, token=tokens["olga"]).stdout)
    assert [(r["id"], r["trigger"], r["set_name"]) for r in runs] == [(report["run_id"], "manual", "facility")]
    kinds = [e.value() for e in AuditLog(base / "data" / "audit").entries()]
    result = next(e for e in kinds if e["kind"] == "evaluation.result")
    assert result["user"] == "olga" and result["recommendations"]["classify"] == "specialist"
    assert {"evaluation.set.import", "evaluation.run"} <= {e["kind"] for e in kinds}

    again = base / "again"
    proc = run_cli(["eval", "report", report["run_id"], "--out", str(again)], base, store, token=tokens["olga"])
    assert proc.returncode == 0, proc.stderr
    assert (again / "report.md").read_text() == (out / "report.md").read_text()


def test_set_from_analysts_feedback_and_export(appliance: tuple[Path, ModelStore, dict]) -> None:
    base, store, tokens = appliance
    empty = run_cli(["evalset", "from-feedback", "flags"], base, store, token=tokens["olga"])
    assert empty.returncode == 2 and "no usable feedback yet" in empty.stderr
    from appliance.agent.store import AgentStore

    asked = run_cli(["ask", "Which room is the Removable Media Kiosk in?", "--json"], base, store, token=tokens["ann"])
    assert asked.returncode == 0, asked.stderr
    answer = json.loads(asked.stdout)
    other = run_cli(["feedback", answer["trace_id"], "right"], base, store, token=tokens["olga"])
    assert other.returncode == 2 and "no trace" in other.stderr  # only one's own answers
    marked = run_cli(["feedback", answer["trace_id"], "right"], base, store, token=tokens["ann"])
    assert marked.returncode == 0, marked.stderr
    assert AgentStore(base / "data" / "agent.db").feedback("ann")[0]["verdict"] == "right"
    made = run_cli(["evalset", "from-feedback", "flags"], base, store, token=tokens["olga"])
    assert made.returncode == 0, made.stderr
    shown = json.loads(run_cli(["evalset", "show", "flags", "--json"], base, store, token=tokens["olga"]).stdout)
    [item] = shown["items"]
    assert item["input"] == "Which room is the Removable Media Kiosk in?"
    assert item["expected"]["sources"] == sorted({c["doc_id"] for c in answer["citations"]}) or \
        set(item["expected"]["sources"]) == {c["doc_id"] for c in answer["citations"]}
    exported = base / "flags.jsonl"
    assert run_cli(["evalset", "export", "flags", str(exported)], base, store, token=tokens["olga"]).returncode == 0
    back = run_cli(["evalset", "import", "flags-copy", str(exported)], base, store, token=tokens["olga"])
    assert back.returncode == 0 and shown["digest"][:16] in back.stdout


def test_eval_run_compares_generators_side_by_side(appliance: tuple[Path, ModelStore, dict]) -> None:
    """`--generator` runs the set with each generator in turn (the engine restarted, self-tested, for
    each) and reports every architecture once per generator, with one recommendation across them."""
    base, store, tokens = appliance
    qa = [i for i in _items() if i["kind"] == "qa"][:2]
    (base / "gens.jsonl").write_text("".join(json.dumps(i) + "\n" for i in qa))
    made = run_cli(["evalset", "import", "gens", str(base / "gens.jsonl")], base, store, token=tokens["olga"])
    assert made.returncode == 0, made.stderr
    bad = run_cli(["eval", "run", "--set", "gens", "--generator", "all-minilm-l6-v2"], base, store,
                  token=tokens["olga"])
    assert bad.returncode != 0 and "all-minilm-l6-v2 is not a generator (kind embedder)" in bad.stderr
    out = base / "gens-report"
    proc = run_cli(["eval", "run", "--set", "gens", "--arch", "agentic", "--generator", "smollm2-135m-instruct",
                 "--generator", "gemma3-270m", "--out", str(out), "--json"], base, store, token=tokens["olga"])
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["generators"] == ["smollm2-135m-instruct", "gemma3-270m"]
    archs = report["by_kind"]["qa"]["architectures"]
    assert set(archs) == {f"{a}@{g}" for a in ("single_shot", "agentic", "hybrid")
                          for g in report["generators"]}
    for g in report["generators"]:
        ran = archs[f"agentic@{g}"]
        assert ran["items"] == 2 and ran["p50_ms"] > 0 and "expected_fact_rate" in ran
    assert report["by_kind"]["qa"]["recommendation"]["architecture"] in {"agentic@smollm2-135m-instruct",
                                                                         "agentic@gemma3-270m"}
    md = (out / "report.md").read_text()
    assert "agentic RAG, gemma3-270m" in md and "agentic RAG, smollm2-135m-instruct" in md
