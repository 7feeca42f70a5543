"""`appliance finetune` end to end on the real base: data -> LoRA (peft) -> GGUF adapter -> llama.cpp figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from appliance.runtime.gguf_check import validate_gguf
from appliance.runtime.model_store import ModelStore
from appliance.specialists.serve import read_specialist

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _finetune(tmp_path: Path, model_store: ModelStore, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "APPLIANCE_DATA_DIR": str(tmp_path / "station"),
           "APPLIANCE_MODELS_DIR": str(model_store.root), "HOME": str(tmp_path), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "appliance", "finetune", *args], env=env, capture_output=True,
                          text=True, timeout=900)


def test_finetune_classifier_end_to_end(tmp_path: Path, model_store: ModelStore, generator) -> None:  # noqa: ANN001
    import csv

    with open(SHARED / "banking77" / "train.csv", newline="") as fh:
        wanted = ("card_arrival", "exchange_rate", "lost_or_stolen_card")
        every = [r for r in csv.DictReader(fh) if r["category"] in wanted]
        rows = [r for label in wanted for r in [x for x in every if x["category"] == label][:30]]
    with open(tmp_path / "small.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "category"])
        writer.writerows([r["text"], r["category"]] for r in rows)
    proc = _finetune(tmp_path, model_store, "--task", "classify", "--data", str(tmp_path / "small.csv"),
                     "--base", "smollm2-135m-instruct", "--out", str(tmp_path / "intent"), "--max-steps", "3",
                     "--batch-size", "4", "--eval-every", "3", "--eval-limit", "6", "--rank", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "intent"
    assert sorted(p.name for p in out.iterdir()) == ["held_out.csv", "intent.gguf", "metrics.json", "peft",
                                                     "provenance.json"]
    from appliance.specialists.data import load_classification

    held_out = load_classification(out / "held_out.csv").examples  # what `eval classify --data` measures on
    assert len(held_out) == 9 and {e.label for e in held_out} == set(wanted)
    assert {(e.text, e.label) for e in held_out} <= {(r["text"], r["category"]) for r in rows}
    metrics = json.loads((out / "metrics.json").read_text())
    held = metrics["metrics"]["held_out"]
    assert held["held_out_items"] == 6 and 0 <= held["accuracy"] <= 1 and held["p50_ms"] > 0
    assert metrics["training"]["steps"] == 3 and metrics["labels"] == ["card_arrival", "exchange_rate",
                                                                      "lost_or_stolen_card"]
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["base"]["sha256"] == generator.sha256 and len(prov["data"]["sha256"]) == 64
    info = validate_gguf(out / "intent.gguf", expect="adapter")
    assert info.get("adapter.base_sha256") == generator.sha256 and info.get("appliance.task") == "classify"
    # the store reads it as a specialist for this base
    store = ModelStore(tmp_path / "store")
    record = store.add_file(out / "intent.gguf", name="intent", kind="adapter", source="test")
    spec = read_specialist(record)
    assert spec is not None and spec.base_sha256 == generator.sha256 and "accuracy" in spec.metrics

    # training continues from the adapter (same data, base and split), on a new order of the examples
    proc = _finetune(tmp_path, model_store, "--task", "classify", "--data", str(tmp_path / "small.csv"),
                     "--base", "smollm2-135m-instruct", "--out", str(tmp_path / "intent2"), "--max-steps", "2",
                     "--batch-size", "4", "--eval-every", "2", "--eval-limit", "3", "--rank", "4",
                     "--resume", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads((tmp_path / "intent2" / "metrics.json").read_text())
    assert again["resumed_from"]["runs"] == 1 and again["resumed_from"]["training"]["steps"] == 3
    assert again["resumed_from"]["epochs"] == metrics["training"]["epochs"] > 0
    assert again["training"]["config"]["order_seed"] == 1235 and again["training"]["steps"] == 2
    # it starts where the first run ended, not from a fresh LoRA
    assert again["history"][0]["val_loss"] < metrics["training"]["initial_val_loss"] - 1e-3
    assert json.loads((tmp_path / "intent2" / "provenance.json").read_text())["resumed_from"] == prov
    proc = _finetune(tmp_path, model_store, "--task", "classify", "--data", str(tmp_path / "small.csv"),
                     "--base", "smollm2-135m-instruct", "--out", str(tmp_path / "intent3"), "--seed", "7",
                     "--resume", str(out))
    assert proc.returncode != 0 and "it was trained with another seed" in proc.stderr
    assert not (tmp_path / "intent3").exists()


def test_finetune_refuses_bad_data_before_loading_anything(tmp_path: Path, model_store: ModelStore) -> None:
    (tmp_path / "one.csv").write_text("text,label\na,x\nb,x\n")
    proc = _finetune(tmp_path, model_store, "--task", "classify", "--data", str(tmp_path / "one.csv"),
                     "--base", "smollm2-135m-instruct", "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "needs at least 2 classes" in proc.stderr and not (tmp_path / "x").exists()
    (tmp_path / "broken.conll").write_text("Ann\tB-person\nno tag here at all\n")
    proc = _finetune(tmp_path, model_store, "--task", "extract", "--data", str(tmp_path / "broken.conll"),
                     "--base", "smollm2-135m-instruct", "--out", str(tmp_path / "y"))
    assert proc.returncode == 2 and "broken.conll:2" in proc.stderr and not (tmp_path / "y").exists()
