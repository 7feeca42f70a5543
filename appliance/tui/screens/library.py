"""Library: the documents the user may read, and search over them (full text or meaning)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from textual import on
from textual.app import ComposeResult, SystemCommand
from textual.containers import Horizontal
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Label, Select

from appliance.tui.widgets import AppHeader
from appliance.tui.workers import ReportsFailures, in_thread

if TYPE_CHECKING:
    from appliance.knowledge.catalog import DocumentRow
    from appliance.knowledge.retrieval import Hit

__all__ = ["LibraryScreen", "DocumentsListed", "SearchFound"]

MODES = [("Full text and meaning", "hybrid"), ("Full text", "bm25"), ("Meaning (semantic)", "dense")]


@dataclass
class DocumentsListed(Message):
    """The documents the user may read."""

    docs: list[DocumentRow]


@dataclass
class SearchFound(Message):
    """A search's hits, best first (possibly none)."""

    hits: list[Hit]


class LibraryScreen(ReportsFailures, Screen[None]):
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

    @in_thread("listing the documents", exclusive=True, group="library")
    def _load_docs(self) -> None:
        from appliance.app import documents

        app: Any = self.app
        self.post_message(DocumentsListed(documents.list_documents(app.services, app.current())))

    @on(Input.Submitted, "#search")
    def _search_submitted(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self._search_worker(event.value.strip(), str(self.query_one("#mode", Select).value))

    @in_thread("searching", exclusive=True, group="search")
    def _search_worker(self, query: str, mode: str) -> None:
        from appliance.app import documents

        app: Any = self.app
        app.engine_ready.wait(timeout=300)
        self.post_message(SearchFound(documents.search(app.services, app.current(), query, k=20, mode=mode)))

    def on_documents_listed(self, message: DocumentsListed) -> None:
        table = self.query_one("#docs", DataTable)
        table.clear()
        docs = sorted(message.docs, key=lambda d: (d.collection or "", d.title))
        for d in docs:
            table.add_row(d.collection or "-", d.doc_id[:40], d.title[:50], str(d.labels), str(d.version),
                          str(d.n_chunks), d.source_name[:30], d.ingested_by or "")
        collections = sorted({d.collection or "-" for d in docs})
        self.query_one("#docs-title", Label).update(f"Documents you may read: {len(docs)} in "
                                                    f"{len(collections)} collection(s): {', '.join(collections)}")

    def on_search_found(self, message: SearchFound) -> None:
        table = self.query_one("#results", DataTable)
        table.clear()
        for i, h in enumerate(message.hits, 1):
            c = h.chunk
            place = ", ".join(x for x in (f"p. {c.page}" if c.page else "", " > ".join(c.heading)) if x)
            table.add_row(str(i), h.document.title[:40], str(h.labels), place[:30], " ".join(c.text.split())[:120])
        if not message.hits:
            self.notify("No readable document matches.")
