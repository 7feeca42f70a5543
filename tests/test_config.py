"""Configuration: TOML plus APPLIANCE_* overrides, with clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import default_data_dir, load_settings
from appliance.errors import ConfigError


def test_defaults(tmp_path: Path) -> None:
    s = load_settings({"APPLIANCE_DATA_DIR": str(tmp_path)})
    assert s.data_dir == tmp_path and s.models_dir == tmp_path / "models"
    assert s.runtime.generator == "smollm2-135m-instruct" and s.runtime.n_gpu_layers == 0
    assert s.config_file is None


def test_checkout_default_data_dir_is_var() -> None:
    assert default_data_dir() == Path(__file__).resolve().parent.parent / "var"


def test_toml_then_environment(tmp_path: Path) -> None:
    (tmp_path / "appliance.toml").write_text('[runtime]\nn_ctx = 4096\nthreads = 3\n[limits]\nmax_prompt_chars = 500\n')
    s = load_settings({"APPLIANCE_DATA_DIR": str(tmp_path), "APPLIANCE_RUNTIME_THREADS": "1",
                       "APPLIANCE_RUNTIME_N_GPU_LAYERS": "-1"})
    assert s.config_file == tmp_path / "appliance.toml"
    assert (s.runtime.n_ctx, s.runtime.threads, s.runtime.n_gpu_layers) == (4096, 1, -1)
    assert s.limits.max_prompt_chars == 500


def test_config_path_and_models_dir_override(tmp_path: Path) -> None:
    cfg = tmp_path / "elsewhere.toml"
    cfg.write_text('[runtime]\ngenerator = "bigger"\n')
    s = load_settings({"APPLIANCE_DATA_DIR": str(tmp_path), "APPLIANCE_CONFIG": str(cfg),
                       "APPLIANCE_MODELS_DIR": str(tmp_path / "m")})
    assert s.runtime.generator == "bigger" and s.models_dir == tmp_path / "m"


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ("[runtime]\nn_ctx = 'big'\n", {}, r"\[runtime\] n_ctx: expected int, got 'big'"),
        ("[runtime]\nn_ctxx = 1\n", {}, r"unknown key 'n_ctxx'"),
        ("[network]\nallow = true\n", {}, r"unknown section \[network\]"),
        ("[runtime\n", {}, r"not valid TOML"),
        ("[runtime]\nn_ctx = 16\n", {}, r"n_ctx: expected an integer from 128"),
        ("", {"APPLIANCE_RUNTIME_THREADS": "many"}, r"APPLIANCE_RUNTIME_THREADS: expected int, got 'many'"),
        ("", {"APPLIANCE_TELEMETRY": "on"}, r"APPLIANCE_TELEMETRY: unknown variable"),
        ("", {"APPLIANCE_RUNTIME_COLOUR": "red"}, r"APPLIANCE_RUNTIME_COLOUR: unknown key 'colour'"),
        ("", {"APPLIANCE_RUNTIME_N_GPU_LAYERS": "-2"}, r"n_gpu_layers: expected -1 \(all\)"),
    ],
)
def test_bad_config_is_refused_with_its_name(tmp_path: Path, toml: str, env: dict, message: str) -> None:
    (tmp_path / "appliance.toml").write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_settings({"APPLIANCE_DATA_DIR": str(tmp_path), **env})


def test_oversized_config_refused(tmp_path: Path) -> None:
    (tmp_path / "appliance.toml").write_text("# " + "x" * (1 << 20) + "\n")
    with pytest.raises(ConfigError, match="over the"):
        load_settings({"APPLIANCE_DATA_DIR": str(tmp_path)})


def test_missing_named_config_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="APPLIANCE_CONFIG: no such file"):
        load_settings({"APPLIANCE_DATA_DIR": str(tmp_path), "APPLIANCE_CONFIG": str(tmp_path / "none.toml")})
