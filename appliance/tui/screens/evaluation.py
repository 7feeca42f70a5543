"""Evaluation (officers, auditors, admins): the sets, their last run side by side, a new run, reports.

The same as ``appliance evalset list``, ``eval run`` and ``eval report``, over the same
service functions (:func:`appliance.app.evaluation.run_set` checks the role and
audits the run). The set under the cursor shows its last run: per kind of item, each
architecture's figures and the recommendation with its reasons. Run (officers, admins)
evaluates it again with a progress bar; Report writes the Markdown, JSON and charts into
a directory. Work runs in worker threads that only post messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult, SystemCommand
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, DataTable, Footer, Input, Label, ProgressBar, Static

from appliance.evaluation.report import rich_report
from appliance.tui.messages import PhaseProgressed
from appliance.tui.widgets import AppHeader, fill_table
from appliance.tui.workers import ReportsFailures, in_thread

__all__ = ["EvaluationScreen", "SetsListed", "LastRunRead", "EvaluationRan", "ReportWritten"]

RUNNING = "running the evaluation"  # the run's worker name
COLUMNS = (("set", None), ("items", None), ("kinds", None), ("origin", None), ("last run", None))

EMPTY = ("No evaluation sets yet. An officer makes one from analysts' flagged answers "
         "(`appliance evalset from-feedback NAME`) or imports one (`appliance evalset import NAME FILE`).")


@dataclass
class SetsListed(Message):
    """The evaluation sets (name, n_items, kinds, origin, last_run each)."""

    sets: list[dict[str, Any]]


@dataclass
class LastRunRead(Message):
    """The last run's report of the set ``name``, or None if it has not been run."""

    name: str
    report: dict[str, Any] | None


@dataclass
class EvaluationRan(Message):
    report: dict[str, Any]


@dataclass
class ReportWritten(Message):
    """The files written (report.json, report.md, one chart per kind), all in one directory."""

    paths: list[Path]


class EvaluationScreen(ReportsFailures, Screen[None]):
    AUTO_FOCUS = "#eval-sets"

    def __init__(self) -> None:
        super().__init__()
        self.report: dict | None = None
        self.running = False

    def compose(self) -> ComposeResult:
        yield AppHeader()
        yield DataTable(id="eval-sets", cursor_type="row", zebra_stripes=True)
        yield Static(EMPTY, id="eval-empty")
        with Horizontal(id="eval-bar"):
            yield Button("Run", id="eval-run", variant="primary")
            yield Input(placeholder="directory for the report (Markdown, JSON, charts)", id="eval-out")
            yield Button("Write report", id="eval-write")
        with Horizontal(id="eval-progress-row"):
            yield Label("", id="eval-phase")
            yield ProgressBar(id="eval-progress", show_eta=False)
        with VerticalScroll(id="eval-result-box"):
            yield Static("Choose a set to see its last run.", id="eval-result")
        yield Footer()

    def commands(self) -> list[SystemCommand]:
        return [SystemCommand("Run the evaluation", "Every applicable architecture on the chosen set",
                              self._run_chosen),
                SystemCommand("Refresh the evaluation sets", "Read the sets and their last runs again", self._load)]

    def on_mount(self) -> None:
        self.query_one("#eval-sets", DataTable).add_columns(*(label for label, _ in COLUMNS))
        self.query_one("#eval-empty").display = False
        app: Any = self.app
        may_run = app.may("evaluation.manage")
        self.query_one("#eval-run", Button).disabled = not may_run
        if not may_run:
            self.query_one("#eval-run", Button).tooltip = "Runs are for officers and administrators."
        self._load()

    def on_screen_resume(self) -> None:
        if not self.running:
            self._load()

    def _chosen(self) -> str | None:
        table = self.query_one("#eval-sets", DataTable)
        if not table.row_count:
            return None
        return str(table.get_row_at(table.cursor_row)[0])

    # -- workers (they only post messages) ------------------------------------------------

    @in_thread("reading the evaluation sets", exclusive=True, group="eval-sets")
    def _load(self) -> None:
        from appliance.app.evaluation import list_sets

        app: Any = self.app
        self.post_message(SetsListed(list_sets(app.services, app.current())))

    @in_thread("reading the last run", exclusive=True, group="eval-last")
    def _load_last(self, name: str) -> None:
        from appliance.app.evaluation import runs as past_runs

        app: Any = self.app
        runs = past_runs(app.services, app.current(), name, limit=1)
        self.post_message(LastRunRead(name, runs[0]["report"] if runs else None))

    @in_thread(RUNNING, group="eval-run")
    def _run_worker(self, name: str) -> None:
        from appliance.app.evaluation import run_set

        def progress(done: int, total: int) -> None:
            self.post_message(PhaseProgressed("evaluating", done, total))

        app: Any = self.app
        report = run_set(app.services, app.current(), name, progress=progress)
        self.post_message(EvaluationRan(report))

    @in_thread("writing the report", group="eval-write")
    def _write_worker(self, report: dict, out: Path) -> None:
        from appliance.evaluation.report import write_report

        self.post_message(ReportWritten(write_report(report, out)))

    # -- user actions ----------------------------------------------------------------------

    @on(DataTable.RowHighlighted, "#eval-sets")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        name = self._chosen()
        if name and not self.running:
            self._load_last(name)

    @on(Button.Pressed, "#eval-run")
    def _run_pressed(self) -> None:
        self._run_chosen()

    def _run_chosen(self) -> None:
        name = self._chosen()
        if name is None:
            self.notify("Choose a set first.", severity="warning")
            return
        if self.running:
            self.notify("An evaluation is already running.", severity="warning")
            return
        self.running = True
        self.query_one("#eval-run", Button).disabled = True
        self.query_one("#eval-phase", Label).update(f"evaluating {name}")
        self.query_one("#eval-progress", ProgressBar).update(total=None, progress=0)
        self._run_worker(name)

    @on(Button.Pressed, "#eval-write")
    def _write_pressed(self) -> None:
        out = self.query_one("#eval-out", Input).value.strip()
        if self.report is None:
            self.notify("No run to write: choose a set that has been run, or run it.", severity="warning")
        elif not out:
            self.notify("Give a directory for the report.", severity="warning")
        else:
            self._write_worker(self.report, Path(out).expanduser())

    # -- what the workers post (main thread) -------------------------------------------

    def on_phase_progressed(self, message: PhaseProgressed) -> None:
        self.query_one("#eval-phase", Label).update(f"{message.phase} {message.done}/{message.total}")
        if message.total > 0:
            self.query_one("#eval-progress", ProgressBar).update(total=message.total, progress=message.done)

    def on_sets_listed(self, message: SetsListed) -> None:
        table = self.query_one("#eval-sets", DataTable)
        keep = self._chosen()
        rows = [((s["name"], str(s["n_items"]), ", ".join(f"{k} {n}" for k, n in s["kinds"].items()), s["origin"],
                  (s["last_run"] or "never")[:16].replace("T", " ")), s["name"]) for s in message.sets]
        fill_table(table, COLUMNS, rows)
        self.query_one("#eval-empty").display = not message.sets
        if keep and keep in {s["name"] for s in message.sets}:
            table.move_cursor(row=table.get_row_index(keep))

    def on_last_run_read(self, message: LastRunRead) -> None:
        if message.name != self._chosen():
            return
        self.report = message.report
        self.query_one("#eval-result", Static).update(
            rich_report(message.report) if message.report
            else Text(f"{message.name} has not been run yet.", style="dim"))

    def on_evaluation_ran(self, message: EvaluationRan) -> None:
        self._run_ended(f"done in {message.report['seconds']:.0f} s")
        self.report = message.report
        self.query_one("#eval-result", Static).update(rich_report(message.report))
        self._load()

    def on_report_written(self, message: ReportWritten) -> None:
        self.notify("Wrote " + ", ".join(p.name for p in message.paths) + f" to {message.paths[0].parent}")

    def worker_failed(self, what: str, error: BaseException) -> None:
        if what == RUNNING:
            self._run_ended("")

    def _run_ended(self, phase: str) -> None:
        self.running = False
        app: Any = self.app
        self.query_one("#eval-run", Button).disabled = not app.may("evaluation.manage")
        self.query_one("#eval-phase", Label).update(phase)
