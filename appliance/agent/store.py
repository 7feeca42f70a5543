"""Traces and session memory in SQLite (``<data dir>/agent.db``, numbered migrations).

A trace records every step of one request: its input, the decision taken, the chunk ids
retrieved with their scores, tokens and time. A session holds one user's turns; it is
only ever read back for that user — to anybody else it does not exist.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlite_utils

from appliance.db import open_db
from appliance.errors import AgentError
from appliance.migrations import Migrations

__all__ = ["AgentStore", "Step", "Turn", "time_split"]

MIGRATIONS = Migrations("agent")
MAX_TURNS_KEPT = 50


@MIGRATIONS
def m001_traces_sessions(db: sqlite_utils.Database) -> None:
    db.execute("""CREATE TABLE traces (id TEXT PRIMARY KEY, user TEXT NOT NULL, session_id TEXT,
        question TEXT NOT NULL, started_at TEXT NOT NULL, seconds REAL, outcome TEXT, answer TEXT)""")
    db.execute("""CREATE TABLE trace_steps (trace_id TEXT NOT NULL, n INTEGER NOT NULL, name TEXT NOT NULL,
        input TEXT, decision TEXT, chunk_ids TEXT, scores TEXT, tokens INTEGER, ms REAL,
        PRIMARY KEY (trace_id, n))""")
    db.execute("CREATE TABLE sessions (id TEXT PRIMARY KEY, user TEXT NOT NULL, created_at TEXT NOT NULL)")
    db.execute("""CREATE TABLE turns (session_id TEXT NOT NULL, n INTEGER NOT NULL, question TEXT NOT NULL,
        standalone TEXT NOT NULL, answer TEXT NOT NULL, cited TEXT NOT NULL, trace_id TEXT,
        PRIMARY KEY (session_id, n))""")


@MIGRATIONS
def m002_step_time_split(db: sqlite_utils.Database) -> None:
    """Within a step's time: how much was the model's and how much retrieval's."""
    db.execute("ALTER TABLE trace_steps ADD COLUMN model_ms REAL NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE trace_steps ADD COLUMN retrieval_ms REAL NOT NULL DEFAULT 0")


@MIGRATIONS
def m003_feedback(db: sqlite_utils.Database) -> None:
    """An analyst's verdict on an answer, kept for evaluation."""
    db.execute("""CREATE TABLE feedback (trace_id TEXT NOT NULL, user TEXT NOT NULL, verdict TEXT NOT NULL,
        correct_answer TEXT, at TEXT NOT NULL, PRIMARY KEY (trace_id, user))""")


@MIGRATIONS
def m004_cited_docs_correct_source(db: sqlite_utils.Database) -> None:
    """The documents an answer cited (for evaluation sets built from feedback), and the source an
    analyst names as the right one."""
    db.execute("ALTER TABLE traces ADD COLUMN cited_docs TEXT NOT NULL DEFAULT '[]'")
    db.execute("ALTER TABLE feedback ADD COLUMN correct_source TEXT")


@MIGRATIONS
def m005_step_start(db: sqlite_utils.Database) -> None:
    """When each step started, from the start of its request: steps become spans."""
    db.execute("ALTER TABLE trace_steps ADD COLUMN start_ms REAL NOT NULL DEFAULT 0")
    db.execute("CREATE INDEX IF NOT EXISTS traces_started ON traces (started_at)")


MAX_FEEDBACK_CHARS = 4000
MAX_SOURCE_CHARS = 500


@dataclass
class Step:
    name: str
    input: Any = None
    decision: Any = None
    chunk_ids: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    tokens: int = 0
    ms: float = 0.0
    model_ms: float = 0.0  # of ms, spent in the model (generation, embedding, specialists)
    retrieval_ms: float = 0.0  # of ms, spent searching the index
    start_ms: float = 0.0  # when the step began, from the start of its request


@dataclass(frozen=True)
class Turn:
    question: str
    standalone: str
    answer: str
    cited: list[str]


def time_split(seconds: float, steps: list[dict]) -> dict:
    """A request's time in the model, in retrieval, and in the orchestration itself (the rest)."""
    total = seconds * 1000
    model = sum(s.get("model_ms") or 0.0 for s in steps)
    retrieval = sum(s.get("retrieval_ms") or 0.0 for s in steps)
    own = max(0.0, total - model - retrieval)
    return {"total_ms": round(total, 3), "model_ms": round(model, 3), "retrieval_ms": round(retrieval, 3),
            "orchestration_ms": round(own, 3), "orchestration_share": round(own / total, 4) if total else 0.0}


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


class AgentStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self.db = open_db(path, MIGRATIONS)

    def close(self) -> None:
        with self._lock:
            self.db.close()

    # -- traces -------------------------------------------------------------------------

    def save_trace(self, *, trace_id: str, user: str, session_id: str | None, question: str, started_at: str,
                   seconds: float, outcome: str, answer: str, steps: list[Step],
                   cited_docs: list[str] | None = None) -> None:
        with self._lock, self.db.atomic():
            self.db.table("traces").insert({"id": trace_id, "user": user, "session_id": session_id,
                                            "question": question, "started_at": started_at, "seconds": seconds,
                                            "outcome": outcome, "answer": answer,
                                            "cited_docs": json.dumps(cited_docs or [])})
            self.db.table("trace_steps").insert_all(
                {"trace_id": trace_id, "n": i, "name": s.name, "input": json.dumps(s.input, default=str),
                 "decision": json.dumps(s.decision, default=str), "chunk_ids": json.dumps(s.chunk_ids),
                 "scores": json.dumps([round(x, 6) for x in s.scores]), "tokens": s.tokens, "ms": round(s.ms, 3),
                 "model_ms": round(s.model_ms, 3), "retrieval_ms": round(s.retrieval_ms, 3),
                 "start_ms": round(s.start_ms, 3)}
                for i, s in enumerate(steps))

    def trace(self, trace_id: str, user: str | None = None) -> dict:
        """A trace with its steps; ``user`` limits it to that user's own traces."""
        with self._lock:
            rows = list(self.db.query("SELECT * FROM traces WHERE id = ?", [trace_id]))
            if not rows or (user is not None and rows[0]["user"] != user):
                raise AgentError(f"no trace {trace_id!r}")
            steps = [dict(r, input=json.loads(r["input"]), decision=json.loads(r["decision"]),
                          chunk_ids=json.loads(r["chunk_ids"]), scores=json.loads(r["scores"]))
                     for r in self.db.query("SELECT * FROM trace_steps WHERE trace_id = ? ORDER BY n", [trace_id])]
        return dict(rows[0], steps=steps, time_split=time_split(rows[0]["seconds"] or 0.0, steps))

    @staticmethod
    def window(since: str | None, user: str | None, table: str = "traces") -> tuple[str, list]:
        """A WHERE clause (and its arguments) for the traces started at or after ``since``, of ``user``."""
        where = "WHERE 1 = 1"
        args: list[str] = []
        if since:
            where, args = where + f" AND {table}.started_at >= ?", [*args, since]
        if user:
            where, args = where + f" AND {table}.user = ?", [*args, user]
        return where, args

    def trace_ids(self, *, since: str | None = None, user: str | None = None, limit: int = 10_000) -> list[str]:
        """Trace ids, oldest first: started at or after ``since`` (ISO time), of ``user`` if given."""
        where, args = self.window(since, user)
        with self._lock:
            return [r["id"] for r in self.db.query(f"SELECT id FROM traces {where} ORDER BY started_at LIMIT ?",
                                                   [*args, limit])]

    def check_feedback(self, trace_id: str, user: str, verdict: str, correct_answer: str | None = None,
                       correct_source: str | None = None) -> None:
        """AgentError unless ``user`` may give this feedback: on their own answer, within the limits."""
        if verdict not in ("right", "wrong"):
            raise AgentError(f"a verdict is right or wrong, not {verdict!r}")
        if correct_answer is not None and len(correct_answer) > MAX_FEEDBACK_CHARS:
            raise AgentError(f"the correct answer is over the {MAX_FEEDBACK_CHARS} character limit")
        if correct_source is not None and len(correct_source) > MAX_SOURCE_CHARS:
            raise AgentError(f"the correct source is over the {MAX_SOURCE_CHARS} character limit")
        self.trace(trace_id, user)  # the user's own answers only

    def add_feedback(self, trace_id: str, user: str, verdict: str, correct_answer: str | None = None,
                     correct_source: str | None = None) -> None:
        """Mark one of ``user``'s answers right or wrong (with the correct answer or source document, if
        given); the last word counts."""
        self.check_feedback(trace_id, user, verdict, correct_answer, correct_source)
        with self._lock:
            with self.db.atomic():
                self.db.execute("INSERT OR REPLACE INTO feedback (trace_id, user, verdict, correct_answer, at, "
                                "correct_source) VALUES (?, ?, ?, ?, ?, ?)",
                                [trace_id, user, verdict, (correct_answer or "").strip() or None, _now(),
                                 (correct_source or "").strip() or None])

    def feedback(self, user: str | None = None) -> list[dict]:
        with self._lock:
            sql = ("SELECT f.*, t.question, t.answer, t.outcome, t.cited_docs FROM feedback f "
                   "JOIN traces t ON t.id = f.trace_id")
            return list(self.db.query(sql + (" WHERE f.user = ?" if user else "") + " ORDER BY f.at",
                                      [user] if user else []))

    # -- sessions -----------------------------------------------------------------------

    def new_session(self, user: str) -> str:
        sid = secrets.token_hex(8)
        with self._lock, self.db.atomic():
            self.db.table("sessions").insert({"id": sid, "user": user, "created_at": _now()})
        return sid

    def _owned(self, session_id: str, user: str) -> None:
        rows = list(self.db.query("SELECT user FROM sessions WHERE id = ?", [session_id]))
        if not rows or rows[0]["user"] != user:
            raise AgentError(f"no session {session_id!r}")  # the same words whether absent or someone else's

    def turns(self, session_id: str, user: str, last: int = 6) -> list[Turn]:
        with self._lock:
            self._owned(session_id, user)
            rows = list(self.db.query("SELECT * FROM turns WHERE session_id = ? ORDER BY n DESC LIMIT ?",
                                      [session_id, last]))
        return [Turn(r["question"], r["standalone"], r["answer"], json.loads(r["cited"])) for r in reversed(rows)]

    def add_turn(self, session_id: str, user: str, turn: Turn, trace_id: str | None) -> None:
        with self._lock, self.db.atomic():
            self._owned(session_id, user)
            n = next(iter(self.db.query("SELECT coalesce(max(n), -1) + 1 AS n FROM turns WHERE session_id = ?",
                                        [session_id])))["n"]
            self.db.table("turns").insert({"session_id": session_id, "n": n, "question": turn.question,
                                           "standalone": turn.standalone, "answer": turn.answer,
                                           "cited": json.dumps(turn.cited), "trace_id": trace_id})
            self.db.execute("DELETE FROM turns WHERE session_id = ? AND n < ?", [session_id, n - MAX_TURNS_KEPT])

    def sessions(self, user: str) -> list[dict]:
        with self._lock:
            return list(self.db.query(
                "SELECT s.id, s.created_at, count(t.n) AS turns, (SELECT question FROM turns WHERE session_id = s.id "
                "ORDER BY n LIMIT 1) AS first_question FROM sessions s LEFT JOIN turns t ON t.session_id = s.id "
                "WHERE s.user = ? GROUP BY s.id ORDER BY s.created_at DESC", [user]))
