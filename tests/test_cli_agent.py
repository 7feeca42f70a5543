"""`appliance ask`, `sessions` and `trace show` end to end: real engine, index and stores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.runtime.model_store import ModelStore
from tests.test_knowledge_real import _run

DOCS = {
    "kiosk.md": "# Media kiosk\n\nEvery USB drive brought into the facility is scanned at the media kiosk "
                "before it may be connected to any workstation.\n",
    "canteen.txt": "The canteen serves lunch from noon until two in the afternoon on weekdays.\n",
    "ciphers.txt": "Cipher keys for the secure link are rotated on the first Monday of each month.\n",
}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, model_store: ModelStore) -> Path:
    root = tmp_path_factory.mktemp("cli-agent")
    for name, text in DOCS.items():
        (root / name).write_text(text)
    assert _run(["ingest", str(root / "kiosk.md"), str(root / "canteen.txt"), "--labels", "UNCLASSIFIED"], root,
                model_store).returncode == 0
    assert _run(["ingest", str(root / "ciphers.txt"), "--labels", "SECRET:CRYPTO"], root, model_store).returncode == 0
    (root / "data" / "policy.toml").write_text(
        '[users.alice]\nlevel = "UNCLASSIFIED"\n\n[users.carol]\nlevel = "SECRET"\ncompartments = ["CRYPTO"]\n')
    return root


def test_ask_streams_then_prints_sources(home: Path, model_store: ModelStore) -> None:
    proc = _run(["ask", "Where are USB drives scanned?", "--as", "alice"], home, model_store)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.strip(), "the draft streams to stderr while it is generated"
    out = proc.stdout
    assert "kiosk" in out.lower() and "[1] Media kiosk (kiosk.md; Media kiosk; UNCLASSIFIED; chars" in out
    assert "\u201cEvery USB drive" in out and "UNCLASSIFIED" in out.splitlines()[0]
    trace_id = out.rsplit("trace ", 1)[1].split(";")[0].strip()
    shown = _run(["trace", "show", trace_id], home, model_store)
    assert shown.returncode == 0, shown.stderr
    for word in ("route", "plan", "retrieve", "assess", "synthesize", "verify", "orchestration"):
        assert word in shown.stdout
    data = json.loads(_run(["trace", "show", trace_id, "--json"], home, model_store).stdout)
    assert data["time_split"]["model_ms"] > 0 and data["user"] == "alice"


def test_ask_json_respects_clearance(home: Path, model_store: ModelStore) -> None:
    alice = json.loads(_run(["ask", "How often are cipher keys rotated?", "--as", "alice", "--json"], home,
                            model_store).stdout)
    assert all(c["doc_id"] != "ciphers.txt" for c in alice["citations"]) and "Monday" not in alice["answer"]
    carol = json.loads(_run(["ask", "How often are cipher keys rotated?", "--as", "carol", "--json"], home,
                            model_store).stdout)
    assert [c["doc_id"] for c in carol["citations"]] == ["ciphers.txt"] and carol["marking"] == "SECRET//CRYPTO"
    assert carol["citations"][0]["labels"] == "SECRET:CRYPTO" and carol["sentences"]


def test_sessions_follow_up_and_bad_input(home: Path, model_store: ModelStore) -> None:
    first = json.loads(_run(["ask", "When does the canteen serve lunch?", "--as", "alice", "--session", "new",
                             "--json"], home, model_store).stdout)
    sid = first["session_id"]
    follow = json.loads(_run(["ask", "Is it open on weekdays?", "--as", "alice", "--session", sid, "--json"], home,
                             model_store).stdout)
    assert follow["session_id"] == sid
    listed = _run(["sessions", "--as", "alice"], home, model_store)
    assert sid in listed.stdout and "2 turn(s)" in listed.stdout
    other = _run(["ask", "What did alice ask?", "--as", "carol", "--session", sid], home, model_store)
    assert other.returncode == 2 and f"no session '{sid}'" in other.stderr
    assert sid not in _run(["sessions", "--as", "carol"], home, model_store).stdout
    empty = _run(["ask", "  ", "--as", "alice"], home, model_store)
    assert empty.returncode == 2 and "empty question" in empty.stderr
    big = _run(["ask", "x" * 100_000, "--as", "alice"], home, model_store)
    assert big.returncode == 2 and "over the 2000 limit" in big.stderr
    missing = _run(["trace", "show", "nope"], home, model_store)
    assert missing.returncode == 2 and "no trace 'nope'" in missing.stderr
