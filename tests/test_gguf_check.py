"""Tests of appliance.runtime.gguf_check against small real GGUF files.

The files are written with ``gguf.GGUFWriter`` and then corrupted byte by byte at
offsets found by searching for the (unique) key and tensor names in the header.
"""

from __future__ import annotations

import os
import struct
import tracemalloc
from pathlib import Path

import gguf
import numpy as np
import pytest

from appliance.errors import GGUFError, GGUFTooLargeError
from appliance.runtime.gguf_check import (
    KNOWN_ARCHITECTURES,
    GGUFLimits,
    _quantization_name,
    validate_gguf,
)

# numpy shapes; GGUF stores them reversed. Every tensor is a multiple of 32 bytes,
# so the writer adds no padding and the last tensor ends exactly at end of file.
MODEL_TENSORS: dict[str, tuple[int, ...]] = {
    "token_embd.weight": (4, 8),
    "blk.0.attn_q.weight": (8, 8),
    "blk.0.attn_k.weight": (8, 8),
}
ADAPTER_TENSORS: dict[str, tuple[int, ...]] = {
    "blk.0.attn_q.weight.lora_a": (2, 8),
    "blk.0.attn_q.weight.lora_b": (8, 2),
}


def _write(
    path: Path, arch: str, tensors: dict[str, tuple[int, ...]], kv: dict[str, object]
) -> Path:
    writer = gguf.GGUFWriter(path, arch)
    for key, value in kv.items():
        if key == "general.alignment":
            writer.add_custom_alignment(int(value))  # type: ignore[call-overload]
        elif isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, list):
            writer.add_array(key, value)
        else:
            writer.add_uint32(key, int(value))  # type: ignore[call-overload]
    for i, (name, shape) in enumerate(tensors.items()):
        writer.add_tensor(name, np.full(shape, i + 1, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def make_model(tmp_path: Path, arch: str = "llama", extra: dict[str, object] | None = None) -> Path:
    kv: dict[str, object] = {
        "general.name": "tiny",
        "llama.context_length": 128,
        "general.file_type": int(gguf.LlamaFileType.ALL_F32),
        "tokenizer.ggml.tokens": ["<s>", "</s>", "a"],
    }
    kv.update(extra or {})
    return _write(tmp_path / "model.gguf", arch, MODEL_TENSORS, kv)


def make_adapter(tmp_path: Path) -> Path:
    kv: dict[str, object] = {
        "general.type": "adapter", "adapter.type": "lora", "adapter.lora.alpha": 16.0,
    }
    return _write(tmp_path / "adapter.gguf", "llama", ADAPTER_TENSORS, kv)


def find(path: Path, needle: bytes) -> int:
    """Offset of the single occurrence of ``needle`` in the file."""
    data = path.read_bytes()
    pos = data.find(needle)
    assert pos >= 0 and data.find(needle, pos + 1) < 0, needle
    return pos


def patch(path: Path, offset: int, raw: bytes) -> None:
    """Overwrite bytes of the file at ``offset``."""
    with path.open("r+b") as fh:
        fh.seek(offset)
        fh.write(raw)


def tensor_field(path: Path, name: str, field: str) -> int:
    """Offset of ``field`` (n_dims, type, offset) of tensor info ``name``; 'end' is after it."""
    pos = find(path, struct.pack("<Q", len(name)) + name.encode()) + 8 + len(name)
    (n_dims,) = struct.unpack_from("<I", path.read_bytes(), pos)
    fields = {"n_dims": pos, "type": pos + 4 + 8 * n_dims, "offset": pos + 8 + 8 * n_dims,
              "end": pos + 16 + 8 * n_dims}
    return int(fields[field])


def value_field(path: Path, key: str) -> int:
    """Offset of the value type of metadata ``key`` (its value follows 4 bytes later)."""
    return find(path, struct.pack("<Q", len(key)) + key.encode()) + 8 + len(key)


def check(path: Path, word: str, exc: type[GGUFError] = GGUFError, **kwargs: object) -> str:
    """Validate, expecting ``exc`` with a one-line message naming the file and ``word``."""
    with pytest.raises(exc) as info:
        validate_gguf(path, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert type(info.value) is exc, message
    prefix = f"{path}: "
    assert message.startswith(prefix), message
    problem = message[len(prefix):]  # tmp_path contains the test's name: don't match there
    assert word in problem, message
    assert "\n" not in message
    return problem


# -- valid files -------------------------------------------------------------------------


def test_valid_model_accepted(tmp_path: Path) -> None:
    path = make_model(tmp_path)
    info = validate_gguf(path, expect="model")
    assert info.path == path and info.version == 3
    assert info.architecture == "llama" and info.gguf_type == "model"
    assert info.quantization == "F32"
    assert info.tensor_count == 3 and info.kv_count == 5
    assert [t.name for t in info.tensors] == list(MODEL_TENSORS)
    assert [t.shape for t in info.tensors] == [(8, 4), (8, 8), (8, 8)]
    assert {t.ggml_type for t in info.tensors} == {"F32"}
    assert [t.nbytes for t in info.tensors] == [128, 256, 256]
    assert info.data_offset % 32 == 0 and info.tensors[0].offset == info.data_offset
    last = info.tensors[-1]
    assert last.offset + last.nbytes == info.file_size == path.stat().st_size
    assert info.get("general.name") == "tiny" and info.get("llama.context_length") == 128
    assert info.get("nope", 7) == 7
    assert "tokenizer.ggml.tokens" not in info.metadata
    assert info.array_lengths == {"tokenizer.ggml.tokens": 3}
    data = path.read_bytes()
    second = np.frombuffer(data[info.tensors[1].offset:][:256], dtype=np.float32)
    assert second.tolist() == [2.0] * 64


def test_valid_adapter_accepted(tmp_path: Path) -> None:
    info = validate_gguf(make_adapter(tmp_path), expect="adapter")
    assert info.gguf_type == "adapter" and info.architecture == "llama"
    assert info.get("adapter.type") == "lora" and info.get("adapter.lora.alpha") == 16.0
    assert [t.shape for t in info.tensors] == [(8, 2), (2, 8)]
    assert info.quantization is None


def test_quantization_names() -> None:
    assert _quantization_name(int(gguf.LlamaFileType.MOSTLY_Q4_1)) == "Q4_1"
    assert _quantization_name(int(gguf.LlamaFileType.MOSTLY_F16)) == "F16"
    assert _quantization_name(int(gguf.LlamaFileType.MOSTLY_Q4_K_M)) == "Q4_K_M"
    assert _quantization_name(4) == "type 4"


def test_known_architectures() -> None:
    assert {"llama", "bert", "nomic-bert", "jina-bert-v2", "qwen2", "qwen3", "gemma3",
            "phi3", "granite", "t5encoder"} <= KNOWN_ARCHITECTURES


def test_nested_array_accepted(tmp_path: Path) -> None:
    path = make_model(tmp_path, extra={"test.nested": [[1, 2], [3]], "general.alignment": 64})
    info = validate_gguf(path)
    assert info.array_lengths["test.nested"] == 2 and info.data_offset % 64 == 0


# -- the file itself -------------------------------------------------------------------


def test_bad_magic(tmp_path: Path) -> None:
    path = make_model(tmp_path)
    patch(path, 0, b"GGML")
    check(path, "magic")


def test_unsupported_version(tmp_path: Path) -> None:
    path = make_model(tmp_path)
    patch(path, 4, struct.pack("<I", 1))
    check(path, "version 1")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "zero.gguf"
    path.write_bytes(b"")
    check(path, "file is empty")


def test_missing_file(tmp_path: Path) -> None:
    check(tmp_path / "absent.gguf", "does not exist")


def test_fifo_does_not_block(tmp_path: Path) -> None:
    path = tmp_path / "fifo.gguf"
    os.mkfifo(path)
    check(path, "not a regular file")


def test_directory(tmp_path: Path) -> None:
    path = tmp_path / "dir.gguf"
    path.mkdir()
    check(path, "directory")


def test_file_over_max_file_bytes(tmp_path: Path) -> None:
    path = make_model(tmp_path)
    check(path, "max_file_bytes", GGUFTooLargeError, limits=GGUFLimits(max_file_bytes=1000))


# -- counts and limits -------------------------------------------------------------------


def test_bogus_tensor_count_fails_fast(tmp_path: Path) -> None:
    path = make_model(tmp_path)
    patch(path, 8, struct.pack("<Q", 2**40))
    tracemalloc.start()
    try:
        check(path, "tensor count", GGUFTooLargeError)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_tensor_count_larger_than_present(tmp_path: Path) -> None:
    path = make_model(tmp_path)
    header_end = tensor_field(path, "blk.0.attn_k.weight", "end")
    patch(path, 8, struct.pack("<Q", 4))
    with path.open("r+b") as fh:
        fh.truncate(header_end)
    problem = check(path, "truncated")
    assert "tensor info #3" in problem


def test_bogus_kv_count(tmp_path: Path) -> None:
    path = make_model(tmp_path)
    patch(path, 16, struct.pack("<Q", 2**40))
    check(path, "key-value count", GGUFTooLargeError)


def test_string_too_long_for_limit(tmp_path: Path) -> None:
    path = make_model(tmp_path)
    check(path, "max_string_bytes", GGUFTooLargeError, limits=GGUFLimits(max_string_bytes=8))


def test_array_too_long_for_limit(tmp_path: Path) -> None:
    path = make_model(tmp_path)
    problem = check(path, "max_array_len", GGUFTooLargeError, limits=GGUFLimits(max_array_len=2))
    assert "tokenizer.ggml.tokens" in problem


def test_header_over_max_header_bytes(tmp_path: Path) -> None:
    path = make_model(tmp_path)
    check(path, "max_header_bytes", GGUFTooLargeError, limits=GGUFLimits(max_header_bytes=100))


# -- truncation ------------------------------------------------------------------------


def test_string_length_past_end_of_file(tmp_path: Path) -> None:
    path = make_model(tmp_path)
    patch(path, value_field(path, "general.name") + 4, struct.pack("<Q", 1_000_000))
    problem = check(path, "truncated")
    assert "general.name" in problem


def test_truncated_header(tmp_path: Path) -> None:
    path = make_model(tmp_path)
    cut = value_field(path, "tokenizer.ggml.tokens") + 20  # inside the array's first string
    with path.open("r+b") as fh:
        fh.truncate(cut)
    problem = check(path, "truncated")
    assert "element 0 of key 'tokenizer.ggml.tokens'" in problem and f"has {cut} bytes" in problem


def test_truncated_tensor_data(tmp_path: Path) -> None:
    path = make_model(tmp_path)
    size = path.stat().st_size
    with path.open("r+b") as fh:
        fh.truncate(size - 16)
    problem = check(path, "truncated")
    assert "blk.0.attn_k.weight" in problem and f"ends at byte {size}" in problem


def test_tensor_offset_past_file(tmp_path: Path) -> None:
    path = make_model(tmp_path)
    patch(path, tensor_field(path, "blk.0.attn_q.weight", "offset"), struct.pack("<Q", 2**20))
    problem = check(path, "truncated")
    assert "blk.0.attn_q.weight" in problem and "past the end" in problem


# -- tensor infos ----------------------------------------------------------------------


def test_unknown_ggml_type(tmp_path: Path) -> None:
    path = make_model(tmp_path)
    patch(path, tensor_field(path, "token_embd.weight", "type"), struct.pack("<I", 4))
    check(path, "unknown ggml type 4")


def test_misaligned_tensor_offset(tmp_path: Path) -> None:
    path = make_model(tmp_path)
    offset = tensor_field(path, "blk.0.attn_k.weight", "offset")
    patch(path, offset, struct.pack("<Q", 128 + 256 + 4))
    check(path, "alignment 32")


def test_overlapping_tensors(tmp_path: Path) -> None:
    path = make_model(tmp_path)
    patch(path, tensor_field(path, "blk.0.attn_k.weight", "offset"), struct.pack("<Q", 128 + 32))
    problem = check(path, "overlaps")
    assert "blk.0.attn_q.weight" in problem and "blk.0.attn_k.weight" in problem


def test_duplicate_tensor_name(tmp_path: Path) -> None:
    path = make_model(tmp_path)
    patch(path, find(path, b"blk.0.attn_k.weight"), b"blk.0.attn_q.weight")
    check(path, "duplicate tensor name 'blk.0.attn_q.weight'")


def test_tensor_name_too_long(tmp_path: Path) -> None:
    tensors = {**MODEL_TENSORS, "x" * 64: (8,)}  # llama.cpp's GGML_MAX_NAME is 64 with NUL
    path = _write(tmp_path / "long.gguf", "llama", tensors, {"general.name": "x"})
    check(path, "64 bytes long (at most 63)")


def test_bad_n_dims(tmp_path: Path) -> None:
    path = make_model(tmp_path)
    patch(path, tensor_field(path, "token_embd.weight", "n_dims"), struct.pack("<I", 5))
    check(path, "5 dimensions")


def test_zero_dimension(tmp_path: Path) -> None:
    path = make_model(tmp_path)
    patch(path, tensor_field(path, "token_embd.weight", "n_dims") + 4, struct.pack("<Q", 0))
    check(path, "dimension of 0")


def test_first_dim_not_multiple_of_block_size(tmp_path: Path) -> None:
    path = make_model(tmp_path)
    q4_0 = struct.pack("<I", gguf.GGMLQuantizationType.Q4_0)  # blocks of 32, but ne[0] is 8
    patch(path, tensor_field(path, "token_embd.weight", "type"), q4_0)
    check(path, "block size 32")


# -- metadata --------------------------------------------------------------------------


def test_unknown_value_type(tmp_path: Path) -> None:
    path = make_model(tmp_path)
    patch(path, value_field(path, "llama.context_length"), struct.pack("<I", 99))
    problem = check(path, "unknown value type 99")
    assert "llama.context_length" in problem


def test_non_utf8_key(tmp_path: Path) -> None:
    path = make_model(tmp_path)
    patch(path, find(path, b"general.name"), b"\xff")
    check(path, "UTF-8")


def test_non_utf8_array_element(tmp_path: Path) -> None:
    path = make_model(tmp_path)
    patch(path, find(path, b"</s>"), b"\xff")
    problem = check(path, "UTF-8")
    assert "element 1 of key 'tokenizer.ggml.tokens'" in problem


def test_arrays_nested_too_deep(tmp_path: Path) -> None:
    path = make_model(tmp_path, extra={"test.nested": [[[[[1]]]]]})
    check(path, "nested more than 4 deep")


def test_duplicate_key(tmp_path: Path) -> None:
    path = make_model(tmp_path)
    # the first key becomes a second (UINT32-valued) "llama.context_length"
    patch(path, find(path, b"general.architecture"), b"llama.context_length")
    check(path, "duplicate key 'llama.context_length'")


def test_bad_alignment(tmp_path: Path) -> None:
    path = make_model(tmp_path, extra={"general.alignment": 64})
    patch(path, value_field(path, "general.alignment") + 4, struct.pack("<I", 48))
    check(path, "general.alignment")


def test_missing_architecture(tmp_path: Path) -> None:
    path = make_model(tmp_path)
    patch(path, find(path, b"general.architecture"), b"general.architecturX")
    check(path, "missing general.architecture")


def test_unknown_architecture(tmp_path: Path) -> None:
    path = make_model(tmp_path, arch="frobnicator")
    check(path, "unknown architecture 'frobnicator'")


def test_message_stays_one_line(tmp_path: Path) -> None:
    path = make_model(tmp_path, arch="evil\narch")
    check(path, "unknown architecture 'evil\\narch'")


# -- expectations ----------------------------------------------------------------------


def test_adapter_expected_but_model_given(tmp_path: Path) -> None:
    check(make_model(tmp_path), "expected an adapter", expect="adapter")


def test_model_expected_but_adapter_given(tmp_path: Path) -> None:
    check(make_adapter(tmp_path), "general.type is 'adapter'", expect="model")


def test_adapter_must_be_lora(tmp_path: Path) -> None:
    path = make_adapter(tmp_path)
    patch(path, value_field(path, "adapter.type") + 4 + 8, b"xora")
    check(path, "adapter.type is 'xora'")


def test_model_without_tensors(tmp_path: Path) -> None:
    path = _write(tmp_path / "empty_model.gguf", "llama", {}, {"general.name": "x"})
    check(path, "no tensors")
