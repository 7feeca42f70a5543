"""Run the benchmarks and write ``bench/results/<name>.json``."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench import runtime_bench

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    console = Console()
    RESULTS.mkdir(exist_ok=True)
    results = runtime_bench.run(quick=args.quick, console=console)
    results["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    (RESULTS / "runtime.json").write_text(json.dumps(results, indent=2))
    table = Table(title="runtime benchmarks (ratio = appliance / baseline, same run)")
    for col in ("benchmark", "appliance", "baseline", "ratio", "target", "met"):
        table.add_column(col)
    for row in results["rows"]:
        table.add_row(row["name"], row["appliance"], row["baseline"], f"{row['ratio']:.3f}" if row["ratio"] else "-",
                      row["target"], "yes" if row["met"] else "NO")
    console.print(table)
    console.print(f"written to {RESULTS / 'runtime.json'}")


if __name__ == "__main__":
    main()
