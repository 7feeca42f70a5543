"""Thread workers, and the one place where their failures become what the user sees.

A worker (:func:`in_thread`) runs in a thread with ``exit_on_error=False`` and is named for
what it does ("answering", "verifying the bundle" ...). It does the work and posts one typed
message with the result, or raises. It never touches a widget, and never catches an error
to report it: Textual posts ``Worker.StateChanged`` (state ERROR) to the app or screen that
started it, and :meth:`ReportsFailures.on_worker_state_changed`, a base of the app and of
every screen, handles it on the main thread: first the screen's own
:meth:`~ReportsFailures.worker_failed` (re-enable a button, show a refusal), then the notice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from textual import work
from textual.worker import Worker, WorkerState

from appliance.errors import ApplianceError, AuditWriteError, SessionExpiredError

__all__ = ["ReportsFailures", "failure_notice", "in_thread"]

P = ParamSpec("P")
R = TypeVar("R")


def in_thread(what: str, *, group: str = "default",
              exclusive: bool = False) -> Callable[[Callable[P, R]], Callable[P, Worker[R]]]:
    """``@work`` for a thread worker named ``what`` (the notice says "<What> failed ..."), whose failure goes to
    :class:`ReportsFailures` instead of ending the app."""
    return work(thread=True, exit_on_error=False, name=what, group=group, exclusive=exclusive)


def failure_notice(what: str, error: BaseException) -> str:
    """The notice for a worker that failed doing ``what`` (a lost session goes to the login screen instead)."""
    if isinstance(error, AuditWriteError):
        return f"Refused: {error}"
    if isinstance(error, ApplianceError):
        return f"{what.capitalize()} failed: {error}"
    return f"{what.capitalize()} failed unexpectedly: {type(error).__name__}: {error}"


class ReportsFailures:
    """A base of the app and the screens: the one handler of their workers' failures.

    Textual calls the handler of every class in a node's MRO, so a screen does not define
    ``on_worker_state_changed`` itself; it overrides :meth:`worker_failed`.
    """

    app: Any  # the ApplianceApp (Textual's property on the node this is mixed into)

    def worker_failed(self, what: str, error: BaseException) -> None:
        """What this node does after its worker named ``what`` failed, before the notice (nothing by default)."""

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        error = event.worker.error
        if event.state != WorkerState.ERROR or error is None:
            return
        what = event.worker.name or "the work"
        self.worker_failed(what, error)
        if isinstance(error, SessionExpiredError):
            self.app.to_login(f"{error}")
            return
        self.app.notify(failure_notice(what, error), title="Problem", severity="error", timeout=10)
