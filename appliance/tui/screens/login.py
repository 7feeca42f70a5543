"""Login: name and passphrase, checked by the account store in a worker."""

from __future__ import annotations

import time
from dataclasses import dataclass

from textual import on
from textual.app import ComposeResult
from textual.containers import Center, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, Footer, Input, Static

from appliance.access.accounts import LoginSession
from appliance.errors import ApplianceError
from appliance.tui.widgets import AppHeader
from appliance.tui.workers import ReportsFailures, in_thread

__all__ = ["LoginScreen", "LoggedIn", "LoginFailed"]

LOGGING_IN = "logging in"


@dataclass
class LoggedIn(Message):
    session: LoginSession


@dataclass
class LoginFailed(Message):
    """The name or passphrase was refused (or the account is locked): shown on the screen, not as a problem."""

    reason: str


class LoginScreen(ReportsFailures, Screen[None]):
    AUTO_FOCUS = "#name"

    def __init__(self, message: str = "") -> None:
        super().__init__()
        self.message = message

    def compose(self) -> ComposeResult:
        yield AppHeader()
        with Center(), Vertical(id="login-box"):
            yield Static("Log in", id="login-title")
            yield Input(placeholder="user name", id="name")
            yield Input(placeholder="passphrase", password=True, id="passphrase")
            yield Button("Log in", variant="primary", id="login")
            yield Static(self.message, id="login-message")
        yield Footer()

    def on_mount(self) -> None:
        app = self.app
        if getattr(app, "login_shown_s", 1) is None:
            app.login_shown_s = time.perf_counter() - app.started

    @on(Input.Submitted, "#name")
    def _to_passphrase(self) -> None:
        self.query_one("#passphrase", Input).focus()

    @on(Input.Submitted, "#passphrase")
    @on(Button.Pressed, "#login")
    def _login_submitted(self) -> None:
        name = self.query_one("#name", Input).value.strip()
        passphrase = self.query_one("#passphrase", Input).value
        if not name or not passphrase:
            self.query_one("#login-message", Static).update("Enter your user name and passphrase.")
            return
        self.query_one("#login", Button).disabled = True
        self.query_one("#login-message", Static).update("Checking\u2026")
        self._login_worker(name, passphrase)

    @in_thread(LOGGING_IN, exclusive=True, group="login")
    def _login_worker(self, name: str, passphrase: str) -> None:
        try:
            session = self.app.services.accounts().login(name, passphrase)
        except ApplianceError as exc:  # a refusal is the answer to show here, not a failure
            self.post_message(LoginFailed(str(exc)))
            return
        self.post_message(LoggedIn(session))

    def on_logged_in(self, message: LoggedIn) -> None:
        self.app.logged_in(message.session)

    def on_login_failed(self, message: LoginFailed) -> None:
        self._ready(f"{message.reason}. After repeated failures an account locks for a while; ask an administrator.")

    def worker_failed(self, what: str, error: BaseException) -> None:
        if what == LOGGING_IN:  # unexpected (the notice says what): the user may try again
            self._ready("Logging in failed.")

    def _ready(self, text: str) -> None:
        self.query_one("#passphrase", Input).value = ""
        self.query_one("#login", Button).disabled = False
        self.query_one("#login-message", Static).update(text)
        self.query_one("#passphrase", Input).focus()
