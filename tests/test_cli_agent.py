"""`appliance ask`, `sessions` and `trace show` end to end: real engine, index and stores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.runtime.model_store import ModelStore
from tests.helpers import make_accounts, run_cli

DOCS = {
    "kiosk.md": "# Media kiosk\n\nEvery USB drive brought into the facility is scanned at the media kiosk "
                "before it may be connected to any workstation.\n",
    "canteen.txt": "The canteen serves lunch from noon until two in the afternoon on weekdays.\n",
    "ciphers.txt": "Cipher keys for the secure link are rotated on the first Monday of each month.\n",
}


TOKENS: dict[str, str] = {}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, model_store: ModelStore) -> Path:
    root = tmp_path_factory.mktemp("cli-agent")
    for name, text in DOCS.items():
        (root / name).write_text(text)
    TOKENS.update(make_accounts(root, model_store, {"alice": ("analyst", "UNCLASSIFIED"),
                                                "carol": ("analyst", "SECRET:CRYPTO")}))
    assert run_cli(["ingest", str(root / "kiosk.md"), str(root / "canteen.txt"), "--labels", "UNCLASSIFIED"], root,
                model_store, token=TOKENS["root"]).returncode == 0
    assert run_cli(["ingest", str(root / "ciphers.txt"), "--labels", "SECRET:CRYPTO"], root, model_store,
                token=TOKENS["root"]).returncode == 0
    return root


def _as(user: str, args: list[str], home: Path, store: ModelStore):
    return run_cli(args, home, store, token=TOKENS[user])


def test_ask_streams_then_prints_sources(home: Path, model_store: ModelStore) -> None:
    proc = _as("alice", ["ask", "Where are USB drives scanned?"], home, model_store)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.strip(), "the draft streams to stderr while it is generated"
    # not a terminal: the draft cannot be erased, so a line under it says what became of it
    assert proc.stderr.rstrip().splitlines()[-1].startswith("[draft above"), proc.stderr[-500:]
    out = proc.stdout
    assert "kiosk" in out.lower() and "[1] Media kiosk (kiosk.md; Media kiosk; UNCLASSIFIED; chars" in out
    assert "Every USB drive brought into the facility" in out and "UNCLASSIFIED" in out.splitlines()[0]
    assert not out.splitlines()[1].startswith("Question")
    trace_id = out.rsplit("trace ", 1)[1].split(";")[0].strip()
    shown = _as("alice", ["trace", "show", trace_id], home, model_store)
    assert shown.returncode == 0, shown.stderr
    for word in ("route", "plan", "retrieve", "assess", "synthesize", "verify", "orchestration"):
        assert word in shown.stdout
    data = json.loads(_as("alice", ["trace", "show", trace_id, "--json"], home, model_store).stdout)
    assert data["time_split"]["model_ms"] > 0 and data["user"] == "alice"
    other = _as("carol", ["trace", "show", trace_id], home, model_store)
    assert other.returncode == 2 and f"no trace '{trace_id}'" in other.stderr


def test_ask_json_respects_clearance(home: Path, model_store: ModelStore) -> None:
    alice = json.loads(_as("alice", ["ask", "How often are cipher keys rotated?", "--json"], home,
                           model_store).stdout)
    assert all(c["doc_id"] != "ciphers.txt" for c in alice["citations"]) and "Monday" not in alice["answer"]
    carol = json.loads(_as("carol", ["ask", "How often are cipher keys rotated?", "--json"], home,
                           model_store).stdout)
    assert [c["doc_id"] for c in carol["citations"]] == ["ciphers.txt"] and carol["marking"] == "SECRET//CRYPTO"
    assert carol["citations"][0]["labels"] == "SECRET:CRYPTO" and carol["sentences"]


def test_sessions_follow_up_and_bad_input(home: Path, model_store: ModelStore) -> None:
    first = json.loads(_as("alice", ["ask", "When does the canteen serve lunch?", "--session", "new", "--json"],
                           home, model_store).stdout)
    sid = first["session_id"]
    follow = json.loads(_as("alice", ["ask", "Is it open on weekdays?", "--session", sid, "--json"], home,
                            model_store).stdout)
    assert follow["session_id"] == sid
    listed = _as("alice", ["sessions"], home, model_store)
    assert sid in listed.stdout and "2 turn(s)" in listed.stdout
    other = _as("carol", ["ask", "What did alice ask?", "--session", sid], home, model_store)
    assert other.returncode == 2 and f"no session '{sid}'" in other.stderr
    assert sid not in _as("carol", ["sessions"], home, model_store).stdout
    empty = _as("alice", ["ask", "  "], home, model_store)
    assert empty.returncode == 2 and "empty question" in empty.stderr
    big = _as("alice", ["ask", "x" * 100_000], home, model_store)
    assert big.returncode == 2 and "over the 2000 limit" in big.stderr
    missing = _as("alice", ["trace", "show", "nope"], home, model_store)
    assert missing.returncode == 2 and "no trace 'nope'" in missing.stderr


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live children of ``pid``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append((int(d.name), cmd))
    return out


def test_the_engine_killed_mid_answer_is_one_error_line(home: Path, model_store: ModelStore) -> None:
    """The host is killed while the draft streams: the command ends at once with one error line."""
    import os
    import selectors
    import signal
    import subprocess
    import sys
    import time

    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env.update(APPLIANCE_DATA_DIR=str(home / "data"), APPLIANCE_MODELS_DIR=str(model_store.root), COLUMNS="200",
               APPLIANCE_SESSION=TOKENS["alice"])
    proc = subprocess.Popen([sys.executable, "-m", "appliance", "ask", "When does the canteen serve lunch?"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stderr, selectors.EVENT_READ)
        deadline = time.monotonic() + 90
        drafted = b""
        while not drafted.strip() and time.monotonic() < deadline and proc.poll() is None:
            if sel.select(timeout=0.5):
                drafted += os.read(proc.stderr.fileno(), 4096)
        assert drafted.strip(), "no draft streamed before the deadline"
        hosts = [p for p, cmd in _children(proc.pid) if "appliance.runtime.host" in cmd]
        assert len(hosts) == 1, _children(proc.pid)
        os.kill(hosts[0], signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    stderr = (drafted + err).decode(errors="replace")
    assert proc.returncode == 2, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert errors == [stderr.rstrip().splitlines()[-1]] and len(errors) == 1, stderr  # one line, the last
    # the kill lands in the stream (generate), or, if the draft just ended, in the next call
    assert "llama.cpp host died (killed by SIGKILL) during " in errors[0] and "try again" in errors[0], errors
    assert out == b""  # no half answer on stdout
    assert _children(proc.pid) == []


def test_the_draft_verdict_and_the_rows_it_takes() -> None:
    from appliance.agent.grounding import SentenceCheck
    from appliance.agent.loop import Answer
    from appliance.cli.agent import draft_rows, draft_verdict

    assert draft_rows("abc", 80) == 1 and draft_rows("a" * 81, 80) == 2 and draft_rows("x\n\ny" + "z" * 80, 80) == 4
    ok = SentenceCheck("a", [1], 0.9, 0.9, 0.9, True, "supported")
    bad = SentenceCheck("b", [1], 0.1, 0.1, 0.1, False, "support 0.10 below 0.55")
    answered = Answer("q?", "a [1]", "answered", sentences=[ok])
    assert "every sentence verified" in draft_verdict(answered)
    answered.sentences = [ok, bad]
    assert "NOT the answer: 1 of 2 sentences failed" in draft_verdict(answered)
    quoted = Answer("q?", "quote", "quoted", sentences=[ok])
    assert draft_verdict(quoted) == "[draft above NOT the answer: it failed verification; quoted instead, below]"


def test_on_a_terminal_the_draft_is_erased_before_the_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from rich.console import Console

    from appliance.agent.loop import Answer
    from appliance.cli import agent as cli_agent

    out = io.StringIO()
    monkeypatch.setattr(cli_agent, "err_console", Console(file=out, force_terminal=True, width=40))
    cli_agent._settle_draft("The canteen serves dinner on Mondays and Wednesdays only, I think.",
                            Answer("q", "x", "quoted"))
    assert out.getvalue() == "\r\x1b[1A\x1b[J"  # 66 characters at 40 columns: back up one row, clear to the end
    assert "[draft above" not in out.getvalue()
