"""Bundles over the real parts: the CLI, llama.cpp (embedder, generator, a LoRA adapter), Chroma,
SQLite, and the process killed with SIGKILL at every step of an apply."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from appliance.access.accounts import hash_passphrase
from appliance.config import load_settings
from appliance.runtime.model_store import ModelStore
from appliance.services import build_services
from appliance.updates.apply import FAULT_ENV
from tests.conftest import make_random_adapter
from tests.helpers import PASS, cli_bundle, make_accounts, run_cli, run_cli_env, store_copy

STEPS = ("verified", "models", "copied", "knowledge", "healthy", "metadata", "sealed",  # before the switch: old
         "switched", "state", "policy", "audited")  # after it: new
SWITCH = STEPS.index("switched")

DOCS = {
    "canteen.txt": "The canteen serves lunch from noon until two o'clock on weekdays.\n",
    "keys.txt": "Cipher keys are rotated on the first Monday of every month by the custodian.\n",
}


def _write_spec(tmp: Path, release: int, *, policy: bool = False, extra: str = "") -> Path:
    docs = tmp / "docs"
    docs.mkdir(exist_ok=True)
    for name, text in DOCS.items():
        (docs / name).write_text(text)
    if policy:
        (docs / "policy.toml").write_text(f"""
levels = ["UNCLASSIFIED", "CONFIDENTIAL", "SECRET", "TOP SECRET"]
compartments = ["CRYPTO", "NUCLEAR"]
[users.root]
role = "admin"
level = "TOP SECRET"
compartments = ["CRYPTO", "NUCLEAR"]
[users.olga]
role = "officer"
level = "SECRET"
compartments = ["CRYPTO"]
[users.nina]
role = "analyst"
level = "CONFIDENTIAL"
compartments = []
passphrase_hash = "{hash_passphrase(PASS)}"
""")
    spec = tmp / f"spec-{release}.toml"
    spec.write_text(f"""
[bundle]
name = "northgate-test"
appliance_class = "northgate"
release = {release}
expires_days = 30

[[knowledge]]
collection = "facility-handbook"
labels = "UNCLASSIFIED"
paths = ["docs/canteen.txt"]

[[knowledge]]
collection = "security"
labels = "SECRET:CRYPTO"
paths = ["docs/keys.txt"]
{'[policy]' + chr(10) + 'path = "docs/policy.toml"' if policy else ''}
{extra}""")
    return spec


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, model_store: ModelStore) -> tuple[Path, dict[str, str]]:
    """An appliance with root (admin) and olga (officer) logged in, the bundle's root trusted, and the bundle."""
    tmp = tmp_path_factory.mktemp("bundle-template")
    tokens = make_accounts(tmp, model_store, {"olga": ("officer", "SECRET:CRYPTO")})
    media = cli_bundle(tmp, _write_spec(tmp, 1, policy=True), "b1", model_store)
    proc = run_cli(["bundle", "trust", str(media / "metadata" / "1.root.json")], tmp, model_store, token=tokens["olga"])
    assert proc.returncode == 0, proc.stderr
    return tmp, tokens


def _state(data: Path) -> dict:
    s = build_services(load_settings({"APPLIANCE_DATA_DIR": str(data)}))
    out = {"generation": s.generation().generation,
           "docs": sorted(d.doc_id for d in s.knowledge().catalog.documents()),
           "users": sorted(a.name for a in s.accounts().list() if not a.disabled),
           "release": json.loads((data / "updates" / "state.json").read_text())["release"]
           if (data / "updates" / "state.json").is_file() else 0,
           "problems": s.knowledge().check()}
    s.close()
    return out


@pytest.mark.parametrize("step", STEPS)
def test_sigkill_at_each_step_of_apply_leaves_wholly_old_or_wholly_new(step: str, template, model_store: ModelStore,
                                                                       tmp_path: Path) -> None:
    src, tokens = template
    shutil.copytree(src, tmp_path, dirs_exist_ok=True, symlinks=True)
    before = _state(tmp_path / "data")
    assert before["generation"] == 0 and before["docs"] == [] and before["release"] == 0
    env_run = run_cli_env(["bundle", "apply", str(tmp_path / "b1")], tmp_path / "data", model_store,
                          token=tokens["olga"], extra={FAULT_ENV: step})
    assert env_run.returncode == -9, (step, env_run.returncode, env_run.stderr[-2000:])
    # the restart: any command finishes or undoes the interrupted apply before it runs
    hist = run_cli(["bundle", "history", "--json"], tmp_path, model_store, token=tokens["olga"])
    assert hist.returncode == 0, hist.stderr
    after = _state(tmp_path / "data")
    assert after["problems"] == []
    if STEPS.index(step) < SWITCH:
        assert after["generation"] == 0 and after["docs"] == [] and after["release"] == 0
        assert after["users"] == before["users"]
        assert not list((tmp_path / "data" / "updates").glob("meta-*"))
        assert not list((tmp_path / "data" / "generations").glob(".building-*"))
    else:
        assert after["generation"] == 1 and after["docs"] == ["canteen.txt", "keys.txt"] and after["release"] == 1
        assert "nina" in after["users"]  # the signed policy was applied (by the recovery if need be)
        assert json.loads(hist.stdout)["serving"] == 1
    # and the interrupted bundle can then be applied (or is already): the appliance is not wedged
    again = run_cli(["bundle", "apply", str(tmp_path / "b1")], tmp_path, model_store, token=tokens["olga"])
    assert again.returncode == 0, again.stderr
    final = _state(tmp_path / "data")
    assert final["generation"] == 1 and final["release"] == 1 and "nina" in final["users"]
    check = run_cli(["audit", "check"], tmp_path, model_store, token=tokens["olga"])
    assert check.returncode == 0, check.stdout + check.stderr


def test_models_adapter_and_embedder_switch_over_the_real_engine(tmp_path: Path, model_store: ModelStore,
                                                                 generator, embedder_record) -> None:  # noqa: ANN001
    store = store_copy(model_store, tmp_path / "models")
    tokens = make_accounts(tmp_path, store, {"olga": ("officer", "SECRET:CRYPTO")})
    shutil.copyfile(generator.path, tmp_path / "docs-generator.gguf")
    shutil.copyfile(embedder_record.path, tmp_path / "docs-embedder.gguf")
    make_random_adapter(generator.path, tmp_path / "triage.gguf", seed=7)
    # release 1: knowledge only (served by the configured embedder)
    b1 = cli_bundle(tmp_path, _write_spec(tmp_path, 1), "b1", store)
    assert run_cli(["bundle", "trust", str(b1 / "metadata" / "1.root.json")], tmp_path, store,
                token=tokens["olga"]).returncode == 0
    proc = run_cli(["bundle", "apply", str(b1)], tmp_path, store, token=tokens["olga"])
    assert proc.returncode == 0, proc.stderr
    # release 2: the generator and embedder as bundle models, and an adapter for that generator
    extra = f"""
[[models]]
name = "bundle-generator"
kind = "generator"
path = "docs-generator.gguf"

[[models]]
name = "bundle-embedder"
kind = "embedder"
path = "docs-embedder.gguf"

[[adapters]]
name = "triage"
path = "triage.gguf"
base_sha256 = "{generator.sha256}"
"""
    b2 = cli_bundle(tmp_path, _write_spec(tmp_path, 2, extra=extra), "b2", store)
    proc = run_cli(["bundle", "apply", str(b2), "--json"], tmp_path, store, token=tokens["olga"])
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["generation"] == 2 and result["changes"]["unchanged"] == 2
    s = build_services(load_settings({"APPLIANCE_DATA_DIR": str(tmp_path / "data"),
                                      "APPLIANCE_MODELS_DIR": str(store.root)}))
    try:
        info = s.generation()
        assert info.models["generator"]["sha256"] == generator.sha256
        assert info.models["embedder"]["sha256"] == embedder_record.sha256
        assert set(info.adapters) == {"triage"}
        kb = s.knowledge()
        assert kb.check() == []  # the whole index was re-embedded into the new generation
        # the engine now serves the adapter by name, on the bundle's base
        out = s.engine().generate(__import__("appliance.runtime.protocol", fromlist=["GenerateRequest"])
                                  .GenerateRequest(prompt="Hello", max_tokens=4, adapter="triage"))
        assert out.text is not None
        # and answers a search over the re-embedded index
        ask = run_cli(["search", "when does the canteen serve lunch", "--json"], tmp_path, store, token=tokens["olga"])
        assert ask.returncode == 0, ask.stderr
        assert "canteen.txt" in ask.stdout
    finally:
        s.close()


def test_disk_full_during_staging_is_refused_and_leaves_nothing(template, model_store: ModelStore,
                                                                tmp_path: Path) -> None:
    """A real full disk: staging on a 256 KiB tmpfs (a private mount namespace), the bundle over 1 MiB."""
    import subprocess
    import sys

    src, tokens = template
    shutil.copytree(src, tmp_path, dirs_exist_ok=True, symlinks=True)
    spec = _write_spec(tmp_path, 2)
    (tmp_path / "docs" / "canteen.txt").write_text("The canteen serves lunch. " * 60_000)
    big = cli_bundle(tmp_path, spec, "b2", model_store)
    staging = tmp_path / "data" / "updates" / "staging"
    staging.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env.update(APPLIANCE_DATA_DIR=str(tmp_path / "data"), APPLIANCE_MODELS_DIR=str(model_store.root),
               APPLIANCE_SESSION=tokens["olga"], COLUMNS="200")
    script = (f'mount -t tmpfs -o size=256k tmpfs "{staging}" && '
              f'exec "{sys.executable}" -m appliance bundle apply "{big}"')
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr  # the CLI's exit status for a refusal
    assert "disk is full" in proc.stderr and "nothing was changed" in proc.stderr
    after = _state(tmp_path / "data")
    assert after["generation"] == 0 and after["release"] == 0 and after["docs"] == []
    assert list(staging.iterdir()) == []  # outside the namespace: nothing was left behind either
    audit = run_cli(["audit", "check"], tmp_path, model_store, token=tokens["olga"])
    assert audit.returncode == 0, audit.stdout + audit.stderr
