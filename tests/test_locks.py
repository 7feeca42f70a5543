"""The writer lock, the database opener, document versions, per-user sessions and Services' lazy parts."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from appliance.access.labels import Labels
from appliance.db import open_db
from appliance.errors import BusyError, KnowledgeError
from appliance.locks import WriterLock, writer_lock
from appliance.migrations import Migrations
from tests.helpers import fake_kb

REPO = Path(__file__).resolve().parent.parent

HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    from pathlib import Path
    from appliance.locks import writer_lock
    with writer_lock(Path(sys.argv[1])).hold("an officer's ingest"):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
""")


def _holder(data: Path, seconds: float) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLDER.format(repo=str(REPO)), str(data), str(seconds)],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    return p


def test_a_second_process_waits_then_is_told_who_holds_the_lock(tmp_path: Path) -> None:
    p = _holder(tmp_path, 30)
    try:
        lock = WriterLock(tmp_path)  # this process's own (the registry's would be the same object)
        started = time.monotonic()
        with pytest.raises(BusyError, match=r"busy: an officer's ingest \(process \d+, since .*\); a bundle apply "
                                            r"waited 0.3 s"):
            with lock.hold("a bundle apply", wait_s=0.3):
                pass
        assert time.monotonic() - started < 10
        with lock.attempt("start-up recovery") as got:
            assert not got
    finally:
        p.kill()
        p.wait(timeout=30)
    with WriterLock(tmp_path).hold("after the holder died", wait_s=5):  # the kernel released it
        pass


def test_a_waiting_writer_goes_on_when_the_holder_finishes(tmp_path: Path) -> None:
    p = _holder(tmp_path, 0.5)
    try:
        with WriterLock(tmp_path).hold("the next ingest", wait_s=30):
            assert p.wait(timeout=30) == 0
    finally:
        p.kill()


def test_re_entrant_in_a_thread_exclusive_between_threads(tmp_path: Path) -> None:
    lock = writer_lock(tmp_path)
    assert writer_lock(tmp_path / ".") is lock
    results: list[bool] = []
    with lock.hold("outer"):
        with lock.hold("inner"):  # an apply ingesting into its new generation
            assert lock.held()
        assert lock.held()
        t = threading.Thread(target=lambda: results.append(lock.acquire("another worker", 0.2)))
        t.start()
        t.join(timeout=30)
    assert results == [False] and not lock.held()
    with pytest.raises(RuntimeError):
        lock.release()


def test_a_reader_open_never_touches_another_writers_pending_vectors(tmp_path: Path) -> None:
    """A write in flight has 'pending' journal rows; a knowledge base opened meanwhile (an analyst's TUI)
    must leave them, and start-up recovery must not run while the writer holds the lock."""
    data = tmp_path / "data"
    kb = fake_kb(data / "kb")
    kb.writer = writer_lock(data)
    doc = tmp_path / "memo.txt"
    doc.write_text("The memo says the drill is on Thursday. " * 20)
    with kb.writing("ingest"):
        original = kb.catalog.swap_in
        seen: dict[str, object] = {}

        def open_a_reader_then_swap(docs):  # noqa: ANN001, ANN202 - between the vectors and the catalog
            reader = fake_kb(data / "kb")
            reader.writer = WriterLock(data)  # as another process's would be
            with pytest.raises(KnowledgeError, match="open for reading only"):
                reader.recover()
            with reader.writer.attempt("start-up recovery") as got:
                seen["free"] = got
            seen["pending"] = len(reader.catalog.journal())
            reader.close()
            return original(docs)

        kb.catalog.swap_in = open_a_reader_then_swap
        kb.ingest_files([doc], Labels("UNCLASSIFIED"))
    assert seen == {"free": False, "pending": 1}
    assert kb.check() == []
    with pytest.raises(KnowledgeError, match="open for reading only"):
        kb.ingest_files([doc], Labels("UNCLASSIFIED"))


def test_a_deleted_document_ingested_again_never_reuses_its_retiring_vector_ids(tmp_path: Path) -> None:
    kb = fake_kb(tmp_path / "kb", retire_grace_s=3600)  # the old vectors are still retiring
    doc = tmp_path / "rota.txt"
    doc.write_text("Rota: the night shift covers the gate. " * 20)
    kb.ingest_files([doc], Labels("UNCLASSIFIED"))
    assert kb.delete("rota.txt")
    kb.ingest_files([doc], Labels("UNCLASSIFIED"))
    assert kb.catalog.get("rota.txt").version == 2
    kb._retire([], grace_s=0)  # the retiring version-1 vectors go now
    assert kb.check() == []  # version 2's vectors are all there


def test_a_version_stored_by_another_writer_meanwhile_is_refused_whole(tmp_path: Path) -> None:
    kb = fake_kb(tmp_path / "kb")
    doc = tmp_path / "a.txt"
    doc.write_text("First text of the document. " * 10)
    kb.ingest_files([doc], Labels("UNCLASSIFIED"))
    other = fake_kb(tmp_path / "kb")
    original = kb.catalog.swap_in

    def racing(docs):  # noqa: ANN001, ANN202 - another writer stores version 2 first
        doc.write_text("Third text. " * 10)
        other.ingest_files([doc], Labels("UNCLASSIFIED"))
        return original(docs)

    kb.catalog.swap_in = racing
    doc.write_text("Second text of the document. " * 10)
    report = kb.ingest_files([doc], Labels("UNCLASSIFIED"))
    assert report.outcomes[0].status == "failed" and "by another writer" in report.outcomes[0].reason
    assert kb.catalog.get("a.txt").version == 3  # the other writer's, numbered past the one in flight
    assert kb.check() == []


MIGRATING = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    from pathlib import Path
    from appliance.db import open_db
    from appliance.migrations import Migrations
    m = Migrations("race")
    @m
    def m001(db):
        db.execute("CREATE TABLE t (x)")
        time.sleep(0.3)  # both processes are inside the migrations at once
    @m
    def m002(db):
        db.execute("ALTER TABLE t ADD COLUMN y")
    go = Path(sys.argv[2])
    while not go.exists():
        time.sleep(0.005)
    open_db(Path(sys.argv[1]), m).close()
""")


def test_two_processes_migrating_one_fresh_database_run_each_step_once(tmp_path: Path) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", MIGRATING.format(repo=str(REPO)), str(tmp_path / "x.db"),
                               str(tmp_path / "go")], stderr=subprocess.PIPE, text=True) for _ in range(2)]
    (tmp_path / "go").touch()
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    conn = sqlite3.connect(tmp_path / "x.db")
    assert conn.execute("SELECT name FROM _migrations ORDER BY name").fetchall() == [("m001",), ("m002",)]
    assert [r[1] for r in conn.execute("PRAGMA table_info(t)")] == ["x", "y"]
    conn.close()


def test_write_transactions_take_the_lock_first_and_say_busy(tmp_path: Path) -> None:
    m = Migrations("t")

    @m
    def m001(db) -> None:  # noqa: ANN001
        db.execute("CREATE TABLE t (x INTEGER)")

    a = open_db(tmp_path / "t.db", m, busy_timeout_s=0.2)
    b = open_db(tmp_path / "t.db", m, busy_timeout_s=0.2)
    assert a.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with a.atomic():
        a.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(BusyError, match="t.db is being written by another process"):
            with b.atomic():
                pass
        with a.atomic():  # nested: a savepoint, rolled back alone
            a.execute("INSERT INTO t VALUES (2)")
            a.conn.execute("SELECT 1")
        try:
            with a.atomic():
                a.execute("INSERT INTO t VALUES (3)")
                raise ValueError
        except ValueError:
            pass
    assert [r[0] for r in b.execute("SELECT x FROM t ORDER BY x")] == [1, 2]
    a.close()
    b.close()


def test_cli_sessions_belong_to_the_os_user(tmp_path: Path) -> None:
    from appliance.access.session_file import session_file

    data = tmp_path / "data"
    ann = session_file(data, {"HOME": str(tmp_path / "ann")})
    bob = session_file(data, {"HOME": str(tmp_path / "bob")})
    assert ann != bob and ann.parent == tmp_path / "ann" / ".local" / "state" / "appliance"
    assert oct(ann.parent.stat().st_mode & 0o777) == "0o700"
    assert session_file(tmp_path / "other", {"HOME": str(tmp_path / "ann")}) != ann  # per data directory too
    assert session_file(data, {"XDG_STATE_HOME": str(tmp_path / "xdg")}).parent == tmp_path / "xdg" / "appliance"
    homeless = session_file(data, {"HOME": "/proc/no-home-here"})
    assert homeless == data / "run" / "sessions" / f"uid-{os.getuid()}"


def test_services_build_each_part_once_across_threads_and_close_them_all(tmp_path: Path) -> None:
    from appliance.config import load_settings
    from appliance.services import build_services
    from tests.helpers import ScriptedEngine

    s = build_services(load_settings({"APPLIANCE_DATA_DIR": str(tmp_path / "data")}), engine=ScriptedEngine())
    got: dict[str, list[int]] = {"audit": [], "accounts": [], "knowledge": [], "agent_store": []}
    barrier = threading.Barrier(6)

    def ask() -> None:
        barrier.wait(timeout=30)
        for name in got:
            got[name].append(id(getattr(s, name)()))

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(len(v) == 6 and len(set(v)) == 1 for v in got.values()), got
    kb, audit = s.knowledge(), s.audit()
    s.close()
    with pytest.raises(sqlite3.ProgrammingError):
        kb.catalog.db.execute("SELECT 1")
    with pytest.raises(sqlite3.ProgrammingError):
        audit.conn.execute("SELECT 1")
    s.close()  # again: nothing left to close


def test_a_generation_switch_closes_the_old_knowledge_base_at_the_next_one(tmp_path: Path) -> None:
    from appliance.config import load_settings
    from appliance.services import build_services
    from appliance.updates import generations as gens

    s = build_services(load_settings({"APPLIANCE_DATA_DIR": str(tmp_path / "data")}))
    data = s.settings.data_dir
    first = s.knowledge()
    infos = []
    for _ in range(2):
        number, building = gens.new_building(data)
        gens.copy_knowledge(gens.current_path(data) / "knowledge", building / "knowledge", vectors=True)
        info = gens.GenerationInfo(number, kind="apply", bundle="b", release=number, by="t", parent=number - 1)
        gens.seal(data, building, info)
        gens.switch_to(data, number)
        infos.append(s.knowledge())
        if len(infos) == 1:
            first.catalog.db.execute("SELECT 1")  # still open: a worker may be reading it
    with pytest.raises(sqlite3.ProgrammingError):
        first.catalog.db.execute("SELECT 1")
    infos[0].catalog.db.execute("SELECT 1")
    s.close()


def test_sigkill_holder_leaves_no_lock(tmp_path: Path) -> None:
    p = _holder(tmp_path, 60)
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    with WriterLock(tmp_path).hold("after a crash", wait_s=5):
        pass
