"""What llama.cpp build is installed, and what this CPU can run, read without loading llama.cpp.

The build record (``<prefix>/llama-cpp-build.json``) is written by
``deploy/build_llama_cpp.py`` when it installs the portable build; it holds the build key,
the CMake arguments, llama.cpp's own report of the CPU features compiled in, and the
digests of the installed libraries. This module compares those digests with the files on
disk (so a native wheel installed behind the appliance's back is noticed), and the
compiled features with this CPU's ``/proc/cpuinfo`` flags (so a build that needs AVX2 on a
CPU without it is named before anything runs). llama.cpp itself is only ever loaded in the
host process: a library built for features this CPU lacks would kill the caller.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import sys
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

__all__ = ["CpuInfo", "BuildInfo", "cpu_info", "build_info", "compiled_features", "RECORD_NAME"]

RECORD_NAME = "llama-cpp-build.json"
MAX_RECORD_BYTES = 1 << 20
REPO = Path(__file__).resolve().parents[2]

# llama.cpp's system-info names -> the /proc/cpuinfo flag each needs
FEATURE_FLAGS = {
    "SSE3": "pni", "SSSE3": "ssse3", "AVX": "avx", "AVX2": "avx2", "F16C": "f16c", "FMA": "fma", "BMI2": "bmi2",
    "AVX_VNNI": "avx_vnni", "AVX512": "avx512f", "AVX512_VBMI": "avx512vbmi", "AVX512_VNNI": "avx512_vnni",
    "AVX512_BF16": "avx512_bf16", "AMX_INT8": "amx_int8",
}
# the flags that decide which kernels can run, shown by doctor and named in a refusal
RELEVANT_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", "avx_vnni", "avx512f", "avx512bw", "avx512vl",
                  "avx512vbmi", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16")


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: frozenset[str]

    @property
    def relevant(self) -> list[str]:
        return [f for f in RELEVANT_FLAGS if f in self.flags]

    def describe(self) -> str:
        return f"{self.model} ({' '.join(self.relevant) or 'no AVX'})"


@lru_cache(maxsize=1)
def cpu_info(path: str = "/proc/cpuinfo") -> CpuInfo:
    model, flags = "unknown CPU", frozenset[str]()
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model == "unknown CPU":
                    model = " ".join(value.split())
                elif key == "flags" and not flags:
                    flags = frozenset(value.split())
                if flags and model != "unknown CPU":
                    break
    except OSError:
        pass
    return CpuInfo(model, flags)


def compiled_features(system_info: str) -> dict[str, bool]:
    """``{"AVX2": True, "AVX512": False, ...}`` from llama.cpp's system-info line (its CPU part)."""
    cpu = system_info.split("CPU :", 1)[1] if "CPU :" in system_info else system_info
    return {k: v == "1" for k, v in re.findall(r"([A-Z0-9_]+) = ([01])", cpu)}


@dataclass
class BuildInfo:
    """The installed llama.cpp build as the appliance sees it (``appliance doctor`` shows it)."""

    recorded: bool  # a build record was found
    matches: bool  # ... and the installed libraries are the ones it recorded
    variant: str | None
    description: str | None
    backend: str | None
    key: str | None
    cmake_args: list[str]
    compiled: list[str]  # CPU features compiled in, as llama.cpp reported them at install
    missing_on_cpu: list[str]  # ... that this CPU lacks (the build would die of illegal instructions)
    library_digest: str | None  # one digest over the installed libraries (the self-test's key uses it)
    rebuild: str
    problem: str | None = None
    libraries: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        if not self.recorded or not self.matches:
            return self.problem or "unrecorded llama.cpp build"
        return f"{self.variant} {self.description} ({self.backend}), build {self.key}"


def _lib_dir() -> Path | None:
    spec = importlib.util.find_spec("llama_cpp")  # finds the package without importing (loading) it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "lib"


def _digests(lib_dir: Path) -> dict[str, str]:
    out = {}
    for p in sorted(lib_dir.glob("*.so*")):
        if p.is_file() and not p.is_symlink():
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            out[p.name] = h.hexdigest()
    return out


def _read_record(prefix: Path) -> dict | None:
    path = prefix / RECORD_NAME
    try:
        if path.stat().st_size > MAX_RECORD_BYTES:
            return None
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def build_info(prefix: Path | None = None, cpu: CpuInfo | None = None) -> BuildInfo:
    cpu = cpu or cpu_info()
    rec = _read_record(prefix or Path(sys.prefix))
    lib_dir = _lib_dir()
    libs = _digests(lib_dir) if lib_dir is not None and lib_dir.is_dir() else {}
    digest = hashlib.sha256(json.dumps(libs, sort_keys=True).encode()).hexdigest() if libs else None
    default_rebuild = f"make -C {REPO} llama-rebuild"
    if rec is None:
        problem: str | None = ("llama-cpp-python is not installed" if not libs else
                               "llama.cpp was not installed by the appliance's build (no build record): it may be a "
                               "native build")
        return BuildInfo(False, False, None, None, None, None, [], [], [], digest, default_rebuild, problem, libs)
    compiled = sorted(k for k, on in compiled_features(str(rec.get("system_info", ""))).items() if on)
    missing = [f"{k} ({FEATURE_FLAGS[k]})" for k in compiled if k in FEATURE_FLAGS
               and FEATURE_FLAGS[k] not in cpu.flags]
    matches = bool(libs) and libs == rec.get("libraries")
    problem = None
    if not matches:
        problem = ("the installed llama.cpp libraries are not the ones the build record names (replaced after "
                   "the appliance's build, perhaps by a native pip build)")
    elif missing:
        problem = f"the build uses CPU features this CPU lacks: {', '.join(missing)}"
    return BuildInfo(True, matches, rec.get("variant"), rec.get("variant_description"), rec.get("backend"),
                     rec.get("key"), list(rec.get("cmake_args") or []), compiled, missing, digest,
                     str(rec.get("rebuild") or default_rebuild), problem, libs)
