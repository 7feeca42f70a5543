"""Library: the documents the user may read, and search over them (full text or meaning)."""

from __future__ import annotations

from typing import Any

from textual import on, work
from textual.app import ComposeResult, SystemCommand
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Label, Select

from appliance.tui.messages import Done, Failed
from appliance.tui.widgets import AppHeader

__all__ = ["LibraryScreen"]

MODES = [("Full text and meaning", "hybrid"), ("Full text", "bm25"), ("Meaning (semantic)", "dense")]


class LibraryScreen(Screen[None]):
    AUTO_FOCUS = "#search"

    def compose(self) -> ComposeResult:
        yield AppHeader()
        with Horizontal(id="search-bar"):
            yield Input(placeholder="Search the documents you may read (Enter)", id="search", max_length=4000)
            yield Select(MODES, value="hybrid", allow_blank=False, id="mode")
        yield Label("Documents", classes="side-title", id="docs-title")
        yield DataTable(id="docs", cursor_type="row", zebra_stripes=True)
        yield Label("Results", classes="side-title")
        yield DataTable(id="results", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def commands(self) -> list[SystemCommand]:
        return [SystemCommand("Search the library", "Search the documents you may read",
                              lambda: self.query_one("#search", Input).focus()),
                SystemCommand("Reload the document list", "List the documents you may read again", self._load_docs)]

    def on_mount(self) -> None:
        self.query_one("#docs", DataTable).add_columns("collection", "document", "title", "labels", "version",
                                                       "chunks", "source", "ingested by")
        self.query_one("#results", DataTable).add_columns("#", "title", "labels", "where", "passage")
        self.on_screen_resume()

    def on_screen_resume(self) -> None:
        self._load_docs()

    @work(thread=True, exclusive=True, group="library")
    def _load_docs(self) -> None:
        app: Any = self.app
        try:
            from appliance import operations

            self.post_message(Done("docs", operations.list_documents(app.services, app.current())))
        except Exception as exc:  # noqa: BLE001
            self.post_message(Failed(exc, "listing the documents"))

    @on(Input.Submitted, "#search")
    def _search_submitted(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self._search_worker(event.value.strip(), str(self.query_one("#mode", Select).value))

    @work(thread=True, exclusive=True, group="search")
    def _search_worker(self, query: str, mode: str) -> None:
        app: Any = self.app
        try:
            from appliance import operations

            app.engine_ready.wait(timeout=300)
            hits = operations.search(app.services, app.current(), query, k=20, mode=mode)
            self.post_message(Done("hits", hits))
        except Exception as exc:  # noqa: BLE001
            self.post_message(Failed(exc, "searching"))

    def on_done(self, message: Done) -> None:
        if message.what == "docs":
            table = self.query_one("#docs", DataTable)
            table.clear()
            docs = sorted(message.result, key=lambda d: (d.collection or "", d.title))
            for d in docs:
                table.add_row(d.collection or "-", d.doc_id[:40], d.title[:50], str(d.labels), str(d.version),
                              str(d.n_chunks), d.source_name[:30], d.ingested_by or "")
            collections = sorted({d.collection or "-" for d in docs})
            self.query_one("#docs-title", Label).update(f"Documents you may read: {len(docs)} in "
                                                        f"{len(collections)} collection(s): {', '.join(collections)}")
        elif message.what == "hits":
            table = self.query_one("#results", DataTable)
            table.clear()
            for i, h in enumerate(message.result, 1):
                c = h.chunk
                place = ", ".join(x for x in (f"p. {c.page}" if c.page else "", " > ".join(c.heading)) if x)
                table.add_row(str(i), h.document.title[:40], str(h.labels), place[:30],
                              " ".join(c.text.split())[:120])
            if not message.result:
                self.notify("No readable document matches.")
