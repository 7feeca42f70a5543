"""Updates (officers, admins): verify a signed bundle from the media, apply it, roll back.

The same steps as ``appliance bundle verify / apply / history / rollback``, over the same
service functions, which check the role themselves. Verify is a dry run that shows what
applying would add, replace, revoke and install; apply and rollback ask first. The work
runs in worker threads that only post messages; a refusal is shown here with its reason
(:meth:`UpdatesScreen.worker_failed`) and, like every failure, reported by the one handler
(:class:`appliance.tui.workers.ReportsFailures`).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult, SystemCommand
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, DataTable, Footer, Input, Label, ProgressBar, Static

from appliance.app.gate import gate_text
from appliance.tui.messages import PhaseProgressed
from appliance.tui.widgets import AppHeader
from appliance.tui.workers import ReportsFailures, in_thread

if TYPE_CHECKING:
    from appliance.app.gate import GateResult
    from appliance.updates.apply import ApplyResult
    from appliance.updates.generations import GenerationInfo

__all__ = ["UpdatesScreen", "BundleVerified", "BundleApplied", "BundleRolledBack", "GenerationsRead"]

BYTES_PHASES = ("staging", "checking payloads")  # their counts are bytes, not steps
SHOWN_NAMES = 10  # document names listed per kind of change
WHAT = {"verify": "verifying the bundle", "apply": "applying the bundle", "rollback": "rolling back"}
DONE_LABEL = {"verify": "Verified (a dry run: nothing changed).", "apply": "Applied.", "rollback": "Rolled back."}


def _names(names: list[str]) -> str:
    more = len(names) - SHOWN_NAMES
    return ", ".join(names[:SHOWN_NAMES]) + (f" \u2026 and {more} more" if more > 0 else "")


def plan_text(s: dict) -> Text:
    """What verifying found: the bundle, and what applying it would change (as ``bundle verify`` prints it)."""
    out = Text()
    out.append(" VERIFIED ", style="bold reverse")
    out.append(f" {s['bundle']} release {s['release']} for {s['class']}: {s['targets']} payload(s)\n", style="bold")
    if s.get("already_applied"):
        out.append("This bundle is already applied: applying it again changes nothing.\n")
        return out
    for word in ("add", "replace", "revoke"):
        names = s.get(word, [])
        out.append(f"would {word} {len(names)} document(s)" + (f": {_names(names)}" if names else "") + "\n")
    for kind in ("models", "adapters", "policy"):
        if s.get(kind):
            out.append(f"would install {kind}: {', '.join(s[kind])}\n")
    out.append("Nothing was changed. Apply builds a new generation and switches to it.", style="dim")
    return out


def applied_text(r: Any, gate: Any = None) -> Text:  # ApplyResult, and the drift gate's GateResult
    out = Text()
    out.append(" APPLIED ", style="bold reverse")
    if r.noop:
        out.append(f" {r.bundle} release {r.release} is already applied: nothing changed\n", style="bold")
        return out
    c = r.changes
    out.append(f" {r.bundle} release {r.release} as generation {r.generation} in {r.seconds:.1f} s\n", style="bold")
    out.append(f"{c.get('added', 0)} added, {c.get('replaced', 0)} replaced, {c.get('unchanged', 0)} unchanged, "
               f"{c.get('revoked', 0)} revoked\n")
    if gate is not None and gate.verdict != "not run":
        out.append_text(gate_text(gate))
    return out


def refused_text(what: str, error: BaseException) -> Text:
    out = Text()
    out.append(" REFUSED ", style="bold reverse")
    out.append(f" {what.capitalize()} failed; nothing was changed.\n", style="bold")
    out.append(str(error) or type(error).__name__)
    return out


@dataclass
class BundleVerified(Message):
    """The dry run passed: what applying the bundle on ``media`` would change."""

    media: str
    plan: dict[str, Any]


@dataclass
class BundleApplied(Message):
    result: ApplyResult
    gate: GateResult | None = None


@dataclass
class BundleRolledBack(Message):
    """The generation that serves now."""

    info: GenerationInfo


@dataclass
class GenerationsRead(Message):
    """The kept generations (oldest first), the serving one, the high-water state and a held one, if any."""

    serving: int
    kept: list[GenerationInfo]
    state: dict[str, Any]
    holding: dict[str, Any] | None = None


class UpdatesScreen(ReportsFailures, Screen[None]):
    AUTO_FOCUS = "#bundle-dir"

    def __init__(self) -> None:
        super().__init__()
        self.busy: str | None = None  # "verify", "apply" or "rollback" while its worker runs
        self.phases: list[str] = []  # the phases of the running (or last) verify or apply, in order
        self.serving: int | None = None
        self.generations: list[Any] = []  # GenerationInfo, oldest first
        self.chosen: int | None = None  # a generation picked in the table (Enter) as the rollback target
        self.verified: tuple[str, dict] | None = None  # (media path, plan summary) of the last dry run
        self.asking = False  # a confirmation dialog is open over this screen

    def compose(self) -> ComposeResult:
        yield AppHeader()
        with Horizontal(id="bundle-bar"):
            yield Input(placeholder="bundle directory on the media, e.g. /media/usb/northgate-r12", id="bundle-dir",
                        max_length=4096)
            yield Button("Verify", id="bundle-verify", variant="primary")
            yield Button("Apply", id="bundle-apply", variant="warning")
            yield Button("Rollback", id="bundle-rollback")
        with Horizontal(id="bundle-progress-row"):
            yield Label("", id="bundle-phase")
            yield ProgressBar(id="bundle-progress", show_eta=False)
        yield VerticalScroll(Static("Verify a bundle to see what applying it would change.", id="bundle-result"),
                             id="bundle-result-box")
        yield Label("Generations", classes="side-title", id="generations-title")
        yield DataTable(id="generations", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def commands(self) -> list[SystemCommand]:
        return [SystemCommand("Verify a bundle", "Dry run: check a bundle on the media and show what it would change",
                              lambda: self._start("verify")),
                SystemCommand("Apply a bundle", "Verify and apply a bundle into a new generation",
                              lambda: self._start("apply")),
                SystemCommand("Roll back", "Serve an earlier kept generation again", lambda: self._start("rollback")),
                SystemCommand("Reload the generations", "Read the kept generations again", self._load_history)]

    def on_mount(self) -> None:
        app: Any = self.app
        table = self.query_one("#generations", DataTable)
        table.add_columns("", "gen", "bundle", "release", "applied (UTC)", "by", "changes")
        self.query_one("#bundle-progress-row").display = False
        if not app.may("bundles.manage"):  # not installed for other roles; and the service refuses anyway
            for button in self.query(Button):
                button.disabled = True
            self.query_one("#bundle-result", Static).update("Updates are for officers and administrators.")
            return
        self._load_history()

    def on_screen_resume(self) -> None:
        """Another process may have applied or rolled back meanwhile (not on closing this screen's dialog)."""
        if self.busy is None and not self.asking and self.app.may("bundles.manage"):
            self._load_history()

    # -- starting a step (main thread) --------------------------------------------------

    @on(Button.Pressed, "#bundle-verify")
    def _verify_pressed(self) -> None:
        self._start("verify")

    @on(Input.Submitted, "#bundle-dir")
    def _dir_submitted(self) -> None:
        self._start("verify")

    @on(Button.Pressed, "#bundle-apply")
    def _apply_pressed(self) -> None:
        self._start("apply")

    @on(Button.Pressed, "#bundle-rollback")
    def _rollback_pressed(self) -> None:
        self._start("rollback")

    @on(DataTable.RowSelected, "#generations")
    def _generation_picked(self, event: DataTable.RowSelected) -> None:
        self.chosen = int(event.row_key.value) if event.row_key.value is not None else None
        if self.chosen is not None:
            self.notify(f"Rollback will serve generation {self.chosen}.")

    def _media(self) -> Path | None:
        value = self.query_one("#bundle-dir", Input).value.strip()
        if not value:
            self.notify("Enter the bundle's directory on the media.", severity="warning")
            self.query_one("#bundle-dir", Input).focus()
            return None
        return Path(value).expanduser()

    def _start(self, step: str) -> None:
        if self.busy is not None:
            self.notify(f"Still {WHAT[self.busy]}.", severity="warning")
            return
        from appliance.tui.screens.dialogs import ConfirmScreen

        if step == "rollback":
            target = self._rollback_target()
            if target is None:
                return
            info = next((g for g in self.generations if g.generation == target), None)
            made = f"{info.bundle} release {info.release}" if info and info.bundle else "the initial state"
            verb = "Roll forward" if self.serving is not None and target > self.serving else "Roll back"
            question = (f"Generation {target} ({made}) will serve again instead of generation {self.serving}. "
                    "The release high-water mark stays: a bundle rolled away from cannot be applied again, "
                    "but its kept generation can be chosen in the table (Enter) and served again.")
            self._ask(ConfirmScreen(f"{verb} to generation {target}?", question, verb), "rollback", target)
            return
        media = self._media()
        if media is None:
            return
        if step == "verify":
            self._run("verify", media)
            return
        body = Text(f"The bundle in {media} will be verified again, then applied into a new generation that serves "
                    "once it passes its health check.\n\n")
        if self.verified and self.verified[0] == str(media):
            body.append_text(plan_text(self.verified[1]))
        else:
            body.append("It has not been verified here yet: Verify shows what it would change.", style="italic")
        self._ask(ConfirmScreen(f"Apply the bundle in {media}?", body, "Apply"), "apply", media)

    def _ask(self, dialog: Screen[bool], step: str, arg: Any) -> None:
        def answered(yes: bool | None) -> None:
            self.asking = False
            if yes:
                self._run(step, arg)
        self.asking = True
        self.app.push_screen(dialog, answered)

    def _rollback_target(self) -> int | None:
        if self.chosen is not None and self.chosen != self.serving:
            return self.chosen
        serving = next((g for g in self.generations if g.generation == self.serving), None)
        if serving is None or serving.parent is None:
            self.notify("No earlier generation to roll back to.", severity="warning")
            return None
        if serving.parent not in {g.generation for g in self.generations}:
            self.notify(f"Generation {serving.parent} is no longer kept; pick a kept one in the table (Enter).",
                        severity="warning")
            return None
        return serving.parent

    def _run(self, step: str, arg: Any) -> None:
        if self.busy is not None:
            return
        self.busy = step
        for button in self.query(Button):
            button.disabled = True
        result = self.query_one("#bundle-result", Static)
        result.remove_class("refused")
        result.update(Text(f"{WHAT[step].capitalize()}\u2026", style="dim"))
        if step == "rollback":
            self.query_one("#bundle-progress-row").display = False
            self._rollback_worker(arg)
            return
        self.phases = []
        self.query_one("#bundle-progress-row").display = True
        self.query_one("#bundle-phase", Label).update("starting")
        self.query_one("#bundle-progress", ProgressBar).update(total=None, progress=0)
        if step == "verify":
            self._verify_worker(arg)
        else:
            self._apply_worker(arg)

    # -- workers: they only post messages ------------------------------------------------

    def _reporter(self) -> Callable[[str, int, int], None]:
        """A progress callback for the worker thread: every new phase, else at most ten posts a second."""
        last: dict[str, Any] = {"phase": None, "at": 0.0}

        def progress(phase: str, done: int, total: int) -> None:
            now = time.monotonic()
            if phase != last["phase"] or now - last["at"] >= 0.1:
                last["phase"], last["at"] = phase, now
                self.post_message(PhaseProgressed(phase, done, total))
        return progress

    @in_thread(WHAT["verify"], group="bundle")
    def _verify_worker(self, media: Path) -> None:
        from appliance.app import updates

        app: Any = self.app
        plan = updates.verify(app.services, app.current(), media, self._reporter())
        if plan.work is not None:
            shutil.rmtree(plan.work, ignore_errors=True)  # a dry run keeps nothing
        self.post_message(BundleVerified(str(media), plan.summary()))

    @in_thread(WHAT["apply"], group="bundle")
    def _apply_worker(self, media: Path) -> None:
        from appliance.app import updates

        app: Any = self.app
        self.post_message(BundleApplied(*updates.apply(app.services, app.current(), media, self._reporter())))

    @in_thread(WHAT["rollback"], group="bundle")
    def _rollback_worker(self, to: int | None) -> None:
        from appliance.app import updates
        from appliance.app.gate import held

        app: Any = self.app
        holding = held(app.services)
        if holding and to is not None and to == holding["generation"]:  # the drift gate held it: the officer accepts
            updates.accept(app.services, app.current(), to)
            self.post_message(BundleRolledBack(app.services.generation()))
        else:
            self.post_message(BundleRolledBack(updates.roll_back(app.services, app.current(), to)))

    @in_thread("reading the generations", exclusive=True, group="bundle-history")
    def _load_history(self) -> None:
        from appliance.app import updates
        from appliance.app.gate import held

        app: Any = self.app
        self.post_message(GenerationsRead(*updates.generations(app.services, app.current()), held(app.services)))

    # -- what the workers post, and their failures (main thread) ------------------------

    def on_phase_progressed(self, message: PhaseProgressed) -> None:
        if not self.phases or self.phases[-1] != message.phase:
            self.phases.append(message.phase)
        done, total = message.done, message.total
        if message.phase in BYTES_PHASES:
            detail = f"{done / 2**20:.1f} MiB"
        else:
            detail = f"{done}/{total}" if total > 1 else ""
        self.query_one("#bundle-phase", Label).update(f"{message.phase} {detail}".strip())
        bar = self.query_one("#bundle-progress", ProgressBar)
        if total > 0:
            bar.update(total=total, progress=min(done, total))
        else:
            bar.update(total=None)

    def on_generations_read(self, message: GenerationsRead) -> None:
        self._show_generations(message.serving, message.kept, message.state, message.holding)

    def on_bundle_verified(self, message: BundleVerified) -> None:
        self.verified = (message.media, message.plan)
        self.query_one("#bundle-result", Static).update(plan_text(message.plan))
        self._finished("verify")

    def on_bundle_applied(self, message: BundleApplied) -> None:
        self.verified = None
        self.query_one("#bundle-result", Static).update(applied_text(message.result, message.gate))
        self._finished("apply")
        self._load_history()

    def on_bundle_rolled_back(self, message: BundleRolledBack) -> None:
        info = message.info
        text = Text()
        text.append(" ROLLED BACK ", style="bold reverse")
        text.append(f" generation {info.generation} serves again ({info.bundle or 'initial'} release "
                    f"{info.release})\n", style="bold")
        self.query_one("#bundle-result", Static).update(text)
        self.verified = None
        self._finished("rollback")
        self._load_history()

    def worker_failed(self, what: str, error: BaseException) -> None:
        """Show a refused step here (the notice follows from the one handler)."""
        step = next((k for k, v in WHAT.items() if v == what), None)
        if step is None or self.busy != step:
            return
        result = self.query_one("#bundle-result", Static)
        result.update(refused_text(what, error))
        result.add_class("refused")
        if step != "rollback":
            last = self.phases[-1] if self.phases else "starting"
            self.query_one("#bundle-phase", Label).update(f"stopped while {last}")
        self._finished(step, ok=False)

    def _finished(self, step: str, ok: bool = True) -> None:
        self.busy = None
        for button in self.query(Button):
            button.disabled = False
        if step != "rollback" and ok:
            self.query_one("#bundle-phase", Label).update(DONE_LABEL[step])
            self.query_one("#bundle-progress", ProgressBar).update(total=1, progress=1)

    def _show_generations(self, serving: int, kept: list[Any], state: dict, holding: dict | None = None) -> None:
        self.serving, self.generations = serving, kept
        if self.chosen not in {g.generation for g in kept} or self.chosen == serving:
            self.chosen = None
        self.query_one("#generations-title", Label).update(
            f"Generations kept (serving: {serving}; highest release applied: {state.get('release', 0)})")
        table = self.query_one("#generations", DataTable)
        table.clear()
        for g in reversed(kept):  # the newest first
            changes = ", ".join(f"{v} {k}" for k, v in g.changes.items() if v)
            applied = (g.applied_at or "")[:16].replace("T", " ")
            held_here = holding is not None and holding.get("generation") == g.generation
            mark = "\u25b6 serving" if g.generation == serving else "held (drift gate)" if held_here else ""
            table.add_row(mark, str(g.generation),
                          g.bundle or "(initial)", str(g.release), applied, g.by or "", changes, key=str(g.generation))
