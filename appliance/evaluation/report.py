"""An architecture comparison as Markdown, JSON and PNG charts (for the officer's report).

Charts are drawn with matplotlib's Agg backend (files only, no display, no fonts fetched):
per kind of item, the primary metric and the p50 latency of each architecture side by side.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["markdown", "write_report", "ARCH_NAMES", "rich_report"]

ARCH_NAMES = {"single_shot": "single-shot", "agentic": "agentic RAG", "specialist": "specialist",
              "hybrid": "hybrid"}
KIND_NAMES = {"qa": "questions", "claim": "claims", "classify": "classification", "extract": "extraction"}
_COLUMNS = {"qa": ("expected_fact_rate", "token_f1", "source_recall", "citation_precision", "groundedness",
                   "answered_rate", "abstention_rate"),  # the rest (exact match, quoted rate) in report.json
            "claim": ("label_accuracy", "evidence_recall", "citation_precision", "groundedness", "abstention_rate"),
            "classify": ("accuracy", "macro_f1", "abstention_rate"),
            "extract": ("f1", "precision", "recall")}


def arch_name(arch: str) -> str:
    """``agentic`` -> ``agentic RAG``; ``agentic@gemma3-270m`` -> ``agentic RAG, gemma3-270m``."""
    base, _, generator = arch.partition("@")
    name = ARCH_NAMES.get(base, base)
    return f"{name}, {generator}" if generator else name


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table_rows(kind: str, section: dict) -> tuple[list[str], list[list[str]]]:
    """Column names and rows of one kind's table (also what the TUI shows)."""
    cols = ["architecture", *_COLUMNS.get(kind, ()), "p50 ms", "p95 ms", "tokens"]
    rows = []
    for arch, m in section["architectures"].items():
        name = arch_name(arch)
        if "skipped" in m:
            rows.append([name, *(["-"] * (len(cols) - 2)), f"not run: {m['skipped']}"])
            continue
        rows.append([name, *(_fmt(m.get(c)) for c in _COLUMNS.get(kind, ())), _fmt(m.get("p50_ms"), 0),
                     _fmt(m.get("p95_ms"), 0), _fmt(m.get("tokens_mean"), 1)
                     + (f" ({m['errors']} failed)" if m.get("errors") else "")])
    return cols, rows


def rich_report(report: dict) -> Any:
    """The report as rich renderables: a line about the run, then per kind its table and recommendation
    (the CLI prints it, the TUI's Evaluation screen shows it)."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts: list[Any] = [Text(f"{report['set']}: {report['items']} items, generation {report.get('generation')}, "
                             f"{report.get('seconds', 0.0):.0f} s" + (f", run {report['at']}" if report.get("at")
                                                                      else ""), style="bold")]
    for kind, section in report["by_kind"].items():
        cols, rows = table_rows(kind, section)
        table = Table(*cols, title=f"{KIND_NAMES.get(kind, kind)} ({section['items']} items)", box=box.SIMPLE,
                      title_justify="left")
        for row in rows:
            table.add_row(*row)
        rec = section["recommendation"]
        arch = rec.get("architecture")
        line = Text("  recommended: ")
        line.append(arch_name(arch) if arch else "none", style="bold")
        parts += [table, line, *(Text(f"    {r}") for r in rec.get("reasons", []))]
    return Group(*parts)


def markdown(report: dict) -> str:
    lines = [f"# Evaluation of `{report['set']}`", ""]
    meta = [f"{report['items']} items", f"set digest `{report['digest'][:16]}`"]
    if report.get("generation") is not None:
        meta.append(f"generation {report['generation']}")
    if report.get("at"):
        meta.append(f"run {report['at']}")
    meta.append(f"{report.get('seconds', 0.0):.0f} s")
    lines += [", ".join(meta) + ".", ""]
    for kind, section in report["by_kind"].items():
        lines += [f"## {KIND_NAMES.get(kind, kind).capitalize()} ({section['items']} items)", ""]
        cols, rows = table_rows(kind, section)
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|" + "---|" * len(cols))
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        rec = section["recommendation"]
        lines.append("")
        if rec.get("architecture"):
            lines.append(f"**Recommended: {arch_name(rec['architecture'])}.**")
        else:
            lines.append("**No recommendation.**")
        lines += [f"- {r}" for r in rec.get("reasons", [])]
        if section.get("few_shot_examples"):
            lines.append(f"- the single-shot prompt holds {section['few_shot_examples']} examples from the set, "
                         "left out of every architecture's items")
        lines.append("")
    return "\n".join(lines)


def _charts(report: dict, out: Path) -> list[Path]:
    import os
    import tempfile

    # matplotlib keeps a font cache; never in the home directory
    os.environ.setdefault("MPLCONFIGDIR", str(Path(tempfile.gettempdir()) / "appliance-matplotlib"))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for kind, section in report["by_kind"].items():
        ran = {a: m for a, m in section["architectures"].items() if "skipped" not in m}
        if not ran:
            continue
        metric = section["primary"]
        names = [arch_name(a) for a in ran]
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
        left.bar(names, [ran[a].get(metric) or 0.0 for a in ran], color="#4c72b0")
        left.set_ylim(0, 1)
        left.set_title(f"{KIND_NAMES.get(kind, kind)}: {metric}")
        right.bar(names, [ran[a].get("p50_ms") or 0.0 for a in ran], color="#dd8452")
        right.set_title("p50 latency (ms)")
        for ax in (left, right):
            ax.tick_params(axis="x", labelrotation=15)
        fig.suptitle(f"{report['set']} ({section['items']} items)")
        fig.tight_layout()
        path = out / f"{kind}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def write_report(report: dict, out: Path) -> list[Path]:
    """report.json, report.md and one PNG per kind into ``out`` (created); the files written."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in (("report.json", json.dumps(report, indent=2, ensure_ascii=False)),
                       ("report.md", markdown(report))):
        tmp = out / (name + ".part")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out / name)
        paths.append(out / name)
    return paths + _charts(report, out)
