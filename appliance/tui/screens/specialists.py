"""Specialists (every role): run the fine-tuned classifiers and extractors installed on the appliance.

The same as ``appliance specialists``, ``classify`` and ``extract``, over the same service
function (:func:`appliance.app.specialists.run_specialist`), which checks the role and audits
the call. The table lists the installed specialists (from their adapters' metadata); the
one under the cursor runs on the text (Enter or Run) in a worker thread that only posts
messages. A classification shows the label and its confidence, or the abstention with
the best guess; an extraction shows the text with every entity highlighted and tagged
with its type (never by colour alone), the entities with their offsets, and what was
dropped because the text does not contain it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult, SystemCommand
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, DataTable, Footer, Input, Label, Static

from appliance.specialists.serve import MAX_INPUT_CHARS
from appliance.tui.widgets import AppHeader, fill_table
from appliance.tui.workers import ReportsFailures, in_thread

if TYPE_CHECKING:
    from appliance.specialists.serve import Classification, Extraction, SpecialistInfo

__all__ = ["SpecialistsScreen", "SpecialistsListed", "SpecialistRan", "classification_text", "extraction_text",
           "latency"]

WHICH_WIDTH = 34  # the table's column of labels or entity types (all are counted in the column before)
SHOWN_CHOSEN = 12  # labels or types named under the table for the chosen specialist
SHOWN_TEXT = 160  # characters of a classified text repeated above its result
EMPTY = ("No specialists are installed. Specialists arrive in signed bundles; an officer applies them on the "
         "Updates screen.")
COLUMNS = (("name", None), ("task", 8), ("labels/types", 12), ("which", WHICH_WIDTH), ("metrics", None))
RUNNING = "running the specialist"  # the run's worker name: the notice says "Running the specialist failed"
# One style per entity type (in the order of the adapter's types); each entity also carries its type as text.
TYPE_STYLES = ("bold black on yellow", "bold black on cyan", "bold black on magenta", "bold black on green",
               "bold white on blue", "bold white on red", "bold black on bright_yellow", "bold black on bright_cyan")


def latency(seconds: float) -> str:
    """A run's time as shown (a seam: the snapshot test pins it)."""
    return f"{seconds * 1000:,.0f} ms"


def type_style(types: tuple[str, ...] | list[str], kind: str) -> str:
    at = list(types).index(kind) if kind in types else len(types)
    return TYPE_STYLES[at % len(TYPE_STYLES)]


def metrics_text(metrics: dict) -> str:
    """The figures an adapter was trained to, as numbers (nested or other values are left out)."""
    parts = []
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        parts.append(f"{key} {value:.3f}" if isinstance(value, float) else f"{key} {value}")
    return ", ".join(parts)


def labels_text(labels: tuple[str, ...], width: int = WHICH_WIDTH) -> str:
    """As many of the labels (or types) as fit ``width``, then how many more there are."""
    if len(", ".join(labels)) <= width:
        return ", ".join(labels)
    shown: list[str] = []
    for label in labels:
        tail = f", \u2026 +{len(labels) - len(shown) - 1}"
        if len(", ".join([*shown, label]) + tail) > width:
            break
        shown.append(label)
    return ", ".join(shown) + (", " if shown else "") + f"\u2026 +{len(labels) - len(shown)}"


def what_runs(info: Any) -> str:  # SpecialistInfo
    more = len(info.labels) - SHOWN_CHOSEN
    names = ", ".join(info.labels[:SHOWN_CHOSEN]) + (f" \u2026 and {more} more" if more > 0 else "")
    if info.task == "classify":
        return f"{info.name} classifies a text into one of {len(info.labels)} labels: {names}"
    return f"{info.name} extracts entities of {len(info.labels)} types: {names}"


def _clip(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def classification_text(text: str, c: Any) -> Text:  # appliance.specialists.serve.Classification
    out = Text()
    if c.label is not None:
        out.append(" LABEL ", style="bold reverse")
        out.append(f" {c.label}", style="bold")
        out.append(f"  confidence {c.confidence:.2f}\n")
    else:
        out.append(" ABSTAINED ", style="bold reverse")
        out.append(f" abstained \u2014 best guess {c.best} ({c.confidence:.2f})", style="bold")
        out.append(f"  under the threshold {c.threshold:.2f}\n")
    out.append(f"{c.adapter} (classify) in {latency(c.seconds)}\n", style="dim")
    out.append(f"\u201c{_clip(text, SHOWN_TEXT)}\u201d", style="italic")
    return out


def extraction_text(text: str, e: Any, types: tuple[str, ...]) -> Text:  # appliance.specialists.serve.Extraction
    """The text with each entity highlighted and tagged with its type, a legend, the entities and what was dropped."""
    out = Text()
    out.append(" ENTITIES ", style="bold reverse")
    out.append(f" {len(e.spans)} found", style="bold")
    out.append(f"  {e.adapter} (extract) in {latency(e.seconds)}\n", style="dim")
    kinds = list(types) + sorted({s.kind for s in e.spans} - set(types))
    out.append("legend: ", style="dim")
    for i, kind in enumerate(kinds):
        out.append(f" {kind} ", style=type_style(kinds, kind))
        out.append(" " if i < len(kinds) - 1 else "\n")
    out.append("\n")
    at = 0
    for s in sorted(e.spans, key=lambda s: (s.start, -s.end)):
        if s.start < at:  # overlaps the one before: listed below, not highlighted twice
            continue
        out.append(text[at:s.start])
        out.append(text[s.start:s.end], style=type_style(kinds, s.kind))
        out.append(f"[{s.kind}]", style="dim italic")
        at = s.end
    out.append(text[at:] + "\n\n")
    if e.spans:
        width = max(len(s.kind) for s in e.spans)
        for s in e.spans:
            out.append(f"{s.start:>5}\u2013{s.end:<5} ")
            out.append(f"{s.kind:<{width}}", style=type_style(kinds, s.kind))
            out.append(f"  {s.text}\n")
    else:
        out.append("No entities in this text.\n", style="italic")
    if e.dropped:
        items = ", ".join(f"\u201c{_clip(str(d.get('text', '')), 40)}\u201d [{d.get('type', '')}]" for d in e.dropped)
        out.append(f"Dropped {len(e.dropped)} item(s) the text does not contain, or of an unknown type: {items}\n",
                   style="dim")
    return out


@dataclass
class SpecialistsListed(Message):
    infos: list[SpecialistInfo]


@dataclass
class SpecialistRan(Message):
    """A run's result, with what it ran on (the text, and the adapter's labels or entity types)."""

    task: str
    text: str
    result: Classification | Extraction
    types: tuple[str, ...]


class SpecialistsScreen(ReportsFailures, Screen[None]):
    AUTO_FOCUS = "#specialist-text"

    def __init__(self) -> None:
        super().__init__()
        self.infos: dict[str, Any] = {}  # name -> SpecialistInfo, as last listed
        self.chosen: str | None = None  # the specialist under the table's cursor
        self.running: str | None = None  # the specialist whose run is in progress
        self.last: Any = None  # the last Classification or Extraction shown

    def compose(self) -> ComposeResult:
        yield AppHeader()
        yield Label("Installed specialists", classes="side-title", id="specialists-title")
        yield DataTable(id="specialists", cursor_type="row", zebra_stripes=True)
        yield Static(EMPTY, id="specialists-empty")
        yield Label("", id="specialist-chosen")
        with Horizontal(id="specialist-bar"):
            yield Input(placeholder="Text for the specialist (Enter runs it)", id="specialist-text",
                        max_length=MAX_INPUT_CHARS)
            yield Button("Run", id="specialist-run", variant="primary")
        yield VerticalScroll(Static("Choose a specialist, enter a text and run it.", id="specialist-result"),
                             id="specialist-result-box")
        yield Footer()

    def commands(self) -> list[SystemCommand]:
        return [SystemCommand("Run the specialist", "Classify or extract the text with the chosen specialist",
                              self._run),
                SystemCommand("Choose a specialist", "Move to the table of installed specialists",
                              lambda: self.query_one("#specialists", DataTable).focus()),
                SystemCommand("Reload the specialists", "List the installed specialists again", self._load)]

    def on_mount(self) -> None:
        table = self.query_one("#specialists", DataTable)
        for label, width in COLUMNS:
            table.add_column(label, width=width)
        self.query_one("#specialists-empty").display = False

    def on_screen_resume(self) -> None:
        """Also on first showing; a bundle applied meanwhile may have brought or revoked specialists."""
        if self.running is None:
            self._load()

    # -- listing -------------------------------------------------------------------------

    @in_thread("listing the specialists", exclusive=True, group="specialists-list")
    def _load(self) -> None:
        app: Any = self.app
        app.current()
        self.post_message(SpecialistsListed([s.info for s in app.services.specialists().values()]))

    def on_specialists_listed(self, message: SpecialistsListed) -> None:
        infos = message.infos
        self.infos = {i.name: i for i in infos}
        table = self.query_one("#specialists", DataTable)
        keep = self.chosen
        fill_table(table, COLUMNS, [((i.name, i.task, str(len(i.labels)), labels_text(i.labels),
                                      metrics_text(i.metrics)), i.name) for i in infos])
        empty = not infos
        table.display = not empty
        self.query_one("#specialists-empty").display = empty
        self.query_one("#specialist-bar").display = not empty
        self.query_one("#specialist-result-box").display = not empty
        if empty:
            self.chosen = None
            self.query_one("#specialist-chosen", Label).update("")
            return
        names = [i.name for i in infos]
        self.chosen = keep if keep in self.infos else names[0]
        table.move_cursor(row=names.index(self.chosen), animate=False)
        self._show_chosen()

    @on(DataTable.RowHighlighted, "#specialists")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key.value in self.infos:
            self.chosen = event.row_key.value
            self._show_chosen()

    @on(DataTable.RowSelected, "#specialists")
    def _selected(self, event: DataTable.RowSelected) -> None:
        self._highlighted(event)  # type: ignore[arg-type]
        self.query_one("#specialist-text", Input).focus()

    def _show_chosen(self) -> None:
        info = self.infos.get(self.chosen or "")
        self.query_one("#specialist-chosen", Label).update(what_runs(info) if info else "")

    # -- running (main thread, then a worker) ----------------------------------------------

    @on(Button.Pressed, "#specialist-run")
    @on(Input.Submitted, "#specialist-text")
    def _run(self) -> None:
        if self.running is not None:
            self.notify(f"Still running {self.running}.", severity="warning")
            return
        info = self.infos.get(self.chosen or "")
        if info is None:
            self.notify("No specialist is installed to run." if not self.infos else "Choose a specialist.",
                        severity="warning")
            return
        text = self.query_one("#specialist-text", Input).value
        if not text.strip():
            self.notify(f"Enter a text to {'classify' if info.task == 'classify' else 'extract entities from'}.",
                        severity="warning")
            self.query_one("#specialist-text", Input).focus()
            return
        self.running = info.name
        self.query_one("#specialist-run", Button).disabled = True
        result = self.query_one("#specialist-result", Static)
        result.remove_class("refused")
        result.update(Text(f"Running {info.name} ({info.task})\u2026", style="dim"))
        self._run_worker(info.name, info.task, text, tuple(info.labels))

    @in_thread(RUNNING, exclusive=True, group="specialist-run")
    def _run_worker(self, name: str, task: str, text: str, types: tuple[str, ...]) -> None:
        from appliance.app.specialists import run_specialist

        app: Any = self.app
        app.engine_ready.wait(timeout=300)  # the models may still be loading in the background
        [result] = run_specialist(app.services, app.current(), name, task, [text])
        self.post_message(SpecialistRan(task, text, result, types))

    # -- what the workers post, and a failed run (main thread) ----------------------------

    def on_specialist_ran(self, message: SpecialistRan) -> None:
        self.last = message.result
        if message.task == "classify":
            shown = classification_text(message.text, message.result)
        else:
            shown = extraction_text(message.text, message.result, message.types)
        self.query_one("#specialist-result", Static).update(shown)
        self._finished()

    def worker_failed(self, what: str, error: BaseException) -> None:
        """Show a failed run here (the notice follows from the one handler)."""
        if what != RUNNING or self.running is None:
            return
        out = Text()
        out.append(" FAILED ", style="bold reverse")
        out.append(f" Running {self.running} failed.\n", style="bold")
        out.append(str(error) or type(error).__name__)
        result = self.query_one("#specialist-result", Static)
        result.update(out)
        result.add_class("refused")
        self._finished()

    def _finished(self) -> None:
        self.running = None
        self.query_one("#specialist-run", Button).disabled = False
