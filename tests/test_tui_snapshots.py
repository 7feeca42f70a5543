"""Snapshots of each screen (pytest-textual-snapshot): what the user sees, kept under review.

Run `pytest tests/test_tui_snapshots.py --snapshot-update` after an intended change of
look, and review the SVGs in tests/__snapshots__/. Times, disk figures, speeds and the air
gap's state are pinned so that a snapshot changes only when the screen does.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.access.labels import Labels
from appliance.app import documents
from appliance.config import load_settings
from appliance.runtime.model_store import ModelStore
from appliance.services import Services, build_services
from appliance.tui.app import ApplianceApp

PASS = "a long enough passphrase"
SIZE = (100, 30)
AIRGAP = {"guard_installed": False, "guard_enabled": False, "blocked_attempts": 0, "offline_env": False,
          "interfaces": ["eth0", "ifb0", "ifb1", "lo"], "network_isolated": False}


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory, model_store: ModelStore) -> Services:
    mp = pytest.MonkeyPatch()
    mp.setattr("appliance.audit.log._now", lambda: "2026-11-24T08:00:00.000Z")
    mp.setattr("appliance.access.accounts._now_iso", lambda: "2026-11-24T08:00:00+00:00")
    root = tmp_path_factory.mktemp("snap")
    settings = load_settings({"APPLIANCE_DATA_DIR": str(root / "data"), "APPLIANCE_MODELS_DIR": str(model_store.root)})
    s = build_services(settings)
    acc = s.accounts()
    acc.add("root", role="admin", level="TOP SECRET", compartments=["CRYPTO"], passphrase=PASS, by=None)
    admin = acc.get("root")
    acc.add("ann", role="analyst", level="SECRET", compartments=["CRYPTO"], passphrase=PASS, by=admin)
    acc.add("aud", role="auditor", level="CONFIDENTIAL", passphrase=PASS, by=admin)
    docs = {"canteen.txt": ("UNCLASSIFIED", "The canteen serves lunch from noon until two in the afternoon on "
                                            "weekdays.\n"),
            "keys.txt": ("SECRET:CRYPTO", "Cipher keys for the secure link are rotated on the first Monday of "
                                          "each month.\n")}
    for name, (labels, text) in docs.items():
        (root / name).write_text(text)
        level, _, comps = labels.partition(":")
        documents.ingest(s, admin, [root / name], Labels(level, frozenset(filter(None, comps.split(",")))),
                          collection="facility-handbook" if name == "canteen.txt" else "security")
    yield s
    s.close()
    mp.undo()


@pytest.fixture(autouse=True)
def _steady(monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil as _shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("appliance.tui.screens.system.shutil", type("S", (), {
        "disk_usage": staticmethod(lambda _p: usage(100 * 2**30, 40 * 2**30, 60 * 2**30))}))
    monkeypatch.setattr("appliance.tui.screens.system._size", lambda _p: 2**20)
    monkeypatch.setattr("appliance.tui.screens.system.request_metrics", lambda _store, since, user=None: {
        "requests": 12, "outcomes": {"answered": 9, "abstained": 3}, "abstention_rate": 0.25,
        "analyst_flag_rate": 1 / 12, "verifier_flag_rate": 0.1, "tokens_per_s": 98.5,
        "latency": {"p50_ms": 812.0, "p95_ms": 2140.0}, "retrieval": {"hit_rate": 0.75, "searches": 16},
        "steps": {"synthesize": {"p95_ms": 1300.0}, "retrieve": {"p95_ms": 30.0}, "verify": {"p95_ms": 25.0}}})
    monkeypatch.setattr("appliance.audit.log._now", lambda: "2026-11-24T08:00:00.000Z")
    # the guard's state depends on what the process built before (build_services installs it), the interfaces on
    # the machine: pinned, as recorded
    monkeypatch.setattr("appliance.airgap.airgap_status", lambda: AIRGAP)
    assert _shutil  # the real module is untouched elsewhere


def _login(name: str):
    async def run_before(pilot) -> None:
        from appliance.tui.screens.login import LoginScreen

        app = pilot.app
        await pilot.pause()
        assert isinstance(app.screen, LoginScreen)
        app.screen.query_one("#name").value = name
        app.screen.query_one("#passphrase").value = PASS
        await pilot.click("#login")
        await _settle(pilot)
    return run_before


async def _settle(pilot, until=None) -> None:
    import time

    end = time.monotonic() + 120
    while time.monotonic() < end:
        await pilot.pause(0.05)
        busy = [w for w in pilot.app.workers if w.is_running and w.group != "warm"]
        if not busy and (until is None or until()):
            await pilot.pause(0.2)
            return
    raise AssertionError("the UI did not settle")


def _app(services: Services) -> ApplianceApp:
    return ApplianceApp(services, warm_engine=False)


async def _still(pilot) -> None:
    """No focused input: a blinking cursor would make two snapshots of one screen differ."""
    pilot.app.screen.set_focus(None)
    await pilot.pause(0.1)


def test_login_screen(snap_compare, services: Services) -> None:
    async def run_before(pilot) -> None:
        await pilot.pause()
        await _still(pilot)
    assert snap_compare(_app(services), terminal_size=SIZE, run_before=run_before)


def test_ask_screen_with_a_cited_answer(snap_compare, services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real agent answers; the sentence the model wrote is pinned before it is shown.

    Greedy decoding flips on near-ties where CPU kernels round differently, so the words of
    a written answer (and so whether it verifies or is quoted) are not the same on every
    machine; the citations and the marking come from retrieval and the labels, and are shown
    as computed.
    """
    import dataclasses

    agent = services.agent()
    real = agent.ask
    answers: list = []

    def pinned(question, principal, **kw):  # noqa: ANN001, ANN202
        answer = real(question, principal, **kw)
        answers.append(answer)
        if answer.citations:  # answered, or quoted where the written sentence did not verify
            return dataclasses.replace(answer, outcome="answered",
                                       text="Cipher keys for the secure link are rotated monthly. [1]")
        return answer

    monkeypatch.setattr(agent, "ask", pinned)

    async def run_before(pilot) -> None:
        await _login("ann")(pilot)
        box = pilot.app.screen.query_one("#question")
        box.value = "How often are cipher keys rotated?"
        box.focus()
        await pilot.press("enter")
        await _settle(pilot, lambda: pilot.app.screen.last is not None)
        await _still(pilot)
    assert snap_compare(_app(services), terminal_size=SIZE, run_before=run_before)
    assert answers and answers[0].citations and answers[0].citations[0].doc_id == "keys.txt"


def test_library_screen(snap_compare, services: Services) -> None:
    async def run_before(pilot) -> None:
        await _login("ann")(pilot)
        await pilot.press("f3")
        await _settle(pilot)
        await _still(pilot)
    assert snap_compare(_app(services), terminal_size=SIZE, run_before=run_before)


def test_system_screen(snap_compare, services: Services) -> None:
    async def run_before(pilot) -> None:
        await _login("ann")(pilot)
        pilot.app.answer_speeds.clear()
        await pilot.press("f4")
        await _settle(pilot)
        await _still(pilot)
    assert snap_compare(_app(services), terminal_size=SIZE, run_before=run_before)


def test_audit_screen(snap_compare, services: Services) -> None:
    async def run_before(pilot) -> None:
        await _login("aud")(pilot)
        await pilot.press("f5")
        await _settle(pilot)
        pilot.app.screen.query_one("#audit-filter").value = "user."
        pilot.app.screen.query_one("#audit-filter").focus()
        await pilot.press("enter")
        await _settle(pilot)
        await _still(pilot)
    assert snap_compare(_app(services), terminal_size=SIZE, run_before=run_before)


def test_updates_screen_with_a_verified_plan(snap_compare, services: Services, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.updates.build import build_bundle, load_spec
    from appliance.updates.check import trust_root
    from appliance.updates.keys import init_keys
    from tests.helpers import BUILD_PASS, bundle_spec

    init_keys(tmp_path / "keys", BUILD_PASS)
    build_bundle(load_spec(bundle_spec(tmp_path, 1)), tmp_path / "keys", BUILD_PASS, tmp_path / "state",
                 tmp_path / "b1")
    trust_root(services.update_site(), services.accounts().get("root"), tmp_path / "b1" / "metadata" / "1.root.json")
    monkeypatch.chdir(tmp_path)  # a relative bundle path: the snapshot does not show the tmp directory

    async def run_before(pilot) -> None:
        await _login("root")(pilot)
        await pilot.press("f6")
        await _settle(pilot)
        screen = pilot.app.screen
        screen.query_one("#bundle-dir").value = "b1"
        await pilot.click("#bundle-verify")
        await _settle(pilot, lambda: screen.busy is None and screen.verified is not None)
        await _still(pilot)
    assert snap_compare(_app(services), terminal_size=SIZE, run_before=run_before)


@pytest.fixture(scope="module")
def specialist_services(tmp_path_factory: pytest.TempPathFactory, model_store: ModelStore, generator) -> Services:
    """A classifier and an extractor in a hard-linked copy of the test models (as in tests/test_tui.py)."""
    from tests.helpers import ENTITY_TYPES as TYPES
    from tests.helpers import SPECIALIST_LABELS as LABELS
    from tests.helpers import specialist_adapter as _adapter
    from tests.helpers import store_copy

    root = tmp_path_factory.mktemp("snap-specialists")
    store = store_copy(model_store, root / "models")
    for name, task, labels, seed in (("intent", "classify", LABELS, 1), ("ner", "extract", TYPES, 2)):
        store.add_file(_adapter(generator.path, root / f"{name}.gguf", task, labels, seed), name=name,
                       kind="adapter", source="test", base_sha256=generator.sha256)
    s = build_services(load_settings({"APPLIANCE_DATA_DIR": str(root / "data"), "APPLIANCE_MODELS_DIR": str(store.root),
                                      "APPLIANCE_SPECIALISTS_ABSTAIN_THRESHOLD": "0"}))
    acc = s.accounts()
    acc.add("root", role="admin", level="TOP SECRET", compartments=["CRYPTO"], passphrase=PASS, by=None)
    acc.add("ann", role="analyst", level="SECRET", compartments=["CRYPTO"], passphrase=PASS, by=acc.get("root"))
    yield s
    s.close()


def test_specialists_screen_with_a_classification(snap_compare, specialist_services: Services,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The classification runs on the real engine; what the model computed is pinned before it is shown.

    The label of a random adapter is a near-tie and its confidence differs in the second
    decimal between CPU kernels (AVX2 and AVX-512 sum in other orders), so the snapshot shows
    fixed values: it tests the rendering, and test_tui.py tests the real result.
    """
    import dataclasses

    from appliance.app import specialists as specialist_use
    from tests.helpers import SPECIALIST_LABELS as LABELS

    real = specialist_use.run_specialist
    ran: list = []

    def pinned(services, account, name, task, texts):  # noqa: ANN001, ANN202
        results = real(services, account, name, task, texts)
        ran.extend(results)
        return [dataclasses.replace(r, label="lost_or_stolen_card", best="lost_or_stolen_card", confidence=0.87)
                for r in results]

    monkeypatch.setattr(specialist_use, "run_specialist", pinned)
    monkeypatch.setattr("appliance.tui.screens.specialists.latency", lambda _seconds: "42 ms")  # pinned

    async def run_before(pilot) -> None:
        await _login("ann")(pilot)
        await pilot.press("f7")
        await _settle(pilot)
        screen = pilot.app.screen
        box = screen.query_one("#specialist-text")
        box.value = "I think my card was stolen"
        box.focus()
        await pilot.press("enter")
        await _settle(pilot, lambda: screen.running is None and screen.last is not None)
        await _still(pilot)
    assert snap_compare(_app(specialist_services), terminal_size=SIZE, run_before=run_before)
    assert len(ran) == 1 and ran[0].best in LABELS and 0 < ran[0].confidence <= 1  # the real model ran


def test_snapshots_are_kept() -> None:
    here = Path(__file__).parent / "__snapshots__" / "test_tui_snapshots"
    assert len(list(here.glob("*.svg"))) >= 7, "run with --snapshot-update once and commit tests/__snapshots__"
