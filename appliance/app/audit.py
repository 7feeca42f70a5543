"""The audit log for officers: export, check and view; each audited itself."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from appliance.access.accounts import Account
from appliance.app.acting import acting
from appliance.audit.export import ExportFilter, export_log
from appliance.services import Services

__all__ = ["export_audit", "check_audit", "view_entries"]


def export_audit(services: Services, account: Account, out: Path, *, since_checkpoint: bytes | None = None,
                 filt: ExportFilter = ExportFilter(), progress: Callable[[int, int], None] | None = None) -> dict:
    """Write a verifiable export (the export records itself in the log first)."""
    act = acting(services, account, "audit.export")
    return export_log(act.audit, out, by=act.name, since_checkpoint=since_checkpoint, filt=filt, progress=progress)


def check_audit(services: Services, account: Account) -> dict:
    """Re-hash every entry and check every checkpoint of the log."""
    act = acting(services, account, "audit.check")
    return act.audit.check()


def view_entries(services: Services, account: Account, needle: str = "", *, limit: int = 200,
                 scan: int = 4000) -> list[dict]:
    """The newest entries (of the last ``scan``) whose user or kind contains ``needle``, newest first; the
    viewing is audited."""
    act = acting(services, account, "audit.read")
    act.record("audit.view", filter=needle[:200])
    log = act.audit
    rows: list[dict] = []
    for e in reversed(list(log.entries(max(0, log.tree.size - scan)))):
        v = e.value()
        if needle and needle not in (v.get("user") or "") and needle not in v.get("kind", ""):
            continue
        rows.append(v)
        if len(rows) >= limit:
            break
    return rows
