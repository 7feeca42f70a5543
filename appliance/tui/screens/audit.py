"""Audit: browse and filter entries, verify the log, export it with a progress bar."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textual import on
from textual.app import ComposeResult, SystemCommand
from textual.containers import Horizontal
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, DataTable, Footer, Input, ProgressBar, Static

from appliance.tui.widgets import AppHeader
from appliance.tui.workers import ReportsFailures, in_thread

__all__ = ["AuditScreen", "EntriesRead", "LogVerified", "LogExported", "ExportProgressed"]

SHOWN = 500


@dataclass
class EntriesRead(Message):
    """The newest entries that match the filter: (seq, time, kind, user, details) each."""

    rows: list[tuple[str, str, str, str, str]]


@dataclass
class LogVerified(Message):
    """The log's check: entries, signed checkpoints and root."""

    report: dict[str, Any]


@dataclass
class LogExported(Message):
    manifest: dict[str, Any]
    out: Path


@dataclass
class ExportProgressed(Message):
    done: int
    total: int | None


class AuditScreen(ReportsFailures, Screen[None]):
    AUTO_FOCUS = "#audit-filter"

    def compose(self) -> ComposeResult:
        yield AppHeader()
        with Horizontal(id="audit-bar"):
            yield Input(placeholder="filter: user or kind (Enter)", id="audit-filter")
            yield Button("Verify log", id="verify")
        with Horizontal(id="export-bar"):
            yield Input(placeholder="export to directory, e.g. /media/usb/audit-2026-11", id="export-dir")
            yield Button("Export", id="export", variant="primary")
        yield ProgressBar(id="export-progress", show_eta=False)
        yield Static("", id="audit-status")
        yield DataTable(id="entries", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def commands(self) -> list[SystemCommand]:
        app: Any = self.app
        out = [SystemCommand("Verify the audit log", "Re-hash every entry and check every checkpoint",
                             self._verify_log),
               SystemCommand("Filter audit entries", "Show one user's or one kind's entries",
                             lambda: self.query_one("#audit-filter", Input).focus())]
        if app.may("audit.export"):
            out.append(SystemCommand("Export the audit log", "Write entries, checkpoint and proofs to a directory",
                                     lambda: self.query_one("#export-dir", Input).focus()))
        return out

    def on_mount(self) -> None:
        app: Any = self.app
        table = self.query_one("#entries", DataTable)
        for label, width in (("#", 8), ("time", 19), ("kind", 18), ("user", 12), ("details", 100)):
            table.add_column(label, width=width)
        if not app.may("audit.export"):  # absent, and the service refuses it anyway
            self.query_one("#export-bar").remove()
            self.query_one("#export-progress").remove()
        else:
            self.query_one("#export-progress").display = False
        if app.may("audit.read"):
            self._load_entries("")
        else:  # admins verify the log; reading it is for officers and auditors
            self.query_one("#entries").remove()
            self.query_one("#audit-filter").remove()

    @on(Input.Submitted, "#audit-filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        self._load_entries(event.value.strip())

    @in_thread("reading the audit log", exclusive=True, group="audit-load")
    def _load_entries(self, needle: str) -> None:
        from appliance.app.audit import view_entries

        app: Any = self.app
        rows = []
        for v in view_entries(app.services, app.current(), needle, limit=SHOWN, scan=20 * SHOWN):
            details = {k: x for k, x in v.items() if k not in ("seq", "ts", "kind", "user")}
            rows.append((str(v.get("seq", "")), v.get("ts", "")[:19], v.get("kind", ""), v.get("user") or "",
                         json.dumps(details)[:160]))
        self.post_message(EntriesRead(rows))

    @on(Button.Pressed, "#verify")
    @in_thread("verifying the log", exclusive=True, group="audit-verify")
    def _verify_log(self) -> None:
        from appliance.app import audit as audit_use

        app: Any = self.app
        self.post_message(LogVerified(audit_use.check_audit(app.services, app.current())))

    @on(Button.Pressed, "#export")
    def _export_pressed(self) -> None:
        target = self.query_one("#export-dir", Input).value.strip()
        if not target:
            self.notify("Choose a directory to export to.", severity="warning")
            return
        self._export_worker(Path(target))

    @in_thread("exporting the log", exclusive=True, group="audit-export")
    def _export_worker(self, out: Path) -> None:
        from appliance.app import audit as audit_use

        def progress(done: int, total: int | None) -> None:
            self.post_message(ExportProgressed(done, total))

        app: Any = self.app
        manifest = audit_use.export_audit(app.services, app.current(), out, progress=progress)
        self.post_message(LogExported(manifest, out))

    def on_export_progressed(self, message: ExportProgressed) -> None:
        bar = self.query_one("#export-progress", ProgressBar)
        bar.display = True
        bar.update(total=message.total, progress=message.done)

    def on_entries_read(self, message: EntriesRead) -> None:
        table = self.query_one("#entries", DataTable)
        table.clear()
        for row in message.rows:
            table.add_row(*row)

    def on_log_verified(self, message: LogVerified) -> None:
        r = message.report
        self._status(f"Log verified: {r['entries']} entries, {r['checkpoints']} signed checkpoints, "
                     f"root {r['root'][:16]}\u2026")

    def on_log_exported(self, message: LogExported) -> None:
        out = message.out
        self._status(f"Exported {message.manifest['entries']} entries to {out}; keep {out / 'checkpoint'} for the "
                     "next export.")

    def _status(self, text: str) -> None:
        self.query_one("#audit-status", Static).update(text)
        self.notify(text)
        if self.query("#audit-filter"):  # absent for admins, who verify but do not read the entries
            self._load_entries(self.query_one("#audit-filter", Input).value.strip())
