"""Validate a GGUF file before it ever reaches llama.cpp (which may crash on a bad one).

Pure Python: the header (metadata and tensor infos) is parsed with bounded reads from
a file object; the file is never mapped and tensor data is never read. Every count,
length and size is compared with :class:`GGUFLimits` or the end of the file *before*
anything is read or allocated. ``gguf`` is used only for its constants.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import gguf

from appliance.errors import GGUFError, GGUFTooLargeError

__all__ = ["GGUFLimits", "KNOWN_ARCHITECTURES", "TensorInfo", "GGUFInfo", "validate_gguf"]

Scalar = str | int | float | bool
Expect = Literal["model", "adapter"] | None


@dataclass(frozen=True)
class GGUFLimits:
    """Upper bounds applied while parsing; exceeding one raises GGUFTooLargeError."""

    max_file_bytes: int = 16 * 2**30
    max_tensors: int = 65_536
    max_kv: int = 65_536
    max_string_bytes: int = 16 * 2**20  # any one key or string value
    max_array_len: int = 2**24
    max_header_bytes: int = 256 * 2**20  # metadata + tensor infos together


# Names as spelled in llama.cpp's llama-arch.cpp. Mistral/Mixtral models use "llama".
KNOWN_ARCHITECTURES: frozenset[str] = frozenset({
    "llama", "llama4", "mistral3", "mistral4", "deci", "gpt-oss", "lfm2",
    "qwen", "qwen2", "qwen2moe", "qwen2vl", "qwen3", "qwen3moe", "qwen3next", "qwen35",
    "gemma", "gemma2", "gemma3", "gemma3n", "gemma4", "gemma-embedding",
    "phi2", "phi3", "phimoe", "granite", "granitemoe", "granitehybrid", "olmo", "olmo2", "olmoe",
    "bert", "modern-bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3",
    "t5", "t5encoder", "stablelm", "starcoder2", "falcon", "gpt2", "gptneox",
    "command-r", "cohere2", "internlm2", "minicpm", "smollm3", "exaone", "deepseek", "deepseek2",
})

_VT = gguf.GGUFValueType
_SCALARS: dict[int, struct.Struct] = {
    vtype: struct.Struct("<" + code) for vtype, code in zip(
        (_VT.UINT8, _VT.INT8, _VT.UINT16, _VT.INT16, _VT.UINT32, _VT.INT32,
         _VT.FLOAT32, _VT.BOOL, _VT.UINT64, _VT.INT64, _VT.FLOAT64), "BbHhIifBQqd", strict=True)
}
_INTEGER_TYPES = frozenset(t for t in _SCALARS if t not in (_VT.FLOAT32, _VT.FLOAT64, _VT.BOOL))
_U64 = _SCALARS[_VT.UINT64]
_DEFAULT_ALIGNMENT = 32
_MAX_DIMS = 4  # GGML_MAX_DIMS
_MAX_TENSOR_NAME = 63  # GGML_MAX_NAME (64) minus the terminating NUL
_MAX_NESTING = 4  # arrays of arrays of ...
_INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as described by the header.

    ``shape`` is in GGUF/ggml order (``ne[0]``, the row length, first), i.e. reversed
    relative to numpy. ``offset`` is the *absolute* byte offset of the data in the file.
    """

    name: str
    shape: tuple[int, ...]
    ggml_type: str
    offset: int
    nbytes: int


@dataclass(frozen=True)
class GGUFInfo:
    """What a successfully validated GGUF file contains (header only)."""

    path: Path
    version: int
    file_size: int
    architecture: str
    gguf_type: str
    quantization: str | None
    tensor_count: int
    kv_count: int
    data_offset: int
    metadata: dict[str, Scalar]
    array_lengths: dict[str, int]
    tensors: tuple[TensorInfo, ...]

    def get(self, key: str, default: Scalar | None = None) -> Scalar | None:
        """Return the scalar metadata value of ``key``, or ``default``."""
        return self.metadata.get(key, default)


def _q(text: str | None, limit: int = 80) -> str:
    """Quote a name read from the file for a message: escaped (one line) and shortened."""
    if text is None or len(text) <= limit:
        return repr(text)
    return repr(text[:limit]) + f"... ({len(text)} characters)"


def _quantization_name(file_type: int) -> str:
    """Map a ``general.file_type`` (LlamaFileType) to a short name such as ``Q4_1``."""
    try:
        name = gguf.LlamaFileType(file_type).name
    except ValueError:
        return f"type {file_type}"
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


class _Reader:
    """Bounded, position-tracking reads of a GGUF header; every error names the file."""

    def __init__(self, fh: BinaryIO, path: Path, size: int, limits: GGUFLimits) -> None:
        self.fh, self.path, self.size, self.limits = fh, path, size, limits
        self.pos = 0

    def fail(self, problem: str, *, too_large: bool = False) -> GGUFError:
        """Build (not raise) the error for ``problem``, prefixed with the path."""
        return (GGUFTooLargeError if too_large else GGUFError)(f"{self.path}: {problem}")

    def reserve(self, n: int, what: str) -> None:
        """Check that ``n`` more header bytes exist and fit the header budget."""
        if self.pos + n > self.size:
            raise self.fail(f"truncated: {what} at byte {self.pos} needs {n} bytes "
                            f"but the file has {self.size} bytes")
        if self.pos + n > self.limits.max_header_bytes:
            raise self.fail(f"header is larger than max_header_bytes "
                            f"({self.limits.max_header_bytes}) at {what}", too_large=True)

    def read(self, n: int, what: str) -> bytes:
        """Read exactly ``n`` header bytes."""
        self.reserve(n, what)
        data = self.fh.read(n)
        if len(data) != n:  # the file shrank while we were reading it
            raise self.fail(f"truncated: {what} at byte {self.pos} needs {n} bytes "
                            f"but only {len(data)} could be read")
        self.pos += n
        return data

    def scalar(self, vtype: int, what: str) -> int | float | bool:
        """Read one little-endian scalar of GGUF value type ``vtype``."""
        packer = _SCALARS[vtype]
        (value,) = packer.unpack(self.read(packer.size, what))
        return bool(value) if vtype == _VT.BOOL else value

    def u32(self, what: str) -> int:
        return int(self.scalar(_VT.UINT32, what))

    def u64(self, what: str) -> int:
        return int(self.scalar(_VT.UINT64, what))

    def string(self, what: str, max_len: int | None = None) -> str:
        """Read a length-prefixed UTF-8 string, bounded before it is read."""
        start, limit = self.pos, self.limits.max_string_bytes
        length = self.u64(f"length of {what}")
        if max_len is not None and length > max_len:
            raise self.fail(f"{what} at byte {start} is {length} bytes long (at most {max_len})")
        if length > limit:
            raise self.fail(f"{what} at byte {start} is {length} bytes long, more than "
                            f"max_string_bytes ({limit})", too_large=True)
        try:
            return self.read(length, what).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(f"{what} at byte {start} is not valid UTF-8 "
                            f"(bad byte at string offset {exc.start})") from exc

    def value_type(self, what: str) -> int:
        """Read a GGUF value type and check that it is known."""
        start, vtype = self.pos, self.u32(f"value type of {what}")
        try:
            return _VT(vtype)
        except ValueError as exc:
            raise self.fail(f"{what} has unknown value type {vtype} (at byte {start})") from exc

    def array(self, what: str, depth: int = 1) -> int:
        """Check (without keeping) an array value; return its length."""
        if depth > _MAX_NESTING:
            raise self.fail(f"{what} has arrays nested more than {_MAX_NESTING} deep")
        etype = self.value_type(f"elements of {what}")
        length = self.u64(f"length of {what}")
        if length > self.limits.max_array_len:
            raise self.fail(f"{what} has {length} elements, more than max_array_len "
                            f"({self.limits.max_array_len})", too_large=True)
        if etype in _SCALARS:
            nbytes = length * _SCALARS[etype].size
            self.reserve(nbytes, f"{length} elements of {what}")
            self.fh.seek(nbytes, os.SEEK_CUR)
            self.pos += nbytes
        elif etype == _VT.STRING:
            self._strings(length, what)
        else:
            for i in range(length):
                self.array(f"element {i} of {what}", depth + 1)
        return length

    def _strings(self, length: int, what: str) -> None:
        """Check ``length`` strings fast (a vocabulary holds 10**5 and more).

        On any anomaly, rewind to the offending element and re-read it with
        :meth:`string`, which raises the precise error.
        """
        fh, end = self.fh, min(self.size, self.limits.max_header_bytes)
        for i in range(length):
            start = self.pos
            head = fh.read(8)
            if len(head) == 8 and start + 8 <= end:
                (n,) = _U64.unpack(head)
                if n <= self.limits.max_string_bytes and start + 8 + n <= end:
                    raw = fh.read(n)
                    if len(raw) == n and _is_utf8(raw):
                        self.pos = start + 8 + n
                        continue
            fh.seek(start)
            self.string(f"element {i} of {what}")


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _open_regular(path: Path) -> tuple[BinaryIO, int]:
    """Open ``path`` for reading (never blocking on a FIFO); return it and its size."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as exc:
        raise GGUFError(f"{path}: file does not exist") from exc
    except OSError as exc:
        raise GGUFError(f"{path}: cannot open: {exc.strerror or exc}") from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise GGUFError(f"{path}: is {kind}, expected a GGUF file")
    return os.fdopen(fd, "rb"), st.st_size


def validate_gguf(path: str | Path, *, limits: GGUFLimits = GGUFLimits(),
                  expect: Expect = None) -> GGUFInfo:
    """Check that ``path`` is a well-formed GGUF file llama.cpp can safely load.

    ``expect="model"`` additionally requires ``general.type`` absent or ``"model"``;
    ``expect="adapter"`` requires a LoRA adapter. Raises :class:`GGUFError` (or
    :class:`GGUFTooLargeError` for exceeded limits) with a one-line message naming the
    file and the problem; returns a :class:`GGUFInfo` otherwise.
    """
    path = Path(path)
    fh, size = _open_regular(path)
    with fh:
        if size == 0:
            raise GGUFError(f"{path}: file is empty (0 bytes)")
        if size > limits.max_file_bytes:
            raise GGUFTooLargeError(f"{path}: file is {size} bytes, more than max_file_bytes "
                                    f"({limits.max_file_bytes})")
        r = _Reader(fh, path, size, limits)
        try:
            return _parse(r, expect)
        except OSError as exc:
            raise GGUFError(f"{path}: cannot read at byte {r.pos}: {exc.strerror or exc}") from exc


def _parse(r: _Reader, expect: Expect) -> GGUFInfo:
    """Parse and check the whole header behind ``r``; see :func:`validate_gguf`."""
    magic = r.read(4, "magic")
    if magic != b"GGUF":
        raise r.fail(f"bad magic {magic!r}, not a GGUF file (expected b'GGUF')")
    version = r.u32("version")
    if version not in (2, 3):
        hint = " (big-endian file?)" if version >= 2**16 else ""
        raise r.fail(f"unsupported GGUF version {version}{hint}; only 2 and 3 are supported")
    n_tensors, n_kv = r.u64("tensor count"), r.u64("key-value count")
    if n_tensors > r.limits.max_tensors:
        raise r.fail(f"tensor count {n_tensors} exceeds max_tensors ({r.limits.max_tensors})",
                     too_large=True)
    if n_kv > r.limits.max_kv:
        raise r.fail(f"key-value count {n_kv} exceeds max_kv ({r.limits.max_kv})", too_large=True)

    metadata: dict[str, Scalar] = {}
    array_lengths: dict[str, int] = {}
    types: dict[str, int] = {}
    for i in range(n_kv):
        key = r.string(f"key #{i}")
        if key in types:
            raise r.fail(f"duplicate key {_q(key)}")
        types[key] = vtype = r.value_type(f"key {_q(key)}")
        if vtype == _VT.ARRAY:
            array_lengths[key] = r.array(f"key {_q(key)}")
        elif vtype == _VT.STRING:
            metadata[key] = r.string(f"value of key {_q(key)}")
        else:
            metadata[key] = r.scalar(vtype, f"value of key {_q(key)}")

    alignment = _DEFAULT_ALIGNMENT
    if "general.alignment" in types:
        value = metadata.get("general.alignment")
        if types["general.alignment"] != _VT.UINT32 or not value or int(value) & (int(value) - 1):
            raise r.fail(f"general.alignment must be a power-of-two UINT32, got "
                         f"{_VT(types['general.alignment']).name} {value}")
        alignment = int(value)

    names: set[str] = set()
    tensors = [_tensor_info(r, i, alignment, names) for i in range(n_tensors)]
    data_offset = -(-r.pos // alignment) * alignment
    tensors = [TensorInfo(t.name, t.shape, t.ggml_type, data_offset + t.offset, t.nbytes)
               for t in tensors]
    _check_layout(r, tensors)
    architecture, gguf_type = _check_kind(r, metadata, types, bool(tensors), expect)

    quantization = None
    if "general.file_type" in types:
        if types["general.file_type"] not in _INTEGER_TYPES:
            raise r.fail(f"general.file_type is {_VT(types['general.file_type']).name}, "
                         f"expected an integer")
        quantization = _quantization_name(int(metadata["general.file_type"]))

    return GGUFInfo(path=r.path, version=version, file_size=r.size, architecture=architecture,
                    gguf_type=gguf_type, quantization=quantization, tensor_count=n_tensors,
                    kv_count=n_kv, data_offset=data_offset, metadata=metadata,
                    array_lengths=array_lengths, tensors=tuple(tensors))


def _tensor_info(r: _Reader, i: int, alignment: int, names: set[str]) -> TensorInfo:
    """Read and check tensor info #``i``; its offset is still relative to the data section."""
    name = r.string(f"name of tensor info #{i}", max_len=_MAX_TENSOR_NAME)
    if name in names:
        raise r.fail(f"duplicate tensor name {_q(name)}")
    names.add(name)
    n_dims = r.u32(f"n_dims of tensor {_q(name)}")
    if not 1 <= n_dims <= _MAX_DIMS:
        raise r.fail(f"tensor {_q(name)} has {n_dims} dimensions (must be 1 to {_MAX_DIMS})")
    shape = tuple(r.u64(f"dimension {d} of tensor {_q(name)}") for d in range(n_dims))
    n_elements = 1
    for dim in shape:
        if dim < 1:
            raise r.fail(f"tensor {_q(name)} has a dimension of {dim} in shape {shape}")
        n_elements *= dim
        if n_elements > _INT64_MAX:
            raise r.fail(f"tensor {_q(name)} shape {shape} overflows the element count")
    type_id = r.u32(f"ggml type of tensor {_q(name)}")
    try:
        qtype = gguf.GGMLQuantizationType(type_id)
        block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError) as exc:
        raise r.fail(f"tensor {_q(name)} has unknown ggml type {type_id}") from exc
    if shape[0] % block_size:
        raise r.fail(f"tensor {_q(name)} first dimension {shape[0]} is not a multiple of "
                     f"the {qtype.name} block size {block_size}")
    offset = r.u64(f"offset of tensor {_q(name)}")
    if offset % alignment:
        raise r.fail(f"tensor {_q(name)} offset {offset} is not a multiple of "
                     f"the alignment {alignment}")
    return TensorInfo(name, shape, qtype.name, offset, n_elements // block_size * type_size)


def _check_layout(r: _Reader, tensors: list[TensorInfo]) -> None:
    """Every tensor's data lies inside the file and no two tensors overlap."""
    previous: TensorInfo | None = None
    for t in sorted(tensors, key=lambda t: (t.offset, t.nbytes)):
        end = t.offset + t.nbytes
        if t.offset >= r.size:
            raise r.fail(f"truncated: tensor {_q(t.name)} data starts at byte {t.offset}, "
                         f"past the end of the file ({r.size} bytes)")
        if end > r.size:
            raise r.fail(f"truncated: tensor {_q(t.name)} data ends at byte {end} "
                         f"but the file has {r.size} bytes")
        if previous is not None and t.offset < previous.offset + previous.nbytes:
            raise r.fail(f"tensor {_q(t.name)} (bytes {t.offset}-{end}) overlaps tensor "
                         f"{_q(previous.name)} (bytes {previous.offset}-"
                         f"{previous.offset + previous.nbytes})")
        previous = t


def _check_kind(r: _Reader, metadata: dict[str, Scalar], types: dict[str, int],
                has_tensors: bool, expect: Expect) -> tuple[str, str]:
    """Check architecture, general.type and adapter keys; return (architecture, type)."""

    def string_key(key: str) -> str | None:
        if key not in types:
            return None
        if types[key] != _VT.STRING:
            raise r.fail(f"{key} is {_VT(types[key]).name}, expected STRING")
        return str(metadata[key])

    architecture = string_key("general.architecture")
    if architecture is None:
        raise r.fail("missing general.architecture")
    if architecture not in KNOWN_ARCHITECTURES:
        raise r.fail(f"unknown architecture {_q(architecture)} (general.architecture)")
    gguf_type = string_key("general.type") or "model"
    if expect is not None and gguf_type != expect:
        raise r.fail(f"expected {'an adapter' if expect == 'adapter' else 'a model'} "
                     f"but general.type is {_q(gguf_type)}")
    if gguf_type == "adapter" and (adapter_type := string_key("adapter.type")) != "lora":
        raise r.fail(f"adapter.type is {_q(adapter_type)}, only 'lora' adapters are supported")
    if gguf_type in ("model", "adapter") and not has_tensors:
        raise r.fail(f"{gguf_type} has no tensors")
    return architecture, gguf_type
