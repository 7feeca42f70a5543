"""System: models and adapters, GPU offload, request metrics, index sizes, air gap, disk."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer

from appliance.agent.metrics import request_metrics, since_iso
from appliance.tui.widgets import AppHeader
from appliance.tui.workers import ReportsFailures, in_thread

__all__ = ["SystemScreen", "SystemRead"]


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def _mb(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def metric_rows(m: dict, whose: str = "requests") -> list[tuple[str, str]]:
    """The request metrics of the last day as rows (the same figures as `appliance metrics`)."""
    if not m["requests"]:
        return [(f"{whose} (24 h)", "none yet")]
    lat, ret = m["latency"], m["retrieval"]
    rows = [(f"{whose} (24 h)", f"{m['requests']}: " + ", ".join(f"{n} {k}" for k, n in sorted(m["outcomes"].items()))),
            ("request latency p50 / p95", f"{lat['p50_ms']:,.0f} / {lat['p95_ms']:,.0f} ms"),
            ("abstained / flagged by analysts", f"{_pct(m['abstention_rate'])} / {_pct(m['analyst_flag_rate'])}"),
            ("sentences the verifier flagged", _pct(m["verifier_flag_rate"])),
            ("searches with evidence", f"{_pct(ret['hit_rate'])} of {ret['searches']}"),
            ("tokens/s (generation, 24 h)", "-" if m["tokens_per_s"] is None else f"{m['tokens_per_s']:.0f}")]
    slow = sorted(((s["p95_ms"] or 0.0, name) for name, s in m["steps"].items()), reverse=True)[:4]
    rows.append(("slowest steps (p95)", ", ".join(f"{name} {ms:,.0f} ms" for ms, name in slow)))
    return rows


@dataclass
class SystemRead(Message):
    """The system view's rows: (what, value)."""

    rows: list[tuple[str, str]]


class SystemScreen(ReportsFailures, Screen[None]):
    BINDINGS = [Binding("r", "refresh", "Refresh")]

    def compose(self) -> ComposeResult:
        yield AppHeader()
        yield DataTable(id="system", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def commands(self) -> list[SystemCommand]:
        return [SystemCommand("Refresh the system view", "Read models, index, air gap and disk again",
                              self.action_refresh)]

    def on_mount(self) -> None:
        self.query_one("#system", DataTable).add_columns("what", "value")
        self.action_refresh()

    def on_screen_resume(self) -> None:
        self.action_refresh()

    @in_thread("reading the system state", exclusive=True, group="system")
    def action_refresh(self) -> None:
        from appliance.airgap import airgap_status

        app: Any = self.app
        app.current()
        s = app.services.settings
        rows: list[tuple[str, str]] = []
        for m in app.services.store.list():
            in_use = {s.runtime.generator, s.runtime.embedder,
                      s.runtime.reranker if s.knowledge.rerank else "",
                      s.runtime.verifier if s.agent.entailment else ""} - {""}
            loaded = m.name in in_use or m.kind == "adapter"
            rows.append((f"{m.kind} {m.name}", f"{_mb(m.size)}{' (in use)' if loaded else ''}"))
        rows.append(("GPU offload layers", str(s.runtime.n_gpu_layers) + (" (CPU only)" if not
                                                                           s.runtime.n_gpu_layers else "")))
        speeds = [v for _, v in app.answer_speeds]
        rows.append(("tokens/s of the last answers",
                     ", ".join(f"{v:.0f}" for v in speeds) if speeds else "no answer yet"))
        if app.may("metrics.read"):  # the appliance's requests; anyone else sees their own
            rows += metric_rows(request_metrics(app.services.agent_store(), since=since_iso(24)))
        else:
            rows += metric_rows(request_metrics(app.services.agent_store(), since=since_iso(24),
                                                user=app.current().name), "your requests")
        kb = app.services.knowledge()
        st = kb.stats()
        rows += [(f"index {k}", str(v)) for k, v in st.items()]
        air = airgap_status()
        rows.append(("air gap", ", ".join(f"{k}: {v}" for k, v in air.items()) if isinstance(air, dict)
                     else str(air)))
        du = shutil.disk_usage(s.data_dir)
        rows.append(("disk free", f"{_mb(du.free)} of {_mb(du.total)}"))
        for part in ("knowledge", "audit", "agent.db", "access.db"):
            rows.append((f"data {part}", _mb(_size(s.data_dir / part))))
        self.post_message(SystemRead(rows))

    def on_system_read(self, message: SystemRead) -> None:
        table = self.query_one("#system", DataTable)
        table.clear()
        for k, v in message.rows:
            table.add_row(k, v)
