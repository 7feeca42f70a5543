"""The audit log: canonical JSON entries in SQLite, an RFC 6962 tree over them, signed checkpoints.

``<data dir>/audit/``: ``audit.db`` (entries and checkpoints, numbered migrations,
WAL with ``synchronous=FULL`` so a committed entry survives a power cut) and
``log.key``, the appliance's Ed25519 key, made on first start with mode 0600. Its name
is the log's origin line.

Fail closed: :meth:`AuditLog.record` raises :class:`AuditWriteError` whenever the entry
is not durably stored, and callers record *before* they let an action take effect. On
start the log checks itself (entries after the last checkpoint re-hashed, the
checkpoint's signature and root); if that fails, every record is refused until an
officer has looked (``appliance audit check`` says what is wrong).
"""

from __future__ import annotations

import datetime as dt
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import sqlite_utils

from appliance.audit.canonical import canonical_json, parse_canonical
from appliance.audit.checkpoint import Checkpoint, Signer, generate_key, load_signer, open_checkpoint
from appliance.audit.merkle import MerkleTree, leaf_hash
from appliance.db import open_db
from appliance.errors import AuditError, AuditVerifyError, AuditWriteError
from appliance.migrations import Migrations

__all__ = ["AuditLog", "Auditor", "Entry", "MAX_ENTRY_BYTES"]

MAX_ENTRY_BYTES = 256 * 1024
MIGRATIONS = Migrations("audit")


class Auditor(Protocol):
    """Anything audited takes one of these: :class:`AuditLog`, or a test double."""

    def record(self, kind: str, user: str | None, **fields: object) -> int | None: ...


@MIGRATIONS
def m001_entries_checkpoints(db: sqlite_utils.Database) -> None:
    db.execute("CREATE TABLE entries (seq INTEGER PRIMARY KEY, data BLOB NOT NULL, leaf BLOB NOT NULL)")
    db.execute("CREATE TABLE checkpoints (size INTEGER PRIMARY KEY, note BLOB NOT NULL, at TEXT NOT NULL)")


@dataclass(frozen=True)
class Entry:
    seq: int
    data: bytes  # the canonical JSON, exactly the leaf's bytes

    def value(self) -> dict:
        return parse_canonical(self.data, MAX_ENTRY_BYTES)  # type: ignore[return-value]


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AuditLog:
    def __init__(self, root: Path, *, checkpoint_every: int = 1000, durable: bool = True,
                 busy_timeout_s: float = 10.0) -> None:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root = root
        self.checkpoint_every = checkpoint_every
        key = root / "log.key"
        self.signer: Signer = self._key(key)
        self.origin = self.signer.name
        self._lock = threading.RLock()
        self.conn = open_db(root / "audit.db", MIGRATIONS, durable=durable, busy_timeout_s=busy_timeout_s).conn
        self.tree = MerkleTree()
        self.problem: str | None = None
        try:
            self._catch_up()
            self._check_tail()
        except (AuditError, sqlite3.Error) as exc:
            self.problem = str(exc)

    @staticmethod
    def _key(path: Path) -> Signer:
        """The log key: loaded, or created once; two first starts at once both end up with the
        key the first of them wrote (creation never replaces a key file)."""
        if not path.exists():
            try:
                return generate_key(path, f"appliance-{secrets.token_hex(4)}.local/audit")
            except AuditError:
                if not path.exists():
                    raise
        return load_signer(path)

    @property
    def vkey(self) -> str:
        return self.signer.verifier.vkey

    # -- reading ------------------------------------------------------------------------

    def _catch_up(self) -> None:
        """Add to the tree the entries another process appended since we last looked."""
        rows = self.conn.execute("SELECT seq, leaf FROM entries WHERE seq >= ? ORDER BY seq",
                                 [self.tree.size]).fetchall()
        for seq, leaf in rows:
            if seq != self.tree.size:
                raise AuditVerifyError(f"audit entry {self.tree.size} is missing (next stored is {seq})")
            self.tree.append(bytes(leaf))

    def _check_tail(self) -> None:
        """Re-hash the entries after the last checkpoint and check the checkpoint itself."""
        last = self.conn.execute("SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1").fetchone()
        since = 0
        if last:
            cp = open_checkpoint(bytes(last[1]), self.signer.verifier)
            if cp.size > self.tree.size:
                raise AuditVerifyError(f"the log holds {self.tree.size} entries but was checkpointed at {cp.size}")
            if self.tree.root(cp.size) != cp.root:
                raise AuditVerifyError(f"the first {cp.size} entries no longer match their signed checkpoint")
            since = cp.size
        self.verify_entries(since)

    def verify_entries(self, start: int = 0) -> int:
        """Re-hash stored entries from ``start``: each must be canonical, numbered right, and match its leaf."""
        n = 0
        for seq, data, leaf in self.conn.execute("SELECT seq, data, leaf FROM entries WHERE seq >= ? ORDER BY seq",
                                                 [start]):
            data = bytes(data)
            if leaf_hash(data) != bytes(leaf) or self.tree.leaf(seq) != bytes(leaf):
                raise AuditVerifyError(f"audit entry {seq} does not match its hash (edited or torn write)")
            try:
                value = parse_canonical(data, MAX_ENTRY_BYTES)
            except AuditVerifyError as exc:
                raise AuditVerifyError(f"audit entry {seq}: {exc}") from exc
            if not isinstance(value, dict) or value.get("seq") != seq:
                raise AuditVerifyError(f"audit entry {seq} carries the wrong sequence number")
            n += 1
        return n

    def check(self) -> dict:
        """Verify the whole log: every entry, every checkpoint. Raises AuditVerifyError."""
        with self._lock:
            self._catch_up()
            self.verify_entries(0)
            count = 0
            for size, note in self.conn.execute("SELECT size, note FROM checkpoints ORDER BY size"):
                cp = open_checkpoint(bytes(note), self.signer.verifier)
                if cp.size != size or self.tree.root(cp.size) != cp.root:
                    raise AuditVerifyError(f"checkpoint at {size} entries does not match the log")
                count += 1
            return {"entries": self.tree.size, "checkpoints": count, "origin": self.origin,
                    "root": self.tree.root().hex()}

    def entries(self, start: int = 0, end: int | None = None) -> Iterator[Entry]:
        end = self.tree.size if end is None else end
        for seq, data in self.conn.execute("SELECT seq, data FROM entries WHERE seq >= ? AND seq < ? ORDER BY seq",
                                           [start, end]):
            yield Entry(seq, bytes(data))

    def checkpoints(self) -> list[bytes]:
        return [bytes(r[0]) for r in self.conn.execute("SELECT note FROM checkpoints ORDER BY size")]

    # -- writing ------------------------------------------------------------------------

    def record(self, kind: str, user: str | None, **fields: object) -> int:
        """Append one entry durably and return its number; AuditWriteError if it is not stored."""
        with self._lock:
            if self.problem:
                raise AuditWriteError(f"the audit log failed its check ({self.problem}); audited actions are "
                                      "refused until an officer runs `appliance audit check`")
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise AuditWriteError(f"audit log cannot be written ({exc}): the action is refused") from exc
            try:
                self._catch_up()
                seq = self.tree.size
                data = canonical_json({"seq": seq, "ts": _now(), "kind": kind, "user": user, **fields},
                                      max_bytes=MAX_ENTRY_BYTES)
                leaf = leaf_hash(data)
                self.conn.execute("INSERT INTO entries (seq, data, leaf) VALUES (?, ?, ?)", [seq, data, leaf])
                self.conn.execute("COMMIT")
            except (sqlite3.Error, AuditError, OSError) as exc:
                self._rollback()
                raise AuditWriteError(f"audit log cannot be written ({exc}): the action is refused") from exc
            self.tree.append(leaf)
            if self.tree.size % self.checkpoint_every == 0:
                try:
                    self.checkpoint()
                except (sqlite3.Error, AuditError):
                    pass  # the entry is stored; the next record or export checkpoints again
            return seq

    def _rollback(self) -> None:
        try:
            self.conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def checkpoint(self) -> bytes:
        """Sign and store a checkpoint of the whole log as it stands; returns the note."""
        with self._lock:
            self._catch_up()
            note = Checkpoint(self.origin, self.tree.size, self.tree.root()).sign(self.signer)
            try:
                self.conn.execute("INSERT OR IGNORE INTO checkpoints (size, note, at) VALUES (?, ?, ?)",
                                  [self.tree.size, note, _now()])
            except sqlite3.Error as exc:
                raise AuditWriteError(f"audit checkpoint cannot be written ({exc})") from exc
            stored = self.conn.execute("SELECT note FROM checkpoints WHERE size = ?", [self.tree.size]).fetchone()
            return bytes(stored[0])

    def close(self) -> None:
        self.conn.close()
