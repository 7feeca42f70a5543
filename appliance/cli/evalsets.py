"""Evaluation set commands: ``evalset list|import|from-feedback|show|export|delete`` (registered on ``appliance``)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich import box
from rich.table import Table

from appliance.cli._common import console, current_account, services

__all__ = ["register"]


def register(group: click.Group) -> None:
    """Add the ``evalset`` group to ``group``."""
    group.add_command(evalset_group)


@click.group("evalset")
def evalset_group() -> None:
    """Evaluation sets: the facility's own questions and labelled texts (officers, admins)."""


@evalset_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def evalset_list(ctx: click.Context, as_json: bool) -> None:
    """The stored sets: items by kind, where they came from, the last run."""
    from appliance.app.evaluation import list_sets

    sets = list_sets(services(ctx), current_account(ctx))
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
    from appliance.app.evaluation import import_set

    made = import_set(services(ctx), current_account(ctx), name, file, description=description, replace=replace)
    kinds = ", ".join(f"{n} {k}" for k, n in made.kinds().items())
    console.print(f"set {made.name}: {len(made.items)} items ({kinds}), digest {made.digest[:16]}", highlight=False)


@evalset_group.command("from-feedback")
@click.argument("name")
@click.option("--description", default="", help="What the set measures.")
@click.option("--replace", is_flag=True, help="Replace a set of this name.")
@click.pass_context
def evalset_from_feedback(ctx: click.Context, name: str, description: str, replace: bool) -> None:
    """Make the set NAME from the answers analysts marked right or wrong (with the answer or source they gave)."""
    from appliance.app.evaluation import set_from_feedback

    made, skipped = set_from_feedback(services(ctx), current_account(ctx), name, replace=replace,
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
    from appliance.app.evaluation import get_set

    s = get_set(services(ctx), current_account(ctx), name)
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
    from appliance.app.evaluation import export_set

    n = export_set(services(ctx), current_account(ctx), name, out)
    console.print(f"wrote {n} items to {out}", highlight=False)


@evalset_group.command("delete")
@click.argument("name")
@click.pass_context
def evalset_delete(ctx: click.Context, name: str) -> None:
    """Delete a set (its past runs stay on record)."""
    from appliance.app.evaluation import delete_set

    delete_set(services(ctx), current_account(ctx), name)
    console.print(f"deleted set {name}", highlight=False)
