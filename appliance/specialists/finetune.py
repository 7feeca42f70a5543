"""The build station's ``appliance finetune``: data -> LoRA -> GGUF adapter, measured through llama.cpp.

1. Read and check the data; hold out a stratified validation split (a seed).
2. Load the base straight from its GGUF with transformers (dequantized; nothing fetched).
3. Train a LoRA on the attention and MLP projections (early stopping on validation loss).
4. Convert it to a llama.cpp adapter GGUF (the appliance's own converter).
5. Measure it on the held-out split the way the appliance serves it: the llama.cpp host
   with the quantized base and the adapter, classification under the label constraint,
   extraction under the JSON schema. Those figures go into the adapter's metadata and
   into ``metrics.json``; ``provenance.json`` records the command, seed, data digest and
   base digest, so the adapter can be rebuilt.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from appliance.runtime.client import EngineClient
from appliance.runtime.model_store import sha256_file
from appliance.runtime.protocol import EngineSpec
from appliance.specialists.convert import convert_peft_adapter, load_base_from_gguf
from appliance.specialists.data import (
    ClassificationData,
    ExtractionData,
    load_classification,
    load_extraction,
    split,
    write_held_out,
)
from appliance.specialists.serve import AdapterSpecialist, SpecialistInfo
from appliance.specialists.train import TrainConfig, TrainError, classification_pairs, extraction_pairs, train_lora

__all__ = ["FinetuneJob", "finetune"]

Step = Callable[[str, int, int], None]


@dataclass(frozen=True)
class FinetuneJob:
    task: str  # classify | extract
    data: Path
    base: Path  # the base model GGUF
    out: Path  # a new directory
    name: str
    config: TrainConfig = TrainConfig()
    eval_limit: int = 1000  # held-out items measured through llama.cpp
    limit_train: int | None = None  # use only the first N training examples (after the split)
    threads: int = 2
    eval_data: Path | None = None  # measure on this file (e.g. WNUT17 dev) instead of the held-out split
    resume: Path | None = None  # a finetune output directory whose adapter training continues from


def _measure(job: FinetuneJob, adapter: Path, labels: list[str], held: list, step: Step) -> dict[str, Any]:
    """Held-out figures through the llama.cpp host (quantized base + the adapter), as the appliance serves it."""
    from appliance.evaluation.specialists import macro_f1, span_prf

    client = EngineClient(EngineSpec(generator_path=str(job.base), adapters={job.name: str(adapter)},
                                     threads=job.threads, n_ctx=1024), request_timeout_s=300)
    client.start()
    try:
        info = SpecialistInfo(job.name, job.task, tuple(labels), None)
        spec = AdapterSpecialist(info, lambda: client, threshold=0.0)
        items = held[: job.eval_limit]
        seconds: list[float] = []
        if job.task == "classify":
            gold, pred = [], []
            for i, e in enumerate(items):
                c = spec.classify(e.text)
                gold.append(e.label)
                pred.append(c.best)
                seconds.append(c.seconds)
                step("measuring through llama.cpp", i + 1, len(items))
            out = {"accuracy": sum(g == p for g, p in zip(gold, pred, strict=True)) / max(1, len(items)),
                   "macro_f1": macro_f1(gold, pred, labels)}
        else:
            gold_s, pred_s = [], []
            for i, s in enumerate(items):
                x = spec.extract(s.text)
                gold_s.append({(sp.start, sp.end, sp.type) for sp in s.spans})
                pred_s.append({(sp.start, sp.end, sp.kind) for sp in x.spans})
                seconds.append(x.seconds)
                step("measuring through llama.cpp", i + 1, len(items))
            out = span_prf(gold_s, pred_s)
        ordered = sorted(seconds)
        out |= {"held_out_items": len(items), "p50_ms": ordered[len(ordered) // 2] * 1000 if ordered else None}
        return out
    finally:
        client.close()


def finetune(job: FinetuneJob, step: Step | None = None) -> dict[str, Any]:
    """Run the whole job; returns the summary written to ``metrics.json``. ``job.out`` must not exist."""
    import torch

    step = step or (lambda phase, done, total: None)
    if job.task not in ("classify", "extract"):
        raise TrainError(f"unknown task {job.task!r} (classify or extract)")
    if job.out.exists():
        raise TrainError(f"{job.out} already exists: an adapter is written to a new directory")
    job.config.check()
    started = time.perf_counter()
    torch.set_num_threads(job.threads)
    data: ClassificationData | ExtractionData
    pairs: Callable[[list], list[tuple[str, str]]]
    val_pairs: Callable[[list], list[tuple[str, str]]]
    if job.task == "classify":
        data = load_classification(job.data)
        train, held = split(data.examples, job.config.validation, job.config.seed, key=lambda e: e.label)
        labels = data.labels
        pairs, val_pairs = classification_pairs, classification_pairs
    else:
        data = load_extraction(job.data)
        train, held = split(data.sentences, job.config.validation, job.config.seed)
        labels = data.types
        pairs, val_pairs = extraction_pairs, extraction_pairs
    if job.limit_train:
        train = train[: job.limit_train]
    base_sha = sha256_file(job.base)
    earlier = _resumed(job, data.digest, base_sha) if job.resume else None
    if earlier:
        assert job.resume is not None  # earlier is read from it
        job = replace(job, config=replace(job.config, init_adapter=str(job.resume / "peft"),
                                          order_seed=job.config.seed + earlier["runs"]))
    step("loading the base model", 0, 1)
    model, tokenizer = load_base_from_gguf(job.base)
    result = train_lora(model, tokenizer, pairs(train), val_pairs(held), job.config,
                        lambda s, total, info: step(
                            f"training (val loss {info['best_val_loss']:.3f}, exact {info['best_val_exact']:.3f})",
                            s, total))
    tmp = job.out.with_name(f".{job.out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        result.model.save_pretrained(str(tmp / "peft"))
        adapter = tmp / f"{job.name}.gguf"
        training = {k: v for k, v in result.metrics.items() if k != "history"}
        convert_peft_adapter(tmp / "peft", adapter, base_gguf=job.base, base_sha256=base_sha, task=job.task,
                             labels=labels, metrics={"best_val_loss": result.metrics["best_val_loss"]})
        measured_on = held
        if job.eval_data is not None:
            other = (load_classification if job.task == "classify" else load_extraction)(job.eval_data)
            measured_on = other.examples if isinstance(other, ClassificationData) else other.sentences
        measured = _measure(job, adapter, labels, measured_on, step)
        measured["measured_on"] = str(job.eval_data) if job.eval_data else "held-out split"
        metrics = {"held_out": measured, "best_val_loss": result.metrics["best_val_loss"]}
        convert_peft_adapter(tmp / "peft", adapter, base_gguf=job.base, base_sha256=base_sha, task=job.task,
                             labels=labels, metrics={k: v for k, v in measured.items() if isinstance(v, float)}
                             | {"best_val_loss": result.metrics["best_val_loss"]})
        summary = {"name": job.name, "task": job.task, "labels": labels, "metrics": metrics, "training": training,
                   "history": result.metrics["history"], "seconds": round(time.perf_counter() - started, 1)}
        if earlier:
            summary["resumed_from"] = earlier
        (tmp / "metrics.json").write_text(json.dumps(summary, indent=2))
        write_held_out(held, tmp / ("held_out.csv" if job.task == "classify" else "held_out.jsonl"))
        provenance = {"command": sys.argv, "job": {k: str(v) if isinstance(v, Path) else v
                                                   for k, v in asdict(job).items()},
                      "data": {"path": str(job.data), "sha256": data.digest, "train": len(train),
                               "held_out": len(held)},
                      "base": {"path": str(job.base), "sha256": base_sha},
                      "adapter_sha256": sha256_file(adapter),
                      "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                      "versions": _versions(), "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}
        if earlier:
            provenance["resumed_from"] = earlier["provenance"]
        (tmp / "provenance.json").write_text(json.dumps(provenance, indent=2, default=str))
        job.out.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(job.out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _resumed(job: FinetuneJob, data_digest: str, base_sha: str) -> dict[str, Any]:
    """What the run ``job.resume`` continues from did; refused unless it trained the same task on the
    same data, base and split (a different split would leak held-out items into training)."""
    assert job.resume is not None
    try:
        prov = json.loads((job.resume / "provenance.json").read_text())
        before = json.loads((job.resume / "metrics.json").read_text())
    except (OSError, ValueError) as exc:
        raise TrainError(f"cannot resume from {job.resume}: {exc}") from exc
    if not (job.resume / "peft" / "adapter_config.json").is_file():
        raise TrainError(f"cannot resume from {job.resume}: it has no peft adapter (peft/)")
    was = prov.get("job", {})
    config = (was.get("config") or {}) if isinstance(was.get("config"), dict) else {}
    different = [what for what, ok in (
        ("task", was.get("task") == job.task), ("data", prov.get("data", {}).get("sha256") == data_digest),
        ("base model", prov.get("base", {}).get("sha256") == base_sha),
        ("seed", config.get("seed") == job.config.seed), ("validation share", config.get("validation") ==
                                                           job.config.validation),
        ("rank", config.get("rank") == job.config.rank)) if not ok]
    if different:
        raise TrainError(f"cannot resume from {job.resume}: it was trained with another {', '.join(different)}")
    earlier = before.get("resumed_from") or {}
    epochs = float(before.get("training", {}).get("epochs", 0)) + float(earlier.get("epochs", 0))
    runs = 1 + int(earlier.get("runs", 0))
    return {"directory": str(job.resume), "runs": runs, "epochs": round(epochs, 3), "training": before.get("training"),
            "metrics": before.get("metrics"), "provenance": prov}


def _versions() -> dict[str, str]:
    out = {}
    for mod in ("torch", "transformers", "peft", "gguf", "llama_cpp"):
        try:
            out[mod] = __import__(mod).__version__
        except (ImportError, AttributeError):
            out[mod] = "?"
    return out

