"""Answers on the demo appliance: today's pipeline against the one with the reranker.

The demo bundle is applied as `make run` applies it, and the demo question set
(``bundles/demo/evaluation/demo-questions.jsonl``, 65 questions) is run through ``eval run``
(the agent, as an officer) three times in one run, on the same index and models:

- today's: no reranking, quotes chosen by word overlap and cosine, sentences verified by
  lexical and semantic support only (``knowledge.rerank = false``, ``agent.entailment = false``,
  ``agent.contrast = false``);
- with the reranker only: the fused candidates reranked by the cross-encoder (no contrast check);
- the new default: the reranker and the contrast check (no entailment judge is configured by
  default; see the README).

Reported per pipeline: how often the answer states the expected fact, citation precision,
and how often it answered, quoted or abstained on answerable questions. The targets
(issue 17): expected-fact rate up by at least 0.15, citation precision not below today's.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

from rich.console import Console

from appliance.app.demo import demo_bundle, install_demo
from appliance.evaluation.sets import load_items
from appliance.services import build_services
from bench.evaluation_bench import fresh_settings
from bench.runtime_bench import REPO

WORK = REPO / "bench" / "work" / "answers"
QUESTIONS = REPO / "bundles" / "demo" / "evaluation" / "demo-questions.jsonl"
FIGURES = ("expected_fact_rate", "citation_precision", "token_f1", "source_recall", "answered_rate", "quoted_rate",
           "abstained_rate_answerable", "abstained_when_unanswerable", "groundedness", "p50_ms")


def run(quick: bool = False, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    base = fresh_settings(WORK)
    services = build_services(base)
    try:
        with console.status("installing the demo and applying the demo bundle…"):
            install_demo(services, accounts_only=True)
            demo_bundle(services)
        items = load_items(QUESTIONS)
        if quick:
            items = items[:12]
        services.eval_store().save("demo-questions", items, by="bench", origin="bench", replace=True)
    finally:
        services.close()
    today = dataclasses.replace(base, knowledge=dataclasses.replace(base.knowledge, rerank=False),
                                agent=dataclasses.replace(base.agent, entailment=False, contrast=False))
    reranker_only = dataclasses.replace(base, agent=dataclasses.replace(base.agent, contrast=False))
    reports: dict[str, dict] = {}
    from appliance.app.evaluation import run_set

    for label, settings in (("today", today), ("with the reranker", reranker_only),
                            ("new default (reranker + contrast check)", base)):
        services = build_services(settings)
        try:
            officer = services.accounts().get("demo-officer")
            with console.status(f"{label}: {len(items)} questions…"):
                t0 = time.perf_counter()
                report = run_set(services, officer, "demo-questions", architectures=("agentic",))
                report["wall_s"] = time.perf_counter() - t0
            reports[label] = report
        finally:
            services.close()
    figures = {label: {k: r["by_kind"]["qa"]["architectures"]["agentic"].get(k) for k in FIGURES}
               for label, r in reports.items()}
    old = figures["today"]
    rows = []
    for label, k in [(label, k) for label in list(figures)[1:] for k in FIGURES]:
        a, b = figures[label].get(k), old.get(k)
        target, met = "(reported)", True
        if k == "expected_fact_rate" and a is not None and b is not None:
            target, met = f">= today + 0.15 ({b + 0.15:.3f})", a >= b + 0.15
        if k == "citation_precision" and a is not None and b is not None:
            target, met = ">= today's", a >= b
        rows.append({"name": f"demo questions ({len(items)}): {k}, {label} vs today",
                     "appliance": "-" if a is None else f"{a:.3f}", "baseline": "-" if b is None else f"{b:.3f}",
                     "ratio": a / b if a is not None and b else None, "target": target, "met": met})
    return {"questions": len(items), "figures": figures, "machine": {"cpus": os.cpu_count()}, "rows": rows,
            "reports": reports}
