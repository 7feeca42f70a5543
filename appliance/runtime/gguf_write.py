"""Write a GGUF file atomically: readers see the old file, or the complete new one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import gguf

__all__ = ["atomic_gguf_writer"]


@contextmanager
def atomic_gguf_writer(path: Path, arch: str) -> Iterator[gguf.GGUFWriter]:
    """Yield a writer for ``path``; on a clean exit the file is written and renamed into place."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), arch=arch)
    try:
        yield writer
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
