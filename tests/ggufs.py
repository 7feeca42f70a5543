"""Tiny but structurally real GGUF files for tests that do not need a working model."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np


def tiny_model(path: Path, *, arch: str = "llama", n: int = 8, extra: dict | None = None) -> Path:
    writer = gguf.GGUFWriter(str(path), arch=arch)
    writer.add_name("tiny")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    for key, value in (extra or {}).items():
        writer.add_string(key, value)
    writer.add_tensor("token_embd.weight", np.arange(n * 4, dtype=np.float32).reshape(n, 4))
    writer.add_tensor("output_norm.weight", np.ones(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
