"""SIGKILL in the middle of a replace: after restart the state is wholly old or wholly new."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from appliance.access.labels import Labels, Principal
from appliance.knowledge.retrieval import Retriever
from tests.helpers import fake_kb

REPO = Path(__file__).resolve().parent.parent
CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from appliance.access.labels import Labels
    from tests.helpers import fake_kb

    root, doc, point = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    kb = fake_kb(root)
    die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    if point == "before_vectors":
        kb.vectors.upsert = die
    elif point == "after_vectors":
        kb.catalog.swap_in = die
    elif point == "inside_swap":
        original = kb.catalog._remove_rows
        def remove_then_die(old):
            original(old)
            die()
        kb.catalog._remove_rows = remove_then_die
    elif point == "after_swap":
        kb._retire = die
    doc.write_text("Version two says the drives are degaussed. " * 40)
    kb.ingest_files([doc], Labels("UNCLASSIFIED"))
    print("not killed")
""")

WHO = Principal("a", "UNCLASSIFIED")


@pytest.mark.parametrize("point", ["before_vectors", "after_vectors", "inside_swap", "after_swap"])
def test_sigkill_mid_replace_leaves_old_or_new(tmp_path: Path, point: str) -> None:
    root, doc = tmp_path / "kb", tmp_path / "policy.txt"
    doc.write_text("Version one says the drives are wiped. " * 40)
    kb = fake_kb(root)
    kb.ingest_files([doc], Labels("UNCLASSIFIED"))
    del kb
    proc = subprocess.run([sys.executable, "-c", CHILD.format(repo=str(REPO)), str(root), str(doc), point],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert proc.returncode == -9, proc.stdout + proc.stderr
    kb = fake_kb(root)  # a restart only reads: what the dead writer left is seen, not yet touched
    assert kb.check()[0] == "1 unfinished write(s) in the journal"
    with kb.writing("the next writer"):  # recovery runs under the writer lock
        pass
    assert kb.check() == []
    version = kb.catalog.get("policy.txt").version
    expected = 1 if point in ("before_vectors", "after_vectors", "inside_swap") else 2
    assert version == expected
    r = Retriever(kb, kb.settings)
    old = r.retrieve("wiped", WHO, mode="bm25")
    new = r.retrieve("degaussed", WHO, mode="bm25")
    assert bool(old) == (version == 1) and bool(new) == (version == 2)
    hits = r.retrieve("drives version", WHO, k=50, mode="dense")
    assert {h.chunk.version for h in hits} == {version}  # never both
    ids = kb.vectors.ids(Labels("UNCLASSIFIED").partition)
    assert ids == kb.catalog.chunk_ids(Labels("UNCLASSIFIED").partition)


def test_concurrent_reader_sees_old_or_new_never_both_or_neither(tmp_path: Path) -> None:
    import threading

    root, doc = tmp_path / "kb", tmp_path / "rota.txt"
    doc.write_text("Rota version 0. The night shift covers the gate. " * 30)
    writer = fake_kb(root)
    writer.ingest_files([doc], Labels("UNCLASSIFIED"))
    reader = fake_kb(root)  # its own SQLite connection, as another process would have
    retriever = Retriever(reader, reader.settings)
    stop = threading.Event()
    seen: list[set[int]] = []
    errors: list[BaseException] = []

    def read() -> None:
        try:
            modes = ["hybrid", "dense", "bm25"]
            while not stop.is_set():
                modes.append(modes.pop(0))
                hits = retriever.retrieve("night shift gate rota", WHO, k=50, mode=modes[0])
                seen.append({h.chunk.version for h in hits if h.chunk.doc_id == "rota.txt"})
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    t = threading.Thread(target=read)
    t.start()
    for v in range(1, 8):
        doc.write_text(f"Rota version {v}. The night shift covers the gate. " * 30)
        writer.ingest_files([doc], Labels("UNCLASSIFIED"))
    stop.set()
    t.join(timeout=60)
    assert not errors, errors
    assert len(seen) > 5
    assert all(len(versions) == 1 for versions in seen), [s for s in seen if len(s) != 1][:3]
