"""Real processes sharing one data directory, for the cross-process tests and the concurrency benchmark.

:func:`officer_scenario`: an officer ingests 50 files one by one and deletes 10 old ones while
three analysts' processes start (each running start-up recovery) and search, and a bundle
apply copies the serving knowledge and switches. :func:`first_starts`: two first starts at
once on a fresh data directory. The processes are real; the engine is the scripted one (the
models are not what is measured here).
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
from tests.helpers import BUILD_PASS, PASS, REPO, ScriptedEngine, bundle_spec

__all__ = ["officer_scenario", "first_starts", "DEADLINE_S"]

DEADLINE_S = 100.0

CHILD = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    role, data, arg, mode = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    if mode == "no-lock":  # the baseline: the same processes with the writer lock switched off
        from appliance.locks import WriterLock
        WriterLock.acquire = lambda self, what, wait_s: True
        WriterLock.release = lambda self: None
        WriterLock.held = lambda self: True
    go = Path(data).parent / "go"
    while not go.exists():  # every process starts at the same moment
        time.sleep(0.01)
    from appliance.access.labels import Labels
    from appliance.config import load_settings
    from appliance.services import build_services
    from appliance.app import documents
    from tests.helpers import ScriptedEngine

    s = build_services(load_settings({{"APPLIANCE_DATA_DIR": data}}), engine=ScriptedEngine())
    out = {{"role": role, "recovered": s.recovered}}
    if role == "ingest":
        olga = s.accounts().get("olga")
        files = sorted(Path(arg).iterdir())
        for i, f in enumerate(files):
            report = documents.ingest(s, olga, [f], Labels("UNCLASSIFIED"), collection="incoming")
            assert report.count("added") == 1, report.as_dict()
            if i % 5 == 0:
                documents.delete_document(s, olga, f"old-{{i // 5}}.txt")
        out["ingested"] = len(files)
    elif role == "reader":
        ann = s.accounts().get("ann")
        found = 0
        for i in range(int(arg)):
            found += len(documents.search(s, ann, f"incoming note number {{i}}", k=5))
        out["found"] = found
    elif role == "apply":
        from appliance.app import updates
        out["generation"] = updates.apply(s, s.accounts().get("olga"), Path(arg))[0].generation
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


def _start(role: str, data: Path, arg: str, mode: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD.format(repo=str(REPO)), role, str(data), arg, mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))


def _finish(procs: list[subprocess.Popen]) -> tuple[list[dict], list[str]]:
    """Each process's JSON result (or None), and the last lines of each failure; every wait has a deadline."""
    deadline = time.monotonic() + DEADLINE_S
    outs: list[dict] = []
    errors: list[str] = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError(f"a process did not finish within {DEADLINE_S} s") from None
        if p.returncode != 0:
            errors.append(stderr.strip().splitlines()[-1][:300] if stderr.strip() else f"exit {p.returncode}")
            outs.append({})
            continue
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    return outs, errors


def officer_scenario(tmp_path: Path, *, lock: bool = True) -> dict:
    """Run the scenario once; returns what was lost, revived, and whether the checks are clean."""
    from appliance.access.labels import Labels
    from appliance.app import documents
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
    documents.ingest(s, olga, sorted(old.iterdir()), Labels("UNCLASSIFIED"), collection="old")
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for i in range(50):
        (incoming / f"note-{i:02d}.txt").write_text(f"Incoming note number {i}: the shift log for day {i} "
                                                   f"records {i * 3} visitors and {i % 7} escorts.\n")
    init_keys(tmp_path / "keys", BUILD_PASS)
    build_bundle(load_spec(bundle_spec(tmp_path, 1)), tmp_path / "keys", BUILD_PASS,
                 tmp_path / "state", tmp_path / "b1")
    trust_root(s.update_site(), olga, tmp_path / "b1" / "metadata" / "1.root.json")
    s.close()

    mode = "lock" if lock else "no-lock"
    started = time.monotonic()
    procs = [_start("ingest", data, str(incoming), mode), _start("apply", data, str(tmp_path / "b1"), mode),
             *(_start("reader", data, "15", mode) for _ in range(3))]
    (tmp_path / "go").touch()
    outs, errors = _finish(procs)
    seconds = time.monotonic() - started

    s = build_services(load_settings({"APPLIANCE_DATA_DIR": str(data)}), engine=ScriptedEngine())
    docs = {d.doc_id for d in s.knowledge().catalog.documents()}
    result = {"ingested": outs[0].get("ingested", 0), "generation": outs[1].get("generation"),
              "lost": sorted({f"note-{i:02d}.txt" for i in range(outs[0].get("ingested", 0))} - docs),
              "revived": sorted(docs & {f"old-{i}.txt" for i in range(10)}),
              "bundle_docs": sorted({"canteen.txt", "keys.txt"} & docs), "serving": s.generation().generation,
              "index_problems": documents.check_index(s, s.accounts().get("root")),
              "audit_entries": s.audit().check()["entries"], "errors": errors, "seconds": seconds}
    s.close()
    return result


def first_starts(tmp_path: Path) -> list[dict]:
    """Two processes start on one fresh data directory at the same moment; their results."""
    data = tmp_path / "appliance"
    procs = [_start("first-start", data, PASS, "lock") for _ in range(2)]
    (tmp_path / "go").touch()
    outs, errors = _finish(procs)
    assert not errors, errors
    return outs
