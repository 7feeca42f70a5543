"""Local accounts: scrypt passphrases, roles, clearances, lockout, login sessions.

``<data dir>/access.db`` (SQLite, numbered migrations). Every check is made here, in the
service layer; the CLI and the TUI only pass a session token or credentials in. Every
change and every login attempt is written to the audit log first: if that write fails,
the change is rolled back and refused.

A wrong user name and a wrong passphrase give the same answer (and take the same time);
so do a locked and a disabled account, to anyone who does not know the passphrase.
"""

from __future__ import annotations

import base64
import builtins
import datetime as dt
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from appliance.access.authz import authorize
from appliance.access.labels import LevelScale, Principal, _compartments
from appliance.audit.log import Auditor
from appliance.config import AccessSettings
from appliance.db import open_db
from appliance.errors import AccessError, LoginFailedError, SessionExpiredError
from appliance.migrations import Migrations

__all__ = ["ROLES", "Account", "AccountStore", "LoginSession", "hash_passphrase", "check_passphrase"]

ROLES = ("analyst", "officer", "auditor", "admin")
MAX_PASSPHRASE_BYTES = 1024
_NAME = re.compile(r"^[a-z][a-z0-9._-]{0,31}$")
_SCRYPT = (2**15, 8, 1)  # n, r, p: about 50 ms and 32 MiB per check
MIGRATIONS = Migrations("access")
BAD_LOGIN = "wrong user name or passphrase, or the account is locked or disabled"


@MIGRATIONS
def m001_accounts(db: sqlite_utils.Database) -> None:
    db.execute("""CREATE TABLE accounts (name TEXT PRIMARY KEY, role TEXT NOT NULL, level TEXT NOT NULL,
        compartments TEXT NOT NULL, passphrase TEXT NOT NULL, disabled INTEGER NOT NULL DEFAULT 0,
        failures INTEGER NOT NULL DEFAULT 0, locked_until REAL NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL)""")
    db.execute("""CREATE TABLE logins (token_sha256 TEXT PRIMARY KEY, user TEXT NOT NULL, started REAL NOT NULL,
        last_seen REAL NOT NULL)""")


@dataclass(frozen=True)
class Account:
    name: str
    role: str
    level: str
    compartments: frozenset[str]
    disabled: bool
    created_at: str
    updated_at: str

    def principal(self) -> Principal:
        return Principal(name=self.name, level=self.level, compartments=self.compartments)

    def as_dict(self) -> dict:
        return {"name": self.name, "role": self.role, "level": self.level,
                "compartments": sorted(self.compartments), "disabled": self.disabled,
                "created_at": self.created_at, "updated_at": self.updated_at}


@dataclass(frozen=True)
class LoginSession:
    token: str  # shown once, to the one who logged in; only its SHA-256 is stored
    account: Account


def hash_passphrase(passphrase: str, salt: bytes | None = None) -> str:
    n, r, p = _SCRYPT
    salt = salt or secrets.token_bytes(16)
    key = Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode("utf-8"))
    b64 = base64.b64encode
    return f"scrypt${n}${r}${p}${b64(salt).decode()}${b64(key).decode()}"


def check_passphrase(passphrase: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, key = stored.split("$")
        if kind != "scrypt":
            return False
        derived = Scrypt(salt=base64.b64decode(salt), length=32, n=int(n), r=int(r), p=int(p)).derive(
            passphrase.encode("utf-8"))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(derived, base64.b64decode(key))


_DUMMY = hash_passphrase("not a passphrase anybody has", salt=b"\0" * 16)


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


class AccountStore:
    def __init__(self, path: Path, scale: LevelScale, settings: AccessSettings, auditor: Auditor,
                 clock: Callable[[], float] = time.time) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.scale = scale
        self.settings = settings
        self.auditor = auditor
        self.clock = clock
        self._lock = threading.RLock()
        self.db = open_db(path, MIGRATIONS)

    def close(self) -> None:
        with self._lock:
            self.db.close()

    # -- reading ------------------------------------------------------------------------

    def _row(self, name: str) -> dict | None:
        rows = list(self.db.query("SELECT * FROM accounts WHERE name = ?", [name]))
        return rows[0] if rows else None

    @staticmethod
    def _account(row: dict) -> Account:
        return Account(row["name"], row["role"], row["level"], frozenset(json.loads(row["compartments"])),
                       bool(row["disabled"]), row["created_at"], row["updated_at"])

    def get(self, name: str) -> Account:
        with self._lock:
            row = self._row(name)
        if row is None:
            raise AccessError(f"no account {name!r}")
        return self._account(row)

    def list(self, by: Account | None = None) -> list[Account]:
        """All accounts (``by``: checked may list them; None: internal use)."""
        if by is not None:
            authorize(self.get(by.name), "users.list")
        with self._lock:
            return [self._account(r) for r in self.db.query("SELECT * FROM accounts ORDER BY name")]

    # -- administration (each change audited before it commits) -------------------------

    def _check_passphrase_rules(self, passphrase: str) -> None:
        if not isinstance(passphrase, str) or len(passphrase.encode("utf-8")) > MAX_PASSPHRASE_BYTES:
            raise AccessError(f"a passphrase must be text of at most {MAX_PASSPHRASE_BYTES} bytes")
        if len(passphrase) < self.settings.min_passphrase_chars:
            raise AccessError(f"a passphrase needs at least {self.settings.min_passphrase_chars} characters")
        if any(ord(ch) < 32 for ch in passphrase):
            raise AccessError("a passphrase may not contain control characters")

    def _labels(self, level: str, compartments: Iterable[str], name: str) -> tuple[str, frozenset[str]]:
        return self.scale.canonical(level), _compartments(list(compartments), f"account {name!r}")

    def _change(self, by: str, kind: str, name: str, sql: str, params: builtins.list, **fields: object) -> None:
        with self._lock, self.db.atomic():
            self.db.execute(sql, params)
            self.auditor.record(kind, by, target=name, **fields)  # raises: the change rolls back

    def _admin(self, by: Account) -> str:
        return authorize(self.get(by.name), "users.manage").name  # as stored now, not as once loaded

    def _who(self, by: Account | None, signed: str | None) -> str:
        if signed is not None:
            return signed
        if by is None:
            raise AccessError("not logged in")
        return self._admin(by)

    def add(self, name: str, *, role: str, level: str, compartments: Iterable[str] = (), passphrase: str,
            by: Account | None) -> Account:
        """Add an account; ``by`` None is the bootstrap: only the first account, and only an admin."""
        if by is None:
            if self.list():
                raise AccessError("not logged in: only the first account may be added without an admin")
            if role != "admin":
                raise AccessError("the first account must be an admin (--role admin)")
        who = self._admin(by) if by is not None else "bootstrap"
        if not isinstance(name, str) or not _NAME.match(name):
            raise AccessError(f"bad user name {name!r}: 1-32 of a-z 0-9 . _ -, starting with a letter")
        if role not in ROLES:
            raise AccessError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
        level, comps = self._labels(level, compartments, name)
        self._check_passphrase_rules(passphrase)
        hashed = hash_passphrase(passphrase)
        with self._lock, self.db.atomic():  # checked in the write transaction: two first starts make one admin
            if by is None and self.db.execute("SELECT count(*) FROM accounts").fetchone()[0]:
                raise AccessError("not logged in: only the first account may be added without an admin")
            if self._row(name) is not None:
                raise AccessError(f"account {name!r} already exists")
            now = _now_iso()
            self._change(who, "user.add", name,
                         "INSERT INTO accounts (name, role, level, compartments, passphrase, created_at, updated_at)"
                         " VALUES (?, ?, ?, ?, ?, ?, ?)",
                         [name, role, level, json.dumps(sorted(comps)), hashed, now, now],
                         role=role, level=level, compartments=sorted(comps))
        return self.get(name)

    def import_account(self, name: str, *, role: str, level: str, compartments: Iterable[str],
                       passphrase_hash: str | None, by: Account | None, signed: str | None = None) -> str | None:
        """Create or update an account from a policy file; returns what changed, or None.

        A new account without a passphrase hash is created disabled until an admin sets one.
        ``signed`` names a verified signed bundle whose policy role is the authority (then
        ``by``, the officer applying it, needs no admin role).
        """
        if not _NAME.match(name):
            raise AccessError(f"bad user name {name!r}: 1-32 of a-z 0-9 . _ -, starting with a letter")
        if role not in ROLES:
            raise AccessError(f"user {name!r}: unknown role {role!r} (one of {', '.join(ROLES)})")
        if passphrase_hash is not None and not passphrase_hash.startswith("scrypt$"):
            raise AccessError(f"user {name!r}: passphrase_hash must be an scrypt$... hash")
        level, comps = self._labels(level, compartments, name)
        who = self._who(by, signed)
        with self._lock:
            row = self._row(name)
            if row is None:
                now = _now_iso()
                hashed = passphrase_hash or "disabled$" + secrets.token_hex(16)
                self._change(who, "user.add", name,
                             "INSERT INTO accounts (name, role, level, compartments, passphrase, disabled, created_at,"
                             " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             [name, role, level, json.dumps(sorted(comps)), hashed, int(passphrase_hash is None),
                              now, now], role=role, level=level, compartments=sorted(comps), source="policy")
                return f"added {name}" + ("" if passphrase_hash else " (disabled until a passphrase is set)")
            acct = self._account(row)
            if (acct.role, acct.level, acct.compartments) == (role, level, comps) and (
                    passphrase_hash is None or passphrase_hash == row["passphrase"]):
                return None
            sets: dict[str, object] = {"role": role, "level": level, "compartments": json.dumps(sorted(comps))}
            if passphrase_hash is not None:
                sets["passphrase"] = passphrase_hash
            self._update(name, who, "user.policy", sets, role=role, level=level, compartments=sorted(comps))
            return f"updated {name}: {role}, {level} {','.join(sorted(comps))}"

    def _update(self, name: str, by: str, kind: str, sets: dict[str, object], **fields: object) -> Account:
        with self._lock:
            self.get(name)
            cols = ", ".join(f"{c} = ?" for c in sets)
            self._change(by, kind, name, f"UPDATE accounts SET {cols}, updated_at = ? WHERE name = ?",
                         [*sets.values(), _now_iso(), name], **fields)
            if kind in ("user.disable", "user.passwd", "user.revoke", "user.policy"):
                self.db.execute("DELETE FROM logins WHERE user = ?", [name])  # their sessions end now
        return self.get(name)

    def disable(self, name: str, *, by: Account | None, signed: str | None = None) -> Account:
        return self._update(name, self._who(by, signed), "user.disable", {"disabled": 1})

    def enable(self, name: str, *, by: Account) -> Account:
        return self._update(name, self._admin(by), "user.enable", {"disabled": 0, "failures": 0, "locked_until": 0})

    def passwd(self, name: str, passphrase: str, *, by: Account, current: str | None = None) -> Account:
        """A new passphrase: one's own (with the current one), or anyone's for an admin."""
        if by.name == name and by.role != "admin":
            row = self._row(name)
            if row is None or row["disabled"] or current is None or not check_passphrase(current, row["passphrase"]):
                raise AccessError("the current passphrase is wrong")
            who = by.name
        else:
            who = self._admin(by)
        self._check_passphrase_rules(passphrase)
        return self._update(name, who, "user.passwd", {"passphrase": hash_passphrase(passphrase), "failures": 0,
                                                       "locked_until": 0})

    def grant(self, name: str, *, by: Account, level: str | None = None, compartments: Iterable[str] = (),
              role: str | None = None) -> Account:
        who = self._admin(by)
        acct = self.get(name)
        new_level, add = self._labels(level or acct.level, compartments, name)
        if role is not None and role not in ROLES:
            raise AccessError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
        comps = sorted(acct.compartments | add)
        return self._update(name, who, "user.grant", {"level": new_level, "compartments": json.dumps(comps),
                                                      "role": role or acct.role},
                            level=new_level, compartments=comps, role=role or acct.role)

    def revoke(self, name: str, *, by: Account, compartments: Iterable[str] = (), level: str | None = None) -> Account:
        who = self._admin(by)
        acct = self.get(name)
        new_level, drop = self._labels(level or acct.level, compartments, name)
        if self.scale.rank(new_level) > self.scale.rank(acct.level):
            raise AccessError(f"revoke lowers a clearance; {new_level} is above {acct.level} (use grant)")
        missing = drop - acct.compartments
        if missing:
            raise AccessError(f"account {name!r} does not hold {', '.join(sorted(missing))}")
        comps = sorted(acct.compartments - drop)
        return self._update(name, who, "user.revoke", {"level": new_level, "compartments": json.dumps(comps)},
                            level=new_level, compartments=comps)

    # -- login sessions -----------------------------------------------------------------

    def login(self, name: str, passphrase: str) -> LoginSession:
        """A new session for ``name``, or :class:`LoginFailedError` with :data:`BAD_LOGIN`."""
        if not isinstance(passphrase, str) or len(passphrase.encode("utf-8", "replace")) > MAX_PASSPHRASE_BYTES:
            self.auditor.record("login.failure", name if isinstance(name, str) else None, reason="bad input")
            raise LoginFailedError(BAD_LOGIN)
        with self._lock:
            row = self._row(name) if isinstance(name, str) else None
            stored = row["passphrase"] if row and row["passphrase"].startswith("scrypt$") else _DUMMY
            ok = check_passphrase(passphrase, stored) and row is not None and stored is not _DUMMY
            now = self.clock()
            reason = ("no such account" if row is None else "disabled" if row["disabled"]
                      else "locked" if row["locked_until"] > now else None if ok else "wrong passphrase")
            if reason:
                with self.db.atomic():
                    if row is not None and reason == "wrong passphrase":
                        failures = row["failures"] + 1
                        locked = now + self.settings.lockout_s if failures >= self.settings.max_failures else 0
                        self.db.execute("UPDATE accounts SET failures = ?, locked_until = ? WHERE name = ?",
                                        [0 if locked else failures, locked, name])
                        if locked:
                            reason = f"wrong passphrase; locked for {self.settings.lockout_s} s"
                    self.auditor.record("login.failure", name, reason=reason)
                raise LoginFailedError(BAD_LOGIN)
            assert row is not None  # no row gives the reason "no such account" above
            token = secrets.token_urlsafe(32)
            with self.db.atomic():
                self.db.execute("UPDATE accounts SET failures = 0, locked_until = 0 WHERE name = ?", [name])
                self.db.execute("INSERT INTO logins VALUES (?, ?, ?, ?)", [_digest(token), name, now, now])
                self.auditor.record("login.success", name)
        return LoginSession(token, self._account(row))

    def session(self, token: str) -> Account:
        """The account a live session belongs to; its idle clock restarts."""
        if not isinstance(token, str) or len(token) > 128:
            raise SessionExpiredError("not logged in")
        with self._lock:
            rows = list(self.db.query("SELECT * FROM logins WHERE token_sha256 = ?", [_digest(token)]))
            now = self.clock()
            if not rows:
                raise SessionExpiredError("not logged in")
            if now - rows[0]["last_seen"] > self.settings.idle_timeout_s:
                with self.db.atomic():  # committed, then refused: the session is gone for good
                    self.db.execute("DELETE FROM logins WHERE token_sha256 = ?", [_digest(token)])
                    self.auditor.record("logout", rows[0]["user"], reason="idle timeout")
                raise SessionExpiredError("session ended after being idle; log in again")
            acct = self.get(rows[0]["user"])
            if acct.disabled:
                raise SessionExpiredError("not logged in")
            with self.db.atomic():
                self.db.execute("UPDATE logins SET last_seen = ? WHERE token_sha256 = ?", [now, _digest(token)])
        return acct

    def logout(self, token: str) -> None:
        with self._lock, self.db.atomic():
            rows = list(self.db.query("SELECT user FROM logins WHERE token_sha256 = ?", [_digest(token)]))
            if rows:
                self.db.execute("DELETE FROM logins WHERE token_sha256 = ?", [_digest(token)])
                self.auditor.record("logout", rows[0]["user"], reason="logout")
