"""End to end: `appliance tui` in a real terminal (tmux), driven by keystrokes, read from the screen."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

from appliance.runtime.model_store import ModelStore
from tests.helpers import PASS, make_accounts, run_cli

REPO = Path(__file__).resolve().parent.parent


def _tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=30, check=True).stdout


def _wait_for(session: str, text: str, timeout: float) -> str:
    end = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < end:
        screen = _tmux("capture-pane", "-p", "-t", session)
        if text in screen:
            return screen
        time.sleep(0.25)
    raise AssertionError(f"{text!r} never appeared; the screen was:\n{screen}")


def test_login_and_ask_in_a_real_terminal(tmp_path: Path, model_store: ModelStore) -> None:
    assert shutil.which("tmux"), "tmux is needed for this test (it is on the appliance image)"
    (tmp_path / "canteen.txt").write_text("The canteen serves lunch from noon until two in the afternoon on "
                                          "weekdays.\n")
    tokens = make_accounts(tmp_path, model_store, {"ann": ("analyst", "UNCLASSIFIED")})
    assert run_cli(["ingest", str(tmp_path / "canteen.txt"), "--labels", "UNCLASSIFIED"], tmp_path, model_store,
                token=tokens["root"]).returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env.update(APPLIANCE_DATA_DIR=str(tmp_path / "data"), APPLIANCE_MODELS_DIR=str(model_store.root),
               TERM="xterm-256color")
    session = f"appliance-{uuid.uuid4().hex[:8]}"
    command = f"cd {REPO} && {sys.executable} -m appliance tui"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "40", command], env=env,
                   check=True, timeout=30)
    try:
        _wait_for(session, "Log in", 30)
        for keys in (["-l", "ann"], ["Enter"], ["-l", PASS], ["Enter"]):
            _tmux("send-keys", "-t", session, *keys)
            time.sleep(0.5)  # a person types; keys sent before a field has focus would go elsewhere
        _wait_for(session, "ann (analyst)", 30)
        time.sleep(0.5)
        _tmux("send-keys", "-t", session, "-l", "When does the canteen serve lunch?")
        time.sleep(0.5)
        _tmux("send-keys", "-t", session, "Enter")
        screen = _wait_for(session, "canteen.txt", 120)
        assert "UNCLASSIFIED" in screen and ("VERIFIED ANSWER" in screen or "QUOTED" in screen)
        assert "noon" in screen
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True, timeout=30)
