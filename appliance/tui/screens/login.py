"""Login: name and passphrase, checked by the account store in a worker."""

from __future__ import annotations

import time

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Center, Vertical
from textual.screen import Screen
from textual.widgets import Button, Footer, Input, Static

from appliance.access.accounts import LoginSession
from appliance.errors import ApplianceError
from appliance.tui.messages import Done
from appliance.tui.widgets import AppHeader

__all__ = ["LoginScreen"]


class LoginScreen(Screen[None]):
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
            app.login_shown_s = time.perf_counter() - app.started  # type: ignore[attr-defined]

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

    @work(thread=True, exclusive=True, group="login")
    def _login_worker(self, name: str, passphrase: str) -> None:
        try:
            session = self.app.services.accounts().login(name, passphrase)  # type: ignore[attr-defined]
        except ApplianceError as exc:
            self.post_message(Done("login-failed", str(exc)))
            return
        self.post_message(Done("login", session))

    def on_done(self, message: Done) -> None:
        if message.what == "login" and isinstance(message.result, LoginSession):
            self.app.logged_in(message.result)  # type: ignore[attr-defined]
            return
        self.query_one("#passphrase", Input).value = ""
        self.query_one("#login", Button).disabled = False
        self.query_one("#login-message", Static).update(f"{message.result}. After repeated failures an account "
                                                        "locks for a while; ask an administrator.")
        self.query_one("#passphrase", Input).focus()
