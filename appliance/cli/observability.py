"""Observability commands: ``metrics`` and ``trace export`` (registered on ``appliance``)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich import box
from rich.table import Table

from appliance.cli._common import console, current_account, services, trace_group

__all__ = ["register"]



def register(group: click.Group) -> None:
    """Add ``metrics`` and ``trace export`` to ``group``."""
    group.add_command(metrics)
    trace_group(group).add_command(trace_export)


def _rate(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


@click.command("metrics")
@click.option("--hours", type=float, default=24.0, show_default=True, help="The window: requests of the last N hours.")
@click.option("--all", "everything", is_flag=True, help="Every request kept, whatever its age.")
@click.option("--user", help="Only this user's requests.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def metrics(ctx: click.Context, hours: float, everything: bool, user: str | None, as_json: bool) -> None:
    """Request metrics kept on this appliance: latency per step, tokens/s, hit, abstention and flag rates."""
    from appliance.agent.metrics import since_iso
    from appliance.app.answers import request_metrics

    if hours <= 0:
        raise click.UsageError("--hours must be > 0")
    m = request_metrics(services(ctx), current_account(ctx), since=None if everything else since_iso(hours),
                        user=user)
    if as_json:
        click.echo(json.dumps(m, indent=2))
        return
    window = "every request kept" if everything else f"the last {hours:g} h"
    lat = m["latency"]
    console.print(f"[bold]{m['requests']} requests[/] in {window}"
                  f"{' by ' + user if user else ''}: p50 {_ms(lat['p50_ms'])} ms, p95 {_ms(lat['p95_ms'])} ms",
                  highlight=False)
    tps = m["tokens_per_s"]
    console.print(f"abstained {_rate(m['abstention_rate'])}, flagged by analysts {_rate(m['analyst_flag_rate'])}, "
                  f"sentences the verifier flagged {_rate(m['verifier_flag_rate'])}; searches with evidence "
                  f"{_rate(m['retrieval']['hit_rate'])} of {m['retrieval']['searches']}, questions answered from a "
                  f"source {_rate(m['retrieval']['evidence_rate'])}; "
                  f"{'-' if tps is None else f'{tps:.0f}'} tokens/s", highlight=False)
    table = Table("step", "count", "p50 ms", "p95 ms", "max ms", "tokens", box=box.SIMPLE,
                  title="per step (histograms in --json)")
    for name, s in sorted(m["steps"].items(), key=lambda kv: -(kv[1]["p95_ms"] or 0)):
        table.add_row(name, str(s["count"]), _ms(s["p50_ms"]), _ms(s["p95_ms"]), _ms(s["max_ms"]),
                      str(m["tokens"].get(name, 0)))
    console.print(table)


@click.command("export")
@click.argument("out", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--hours", type=float, help="Only requests of the last N hours (default: every one kept).")
@click.option("--user", help="Only this user's requests.")
@click.option("--with-text", is_flag=True, help="Include each question and answer (they may be classified).")
@click.pass_context
def trace_export(ctx: click.Context, out: Path, hours: float | None, user: str | None, with_text: bool) -> None:
    """Write requests' traces as OpenTelemetry JSON (OTLP) for the facility's own tools; audited."""
    from appliance.agent.metrics import since_iso
    from appliance.app.answers import export_traces

    traces, spans = export_traces(services(ctx), current_account(ctx), out, since=since_iso(hours), user=user,
                                  with_text=with_text, hours=hours)
    console.print(f"wrote {traces} traces ({spans} spans) to {out}", highlight=False)
