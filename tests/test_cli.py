"""The command line over the real runtime; every command documented in the README."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from appliance.cli import main
from appliance.runtime.model_store import ModelStore
from tests.ggufs import tiny_model

REPO = Path(__file__).resolve().parent.parent


def run(args: list[str], tmp_path: Path, store: ModelStore | None = None, **env: str) -> subprocess.CompletedProcess:
    environ = dict(os.environ, APPLIANCE_DATA_DIR=str(tmp_path / "data"), COLUMNS="200", **env)
    if store is not None:
        environ["APPLIANCE_MODELS_DIR"] = str(store.root)
    return subprocess.run([sys.executable, "-m", "appliance", *args], env=environ, capture_output=True, text=True,
                          timeout=300)


def _commands(group: click.Group, prefix: str = "appliance") -> list[str]:
    out = []
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out += _commands(cmd, f"{prefix} {name}")
        else:
            out.append(f"{prefix} {name}")
    return out


def test_every_command_has_a_readme_section() -> None:
    readme = (REPO / "README.md").read_text()
    commands = _commands(main)
    assert len(commands) >= 7
    missing = [c for c in commands if f"### `{c}`" not in readme]
    assert not missing, f"README lacks a section for {missing}"
    assert readme.lstrip().startswith("# Appliance") and "make run" in readme[:400] and "make test" in readme[:400]


def test_generate_streams_and_reports(tmp_path: Path, model_store: ModelStore) -> None:
    proc = run(["generate", "Say hello.", "--max-tokens", "12"], tmp_path, model_store)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    assert "tokens/s" in proc.stderr


def test_generate_with_schema_file(tmp_path: Path, model_store: ModelStore) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"answer": {"type": "boolean"}},
                                  "required": ["answer"]}))
    proc = run(["generate", "Is water wet?", "--json-schema", str(schema), "--json"], tmp_path, model_store)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert isinstance(json.loads(result["text"])["answer"], bool)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "x", "--json-schema", "{schema}"], "not valid JSON"),
        (["generate", "x", "--adapter", "nope"], "unknown adapter 'nope'"),
        (["generate", "word " * 4000], "the context holds"),
        (["generate", "x", "--grammar", "{grammar}"], "grammar does not parse"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path: Path, model_store: ModelStore, args: list[str], message: str) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "bad.gbnf").write_text("root ::= [")
    args = [a.replace("{schema}", str(tmp_path / "bad.json")).replace("{grammar}", str(tmp_path / "bad.gbnf"))
            for a in args]
    before = sorted(p.name for p in model_store.blobs.iterdir())
    proc = run(args, tmp_path, model_store)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], proc.stderr
    assert sorted(p.name for p in model_store.blobs.iterdir()) == before


def test_unknown_model_named(tmp_path: Path, model_store: ModelStore) -> None:
    proc = run(["generate", "x"], tmp_path, model_store, APPLIANCE_RUNTIME_GENERATOR="gpt-9")
    assert proc.returncode == 2 and "unknown model 'gpt-9'" in proc.stderr


def test_embed(tmp_path: Path, model_store: ModelStore) -> None:
    proc = run(["embed", "first text", "second text", "--json"], tmp_path, model_store)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["dim"] == 384 and len(data["vectors"]) == 2


def test_models_list_and_verify(tmp_path: Path, model_store: ModelStore) -> None:
    proc = run(["models", "list", "--json"], tmp_path, model_store)
    names = {m["name"] for m in json.loads(proc.stdout)}
    assert {"smollm2-135m-instruct", "all-minilm-l6-v2"} <= names


@pytest.mark.processes
def test_models_import_verify_and_refuse(tmp_path: Path) -> None:
    src = tiny_model(tmp_path / "tiny.gguf")
    proc = run(["models", "import", str(src), "--name", "tiny", "--kind", "generator"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert run(["models", "verify"], tmp_path).returncode == 0
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(src.read_bytes()[:100])
    proc = run(["models", "import", str(cut), "--name", "cut", "--kind", "generator"], tmp_path)
    assert proc.returncode == 2 and "truncated" in proc.stderr
    proc = run(["models", "import", str(src), "--name", "pinned", "--kind", "generator", "--sha256", "0" * 64],
               tmp_path)
    assert proc.returncode == 2 and "does not match" in proc.stderr
    listed = json.loads(run(["models", "list", "--json"], tmp_path).stdout)
    assert [m["name"] for m in listed] == ["tiny"]
    blob = Path(listed[0]["path"])
    blob.write_bytes(blob.read_bytes()[:-1] + b"\x01")
    proc = run(["models", "verify"], tmp_path)
    assert proc.returncode == 1 and "BAD tiny" in proc.stdout


def test_bad_config_is_one_line(tmp_path: Path) -> None:
    proc = run(["models", "list"], tmp_path, APPLIANCE_RUNTIME_N_CTX="lots")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: APPLIANCE_RUNTIME_N_CTX: expected int, got 'lots'"


def test_doctor_reports_missing_models(tmp_path: Path) -> None:
    proc = run(["doctor", "--json"], tmp_path)
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert any("not in the store" in p for p in report["problems"])


def test_config_errors_keep_their_section_name(tmp_path: Path) -> None:
    env = dict(os.environ, APPLIANCE_DATA_DIR=str(tmp_path / "data"), APPLIANCE_AGENT_POLICY="maybe")
    proc = subprocess.run([sys.executable, "-m", "appliance", "doctor"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "[agent] policy: expected" in proc.stderr  # not eaten as markup
