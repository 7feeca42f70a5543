"""Staging a bundle from media: one named test per unsafe thing on the media."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.errors import BundleError, BundleTooLargeError
from appliance.updates.staging import StagingLimits, stage


def _media(tmp: Path) -> Path:
    m = tmp / "usb"
    (m / "metadata").mkdir(parents=True)
    (m / "targets" / "knowledge" / "handbook").mkdir(parents=True)
    (m / "metadata" / "timestamp.json").write_text("{}")
    (m / "targets" / "knowledge" / "handbook" / "abc.canteen.txt").write_text("lunch at noon\n")
    return m


def test_a_clean_bundle_is_copied(tmp_path: Path) -> None:
    out = stage(_media(tmp_path), tmp_path / "staging")
    assert (out / "targets" / "knowledge" / "handbook" / "abc.canteen.txt").read_text() == "lunch at noon\n"


def test_symlink_member_refused(tmp_path: Path) -> None:
    m = _media(tmp_path)
    (m / "targets" / "knowledge" / "handbook" / "evil").symlink_to("/etc/passwd")
    with pytest.raises(BundleError, match="symlink"):
        stage(m, tmp_path / "staging")
    assert not (tmp_path / "staging").exists()  # nothing half-staged


def test_hardlink_member_refused(tmp_path: Path) -> None:
    m = _media(tmp_path)
    os.link(m / "metadata" / "timestamp.json", m / "metadata" / "copy.json")
    with pytest.raises(BundleError, match="hard link"):
        stage(m, tmp_path / "staging")


def test_device_member_refused(tmp_path: Path) -> None:
    m = _media(tmp_path)
    os.mkfifo(m / "targets" / "knowledge" / "handbook" / "pipe")
    with pytest.raises(BundleError, match="FIFO"):
        stage(m, tmp_path / "staging")


def test_case_collision_refused(tmp_path: Path) -> None:
    m = _media(tmp_path)
    (m / "targets" / "knowledge" / "handbook" / "ABC.canteen.txt").write_text("other\n")
    with pytest.raises(BundleError, match="differ only in case"):
        stage(m, tmp_path / "staging")


def test_control_character_name_refused(tmp_path: Path) -> None:
    m = _media(tmp_path)
    (m / "targets" / "knowledge" / "handbook" / "a\x1bb").write_text("x")
    with pytest.raises(BundleError, match="unsafe name"):
        stage(m, tmp_path / "staging")


def test_oversized_metadata_refused_before_reading(tmp_path: Path) -> None:
    m = _media(tmp_path)
    (m / "metadata" / "timestamp.json").write_bytes(b" " * 2048)
    with pytest.raises(BundleTooLargeError, match="over the 1024 byte limit"):
        stage(m, tmp_path / "staging", StagingLimits(max_metadata_bytes=1024))


def test_files_outside_metadata_and_targets_refused(tmp_path: Path) -> None:
    m = _media(tmp_path)
    (m / "README").write_text("hello")
    with pytest.raises(BundleError, match="outside metadata/ and targets/"):
        stage(m, tmp_path / "staging")


def test_not_a_bundle_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="not a bundle"):
        stage(tmp_path / "empty", tmp_path / "staging")
