"""The llama.cpp build: never native, keyed so a stale wheel cannot be reused, checked, recorded."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.runtime.build_info import CpuInfo, build_info, compiled_features

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "deploy" / "build_llama_cpp.py"


def _script():
    spec = importlib.util.spec_from_file_location("build_llama_cpp", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_the_appliance_builds_are_never_native_and_name_every_feature() -> None:
    b = _script()
    for variant in ("portable", "compat"):
        for backend in ("cpu", "cuda"):
            args = b.cmake_args(backend, variant)
            assert "-DGGML_NATIVE=OFF" in args and "-DGGML_NATIVE=ON" not in args
            assert "-DGGML_AMX_INT8=OFF" in args and "-DGGML_AVX512=OFF" in args
            assert "-DGGML_CPU_ALL_VARIANTS=OFF" in args and "-DGGML_BACKEND_DL=OFF" in args
            assert ("-DGGML_CUDA=ON" in args) == (backend == "cuda")
    assert "-DGGML_AVX2=ON" in b.cmake_args("cpu", "portable")
    assert "-DGGML_AVX2=OFF" in b.cmake_args("cpu", "compat")


def test_the_build_key_changes_with_everything_that_changes_the_binary() -> None:
    b = _script()
    keys = {b.build_key(be, v, b.cmake_args(be, v)) for be in ("cpu", "cuda") for v in ("portable", "compat")}
    keys.add(b.build_key("cpu", "native-noamx", b.cmake_args("cpu", "native-noamx")))
    keys.add(b.build_key("cpu", "dispatch", b.cmake_args("cpu", "dispatch")))
    assert len(keys) == 6  # a wheel built with other flags is never found under this build's key
    args = b.cmake_args("cpu", "portable")
    assert b.build_key("cpu", "portable", args) == b.build_key("cpu", "portable", list(args))


def test_auto_picks_the_portable_build_only_where_the_cpu_runs_it() -> None:
    b = _script()
    assert b.auto_variant({"avx", "avx2", "fma", "f16c", "bmi2", "avx512f", "amx_int8"}) == "portable"
    assert b.auto_variant({"avx", "sse4_2"}) == "compat"  # Sandy Bridge: no AVX2
    assert b.auto_variant(set()) == "compat"


def test_the_installed_check_refuses_a_native_build() -> None:
    b = _script()
    native = {"system_info": "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | "
                             "AVX512 = 1 | AVX512_VNNI = 1 | AMX_INT8 = 1 | OPENMP = 1 |", "gpu_offload": False}
    with pytest.raises(b.BuildError, match=r"not the portable build.*unexpected \['AMX_INT8', 'AVX512'"):
        b.check_variant("portable", "cpu", native)
    with pytest.raises(b.BuildError, match="AMX_INT8"):
        b.check_variant("native-noamx", "cpu", native)
    portable = {"system_info": "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | "
                               "LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 |", "gpu_offload": False}
    b.check_variant("portable", "cpu", portable)
    with pytest.raises(b.BuildError, match="GPU offload"):
        b.check_variant("portable", "cuda", portable)


@pytest.mark.parametrize("args, env, message", [
    ([], {"CMAKE_ARGS": "-DGGML_NATIVE=ON"}, "CMAKE_ARGS is set"),
    (["--variant", "native-noamx"], {}, "give --target DIR"),
    (["--variant", "dispatch"], {}, "give --target DIR"),
])
def test_the_script_refuses_what_would_bypass_it(args: list[str], env: dict[str, str], message: str) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), *args, "--print-key"], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr


def test_this_environment_runs_the_recorded_portable_build() -> None:
    """What `make install` put here: the recorded build, its libraries unchanged, nothing native in it."""
    info = build_info()
    assert info.recorded and info.matches, info.problem
    assert info.variant in {"portable", "compat"} and "-DGGML_NATIVE=OFF" in info.cmake_args
    assert not {"AVX512", "AMX_INT8", "AVX512_VNNI"} & set(info.compiled)
    assert info.missing_on_cpu == [] and info.problem is None
    assert "llama-rebuild" in info.rebuild
    # the same record judged for a CPU without AVX2 names what it lacks
    old = build_info(cpu=CpuInfo("old", frozenset({"sse4_2", "pni", "ssse3"})))
    if info.variant == "portable":
        assert any(m.startswith("AVX2") for m in old.missing_on_cpu) and "lacks" in (old.problem or "")
    assert compiled_features("CPU : AVX2 = 1 | AVX512 = 0 |") == {"AVX2": True, "AVX512": False}
