"""Shared helpers for the TUI tests (Textual's Pilot): an appliance over the real models, running the app,
logging in, and waiting for the workers with a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from textual.widgets import Input

from appliance.access.labels import Labels
from appliance.app import documents
from appliance.config import load_settings
from appliance.runtime.model_store import ModelStore
from appliance.services import Services, build_services
from appliance.tui.app import ApplianceApp
from appliance.tui.screens.login import LoginScreen
from tests.helpers import PASS

__all__ = ["PASS", "DOCS", "tui_appliance", "run", "login", "notices", "settle"]

DOCS = {
    "kiosk.md": ("UNCLASSIFIED", "# Media kiosk\n\nEvery USB drive brought into the facility is scanned at the "
                 "media kiosk before it may be connected to any workstation. The kiosk is staffed from 07:00 to "
                 "19:00.\n"),
    "canteen.txt": ("UNCLASSIFIED", "The canteen serves lunch from noon until two in the afternoon on weekdays.\n"),
    "keys.txt": ("SECRET:CRYPTO", "Cipher keys for the secure link are rotated on the first Monday of each month.\n"),
}


def run(services: Services, body: Callable, size: tuple[int, int] = (120, 40), **kw) -> None:
    async def main() -> None:
        app = ApplianceApp(services, **kw)
        async with app.run_test(size=size) as pilot:
            await body(app, pilot)
    asyncio.run(main())


async def login(app: ApplianceApp, pilot, name: str, passphrase: str = PASS) -> None:
    await pilot.pause()
    assert isinstance(app.screen, LoginScreen)
    app.screen.query_one("#name", Input).value = name
    app.screen.query_one("#passphrase", Input).value = passphrase
    await pilot.click("#login")
    await settle(app, pilot)


def notices(app: ApplianceApp) -> list[str]:
    """The notices the app has shown (toasts), oldest first."""
    return [n.message for n in app._notifications]


async def settle(app: ApplianceApp, pilot, until: Callable[[], bool] | None = None, timeout: float = 60) -> None:
    """Wait for the workers (or ``until``), with a deadline well inside the 120 s per-test timeout."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        await pilot.pause(0.05)
        if until is None:
            if not [w for w in app.workers if w.is_running and w.group != "warm"]:
                await pilot.pause()
                return
        elif until():
            return
    raise AssertionError(f"the UI did not settle in {timeout:.0f} s; notices: {notices(app)}")


def tui_appliance(root: Path, model_store: ModelStore) -> Services:
    """An appliance over the real models with root, ann (analyst), olga (officer) and aud (auditor), and three
    documents at three labels; the caller closes it."""
    settings = load_settings({"APPLIANCE_DATA_DIR": str(root / "data"), "APPLIANCE_MODELS_DIR": str(model_store.root)})
    s = build_services(settings)
    acc = s.accounts()
    acc.add("root", role="admin", level="TOP SECRET", compartments=["CRYPTO"], passphrase=PASS, by=None)
    admin = acc.get("root")
    for name, role, level, comps in (("ann", "analyst", "UNCLASSIFIED", []), ("olga", "officer", "SECRET", ["CRYPTO"]),
                                     ("aud", "auditor", "CONFIDENTIAL", [])):
        acc.add(name, role=role, level=level, compartments=comps, passphrase=PASS, by=admin)
    for name, (labels, text) in DOCS.items():
        (root / name).write_text(text)
        level, _, comps = labels.partition(":")
        documents.ingest(s, admin, [root / name], Labels(level, frozenset(filter(None, comps.split(",")))))
    return s


