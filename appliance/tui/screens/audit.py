"""Audit: browse and filter entries, verify the log, export it with a progress bar."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult, SystemCommand
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Button, DataTable, Footer, Input, ProgressBar, Static

from appliance.tui.messages import Done, Failed, Progressed
from appliance.tui.widgets import AppHeader

__all__ = ["AuditScreen"]

SHOWN = 500


class AuditScreen(Screen[None]):
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
        out = [SystemCommand("Verify the audit log", "Re-hash every entry and check every checkpoint", self._verify_log),
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

    @work(thread=True, exclusive=True, group="audit-load")
    def _load_entries(self, needle: str) -> None:
        app: Any = self.app
        try:
            from appliance.access.authz import authorize

            me = authorize(app.current(), "audit.read")
            log = app.services.audit()
            log.record("audit.view", me.name, filter=needle[:200])
            rows = []
            for e in reversed(list(log.entries(max(0, log.tree.size - 20 * SHOWN)))):
                v = e.value()
                if needle and needle not in (v.get("user") or "") and needle not in v.get("kind", ""):
                    continue
                details = {k: x for k, x in v.items() if k not in ("seq", "ts", "kind", "user")}
                rows.append((str(e.seq), v.get("ts", "")[:19], v.get("kind", ""), v.get("user") or "",
                             json.dumps(details)[:160]))
                if len(rows) >= SHOWN:
                    break
            self.post_message(Done("entries", rows))
        except Exception as exc:  # noqa: BLE001
            self.post_message(Failed(exc, "reading the audit log"))

    @on(Button.Pressed, "#verify")
    @work(thread=True, exclusive=True, group="audit-verify")
    def _verify_log(self) -> None:
        app: Any = self.app
        try:
            from appliance import operations

            report = operations.check_audit(app.services, app.current())
            self.post_message(Done("status", f"Log verified: {report['entries']} entries, {report['checkpoints']} "
                                             f"signed checkpoints, root {report['root'][:16]}\u2026"))
        except Exception as exc:  # noqa: BLE001
            self.post_message(Failed(exc, "verifying the log"))

    @on(Button.Pressed, "#export")
    def _export_pressed(self) -> None:
        target = self.query_one("#export-dir", Input).value.strip()
        if not target:
            self.notify("Choose a directory to export to.", severity="warning")
            return
        self._export_worker(Path(target))

    @work(thread=True, exclusive=True, group="audit-export")
    def _export_worker(self, out: Path) -> None:
        app: Any = self.app
        try:
            from appliance import operations

            manifest = operations.export_audit(app.services, app.current(), out,
                                               progress=lambda done, total: self.post_message(Progressed(done, total)))
            self.post_message(Done("status", f"Exported {manifest['entries']} entries to {out}; keep "
                                             f"{out / 'checkpoint'} for the next export."))
        except Exception as exc:  # noqa: BLE001
            self.post_message(Failed(exc, "exporting the log"))

    def on_progressed(self, message: Progressed) -> None:
        bar = self.query_one("#export-progress", ProgressBar)
        bar.display = True
        bar.update(total=message.total, progress=message.done)

    def on_done(self, message: Done) -> None:
        if message.what == "entries":
            table = self.query_one("#entries", DataTable)
            table.clear()
            for row in message.result:
                table.add_row(*row)
        elif message.what == "status":
            self.query_one("#audit-status", Static).update(message.result)
            self.notify(message.result)
            self._load_entries(self.query_one("#audit-filter", Input).value.strip())
