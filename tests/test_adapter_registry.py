"""Adapters in the registry: only for the base they were made for, never half-written."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.errors import GGUFError, ModelStoreError
from appliance.runtime.model_store import ModelRecord, ModelStore
from tests.conftest import make_random_adapter


@pytest.fixture()
def store(tmp_path: Path, generator: ModelRecord, embedder_record: ModelRecord) -> ModelStore:
    s = ModelStore(tmp_path / "models")
    s.add_file(generator.path, name="base", kind="generator", source="test")
    s.add_file(embedder_record.path, name="embedder", kind="embedder", source="test")
    return s


def _state(store: ModelStore) -> tuple[list[tuple[str, str]], list[str]]:
    return ([(r.name, r.sha256) for r in store.list()], sorted(p.name for p in store.blobs.iterdir()))


def test_an_adapter_is_registered_for_the_base_it_records(store: ModelStore, tmp_path: Path) -> None:
    base = store.get("base")
    adapter = make_random_adapter(base.path, tmp_path / "good.gguf", seed=1,
                                  metadata={"adapter.base_sha256": base.sha256})
    rec = store.add_file(adapter, name="good", kind="adapter", source="test")
    assert rec.base_sha256 == base.sha256


def test_an_adapter_trained_on_another_base_is_refused(store: ModelStore, tmp_path: Path) -> None:
    base, other = store.get("base"), store.get("embedder")
    adapter = make_random_adapter(base.path, tmp_path / "a.gguf", seed=1, metadata={"adapter.base_sha256": base.sha256})
    before = _state(store)
    with pytest.raises(ModelStoreError, match=r"trained on the base with sha256 .* not on"):
        store.add_file(adapter, name="a", kind="adapter", source="test", base_sha256=other.sha256)
    assert _state(store) == before


def test_an_adapter_whose_shapes_do_not_fit_the_base_is_refused(store: ModelStore, tmp_path: Path) -> None:
    other = store.get("embedder")  # a registered model of other dimensions (384, not 576)
    adapter = make_random_adapter(store.get("base").path, tmp_path / "a.gguf", seed=1)
    before = _state(store)
    with pytest.raises(ModelStoreError, match=r"blk\.0\.attn_q\.weight is 384x384, the adapter expects 576x576 "
                                              r"in the base embedder: it was made for another base"):
        store.add_file(adapter, name="a", kind="adapter", source="test", base_sha256=other.sha256)
    assert _state(store) == before


def test_a_corrupted_adapter_leaves_the_registry_as_it_was(store: ModelStore, tmp_path: Path) -> None:
    good = make_random_adapter(store.get("base").path, tmp_path / "good.gguf", seed=1)
    store.add_file(good, name="kept", kind="adapter", source="test")
    before = _state(store)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(good.read_bytes()[:-4096])
    flipped = tmp_path / "flipped.gguf"
    data = bytearray(good.read_bytes())
    data[8:16] = (2**40).to_bytes(8, "little")  # a tensor count no file could hold
    flipped.write_bytes(bytes(data))
    for bad, why in ((truncated, "truncated"), (flipped, "tensor")):
        with pytest.raises(GGUFError, match=why) as err:
            store.add_file(bad, name="kept", kind="adapter", source="test")  # would replace the good one
        assert bad.name in str(err.value)
    assert _state(store) == before
    assert not [p for p in store.blobs.iterdir() if p.name.startswith(".incoming")]


def test_cli_import_names_the_other_base(store: ModelStore, tmp_path: Path) -> None:
    from tests.helpers import run_cli as _run

    adapter = make_random_adapter(store.get("base").path, tmp_path / "a.gguf", seed=1)
    proc = _run(["models", "import", str(adapter), "--name", "a", "--kind", "adapter", "--base", "embedder"],
                tmp_path, store)
    assert proc.returncode != 0
    assert "made for another base" in proc.stderr and "Traceback" not in proc.stderr
    assert not store.has("a")
    ok = _run(["models", "import", str(adapter), "--name", "a", "--kind", "adapter", "--base", "base"], tmp_path, store)
    assert ok.returncode == 0, ok.stderr
    assert store.get("a").base_sha256 == store.get("base").sha256
