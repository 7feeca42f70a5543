"""Specialist benchmarks for the specialists issue (baselines measured in the same run).

1. Classification latency per text, end to end through the appliance's host (constrained to
   the label set, with the confidence), p50/p95, beside the raw generation of the same
   number of tokens by the same engine with no adapter and no constraint.
2. Switching adapters between requests: the same classifications alternating between two
   adapters, against all on one adapter; the difference per request is the switch cost.

The adapters are the trained demo specialists under ``bundles/adapters/`` when present,
else random adapters of the same shape (latency does not depend on what was learned).
"""

from __future__ import annotations

import csv
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


def run(quick: bool = False, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    WORK.mkdir(parents=True, exist_ok=True)
    gen = _store().get("smollm2-135m-instruct")
    with open(DATA, newline="") as fh:
        rows = list(csv.DictReader(fh))
    labels = sorted({r["category"] for r in rows})
    texts = [r["text"] for r in rows[:: max(1, len(rows) // (60 if quick else 300))]]
    trained = REPO / "bundles" / "adapters" / "banking77-intent" / "banking77-intent.gguf"
    a = trained if trained.is_file() else _random_adapter(gen.path, WORK / "a.gguf", labels, 1)
    b = _random_adapter(gen.path, WORK / "b.gguf", labels, 2)
    client = EngineClient(EngineSpec(generator_path=str(gen.path), adapters={"a": str(a), "b": str(b)}, threads=2,
                                     n_ctx=1024))
    client.start()
    try:
        for t in texts[:5]:  # warm up
            client.classify(classification_prompt(t), labels, adapter="a")
        with console.status(f"classifying {len(texts)} Banking77 texts (77 labels) on one adapter…"):
            same, steps = [], []
            for t in texts:
                t0 = time.perf_counter()
                out = client.classify(classification_prompt(t), labels, adapter="a")
                same.append(time.perf_counter() - t0)
                steps.append(out["steps"])
        with console.status("the same on the second adapter alone (it may choose other labels, of other lengths)…"):
            only_b = []
            for t in texts:
                t0 = time.perf_counter()
                client.classify(classification_prompt(t), labels, adapter="b")
                only_b.append(time.perf_counter() - t0)
        with console.status("the same, alternating between the two adapters…"):
            alternating = []
            for i, t in enumerate(texts):
                t0 = time.perf_counter()
                client.classify(classification_prompt(t), labels, adapter="ab"[i % 2])
                alternating.append(time.perf_counter() - t0)
        with console.status("raw generation of as many tokens, no adapter, no constraint…"):
            raw = []
            for t, n in zip(texts, steps, strict=True):
                t0 = time.perf_counter()
                client.generate(GenerateRequest(prompt=classification_prompt(t), max_tokens=max(1, n)))
                raw.append(time.perf_counter() - t0)
    finally:
        client.close()
    p50, p95 = statistics.median(same) * 1000, _pct(same, 0.95) * 1000
    # each alternating request against the same request on the same adapter without a switch
    unswitched = [same[i] if i % 2 == 0 else only_b[i] for i in range(len(texts))]
    switch_ms = (statistics.median(alternating) - statistics.median(unswitched)) * 1000
    raw50 = statistics.median(raw) * 1000
    out = {"machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg()}, "texts": len(texts),
           "labels": len(labels), "trained_adapter": trained.is_file(),
           "classify_ms": {"p50": p50, "p95": p95}, "raw_generate_ms_p50": raw50,
           "alternating_ms_p50": statistics.median(alternating) * 1000, "switch_cost_ms": switch_ms,
           "mean_steps": statistics.mean(steps)}
    out["rows"] = [
        {"name": "classification p50 ms per text (77 labels, through the host; vs raw generation, same tokens)",
         "appliance": f"{p50:.0f}", "baseline": f"{raw50:.0f}", "ratio": p50 / raw50, "target": "< 200 ms",
         "met": p50 < 200},
        {"name": "adapter switch between requests, ms (alternating p50 - same requests unswitched p50)",
         "appliance": f"{switch_ms:.1f}", "baseline": f"{p50:.0f}", "ratio": switch_ms / p50, "target": "< 5 ms",
         "met": switch_ms < 5},
    ]
    return out
