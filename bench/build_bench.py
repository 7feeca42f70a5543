"""The portable llama.cpp build against a native one and the runtime-dispatched one, and the cost of the
start-up self-test.

1. Generation tokens/s (and prompt evaluation, and embedding) of the appliance's portable
   build (x86-64-v3: AVX2, no AVX-512, no AMX) against a native build of the same
   llama-cpp-python for this machine's CPU. The native build is ``native-noamx``: every
   feature this CPU has except AMX, which is compiled out (``-mno-amx-*``) because the
   native AMX path is the one that died with SIGSEGV on the first decode. It is built
   once into ``.build/native-noamx`` by ``deploy/build_llama_cpp.py`` (3-10 minutes) and
   never installed into the appliance's environment. Each build runs in a child process
   (``bench.llama_child``) on the same GGUF, prompts and threads; runs alternate, so
   drift of this noisy machine falls on both.
   The alternative the appliance did not take is measured beside them: llama.cpp's
   runtime-dispatched CPU variants (``--variant dispatch``, ``.build/dispatch``), first as
   llama.cpp itself chooses (the best-scoring variant; on an AMX CPU that one has AMX and
   the outcome is recorded, not survived), then with every variant that compiles AMX in
   kept out, llama.cpp choosing among the rest.
2. The self-test's cost: a cold self-test (throwaway host, every serving model) against
   the engine's own start (loading the same models), and the remembered pass at a later start.
"""

from __future__ import annotations

import json
import os
import signal
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
DISPATCH = REPO / ".build" / "dispatch"


def ensure_build(variant: str, target: Path, console: Console) -> Path:
    """Build (once) and install a benchmark-only variant beside the environment, never into it."""
    console.print(f"{variant}: deploy/build_llama_cpp.py --variant {variant} --target {target} "
                  "(built once, 3-10 minutes)")
    env = {k: v for k, v in os.environ.items() if k != "CMAKE_ARGS"}
    proc = subprocess.run([sys.executable, str(REPO / "deploy" / "build_llama_cpp.py"), "--variant", variant,
                           "--target", str(target)], env=env, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"building the {variant} variant failed (see above)")
    return target


def _run_child(job: dict, pythonpath: Path | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([sys.executable, "-m", "bench.llama_child"], input=json.dumps(job), env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=1800)


def _child(job: dict, pythonpath: Path | None, name: str = "portable") -> dict[str, Any]:
    proc = _run_child(job, pythonpath)
    if proc.returncode != 0:
        raise RuntimeError(f"the {name} child failed ({proc.returncode}): {proc.stderr[-1500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def dispatch_without_amx(dispatch: Path, keep_out: Path) -> dict[str, Any]:
    """Link every CPU variant of the dispatch build whose kernels leave AMX out into ``keep_out``.

    Each variant is asked (in its own child) what it compiled in; llama.cpp then picks the
    best-scoring of the rest for this CPU, as it would with the AMX variant deleted.
    """
    keep_out.mkdir(parents=True, exist_ok=True)
    kept, dropped = [], []
    for lib in sorted((dispatch / "bin").glob("libggml-cpu-*.so")):
        info = _child({"backend_library": str(lib), "threads": THREADS}, dispatch, f"dispatch {lib.name}")
        if compiled_features(info["system_info"]).get("AMX_INT8"):
            dropped.append(lib.name)
        else:
            (keep_out / lib.name).symlink_to(lib)
            kept.append(lib.name)
    return {"kept": kept, "kept_out": dropped}


def dispatch_own_choice(dispatch: Path, gen: str) -> dict[str, Any]:
    """The dispatch build as llama.cpp loads it (every variant, best score wins), decoding a few tokens."""
    job = {"backend_dir": str(dispatch / "bin"), "generator": gen, "prompts": PROMPTS[:1], "max_tokens": 8,
           "threads": THREADS}
    proc = _run_child(job, dispatch)
    loaded = [line.split("from", 1)[1].strip() for line in proc.stderr.splitlines() if "loaded CPU backend" in line]
    died = f"killed by {signal.Signals(-proc.returncode).name}" if proc.returncode < 0 else None
    return {"loaded": [Path(x).name for x in loaded], "returncode": proc.returncode,
            "outcome": died or ("ran" if proc.returncode == 0 else f"failed: {proc.stderr.strip()[-300:]}")}


def bench_builds(gen: str, emb: str, texts: list[str], rounds: int, max_tokens: int,
                 builds: dict[str, tuple[Path | None, dict]]) -> dict[str, Any]:
    """Each build in ``builds`` (name: PYTHONPATH entry, extra job keys) on the same job, in
    alternating order per round; every rate is compared with ``native``'s."""
    job = {"generator": gen, "embedder": emb, "prompts": PROMPTS, "max_tokens": max_tokens, "texts": texts,
           "threads": THREADS}
    keys = ("gen_tokens", "gen_s", "prompt_tokens", "prompt_s", "embed_texts", "embed_s")
    totals = {name: dict.fromkeys(keys, 0.0) for name in builds}
    info: dict[str, dict] = {}
    texts_of: dict[str, list] = {}
    same_text = True
    for r in range(rounds):
        order = list(builds.items())
        if r % 2:
            order.reverse()  # alternate who goes first: the machine drifts
        for name, (path, extra) in order:
            got = _child({**job, **extra}, path, name)
            info[name] = {"llama_cpp": got["llama_cpp"], "system_info": got["system_info"]}
            texts_of[name] = got["texts"]
            for k in keys:
                totals[name][k] += got[k]
        same_text = same_text and texts_of["portable"] == texts_of["native"]

    def rate(name: str, n: str, s: str) -> float:
        return totals[name][n] / totals[name][s]

    out: dict[str, Any] = {"rounds": rounds, "builds": info, "totals": totals,
                           "same_greedy_text": same_text}
    for what, n, s in (("generation", "gen_tokens", "gen_s"), ("prompt", "prompt_tokens", "prompt_s"),
                       ("embedding", "embed_texts", "embed_s")):
        base = rate("native", n, s)
        out[what] = {"native_per_s": base}
        for name in builds:
            if name != "native":
                out[what][f"{name}_per_s"] = rate(name, n, s)
                out[what][f"{name}_ratio"] = rate(name, n, s) / base
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
    native = ensure_build("native-noamx", NATIVE, console)
    dispatch = ensure_build("dispatch", DISPATCH, console)
    cpu, build = cpu_info(), build_info()
    out: dict[str, Any] = {"cpu": {"model": cpu.model, "features": cpu.relevant},
                           "portable_build": {"variant": build.variant, "key": build.key,
                                              "compiled": build.compiled}}
    with tempfile.TemporaryDirectory(prefix="bench-dispatch-") as tmp:
        with console.status("dispatch: which CPU variants leave AMX out, and llama.cpp's own choice…"):
            variants = dispatch_without_amx(dispatch, Path(tmp) / "no-amx")
            out["dispatch_own_choice"] = dispatch_own_choice(dispatch, str(gen.path))
        out["dispatch_variants"] = variants
        builds: dict[str, tuple[Path | None, dict]] = {
            "portable": (None, {}), "native": (native, {}),
            "dispatch": (dispatch, {"backend_dir": str(Path(tmp) / "no-amx")})}
        with console.status("generation, prompt and embedding: portable, native-noamx, dispatch (alternating)…"):
            b = bench_builds(str(gen.path), str(emb.path), _texts(64 if quick else 256), 2 if quick else 6, 128,
                             builds)
    out["builds"] = b
    native_feats = compiled_features(b["builds"]["native"]["system_info"])
    out["native_build"] = {"compiled": sorted(k for k, v in native_feats.items() if v)}
    dispatch_feats = compiled_features(b["builds"]["dispatch"]["system_info"])
    out["dispatch_build"] = {"compiled": sorted(k for k, v in dispatch_feats.items() if v)}
    with console.status("self-test: cold, against the engine's start, and remembered…"):
        st = bench_selftest(str(gen.path), str(emb.path), 2 if quick else 5)
    out["selftest"] = st
    flags = " ".join(cpu.relevant)
    own = out["dispatch_own_choice"]
    rows = [{"name": f"generation tokens/s, portable vs native-noamx (CPU: {flags})",
             "appliance": f"{b['generation']['portable_per_s']:.1f}",
             "baseline": f"{b['generation']['native_per_s']:.1f}", "ratio": b["generation"]["portable_ratio"],
             "target": ">= 0.9", "met": b["generation"]["portable_ratio"] >= 0.9}]
    for what, label in (("prompt", "prompt evaluation tokens/s"), ("embedding", "embedding texts/s")):
        rows.append({"name": f"{label}, portable vs native-noamx", "appliance": f"{b[what]['portable_per_s']:.1f}",
                     "baseline": f"{b[what]['native_per_s']:.1f}", "ratio": b[what]["portable_ratio"],
                     "target": "(reported)", "met": True})
    for what, label in (("generation", "generation tokens/s"), ("prompt", "prompt evaluation tokens/s"),
                        ("embedding", "embedding texts/s")):
        rows.append({"name": f"{label}, dispatch with AMX kept out vs native-noamx",
                     "appliance": f"{b[what]['dispatch_per_s']:.1f}", "baseline": f"{b[what]['native_per_s']:.1f}",
                     "ratio": b[what]["dispatch_ratio"], "target": "(the alternative)", "met": True})
    rows += [
        {"name": f"dispatch as llama.cpp chooses ({', '.join(own['loaded']) or 'nothing loaded'})",
         "appliance": own["outcome"], "baseline": "-", "ratio": None, "target": "(reported)", "met": True},
        {"name": "first start: self-test (cold) vs the engine's own start (s)", "appliance": f"{st['cold_s']:.2f}",
         "baseline": f"{st['engine_start_s']:.2f}", "ratio": st["ratio"], "target": "(reported)", "met": True},
        {"name": "later starts: remembered self-test (s)", "appliance": f"{st['remembered_s']:.3f}",
         "baseline": "-", "ratio": None, "target": "< 0.5 s", "met": st["remembered_s"] < 0.5},
    ]
    out["rows"] = rows
    return out
