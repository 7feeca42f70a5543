"""Open an appliance SQLite database the one way every store does.

:func:`open_db` gives a connection in WAL mode with a busy timeout, no implicit
transactions, and an ``atomic()`` whose outermost transaction is ``BEGIN IMMEDIATE``: a
writer takes the database's write lock before its first read, so a read-then-write can
neither see a stale row nor fail half-way with "database is locked" when another process
writes at the same moment. Migrations run under that same lock, each re-checked inside
its transaction, so two first starts never run one twice. A lock not had within the busy
timeout raises :class:`BusyError`.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Generator
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

from appliance.errors import BusyError
from appliance.migrations import Migrations

__all__ = ["Database", "open_db", "DEFAULT_BUSY_TIMEOUT_S"]

DEFAULT_BUSY_TIMEOUT_S = 30.0


def _busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class Database(sqlite_utils.Database):
    """sqlite-utils' Database, with write transactions that take the write lock first."""

    path: Path | None = None

    @contextmanager
    def atomic(self) -> Generator[Database, None, None]:
        """One write transaction (``BEGIN IMMEDIATE``); nested blocks are savepoints."""
        if self.conn.in_transaction:
            savepoint = f"sp_{secrets.token_hex(8)}"
            self.conn.execute(f"SAVEPOINT {savepoint}")
            try:
                yield self
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute(f"ROLLBACK TO SAVEPOINT {savepoint}")
                    self.conn.execute(f"RELEASE SAVEPOINT {savepoint}")
                raise
            self.conn.execute(f"RELEASE SAVEPOINT {savepoint}")
            return
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if _busy(exc):
                raise BusyError(f"{self.path or 'a database'} is being written by another process longer than "
                                "its busy timeout; try again") from exc
            raise
        try:
            yield self
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        try:
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise


def open_db(path: Path, migrations: Migrations | None = None, *, durable: bool = False,
            busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S) -> Database:
    """Open (creating) ``path``: WAL, ``busy_timeout``, write transactions ``BEGIN IMMEDIATE``, one
    connection a process's threads may share under the store's own lock; then run ``migrations``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=busy_timeout_s)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        try:
            conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as exc:  # another first start is switching it at this moment
            if not _busy(exc):
                raise
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        db = Database(conn)
        db.path = path
        if migrations is not None:
            migrations.apply(db)
    except BaseException:
        conn.close()
        raise
    return db
