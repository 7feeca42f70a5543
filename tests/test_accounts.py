"""Local accounts: passphrases, roles, clearances, lockout, idle timeout, audited changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.access.accounts import BAD_LOGIN, AccountStore, check_passphrase, hash_passphrase
from appliance.access.labels import Labels, LevelScale
from appliance.config import AccessSettings
from appliance.errors import AccessError, AuditWriteError, LoginFailedError, NotPermittedError, SessionExpiredError

PASS = "correct horse battery"


class Recorder:
    def __init__(self) -> None:
        self.entries: list[tuple[str, str | None, dict]] = []
        self.broken = False

    def record(self, kind: str, user: str | None, **fields: object) -> None:
        if self.broken:
            raise AuditWriteError("audit log cannot be written: disk full")
        self.entries.append((kind, user, fields))


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def env(tmp_path: Path) -> tuple[AccountStore, Recorder, Clock]:
    rec, clock = Recorder(), Clock()
    store = AccountStore(tmp_path / "access.db", LevelScale(), AccessSettings(max_failures=3, lockout_s=60,
                                                                               idle_timeout_s=100), rec, clock)
    store.add("admin", role="admin", level="TOP SECRET", passphrase=PASS, by=None)
    store.add("alice", role="analyst", level="secret", compartments=["CRYPTO"], passphrase=PASS, by=ADMIN(store))
    return store, rec, clock


def ADMIN(store: AccountStore):  # noqa: N802 - reads as a constant at the call sites
    return store.get("admin")


def test_passphrases_are_scrypt_hashed() -> None:
    stored = hash_passphrase(PASS)
    assert stored.startswith("scrypt$32768$8$1$") and PASS not in stored
    assert check_passphrase(PASS, stored) and not check_passphrase(PASS + "!", stored)
    assert not check_passphrase(PASS, "md5$whatever") and not check_passphrase(PASS, "scrypt$garbage")


def test_add_validates_and_is_audited(env) -> None:
    store, rec, _ = env
    alice = store.get("alice")
    assert (alice.role, alice.level, alice.compartments) == ("analyst", "SECRET", frozenset({"CRYPTO"}))
    assert alice.principal().can_read(Labels("SECRET", frozenset({"CRYPTO"})), LevelScale())
    assert rec.entries[0][:2] == ("user.add", "bootstrap")
    assert rec.entries[1] == ("user.add", "admin", {"target": "alice", "role": "analyst", "level": "SECRET",
                                                    "compartments": ["CRYPTO"]})
    for kwargs, message in [({"name": "Bob!"}, "bad user name"), ({"role": "root"}, "unknown role"),
                            ({"level": "COSMIC"}, "unknown classification level"),
                            ({"passphrase": "short"}, "at least 12"), ({"name": "alice"}, "already exists"),
                            ({"passphrase": "x" * 2000}, "at most 1024 bytes"),
                            ({"compartments": ["bad one"]}, "compartment")]:
        args = {"name": "bob", "role": "analyst", "level": "SECRET", "passphrase": PASS} | kwargs
        name = args.pop("name")
        with pytest.raises(AccessError, match=message):
            store.add(name, by=ADMIN(store), **args)
    assert [a.name for a in store.list()] == ["admin", "alice"]
    with pytest.raises(AccessError, match="only the first account"):
        store.add("eve", role="admin", level="SECRET", passphrase=PASS, by=None)
    with pytest.raises(NotPermittedError, match="users.manage needs the role admin"):
        store.add("eve", role="admin", level="SECRET", passphrase=PASS, by=store.get("alice"))
    with pytest.raises(NotPermittedError, match="users.list needs"):
        store.list(by=store.get("alice"))


def test_change_refused_when_audit_cannot_be_written(env) -> None:
    store, rec, _ = env
    rec.broken = True
    with pytest.raises(AuditWriteError, match="disk full"):
        store.add("bob", role="analyst", level="SECRET", passphrase=PASS, by=ADMIN(store))
    with pytest.raises(AuditWriteError):
        store.grant("alice", compartments=["NUCLEAR"], by=ADMIN(store))
    with pytest.raises(AuditWriteError):
        store.login("alice", PASS)
    rec.broken = False
    assert [a.name for a in store.list()] == ["admin", "alice"] and store.get("alice").compartments == {"CRYPTO"}


def test_login_lockout_and_same_answer_for_every_refusal(env) -> None:
    store, rec, clock = env
    for _ in range(3):
        with pytest.raises(LoginFailedError, match=BAD_LOGIN):
            store.login("alice", "wrong passphrase!")
    with pytest.raises(LoginFailedError, match=BAD_LOGIN):  # locked now, even with the right passphrase
        store.login("alice", PASS)
    with pytest.raises(LoginFailedError, match=BAD_LOGIN):
        store.login("nobody", PASS)
    reasons = [e[2]["reason"] for e in rec.entries if e[0] == "login.failure"]
    assert reasons == ["wrong passphrase", "wrong passphrase", "wrong passphrase; locked for 60 s", "locked",
                       "no such account"]
    clock.t += 61
    assert store.login("alice", PASS).account.name == "alice"
    assert rec.entries[-1][:2] == ("login.success", "alice")


def test_session_idle_timeout_logout_and_disable(env) -> None:
    store, rec, clock = env
    s = store.login("alice", PASS)
    clock.t += 90
    assert store.session(s.token).name == "alice"  # used: the idle clock restarts
    clock.t += 90
    assert store.session(s.token).name == "alice"
    clock.t += 101
    with pytest.raises(SessionExpiredError, match="idle"):
        store.session(s.token)
    s2 = store.login("alice", PASS)
    store.logout(s2.token)
    with pytest.raises(SessionExpiredError):
        store.session(s2.token)
    s3 = store.login("alice", PASS)
    store.disable("alice", by=ADMIN(store))
    with pytest.raises(SessionExpiredError):
        store.session(s3.token)
    with pytest.raises(LoginFailedError, match=BAD_LOGIN):
        store.login("alice", PASS)
    assert ("logout", "alice", {"reason": "idle timeout"}) in rec.entries


def test_grant_revoke_passwd(env) -> None:
    store, rec, _ = env
    store.grant("alice", compartments=["nuclear"], level="TOP_SECRET", by=ADMIN(store))
    assert store.get("alice").compartments == {"CRYPTO", "NUCLEAR"} and store.get("alice").level == "TOP SECRET"
    store.revoke("alice", compartments=["CRYPTO"], level="SECRET", by=ADMIN(store))
    assert store.get("alice").compartments == {"NUCLEAR"} and store.get("alice").level == "SECRET"
    with pytest.raises(AccessError, match="does not hold"):
        store.revoke("alice", compartments=["CRYPTO"], by=ADMIN(store))
    with pytest.raises(AccessError, match="use grant"):
        store.revoke("alice", level="TOP SECRET", by=ADMIN(store))
    with pytest.raises(AccessError, match="current passphrase is wrong"):  # a session alone is not enough
        store.passwd("alice", "another long passphrase", by=store.get("alice"))
    store.passwd("alice", "another long passphrase", by=store.get("alice"), current=PASS)  # one's own
    with pytest.raises(NotPermittedError, match="needs the role admin"):
        store.passwd("admin", "another long passphrase", by=store.get("alice"))
    with pytest.raises(LoginFailedError):
        store.login("alice", PASS)
    assert store.login("alice", "another long passphrase").account.level == "SECRET"
    assert [k for k, *_ in rec.entries if k.startswith("user.")] == ["user.add", "user.add", "user.grant",
                                                                    "user.revoke", "user.passwd"]
