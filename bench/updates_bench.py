"""Signed-bundle benchmarks for the bundles issue (baselines measured in the same run).

1. Verify + apply of a bundle carrying ~1 GB of model and adapter blobs (the generator and
   embedder, plus random LoRA adapters for that generator) into a fresh appliance, against
   ``sha256sum`` plus ``cp`` of the very same files on the same disk. Target: >= 0.5 of
   the baseline's speed.
2. A knowledge bundle of the whole SciFact corpus applied, against ingesting the same
   corpus directly (``KnowledgeBase.ingest_files``, what ``appliance ingest`` does), each
   into a fresh appliance with its own engine. Target: apply <= 1.3x the direct ingest.
3. A delta bundle changing one document (built with ``--delta``: it carries only that
   blob) applied on top of 2. Target: under 5 s. Also the worse case where the changed
   document is one abstract inside the SciFact JSONL (the whole corpus file is new).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from appliance.access.labels import Labels
from appliance.config import load_settings
from appliance.runtime.gguf_check import validate_gguf
from appliance.services import Services, build_services
from appliance.updates.apply import apply_bundle
from appliance.updates.build import build_bundle, load_spec
from appliance.updates.check import trust_root
from appliance.updates.keys import init_keys
from bench.adapters import TARGETS, random_adapter
from bench.runtime_bench import REPO, _store

WORK = REPO / "bench" / "work" / "updates"
SCIFACT = REPO.parent / "shared" / "data" / "scifact" / "corpus.jsonl"
KEY_PASS = "bench key passphrase"
ACCOUNT_PASS = "bench account passphrase"


def _appliance(name: str, models: Path | None = None) -> Services:
    """A fresh appliance (own data dir; the shared test model store unless ``models`` is given)."""
    data = WORK / name
    shutil.rmtree(data, ignore_errors=True)
    env = {"APPLIANCE_DATA_DIR": str(data), "APPLIANCE_MODELS_DIR": str(models or _store().root),
           "APPLIANCE_RUNTIME_THREADS": "2"}
    s = build_services(load_settings(env))
    s.accounts().add("root", role="admin", level="TOP SECRET", passphrase=ACCOUNT_PASS, by=None)
    s.accounts().add("olga", role="officer", level="TOP SECRET", compartments=[], passphrase=ACCOUNT_PASS,
                     by=s.accounts().get("root"))
    return s


def _adapter(base: Path, out: Path, rank: int, seed: int) -> Path:
    return random_adapter(base, out, rank=rank, seed=seed, scale=0.001)


def _station(name: str) -> tuple[Path, Path]:
    station = WORK / f"station-{name}"
    shutil.rmtree(station, ignore_errors=True)
    init_keys(station / "keys", KEY_PASS, root_keys=1, root_threshold=1)
    return station / "keys", station / "state"


def _spec(path: Path, release: int, body: str) -> Path:
    path.write_text(f'[bundle]\nname = "bench"\nappliance_class = "northgate"\nrelease = {release}\n'
                    f"expires_days = 30\n{body}")
    return path


def _trust_and_apply(s: Services, media: Path) -> tuple[float, Any]:
    olga = s.accounts().get("olga")
    if not (s.settings.data_dir / "updates" / "trusted" / "root.json").is_file():
        trust_root(s.update_site(), olga, media / "metadata" / "1.root.json")
    t0 = time.perf_counter()
    result = apply_bundle(s.update_site(), olga, media)
    return time.perf_counter() - t0, result


def _drop_caches() -> None:
    """Page cache dropped, so neither side reads the blobs from memory (root only; skipped otherwise)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass


def bench_blobs(console: Console, target_bytes: int) -> dict[str, Any]:
    store = _store()
    gen, emb = store.get("smollm2-135m-instruct"), store.get("all-minilm-l6-v2")
    src = WORK / "blobs-src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    shutil.copyfile(gen.path, src / "generator.gguf")
    shutil.copyfile(emb.path, src / "embedder.gguf")
    adapters = []
    per_rank = sum(t.shape[0] + t.shape[1] for t in validate_gguf(gen.path).tensors
                   if len(t.name.split(".")) == 4 and t.name.split(".")[2] in TARGETS) * 4
    remaining = target_bytes - gen.size - emb.size
    n = 4
    rank = max(8, remaining // n // per_rank)
    with console.status(f"blobs: writing {n} LoRA adapters of rank {rank}…"):
        for i in range(n):
            adapters.append(_adapter(gen.path, src / f"adapter{i}.gguf", rank, seed=i))
    files = [src / "generator.gguf", src / "embedder.gguf", *adapters]
    total = sum(f.stat().st_size for f in files)
    body = ('[[models]]\nname = "gen"\nkind = "generator"\npath = "blobs-src/generator.gguf"\n'
            '[[models]]\nname = "emb"\nkind = "embedder"\npath = "blobs-src/embedder.gguf"\n')
    for i, a in enumerate(adapters):
        body += f'[[adapters]]\nname = "a{i}"\npath = "blobs-src/{a.name}"\nbase_sha256 = "{gen.sha256}"\n'
    keys, state = _station("blobs")
    media = WORK / "blobs-bundle"
    shutil.rmtree(media, ignore_errors=True)
    with console.status(f"blobs: building a bundle of {total / 2**30:.2f} GiB…"):
        build_bundle(load_spec(_spec(WORK / "blobs.toml", 1, body)), keys, KEY_PASS, state, media)
    blobs_on_media = [p for p in (media / "targets").rglob("*") if p.is_file()]

    def baseline() -> tuple[float, float]:
        """sha256sum, then cp; and the same with the copy made durable (sync), as an apply's is."""
        dest = WORK / "baseline-copy"
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir()
        _drop_caches()
        t0 = time.perf_counter()
        subprocess.run(["sha256sum", *map(str, blobs_on_media)], check=True, capture_output=True)
        subprocess.run(["cp", *map(str, blobs_on_media), str(dest)], check=True)
        copied = time.perf_counter() - t0
        subprocess.run(["sync"], check=True)
        durable = time.perf_counter() - t0
        shutil.rmtree(dest)
        os.sync()
        return copied, durable

    base_before = baseline()
    models = WORK / "blobs-models"
    shutil.rmtree(models, ignore_errors=True)
    s = _appliance("blobs-appliance", models=models)  # an empty model store: the bundle brings every model
    try:
        _drop_caches()
        with console.status("blobs: verify + apply (health check loads the models and every adapter)…"):
            seconds, result = _trust_and_apply(s, media)
    finally:
        s.close()
    base_after = baseline()
    base = (base_before[0] + base_after[0]) / 2
    durable = (base_before[1] + base_after[1]) / 2
    shutil.rmtree(WORK / "blobs-appliance", ignore_errors=True)
    shutil.rmtree(models, ignore_errors=True)
    return {"bytes": total, "files": len(files), "adapter_rank": rank, "apply_seconds": seconds,
            "baseline_seconds": base, "baseline_durable_seconds": durable,
            "baseline_runs": [base_before, base_after],
            "apply_mb_per_s": total / seconds / 1e6, "baseline_mb_per_s": total / base / 1e6,
            "baseline_durable_mb_per_s": total / durable / 1e6,
            "ratio": base / seconds, "ratio_durable": durable / seconds, "generation": result.generation}


def _corpus(limit: int | None) -> Path:
    if not limit:
        return SCIFACT
    out = WORK / "corpus-head.jsonl"
    with open(SCIFACT, encoding="utf-8") as fh:
        out.write_text("".join(line for line, _ in zip(fh, range(limit), strict=False)))
    return out


def bench_knowledge(console: Console, limit: int | None) -> dict[str, Any]:
    corpus = _corpus(limit)
    docs_dir = WORK / "kdocs"
    shutil.rmtree(docs_dir, ignore_errors=True)
    docs_dir.mkdir(parents=True)
    shutil.copyfile(corpus, docs_dir / "scifact.jsonl")
    for i in range(20):
        (docs_dir / f"notice-{i:02d}.txt").write_text(
            f"Notice {i}: the shuttle bus leaves gate {i} at {8 + i % 9}:15.\n")
    body = ('[[knowledge]]\ncollection = "research"\nlabels = "UNCLASSIFIED"\npaths = ["kdocs/scifact.jsonl"]\n'
            '[[knowledge]]\ncollection = "notices"\nlabels = "UNCLASSIFIED"\npaths = ['
            + ", ".join(f'"kdocs/notice-{i:02d}.txt"' for i in range(20)) + "]\n")
    keys, state = _station("knowledge")
    media = WORK / "k-r1"
    shutil.rmtree(media, ignore_errors=True)
    build_bundle(load_spec(_spec(WORK / "k.toml", 1, body)), keys, KEY_PASS, state, media)

    direct = _appliance("k-direct")
    try:
        direct.engine(generator=False)  # both sides start with a running embedder
        t0 = time.perf_counter()
        with console.status("knowledge: ingesting the corpus directly…"):
            with direct.writing("bench") as kb:
                report = kb.ingest_files([docs_dir / "scifact.jsonl"], Labels("UNCLASSIFIED"), by="olga",
                                         collection="research")
                kb.ingest_files(sorted(docs_dir.glob("notice-*.txt")), Labels("UNCLASSIFIED"), by="olga",
                                collection="notices")
        direct_s = time.perf_counter() - t0
        chunks = report.chunks
    finally:
        direct.close()
    shutil.rmtree(WORK / "k-direct", ignore_errors=True)

    s = _appliance("k-bundle")
    try:
        s.engine(generator=False)
        with console.status("knowledge: applying the corpus as a signed bundle…"):
            apply_s, first = _trust_and_apply(s, media)
        # delta 1: one small document changed; the bundle carries only its blob
        (docs_dir / "notice-07.txt").write_text("Notice 7: the shuttle bus now leaves gate 7 at 9:45.\n")
        d1 = WORK / "k-r2"
        shutil.rmtree(d1, ignore_errors=True)
        build_bundle(load_spec(_spec(WORK / "k.toml", 2, body)), keys, KEY_PASS, state, d1, delta=True)
        carried = sum(1 for p in (d1 / "targets").rglob("*") if p.is_file())
        with console.status("knowledge: a delta bundle changing one notice…"):
            delta_s, delta = _trust_and_apply(s, d1)
        # delta 2: one abstract changed inside the corpus file (the whole JSONL is a new blob)
        lines = (docs_dir / "scifact.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
        row = json.loads(lines[10])
        row["title"] = row.get("title", "") + " (corrected)"
        lines[10] = json.dumps(row) + "\n"
        (docs_dir / "scifact.jsonl").write_text("".join(lines), encoding="utf-8")
        d2 = WORK / "k-r3"
        shutil.rmtree(d2, ignore_errors=True)
        build_bundle(load_spec(_spec(WORK / "k.toml", 3, body)), keys, KEY_PASS, state, d2, delta=True)
        with console.status("knowledge: a delta bundle changing one abstract inside the corpus…"):
            delta2_s, delta2 = _trust_and_apply(s, d2)
    finally:
        s.close()
    cli = _cli_delta(docs_dir, body, keys, state)
    shutil.rmtree(WORK / "k-bundle", ignore_errors=True)
    return {"documents": first.changes["added"], "chunks": chunks, "direct_seconds": direct_s,
            "delta_one_doc_cli": cli,
            "apply_seconds": apply_s, "ratio": apply_s / direct_s,
            "delta_one_doc": {"seconds": delta_s, "blobs_carried": carried, "changes": delta.changes},
            "delta_one_abstract_in_corpus": {"seconds": delta2_s, "changes": delta2.changes}}


def _cli_delta(docs_dir: Path, body: str, keys: Path, state: Path) -> dict[str, Any]:
    """The one-document delta as an officer runs it: `appliance bundle apply` in a new process
    (start-up, the embedder loading, verify, apply, health check), on the same appliance."""
    import sys

    (docs_dir / "notice-03.txt").write_text("Notice 3: the shuttle bus now leaves gate 3 at 10:05.\n")
    media = WORK / "k-r4"
    shutil.rmtree(media, ignore_errors=True)
    build_bundle(load_spec(_spec(WORK / "k.toml", 4, body)), keys, KEY_PASS, state, media, delta=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env.update(APPLIANCE_DATA_DIR=str(WORK / "k-bundle"), APPLIANCE_MODELS_DIR=str(_store().root))
    login = subprocess.run([sys.executable, "-m", "appliance", "login", "olga", "--password-stdin", "--print-token"],
                           env=env, input=ACCOUNT_PASS + "\n", capture_output=True, text=True, check=True)
    env["APPLIANCE_SESSION"] = login.stdout.strip()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "appliance", "bundle", "apply", str(media), "--json"], env=env,
                          capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "in_process_seconds": json.loads(proc.stdout)["seconds"]}


def run(quick: bool = False, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    out: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg()}}
    try:
        out["blobs"] = bench_blobs(console, (256 if quick else 1024) * 2**20)
        out["knowledge"] = bench_knowledge(console, 500 if quick else None)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    out["machine"]["load_avg_at_end"] = os.getloadavg()
    b, k = out["blobs"], out["knowledge"]
    out["rows"] = [
        {"name": f"verify+apply {b['bytes'] / 2**30:.2f} GiB of model/adapter blobs, MB/s (vs sha256sum + cp)",
         "appliance": f"{b['apply_mb_per_s']:.0f}", "baseline": f"{b['baseline_mb_per_s']:.0f}",
         "ratio": b["ratio"], "target": ">= 0.5", "met": b["ratio"] >= 0.5},
        {"name": "the same, vs sha256sum + cp + sync (a copy on disk, as an apply's is)",
         "appliance": f"{b['apply_mb_per_s']:.0f}", "baseline": f"{b['baseline_durable_mb_per_s']:.0f}",
         "ratio": b["ratio_durable"], "target": ">= 0.5", "met": b["ratio_durable"] >= 0.5},
        {"name": f"knowledge bundle of {k['documents']} documents, s (vs direct ingest)",
         "appliance": f"{k['apply_seconds']:.1f}", "baseline": f"{k['direct_seconds']:.1f}",
         "ratio": k["ratio"], "target": "<= 1.3", "met": k["ratio"] <= 1.3},
        {"name": "delta bundle changing one document, s",
         "appliance": f"{k['delta_one_doc']['seconds']:.2f}", "baseline": "-",
         "ratio": k["delta_one_doc"]["seconds"] / k["apply_seconds"], "target": "< 5 s",
         "met": k["delta_one_doc"]["seconds"] < 5},
        {"name": "the same delta as a new `appliance bundle apply` process (start-up, engine load included), s",
         "appliance": f"{k['delta_one_doc_cli']['seconds']:.2f}", "baseline": "-",
         "ratio": k["delta_one_doc_cli"]["seconds"] / k["apply_seconds"], "target": "< 5 s",
         "met": k["delta_one_doc_cli"]["seconds"] < 5},
        {"name": "delta bundle changing one abstract inside the corpus file, s",
         "appliance": f"{k['delta_one_abstract_in_corpus']['seconds']:.2f}", "baseline": "-",
         "ratio": k["delta_one_abstract_in_corpus"]["seconds"] / k["apply_seconds"], "target": "< 5 s",
         "met": k["delta_one_abstract_in_corpus"]["seconds"] < 5},
    ]
    return out
