"""Several processes on one data directory (issue 18): what is lost or revived.

The scenario of ``tests/cross_process.py``, 20 times: an officer ingests 50 files one by one
and deletes 10 old ones while three analysts' processes start and search and a bundle apply
copies the serving knowledge and switches. Baseline, in the same run and alternating: the
same processes with the data directory's writer lock switched off (what the appliance did
before it had one). Figures: documents lost and revived over all runs, runs with a
problem, and the time of a run (median), the lock's cost.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from bench.runtime_bench import REPO

WORK = REPO / "bench" / "work" / "concurrency"


def run(quick: bool = False, console: Console | None = None) -> dict[str, Any]:
    from tests.cross_process import officer_scenario

    console = console or Console()
    runs = 4 if quick else 20
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    results: dict[str, list[dict]] = {"lock": [], "no-lock": []}
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("concurrency: runs with and without the writer lock", total=2 * runs)
        for i in range(runs):
            for mode in (("lock", "no-lock") if i % 2 == 0 else ("no-lock", "lock")):
                with tempfile.TemporaryDirectory(dir=WORK) as d:
                    results[mode].append(officer_scenario(Path(d), lock=mode == "lock"))
                progress.advance(task)
    shutil.rmtree(WORK, ignore_errors=True)

    def total(mode: str, key: str) -> int:
        return sum(len(r[key]) for r in results[mode])

    def bad(mode: str) -> int:
        return sum(1 for r in results[mode] if r["lost"] or r["revived"] or r["errors"] or r["index_problems"])

    lock_s = statistics.median(r["seconds"] for r in results["lock"])
    base_s = statistics.median(r["seconds"] for r in results["no-lock"])
    rows = [
        {"name": f"documents lost over {runs} runs (of {50 * runs} ingested)", "appliance": str(total("lock", "lost")),
         "baseline": str(total("no-lock", "lost")), "ratio": None, "target": "0", "met": total("lock", "lost") == 0},
        {"name": f"deleted documents revived over {runs} runs (of {10 * runs})",
         "appliance": str(total("lock", "revived")), "baseline": str(total("no-lock", "revived")), "ratio": None,
         "target": "0", "met": total("lock", "revived") == 0},
        {"name": "runs with anything lost, revived, failed or an index check problem",
         "appliance": f"{bad('lock')}/{runs}", "baseline": f"{bad('no-lock')}/{runs}", "ratio": None, "target": "0",
         "met": bad("lock") == 0},
        {"name": "one run, median s (5 processes; the lock serializes the writers)", "appliance": f"{lock_s:.1f}",
         "baseline": f"{base_s:.1f}", "ratio": lock_s / base_s, "target": "(reported)", "met": True},
    ]
    return {"rows": rows, "runs": results}
