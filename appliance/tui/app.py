"""The application: takes the services, logs a user in, shows the screens their role allows.

Long work and every database call (the engine, the index, the audit log, bundle updates,
specialists, sessions) runs in thread workers (:func:`appliance.tui.workers.in_thread`) that
only post typed messages; one handler (:class:`appliance.tui.workers.ReportsFailures`, a base
of the app and of every screen) turns any failure into a readable notice. The services
refuse anything a role may not do; the UI also leaves such screens and actions out.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable

from textual import events
from textual.app import App, SystemCommand
from textual.screen import Screen

from appliance.access.accounts import Account, LoginSession
from appliance.access.authz import ACTIONS
from appliance.access.labels import Principal
from appliance.errors import ApplianceError, SessionExpiredError
from appliance.services import Services
from appliance.tui.workers import ReportsFailures, in_thread

__all__ = ["ApplianceApp", "SCREENS_BY_ROLE"]

SCREENS_BY_ROLE: dict[str, tuple[str, ...]] = {
    "analyst": ("ask", "library", "system", "specialists"),
    "officer": ("ask", "library", "system", "audit", "updates", "specialists", "evaluation"),
    "auditor": ("ask", "library", "system", "audit", "specialists", "evaluation"),
    "admin": ("ask", "library", "system", "audit", "updates", "specialists", "evaluation"),
}  # "updates" for exactly the roles allowed bundles.manage, "specialists" specialists.use, "evaluation"
# evaluation.read (tests hold them together)
TITLES = {"ask": "Ask", "library": "Library", "system": "System", "audit": "Audit", "updates": "Updates",
          "specialists": "Specialists", "evaluation": "Evaluation"}


def clearance(account: Account) -> str:
    comps = ",".join(sorted(account.compartments))
    return account.level + (f":{comps}" if comps else "")


class ApplianceApp(ReportsFailures, App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "Appliance"
    BINDINGS = [
        ("f2", "goto('ask')", "Ask"),
        ("f3", "goto('library')", "Library"),
        ("f4", "goto('system')", "System"),
        ("f5", "goto('audit')", "Audit"),
        ("f6", "goto('updates')", "Updates"),
        ("f7", "goto('specialists')", "Specialists"),
        ("f8", "goto('evaluation')", "Evaluation"),
        ("ctrl+l", "logout", "Log out"),
    ]

    def __init__(self, services: Services, *, idle_check_s: float = 5.0, warm_engine: bool = True) -> None:
        super().__init__()
        self.services = services
        self.account: Account | None = None
        self.token: str | None = None
        self.session_marking = ""
        self.last_input = time.monotonic()
        self.idle_check_s = idle_check_s
        self.warm_engine = warm_engine
        self.engine_ready = threading.Event()
        if not warm_engine:
            self.engine_ready.set()  # nothing loads in the background: the first answer loads the models
        self.answer_speeds: deque[tuple[str, float]] = deque(maxlen=10)  # (trace id, tokens/s)
        self.started = time.perf_counter()
        self.login_shown_s: float | None = None

    # -- life cycle ---------------------------------------------------------------------

    def on_mount(self) -> None:
        from appliance.tui.screens.login import LoginScreen

        self.push_screen(LoginScreen())
        self.set_interval(self.idle_check_s, self._check_idle)
        if self.warm_engine:
            self._warm_engine()

    @in_thread("loading the models", exclusive=True, group="warm")
    def _warm_engine(self) -> None:
        """Load the models while the user logs in, so the first answer does not wait for them."""
        try:
            self.services.agent()
        finally:
            self.engine_ready.set()  # a failure is reported; the first answer tries again (and says why)

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Key | events.MouseDown):
            self.last_input = time.monotonic()
        await super().on_event(event)

    def _check_idle(self) -> None:
        idle = self.services.settings.access.idle_timeout_s
        if self.account is not None and time.monotonic() - self.last_input > idle:
            self.to_login("Your session ended after being idle; log in again.")

    # -- account ------------------------------------------------------------------------

    def logged_in(self, session: LoginSession) -> None:
        self.account, self.token = session.account, session.token
        self.session_marking = ""
        self.last_input = time.monotonic()
        self.refresh_header()
        for name in self.allowed_screens():
            self.install_screen(self._make(name), name=name)
        self.switch_screen(self.allowed_screens()[0])

    def allowed_screens(self) -> tuple[str, ...]:
        return SCREENS_BY_ROLE.get(self.account.role, ()) if self.account else ()

    def may(self, action: str) -> bool:
        return self.account is not None and self.account.role in ACTIONS[action]

    def current(self) -> Account:
        """The account behind the login session, checked by the service (idle clock restarts)."""
        if self.token is None:
            raise SessionExpiredError("not logged in")
        self.account = self.services.login_session(self.token)
        return self.account

    def principal(self) -> Principal:
        from appliance.app import documents

        return documents.principal_of(self.services, self.current())

    def refresh_header(self) -> None:
        self.refresh_bindings()
        if self.account is None:
            self.title, self.sub_title = "Appliance", "log in"
            return
        a = self.account
        self.title = f"Appliance \u2014 {a.name} ({a.role})"
        self.sub_title = f"cleared {clearance(a)}" + (f" | session {self.session_marking}"
                                                      if self.session_marking else "")

    def to_login(self, message: str = "") -> None:
        """End the session and show the login screen; the last user's screens (and what they showed) go."""
        if self.token:
            self._logout_worker(self.token)
        names = self.allowed_screens()
        self.account, self.token, self.session_marking = None, None, ""
        self.call_later(self._swap_to_login, message, names)

    @in_thread("logging out", group="logout")
    def _logout_worker(self, token: str) -> None:
        try:
            self.services.accounts().logout(token)
        except ApplianceError:
            pass  # the login is gone already (expired, or ended elsewhere): nothing is left to end

    async def _swap_to_login(self, message: str, names: tuple[str, ...]) -> None:
        from appliance.tui.screens.login import LoginScreen

        while len(self.screen_stack) > 2:  # dialogs over the screen go first
            await self.pop_screen()
        await self.switch_screen(LoginScreen(message))
        for name in names:
            if name in self._installed_screens:
                self.uninstall_screen(name)
        self.refresh_header()

    def _make(self, name: str) -> Screen:
        from appliance.tui.screens.ask import AskScreen
        from appliance.tui.screens.audit import AuditScreen
        from appliance.tui.screens.evaluation import EvaluationScreen
        from appliance.tui.screens.library import LibraryScreen
        from appliance.tui.screens.specialists import SpecialistsScreen
        from appliance.tui.screens.system import SystemScreen
        from appliance.tui.screens.updates import UpdatesScreen

        return {"ask": AskScreen, "library": LibraryScreen, "system": SystemScreen, "audit": AuditScreen,
                "updates": UpdatesScreen, "specialists": SpecialistsScreen, "evaluation": EvaluationScreen}[name]()

    # -- actions ------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Screen keys show only for a logged-in user, and only for the screens their role may use."""
        if action == "goto":
            return bool(parameters) and parameters[0] in self.allowed_screens()
        if action == "logout":
            return self.account is not None
        return True

    def action_goto(self, name: str) -> None:
        if name not in self.allowed_screens():
            self.notify(f"{TITLES.get(name, name)} is not available to you.", severity="warning")
            return
        self.switch_screen(name)

    def action_logout(self) -> None:
        if self.account is not None:
            self.to_login("Logged out.")

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for name in self.allowed_screens():
            yield SystemCommand(f"Go to {TITLES[name]}", f"Open the {TITLES[name]} screen",
                                lambda name=name: self.action_goto(name))
        if self.account is not None:
            yield SystemCommand("Log out", "End the session and return to the login screen", self.action_logout)
        yield from getattr(screen, "commands", lambda: [])()
