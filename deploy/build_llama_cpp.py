#!/usr/bin/env python3
"""Build and install llama-cpp-python the one way the appliance allows: never native.

    python deploy/build_llama_cpp.py [--backend cpu|cuda] [--variant auto|portable|compat]
                                     [--force] [--print-key]
    python deploy/build_llama_cpp.py --variant native-noamx|dispatch --target DIR   (benchmark only)

Run it with the interpreter of the environment to install into (``make install`` runs it
with ``.venv/bin/python``). Standard library only: it runs before anything else is
installed (so it repeats the few lines of ``appliance.runtime.build_info`` it needs).

Why a script and not ``pip install llama-cpp-python``:

- pip's default build is ``GGML_NATIVE``: ``-march=native`` for the build machine's CPU.
  On a Xeon with AMX that build dies with SIGSEGV on the first decode
  (``ggml_backend_amx_mul_mat``), and a native build made on one CPU can hit illegal
  instructions on another. The appliance's build is one **portable baseline**: x86-64-v3
  (SSE4.2, AVX, AVX2, FMA, F16C, BMI2), no AVX-512, no AMX, no runtime-dispatched
  variants. It runs the same kernels on every x86 server since Intel Haswell (2013) and
  AMD Zen (2017), so a model computes the same numbers on all of them. ``--variant auto``
  (the default) takes it where this CPU has those features, else ``compat`` (x86-64-v2,
  SSE4.2 only) for older servers.
- pip caches a wheel it built under the package's version, whatever ``CMAKE_ARGS`` were,
  and reuses it after the flags change. Here the wheel is built with ``--no-cache-dir``
  into ``<wheels>/<key>/``, where the key is a digest of the version, the backend, the
  variant, the CMake arguments and the Python tag; it is installed from that file only
  (``--no-index``), so a stale native wheel can never be picked up. ``CMAKE_ARGS`` in the
  environment is refused.
- After installing, the library is loaded in a child process and its own report of the
  compiled CPU features (``llama_print_system_info``) is checked against the variant. A
  build record (``<prefix>/llama-cpp-build.json``) keeps the key, the CMake arguments and
  the digests of the installed libraries; ``appliance doctor`` shows it and says whether
  the installed libraries are still the ones recorded. Run again with the record intact
  and the libraries unchanged, it does nothing (about a second).

``--variant native-noamx`` exists for one purpose: the benchmark's baseline (``make
bench``), a native build with AMX compiled out (``-mno-amx-*``) so that it cannot take the
crashing path. ``--variant dispatch`` is the alternative the appliance did not take,
built only to measure it: ``GGML_BACKEND_DL`` with ``GGML_CPU_ALL_VARIANTS`` (14 CPU
backends, ``bin/libggml-cpu-<cpu>.so``). llama.cpp's own choice on an AMX CPU is the
``sapphirerapids`` variant, which dies on the first decode; llama-cpp-python does not
expose ``ggml_backend_load*`` (its issue #2069), so a caller loads a variant through
ctypes. Both are installed into a separate ``--target`` directory, never into the
appliance's environment.

The CUDA build (``--backend cuda``) follows the same rules: the same portable CPU flags
for the host-side code, ``GGML_CUDA=on``, its own key. ``LLAMA_CUDA_ARCHITECTURES``
(e.g. ``80;86;89``) sets the GPU architectures compiled in (default: llama.cpp's list).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

VERSION = "0.3.36"
PACKAGE = "llama-cpp-python"
RECORD = "llama-cpp-build.json"
BUILD_MINUTES = "3-10"

# Every feature named, so no default of a later llama.cpp changes the build.
_FEATURES = ["SSE42", "AVX", "AVX2", "FMA", "F16C", "BMI2", "AVX_VNNI", "AVX512", "AVX512_VBMI", "AVX512_VNNI",
             "AVX512_BF16", "AMX_TILE", "AMX_INT8", "AMX_BF16"]
_LEVELS = {
    "portable": {"SSE42", "AVX", "AVX2", "FMA", "F16C", "BMI2"},  # x86-64-v3
    "compat": {"SSE42"},  # x86-64-v2: CPUs without AVX2 (before Intel Haswell, 2013)
}
_FIXED = ["-DGGML_NATIVE=OFF", "-DGGML_BACKEND_DL=OFF", "-DGGML_CPU_ALL_VARIANTS=OFF"]
COMMON = ["-DLLAVA_BUILD=OFF"]  # the multimodal library: the appliance never loads it
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"

VARIANTS = {
    "portable": "x86-64-v3 (SSE4.2 AVX AVX2 FMA F16C BMI2; no AVX-512, no AMX)",
    "compat": "x86-64-v2 (SSE4.2; for CPUs without AVX2)",
    "native-noamx": "native for this build machine's CPU with AMX compiled out (benchmark baseline only)",
    "dispatch": "llama.cpp's runtime-dispatched CPU variants, GGML_BACKEND_DL (the alternative, benchmark only)",
}
BENCH_ONLY = ("native-noamx", "dispatch")
# What llama.cpp reports as compiled in (its system-info names), on and off, per variant.
EXPECT = {
    "portable": ({"SSE3", "SSSE3", "AVX", "AVX2", "F16C", "FMA", "BMI2"},
                 {"AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16", "AMX_INT8", "AVX_VNNI"}),
    "compat": ({"SSE3", "SSSE3"}, {"AVX", "AVX2", "F16C", "FMA", "BMI2", "AVX512", "AMX_INT8", "AVX_VNNI"}),
    "native-noamx": (set(), {"AMX_INT8"}),
    "dispatch": (set(), set()),  # no CPU backend is loaded until the caller loads one of bin/libggml-cpu-*.so
}
# /proc/cpuinfo flags the portable variant needs
PORTABLE_NEEDS = ["avx", "avx2", "fma", "f16c", "bmi2"]


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def auto_variant(flags: set[str]) -> str:
    """The portable baseline if this CPU can run it, else the compat one (never native)."""
    return "portable" if all(f in flags for f in PORTABLE_NEEDS) else "compat"


class BuildError(Exception):
    """The build, install or check failed; the message says which and how to go on."""


def cmake_args(backend: str, variant: str) -> list[str]:
    if variant in _LEVELS:
        args = _FIXED + [f"-DGGML_{f}={'ON' if f in _LEVELS[variant] else 'OFF'}" for f in _FEATURES]
    elif variant == "native-noamx":
        args = ["-DGGML_NATIVE=ON", "-DGGML_BACKEND_DL=OFF", "-DGGML_CPU_ALL_VARIANTS=OFF"]
    elif variant == "dispatch":
        args = ["-DGGML_NATIVE=OFF", "-DGGML_BACKEND_DL=ON", "-DGGML_CPU_ALL_VARIANTS=ON"]
    else:
        raise BuildError(f"unknown variant {variant!r}: choose one of {', '.join(VARIANTS)}")
    args += COMMON
    if backend == "cuda":
        args.append("-DGGML_CUDA=ON")
        archs = os.environ.get("LLAMA_CUDA_ARCHITECTURES", "").strip()
        if archs:
            if not re.fullmatch(r"[0-9]+(-real|-virtual)?(;[0-9]+(-real|-virtual)?)*", archs):
                raise BuildError(f"LLAMA_CUDA_ARCHITECTURES={archs!r} is not a ';'-separated list such as 80;86;89")
            args.append(f"-DCMAKE_CUDA_ARCHITECTURES={archs}")
    elif backend != "cpu":
        raise BuildError(f"unknown backend {backend!r}: choose cpu or cuda")
    return args


def compiler_env(variant: str) -> dict[str, str]:
    """Compiler flags CMake takes from the environment (CMAKE_ARGS is split on spaces)."""
    return {"CFLAGS": NO_AMX, "CXXFLAGS": NO_AMX} if variant == "native-noamx" else {}


def build_key(backend: str, variant: str, args: list[str]) -> str:
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}-{sysconfig.get_platform()}"
    fields = {"package": PACKAGE, "version": VERSION, "backend": backend, "variant": variant,
              "cmake_args": args, "python": tag}
    if compiler_env(variant):
        fields["env"] = compiler_env(variant)
    text = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def say(message: str) -> None:
    print(f"[llama.cpp build] {message}", flush=True)


def _build_wheel(out: Path, args: list[str], extra_env: dict[str, str]) -> Path:
    """``pip wheel`` from the source distribution, no cache in or out, with plain progress lines."""
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, CMAKE_ARGS=" ".join(args), FORCE_CMAKE="1", PYTHONUNBUFFERED="1",
               CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 2), **extra_env)
    for var in ("CFLAGS", "CXXFLAGS"):
        if var not in extra_env:
            env.pop(var, None)  # nothing from the caller's environment changes the build
    env.pop("PIP_FIND_LINKS", None)
    with tempfile.TemporaryDirectory(prefix="llama-wheel-", dir=out.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-cache-dir", "--no-deps", "--no-binary", PACKAGE,
               "-v", "-w", tmp, f"{PACKAGE}=={VERSION}"]
        say(f"compiling {PACKAGE} {VERSION} from source (about {BUILD_MINUTES} minutes on 2 cores)")
        say("CMAKE_ARGS=" + " ".join(args) + "".join(f" {k}={v!r}" for k, v in extra_env.items()))
        started = time.monotonic()
        last = 0.0
        tail: list[str] = []
        step = re.compile(r"^\s*\[(\d+)/(\d+)\]")
        with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              errors="replace") as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                tail = (tail + [line.rstrip()])[-40:]
                m = step.match(line)
                now = time.monotonic()
                if m and (now - last >= 20 or m.group(1) == m.group(2)):
                    last = now
                    say(f"compiled {m.group(1)}/{m.group(2)} ({int(now - started)} s)")
                elif not m and now - last >= 60:
                    last = now
                    say(f"still working ({int(now - started)} s)")
            code = proc.wait()
        if code != 0:
            raise BuildError(f"pip wheel failed (exit {code}); its last lines:\n" + "\n".join(tail))
        wheels = list(Path(tmp).glob("llama_cpp_python-*.whl"))
        if len(wheels) != 1:
            raise BuildError(f"pip wheel left {len(wheels)} llama-cpp-python wheels, expected 1")
        final = out / wheels[0].name
        os.replace(wheels[0], final)
        say(f"built {final.name} in {int(time.monotonic() - started)} s")
        return final


def _probe(path_entry: Path | None) -> dict:
    """What the installed library says of itself, read in a child process (a bad build kills only it)."""
    code = (
        "import json, llama_cpp, os\n"
        "lib = os.path.join(os.path.dirname(llama_cpp.__file__), 'lib')\n"
        "print(json.dumps({'version': llama_cpp.__version__, 'lib_dir': lib,\n"
        "  'system_info': llama_cpp.llama_print_system_info().decode(errors='replace'),\n"
        "  'gpu_offload': bool(llama_cpp.llama_supports_gpu_offload())}))\n"
    )
    env = dict(os.environ)
    if path_entry is not None:
        env["PYTHONPATH"] = str(path_entry)
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                             cwd=tempfile.gettempdir())
    except subprocess.TimeoutExpired as exc:
        raise BuildError("loading the installed llama.cpp library did not finish within 120 s") from exc
    if out.returncode != 0:
        raise BuildError(f"loading the installed llama.cpp library failed (exit {out.returncode}): "
                         f"{(out.stderr or '').strip().splitlines()[-1:] or ''}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def compiled_features(system_info: str) -> dict[str, bool]:
    """``{"AVX2": True, "AVX512": False, ...}`` from llama.cpp's system-info line (its CPU part)."""
    cpu = system_info.split("CPU :", 1)[1] if "CPU :" in system_info else system_info
    return {k: v == "1" for k, v in re.findall(r"([A-Z0-9_]+) = ([01])", cpu)}


def check_variant(variant: str, backend: str, probe: dict) -> None:
    feats = compiled_features(probe["system_info"])
    on, off = EXPECT[variant]
    missing = sorted(f for f in on if not feats.get(f))
    extra = sorted(f for f in off if feats.get(f))
    if missing or extra:
        raise BuildError(f"the installed llama.cpp is not the {variant} build: missing {missing or 'none'}, "
                         f"unexpected {extra or 'none'} ({probe['system_info'].strip()})")
    if backend == "cuda" and not probe["gpu_offload"]:
        raise BuildError("the CUDA build does not report GPU offload support")


def _lib_digests(lib_dir: Path) -> dict[str, str]:
    return {p.name: _sha256(p) for p in sorted(lib_dir.glob("*.so*")) if p.is_file() and not p.is_symlink()}


def record_path(prefix: Path) -> Path:
    return prefix / RECORD


def _current(record_file: Path, key: str) -> bool:
    """True if the recorded build is ``key`` and its libraries are unchanged on disk."""
    if not record_file.is_file():
        return False
    try:
        rec = json.loads(record_file.read_text())
    except ValueError:
        return False
    if rec.get("key") != key:
        return False
    lib_dir = Path(rec.get("lib_dir", ""))
    return lib_dir.is_dir() and _lib_digests(lib_dir) == rec.get("libraries")


REPO = Path(__file__).resolve().parent.parent


def rebuild_command(backend: str, variant: str | None = None) -> str:
    extra = f" LLAMA_BACKEND={backend}" if backend != "cpu" else ""
    extra += f" LLAMA_VARIANT={variant}" if variant else ""
    return f"make -C {REPO} llama-rebuild{extra}"


def install(backend: str, variant: str, wheels: Path, target: Path | None = None, force: bool = False) -> dict:
    args = cmake_args(backend, variant)
    key = build_key(backend, variant, args)
    prefix = target if target is not None else Path(sys.prefix)
    rec_file = record_path(prefix)
    folder = wheels / key
    if force:
        say(f"rebuilding from source: the cached wheel for build {key} and the build record are removed")
        shutil.rmtree(folder, ignore_errors=True)
        rec_file.unlink(missing_ok=True)
    elif _current(rec_file, key):
        rec = json.loads(rec_file.read_text())
        say(f"{PACKAGE} {VERSION} {variant} ({backend}) already installed, build {key}")
        return rec
    found = sorted(folder.glob("llama_cpp_python-*.whl")) if folder.is_dir() else []
    wheel = found[-1] if found else _build_wheel(folder, args, compiler_env(variant))
    say(f"installing {wheel.name} from {folder} (build {key})")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-cache-dir"]
    rec_file.unlink(missing_ok=True)  # no record while the libraries change
    if target is not None:
        if target.exists():
            shutil.rmtree(target)
        # the baseline beside the environment: only the package, its dependencies come from the environment
        subprocess.run(cmd + ["--no-deps", "--no-index", "--target", str(target), str(wheel)], check=True)
    else:
        # this wheel file and nothing else for llama-cpp-python; then its pure-Python dependencies
        subprocess.run(cmd + ["--no-deps", "--no-index", "--force-reinstall", str(wheel)], check=True)
        subprocess.run(cmd + [str(wheel)], check=True)
    probe = _probe(target)
    if probe["version"] != VERSION:
        raise BuildError(f"installed llama_cpp reports version {probe['version']}, expected {VERSION}")
    check_variant(variant, backend, probe)
    rec = {
        "package": PACKAGE, "version": VERSION, "backend": backend, "variant": variant,
        "variant_description": VARIANTS[variant], "key": key, "cmake_args": args,
        "wheel": wheel.name, "wheel_sha256": _sha256(wheel), "lib_dir": probe["lib_dir"],
        "libraries": _lib_digests(Path(probe["lib_dir"])), "system_info": probe["system_info"].strip(),
        "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rebuild": rebuild_command(backend),
    }
    rec_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = rec_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, rec_file)
    say(f"installed and checked: {probe['system_info'].strip()}")
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default=os.environ.get("LLAMA_BACKEND") or "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--variant", default=os.environ.get("LLAMA_VARIANT") or "auto",
                    choices=["auto", *sorted(VARIANTS)],
                    help="auto: portable (x86-64-v3) if this CPU has AVX2, FMA, F16C and BMI2, else compat")
    ap.add_argument("--wheels", type=Path, default=REPO / ".build" / "wheels")
    ap.add_argument("--target", type=Path, default=None,
                    help="install into this directory (for the benchmark's baseline) instead of the environment")
    ap.add_argument("--force", action="store_true", help="build from source again even if a wheel is cached")
    ap.add_argument("--print-key", action="store_true", help="print the build key and exit")
    ns = ap.parse_args(argv)
    if os.environ.get("CMAKE_ARGS", "").strip():
        print("CMAKE_ARGS is set, and the appliance's build does not take it (it would be a native build, or a "
              "build nobody checked): unset it; for CUDA use LLAMA_BACKEND=cuda (README, 'The llama.cpp build')",
              file=sys.stderr)
        return 2
    variant = auto_variant(cpu_flags()) if ns.variant == "auto" else ns.variant
    if variant in BENCH_ONLY and ns.target is None:
        print(f"--variant {variant} is for the benchmark only: give --target DIR, it never goes into the "
              "appliance's environment", file=sys.stderr)
        return 2
    try:
        args = cmake_args(ns.backend, variant)
        if ns.print_key:
            print(build_key(ns.backend, variant, args))
            return 0
        install(ns.backend, variant, ns.wheels.resolve(), ns.target.resolve() if ns.target else None, ns.force)
    except BuildError as exc:
        print(f"llama.cpp build: {exc}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as exc:
        print(f"llama.cpp build: {' '.join(map(str, exc.cmd[:4]))} ... failed with exit {exc.returncode}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
