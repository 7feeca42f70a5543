"""Runtime benchmarks for the foundation issue.

1. Generation tokens/s through the appliance host vs raw llama-cpp-python in this
   process: same GGUF, same settings, same prompts, greedy; runs alternate.
2. Embedding texts/s through the host vs transformers mean pooling (torch, batch 32) on
   the same texts (SciFact abstracts, and their first sentences).
3. Round trip of one small host call (ping): p50 and p95.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from appliance.runtime.client import EngineClient
from appliance.runtime.model_store import ModelStore
from appliance.runtime.protocol import EngineSpec, GenerateRequest

REPO = Path(__file__).resolve().parent.parent
SCIFACT = REPO.parent / "shared" / "data" / "scifact" / "corpus.jsonl"
PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a signed software update protects a computer.",
    "Describe a walk through a forest in autumn.",
]
THREADS = 2


def _store() -> ModelStore:
    root = Path(os.environ.get("APPLIANCE_TEST_MODELS") or REPO / ".test-data" / "models")
    return ModelStore(root)


def _texts(n: int) -> list[str]:
    with open(SCIFACT, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in itertools.islice(fh, n)]
    return [" ".join(r.get("sentences") or [r.get("text", "")])[:1500] for r in rows]


def bench_generation(spec: EngineSpec, rounds: int, max_tokens: int) -> dict[str, Any]:
    from llama_cpp import Llama

    raw = Llama(spec.generator_path, n_ctx=spec.n_ctx, n_batch=spec.n_batch, n_threads=THREADS,
                n_threads_batch=THREADS, flash_attn=spec.flash_attn, seed=spec.seed, verbose=False)
    client = EngineClient(EngineSpec(generator_path=spec.generator_path, n_ctx=spec.n_ctx, n_batch=spec.n_batch,
                                     threads=THREADS, flash_attn=spec.flash_attn, seed=spec.seed))
    client.start()
    totals = {"raw": [0.0, 0.0], "host": [0.0, 0.0], "raw_cached": [0.0, 0.0]}  # tokens, seconds

    def run_raw(prompt: str, n: int, cached: bool = False) -> None:
        key = "raw_cached" if cached else "raw"
        t0 = time.perf_counter()
        if not cached:  # the host evaluates every prompt from a clean cache (deterministic answers)
            raw.reset()
            raw._ctx.kv_cache_clear()
        out = raw.create_chat_completion(messages=[{"role": "user", "content": prompt}], max_tokens=n,
                                         temperature=0.0, top_k=1, seed=spec.seed)
        totals[key][1] += time.perf_counter() - t0
        totals[key][0] += out["usage"]["completion_tokens"]

    def run_host(prompt: str, n: int) -> None:
        t0 = time.perf_counter()
        res = client.generate(GenerateRequest(prompt=prompt, max_tokens=n, temperature=0.0, seed=spec.seed),
                              on_token=lambda _p: None)
        totals["host"][1] += time.perf_counter() - t0
        totals["host"][0] += res.completion_tokens

    try:
        run_raw(PROMPTS[0], 16)
        run_host(PROMPTS[0], 16)  # warm both, then start counting
        totals = {"raw": [0.0, 0.0], "host": [0.0, 0.0], "raw_cached": [0.0, 0.0]}
        for r in range(rounds):
            for prompt in PROMPTS:  # alternate who goes first: the machine drifts
                first, second = (run_raw, run_host) if r % 2 == 0 else (run_host, run_raw)
                first(prompt, max_tokens)
                second(prompt, max_tokens)
                run_raw(prompt, max_tokens, cached=True)
    finally:
        client.close()
        raw.close()
    raw_tps, host_tps = totals["raw"][0] / totals["raw"][1], totals["host"][0] / totals["host"][1]
    cached_tps = totals["raw_cached"][0] / totals["raw_cached"][1]
    return {"raw_tokens_per_s": raw_tps, "host_tokens_per_s": host_tps, "ratio": host_tps / raw_tps,
            "raw_prefix_cached_tokens_per_s": cached_tps, "ratio_vs_prefix_cached": host_tps / cached_tps,
            "tokens": {"raw": totals["raw"][0], "host": totals["host"][0]}, "rounds": rounds}


def bench_embedding(spec: EngineSpec, texts: list[str], source_dir: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(THREADS)
    tok = AutoTokenizer.from_pretrained(source_dir, local_files_only=True)
    model = AutoModel.from_pretrained(source_dir, local_files_only=True).eval()

    def torch_embed(batch: list[str]) -> None:
        enc = tok(batch, padding=True, truncation=True, max_length=512, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        _ = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1)

    client = EngineClient(EngineSpec(embedder_path=spec.embedder_path, embed_n_ctx=spec.embed_n_ctx,
                                     threads=THREADS, flash_attn=spec.flash_attn))
    client.start()
    try:
        torch_embed(texts[:32])
        client.embed(texts[:32])
        t0 = time.perf_counter()
        for i in range(0, len(texts), 32):
            torch_embed(texts[i : i + 32])
        torch_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        client.embed(texts)
        host_s = time.perf_counter() - t0
    finally:
        client.close()
    torch_rate, host_rate = len(texts) / torch_s, len(texts) / host_s
    return {"texts": len(texts), "torch_texts_per_s": torch_rate, "host_texts_per_s": host_rate,
            "ratio": host_rate / torch_rate}


def bench_round_trip(spec: EngineSpec, n: int) -> dict[str, Any]:
    client = EngineClient(EngineSpec(embedder_path=spec.embedder_path, threads=THREADS))
    client.start()
    try:
        for _ in range(50):
            client.ping()
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            client.ping()
            times.append(time.perf_counter() - t0)
    finally:
        client.close()
    times.sort()
    return {"calls": n, "p50_ms": statistics.median(times) * 1000, "p95_ms": times[int(n * 0.95)] * 1000}


def run(quick: bool = False, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    store = _store()
    gen, emb = store.get("smollm2-135m-instruct"), store.get("all-minilm-l6-v2")
    spec = EngineSpec(generator_path=str(gen.path), embedder_path=str(emb.path), threads=THREADS)
    out: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "threads": THREADS},
                           "models": {"generator": gen.sha256, "embedder": emb.sha256}}
    with console.status("generation: host vs raw llama-cpp-python…"):
        out["generation"] = bench_generation(spec, rounds=2 if quick else 6, max_tokens=128)
    texts = _texts(128 if quick else 512)
    with console.status("embedding: host vs transformers (abstracts)…"):
        out["embedding_abstracts"] = bench_embedding(spec, texts, store.root / "sources" / emb.name)
    with console.status("embedding: host vs transformers (sentences)…"):
        out["embedding_sentences"] = bench_embedding(spec, [t.split(". ")[0] for t in texts],
                                                     store.root / "sources" / emb.name)
    with console.status("round trip…"):
        out["round_trip"] = bench_round_trip(spec, 300 if quick else 2000)
    g, ea, es, rt = out["generation"], out["embedding_abstracts"], out["embedding_sentences"], out["round_trip"]
    out["rows"] = [
        {"name": "generation tokens/s (host vs raw llama-cpp-python)", "appliance": f"{g['host_tokens_per_s']:.1f}",
         "baseline": f"{g['raw_tokens_per_s']:.1f}", "ratio": g["ratio"], "target": ">= 0.95",
         "met": g["ratio"] >= 0.95},
        {"name": "generation tokens/s (host vs raw with its prompt-prefix cache)",
         "appliance": f"{g['host_tokens_per_s']:.1f}", "baseline": f"{g['raw_prefix_cached_tokens_per_s']:.1f}",
         "ratio": g["ratio_vs_prefix_cached"], "target": "(reported)", "met": True},
        {"name": "embedding texts/s, abstracts (host vs torch batch 32)", "appliance": f"{ea['host_texts_per_s']:.1f}",
         "baseline": f"{ea['torch_texts_per_s']:.1f}", "ratio": ea["ratio"], "target": ">= 1.0",
         "met": ea["ratio"] >= 1.0},
        {"name": "embedding texts/s, sentences (host vs torch batch 32)",
         "appliance": f"{es['host_texts_per_s']:.1f}", "baseline": f"{es['torch_texts_per_s']:.1f}",
         "ratio": es["ratio"], "target": ">= 1.0", "met": es["ratio"] >= 1.0},
        {"name": "host round trip p50 / p95 (ms)", "appliance": f"{rt['p50_ms']:.3f} / {rt['p95_ms']:.3f}",
         "baseline": "-", "ratio": None, "target": "p50 < 2 ms", "met": rt["p50_ms"] < 2.0},
    ]
    return out
