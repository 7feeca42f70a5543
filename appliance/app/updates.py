"""Signed updates on behalf of an officer: trust the first root, verify, apply (with the drift gate),
roll back, accept a held generation, and the history. ``bundles.manage``; the apply also needs
``evaluation.manage`` when the drift gate runs. Each step audits itself in :mod:`appliance.updates`."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from appliance.access.accounts import Account
from appliance.app.acting import acting
from appliance.app.gate import GateResult, accept_held, apply_with_gate
from appliance.services import Services
from appliance.updates.apply import ApplyResult, history, rollback
from appliance.updates.check import Plan, Progress, trust_root, verify_bundle
from appliance.updates.generations import GenerationInfo

__all__ = ["trust", "verify", "apply", "roll_back", "accept", "generations"]


def trust(services: Services, account: Account, root_file: Path) -> str:
    """Provision the first trusted root; returns its key ids."""
    return trust_root(services.update_site(), acting(services, account, "bundles.manage").account, root_file)


def verify(services: Services, account: Account, media: Path, progress: Progress | None = None,
           now: dt.datetime | None = None) -> Plan:
    """A dry run: verify ``media`` fully and say what would change."""
    by = acting(services, account, "bundles.manage").account
    site = services.update_site()
    return verify_bundle(site, by, media, site.settings.updates.appliance_class, progress, now=now)


def apply(services: Services, account: Account, media: Path, progress: Progress | None = None,
          now: dt.datetime | None = None) -> tuple[ApplyResult, GateResult]:
    """Apply the bundle on ``media`` (completely or not at all), measured by the drift gate if configured."""
    by = acting(services, account, "bundles.manage").account
    if services.settings.evaluation.gate_sets:
        acting(services, account, "evaluation.manage")
    return apply_with_gate(services, by, media, progress, now=now)


def roll_back(services: Services, account: Account, to: int | None = None) -> GenerationInfo:
    """Serve an earlier kept generation (default: the serving one's parent)."""
    return rollback(services.update_site(), acting(services, account, "bundles.manage").account, to)


def accept(services: Services, account: Account, generation: int) -> dict:
    """Serve a generation the drift gate held, after all."""
    return accept_held(services, acting(services, account, "bundles.manage").account, generation)


def generations(services: Services, account: Account) -> tuple[int, list[GenerationInfo], dict]:
    """The kept generations (oldest first), which one serves, and the high-water state."""
    return history(services.update_site(), acting(services, account, "bundles.manage").account)
