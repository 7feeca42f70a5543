"""Modal dialogs: a source in context, the session list, feedback on an answer, a confirmation."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, ListItem, ListView, Static

from appliance.agent.loop import Citation

__all__ = ["CitationScreen", "SessionsScreen", "FlagScreen", "ConfirmScreen"]


class CitationScreen(ModalScreen[None]):
    """The cited passage, highlighted, between the passages before and after it in its document."""

    BINDINGS = [Binding("escape", "dismiss", "Close")]

    def __init__(self, citation: Citation, chunks: list) -> None:
        super().__init__()
        self.citation = citation
        self.chunks = chunks

    def compose(self) -> ComposeResult:
        c = self.citation
        place = ", ".join(x for x in (f"p. {c.page}" if c.page else "", " > ".join(c.heading)) if x)
        text = Text()
        at = next((i for i, ch in enumerate(self.chunks) if ch.chunk_id == c.chunk_id), None)
        if at is None:  # the document has a newer version: show the passage as cited
            text.append(c.text, style="reverse")
        else:
            for ch in self.chunks[max(0, at - 1): at + 2]:
                text.append(ch.text + "\n\n", style="reverse" if ch.chunk_id == c.chunk_id else "dim")
        with Vertical(id="citation-box", classes="dialog"):
            yield Label(Text(f"[{c.n}] {c.title}", style="bold"))
            dash = " \u2014 "
            yield Label(f"{c.doc_id}{dash + place if place else ''}{dash}{c.labels}{dash}chars {c.start}-{c.end}")
            yield VerticalScroll(Static(text, id="citation-text"))
            yield Button("Close (Esc)", id="close")

    @on(Button.Pressed, "#close")
    def _close_pressed(self) -> None:
        self.dismiss(None)


class SessionsScreen(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "Close")]

    def __init__(self, sessions: list[dict]) -> None:
        super().__init__()
        self.sessions = sessions

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="sessions-box"):
            yield Label("Resume a conversation (Enter), Esc to close")
            items = []
            for s in self.sessions:
                item = ListItem(Static(f"{s['created_at'][:16]}  {s['turns']} turn(s)  {s['first_question'] or ''}"))
                item.session_id = s["id"]  # type: ignore[attr-defined]
                items.append(item)
            yield ListView(*items, id="sessions-list")
            if not self.sessions:
                yield Static("No earlier conversations.")

    @on(ListView.Selected)
    def _session_picked(self, event: ListView.Selected) -> None:
        self.dismiss(getattr(event.item, "session_id", None))


class FlagScreen(ModalScreen[tuple[str, str, str] | None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "Close")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="flag-box"):
            yield Label(Text(f"Was the answer to \u201c{self.question[:120]}\u201d right?", style="bold"))
            yield Input(placeholder="the correct answer (optional)", id="correct", max_length=4000)
            yield Input(placeholder="the document that holds it (optional: its id)", id="source", max_length=500)
            with Horizontal():
                yield Button("Right", variant="success", id="right")
                yield Button("Wrong", variant="error", id="wrong")
                yield Button("Cancel", id="cancel")

    @on(Button.Pressed)
    def _button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id in ("right", "wrong"):
            self.dismiss((event.button.id, self.query_one("#correct", Input).value.strip(),
                          self.query_one("#source", Input).value.strip()))
        else:
            self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """Ask before a step that changes what the appliance serves: True only for the confirm button."""

    BINDINGS = [Binding("escape", "dismiss(False)", "Cancel")]
    AUTO_FOCUS = "#cancel"  # Enter on an unread dialog changes nothing

    def __init__(self, title: str, body: str | Text, confirm: str) -> None:
        super().__init__()
        self.title_text = title
        self.body = body
        self.confirm = confirm

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="confirm-box"):
            yield Label(Text(self.title_text, style="bold"))
            yield Static(self.body, id="confirm-text")
            with Horizontal(id="confirm-buttons"):
                yield Button(self.confirm, variant="warning", id="confirm")
                yield Button("Cancel (Esc)", id="cancel")

    @on(Button.Pressed)
    def _button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "confirm")
