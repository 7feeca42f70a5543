"""Real processes sharing one data directory: nothing lost, nothing revived, every check clean.

Scenario one: an officer ingests 50 files one by one and deletes 10 old ones, while three
analysts' processes start (each running start-up recovery) and search, and a bundle apply
copies the serving knowledge and switches. Scenario two: two first starts at once on a
fresh data directory. The embedder is the hashed fake at the engine seam (the processes
are real; the models are not what is tested here).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from appliance.config import load_settings
from appliance.services import build_services
from tests.helpers import BUILD_PASS, PASS, ScriptedEngine, bundle_spec

REPO = Path(__file__).resolve().parent.parent
DEADLINE_S = 100.0

CHILD = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    role, data, arg = sys.argv[1], sys.argv[2], sys.argv[3]
    go = Path(data).parent / "go"
    while not go.exists():  # every process starts at the same moment
        time.sleep(0.01)
    from appliance.access.labels import Labels
    from appliance.config import load_settings
    from appliance.services import build_services
    from appliance import operations
    from tests.helpers import ScriptedEngine

    s = build_services(load_settings({{"APPLIANCE_DATA_DIR": data}}), engine=ScriptedEngine())
    out = {{"role": role, "recovered": s.recovered}}
    if role == "ingest":
        olga = s.accounts().get("olga")
        files = sorted(Path(arg).iterdir())
        for i, f in enumerate(files):
            report = operations.ingest(s, olga, [f], Labels("UNCLASSIFIED"), collection="incoming")
            assert report.count("added") == 1, report.as_dict()
            if i % 5 == 0:
                operations.delete_document(s, olga, f"old-{{i // 5}}.txt")
        out["ingested"] = len(files)
    elif role == "reader":
        ann = s.accounts().get("ann")
        found = 0
        for i in range(int(arg)):
            found += len(operations.search(s, ann, f"incoming note number {{i}}", k=5))
        out["found"] = found
    elif role == "apply":
        from appliance.updates.apply import apply_bundle
        out["generation"] = apply_bundle(s, s.accounts().get("olga"), Path(arg)).generation
    elif role == "first-start":
        s.audit().record("first.start", None, pid=os.getpid())
        if not any(a.name == "root" for a in s.accounts().list()):
            try:
                s.accounts().add("root", role="admin", level="TOP SECRET", passphrase=arg, by=None)
            except Exception as exc:  # the other first start made it a moment before
                out["refused"] = type(exc).__name__
        out["accounts"] = [a.name for a in s.accounts().list()]
    s.close()
    print(json.dumps(out))
""")


def _start(role: str, data: Path, arg: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD.format(repo=str(REPO)), role, str(data), arg],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))


def _finish(procs: list[subprocess.Popen]) -> list[dict]:
    deadline = time.monotonic() + DEADLINE_S
    outs = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError(f"a process did not finish within {DEADLINE_S} s") from None
        assert p.returncode == 0, stderr[-3000:]
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    return outs


def test_ingest_readers_and_apply_at_once_lose_and_revive_nothing(tmp_path: Path) -> None:
    from appliance import operations
    from appliance.access.labels import Labels
    from appliance.updates.build import build_bundle, load_spec
    from appliance.updates.check import trust_root
    from appliance.updates.keys import init_keys

    data = tmp_path / "appliance"
    s = build_services(load_settings({"APPLIANCE_DATA_DIR": str(data)}), engine=ScriptedEngine())
    s.accounts().add("root", role="admin", level="TOP SECRET", passphrase=PASS, by=None)
    root = s.accounts().get("root")
    s.accounts().add("olga", role="officer", level="SECRET", compartments=["CRYPTO"], passphrase=PASS,
                     by=root)
    s.accounts().add("ann", role="analyst", level="SECRET", passphrase=PASS, by=root)
    olga = s.accounts().get("olga")
    old = tmp_path / "old"
    old.mkdir()
    for i in range(10):
        (old / f"old-{i}.txt").write_text(f"Old circular {i}: superseded guidance on visitor badges, item {i}.\n")
    operations.ingest(s, olga, sorted(old.iterdir()), Labels("UNCLASSIFIED"), collection="old")
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for i in range(50):
        (incoming / f"note-{i:02d}.txt").write_text(f"Incoming note number {i}: the shift log for day {i} "
                                                   f"records {i * 3} visitors and {i % 7} escorts.\n")
    init_keys(tmp_path / "keys", BUILD_PASS)
    build_bundle(load_spec(bundle_spec(tmp_path, 1)), tmp_path / "keys", BUILD_PASS,
                 tmp_path / "state", tmp_path / "b1")
    trust_root(s, olga, tmp_path / "b1" / "metadata" / "1.root.json")
    s.close()

    procs = [_start("ingest", data, str(incoming)), _start("apply", data, str(tmp_path / "b1")),
             *(_start("reader", data, "15") for _ in range(3))]
    (tmp_path / "go").touch()
    outs = _finish(procs)
    assert outs[0]["ingested"] == 50 and outs[1]["generation"] == 1

    s = build_services(load_settings({"APPLIANCE_DATA_DIR": str(data)}), engine=ScriptedEngine())
    docs = {d.doc_id for d in s.knowledge().catalog.documents()}
    assert {f"note-{i:02d}.txt" for i in range(50)} <= docs, "an ingested document was lost"
    assert not docs & {f"old-{i}.txt" for i in range(10)}, "a deleted document was revived"
    assert {"canteen.txt", "keys.txt"} <= docs  # the bundle's
    assert s.generation().generation == 1
    assert operations.check_index(s, s.accounts().get("root")) == []
    assert s.audit().check()["entries"] > 0
    s.close()


def test_two_first_starts_at_once_share_one_key_and_one_schema(tmp_path: Path) -> None:
    data = tmp_path / "appliance"
    procs = [_start("first-start", data, PASS) for _ in range(2)]
    (tmp_path / "go").touch()
    outs = _finish(procs)
    assert all(o["accounts"] == ["root"] for o in outs)
    s = build_services(load_settings({"APPLIANCE_DATA_DIR": str(data)}))
    report = s.audit().check()
    kinds = [e.value()["kind"] for e in s.audit().entries()]
    assert kinds.count("first.start") == 2 and report["entries"] == len(kinds)
    import sqlite3

    for db in ("access.db", "agent.db"):
        if (data / db).is_file():
            conn = sqlite3.connect(data / db)
            rows = conn.execute("SELECT migration_set, name, count(*) FROM _migrations GROUP BY 1, 2").fetchall()
            conn.close()
            assert rows and all(n == 1 for _, _, n in rows)
    s.close()
