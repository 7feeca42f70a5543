"""The terminal UI with Pilot, over the real services: engine, index, accounts, audit log."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from textual.widgets import DataTable, Input, ListView, Static

from appliance.app import answers, documents
from appliance.app import audit as audit_use
from appliance.audit.verify import verify_export
from appliance.config import load_settings
from appliance.errors import NotPermittedError
from appliance.runtime.model_store import ModelStore
from appliance.services import Services, build_services
from appliance.specialists.serve import Classification, Extraction
from appliance.tui.app import SCREENS_BY_ROLE, ApplianceApp
from appliance.tui.screens.ask import AskScreen
from appliance.tui.screens.audit import AuditScreen
from appliance.tui.screens.dialogs import CitationScreen, ConfirmScreen, FlagScreen
from appliance.tui.screens.library import LibraryScreen
from appliance.tui.screens.login import LoginScreen
from appliance.tui.screens.specialists import (
    SpecialistsScreen,
    classification_text,
    extraction_text,
    labels_text,
    metrics_text,
)
from appliance.tui.screens.updates import UpdatesScreen
from appliance.updates.build import build_bundle, load_spec
from appliance.updates.check import trust_root
from appliance.updates.keys import init_keys
from tests.helpers import BUILD_PASS, ScriptedEngine, bundle_spec, store_copy
from tests.pilot import PASS, login, notices, run, settle, tui_appliance


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory, model_store: ModelStore) -> Iterator[Services]:
    s = tui_appliance(tmp_path_factory.mktemp("tui"), model_store)
    yield s
    s.close()


async def ask(app: ApplianceApp, pilot, question: str) -> AskScreen:
    """Ask and wait for the answer; a failed answer fails at once, with the notice the user saw."""
    screen = app.screen
    assert isinstance(screen, AskScreen)
    box = screen.query_one("#question", Input)
    box.value = question
    box.focus()
    await pilot.press("enter")
    await settle(app, pilot, lambda: screen.busy is None)
    if screen.last is None or screen.last.question != question:
        raise AssertionError(f"no answer to {question!r}; notices: {notices(app)}")
    return screen


def test_login_refuses_then_opens_the_ask_screen(services: Services) -> None:
    async def body(app: ApplianceApp, pilot) -> None:
        await login(app, pilot, "ann", "not the passphrase!")
        assert isinstance(app.screen, LoginScreen)
        assert "wrong user name or passphrase" in str(app.screen.query_one("#login-message", Static).render())
        await login(app, pilot, "ann")
        assert isinstance(app.screen, AskScreen)
        assert "ann (analyst)" in app.title and "UNCLASSIFIED" in app.sub_title
    run(services, body)
    assert services.audit().check()["entries"] > 0


def test_ask_streams_a_cited_answer_and_opens_the_source(services: Services) -> None:
    async def body(app: ApplianceApp, pilot) -> None:
        await login(app, pilot, "ann")
        screen = await ask(app, pilot, "When does the canteen serve lunch?")
        a = screen.last
        assert a is not None and a.outcome in {"answered", "quoted"} and a.citations[0].doc_id == "canteen.txt"
        assert screen.pieces or a.outcome == "quoted"  # the draft streamed
        assert "UNCLASSIFIED" in str(screen.query_one("#banner", Static).render())
        assert len(screen.query_one("#citations", ListView)) == len(a.citations)
        await pilot.press("ctrl+o")
        await settle(app, pilot, lambda: isinstance(app.screen, CitationScreen))
        assert "noon" in str(app.screen.query_one("#citation-text", Static).render())
        await pilot.press("escape")
        await pilot.press("ctrl+t")
        await settle(app, pilot, lambda: "retrieve" in str(screen.query_one("#steps-text", Static).render()))
        assert "session UNCLASSIFIED" in app.sub_title
        await pilot.press("f4")
        await settle(app, pilot)
        rows = [app.screen.query_one("#system", DataTable).get_row_at(i)
                for i in range(app.screen.query_one("#system", DataTable).row_count)]
        info = {r[0]: r[1] for r in rows}
        assert "generator smollm2-135m-instruct" in info and "index vectors" in info
        assert info["tokens/s of the last answers"] != "no answer yet" or a.outcome == "quoted"
    run(services, body)


def test_an_analyst_never_sees_what_they_may_not_read(services: Services) -> None:
    async def body(app: ApplianceApp, pilot) -> None:
        await login(app, pilot, "ann")
        screen = await ask(app, pilot, "How often are cipher keys rotated?")
        assert all(c.doc_id != "keys.txt" for c in screen.last.citations)
        assert "Monday" not in screen.last.text
        await pilot.press("f3")
        await settle(app, pilot)
        table = app.screen.query_one("#docs", DataTable)
        assert table.row_count == 2  # the SECRET:CRYPTO document is not even listed
    run(services, body)


def test_cancel_stops_an_answer(services: Services) -> None:
    agent = services.agent()
    original = agent.retriever.retrieve
    gate = threading.Event()

    def slow(*args, **kw):
        gate.wait(5)
        return original(*args, **kw)

    async def body(app: ApplianceApp, pilot) -> None:
        await login(app, pilot, "ann")
        screen = app.screen
        box = screen.query_one("#question", Input)
        box.value = "When does the canteen serve lunch?"
        box.focus()
        await pilot.press("enter")
        await pilot.pause(0.2)
        assert screen.busy is not None
        await pilot.press("escape")
        gate.set()
        await settle(app, pilot, lambda: screen.busy is None and screen.last is not None)
        assert screen.last.outcome == "cancelled" and screen.last.citations == []

    agent.retriever.retrieve = slow  # a seam: hold retrieval so the cancel lands mid-answer
    try:
        run(services, body)
    finally:
        agent.retriever.retrieve = original


def test_the_engine_killed_mid_answer_gives_a_notice_and_a_usable_screen(services: Services) -> None:
    import os
    import signal

    async def body(app: ApplianceApp, pilot) -> None:
        await login(app, pilot, "ann")
        screen = app.screen
        engine = services.engine()
        first_host = engine.host_pid
        box = screen.query_one("#question", Input)
        box.value = "When does the canteen serve lunch?"
        box.focus()
        await pilot.press("enter")
        await settle(app, pilot, lambda: bool(screen.pieces) or screen.busy is None)
        assert screen.pieces, f"no draft streamed; notices: {notices(app)}"
        os.kill(first_host, signal.SIGKILL)  # mid-stream: the draft has started
        await settle(app, pilot, lambda: screen.busy is None)
        said = notices(app)
        assert any("Answering failed: llama.cpp host died (killed by SIGKILL)" in n and "try again" in n
                   for n in said), said
        assert screen.last is None or screen.last.question != "When does the canteen serve lunch?"
        assert "(no answer)" in str(screen.query_one(".draft", Static).render())
        assert screen.query_one("#question", Input).disabled is False
        # the screen is usable: the next question is answered by the restarted host
        answered = await ask(app, pilot, "When does the canteen serve lunch?")
        assert answered.last.citations and services.engine().host_pid != first_host

    run(services, body)


def test_a_build_that_crashes_the_selftest_is_named_and_the_screen_stays_usable(
        tmp_path: Path, model_store: ModelStore) -> None:
    """The host double dies on its first decode: no engine starts, the notice says why and how to fix it."""
    import sys

    store = store_copy(model_store, tmp_path / "models")
    (store.root / "selftest.json").unlink(missing_ok=True)
    s = build_services(load_settings({"APPLIANCE_DATA_DIR": str(tmp_path / "data"),
                                      "APPLIANCE_MODELS_DIR": str(store.root)}))
    s.host_command = (sys.executable, str(Path(__file__).parent / "crashing_host.py"))
    s.accounts().add("root", role="admin", level="TOP SECRET", passphrase=PASS, by=None)
    s.accounts().add("ann", role="analyst", level="UNCLASSIFIED", passphrase=PASS, by=s.accounts().get("root"))

    async def body(app: ApplianceApp, pilot) -> None:
        await login(app, pilot, "ann")
        await settle(app, pilot, lambda: app.engine_ready.is_set())
        screen = app.screen
        box = screen.query_one("#question", Input)
        box.value = "When does the canteen serve lunch?"
        box.focus()
        await pilot.press("enter")
        await settle(app, pilot, lambda: screen.busy is None)
        said = notices(app)
        assert any(n.startswith("Loading the models failed: llama.cpp failed its start-up self-test") for n in said)
        refusals = [n for n in said if n.startswith("Answering failed: llama.cpp failed its start-up self-test")]
        assert refusals and "killed by SIGSEGV" in refusals[0] and "llama-rebuild" in refusals[0], said
        assert "(no answer)" in str(screen.query_one(".draft", Static).render())
        await pilot.press("f4")  # the rest of the appliance still works
        await settle(app, pilot)
        assert app.screen.query_one("#system", DataTable).row_count > 0

    try:
        run(s, body)
    finally:
        s.close()


def test_flag_an_answer_as_wrong_with_the_right_one(services: Services) -> None:
    async def body(app: ApplianceApp, pilot) -> None:
        await login(app, pilot, "ann")
        screen = await ask(app, pilot, "Where are USB drives scanned?")
        await pilot.press("ctrl+f")
        await settle(app, pilot, lambda: isinstance(app.screen, FlagScreen))
        app.screen.query_one("#correct", Input).value = "At the media kiosk."
        app.screen.query_one("#source", Input).value = "media-policy"
        await pilot.click("#wrong")
        await settle(app, pilot, lambda: any("the answer is marked wrong" in n for n in notices(app)))
        rows = services.agent_store().feedback("ann")
        assert rows and rows[-1]["verdict"] == "wrong" and rows[-1]["correct_answer"] == "At the media kiosk."
        assert rows[-1]["correct_source"] == "media-policy"
        assert rows[-1]["trace_id"] == screen.last.trace_id
    run(services, body)


def test_library_search_full_text(services: Services) -> None:
    async def body(app: ApplianceApp, pilot) -> None:
        await login(app, pilot, "olga")
        await pilot.press("f3")
        await settle(app, pilot)
        assert isinstance(app.screen, LibraryScreen)
        assert app.screen.query_one("#docs", DataTable).row_count == 3
        box = app.screen.query_one("#search", Input)
        box.value = "cipher keys"
        box.focus()
        await pilot.press("enter")
        await settle(app, pilot, lambda: app.screen.query_one("#results", DataTable).row_count > 0)
        first = app.screen.query_one("#results", DataTable).get_row_at(0)
        assert "SECRET:CRYPTO" in first[2]
    run(services, body)


def test_audit_export_with_progress(services: Services, tmp_path: Path) -> None:
    out = tmp_path / "media" / "audit"

    async def body(app: ApplianceApp, pilot) -> None:
        await login(app, pilot, "aud")
        await pilot.press("f5")
        await settle(app, pilot)
        assert isinstance(app.screen, AuditScreen)
        assert app.screen.query_one("#entries", DataTable).row_count > 0
        app.screen.query_one("#export-dir", Input).value = str(out)
        await pilot.click("#export")
        await settle(app, pilot, lambda: "Exported" in str(app.screen.query_one("#audit-status", Static).render()))
        await pilot.click("#verify")
        await settle(app, pilot, lambda: "verified" in str(app.screen.query_one("#audit-status", Static).render()))
    run(services, body)
    assert any(e.value()["kind"] == "audit.view" and e.value()["user"] == "aud" for e in services.audit().entries())
    assert verify_export(out).entries > 0


def test_role_gating_hides_and_refuses(services: Services) -> None:
    async def body(app: ApplianceApp, pilot) -> None:
        await login(app, pilot, "ann")
        await pilot.press("f5")
        await pilot.pause()
        assert isinstance(app.screen, AskScreen) and "audit" not in app._installed_screens
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Go to Audit" not in titles and "Go to Ask" in titles
        with pytest.raises(NotPermittedError, match="audit.export needs the role"):
            audit_use.export_audit(services, app.account, Path("/tmp/never"))  # the service refuses too
        await pilot.press("ctrl+l")
        await pilot.pause()
        await login(app, pilot, "root")
        await pilot.press("f5")
        await settle(app, pilot)
        assert isinstance(app.screen, AuditScreen) and not app.screen.query("#export")  # admins check, not export
        assert not app.screen.query("#entries")  # nor read other users' entries
    run(services, body)


def test_idle_timeout_returns_to_login(services: Services) -> None:
    async def body(app: ApplianceApp, pilot) -> None:
        await login(app, pilot, "ann")
        assert isinstance(app.screen, AskScreen)
        app.last_input -= 10_000  # as if the analyst walked away
        await settle(app, pilot, lambda: isinstance(app.screen, LoginScreen) and app.screen.query("#login-message"),
                     timeout=5)  # switched to, and composed
        assert "idle" in str(app.screen.query_one("#login-message", Static).render())
        assert app.account is None
    run(services, body, idle_check_s=0.1)


def test_fits_80x24(services: Services) -> None:
    async def body(app: ApplianceApp, pilot) -> None:
        await login(app, pilot, "ann")
        screen = app.screen
        for wid in ("#question", "#citations", "#messages"):
            region = screen.query_one(wid).region
            assert region.width > 0 and region.height > 0 and region.right <= 80 and region.bottom <= 24
    run(services, body, size=(80, 24))


def test_resume_a_session_and_every_action_is_in_the_palette(services: Services) -> None:
    async def body(app: ApplianceApp, pilot) -> None:
        await login(app, pilot, "olga")
        await ask(app, pilot, "When is the kiosk staffed?")
        first = app.screen.session_id
        await pilot.press("ctrl+n")
        assert app.screen.session_id is None and not app.screen.query(".question")
        await pilot.press("ctrl+s")
        await settle(app, pilot, lambda: app.screen.query("#sessions-list"))
        await pilot.press("enter")
        await settle(app, pilot, lambda: isinstance(app.screen, AskScreen) and app.screen.session_id == first)
        assert "When is the kiosk staffed?" in str(app.screen.query(".question").first().render())
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Toggle steps", "Open source", "Flag answer", "Sessions", "New session", "Go to Audit",
                "Log out"} <= titles
        await pilot.press("f5")
        await settle(app, pilot)
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Verify the audit log", "Export the audit log"} <= titles
    run(services, body)


# -- Workers: one handler turns their failures into notices; the stores are read off the UI thread --------


def test_failure_notices_say_what_failed_and_why() -> None:
    from appliance.errors import AuditWriteError, KnowledgeError
    from appliance.tui.workers import failure_notice

    assert failure_notice("searching", KnowledgeError("no index")) == "Searching failed: no index"
    assert failure_notice("searching", AuditWriteError("disk full")) == "Refused: disk full"
    assert failure_notice("searching", KeyError("x")) == "Searching failed unexpectedly: KeyError: 'x'"


def test_a_worker_failing_unexpectedly_gives_a_notice_and_a_usable_screen(services: Services,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    agent = services.agent()

    def broken(*args, **kw):  # noqa: ANN002, ANN003, ANN202 - not an ApplianceError: a bug, as the user sees one
        raise RuntimeError("the planner tripped")

    async def body(app: ApplianceApp, pilot) -> None:
        await login(app, pilot, "ann")
        screen = app.screen
        assert isinstance(screen, AskScreen)
        with monkeypatch.context() as m:
            m.setattr(agent, "ask", broken)
            box = screen.query_one("#question", Input)
            box.value = "When does the canteen serve lunch?"
            box.focus()
            await pilot.press("enter")
            await settle(app, pilot, lambda: screen.busy is None)
        said = notices(app)
        assert "Answering failed unexpectedly: RuntimeError: the planner tripped" in said, said
        assert "(no answer)" in str(screen.query_one(".draft", Static).render())
        assert app.is_running and app.screen is screen  # the worker's error did not end the app
        answered = await ask(app, pilot, "When does the canteen serve lunch?")  # and the screen still answers
        assert answered.last.citations

    run(services, body)


def test_a_session_ended_behind_a_worker_returns_to_login(services: Services) -> None:
    async def body(app: ApplianceApp, pilot) -> None:
        await login(app, pilot, "ann")
        services.accounts().logout(app.token)  # ended elsewhere (as `appliance logout` would)
        await pilot.press("f3")  # the library's worker finds the session gone
        await settle(app, pilot, lambda: isinstance(app.screen, LoginScreen) and app.screen.query("#login-message"))
        assert "not logged in" in str(app.screen.query_one("#login-message", Static).render())
        assert app.account is None and not [n for n in notices(app) if "failed" in n]

    run(services, body, warm_engine=False)


def test_steps_sessions_sources_feedback_and_logout_reach_the_stores_off_the_ui_thread(
        services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every store call the Ask screen makes runs in a worker thread, never on the app's (UI) thread."""
    threads: dict[str, list[int]] = {}

    def watched(name: str, call: Callable) -> Callable:
        def wrapper(*args, **kw):  # noqa: ANN002, ANN003, ANN202
            threads.setdefault(name, []).append(threading.get_ident())
            return call(*args, **kw)
        return wrapper

    store, accounts = services.agent_store(), services.accounts()
    for name in ("trace", "sessions", "turns"):
        monkeypatch.setattr(store, name, watched(name, getattr(store, name)))
    monkeypatch.setattr(documents, "show_document", watched("show_document", documents.show_document))
    monkeypatch.setattr(answers, "record_feedback", watched("record_feedback", answers.record_feedback))
    monkeypatch.setattr(accounts, "logout", watched("logout", accounts.logout))
    ui: list[int] = []

    async def body(app: ApplianceApp, pilot) -> None:
        ui.append(threading.get_ident())
        await login(app, pilot, "ann")
        screen = await ask(app, pilot, "When does the canteen serve lunch?")
        await pilot.press("ctrl+t")  # the steps of the answer
        await settle(app, pilot, lambda: "retrieve" in str(screen.query_one("#steps-text", Static).render()))
        await pilot.press("ctrl+o")  # its first source, in context
        await settle(app, pilot, lambda: isinstance(app.screen, CitationScreen))
        await pilot.press("escape")
        await pilot.press("ctrl+s")  # the sessions, then resume one
        await settle(app, pilot, lambda: app.screen.query("#sessions-list"))
        await pilot.press("enter")
        await settle(app, pilot, lambda: "turns" in threads)
        await settle(app, pilot)
        await pilot.press("ctrl+f")  # feedback
        await settle(app, pilot, lambda: isinstance(app.screen, FlagScreen))
        await pilot.click("#right")
        await settle(app, pilot, lambda: any("the answer is marked right" in n for n in notices(app)))
        await pilot.press("ctrl+l")
        await settle(app, pilot, lambda: "logout" in threads)

    run(services, body)
    assert set(threads) == {"trace", "sessions", "turns", "show_document", "record_feedback", "logout"}
    assert ui and all(t != ui[0] for ts in threads.values() for t in ts), threads


# -- Updates: signed bundles verified, applied and rolled back over the real update code --------


@pytest.fixture
def appliance(tmp_path: Path) -> Services:
    """A fresh appliance on the scripted engine (embeddings from a word hash, as the update tests do)."""
    s = build_services(load_settings({"APPLIANCE_DATA_DIR": str(tmp_path / "appliance")}), engine=ScriptedEngine())
    acc = s.accounts()
    acc.add("root", role="admin", level="TOP SECRET", compartments=["CRYPTO"], passphrase=PASS, by=None)
    admin = acc.get("root")
    for name, role, level, comps in (("olga", "officer", "SECRET", ["CRYPTO"]), ("ann", "analyst", "SECRET", []),
                                     ("aud", "auditor", "SECRET", [])):
        acc.add(name, role=role, level=level, compartments=comps, passphrase=PASS, by=admin)
    yield s
    s.close()


def _bundle(tmp_path: Path, release: int, name: str, canteen: str | None = None) -> Path:
    """A real signed bundle (the build station's keys, spec and build), as it arrives on the media."""
    if not (tmp_path / "keys").exists():
        init_keys(tmp_path / "keys", BUILD_PASS)
    spec = bundle_spec(tmp_path, release)
    if canteen is not None:
        (tmp_path / "docs" / "canteen.txt").write_text(canteen)
    build_bundle(load_spec(spec), tmp_path / "keys", BUILD_PASS, tmp_path / "state", tmp_path / name)
    return tmp_path / name


def _trust(appliance: Services, media: Path) -> None:
    """The appliance's first trusted root, provisioned once (`appliance bundle trust`)."""
    trust_root(appliance.update_site(), appliance.accounts().get("olga"), media / "metadata" / "1.root.json")


def _text(screen, selector: str) -> str:
    return str(screen.query_one(selector, Static).render())


def _rows(screen) -> list[list[str]]:
    table = screen.query_one("#generations", DataTable)
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


async def _open_updates(app: ApplianceApp, pilot, media: Path | None = None) -> UpdatesScreen:
    await pilot.press("f6")
    await settle(app, pilot)
    screen = app.screen
    assert isinstance(screen, UpdatesScreen)
    if media is not None:
        screen.query_one("#bundle-dir", Input).value = str(media)
    return screen


async def _step(app: ApplianceApp, pilot, button: str, confirm: bool | None = None) -> None:
    """Press a step's button (answering its confirmation, if it asks) and wait for the step to end."""
    screen = app.screen
    await pilot.click(button)
    if confirm is not None:
        await settle(app, pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.click("#confirm" if confirm else "#cancel")
    await settle(app, pilot, lambda: app.screen is screen and screen.busy is None)
    await settle(app, pilot)


def test_an_officer_verifies_applies_and_rolls_back_a_bundle(appliance: Services, tmp_path: Path) -> None:
    b1 = _bundle(tmp_path, 1, "b1")
    b2 = _bundle(tmp_path, 2, "b2", canteen="The canteen now serves lunch from one o'clock.\n")
    _trust(appliance, b1)

    async def body(app: ApplianceApp, pilot) -> None:
        await login(app, pilot, "olga")
        screen = await _open_updates(app, pilot, b1)
        assert _rows(screen) == [["\u25b6 serving", "0", "(initial)", "0", "", "", ""]]

        await _step(app, pilot, "#bundle-verify")  # the dry run shows the plan
        plan = _text(screen, "#bundle-result")
        assert "VERIFIED" in plan and "northgate-knowledge release 1 for northgate: 2 payload(s)" in plan
        assert "would add 2 document(s): canteen.txt, keys.txt" in plan and "would revoke 0" in plan
        assert {"staging", "verifying", "checking payloads"} <= set(screen.phases)
        assert appliance.generation().generation == 0 and len(_rows(screen)) == 1  # nothing changed

        await _step(app, pilot, "#bundle-apply", confirm=False)  # asked, and said no
        assert appliance.generation().generation == 0 and "VERIFIED" in _text(screen, "#bundle-result")

        await pilot.click("#bundle-apply")
        await settle(app, pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert "would add 2 document(s)" in _text(app.screen, "#confirm-text")  # the dialog shows the plan
        await pilot.click("#confirm")
        await settle(app, pilot, lambda: app.screen is screen and screen.busy is None)
        await settle(app, pilot)
        assert "APPLIED" in _text(screen, "#bundle-result")
        assert "as generation 1" in _text(screen, "#bundle-result") and "2 added" in _text(screen, "#bundle-result")
        assert {"staging", "verifying", "copying the serving generation", "ingesting knowledge", "health check",
                "switching"} <= set(screen.phases)
        bar = screen.query_one("#bundle-progress")
        assert screen.query_one("#bundle-progress-row").display and bar.progress == bar.total
        assert "Applied" in _text(screen, "#bundle-phase")
        rows = _rows(screen)
        assert [r[:4] for r in rows] == [["\u25b6 serving", "1", "northgate-knowledge", "1"],
                                         ["", "0", "(initial)", "0"]]
        assert rows[0][5] == "olga" and rows[0][6] == "2 added"

        screen.query_one("#bundle-dir", Input).value = str(b2)
        await _step(app, pilot, "#bundle-verify")
        assert "would replace 1 document(s): canteen.txt" in _text(screen, "#bundle-result")
        await _step(app, pilot, "#bundle-apply", confirm=True)
        assert "as generation 2" in _text(screen, "#bundle-result")
        assert _rows(screen)[0][:2] == ["\u25b6 serving", "2"]

        await pilot.click("#bundle-rollback")  # default: the generation before the serving one
        await settle(app, pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert "Generation 1 (northgate-knowledge release 1) will serve again" in _text(app.screen, "#confirm-text")
        await pilot.click("#confirm")
        await settle(app, pilot, lambda: app.screen is screen and screen.busy is None)
        await settle(app, pilot)
        assert "generation 1 serves again" in _text(screen, "#bundle-result")
        assert [r[:2] for r in _rows(screen)] == [["", "2"], ["\u25b6 serving", "1"], ["", "0"]]
        assert "highest release applied: 2" in _text(screen, "#generations-title")
        assert appliance.generation().generation == 1
        assert "noon" in appliance.knowledge().catalog.chunks_of("canteen.txt")[0].text  # release 1's text serves

        table = screen.query_one("#generations", DataTable)  # choose generation 2 in the table: roll forward
        table.focus()
        table.move_cursor(row=0)
        await pilot.press("enter")
        await pilot.pause()
        assert screen.chosen == 2
        await pilot.click("#bundle-rollback")
        await settle(app, pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert app.screen.title_text == "Roll forward to generation 2?"
        await pilot.click("#confirm")
        await settle(app, pilot, lambda: app.screen is screen and screen.busy is None)
        await settle(app, pilot)
        assert [r[:2] for r in _rows(screen)] == [["\u25b6 serving", "2"], ["", "1"], ["", "0"]]

    run(appliance, body, warm_engine=False)
    assert appliance.generation().generation == 2
    assert "one o'clock" in appliance.knowledge().catalog.chunks_of("canteen.txt")[0].text
    kinds = [e.value()["kind"] for e in appliance.audit().entries()]
    assert kinds.count("bundle.verify") == 4 and kinds.count("bundle.apply") == 2
    assert kinds.count("bundle.rollback") == 2


def test_a_generation_the_drift_gate_held_is_marked_and_accepted_from_updates(appliance: Services,
                                                                              tmp_path: Path) -> None:
    from appliance.app.gate import _write_held
    from appliance.updates.apply import apply_bundle, rollback

    b1, b2 = _bundle(tmp_path, 1, "b1"), _bundle(tmp_path, 2, "b2", canteen="Lunch is now at one o'clock.\n")
    _trust(appliance, b1)
    olga = appliance.accounts().get("olga")
    apply_bundle(appliance.update_site(), olga, b1)
    apply_bundle(appliance.update_site(), olga, b2)
    rollback(appliance.update_site(), olga, to=1)  # as a failed gate leaves it, held for the officer
    _write_held(appliance, {"generation": 2, "parent": 1, "bundle": "northgate-knowledge", "release": 2,
                            "failed": [{"figure": "gate:qa/token_f1", "before": 0.5, "after": 0.2, "drop": 0.3,
                                        "threshold": 0.05}], "runs": [], "at": "2026-11-24T10:00:00+00:00"})

    async def body(app: ApplianceApp, pilot) -> None:
        await login(app, pilot, "olga")
        screen = await _open_updates(app, pilot)
        assert [r[:2] for r in _rows(screen)] == [["held (drift gate)", "2"], ["\u25b6 serving", "1"], ["", "0"]]
        table = screen.query_one("#generations", DataTable)
        table.focus()
        table.move_cursor(row=0)
        await pilot.press("enter")
        await pilot.pause()
        assert screen.chosen == 2
        await _step(app, pilot, "#bundle-rollback", confirm=True)
        assert [r[:2] for r in _rows(screen)] == [["\u25b6 serving", "2"], ["", "1"], ["", "0"]]

    run(appliance, body, warm_engine=False)
    assert appliance.generation().generation == 2
    accepted = [e.value() for e in appliance.audit().entries() if e.value()["kind"] == "evaluation.gate.accepted"]
    assert accepted and accepted[0]["user"] == "olga" and accepted[0]["generation"] == 2


def test_a_tampered_bundle_shows_why_it_is_refused(appliance: Services, tmp_path: Path) -> None:
    media = _bundle(tmp_path, 1, "b1")
    _trust(appliance, media)
    blob = next((media / "targets" / "knowledge" / "security").iterdir())
    blob.write_bytes(blob.read_bytes().replace(b"monthly", b"yearly!"))  # same length, other bytes

    async def body(app: ApplianceApp, pilot) -> None:
        await login(app, pilot, "olga")
        screen = await _open_updates(app, pilot, media)
        await _step(app, pilot, "#bundle-verify")
        result = screen.query_one("#bundle-result", Static)
        text = str(result.render())
        assert result.has_class("refused") and "REFUSED" in text and "Verifying the bundle failed" in text
        assert "LengthOrHashMismatchError" in text  # the reason, from the TUF client
        assert "stopped while" in _text(screen, "#bundle-phase")
        problems = [n.message for n in app._notifications]
        assert any("Verifying the bundle failed" in m and "LengthOrHashMismatchError" in m for m in problems)

        await _step(app, pilot, "#bundle-apply", confirm=True)  # applying it is refused the same way
        assert "Applying the bundle failed" in _text(screen, "#bundle-result")
        assert _rows(screen) == [["\u25b6 serving", "0", "(initial)", "0", "", "", ""]]
        assert not screen.query_one("#bundle-verify").disabled  # ready for the next bundle

        screen.query_one("#bundle-dir", Input).value = str(tmp_path / "docs")  # not a bundle at all
        await _step(app, pilot, "#bundle-verify")
        assert "has no metadata/ directory: not a bundle" in _text(screen, "#bundle-result")

    run(appliance, body, warm_engine=False)
    assert appliance.generation().generation == 0
    refused = [e.value() for e in appliance.audit().entries() if e.value()["kind"] == "bundle.refused"]
    assert len(refused) == 3 and refused[0]["user"] == "olga"


def test_only_officers_and_admins_reach_updates(appliance: Services, tmp_path: Path) -> None:
    from appliance.access.authz import ACTIONS
    from appliance.app import updates
    from appliance.errors import NotPermittedError

    assert {r for r, names in SCREENS_BY_ROLE.items() if "updates" in names} == set(ACTIONS["bundles.manage"])
    media = _bundle(tmp_path, 1, "b1")
    _trust(appliance, media)

    async def body(app: ApplianceApp, pilot) -> None:
        for name in ("ann", "aud"):
            await login(app, pilot, name)
            await pilot.press("f6")
            await pilot.pause()
            assert isinstance(app.screen, AskScreen) and "updates" not in app._installed_screens
            assert not app.check_action("goto", ("updates",))  # the key is not shown either
            assert "Go to Updates" not in {c.title for c in app.get_system_commands(app.screen)}
            app.action_goto("updates")
            await pilot.pause()
            assert isinstance(app.screen, AskScreen)
            with pytest.raises(NotPermittedError, match="bundles.manage needs the role"):  # the service refuses too
                updates.verify(appliance, app.account, media)
            await pilot.press("ctrl+l")
            await pilot.pause()
        await login(app, pilot, "root")  # administrators may
        screen = await _open_updates(app, pilot)
        assert "Go to Updates" in {c.title for c in app.get_system_commands(screen)}
        assert {"Verify a bundle", "Apply a bundle", "Roll back"} <= {c.title for c in app.get_system_commands(screen)}
        assert len(_rows(screen)) == 1

    run(appliance, body, warm_engine=False)
    assert appliance.generation().generation == 0


# -- Specialists: the fine-tuned adapters installed on the appliance, run over the real engine ---------


@pytest.fixture(scope="module")
def specialist_services(tmp_path_factory: pytest.TempPathFactory, model_store: ModelStore, generator) -> Services:
    """An appliance whose model store (a hard-linked copy of the test models) has a classifier and an extractor."""
    from tests.helpers import ENTITY_TYPES as TYPES
    from tests.helpers import SPECIALIST_LABELS as LABELS
    from tests.helpers import specialist_adapter as _adapter
    root = tmp_path_factory.mktemp("tui-specialists")
    store = store_copy(model_store, root / "models")
    for name, task, labels, seed in (("intent", "classify", LABELS, 1), ("ner", "extract", TYPES, 2)):
        store.add_file(_adapter(generator.path, root / f"{name}.gguf", task, labels, seed), name=name,
                       kind="adapter", source="test", base_sha256=generator.sha256)
    settings = load_settings({"APPLIANCE_DATA_DIR": str(root / "data"), "APPLIANCE_MODELS_DIR": str(store.root),
                              "APPLIANCE_SPECIALISTS_ABSTAIN_THRESHOLD": "0"})  # random adapters: never abstain
    s = build_services(settings)
    acc = s.accounts()
    acc.add("root", role="admin", level="TOP SECRET", compartments=["CRYPTO"], passphrase=PASS, by=None)
    acc.add("ann", role="analyst", level="UNCLASSIFIED", compartments=[], passphrase=PASS, by=acc.get("root"))
    yield s
    s.close()


async def _open_specialists(app: ApplianceApp, pilot) -> SpecialistsScreen:
    await pilot.press("f7")
    await settle(app, pilot)
    screen = app.screen
    assert isinstance(screen, SpecialistsScreen)
    return screen


async def _run_specialist(app: ApplianceApp, pilot, screen: SpecialistsScreen, name: str, text: str) -> str:
    """Choose ``name`` in the table, enter the text, press Enter; the result as shown."""
    table = screen.query_one("#specialists", DataTable)
    table.move_cursor(row=[table.get_row_at(i)[0] for i in range(table.row_count)].index(name))
    await pilot.pause()
    assert screen.chosen == name and name in str(screen.query_one("#specialist-chosen", Static).render())
    box = screen.query_one("#specialist-text", Input)
    box.value = text
    box.focus()
    screen.last = None
    await pilot.press("enter")
    await settle(app, pilot, lambda: screen.running is None)
    if screen.last is None:
        raise AssertionError(f"no result from {name!r}; notices: {notices(app)}")
    return _text(screen, "#specialist-result")


def test_an_analyst_lists_and_classifies_with_a_specialist(specialist_services: Services) -> None:
    from tests.helpers import SPECIALIST_LABELS as LABELS

    async def body(app: ApplianceApp, pilot) -> None:
        await login(app, pilot, "ann")
        assert "Go to Specialists" in {c.title for c in app.get_system_commands(app.screen)}
        screen = await _open_specialists(app, pilot)
        table = screen.query_one("#specialists", DataTable)
        rows = [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]
        assert [r[:3] for r in rows] == [["intent", "classify", "4"], ["ner", "extract", "3"]]
        assert rows[0][4] == "accuracy 0.500" and rows[1][3] == "person, location, corporation"
        assert not screen.query_one("#specialists-empty").display
        assert {"Run the specialist", "Choose a specialist"} <= {c.title for c in app.get_system_commands(screen)}

        shown = await _run_specialist(app, pilot, screen, "intent", "I think my card was stolen")
        c = screen.last
        assert isinstance(c, Classification) and c.label in LABELS and 0 < c.confidence <= 1
        assert f"LABEL  {c.label}  confidence {c.confidence:.2f}" in shown
        assert f"intent (classify) in {c.seconds * 1000:,.0f} ms" in shown

        screen.infos["gone"] = dataclasses.replace(screen.infos["intent"], name="gone")
        screen.chosen = "gone"  # as if a rollback took it away meanwhile
        await pilot.click("#specialist-run")
        await settle(app, pilot, lambda: screen.running is None)
        assert "FAILED" in _text(screen, "#specialist-result") and "no specialist 'gone'" in _text(
            screen, "#specialist-result")
        assert any("Running the specialist failed" in n.message for n in app._notifications)
        assert not screen.query_one("#specialist-run").disabled
    run(specialist_services, body, warm_engine=False)
    runs = [e.value() for e in specialist_services.audit().entries() if e.value()["kind"] == "specialist.classify"]
    assert len(runs) == 1 and runs[0]["user"] == "ann" and runs[0]["adapter"] == "intent"


def test_an_analyst_extracts_entities_anchored_in_the_text(specialist_services: Services) -> None:
    from tests.helpers import ENTITY_TYPES as TYPES

    # Short texts (the random adapter tends to echo a text back: the first as it is, a span; the second with
    # its last character changed, which the text does not contain, so dropped). What holds for any model:
    texts = ["Maria lives in Rome, Italy, with her sister.", "Maria Rossi lives in Rome, near the Vatican."]

    async def body(app: ApplianceApp, pilot) -> None:
        await login(app, pilot, "ann")
        screen = await _open_specialists(app, pilot)
        for text in texts:
            shown = await _run_specialist(app, pilot, screen, "ner", text)
            e = screen.last
            assert isinstance(e, Extraction)
            assert "ENTITIES" in shown and f"{len(e.spans)} found" in shown and "legend:  person   location " in shown
            assert text in shown or e.spans  # the text itself, with the entities highlighted in it
            for s in e.spans:  # only spans the text contains, at their offsets, of the adapter's types
                assert text[s.start:s.end] == s.text and s.kind in TYPES
                assert f"{s.start:>5}\u2013{s.end:<5} {s.kind}" in shown
            if e.spans:  # highlighted in the text and tagged with its type (a later overlapping one is not)
                first = min(e.spans, key=lambda s: (s.start, -s.end))
                assert f"{first.text}[{first.kind}]" in shown
            else:
                assert "No entities in this text." in shown
            assert (f"Dropped {len(e.dropped)} item(s)" in shown) == bool(e.dropped)
    run(specialist_services, body, warm_engine=False)
    runs = [e.value() for e in specialist_services.audit().entries() if e.value()["kind"] == "specialist.extract"]
    assert len(runs) == 2 and runs[0]["adapter"] == "ner"


def test_specialists_empty_state_and_every_role_may_use_them(services: Services) -> None:
    from appliance.access.authz import ACTIONS

    assert {r for r, names in SCREENS_BY_ROLE.items() if "specialists" in names} == set(ACTIONS["specialists.use"])

    async def body(app: ApplianceApp, pilot) -> None:
        await login(app, pilot, "aud")
        screen = await _open_specialists(app, pilot)
        empty = screen.query_one("#specialists-empty", Static)
        assert empty.display and "Specialists arrive in signed bundles; an officer applies them on the Updates " \
                                  "screen" in str(empty.render())
        assert not screen.query_one("#specialists").display and not screen.query_one("#specialist-bar").display
        screen._run()  # the palette's "Run the specialist" with nothing installed
        await pilot.pause()
        assert any("No specialist is installed" in n.message for n in app._notifications)
    run(services, body, warm_engine=False)


def test_specialist_results_render_abstentions_overlaps_and_drops() -> None:
    from appliance.agent.specialists import Span

    abstained = classification_text("my card?", Classification(None, "card_arrival", 0.31, 0.5, 0.0123, "intent"))
    assert "ABSTAINED  abstained \u2014 best guess card_arrival (0.31)  under the threshold 0.50" in abstained.plain
    assert "intent (classify) in 12 ms" in abstained.plain
    text = "Ann met Bob in Oslo."
    e = Extraction([Span("person", "Ann", 0, 3), Span("person", "Ann met", 0, 7), Span("location", "Oslo", 15, 19)],
                   [{"text": "Rome", "type": "location"}], 0.5, "ner")
    shown = extraction_text(text, e, ("person", "location", "corporation"))
    assert "Ann met[person] Bob in Oslo[location]." in shown.plain  # the overlapping span only once
    assert "    0\u20133     person    Ann\n" in shown.plain and "   15\u201319    location  Oslo\n" in shown.plain
    assert "Dropped 1 item(s)" in shown.plain and "\u201cRome\u201d [location]" in shown.plain
    assert labels_text(("card_arrival", "lost_or_stolen_card", "exchange_rate", "reverted_card_payment?")) == \
        "card_arrival, \u2026 +3"  # as many as fit the column, and how many more
    assert labels_text(("person", "location", "corporation")) == "person, location, corporation"
    assert metrics_text({"accuracy": 0.91234, "examples": 40, "config": {"rank": 8}, "early": True}) == \
        "accuracy 0.912, examples 40"
    styles = {str(s.style) for s in shown.spans}
    assert "bold black on yellow" in styles and "bold black on cyan" in styles  # one style per type
