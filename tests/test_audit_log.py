"""The audit log, its export and the offline verifier: one named test per attack."""

from __future__ import annotations

import base64
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.audit.export import ExportFilter, export_log
from appliance.audit.log import AuditLog
from appliance.audit.merkle import leaf_hash, node_hash
from appliance.audit.verify import verify_export
from appliance.errors import AuditError, AuditVerifyError, AuditWriteError, CheckpointError

REPO = Path(__file__).resolve().parent.parent


def _log(root: Path, n: int = 10, **kw) -> AuditLog:
    log = AuditLog(root, durable=False, **kw)
    for i in range(n):
        log.record("question", "alice" if i % 2 == 0 else "bob", question=f"question {i}", secret=f"s-{i}")
    return log


def _export(log: AuditLog, out: Path, **kw) -> Path:
    export_log(log, out, by="officer", **kw)
    return out


def _lines(d: Path) -> list[bytes]:
    return (d / "entries.jsonl").read_bytes().splitlines(keepends=True)


def _write(d: Path, lines: list[bytes]) -> None:
    (d / "entries.jsonl").write_bytes(b"".join(lines))


@pytest.fixture
def exported(tmp_path: Path) -> Path:
    return _export(_log(tmp_path / "audit"), tmp_path / "out")


def test_export_verifies_and_records_itself(tmp_path: Path) -> None:
    log = _log(tmp_path / "audit")
    out = _export(log, tmp_path / "out")
    report = verify_export(out)
    assert report.entries == report.size == 11 and not report.filtered
    assert json.loads(_lines(out)[-1])["kind"] == "audit.export"
    assert log.check()["entries"] == 11
    with pytest.raises(AuditError, match="not an empty directory"):
        _export(log, out)


def test_entry_edited(exported: Path) -> None:
    lines = _lines(exported)
    lines[3] = lines[3].replace(b"question 3", b"question X")
    _write(exported, lines)
    with pytest.raises(AuditVerifyError, match="do not hash to the checkpoint"):
        verify_export(exported)


def test_entry_deleted(exported: Path) -> None:
    lines = _lines(exported)
    del lines[4]
    _write(exported, lines)
    with pytest.raises(AuditVerifyError, match="expected entry 4, found 5"):
        verify_export(exported)


def test_entries_reordered(exported: Path) -> None:
    lines = _lines(exported)
    lines[2], lines[5] = lines[5], lines[2]
    _write(exported, lines)
    with pytest.raises(AuditVerifyError, match="expected entry 2, found 5"):
        verify_export(exported)


def test_entry_duplicated(exported: Path) -> None:
    lines = _lines(exported)
    lines.insert(3, lines[2])
    _write(exported, lines)
    with pytest.raises(AuditVerifyError, match="out of order, repeated"):
        verify_export(exported)


def test_tail_truncated_caught_against_earlier_checkpoint(tmp_path: Path) -> None:
    log = _log(tmp_path / "audit")
    first = (_export(log, tmp_path / "e1") / "checkpoint").read_bytes()
    log.close()
    db = sqlite3.connect(tmp_path / "audit" / "audit.db")  # someone with the disk drops the tail
    db.execute("DELETE FROM entries WHERE seq >= 8")
    db.execute("DELETE FROM checkpoints")
    db.commit()
    db.close()
    log = AuditLog(tmp_path / "audit", durable=False)
    with pytest.raises(AuditError, match="truncated"):
        _export(log, tmp_path / "e2", since_checkpoint=first)
    later = _export(log, tmp_path / "e3")
    verify_export(later)  # consistent in itself ...
    with pytest.raises(AuditVerifyError, match="truncated"):  # ... but not with what the officer took away
        verify_export(later, previous=first)


def test_truncate_and_continue(tmp_path: Path) -> None:
    log = _log(tmp_path / "audit")
    first = (_export(log, tmp_path / "e1") / "checkpoint").read_bytes()
    log.close()
    db = sqlite3.connect(tmp_path / "audit" / "audit.db")
    db.execute("DELETE FROM entries WHERE seq >= 5")
    db.execute("DELETE FROM checkpoints")
    db.commit()
    db.close()
    log = _log(tmp_path / "audit", n=12)  # the log carries on past its old size
    out = _export(log, tmp_path / "e2", since_checkpoint=first)
    with pytest.raises(AuditVerifyError, match="does not extend the earlier checkpoint"):
        verify_export(out)


def test_two_checkpoints_same_size_different_roots(tmp_path: Path) -> None:
    a = _log(tmp_path / "a")
    cp_a = (_export(a, tmp_path / "ea") / "checkpoint").read_bytes()
    (tmp_path / "b").mkdir(mode=0o700)
    shutil.copy2(tmp_path / "a" / "log.key", tmp_path / "b" / "log.key")  # same key, a forked history
    b = AuditLog(tmp_path / "b", durable=False)
    for i in range(10):
        b.record("question", "mallory", question=f"other {i}")
    out = _export(b, tmp_path / "eb")
    assert verify_export(out).size == verify_export(tmp_path / "ea").size
    with pytest.raises(AuditVerifyError, match="forked"):
        verify_export(out, previous=cp_a)


def test_checkpoint_signed_by_unknown_key(tmp_path: Path, exported: Path) -> None:
    other = AuditLog(tmp_path / "other", durable=False)
    (tmp_path / "pinned.vkey").write_text(other.vkey)
    with pytest.raises(CheckpointError, match="not signed by"):
        verify_export(exported, key_file=tmp_path / "pinned.vkey")
    shutil.copy(tmp_path / "pinned.vkey", exported / "log.vkey")  # swapping the export's key does not help
    with pytest.raises(CheckpointError, match="not signed by"):
        verify_export(exported)


def test_checkpoint_with_control_characters(exported: Path) -> None:
    note = (exported / "checkpoint").read_bytes()
    (exported / "checkpoint").write_bytes(note.replace(b"\n", b"\x1b\n", 1))
    with pytest.raises(CheckpointError, match="control character"):
        verify_export(exported)


def test_interior_node_presented_as_leaf(tmp_path: Path) -> None:
    log = _log(tmp_path / "audit", n=4)
    out = _export(log, tmp_path / "out", filt=ExportFilter(user="alice"))
    # the parent of leaves 0 and 1 offered as "entry 0", with the parent's path as its proof
    l0, l1 = (leaf_hash(e.data) for e in list(log.entries(0, 2)))
    assert node_hash(l0, l1) == log.tree._range_hash(0, 2)
    lines = _lines(out)
    lines[0] = l0 + l1 + b"\n"
    _write(out, lines)
    with pytest.raises(AuditVerifyError, match="line 1"):
        verify_export(out)


def test_torn_last_write_detected_on_restart(tmp_path: Path) -> None:
    log = _log(tmp_path / "audit")
    log.close()
    db = sqlite3.connect(tmp_path / "audit" / "audit.db")
    db.execute("UPDATE entries SET data = substr(data, 1, length(data) - 7) WHERE seq = 9")
    db.commit()
    db.close()
    log = AuditLog(tmp_path / "audit", durable=False)
    assert "entry 9 does not match its hash" in (log.problem or "")
    with pytest.raises(AuditWriteError, match="failed its check"):
        log.record("question", "alice", question="after the crash")
    with pytest.raises(AuditVerifyError, match="entry 9"):
        log.check()


def test_filtered_export_leaks_no_other_user(tmp_path: Path) -> None:
    log = _log(tmp_path / "audit")
    out = _export(log, tmp_path / "out", filt=ExportFilter(user="alice"))
    report = verify_export(out)
    assert report.filtered and report.entries == 5
    # The checkpoint, key and inclusion proofs are base64 hashes and signatures, in which "bob" turns up by
    # chance (about one run in a hundred); every file that carries text is read whole.
    assert {f.name for f in out.iterdir()} == {"entries.jsonl", "inclusion.jsonl", "checkpoint", "log.vkey",
                                               "manifest.json"}
    text = (out / "entries.jsonl").read_bytes() + (out / "manifest.json").read_bytes()
    assert b"bob" not in text and b"s-1" not in text and b"s-3" not in text
    assert all(set(json.loads(line)) == {"seq", "proof"} for line in (out / "inclusion.jsonl").read_text().splitlines())
    lines = _lines(out)
    bob = next(e for e in log.entries() if e.value()["user"] == "bob")
    _write(out, [lines[0], bob.data + b"\n", *lines[1:]])  # slipping another user's entry in is caught
    with pytest.raises(AuditVerifyError, match="another user"):
        verify_export(out)


def test_fail_closed_when_the_log_cannot_be_written(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit", durable=False, busy_timeout_s=0.1)
    log.record("question", "alice", question="first")
    blocker = sqlite3.connect(tmp_path / "audit" / "audit.db")
    blocker.execute("BEGIN EXCLUSIVE")
    with pytest.raises(AuditWriteError, match="action is refused"):
        log.record("question", "alice", question="second")
    blocker.rollback()
    blocker.close()
    with pytest.raises(AuditWriteError, match="cannot be written"):
        log.record("question", "alice", blob=b"bytes are not JSON")
    assert log.record("question", "alice", question="third") == 1


def test_checkpoints_every_n_entries_and_two_writers(tmp_path: Path) -> None:
    one = AuditLog(tmp_path / "audit", durable=False, checkpoint_every=4)
    two = AuditLog(tmp_path / "audit", durable=False, checkpoint_every=4)  # e.g. the TUI and the CLI
    for i in range(9):
        (one if i % 2 else two).record("question", "alice", n=i)
    assert [n.split(b"\n")[1] for n in one.checkpoints()] == [b"4", b"8"]
    assert one.check()["entries"] == 9 and two.check()["root"] == one.check()["root"]
    assert os.stat(tmp_path / "audit" / "log.key").st_mode & 0o777 == 0o600


def test_verifier_needs_only_stdlib_and_cryptography(exported: Path) -> None:
    guard = (
        "import sys, importlib.abc\n"
        "allowed = set(sys.stdlib_module_names) | {'cryptography', 'appliance', '_cffi_backend', 'cffi'}\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] not in allowed:\n"
        "            raise ImportError('verifier imported ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from appliance.audit.verify import main\n"
        f"sys.exit(main([{str(exported)!r}]))\n")
    proc = subprocess.run([sys.executable, "-c", guard], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("OK: 11 entries")
    (exported / "checkpoint").write_bytes(b"garbage")
    proc = subprocess.run([sys.executable, "-m", "appliance.audit.verify", str(exported)], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 1 and proc.stderr.startswith("FAILED:")


def test_consistency_proof_accepted_from_an_earlier_export(tmp_path: Path) -> None:
    log = _log(tmp_path / "audit")
    first = (_export(log, tmp_path / "e1") / "checkpoint").read_bytes()
    for i in range(7):
        log.record("ingest", "officer", doc=f"d{i}")
    out = _export(log, tmp_path / "e2", since_checkpoint=first)
    report = verify_export(out)
    assert report.previous_size == 11 and report.size == 19
    cons = json.loads((out / "consistency.json").read_text())
    cons["proof"][0] = base64.b64encode(b"\0" * 32).decode()
    (out / "consistency.json").write_text(json.dumps(cons))
    with pytest.raises(AuditVerifyError, match="does not extend"):
        verify_export(out)


def test_disk_full_refuses_the_action_and_keeps_the_log(tmp_path: Path) -> None:
    log = _log(tmp_path / "audit", n=3)
    pages = log.conn.execute("PRAGMA page_count").fetchone()[0]
    log.conn.execute(f"PRAGMA max_page_count = {pages + 1}")  # SQLite's own "database or disk is full"
    with pytest.raises(AuditWriteError, match="full"):
        for i in range(100):
            log.record("question", "alice", question="x" * 3000, n=i)
    log.conn.execute("PRAGMA max_page_count = 1073741823")
    size = log.tree.size
    assert log.check()["entries"] == size  # what was written before is whole and verifies
    assert log.record("question", "alice", question="after") == size
