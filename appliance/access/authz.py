"""Who may do what: one table of actions and roles, checked in the service layer.

The CLI and the TUI call services that call :func:`authorize`; neither decides access
itself. Reading documents is not in this table: that is the clearance check made at
retrieval (:meth:`~appliance.access.labels.Principal.can_read`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.errors import NotPermittedError, SessionExpiredError

if TYPE_CHECKING:
    from appliance.access.accounts import Account

__all__ = ["ACTIONS", "authorize"]

ACTIONS: dict[str, tuple[str, ...]] = {
    "users.manage": ("admin",),
    "users.list": ("admin", "officer", "auditor"),
    "policy.apply": ("admin",),
    "documents.manage": ("officer", "admin"),
    "search.as_clearance": ("officer", "admin"),
    "index.admin": ("admin",),
    "audit.export": ("officer", "auditor"),
    "audit.read": ("officer", "auditor"),
    "audit.check": ("officer", "auditor", "admin"),
    "bundles.manage": ("officer", "admin"),
    "specialists.use": ("analyst", "officer", "auditor", "admin"),
    "evaluation.manage": ("officer", "admin"),  # evaluation sets in and out, runs, the drift gate
    "evaluation.read": ("officer", "auditor", "admin"),
    "metrics.read": ("officer", "auditor", "admin"),  # request metrics: counts and timings, no content
    "traces.export": ("officer", "auditor"),  # every request's spans, to a file (OpenTelemetry JSON)
}


def authorize(account: Account, action: str) -> Account:
    roles = ACTIONS[action]
    if account.disabled:
        raise SessionExpiredError(f"{account.name} is disabled")
    if account.role not in roles:
        raise NotPermittedError(f"{account.name} is {account.role}; {action} needs the role {' or '.join(roles)}")
    return account
