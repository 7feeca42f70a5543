"""The access policy file: levels, compartments and accounts, applied as a whole.

::

    levels = ["UNCLASSIFIED", "CONFIDENTIAL", "SECRET", "TOP SECRET"]   # must match the configuration
    compartments = ["CRYPTO", "NUCLEAR"]                                # every compartment in use

    [users.alice]
    role = "analyst"
    level = "SECRET"
    compartments = ["CRYPTO"]
    passphrase_hash = "scrypt$32768$8$1$..."   # optional: without it a new account starts disabled

The file describes the complete desired state: listed accounts are created or updated,
accounts it does not list are disabled (never deleted: the audit log names them). A
later issue delivers this file inside a signed bundle; the same code applies it.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.access.accounts import _NAME, ROLES, Account, AccountStore
from appliance.access.authz import authorize
from appliance.access.labels import LevelScale, _compartments
from appliance.errors import AccessError

__all__ = ["Policy", "PolicyUser", "load_policy", "check_policy", "apply_policy", "MAX_POLICY_USERS"]

MAX_POLICY_USERS = 10_000


@dataclass(frozen=True)
class PolicyUser:
    name: str
    role: str
    level: str
    compartments: tuple[str, ...]
    passphrase_hash: str | None


@dataclass(frozen=True)
class Policy:
    compartments: frozenset[str]
    users: tuple[PolicyUser, ...]


def load_policy(doc: dict, scale: LevelScale, where: str) -> Policy:
    levels = doc.get("levels")
    if levels is not None:
        if not isinstance(levels, list) or [scale.canonical(str(x)) for x in levels] != [
                scale.canonical(x) for x in scale.levels]:
            raise AccessError(f"{where}: levels {levels} differ from the configured {list(scale.levels)}")
    comps = doc.get("compartments", [])
    if not isinstance(comps, list) or not all(isinstance(c, str) for c in comps):
        raise AccessError(f"{where}: compartments must be a list of names")
    known = frozenset(c.upper() for c in comps)
    users = doc.get("users", {})
    if not isinstance(users, dict) or len(users) > MAX_POLICY_USERS:
        raise AccessError(f"{where}: [users.NAME] tables expected (at most {MAX_POLICY_USERS})")
    out = []
    for name, entry in users.items():
        if not isinstance(entry, dict):
            raise AccessError(f"{where}: users.{name} must be a table")
        role, level = entry.get("role"), entry.get("level")
        ucomps = entry.get("compartments", [])
        pw = entry.get("passphrase_hash")
        if not isinstance(role, str) or not isinstance(level, str) or not isinstance(ucomps, list) or (
                pw is not None and not isinstance(pw, str)):
            raise AccessError(f"{where}: users.{name} needs role, level, compartments = [...] (and optionally "
                              "passphrase_hash)")
        unknown = {str(c).upper() for c in ucomps} - known
        if unknown:
            raise AccessError(f"{where}: users.{name} holds compartments the policy does not declare: "
                              f"{', '.join(sorted(unknown))}")
        out.append(PolicyUser(str(name), role, level, tuple(str(c) for c in ucomps), pw))
    return Policy(known, tuple(out))


def check_policy(store: AccountStore, policy: Policy) -> None:
    """Every entry valid (names, roles, hashes, levels, compartments); raises AccessError naming it."""
    for u in policy.users:
        if not _NAME.match(u.name) or u.role not in ROLES:
            raise AccessError(f"users.{u.name}: bad name or unknown role {u.role!r} (one of {', '.join(ROLES)})")
        if u.passphrase_hash is not None and not u.passphrase_hash.startswith("scrypt$"):
            raise AccessError(f"users.{u.name}: passphrase_hash must be an scrypt$... hash")
        store.scale.canonical(u.level)
        _compartments(list(u.compartments), f"users.{u.name}")


def apply_policy(store: AccountStore, policy: Policy, *, by: Account | None, signed: str | None = None) -> list[str]:
    """Apply ``policy``; returns the changes made. Everything is checked before anything changes.

    Unsigned (``appliance policy apply``) it takes an admin. ``signed`` names the verified
    bundle it came in: its signature is the authority, and ``by`` is the officer applying it.
    """
    if signed is None:
        if by is None:
            raise AccessError("not logged in")
        authorize(store.get(by.name), "policy.apply")
        mine = next((u for u in policy.users if u.name == by.name), None)
        if mine is not None and mine.role != "admin":
            raise AccessError(f"the policy makes {by.name}, who applies it, a {mine.role}: apply it as another admin")
    check_policy(store, policy)  # validate first: a bad entry must not leave the accounts half-changed
    changes = []
    for u in policy.users:
        change = store.import_account(u.name, role=u.role, level=u.level, compartments=u.compartments,
                                      passphrase_hash=u.passphrase_hash, by=by, signed=signed)
        if change:
            changes.append(change)
    listed = {u.name for u in policy.users}
    applier = by.name if by is not None else None
    for acct in store.list():
        if acct.name not in listed and not acct.disabled and acct.name != applier:
            store.disable(acct.name, by=by, signed=signed)
            changes.append(f"disabled {acct.name} (not in the policy)")
    store.auditor.record("policy.apply", signed or applier or "-", users=len(policy.users), changes=changes,
                         **({"applied_by": applier} if signed else {}))
    return changes
