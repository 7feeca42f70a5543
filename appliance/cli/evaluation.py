"""Evaluation set and run commands: ``evalset ...``, ``eval run``, ``eval runs`` (registered on ``appliance``)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich import box
from rich.table import Table

from appliance.cli import _services, console, main
from appliance.cli_knowledge import eval_group
from appliance.evaluation.compare import ARCHITECTURES

__all__: list[str] = []


@main.group("evalset")
def evalset_group() -> None:
    """Evaluation sets: the facility's own questions and labelled texts (officers, admins)."""


@evalset_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def evalset_list(ctx: click.Context, as_json: bool) -> None:
    """The stored sets: items by kind, where they came from, the last run."""
    from appliance.access.authz import authorize
    from appliance.cli_access import current_account

    services = _services(ctx)
    authorize(services.accounts().get(current_account(ctx).name), "evaluation.read")
    sets = services.eval_store().list()
    if as_json:
        click.echo(json.dumps(sets, indent=2))
        return
    table = Table("name", "items", "kinds", "origin", "created", "last run", box=box.SIMPLE)
    for s in sets:
        table.add_row(s["name"], str(s["n_items"]), ", ".join(f"{k} {n}" for k, n in s["kinds"].items()),
                      s["origin"], f"{s['created_at'][:16]} by {s['created_by']}", (s["last_run"] or "never")[:16])
    console.print(table if sets else "no evaluation sets (appliance evalset import NAME FILE, or from-feedback)")


@evalset_group.command("import")
@click.argument("name")
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--description", default="", help="What the set measures.")
@click.option("--replace", is_flag=True, help="Replace a set of this name.")
@click.pass_context
def evalset_import(ctx: click.Context, name: str, file: Path, description: str, replace: bool) -> None:
    """Store FILE as the set NAME: SQuAD .json, claims / questions / export .jsonl, .csv (text,label), .conll."""
    from appliance.cli_access import current_account
    from appliance.evaluation.operations import import_set

    made = import_set(_services(ctx), current_account(ctx), name, file, description=description, replace=replace)
    kinds = ", ".join(f"{n} {k}" for k, n in made.kinds().items())
    console.print(f"set {made.name}: {len(made.items)} items ({kinds}), digest {made.digest[:16]}", highlight=False)


@evalset_group.command("from-feedback")
@click.argument("name")
@click.option("--description", default="", help="What the set measures.")
@click.option("--replace", is_flag=True, help="Replace a set of this name.")
@click.pass_context
def evalset_from_feedback(ctx: click.Context, name: str, description: str, replace: bool) -> None:
    """Make the set NAME from the answers analysts marked right or wrong (with the answer or source they gave)."""
    from appliance.cli_access import current_account
    from appliance.evaluation.operations import set_from_feedback

    made, skipped = set_from_feedback(_services(ctx), current_account(ctx), name, replace=replace,
                                      description=description)
    console.print(f"set {made.name}: {len(made.items)} questions from feedback, digest {made.digest[:16]}",
                  highlight=False)
    for why in skipped[:20]:
        console.print(f"  left out: {why}", highlight=False)


@evalset_group.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def evalset_show(ctx: click.Context, name: str, as_json: bool) -> None:
    """The items of a set."""
    from appliance.access.authz import authorize
    from appliance.cli_access import current_account

    services = _services(ctx)
    authorize(services.accounts().get(current_account(ctx).name), "evaluation.read")
    s = services.eval_store().get(name)
    if as_json:
        click.echo(json.dumps({"name": s.name, "description": s.description, "origin": s.origin,
                               "digest": s.digest, "items": [i.as_dict() for i in s.items]}, indent=2))
        return
    console.print(f"[bold]{s.name}[/] {s.description} ({s.origin}; digest {s.digest[:16]})", highlight=False)
    table = Table("#", "kind", "input", "expected", box=box.SIMPLE)
    for n, item in enumerate(s.items[:200], 1):
        table.add_row(str(n), item.kind, item.input[:70], json.dumps(item.expected, ensure_ascii=False)[:70])
    console.print(table)
    if len(s.items) > 200:
        console.print(f"… and {len(s.items) - 200} more (--json for all)")


@evalset_group.command("export")
@click.argument("name")
@click.argument("out", type=click.Path(path_type=Path, dir_okay=False))
@click.pass_context
def evalset_export(ctx: click.Context, name: str, out: Path) -> None:
    """Write the set as JSONL (one item per line; `evalset import` reads it back)."""
    from appliance.cli_access import current_account
    from appliance.evaluation.operations import export_set

    n = export_set(_services(ctx), current_account(ctx), name, out)
    console.print(f"wrote {n} items to {out}", highlight=False)


@evalset_group.command("delete")
@click.argument("name")
@click.pass_context
def evalset_delete(ctx: click.Context, name: str) -> None:
    """Delete a set (its past runs stay on record)."""
    from appliance.cli_access import current_account
    from appliance.evaluation.operations import delete_set

    delete_set(_services(ctx), current_account(ctx), name)
    console.print(f"deleted set {name}", highlight=False)


@eval_group.command("run")
@click.option("--set", "set_name", required=True, help="The evaluation set (see `appliance evalset list`).")
@click.option("--arch", "archs", multiple=True, type=click.Choice(ARCHITECTURES),
              help="Only these architectures (repeat; default: every applicable one).")
@click.option("--limit", type=int, help="Only the first N items of each kind.")
@click.option("--generator", "generators", multiple=True, metavar="MODEL",
              help="Run the set with each of these generators in turn (repeat), side by side.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              help="Write report.md, report.json and a PNG chart per kind here.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def eval_run(ctx: click.Context, set_name: str, archs: tuple[str, ...], limit: int | None,
             generators: tuple[str, ...], out: Path | None, as_json: bool) -> None:
    """Every applicable architecture on a set, side by side, with a recommendation per task type."""
    from appliance.cli_access import current_account
    from appliance.cli_updates import _progress
    from appliance.evaluation.operations import run_set
    from appliance.evaluation.report import write_report

    services = _services(ctx)
    account = current_account(ctx)
    with _progress() as step:
        report = run_set(services, account, set_name, architectures=archs or ARCHITECTURES, limit=limit,
                         progress=lambda done, total: step("evaluating", done, total), generators=generators)
    written = write_report(report, out) if out else []
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    _print_report(report)
    for path in written:
        console.print(f"wrote {path}", highlight=False)


def _print_report(report: dict) -> None:
    from appliance.evaluation.report import rich_report

    console.print(rich_report(report))


@eval_group.command("report")
@click.argument("run_id")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Write report.md, report.json and a PNG chart per kind here.")
@click.pass_context
def eval_report(ctx: click.Context, run_id: str, out: Path) -> None:
    """Write the report of a past run (see `appliance eval runs`) for the officer to take away."""
    from appliance.access.authz import authorize
    from appliance.cli_access import current_account
    from appliance.evaluation.report import write_report

    services = _services(ctx)
    authorize(services.accounts().get(current_account(ctx).name), "evaluation.read")
    for path in write_report(services.eval_store().run(run_id)["report"], out):
        console.print(f"wrote {path}", highlight=False)


@eval_group.command("runs")
@click.option("--set", "set_name", help="Only this set's runs.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def eval_runs(ctx: click.Context, set_name: str | None, as_json: bool) -> None:
    """Past evaluation runs: when, on which generation, why (manual or a drift gate), the recommendations."""
    from appliance.access.authz import authorize
    from appliance.cli_access import current_account

    services = _services(ctx)
    authorize(services.accounts().get(current_account(ctx).name), "evaluation.read")
    runs = services.eval_store().runs(set_name)
    if as_json:
        click.echo(json.dumps(runs, indent=2))
        return
    table = Table("run", "set", "at", "generation", "trigger", "s", "recommended", box=box.SIMPLE)
    for r in runs:
        recs = ", ".join(f"{k}: {v['recommendation']['architecture']}" for k, v in r["report"]["by_kind"].items())
        table.add_row(r["id"], r["set_name"], r["at"][:19], str(r["generation"]), r["trigger"], f"{r['seconds']:.0f}",
                      recs)
    console.print(table if runs else "no evaluation runs yet")
