"""The portable llama.cpp build against a native one, and the cost of the start-up self-test.

1. Generation tokens/s (and prompt evaluation, and embedding) of the appliance's portable
   build (x86-64-v3: AVX2, no AVX-512, no AMX) against a native build of the same
   llama-cpp-python for this machine's CPU. The native build is ``native-noamx``: every
   feature this CPU has except AMX, which is compiled out (``-mno-amx-*``) because the
   native AMX path is the one that died with SIGSEGV on the first decode. It is built
   once into ``.build/native-noamx`` by ``deploy/build_llama_cpp.py`` (3-10 minutes) and
   never installed into the appliance's environment. Each build runs in a child process
   (``bench.llama_child``) on the same GGUF, prompts and threads; runs alternate, so
   drift of this noisy machine falls on both.
2. The self-test's cost: a cold self-test (throwaway host, every serving model) against
   the engine's own start (loading the same models), and the remembered pass at a later start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from appliance.runtime.build_info import build_info, compiled_features, cpu_info
from appliance.runtime.client import EngineClient
from appliance.runtime.protocol import EngineSpec
from appliance.runtime.selftest import SelfTest
from bench.runtime_bench import PROMPTS, THREADS, _store, _texts

REPO = Path(__file__).resolve().parent.parent
NATIVE = REPO / ".build" / "native-noamx"


def ensure_native(console: Console) -> Path:
    """Build (once) and install the native-noamx baseline beside the environment."""
    console.print("native baseline: deploy/build_llama_cpp.py --variant native-noamx (built once, 3-10 minutes)")
    env = {k: v for k, v in os.environ.items() if k != "CMAKE_ARGS"}
    proc = subprocess.run([sys.executable, str(REPO / "deploy" / "build_llama_cpp.py"), "--variant", "native-noamx",
                           "--target", str(NATIVE)], env=env, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError("building the native baseline failed (see above)")
    return NATIVE


def _child(job: dict, pythonpath: Path | None) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    proc = subprocess.run([sys.executable, "-m", "bench.llama_child"], input=json.dumps(job), env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"the {'native' if pythonpath else 'portable'} child failed ({proc.returncode}): "
                           f"{proc.stderr[-1500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_builds(gen: str, emb: str, texts: list[str], rounds: int, max_tokens: int, native: Path) -> dict[str, Any]:
    job = {"generator": gen, "embedder": emb, "prompts": PROMPTS, "max_tokens": max_tokens, "texts": texts,
           "threads": THREADS}
    keys = ("gen_tokens", "gen_s", "prompt_tokens", "prompt_s", "embed_texts", "embed_s")
    totals = {"portable": dict.fromkeys(keys, 0.0), "native": dict.fromkeys(keys, 0.0)}
    info: dict[str, dict] = {}
    same_text = True
    for r in range(rounds):
        order = [("portable", None), ("native", native)]
        if r % 2:
            order.reverse()  # alternate who goes first: the machine drifts
        got = {}
        for name, path in order:
            got[name] = _child(job, path)
            info[name] = {"llama_cpp": got[name]["llama_cpp"], "system_info": got[name]["system_info"]}
            for k in keys:
                totals[name][k] += got[name][k]
        same_text = same_text and got["portable"]["texts"] == got["native"]["texts"]

    def rate(name: str, n: str, s: str) -> float:
        return totals[name][n] / totals[name][s]

    out: dict[str, Any] = {"rounds": rounds, "builds": info, "totals": totals,
                           "same_greedy_text": same_text}
    for what, n, s in (("generation", "gen_tokens", "gen_s"), ("prompt", "prompt_tokens", "prompt_s"),
                       ("embedding", "embed_texts", "embed_s")):
        p, q = rate("portable", n, s), rate("native", n, s)
        out[what] = {"portable_per_s": p, "native_per_s": q, "ratio": p / q}
    return out


def bench_selftest(gen: str, emb: str, repeats: int) -> dict[str, Any]:
    spec = EngineSpec(generator_path=gen, embedder_path=emb, threads=THREADS)
    cold, start, warm = [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-selftest-") as tmp:
        for i in range(repeats):
            state = Path(tmp) / f"selftest-{i}.json"
            t0 = time.perf_counter()
            SelfTest(state).ensure(spec)
            cold.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            client = EngineClient(spec)
            client.start()
            start.append(time.perf_counter() - t0)
            client.close()
            t0 = time.perf_counter()
            SelfTest(state).ensure(spec)  # remembered: digests and the key, no host
            warm.append(time.perf_counter() - t0)
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    return {"cold_s": med(cold), "engine_start_s": med(start), "remembered_s": med(warm),
            "ratio": med(cold) / med(start), "repeats": repeats}


def run(quick: bool = False, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    store = _store()
    gen, emb = store.get("smollm2-135m-instruct"), store.get("all-minilm-l6-v2")
    native = ensure_native(console)
    cpu, build = cpu_info(), build_info()
    out: dict[str, Any] = {"cpu": {"model": cpu.model, "features": cpu.relevant},
                           "portable_build": {"variant": build.variant, "key": build.key,
                                              "compiled": build.compiled}}
    with console.status("generation, prompt and embedding: portable vs native-noamx (alternating)…"):
        b = bench_builds(str(gen.path), str(emb.path), _texts(64 if quick else 256), 2 if quick else 6, 128, native)
    out["builds"] = b
    native_feats = compiled_features(b["builds"]["native"]["system_info"])
    out["native_build"] = {"compiled": sorted(k for k, v in native_feats.items() if v)}
    with console.status("self-test: cold, against the engine's start, and remembered…"):
        st = bench_selftest(str(gen.path), str(emb.path), 2 if quick else 5)
    out["selftest"] = st
    flags = " ".join(cpu.relevant)
    g, p, e = b["generation"], b["prompt"], b["embedding"]
    out["rows"] = [
        {"name": f"generation tokens/s, portable vs native-noamx (CPU: {flags})",
         "appliance": f"{g['portable_per_s']:.1f}", "baseline": f"{g['native_per_s']:.1f}", "ratio": g["ratio"],
         "target": ">= 0.9", "met": g["ratio"] >= 0.9},
        {"name": "prompt evaluation tokens/s, portable vs native-noamx", "appliance": f"{p['portable_per_s']:.1f}",
         "baseline": f"{p['native_per_s']:.1f}", "ratio": p["ratio"], "target": "(reported)", "met": True},
        {"name": "embedding texts/s, portable vs native-noamx", "appliance": f"{e['portable_per_s']:.1f}",
         "baseline": f"{e['native_per_s']:.1f}", "ratio": e["ratio"], "target": "(reported)", "met": True},
        {"name": "first start: self-test (cold) vs the engine's own start (s)", "appliance": f"{st['cold_s']:.2f}",
         "baseline": f"{st['engine_start_s']:.2f}", "ratio": st["ratio"], "target": "(reported)", "met": True},
        {"name": "later starts: remembered self-test (s)", "appliance": f"{st['remembered_s']:.3f}",
         "baseline": "-", "ratio": None, "target": "< 0.5 s", "met": st["remembered_s"] < 0.5},
    ]
    return out
