"""Run the benchmarks and write ``bench/results/<suite>.json``.

``python -m bench [build] [runtime] [knowledge] [agent] [audit] ... [--quick]`` (default: every suite).
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).resolve().parent / "results"
SUITES = ("build", "runtime", "knowledge", "agent", "audit", "tui", "updates", "specialists", "evaluation",
          "verification", "rerank", "answers", "concurrency")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("suites", nargs="*", help=f"which suites, of {', '.join(SUITES)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="smaller data, fewer repetitions")
    args = parser.parse_args()
    unknown = [s for s in args.suites if s not in SUITES]
    if unknown:
        parser.error(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    console = Console()
    RESULTS.mkdir(exist_ok=True)
    for suite in args.suites or SUITES:
        module = importlib.import_module(f"bench.{suite}_bench")
        results = module.run(quick=args.quick, console=console)
        results["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        results["quick"] = args.quick
        out = RESULTS / f"{suite}{'-quick' if args.quick else ''}.json"
        out.write_text(json.dumps(results, indent=2))
        table = Table(title=f"{suite} benchmarks (baseline measured in the same run)")
        for col in ("benchmark", "appliance", "baseline", "ratio", "target", "met"):
            table.add_column(col)
        for row in results["rows"]:
            table.add_row(row["name"], row["appliance"], row["baseline"],
                          f"{row['ratio']:.3f}" if row["ratio"] else "-", row["target"], "yes" if row["met"] else "NO")
        console.print(table)
        console.print(f"written to {out}")


if __name__ == "__main__":
    main()
