"""Evaluate a specialist beside the no-adapter path on the same data.

Classification: accuracy, macro-F1, abstention rate and p50/p95 latency of the adapter
(constrained to the label set, through the appliance), and beside it the base model with a
few-shot prompt (the label list and a few labelled examples, drawn from the data but never
an evaluated item), constrained the same way. Extraction: entity-level precision, recall
and F1 (a span counts when its offsets and type both match) and latency, beside the base
model with a few-shot prompt under the same JSON schema.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from appliance.runtime.protocol import Engine, GenerateRequest
from appliance.specialists.data import ClassificationData, Example, ExtractionData, Sentence
from appliance.specialists.serve import AdapterSpecialist
from appliance.specialists.train import extraction_completion

__all__ = ["evaluate_classification", "evaluate_extraction", "macro_f1", "span_prf"]

Progress = Callable[[int, int], None]


def _latency(seconds: list[float]) -> dict:
    if not seconds:
        return {"p50_ms": None, "p95_ms": None}
    ordered = sorted(seconds)
    return {"p50_ms": statistics.median(ordered) * 1000, "p95_ms": ordered[min(len(ordered) - 1,
                                                                                int(0.95 * len(ordered)))] * 1000}


def macro_f1(gold: Sequence[str], pred: Sequence[str | None], labels: Sequence[str]) -> float:
    scores = []
    for label in labels:
        tp = sum(1 for g, p in zip(gold, pred, strict=True) if g == label and p == label)
        fp = sum(1 for g, p in zip(gold, pred, strict=True) if g != label and p == label)
        fn = sum(1 for g, p in zip(gold, pred, strict=True) if g == label and p != label)
        if tp + fp + fn == 0:
            continue
        scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores) if scores else 0.0


def _shots(items: list, n: int, seed: int, key: Callable[[Any], str] | None = None) -> tuple[list, list]:
    """``n`` few-shot examples (one label after another, round robin) and the items left to evaluate."""
    rng = random.Random(seed)
    order = items[:]
    rng.shuffle(order)
    if key is None:
        return order[:n], order[n:]
    chosen: list = []
    seen: Counter[str] = Counter()
    for item in order:
        if len(chosen) >= n:
            break
        if seen[key(item)] == 0 or len(seen) >= n:
            chosen.append(item)
            seen[key(item)] += 1
    ids = {id(x) for x in chosen}
    return chosen, [x for x in items if id(x) not in ids]


def _fewshot_classify_prompt(labels: list[str], shots: list[Example], text: str) -> str:
    lines = ["Classify the text into exactly one of these labels:", ", ".join(labels), ""]
    for e in shots:
        lines += [f"Text: {e.text.strip()}", f"Label: {e.label}", ""]
    lines += [f"Text: {text.strip()}", "Label:"]
    return "\n".join(lines)


def evaluate_classification(spec: AdapterSpecialist, engine: Engine, data: ClassificationData, *,
                            limit: int | None = None, shots: int = 16, seed: int = 7,
                            progress: Progress | None = None) -> dict[str, Any]:
    few, rest = _shots(data.examples, shots, seed, key=lambda e: e.label)
    items = rest[:limit] if limit else rest
    labels = list(spec.info.labels)
    unknown = sorted({e.label for e in items} - set(labels))
    gold = [e.label for e in items]
    adapter_pred, adapter_best, adapter_s, base_pred, base_s = [], [], [], [], []
    for i, e in enumerate(items):
        c = spec.classify(e.text)
        adapter_pred.append(c.label)
        adapter_best.append(c.best)
        adapter_s.append(c.seconds)
        t0 = time.perf_counter()
        out = engine.classify(_fewshot_classify_prompt(labels, few, e.text), labels)
        base_s.append(time.perf_counter() - t0)
        base_pred.append(out["label"])
        if progress:
            progress(i + 1, len(items))
    n = max(1, len(items))
    return {
        "items": len(items), "labels": len(labels), "labels_not_in_adapter": unknown, "few_shot_examples": len(few),
        "adapter": {"name": spec.name, "accuracy": sum(g == p for g, p in zip(gold, adapter_pred, strict=True)) / n,
                    "accuracy_without_abstaining": sum(g == p for g, p in zip(gold, adapter_best, strict=True)) / n,
                    "macro_f1": macro_f1(gold, adapter_pred, labels),
                    "abstained": sum(p is None for p in adapter_pred) / n,
                    "threshold": spec.threshold, **_latency(adapter_s)},
        "few_shot_no_adapter": {"accuracy": sum(g == p for g, p in zip(gold, base_pred, strict=True)) / n,
                                "macro_f1": macro_f1(gold, base_pred, labels), **_latency(base_s)},
    }


def span_prf(gold: list[set], pred: list[set]) -> dict[str, float]:
    tp = sum(len(g & p) for g, p in zip(gold, pred, strict=True))
    n_pred = sum(len(p) for p in pred)
    n_gold = sum(len(g) for g in gold)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def _fewshot_extract_prompt(types: list[str], shots: list[Sentence], text: str) -> str:
    lines = [f"Extract the named entities of the text as JSON. Types: {', '.join(types)}.", ""]
    for s in shots:
        lines += [f"Text: {s.text}", f"Entities:{extraction_completion(s)}", ""]
    lines += [f"Text: {text}", "Entities:"]
    return "\n".join(lines)


def _anchored(text: str, reply: str, types: list[str]) -> set:
    try:
        items = json.loads(reply)
    except ValueError:
        return set()
    out, pos = set(), 0
    for item in items if isinstance(items, list) else []:
        surface, kind = str(item.get("text", "")), str(item.get("type", ""))
        at = text.find(surface, pos) if surface.strip() else -1
        if at >= 0 and kind in types:
            out.add((at, at + len(surface), kind))
            pos = at + len(surface)
    return out


def evaluate_extraction(spec: AdapterSpecialist, engine: Engine, data: ExtractionData, *,
                        limit: int | None = None, shots: int = 3, seed: int = 7,
                        progress: Progress | None = None) -> dict[str, Any]:
    with_entities = [s for s in data.sentences if s.spans]
    few, _ = _shots(with_entities, shots, seed)
    chosen = {id(s) for s in few}
    items = [s for s in data.sentences if id(s) not in chosen]
    items = items[:limit] if limit else items
    types = list(spec.info.labels)
    gold = [{(s.start, s.end, s.type) for s in x.spans} for x in items]
    adapter_pred, adapter_s, base_pred, base_s = [], [], [], []
    for i, x in enumerate(items):
        out = spec.extract(x.text)
        adapter_pred.append({(s.start, s.end, s.kind) for s in out.spans})
        adapter_s.append(out.seconds)
        t0 = time.perf_counter()
        reply = engine.generate(GenerateRequest(prompt=_fewshot_extract_prompt(types, few, x.text),
                                                json_schema=spec.schema(), max_tokens=400))
        base_s.append(time.perf_counter() - t0)
        base_pred.append(_anchored(x.text, reply.text, types))
        if progress:
            progress(i + 1, len(items))
    return {"items": len(items), "types": types, "gold_entities": sum(len(g) for g in gold),
            "few_shot_examples": len(few),
            "adapter": {"name": spec.name, **span_prf(gold, adapter_pred), **_latency(adapter_s)},
            "few_shot_no_adapter": {**span_prf(gold, base_pred), **_latency(base_s)}}
