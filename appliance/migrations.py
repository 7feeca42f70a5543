"""Numbered schema migrations recorded in a table (the simonw/llm pattern).

Each database owns one :class:`Migrations` list; functions run in registration order,
each at most once, and each is recorded in ``_migrations`` in the same transaction as
its changes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import sqlite_utils

__all__ = ["Migrations"]

Migration = Callable[[sqlite_utils.Database], None]


class Migrations:
    def __init__(self, name: str) -> None:
        self.name = name
        self._steps: list[Migration] = []

    def __call__(self, fn: Migration) -> Migration:
        """Register ``fn`` as the next migration (use as a decorator)."""
        self._steps.append(fn)
        return fn

    def apply(self, db: sqlite_utils.Database) -> list[str]:
        """Run the migrations ``db`` has not had yet; return their names. Each step re-reads the applied list
        inside its own write transaction (``BEGIN IMMEDIATE`` on an :func:`appliance.db.open_db` database), so
        two processes starting at once never run one step twice."""
        with db.atomic():
            db.execute(
                "CREATE TABLE IF NOT EXISTS _migrations "
                "(migration_set TEXT, name TEXT, applied_at TEXT, PRIMARY KEY (migration_set, name))"
            )
        ran: list[str] = []
        for step in self._steps:
            with db.atomic():
                done = db.execute("SELECT 1 FROM _migrations WHERE migration_set = ? AND name = ?",
                                  [self.name, step.__name__]).fetchone()
                if done:
                    continue
                step(db)
                db.execute(
                    "INSERT INTO _migrations (migration_set, name, applied_at) VALUES (?, ?, ?)",
                    [self.name, step.__name__, dt.datetime.now(dt.UTC).isoformat()],
                )
            ran.append(step.__name__)
        return ran
