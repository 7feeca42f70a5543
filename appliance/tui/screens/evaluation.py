"""Evaluation (officers, auditors, admins): the sets, their last run side by side, a new run, reports.

The same as ``appliance evalset list``, ``eval run`` and ``eval report``, over the same
service functions (:func:`appliance.evaluation.operations.run_set` checks the role and
audits the run). The set under the cursor shows its last run: per kind of item, each
architecture's figures and the recommendation with its reasons. Run (officers, admins)
evaluates it again with a progress bar; Report writes the Markdown, JSON and charts into
a directory. Work runs in worker threads that only post messages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult, SystemCommand
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, DataTable, Footer, Input, Label, ProgressBar, Static

from appliance.evaluation.report import rich_report
from appliance.tui.messages import Done, Failed, PhaseProgressed
from appliance.tui.widgets import AppHeader

__all__ = ["EvaluationScreen"]

EMPTY = ("No evaluation sets yet. An officer makes one from analysts' flagged answers "
         "(`appliance evalset from-feedback NAME`) or imports one (`appliance evalset import NAME FILE`).")


class EvaluationScreen(Screen[None]):
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
        self.query_one("#eval-sets", DataTable).add_columns("set", "items", "kinds", "origin", "last run")
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

    @work(thread=True, exclusive=True, group="eval-sets")
    def _load(self) -> None:
        app: Any = self.app
        try:
            from appliance.access.authz import authorize

            authorize(app.services.accounts().get(app.current().name), "evaluation.read")
            self.post_message(Done("eval-sets", app.services.eval_store().list()))
        except Exception as exc:  # noqa: BLE001
            self.post_message(Failed(exc, "reading the evaluation sets"))

    @work(thread=True, exclusive=True, group="eval-last")
    def _load_last(self, name: str) -> None:
        app: Any = self.app
        try:
            runs = app.services.eval_store().runs(name, limit=1)
            self.post_message(Done("eval-last", (name, runs[0]["report"] if runs else None)))
        except Exception as exc:  # noqa: BLE001
            self.post_message(Failed(exc, "reading the last run"))

    @work(thread=True, group="eval-run")
    def _run_worker(self, name: str) -> None:
        app: Any = self.app
        try:
            from appliance.evaluation.operations import run_set

            report = run_set(app.services, app.current(), name,
                             progress=lambda done, total: self.post_message(PhaseProgressed("evaluating", done,
                                                                                            total)))
            self.post_message(Done("eval-ran", report))
        except Exception as exc:  # noqa: BLE001
            self.post_message(Failed(exc, "running the evaluation"))

    @work(thread=True, group="eval-write")
    def _write_worker(self, report: dict, out: Path) -> None:
        try:
            from appliance.evaluation.report import write_report

            self.post_message(Done("eval-written", write_report(report, out)))
        except Exception as exc:  # noqa: BLE001
            self.post_message(Failed(exc, "writing the report"))

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

    def on_done(self, message: Done) -> None:
        result = self.query_one("#eval-result", Static)
        if message.what == "eval-sets":
            table = self.query_one("#eval-sets", DataTable)
            keep = self._chosen()
            table.clear()
            for s in message.result:
                table.add_row(s["name"], str(s["n_items"]), ", ".join(f"{k} {n}" for k, n in s["kinds"].items()),
                              s["origin"], (s["last_run"] or "never")[:16].replace("T", " "), key=s["name"])
            self.query_one("#eval-empty").display = not message.result
            if keep and keep in {s["name"] for s in message.result}:
                table.move_cursor(row=table.get_row_index(keep))
        elif message.what == "eval-last":
            name, report = message.result
            if name != self._chosen():
                return
            self.report = report
            result.update(rich_report(report) if report else Text(f"{name} has not been run yet.", style="dim"))
        elif message.what == "eval-ran":
            self.running = False
            app: Any = self.app
            self.query_one("#eval-run", Button).disabled = not app.may("evaluation.manage")
            self.query_one("#eval-phase", Label).update(f"done in {message.result['seconds']:.0f} s")
            self.report = message.result
            result.update(rich_report(message.result))
            self._load()
        elif message.what == "eval-written":
            self.notify("Wrote " + ", ".join(p.name for p in message.result) + f" to {message.result[0].parent}")

    def on_failed(self, message: Failed) -> None:
        if message.what == "running the evaluation":
            self.running = False
            app: Any = self.app
            self.query_one("#eval-run", Button).disabled = not app.may("evaluation.manage")
            self.query_one("#eval-phase", Label).update("")
