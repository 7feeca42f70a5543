"""Ask: a conversation with streamed answers, their sources, marking, steps and feedback.

Everything that reads or writes the stores (the answer, the source in context, the steps of
a trace, the sessions and their turns, feedback) runs in a worker that posts one of the
messages below; the event handlers only start workers and show what they post.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Input, Label, ListItem, ListView, Static

from appliance.agent.answer import Answer, Citation, marking_of
from appliance.tui.widgets import AppHeader
from appliance.tui.workers import ReportsFailures, in_thread

if TYPE_CHECKING:
    from appliance.agent.store import Turn
    from appliance.knowledge.catalog import ChunkRow

__all__ = ["AskScreen", "Token", "SessionStarted", "Answered", "SourceOpened", "StepsRead", "SessionsListed",
           "SessionResumed", "FeedbackSaved"]

ANSWERING = "answering"  # the workers' names: the notice says "<Name> failed: ..."
OPENING_SOURCE = "opening the source"
READING_STEPS = "reading the steps"
LISTING_SESSIONS = "listing your sessions"
RESUMING = "resuming the session"
SAVING_FEEDBACK = "saving your feedback"
CANCELLING = "cancelling the answer"

OUTCOME = {"answered": "VERIFIED ANSWER", "quoted": "QUOTED FROM THE SOURCES", "specialist": "SPECIALIST RESULT",
           "abstained": "NOT IN THE DOCUMENTS", "cancelled": "CANCELLED"}


@dataclass
class Token(Message):
    """One streamed piece of the answer's draft."""

    text: str
    at: float  # time.perf_counter() when the engine's piece reached the worker


@dataclass
class SessionStarted(Message):
    """The first question of a conversation opened a session; the next questions continue it."""

    session_id: str


@dataclass
class Answered(Message):
    answer: Answer


@dataclass
class SourceOpened(Message):
    """A cited document's chunks (of the cited version), as the user may read it now."""

    citation: Citation
    chunks: list[ChunkRow]


@dataclass
class StepsRead(Message):
    """The trace of an answer: its steps and where the time went."""

    trace: dict[str, Any]


@dataclass
class SessionsListed(Message):
    sessions: list[dict[str, Any]]


@dataclass
class SessionResumed(Message):
    session_id: str
    turns: list[Turn]


@dataclass
class FeedbackSaved(Message):
    verdict: str


def where(c: Citation) -> str:
    return ", ".join(x for x in (f"p. {c.page}" if c.page else "", " > ".join(c.heading)) if x)


class AskScreen(ReportsFailures, Screen[None]):
    AUTO_FOCUS = "#question"
    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+t", "toggle_steps", "Steps"),
        Binding("ctrl+o", "open_citation", "Open source"),
        Binding("ctrl+f", "flag", "Flag answer"),
        Binding("ctrl+s", "sessions", "Sessions"),
        Binding("ctrl+n", "new_session", "New session"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.session_id: str | None = None
        self.busy: threading.Event | None = None
        self.draft: Static | None = None
        self.pieces: list[str] = []
        self.last: Answer | None = None
        self.markings: list[Any] = []
        self.first_token_lag: list[float] = []  # seconds from the engine's first piece to the screen
        self.token_lag: list[float] = []  # the same for every piece

    def compose(self) -> ComposeResult:
        yield AppHeader()
        yield Static("", id="banner")
        with Horizontal(id="ask-body"):
            with Vertical(id="chat"):
                yield VerticalScroll(id="messages")
                yield Input(placeholder="Ask a question about your documents (Enter to send, Esc to cancel)",
                            id="question", max_length=2000)
            with Vertical(id="side"):
                yield Label("Sources", classes="side-title")
                yield ListView(id="citations")
                yield Label("Steps", classes="side-title", id="steps-title")
                yield VerticalScroll(Static("", id="steps-text"), id="steps")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#steps").display = False
        self.query_one("#steps-title").display = False

    def commands(self) -> list[SystemCommand]:
        return [SystemCommand("Toggle steps", "Show the agent's steps for the last answer", self.action_toggle_steps),
                SystemCommand("Open source", "Open the selected source in context", self.action_open_citation),
                SystemCommand("Flag answer", "Mark the last answer right or wrong", self.action_flag),
                SystemCommand("Sessions", "Resume an earlier conversation", self.action_sessions),
                SystemCommand("New session", "Start a new conversation", self.action_new_session)]

    # -- asking -------------------------------------------------------------------------

    @on(Input.Submitted, "#question")
    def _question_submitted(self, event: Input.Submitted) -> None:
        question = event.value.strip()
        if not question:
            return
        if self.busy is not None:
            self.notify("Still answering the last question (Esc cancels it).", severity="warning")
            return
        event.input.value = ""
        messages = self.query_one("#messages", VerticalScroll)
        messages.mount(Static(Text(f"You: {question}"), classes="question"))
        self.draft = Static(Text("\u2026 searching your documents", style="dim"), classes="draft")
        messages.mount(self.draft)
        messages.scroll_end(animate=False)
        self.pieces = []
        self.busy = threading.Event()
        self._ask_worker(question, self.session_id, self.busy)

    @in_thread(ANSWERING, exclusive=True, group="ask")
    def _ask_worker(self, question: str, session_id: str | None, cancel: threading.Event) -> None:
        app: Any = self.app
        principal = app.principal()
        app.engine_ready.wait(timeout=300)
        agent = app.services.agent()
        if session_id is None:
            session_id = agent.store.new_session(principal.name)
            self.post_message(SessionStarted(session_id))
        answer = agent.ask(question, principal, session_id=session_id, cancel=cancel,
                           on_token=lambda piece: self.post_message(Token(piece, time.perf_counter())))
        self.post_message(Answered(answer))

    def worker_failed(self, what: str, error: BaseException) -> None:
        """An answer that failed ends here (the notice says why); the screen is ready for the next question."""
        if what == ANSWERING:
            self.busy = None
            if self.draft is not None:
                self.draft.update(Text("(no answer)", style="dim"))

    def on_token(self, message: Token) -> None:
        if self.draft is None:
            return
        lag = time.perf_counter() - message.at
        self.token_lag.append(lag)
        if not self.pieces:
            self.first_token_lag.append(lag)
        self.pieces.append(message.text)
        self.draft.update(Text("".join(self.pieces), style="dim italic"))
        self.query_one("#messages", VerticalScroll).scroll_end(animate=False)

    def on_session_started(self, message: SessionStarted) -> None:
        self.session_id = message.session_id

    def on_answered(self, message: Answered) -> None:
        a = message.answer
        self.busy = None
        self.last = a
        label = OUTCOME.get(a.outcome, a.outcome.upper())
        body = Text()
        if a.marking:
            body.append(f"[{a.marking}] ", style="reverse")
        body.append(f"{label}\n", style="bold")
        body.append(a.text, style="" if a.outcome != "abstained" else "italic")
        if self.draft is not None:
            self.draft.update(body)
            self.draft.set_classes(f"answer {a.outcome}")
            self.draft = None
        self.query_one("#messages", VerticalScroll).scroll_end(animate=False)
        banner = self.query_one("#banner", Static)
        banner.update(Text(f" {a.marking or 'NO SOURCES CITED'} ", style="reverse bold"))
        cites = self.query_one("#citations", ListView)
        cites.clear()
        for c in a.citations:
            item = ListItem(Static(Text(f"[{c.n}] {c.title}\n    {where(c) or c.doc_id}\n    {c.labels}")))
            item.citation = c  # type: ignore[attr-defined]
            cites.append(item)
        app: Any = self.app
        if a.tokens_per_s:
            app.answer_speeds.append((a.trace_id, a.tokens_per_s))
        self.markings.extend(c.labels for c in a.citations)
        app.session_marking = marking_of(self.markings, app.services.scale)
        app.refresh_header()
        if self.query_one("#steps").display:
            self._load_trace()

    def action_cancel(self) -> None:
        if self.busy is not None:
            self.busy.set()  # the answer's loop stops at its next step
            self._cancel_worker(self.busy)
            self.notify("Cancelling\u2026")

    @in_thread(CANCELLING, group="cancel")
    def _cancel_worker(self, cancel: threading.Event) -> None:
        """The generation in progress stops now (services.agent() may wait for the models still loading)."""
        app: Any = self.app
        agent = app.services.agent()
        if self.busy is cancel:  # still the answer in progress (not the next one's generation)
            agent.cancel(cancel)

    # -- sources, steps, sessions, feedback ---------------------------------------------

    @on(ListView.Selected, "#citations")
    def _citation_selected(self, event: ListView.Selected) -> None:
        self._open_citation(getattr(event.item, "citation", None))

    def action_open_citation(self) -> None:
        cites = self.query_one("#citations", ListView)
        item = cites.highlighted_child
        if item is None and self.last and self.last.citations:
            cites.index = 0
            item = cites.highlighted_child
        self._open_citation(getattr(item, "citation", None) if item else None)

    def _open_citation(self, citation: Citation | None) -> None:
        if citation is not None:
            self._fetch_context(citation)

    @in_thread(OPENING_SOURCE, group="context")
    def _fetch_context(self, citation: Citation) -> None:
        from appliance.app import documents

        app: Any = self.app
        version = int(citation.chunk_id.rsplit("@", 1)[1].split("#", 1)[0])
        # the document as it is now, checked against the user's clearance now, and only the cited version
        _, chunks = documents.show_document(app.services, app.current(), citation.doc_id, version)
        self.post_message(SourceOpened(citation, chunks))

    def on_source_opened(self, message: SourceOpened) -> None:
        from appliance.tui.screens.dialogs import CitationScreen

        self.app.push_screen(CitationScreen(message.citation, message.chunks))

    def action_toggle_steps(self) -> None:
        steps = self.query_one("#steps")
        steps.display = not steps.display
        self.query_one("#steps-title").display = steps.display
        if steps.display:
            self._load_trace()

    def _load_trace(self) -> None:
        if self.last is not None:
            self._trace_worker(self.last.trace_id)

    @in_thread(READING_STEPS, group="trace")
    def _trace_worker(self, trace_id: str) -> None:
        app: Any = self.app
        me = app.current()
        self.post_message(StepsRead(app.services.agent_store().trace(trace_id, user=me.name)))

    def on_steps_read(self, message: StepsRead) -> None:
        import json

        trace = message.trace
        out = Text()
        for s in trace["steps"]:
            out.append(f"{s['n']:>2} {s['name']} {s['ms'] or 0:.0f} ms\n", style="bold")
            if s["decision"] is not None:
                out.append(f"   {json.dumps(s['decision'])[:240]}\n")
        ts = trace["time_split"]
        out.append(f"model {ts['model_ms']:.0f} ms, retrieval {ts['retrieval_ms']:.0f} ms, "
                   f"orchestration {ts['orchestration_ms']:.0f} ms\n", style="dim")
        self.query_one("#steps-text", Static).update(out)

    def action_new_session(self) -> None:
        self.session_id, self.markings = None, []
        self.query_one("#messages", VerticalScroll).remove_children()
        self.query_one("#citations", ListView).clear()
        self.query_one("#banner", Static).update("")
        app: Any = self.app
        app.session_marking = ""
        app.refresh_header()

    def action_sessions(self) -> None:
        self._sessions_worker()

    @in_thread(LISTING_SESSIONS, exclusive=True, group="sessions")
    def _sessions_worker(self) -> None:
        app: Any = self.app
        self.post_message(SessionsListed(app.services.agent_store().sessions(app.current().name)))

    def on_sessions_listed(self, message: SessionsListed) -> None:
        from appliance.tui.screens.dialogs import SessionsScreen

        self.app.push_screen(SessionsScreen(message.sessions), self._resume)

    def _resume(self, session_id: str | None) -> None:
        if session_id:
            self._resume_worker(session_id)

    @in_thread(RESUMING, exclusive=True, group="sessions")
    def _resume_worker(self, session_id: str) -> None:
        app: Any = self.app
        self.post_message(SessionResumed(session_id,
                                         app.services.agent_store().turns(session_id, app.current().name, last=50)))

    def on_session_resumed(self, message: SessionResumed) -> None:
        self.action_new_session()
        self.session_id = message.session_id
        messages = self.query_one("#messages", VerticalScroll)
        for t in message.turns:
            messages.mount(Static(Text(f"You: {t.question}"), classes="question"))
            messages.mount(Static(Text(t.answer), classes="answer"))
        messages.scroll_end(animate=False)

    def action_flag(self) -> None:
        from appliance.tui.screens.dialogs import FlagScreen

        if self.last is None:
            self.notify("No answer to flag yet.", severity="warning")
            return
        self.app.push_screen(FlagScreen(self.last.question), self._flagged)

    def _flagged(self, result: tuple[str, str, str] | None) -> None:
        if result is None or self.last is None:
            return
        verdict, correct, source = result
        self._feedback_worker(self.last.trace_id, verdict, correct or None, source or None)

    @in_thread(SAVING_FEEDBACK, group="feedback")
    def _feedback_worker(self, trace_id: str, verdict: str, correct: str | None, source: str | None) -> None:
        from appliance.app import answers

        app: Any = self.app
        answers.record_feedback(app.services, app.current(), trace_id, verdict, correct, source)
        self.post_message(FeedbackSaved(verdict))

    def on_feedback_saved(self, message: FeedbackSaved) -> None:
        self.notify(f"Thank you: the answer is marked {message.verdict}.")
