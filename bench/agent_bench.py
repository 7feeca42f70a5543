"""Agent benchmarks for the agentic-RAG issue (SciFact training claims).

The agent loop and single-shot retrieve-then-generate RAG answer the same claims over
the same index, side by side: evidence-document recall, citation precision,
groundedness, label accuracy, abstention, latency. The agent's own time is split from
its traces into model, retrieval and orchestration.

Claims 0-299 were used to set the evidence thresholds (``AgentSettings``); the figures
here come from the held-out claims after them (all 509; ``--quick``: the first 60).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from appliance.access.labels import LevelScale, Principal
from appliance.agent.loop import Agent
from appliance.agent.store import AgentStore
from appliance.config import KnowledgeSettings
from appliance.evaluation.claims import evaluate_claims, load_claims
from appliance.evaluation.retrieval import EVAL_LABELS, ingest_corpus
from appliance.knowledge.base import KnowledgeBase
from appliance.knowledge.retrieval import Retriever
from appliance.runtime.client import EngineClient
from appliance.runtime.protocol import EngineSpec
from bench.runtime_bench import REPO, THREADS, _store

DATA = REPO.parent / "shared" / "data" / "scifact"
WORK = REPO / "bench" / "work"
DEV_CLAIMS = 300  # claims used to choose thresholds; never reported


def _engine() -> EngineClient:
    store = _store()
    client = EngineClient(EngineSpec(generator_path=str(store.get("smollm2-135m-instruct").path),
                                     embedder_path=str(store.get("all-minilm-l6-v2").path), threads=THREADS))
    client.start()
    return client


def run(quick: bool = False, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    WORK.mkdir(parents=True, exist_ok=True)
    engine = _engine()
    claims = load_claims(DATA / "claims_train.jsonl")[DEV_CLAIMS:]
    claims = claims[:60] if quick else claims
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console)
    try:
        # the whole corpus, kept between runs (ingest skips unchanged documents)
        kb = KnowledgeBase(WORK / "agent-scifact", lambda t: engine.embed(list(t), batch=256), scale=LevelScale(),
                           settings=KnowledgeSettings())
        with tempfile.TemporaryDirectory(prefix="agent-bench-") as tmp, progress:
            task = progress.add_task("SciFact corpus", total=None)
            ingest = ingest_corpus(kb, DATA / "corpus.jsonl", progress=lambda _s, n: progress.advance(task, n))
            progress.update(task, description="claims: agent and single-shot", completed=0, total=len(claims))
            agent = Agent(Retriever(kb, kb.settings), engine, AgentStore(Path(tmp) / "agent.db"), LevelScale())
            result = evaluate_claims(agent, claims, Principal("eval", EVAL_LABELS.level),
                                     progress=lambda n: progress.advance(task, n))
    finally:
        engine.close()
    a, s = result["systems"]["agent"], result["systems"]["single_shot"]
    split = a["time_split"]

    def ratio(x: float, y: float) -> float | None:
        return x / y if y else None

    result["ingest"] = ingest
    result["claims_range"] = f"{DEV_CLAIMS}..{DEV_CLAIMS + len(claims) - 1} (held out)"
    result["rows"] = [
        {"name": "citation precision, agent vs single-shot", "appliance": f"{a['citation_precision']:.3f}",
         "baseline": f"{s['citation_precision']:.3f}", "ratio": ratio(a["citation_precision"], s["citation_precision"]),
         "target": ">= 0.8, beats baseline",
         "met": a["citation_precision"] >= 0.8 and a["citation_precision"] > s["citation_precision"]},
        {"name": "evidence-document recall, agent vs single-shot", "appliance": f"{a['evidence_doc_recall']:.3f}",
         "baseline": f"{s['evidence_doc_recall']:.3f}", "ratio": ratio(a["evidence_doc_recall"],
                                                                      s["evidence_doc_recall"]),
         "target": "beats baseline", "met": a["evidence_doc_recall"] > s["evidence_doc_recall"]},
        {"name": "groundedness of answer sentences", "appliance": f"{a['groundedness']:.3f}",
         "baseline": f"{s['groundedness']:.3f}", "ratio": ratio(a["groundedness"], s["groundedness"]),
         "target": ">= 0.9", "met": a["groundedness"] >= 0.9},
        {"name": "label accuracy (claim labelled from what was cited)", "appliance": f"{a['label_accuracy']:.3f}",
         "baseline": f"{s['label_accuracy']:.3f}", "ratio": ratio(a["label_accuracy"], s["label_accuracy"]),
         "target": "-", "met": True},
        {"name": "abstention rate", "appliance": f"{a['abstention_rate']:.3f}",
         "baseline": f"{s['abstention_rate']:.3f}", "ratio": None, "target": "-", "met": True},
        {"name": "ask latency s p50 / p95 (single-shot: retrieve+generate)",
         "appliance": f"{a['answer_latency_s_p50']:.2f} / {a['answer_latency_s_p95']:.2f}",
         "baseline": f"{s['answer_latency_s_p50']:.2f} / {s['answer_latency_s_p95']:.2f}",
         "ratio": ratio(a["answer_latency_s_p50"], s["answer_latency_s_p50"]), "target": "p50 <= 3, p95 <= 8",
         "met": a["answer_latency_s_p50"] <= 3 and a["answer_latency_s_p95"] <= 8},
        {"name": "agent time: orchestration share (from traces)",
         "appliance": f"{split['orchestration']:.1%} (p95 {split['orchestration_share_p95']:.1%})",
         "baseline": f"model {split['model']:.1%}, retrieval {split['retrieval']:.1%}", "ratio": None,
         "target": "< 10%", "met": split["orchestration"] < 0.10},
    ]
    return result
