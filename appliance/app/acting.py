"""``acting``: the one place a use case authorizes its account and audits as it."""

from __future__ import annotations

from dataclasses import dataclass

from appliance.access.accounts import Account
from appliance.access.authz import authorize
from appliance.audit.log import AuditLog
from appliance.errors import SessionExpiredError
from appliance.services import Services

__all__ = ["Acting", "acting"]


@dataclass(frozen=True)
class Acting:
    """An account cleared for one action, and the audit log its entries go to."""

    account: Account
    audit: AuditLog

    @property
    def name(self) -> str:
        return self.account.name

    def record(self, kind: str, **fields: object) -> int:
        """Write an audit entry as this account; AuditWriteError (and no action) if it cannot be written."""
        return self.audit.record(kind, self.account.name, **fields)


def acting(services: Services, account: Account, action: str | None = None) -> Acting:
    """``account`` as stored now (SessionExpiredError if it has been disabled since it logged in), authorized
    for ``action`` (AccessError naming the role it needs) when one is given."""
    current = services.accounts().get(account.name)
    if current.disabled:
        raise SessionExpiredError(f"{current.name} is disabled")
    return Acting(authorize(current, action) if action else current, services.audit())
