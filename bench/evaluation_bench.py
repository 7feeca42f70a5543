"""Evaluation benchmarks for the evaluation issue, on the demo appliance (its bundle applied).

1. A full evaluation of 300 items across the four architectures: 100 SciFact claims (those
   citing an abstract the demo holds, then claims about abstracts it does not hold, whose
   right verdict is NOT_ENOUGH_INFO) (single-shot, agentic, hybrid), 100 Banking77 texts and 100
   WNUT17 sentences (single-shot few-shot, specialist, hybrid), through ``eval run`` as an
   officer would start it. Baseline: the time the items themselves took (the sum of every
   architecture's per-item latency), so the ratio is the harness's own overhead.
2. The drift gate: a bundle applied without a gate, and the next one with a 50-question
   gate set (its baseline already recorded, as after any earlier gated apply); the
   difference is what the gate adds. The first gated apply also records the baseline: that
   cost is reported beside it.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from appliance.app.demo import demo_bundle, install_demo
from appliance.config import EvaluationSettings, Settings, load_settings
from appliance.evaluation.sets import EvalItem
from appliance.runtime.model_store import ModelStore
from appliance.services import build_services
from bench.runtime_bench import REPO, _store

WORK = REPO / "bench" / "work" / "evaluation"
SHARED = REPO.parent / "shared" / "data"
DEMO_SPEC = REPO / "bundles" / "demo.toml"


def _store_copy(store: ModelStore, dest: Path) -> Path:
    import sqlite3

    dest.mkdir(parents=True)
    shutil.copytree(store.blobs, dest / "blobs", copy_function=os.link)
    src, dst = sqlite3.connect(store.root / "registry.db"), sqlite3.connect(dest / "registry.db")
    src.backup(dst)
    src.close()
    dst.close()
    return dest


def _items(n: int, seed: int = 11) -> list[EvalItem]:
    """n claims, n classification texts, n extraction sentences."""
    rng = random.Random(seed)
    held = {json.loads(line)["doc_id"] for line in open(REPO / "bundles" / "demo" / "research" / "scifact-300.jsonl")}
    claims: dict[str, EvalItem] = {}
    absent: dict[str, EvalItem] = {}  # claims about abstracts the demo does not hold: nothing to go on
    for line in open(SHARED / "scifact" / "claims_train.jsonl"):
        row = json.loads(line)
        docs = {str(d) for d in row.get("cited_doc_ids") or []}
        if docs & held and row["claim"] not in claims:
            claims[row["claim"]] = EvalItem("claim", row["claim"], {"label": row.get("label") or "NOT_ENOUGH_INFO",
                                                                    "sources": sorted(docs & held)})
        elif docs and not docs & held:
            absent[row["claim"]] = EvalItem("claim", row["claim"], {"label": "NOT_ENOUGH_INFO", "sources": []})
    ordered = sorted(claims.values(), key=lambda i: i.input)
    chosen = rng.sample(ordered, min(n, len(ordered)))
    chosen += rng.sample(sorted(absent.values(), key=lambda i: i.input), n - len(chosen))
    with open(REPO / "bundles" / "adapters" / "banking77-intent" / "held_out.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    chosen += [EvalItem("classify", r["text"], {"label": r["label"]}) for r in rng.sample(rows, n)]
    sentences = [json.loads(line) for line in open(REPO / "bundles" / "adapters" / "wnut17-entities" /
                                                    "held_out.jsonl")]
    chosen += [EvalItem("extract", s["text"], {"spans": s["spans"]}) for s in rng.sample(sentences, n)]
    return chosen


def _spec(release: int, extra_doc: Path, out: Path) -> Path:
    """The demo spec at another release, with one more document (absolute paths: it lives elsewhere)."""
    text = DEMO_SPEC.read_text()
    text = re.sub(r"^release = \d+", f"release = {release}", text, flags=re.M)
    text = text.replace('"demo/', f'"{REPO / "bundles" / "demo"}/').replace('"adapters/',
                                                                           f'"{REPO / "bundles" / "adapters"}/')
    text += f'\n[[knowledge]]\ncollection = "facility-handbook"\nlabels = "UNCLASSIFIED"\npaths = ["{extra_doc}"]\n'
    out.write_text(text)
    return out


def fresh_settings(work: Path) -> Settings:
    """Settings for a new appliance under ``work`` (emptied first), its models a linked copy of the test store."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    return load_settings({"APPLIANCE_DATA_DIR": str(work / "data"),
                          "APPLIANCE_MODELS_DIR": str(_store_copy(_store(), work / "models"))})


def run(quick: bool = False, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    settings = fresh_settings(WORK)
    services = build_services(settings)
    out: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg()}}
    try:
        with console.status("installing the demo accounts and applying the demo bundle…"):
            install_demo(services, accounts_only=True)
            demo_bundle(services)
        from appliance.app.evaluation import run_set

        officer = services.accounts().get("demo-officer")
        n = 10 if quick else 100
        items = _items(n)
        services.eval_store().save("bench", items, by="bench", origin="bench", replace=True)
        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=console)
        with progress:
            task = progress.add_task(f"evaluating {len(items)} items", total=None)
            t0 = time.perf_counter()
            report = run_set(services, officer, "bench",
                             progress=lambda done, total: progress.update(task, completed=done, total=total))
            wall = time.perf_counter() - t0
        in_items = sum(m.get("total_s", 0.0) for k in report["by_kind"].values()
                       for m in k["architectures"].values() if "skipped" not in m)
        runs = sum(m.get("items", 0) for k in report["by_kind"].values() for m in k["architectures"].values()
                   if "skipped" not in m)
        out["full"] = {"items": len(items), "runs": runs, "seconds": wall, "seconds_in_items": in_items,
                       "ratio": wall / in_items, "report": report}

        # the drift gate: a 50-question set (claims: what the agent serves)
        gate_n = 10 if quick else 50
        services.eval_store().save("gate", [i for i in items if i.kind == "claim"][:gate_n] or items[:gate_n],
                                   by="bench", origin="bench", replace=True)
        station = WORK / "station"
        station.mkdir()
        docs = []
        for i in (1, 2):
            doc = station / f"bench-note-{i}.md"
            doc.write_text(f"# Bench note {i}\n\nThe bench note number {i} says the test shuttle leaves at "
                           f"{8 + i}:15 from Gate {i}.\n")
            docs.append(doc)
        from appliance.updates.build import load_spec

        base_release = load_spec(DEMO_SPEC).release
        plain_spec = _spec(base_release + 1, docs[0], station / "plain.toml")
        gated_spec = _spec(base_release + 2, docs[1], station / "gated.toml")
        with console.status("a bundle applied without a gate…"):
            t0 = time.perf_counter()
            demo_bundle(services, spec_path=plain_spec)
            plain = time.perf_counter() - t0
        gated_services = build_services(dataclasses.replace(settings, evaluation=EvaluationSettings(
            gate_sets=("gate",))))
        with console.status(f"the gate's baseline: {gate_n} questions on the serving generation…"):
            t0 = time.perf_counter()
            run_set(gated_services, officer, "gate", served=True, trigger="gate baseline")
            baseline_s = time.perf_counter() - t0
        from appliance.app.gate import apply_with_gate

        with console.status(f"the next bundle with the drift gate ({gate_n} questions)…"):
            bundle = station / "gated-bundle"
            from appliance.app.demo import DEMO_KEY_PASSPHRASE
            from appliance.updates.build import build_bundle

            build_bundle(load_spec(gated_spec), WORK / "data" / "demo-station" / "keys", DEMO_KEY_PASSPHRASE,
                         WORK / "data" / "demo-station" / "state", bundle)
            t0 = time.perf_counter()
            result, gate = apply_with_gate(gated_services, officer, bundle)
            gated = time.perf_counter() - t0
        gated_services.close()
        out["gate"] = {"questions": gate_n, "plain_apply_s": plain, "gated_apply_s": gated,
                       "added_s": gated - plain, "gate_s": gate.seconds, "baseline_first_time_s": baseline_s,
                       "verdict": gate.verdict, "compared": gate.compared, "failed": gate.failed,
                       "generation": result.generation}
    finally:
        services.close()
        out["machine"]["load_avg_at_end"] = os.getloadavg()
    f, g = out["full"], out["gate"]
    out["rows"] = [
        {"name": f"full evaluation: {f['items']} items, {f['runs']} runs over the 4 architectures, min "
                 "(vs the items' own time: the harness overhead)",
         "appliance": f"{f['seconds'] / 60:.1f}", "baseline": f"{f['seconds_in_items'] / 60:.1f}",
         "ratio": f["ratio"], "target": "< 30 min", "met": f["seconds"] < 1800},
        {"name": f"drift gate with {g['questions']} questions: added to a bundle apply, s (vs the apply without it)",
         "appliance": f"{g['added_s']:.0f}", "baseline": f"{g['plain_apply_s']:.0f}",
         "ratio": g["added_s"] / g["plain_apply_s"], "target": "< 120 s", "met": g["added_s"] < 120},
        {"name": "  the gate's first baseline on a generation (once; later gates reuse their own run), s",
         "appliance": f"{g['baseline_first_time_s']:.0f}", "baseline": f"{g['plain_apply_s']:.0f}",
         "ratio": g["baseline_first_time_s"] / g["plain_apply_s"], "target": "-", "met": True},
    ]
    shutil.rmtree(WORK, ignore_errors=True)
    return out
