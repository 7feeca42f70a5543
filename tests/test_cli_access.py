"""`appliance login/users/policy/audit` end to end through the CLI (no models needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.helpers import PASS, login, run_cli

pytestmark = pytest.mark.processes


def run(args: list[str], home: Path, token: str | None = None, input: str | None = None):
    return run_cli(args, home, SimpleNamespace(root=home / "models"), token=token, input=input)  # type: ignore[arg-type]


def test_bootstrap_login_and_user_administration(tmp_path: Path) -> None:
    first = run(["users", "add", "ann", "--role", "analyst", "--level", "SECRET", "--password-stdin"], tmp_path,
                input=PASS + "\n")
    assert first.returncode == 2 and "first account must be an admin" in first.stderr
    boot = run(["users", "add", "root", "--role", "admin", "--level", "SECRET", "--password-stdin"], tmp_path,
               input=PASS + "\n")
    assert boot.returncode == 0, boot.stderr
    again = run(["users", "add", "eve", "--role", "admin", "--level", "SECRET", "--password-stdin"], tmp_path,
                input=PASS + "\n")
    assert again.returncode == 2 and "not logged in" in again.stderr  # only the very first account is free
    bad = run(["login", "root", "--password-stdin"], tmp_path, input="wrong passphrase here\n")
    assert bad.returncode == 2 and "wrong user name or passphrase" in bad.stderr
    assert run(["login", "root", "--password-stdin"], tmp_path, input=PASS + "\n").returncode == 0
    assert json.loads(run(["whoami"], tmp_path).stdout)["name"] == "root"  # the session file
    root = login(tmp_path, SimpleNamespace(root=tmp_path / "models"), "root")  # type: ignore[arg-type]
    add = run(["users", "add", "ann", "--role", "analyst", "--level", "CONFIDENTIAL", "--password-stdin"], tmp_path,
              token=root, input=PASS + "\n")
    assert add.returncode == 0, add.stderr
    ann = login(tmp_path, SimpleNamespace(root=tmp_path / "models"), "ann")  # type: ignore[arg-type]
    refused = run(["users", "list"], tmp_path, token=ann)
    assert refused.returncode == 2 and "needs the role admin" in refused.stderr
    assert run(["users", "grant", "ann", "--level", "SECRET", "--compartments", "CRYPTO"], tmp_path,
               token=root).returncode == 0
    listed = {u["name"]: u for u in json.loads(run(["users", "list", "--json"], tmp_path, token=root).stdout)}
    assert listed["ann"]["level"] == "SECRET" and listed["ann"]["compartments"] == ["CRYPTO"]
    assert run(["users", "revoke", "ann", "--compartments", "CRYPTO"], tmp_path, token=root).returncode == 0
    gone = run(["whoami"], tmp_path, token=ann)  # a revoke ends the account's sessions
    assert gone.returncode == 2 and "not logged in" in gone.stderr
    assert run(["users", "disable", "ann"], tmp_path, token=root).returncode == 0
    assert run(["login", "ann", "--password-stdin"], tmp_path, input=PASS + "\n").returncode == 2
    assert run(["users", "enable", "ann"], tmp_path, token=root).returncode == 0
    assert run(["logout"], tmp_path).returncode == 0
    assert run(["whoami"], tmp_path).returncode == 2


def test_policy_file_applies_whole_or_not_at_all(tmp_path: Path) -> None:
    assert run(["users", "add", "root", "--role", "admin", "--level", "TOP SECRET", "--password-stdin"], tmp_path,
               input=PASS + "\n").returncode == 0
    root = login(tmp_path, SimpleNamespace(root=tmp_path / "models"), "root")  # type: ignore[arg-type]
    assert run(["users", "add", "old", "--role", "analyst", "--level", "SECRET", "--password-stdin"], tmp_path,
               token=root, input=PASS + "\n").returncode == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('compartments = ["CRYPTO"]\n[users.zed]\nrole = "analyst"\nlevel = "SECRET"\n'
                   'compartments = ["NUCLEAR"]\n')
    proc = run(["policy", "apply", str(bad)], tmp_path, token=root)
    assert proc.returncode == 2 and "does not declare: NUCLEAR" in proc.stderr
    demote = tmp_path / "demote.toml"
    demote.write_text('[users.root]\nrole = "analyst"\nlevel = "SECRET"\ncompartments = []\n')
    proc = run(["policy", "apply", str(demote)], tmp_path, token=root)
    assert proc.returncode == 2 and "apply it as another admin" in proc.stderr
    good = tmp_path / "policy.toml"
    good.write_text('levels = ["UNCLASSIFIED", "CONFIDENTIAL", "SECRET", "TOP SECRET"]\ncompartments = ["CRYPTO"]\n'
                    '[users.zed]\nrole = "officer"\nlevel = "SECRET"\ncompartments = ["CRYPTO"]\n')
    proc = run(["policy", "apply", str(good)], tmp_path, token=root)
    assert proc.returncode == 0, proc.stderr
    assert "added zed (disabled until a passphrase is set)" in proc.stdout and "disabled old" in proc.stdout
    users = {u["name"]: u for u in json.loads(run(["users", "list", "--json"], tmp_path, token=root).stdout)}
    assert users["zed"]["disabled"] and users["old"]["disabled"] and not users["root"]["disabled"]
    assert "no changes" in run(["policy", "apply", str(good)], tmp_path, token=root).stdout


def test_audit_export_and_offline_verify(tmp_path: Path) -> None:
    assert run(["users", "add", "root", "--role", "admin", "--level", "SECRET", "--password-stdin"], tmp_path,
               input=PASS + "\n").returncode == 0
    root = login(tmp_path, SimpleNamespace(root=tmp_path / "models"), "root")  # type: ignore[arg-type]
    for name, role in (("olga", "officer"), ("ann", "analyst")):
        assert run(["users", "add", name, "--role", role, "--level", "SECRET", "--password-stdin"], tmp_path,
                   token=root, input=PASS + "\n").returncode == 0
    olga = login(tmp_path, SimpleNamespace(root=tmp_path / "models"), "olga")  # type: ignore[arg-type]
    ann = login(tmp_path, SimpleNamespace(root=tmp_path / "models"), "ann")  # type: ignore[arg-type]
    refused = run(["audit", "export", "--out", str(tmp_path / "x")], tmp_path, token=ann)
    assert refused.returncode == 2 and "officer or auditor" in refused.stderr
    out1 = tmp_path / "media" / "export1"
    proc = run(["audit", "export", "--out", str(out1)], tmp_path, token=olga)
    assert proc.returncode == 0, proc.stderr
    kinds = [json.loads(line)["kind"] for line in (out1 / "entries.jsonl").read_text().splitlines()]
    assert kinds[0] == "user.add" and "login.success" in kinds and kinds[-1] == "audit.export"
    assert run(["audit", "verify", str(out1)], tmp_path).returncode == 0
    run(["login", "ann", "--password-stdin"], tmp_path, input="not her passphrase\n")
    out2 = tmp_path / "media" / "export2"
    proc = run(["audit", "export", "--out", str(out2), "--since-checkpoint", str(out1 / "checkpoint"), "--user",
                "ann"], tmp_path, token=olga)
    assert proc.returncode == 0, proc.stderr
    anns = [json.loads(line) for line in (out2 / "entries.jsonl").read_text().splitlines()]
    assert {e["user"] for e in anns} == {"ann"} and anns[-1]["kind"] == "login.failure"
    (tmp_path / "pinned.vkey").write_text(run(["audit", "key"], tmp_path).stdout)
    offline = subprocess.run([sys.executable, "-m", "appliance.audit.verify", str(out2), "--key",
                              str(tmp_path / "pinned.vkey")], capture_output=True, text=True, timeout=120)
    assert offline.returncode == 0 and "filtered" in offline.stdout and "extends the checkpoint" in offline.stdout
    assert run(["audit", "check"], tmp_path, token=olga).returncode == 0
    (out1 / "entries.jsonl").write_text((out1 / "entries.jsonl").read_text().replace('"root"', '"toor"', 1))
    tampered = run(["audit", "verify", str(out1)], tmp_path)
    assert tampered.returncode == 1 and "FAILED" in tampered.stderr
