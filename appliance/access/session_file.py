"""Where a command-line login keeps its session token: a file of the OS user's own.

Two people using one data directory (two analysts over SSH, an officer beside them) each
keep their own login; the file is under ``$XDG_STATE_HOME`` (default ``~/.local/state``),
``appliance/session-<digest of the data directory>``, mode 0600 in a 0700 directory.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["session_file"]


def session_file(data_dir: Path, environ: dict[str, str] | None = None) -> Path:
    """This OS user's session file for ``data_dir``; under the data directory (one per user id) only when the
    user has no home to keep it in (a service account)."""
    env = os.environ if environ is None else environ
    key = hashlib.sha256(os.path.realpath(data_dir).encode()).hexdigest()[:16]
    base = Path(env["XDG_STATE_HOME"]) if env.get("XDG_STATE_HOME") else Path(env.get("HOME") or "/nonexistent") / \
        ".local" / "state"
    home = base / "appliance"
    try:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return data_dir / "run" / "sessions" / f"uid-{os.getuid()}"
    return home / f"session-{key}"
