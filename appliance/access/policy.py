"""The local access policy file: who is cleared for what (until accounts exist).

``<data dir>/policy.toml``::

    [users.alice]
    level = "SECRET"
    compartments = ["CRYPTO"]

The accounts issue replaces this with managed accounts and a signed policy; the
retrieval layer only ever sees the resulting :class:`Principal`.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from appliance.access.labels import LevelScale, Principal, _compartments
from appliance.errors import AccessError

__all__ = ["load_principal", "MAX_POLICY_BYTES"]

MAX_POLICY_BYTES = 1 << 20


def load_principal(policy_file: Path, name: str, scale: LevelScale) -> Principal:
    if not policy_file.is_file():
        raise AccessError(f"unknown user {name!r}: no policy file at {policy_file}")
    if policy_file.stat().st_size > MAX_POLICY_BYTES:
        raise AccessError(f"{policy_file}: over the {MAX_POLICY_BYTES} byte limit")
    try:
        doc = tomllib.loads(policy_file.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise AccessError(f"{policy_file}: not valid TOML: {exc}") from None
    users = doc.get("users", {})
    entry = users.get(name) if isinstance(users, dict) else None
    if not isinstance(entry, dict):
        raise AccessError(f"unknown user {name!r}")
    level = entry.get("level")
    comps = entry.get("compartments", [])
    if not isinstance(level, str) or not isinstance(comps, list):
        raise AccessError(f"{policy_file}: user {name!r} needs level = \"...\" and compartments = [...]")
    where = f"{policy_file}: user {name!r}"
    try:
        level = scale.canonical(level)
    except AccessError as exc:
        raise AccessError(f"{where}: {exc}") from None
    return Principal(name=name, level=level, compartments=_compartments([str(c) for c in comps], where))
