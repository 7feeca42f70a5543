"""TUI benchmarks for the terminal-UI issue, each beside a baseline from the same run.

1. Start to login screen: ``appliance tui`` in a real terminal (tmux) until "Log in" is on
   screen; baseline: a bare Textual app showing one line, started the same way.
2. First streamed token: from the moment the engine's piece reaches the answer worker to
   the moment the Ask screen shows it; baseline: a bare app posting one message from a
   thread to its screen.
3. Blocked frames: the event loop's longest stall (a 10 ms ticker's lateness) while an
   answer streams; baseline: the same ticker while the app is idle.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

from rich.console import Console

from appliance.access.labels import Labels
from appliance.app import documents
from appliance.config import load_settings
from appliance.services import Services, build_services
from bench.runtime_bench import REPO, _store

WORK = REPO / "bench" / "work" / "tui"
PASS = "a long enough passphrase"
QUESTIONS = ["When does the canteen serve lunch?", "Where are USB drives scanned?",
             "When is the media kiosk staffed?", "What colour are visitor badges?",
             "What colour are contractor badges?", "Is lunch served on weekdays?"]
BARE_APP = ("from textual.app import App\nfrom textual.widgets import Static\n"
            "class Bare(App):\n    def compose(self):\n        yield Static('Log in')\nBare().run()\n")


def _services() -> Services:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    settings = load_settings({"APPLIANCE_DATA_DIR": str(WORK / "data"), "APPLIANCE_MODELS_DIR": str(_store().root)})
    s = build_services(settings)
    s.accounts().add("root", role="admin", level="SECRET", passphrase=PASS, by=None)
    admin = s.accounts().get("root")
    s.accounts().add("ann", role="analyst", level="SECRET", passphrase=PASS, by=admin)
    docs = {"kiosk.md": "# Media kiosk\n\nEvery USB drive brought into the facility is scanned at the media kiosk "
                        "before it may be connected to any workstation. The kiosk is staffed from 07:00 to 19:00.\n",
            "canteen.txt": "The canteen serves lunch from noon until two in the afternoon on weekdays.\n",
            "badges.txt": "Visitor badges are grey. Contractor badges are orange.\n"}
    for name, text in docs.items():
        (WORK / name).write_text(text)
        documents.ingest(s, admin, [WORK / name], Labels("UNCLASSIFIED"))
    return s


def _start_time(command: str, env: dict[str, str], marker: str, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        session = f"bench-{uuid.uuid4().hex[:8]}"
        t0 = time.perf_counter()
        subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "100", "-y", "30", command], env=env,
                       check=True)
        try:
            while time.perf_counter() - t0 < 30:
                screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True,
                                        text=True).stdout
                if marker in screen:
                    out.append(time.perf_counter() - t0)
                    break
                time.sleep(0.01)
        finally:
            subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
        time.sleep(0.3)
    return out


def bench_start(runs: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env.update(APPLIANCE_DATA_DIR=str(WORK / "data"), APPLIANCE_MODELS_DIR=str(_store().root), TERM="xterm-256color")
    (WORK / "bare.py").write_text(BARE_APP)
    app = _start_time(f"cd {REPO} && {sys.executable} -m appliance tui", env, "Log in", runs)
    bare = _start_time(f"cd {WORK} && {sys.executable} bare.py", env, "Log in", runs)
    return {"appliance_s": app, "bare_textual_s": bare, "appliance_p50_s": statistics.median(app),
            "bare_p50_s": statistics.median(bare)}


def bench_stream(services: Services, questions: list[str]) -> dict[str, Any]:
    from textual.widgets import Input

    from appliance.tui.app import ApplianceApp
    from appliance.tui.screens.ask import AskScreen

    lags: list[float] = []
    every: list[float] = []
    stalls: list[float] = []
    idle_stalls: list[float] = []

    async def main() -> None:
        app = ApplianceApp(services, warm_engine=True)
        async with app.run_test(size=(120, 40)) as pilot:
            ticks: list[float] = []
            app.set_interval(0.01, lambda: ticks.append(time.perf_counter()))
            await pilot.pause(0.2)
            app.screen.query_one("#name", Input).value = "ann"
            app.screen.query_one("#passphrase", Input).value = PASS
            await pilot.click("#login")
            while not isinstance(app.screen, AskScreen):
                await pilot.pause(0.05)
            app.engine_ready.wait(300)
            ticks.clear()
            await pilot.pause(2.0)  # idle
            idle_stalls.extend(b - a - 0.01 for a, b in zip(ticks, ticks[1:], strict=False))
            screen = app.screen
            for q in questions:
                box = screen.query_one("#question", Input)
                box.value = q
                box.focus()
                ticks.clear()
                await pilot.press("enter")
                while screen.busy is not None or screen.last is None or screen.last.question != q:
                    await pilot.pause(0.02)
                stalls.extend(b - a - 0.01 for a, b in zip(ticks, ticks[1:], strict=False))
            lags.extend(screen.first_token_lag)
            every.extend(screen.token_lag)

    asyncio.run(main())
    return {"first_token_lag_ms": [x * 1000 for x in lags], "every_token_lag_ms_max": max(every, default=0) * 1000,
            "tokens_seen": len(every), "stall_ms_max": max(stalls) * 1000,
            "stall_ms_p99": statistics.quantiles(stalls, n=100)[98] * 1000 if len(stalls) > 100 else max(stalls) * 1000,
            "idle_stall_ms_max": max(idle_stalls) * 1000}


def bench_bare_message(n: int) -> list[float]:
    """A bare app: a thread posts a message, the screen handles it (Textual's own hop)."""
    from dataclasses import dataclass

    from textual.app import App
    from textual.message import Message
    from textual.widgets import Static

    @dataclass
    class Piece(Message):
        at: float

    lags: list[float] = []

    class Bare(App[None]):
        def compose(self):  # noqa: ANN202
            yield Static("x")

        def on_piece(self, message: Piece) -> None:
            lags.append(time.perf_counter() - message.at)

    async def main() -> None:
        app = Bare()
        async with app.run_test() as pilot:
            for _ in range(n):
                threading.Thread(target=lambda: app.post_message(Piece(time.perf_counter()))).start()
                await pilot.pause(0.05)
    asyncio.run(main())
    return [x * 1000 for x in lags]


def run(quick: bool = False, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    with console.status("TUI: preparing accounts and documents…"):
        services = _services()
    try:
        with console.status("TUI: start to login screen, appliance vs bare Textual (tmux)…"):
            start = bench_start(3 if quick else 7)
        with console.status("TUI: streamed answers (first-token lag, event-loop stalls)…"):
            stream = bench_stream(services, QUESTIONS[:2] if quick else QUESTIONS)
        bare = bench_bare_message(10 if quick else 30)
    finally:
        services.close()
    lag_p50 = statistics.median(stream["first_token_lag_ms"]) if stream["first_token_lag_ms"] else float("nan")
    lag_max = max(stream["first_token_lag_ms"], default=float("nan"))
    out: dict[str, Any] = {"start": start, "stream": stream, "bare_message_ms": bare}
    out["rows"] = [
        {"name": "start to login screen s p50 (tmux), vs a bare Textual app",
         "appliance": f"{start['appliance_p50_s']:.2f}", "baseline": f"{start['bare_p50_s']:.2f}",
         "ratio": start["appliance_p50_s"] / start["bare_p50_s"], "target": "< 1.5 s",
         "met": start["appliance_p50_s"] < 1.5},
        {"name": f"first streamed token: engine piece -> on screen, ms p50 / max ({len(stream['first_token_lag_ms'])} "
                 f"answers; every piece max {stream['every_token_lag_ms_max']:.1f})",
         "appliance": f"{lag_p50:.1f} / {lag_max:.1f}", "baseline": f"{statistics.median(bare):.1f} (bare hop)",
         "ratio": lag_p50 / statistics.median(bare) if bare else None, "target": "<= 150 ms",
         "met": lag_max <= 150},
        {"name": "longest event-loop stall during streamed answers, ms (vs idle)",
         "appliance": f"{stream['stall_ms_max']:.1f} (p99 {stream['stall_ms_p99']:.1f})",
         "baseline": f"{stream['idle_stall_ms_max']:.1f}",
         "ratio": stream["stall_ms_max"] / stream["idle_stall_ms_max"] if stream["idle_stall_ms_max"] > 0 else None,
         "target": "< 100 ms", "met": stream["stall_ms_max"] < 100},
    ]
    shutil.rmtree(WORK, ignore_errors=True)
    return out
