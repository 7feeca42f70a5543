"""Demo commands: ``demo install`` and ``demo bundle`` (registered on ``appliance``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich import box
from rich.table import Table

from appliance.cli._common import console, ingest_progress, phase_progress, services

__all__ = ["register"]


def register(group: click.Group) -> None:
    """Add the ``demo`` group to ``group``."""
    group.add_command(demo)


@click.group()
def demo() -> None:
    """The demo data set: a fictional facility's documents, SciFact abstracts, demo accounts."""


@demo.command("install")
@click.option("--root", type=click.Path(path_type=Path, file_okay=False, exists=True),
              help="The bundle directory (default: bundles/demo of this checkout).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--accounts-only", is_flag=True, help="Only the accounts (the documents then come by `demo bundle`).")
@click.pass_context
def demo_install(ctx: click.Context, root: Path | None, as_json: bool, accounts_only: bool) -> None:
    """Create the demo accounts and ingest the demo documents (idempotent; demo only)."""
    from appliance.app.demo import DEMO_ROOT, install_demo, load_bundle

    svc = services(ctx)
    s = svc.settings
    bundle = load_bundle(root or DEMO_ROOT, scale=svc.scale, knowledge=s.knowledge,
                         min_passphrase_chars=s.access.min_passphrase_chars)
    with ingest_progress("demo accounts", len(bundle.entries), quiet=as_json) as step:
        result = install_demo(svc, bundle.root, progress=step, bundle=bundle, accounts_only=accounts_only)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        _print(result)
    if result["failed"]:
        sys.exit(1)


@demo.command("bundle")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def demo_bundle_command(ctx: click.Context, as_json: bool) -> None:
    """Build the demo's signed bundle (bundles/demo.toml) and apply it as the demo officer (idempotent)."""
    from appliance.app.demo import demo_bundle

    with phase_progress() as step:
        result = demo_bundle(services(ctx), step)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    if result["noop"]:
        console.print(f"the demo bundle (release {result['release']}) is already applied", highlight=False)
        return
    c = result["changes"]
    console.print(f"applied the demo bundle release {result['release']} as generation {result['generation']} in "
                  f"{result['seconds']:.1f} s: {c['added']} added, {c['replaced']} replaced, {c['unchanged']} "
                  f"unchanged, {c['revoked']} revoked", highlight=False)


def _print(result: dict) -> None:
    acc = result["accounts"]
    console.print(f"[bold]accounts[/] created: {', '.join(acc['created']) or '-'}; "
                  f"existing: {', '.join(acc['existing']) or '-'}", highlight=False)
    table = Table(title=f"documents ingested by {result['ingested_by']}", box=box.SIMPLE, pad_edge=False)
    for col in ("collection", "added", "replaced", "unchanged", "failed", "chunks"):
        table.add_column(col, justify="left" if col == "collection" else "right")
    for name, c in result["collections"].items():
        table.add_row(name, *(str(c[k]) for k in ("added", "replaced", "unchanged", "failed", "chunks")))
    console.print(table)
    for f in result["failed"]:
        console.print(f"[red]failed[/] {f['path']}: {f['reason']}", highlight=False)
    for w in result["warnings"]:
        console.print(f"[yellow]warning[/] {w}", highlight=False)
    console.print(f"[dim]{result['seconds']:.1f} s; demo accounts and passphrases: see the README (demo only)[/]")
