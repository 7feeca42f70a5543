"""Real processes sharing one data directory: nothing lost, nothing revived, every check clean.

The scenarios are in :mod:`tests.cross_process` (the concurrency benchmark runs them too).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from appliance.config import load_settings
from appliance.services import build_services
from tests.cross_process import first_starts, officer_scenario

pytestmark = pytest.mark.processes


def test_ingest_readers_and_apply_at_once_lose_and_revive_nothing(tmp_path: Path) -> None:
    r = officer_scenario(tmp_path)
    assert r["errors"] == [] and r["ingested"] == 50 and r["generation"] == 1
    assert r["lost"] == [], "an ingested document was lost"
    assert r["revived"] == [], "a deleted document was revived"
    assert r["bundle_docs"] == ["canteen.txt", "keys.txt"] and r["serving"] == 1
    assert r["index_problems"] == [] and r["audit_entries"] > 0


def test_two_first_starts_at_once_share_one_key_and_one_schema(tmp_path: Path) -> None:
    outs = first_starts(tmp_path)
    assert all(o["accounts"] == ["root"] for o in outs)
    data = tmp_path / "appliance"
    s = build_services(load_settings({"APPLIANCE_DATA_DIR": str(data)}))
    report = s.audit().check()
    kinds = [e.value()["kind"] for e in s.audit().entries()]
    assert kinds.count("first.start") == 2 and report["entries"] == len(kinds)
    for db in ("access.db", "agent.db"):
        if (data / db).is_file():
            conn = sqlite3.connect(data / db)
            rows = conn.execute("SELECT migration_set, name, count(*) FROM _migrations GROUP BY 1, 2").fetchall()
            conn.close()
            assert rows and all(n == 1 for _, _, n in rows)
    s.close()
