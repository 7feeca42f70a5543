"""Specialist benchmarks for the specialists issue (baselines measured in the same run).

1. Classification latency per text, end to end through the appliance's host (constrained to
   the label set, with the confidence), p50/p95, beside the raw generation of the same
   number of tokens by the same engine with no adapter and no constraint.
2. Switching adapters between requests, paired per text: a request right after the other
   adapter's, against the same request repeated on its adapter; the median difference is the
   switch cost. Measured as served (a llama.cpp context per adapter) and with one shared
   context whose adapter is set again on each switch (``adapter_contexts = 0``).

The adapters are the trained demo specialists under ``bundles/adapters/`` when present,
else random adapters of the same shape (latency does not depend on what was learned).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from appliance.runtime.client import EngineClient
from appliance.runtime.protocol import EngineSpec, GenerateRequest
from appliance.specialists.train import classification_prompt
from bench.adapters import random_adapter
from bench.runtime_bench import REPO, _store

WORK = REPO / "bench" / "work" / "specialists"
DATA = REPO.parent / "shared" / "data" / "banking77" / "train.csv"


def _random_adapter(base: Path, out: Path, labels: list[str], seed: int) -> Path:
    return random_adapter(base, out, rank=16, seed=seed, scale=0.01,
                          metadata={"appliance.task": "classify", "appliance.labels": json.dumps(labels)})


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def _switching(client: EngineClient, texts: list[str], labels: list[str], console: Console,
               how: str) -> tuple[list[float], list[float], list[int]]:
    """Paired per text: each adapter's request right after the other adapter's (a switch) against
    the same request repeated on the same adapter (none). Returns the unswitched seconds on
    adapter a, the switched-minus-unswitched differences, and the label steps on a."""
    def timed(text: str, adapter: str) -> tuple[float, dict]:
        t0 = time.perf_counter()
        out = client.classify(classification_prompt(text), labels, adapter=adapter)
        return time.perf_counter() - t0, out

    on_a: list[float] = []
    diffs: list[float] = []
    steps: list[int] = []
    for t in texts[:5]:  # warm up (each adapter's context is made on its first request)
        timed(t, "a")
        timed(t, "b")
    with console.status(f"classifying {len(texts)} Banking77 texts, switching and not ({how})…"):
        for t in texts:
            timed(t, "a")
            unswitched_a, out = timed(t, "a")
            switched_b, _ = timed(t, "b")
            unswitched_b, _ = timed(t, "b")
            switched_a, _ = timed(t, "a")
            on_a.append(unswitched_a)
            steps.append(out["steps"])
            diffs += [switched_b - unswitched_b, switched_a - unswitched_a]
    return on_a, diffs, steps


def run(quick: bool = False, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    WORK.mkdir(parents=True, exist_ok=True)
    gen = _store().get("smollm2-135m-instruct")
    with open(DATA, newline="") as fh:
        rows = list(csv.DictReader(fh))
    labels = sorted({r["category"] for r in rows})
    texts = [r["text"] for r in rows[:: max(1, len(rows) // (60 if quick else 200))]]
    trained = REPO / "bundles" / "adapters" / "banking77-intent" / "banking77-intent.gguf"
    a = trained if trained.is_file() else _random_adapter(gen.path, WORK / "a.gguf", labels, 1)
    b = _random_adapter(gen.path, WORK / "b.gguf", labels, 2)
    spec = EngineSpec(generator_path=str(gen.path), adapters={"a": str(a), "b": str(b)}, threads=2, n_ctx=1024)
    with EngineClient(spec) as client:
        same, diffs, steps = _switching(client, texts, labels, console, "a context per adapter")
        with console.status("raw generation of as many tokens, no adapter, no constraint…"):
            raw = []
            for t, n in zip(texts, steps, strict=True):
                t0 = time.perf_counter()
                client.generate(GenerateRequest(prompt=classification_prompt(t), max_tokens=max(1, n)))
                raw.append(time.perf_counter() - t0)
    # the same with one context whose adapter is set again on every switch (adapter_contexts = 0)
    with EngineClient(dataclasses.replace(spec, adapter_contexts=0)) as shared:
        _, diffs0, _ = _switching(shared, texts, labels, console, "one shared context")
    p50, p95 = statistics.median(same) * 1000, _pct(same, 0.95) * 1000
    switch_ms = statistics.median(diffs) * 1000
    retarget_ms = statistics.median(diffs0) * 1000
    raw50 = statistics.median(raw) * 1000
    out = {"machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg()}, "texts": len(texts),
           "labels": len(labels), "trained_adapter": trained.is_file(),
           "classify_ms": {"p50": p50, "p95": p95}, "raw_generate_ms_p50": raw50,
           "switch_cost_ms": switch_ms, "switch_cost_mean_ms": statistics.mean(diffs) * 1000,
           "retarget_cost_ms": retarget_ms, "mean_steps": statistics.mean(steps)}
    out["rows"] = [
        {"name": "classification p50 ms per text (77 labels, through the host; vs raw generation, same tokens)",
         "appliance": f"{p50:.0f}", "baseline": f"{raw50:.0f}", "ratio": p50 / raw50, "target": "< 200 ms",
         "met": p50 < 200},
        {"name": "adapter switch between requests, ms (median over texts: after the other adapter - repeated on "
                 "the same)",
         "appliance": f"{switch_ms:.1f}", "baseline": f"{p50:.0f}", "ratio": switch_ms / p50, "target": "< 5 ms",
         "met": switch_ms < 5},
        {"name": "  the same with one shared context re-targeted per switch (adapter_contexts = 0)",
         "appliance": f"{retarget_ms:.1f}", "baseline": f"{p50:.0f}", "ratio": retarget_ms / p50,
         "target": "-", "met": True},
    ]
    return out
