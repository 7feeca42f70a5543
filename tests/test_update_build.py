"""Building a bundle on the build station, verified by python-tuf's own client from the media."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from tuf.api.exceptions import DownloadError, RepositoryError
from tuf.ngclient import Updater

from appliance.errors import BundleError
from appliance.updates.build import build_bundle, load_spec
from appliance.updates.keys import init_keys
from appliance.updates.media import MEDIA_URL, MediaFetcher
from tests.helpers import BUILD_PASS, bundle_spec


def _client(bundle: Path, trusted_root: bytes, work: Path) -> Updater:
    (work / "md").mkdir(parents=True, exist_ok=True)
    return Updater(str(work / "md"), MEDIA_URL + "metadata/", str(work / "dl"), MEDIA_URL + "targets/",
                   fetcher=MediaFetcher(bundle), bootstrap=trusted_root)


def test_built_bundle_verifies_with_the_tuf_client(tmp_path: Path) -> None:
    init_keys(tmp_path / "keys", BUILD_PASS)
    spec = load_spec(bundle_spec(tmp_path))
    assert [p.target for p in spec.payloads] == ["knowledge/facility-handbook/canteen.txt",
                                                 "knowledge/security/keys.txt"]
    summary = build_bundle(spec, tmp_path / "keys", BUILD_PASS, tmp_path / "state", tmp_path / "bundle1")
    assert summary["root_version"] == 1
    trusted = (tmp_path / "bundle1" / "metadata" / "1.root.json").read_bytes()
    client = _client(tmp_path / "bundle1", trusted, tmp_path / "appliance")
    client.refresh()
    info = client.get_targetinfo("knowledge/security/keys.txt")
    assert info is not None and info.unrecognized_fields["custom"] == {"labels": "SECRET:CRYPTO",
                                                                       "collection": "security"}
    (tmp_path / "appliance" / "dl").mkdir()
    got = client.download_target(info, str(tmp_path / "appliance" / "dl" / "keys.txt"))
    assert Path(got).read_text() == "Cipher keys are rotated monthly.\n"


def test_tampered_blob_and_escaping_paths_are_refused(tmp_path: Path) -> None:
    init_keys(tmp_path / "keys", BUILD_PASS)
    build_bundle(load_spec(bundle_spec(tmp_path)), tmp_path / "keys", BUILD_PASS, tmp_path / "state", tmp_path / "b")
    blob = next((tmp_path / "b" / "targets" / "knowledge" / "security").iterdir())
    blob.write_text("Cipher keys are never rotated.\n")  # same length, other bytes
    client = _client(tmp_path / "b", (tmp_path / "b" / "metadata" / "1.root.json").read_bytes(), tmp_path / "a")
    client.refresh()
    (tmp_path / "a" / "dl").mkdir()
    with pytest.raises(RepositoryError):
        client.download_target(client.get_targetinfo("knowledge/security/keys.txt"), str(tmp_path / "a" / "dl" / "k"))
    fetcher = MediaFetcher(tmp_path / "b")
    for url in (MEDIA_URL + "../keys/keys.json", MEDIA_URL + "/etc/passwd", MEDIA_URL + "a/\x00b", "file:///etc"):
        with pytest.raises(DownloadError):
            b"".join(fetcher.fetch(url))
    (tmp_path / "b" / "metadata" / "link.json").symlink_to(tmp_path / "keys" / "keys.json")
    with pytest.raises(DownloadError, match="symlink"):
        b"".join(fetcher.fetch(MEDIA_URL + "metadata/link.json"))


def test_versions_grow_and_a_lower_release_is_refused(tmp_path: Path) -> None:
    init_keys(tmp_path / "keys", BUILD_PASS)
    build_bundle(load_spec(bundle_spec(tmp_path, 1)), tmp_path / "keys", BUILD_PASS,
                 tmp_path / "state", tmp_path / "b1")
    build_bundle(load_spec(bundle_spec(tmp_path, 2)), tmp_path / "keys", BUILD_PASS,
                 tmp_path / "state", tmp_path / "b2")
    assert (tmp_path / "b2" / "metadata" / "2.snapshot.json").is_file()
    with pytest.raises(BundleError, match="not above the last built release 2"):
        build_bundle(load_spec(bundle_spec(tmp_path, 2)), tmp_path / "keys", BUILD_PASS,
                     tmp_path / "state", tmp_path / "b3")
    # an appliance that trusted bundle 1 accepts bundle 2 and refuses to go back to bundle 1
    trusted = (tmp_path / "b1" / "metadata" / "1.root.json").read_bytes()
    _client(tmp_path / "b2", trusted, tmp_path / "a").refresh()
    with pytest.raises(RepositoryError):
        _client(tmp_path / "b1", trusted, tmp_path / "a").refresh()


def test_expired_bundle_refused(tmp_path: Path) -> None:
    init_keys(tmp_path / "keys", BUILD_PASS)
    long_ago = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    build_bundle(load_spec(bundle_spec(tmp_path)), tmp_path / "keys", BUILD_PASS,
                 tmp_path / "state", tmp_path / "b", now=long_ago)
    client = _client(tmp_path / "b", (tmp_path / "b" / "metadata" / "1.root.json").read_bytes(), tmp_path / "a")
    with pytest.raises(RepositoryError, match="expired"):
        client.refresh()


@pytest.mark.parametrize(("extra", "message"), [
    ('[[knowledge]]\ncollection = "Bad Name"\nlabels = "UNCLASSIFIED"\npaths = []\n', "bad collection"),
    ('[[knowledge]]\ncollection = "x"\nlabels = "COSMIC"\npaths = []\n', "unknown classification level"),
    ('[[knowledge]]\ncollection = "x"\nlabels = "UNCLASSIFIED"\npaths = ["nope.txt"]\n', "no such file"),
    ('[[adapters]]\nname = "a"\npath = "docs/keys.txt"\nbase_sha256 = "xyz"\n', "base_sha256"),
    ('[[knowledge]]\ncollection = "facility-handbook"\nlabels = "UNCLASSIFIED"\npaths = ["docs/canteen.txt"]\n',
     "share a target name"),
])
def test_bad_specs_refused(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(BundleError, match=message):
        load_spec(bundle_spec(tmp_path, extra=extra))


@pytest.mark.processes
def test_bundle_build_cli_signs_the_demo_spec(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env["APPLIANCE_DATA_DIR"] = str(tmp_path / "data")
    init_keys(tmp_path / "keys", BUILD_PASS)
    proc = subprocess.run([sys.executable, "-m", "appliance", "bundle", "build", "--spec",
                           str(repo / "bundles" / "demo.toml"), "--keys", str(tmp_path / "keys"), "--out",
                           str(tmp_path / "usb" / "demo-1"), "--password-stdin"], env=env, capture_output=True,
                          text=True, input=BUILD_PASS + "\n", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "built northgate-demo-knowledge release 3" in proc.stdout
    client = _client(tmp_path / "usb" / "demo-1",
                     (tmp_path / "usb" / "demo-1" / "metadata" / "1.root.json").read_bytes(), tmp_path / "a")
    client.refresh()
    info = client.get_targetinfo("knowledge/security/crypto-key-rotation-schedule.md")
    assert info is not None and info.unrecognized_fields["custom"]["labels"] == "SECRET:CRYPTO"
