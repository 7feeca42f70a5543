"""The whole path runs with no network at all, and nothing even tries to reach one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from appliance.runtime.model_store import ModelStore

APPLIANCE = [sys.executable, "-m", "appliance"]


def _env(tmp_path: Path, model_store: ModelStore) -> dict[str, str]:
    return dict(os.environ, APPLIANCE_DATA_DIR=str(tmp_path / "data"), APPLIANCE_MODELS_DIR=str(model_store.root))


def test_whole_path_inside_unshare_n_with_zero_egress_attempts(tmp_path: Path, model_store: ModelStore) -> None:
    proc = subprocess.run(["unshare", "-n", *APPLIANCE, "doctor", "--json"], env=_env(tmp_path, model_store),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout[-2000:]
    report = json.loads(proc.stdout)
    assert report["ok"], report["problems"]
    engine = report["engine"]
    assert engine["ok"] and engine["embedding_dim"] == 384
    assert engine["index_top_hit"].startswith("An air-gapped computer")  # embed -> Chroma -> query
    assert len(engine["answer"]) > 0  # the generator answered
    air = report["airgap"]
    assert air["network_isolated"] and air["interfaces"] == ["lo"]
    assert air["guard_installed"] and air["offline_env"]
    assert air["blocked_attempts"] == 0
    assert air["blocked_attempts_logged"] == 0  # the host process logs there too
    assert not (tmp_path / "data" / "log" / "airgap.jsonl").exists()


def test_an_attempt_inside_the_appliance_is_blocked_named_and_logged(tmp_path: Path, model_store: ModelStore) -> None:
    code = (
        "import sys, urllib.request\n"
        "from appliance.cli import main\n"
        "from appliance.airgap import install_egress_guard\n"
        "from pathlib import Path\n"
        "install_egress_guard(Path(sys.argv[1]))\n"
        "def phone_home():\n"
        "    urllib.request.urlopen('http://192.0.2.1/update-check', timeout=1)\n"
        "try:\n"
        "    phone_home()\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    log = tmp_path / "airgap.jsonl"
    proc = subprocess.run(["unshare", "-n", sys.executable, "-c", code, str(log)], env=_env(tmp_path, model_store),
                          capture_output=True, text=True, timeout=60)
    assert "phone_home" in proc.stdout, proc.stdout + proc.stderr
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(entries) >= 1 and "phone_home" in entries[0]["caller"]
