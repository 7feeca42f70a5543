"""`appliance doctor`: models and digests, the engine build, the air-gap status."""

from __future__ import annotations

import sys
from typing import Any

import click
from rich import box
from rich.markup import escape
from rich.table import Table

from appliance.cli._common import console, services

__all__ = ["register"]


def register(group: click.Group) -> None:
    """Add ``doctor`` to ``group``."""
    group.add_command(doctor)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--verify", is_flag=True, help="Re-hash every model blob too.")
@click.option("--no-engine", is_flag=True, help="Skip the live check (models load, embed, index, generate).")
@click.pass_context
def doctor(ctx: click.Context, as_json: bool, verify: bool, no_engine: bool) -> None:
    """Report models and digests, the engine build, and the air-gap status."""
    from appliance.app.doctor import dumps, run_doctor

    svc = services(ctx)
    with console.status("checking the appliance…"):
        report = run_doctor(svc, verify=verify, engine=not no_engine)
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
