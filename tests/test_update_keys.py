"""Build-station keys: M-of-N root, encrypted private keys, rotation keeps the old keys."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.errors import BundleKeyError
from appliance.updates.keys import ROLES, init_keys, load_keyring, load_signers, rotate_role

PASS = "build station passphrase"


def test_init_makes_every_role_with_an_m_of_n_root(tmp_path: Path) -> None:
    ring = init_keys(tmp_path / "keys", PASS, root_keys=3, root_threshold=2)
    assert set(ring) == set(ROLES)
    assert ring["root"].threshold == 2 and len(ring["root"].keys) == 3
    assert os.stat(tmp_path / "keys").st_mode & 0o777 == 0o700
    for name in ring["root"].files:
        path = tmp_path / "keys" / name
        assert path.stat().st_mode & 0o777 == 0o600 and b"ENCRYPTED PRIVATE KEY" in path.read_bytes()
    assert load_keyring(tmp_path / "keys")["targets"].keys[0].keyid == ring["targets"].keys[0].keyid
    signers = load_signers(tmp_path / "keys", "root", PASS)
    assert [s.public_key.keyid for s in signers] == [k.keyid for k in ring["root"].keys]
    with pytest.raises(BundleKeyError, match="already holds a key ring"):
        init_keys(tmp_path / "keys", PASS)


@pytest.mark.parametrize(("kwargs", "message"), [({"root_keys": 2, "root_threshold": 3}, "root threshold"),
                                                 ({"root_keys": 0, "root_threshold": 0}, "root threshold")])
def test_bad_thresholds_refused(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(BundleKeyError, match=message):
        init_keys(tmp_path / "keys", PASS, **kwargs)


def test_wrong_passphrase_and_loose_permissions_refused(tmp_path: Path) -> None:
    init_keys(tmp_path / "keys", PASS)
    with pytest.raises(BundleKeyError, match="wrong passphrase"):
        load_signers(tmp_path / "keys", "snapshot", "not the passphrase at all")
    with pytest.raises(BundleKeyError, match="at least 12"):
        init_keys(tmp_path / "other", "short")
    os.chmod(tmp_path / "keys" / "snapshot-1.key", 0o644)
    with pytest.raises(BundleKeyError, match="chmod 600"):
        load_signers(tmp_path / "keys", "snapshot", PASS)


def test_rotation_makes_new_keys_and_keeps_the_old_ones_to_sign_the_handover(tmp_path: Path) -> None:
    ring = init_keys(tmp_path / "keys", PASS, root_keys=2, root_threshold=2)
    rotated = rotate_role(tmp_path / "keys", "root", PASS)
    assert {k.keyid for k in rotated.keys}.isdisjoint(k.keyid for k in ring["root"].keys)
    assert [k.keyid for k in rotated.retired] == [k.keyid for k in ring["root"].keys]
    old = load_signers(tmp_path / "keys", "root", PASS, retired=True)
    new = load_signers(tmp_path / "keys", "root", PASS)
    assert len(old) == len(new) == 2 and rotated.threshold == 2
    with pytest.raises(BundleKeyError, match="wrong passphrase"):
        rotate_role(tmp_path / "keys", "targets", "not the passphrase at all")


@pytest.mark.processes
def test_keys_cli(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env["APPLIANCE_DATA_DIR"] = str(tmp_path / "data")
    run = lambda *a: subprocess.run([sys.executable, "-m", "appliance", *a], env=env, capture_output=True,  # noqa: E731
                                    text=True, input=PASS + "\n", timeout=120)
    proc = run("keys", "init", "--dir", str(tmp_path / "k"), "--root-keys", "3", "--root-threshold", "2",
               "--password-stdin")
    assert proc.returncode == 0, proc.stderr
    assert "root: 2 of 3" in proc.stdout.replace("  ", " ").replace("  ", " ")
    again = run("keys", "init", "--dir", str(tmp_path / "k"), "--password-stdin")
    assert again.returncode == 2 and "already holds a key ring" in again.stderr
    proc = run("keys", "rotate", "timestamp", "--dir", str(tmp_path / "k"), "--password-stdin")
    assert proc.returncode == 0 and "retired" in proc.stdout
