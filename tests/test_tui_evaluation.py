"""The Evaluation screen with Pilot, over the real services: sets, a run with progress, a report."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console
from textual.widgets import Button, DataTable, Input, Static

from appliance.evaluation.sets import EvalItem
from appliance.runtime.model_store import ModelStore
from appliance.services import Services
from appliance.tui.app import SCREENS_BY_ROLE, ApplianceApp
from appliance.tui.screens.evaluation import EvaluationScreen
from tests.pilot import login, run, settle, tui_appliance


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory, model_store: ModelStore):  # noqa: ANN201 - Services
    s = tui_appliance(tmp_path_factory.mktemp("tui-evaluation"), model_store)
    yield s
    s.close()

ITEMS = [EvalItem("qa", "Where is every USB drive scanned?", {"answers": ["at the media kiosk"],
                                                             "sources": ["kiosk.md"], "unanswerable": False}),
         EvalItem("qa", "When does the canteen serve lunch?", {"answers": ["from noon until two"],
                                                              "sources": ["canteen.txt"], "unanswerable": False})]


def _text(renderable: object) -> str:
    console = Console(width=140, file=io.StringIO(), record=True)
    console.print(renderable)
    return console.export_text()


async def _open(app: ApplianceApp, pilot) -> EvaluationScreen:
    await pilot.press("f8")
    await settle(app, pilot)
    screen = app.screen
    assert isinstance(screen, EvaluationScreen)
    return screen


def test_evaluation_screen_runs_a_set_and_writes_its_report(services: Services, tmp_path: Path) -> None:  # noqa: F811
    from appliance.access.authz import ACTIONS

    assert {r for r, names in SCREENS_BY_ROLE.items() if "evaluation" in names} == set(ACTIONS["evaluation.read"])
    services.eval_store().delete("tui") if any(s["name"] == "tui" for s in services.eval_store().list()) else None

    async def body(app: ApplianceApp, pilot) -> None:
        await login(app, pilot, "olga")
        screen = await _open(app, pilot)
        assert screen.query_one("#eval-empty", Static).display
        services.eval_store().save("tui", ITEMS, by="olga", origin="test")
        screen._load()
        await settle(app, pilot)
        table = screen.query_one("#eval-sets", DataTable)
        assert table.row_count == 1 and not screen.query_one("#eval-empty", Static).display
        await settle(app, pilot, lambda: "has not been run yet" in str(screen.query_one("#eval-result").render()))
        await pilot.click("#eval-run")
        await settle(app, pilot, lambda: screen.report is not None and not screen.running)
        shown = _text(screen.query_one("#eval-result", Static).content)
        assert "recommended:" in shown and "agentic RAG" in shown and "single-shot" in shown
        assert "evaluating 4/4" in str(screen.query_one("#eval-phase").render()) or \
            "done in" in str(screen.query_one("#eval-phase").render())
        screen.query_one("#eval-out", Input).value = str(tmp_path / "report")
        await pilot.click("#eval-write")
        await settle(app, pilot, lambda: (tmp_path / "report" / "qa.png").is_file())
    run(services, body, size=(140, 44), warm_engine=False)
    assert (tmp_path / "report" / "report.md").read_text().startswith("# Evaluation of `tui`")
    [last] = services.eval_store().runs("tui")
    assert last["by"] == "olga" and set(last["report"]["by_kind"]["qa"]["architectures"]) == {
        "single_shot", "agentic", "hybrid"}


def test_an_auditor_sees_runs_but_may_not_start_one(services: Services) -> None:  # noqa: F811
    async def body(app: ApplianceApp, pilot) -> None:
        await login(app, pilot, "aud")
        screen = await _open(app, pilot)
        assert screen.query_one("#eval-run", Button).disabled
    run(services, body, warm_engine=False)
