"""Write LoRA adapters as llama.cpp GGUF adapter files (with the ``gguf`` package).

Layout llama.cpp expects: ``general.type=adapter``, ``adapter.type=lora``,
``adapter.lora.alpha``, and for each adapted weight ``W`` (GGUF name, e.g.
``blk.0.attn_q.weight``) two tensors ``W.lora_a`` (numpy shape ``(r, in)``) and
``W.lora_b`` (numpy shape ``(out, r)``), the same orientation as peft's ``lora_A`` /
``lora_B`` weights. The effective update is ``(alpha / r) * B @ A``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from appliance.runtime.gguf_write import atomic_gguf_writer

__all__ = ["write_lora_adapter"]


def write_lora_adapter(
    path: Path,
    *,
    architecture: str,
    alpha: float,
    tensors: Mapping[str, tuple[np.ndarray, np.ndarray]],
    metadata: Mapping[str, str | int | float] | None = None,
    name: str = "adapter",
) -> None:
    """Write ``tensors`` ({weight name: (lora_a, lora_b)}) to ``path`` atomically."""
    if not tensors:
        raise ValueError("an adapter needs at least one tensor pair")
    with atomic_gguf_writer(path, architecture) as writer:
        writer.add_string("general.type", "adapter")
        writer.add_name(name)
        writer.add_string("adapter.type", "lora")
        writer.add_float32("adapter.lora.alpha", float(alpha))
        for key, value in (metadata or {}).items():
            if isinstance(value, bool):
                writer.add_bool(key, value)
            elif isinstance(value, int):
                writer.add_int64(key, value)
            elif isinstance(value, float):
                writer.add_float32(key, value)
            else:
                writer.add_string(key, str(value))
        for weight, (a, b) in sorted(tensors.items()):
            if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
                raise ValueError(f"{weight}: lora_a {a.shape} and lora_b {b.shape} do not share a rank")
            writer.add_tensor(f"{weight}.lora_a", np.ascontiguousarray(a, dtype=np.float32))
            writer.add_tensor(f"{weight}.lora_b", np.ascontiguousarray(b, dtype=np.float32))
