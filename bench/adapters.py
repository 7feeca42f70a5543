"""Random LoRA adapters that fit a base model, for benchmarks (cost does not depend on what was learned)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from appliance.runtime.gguf_check import validate_gguf
from appliance.runtime.lora_gguf import write_lora_adapter

TARGETS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def random_adapter(base: Path, out: Path, *, rank: int, seed: int, scale: float, metadata: dict | None = None,
                   targets: tuple[str, ...] = TARGETS) -> Path:
    """An adapter of ``rank`` on the ``targets`` projections of ``base`` (default: all), alpha = rank."""
    info = validate_gguf(base)
    rng = np.random.default_rng(seed)
    tensors = {}
    for t in info.tensors:
        parts = t.name.split(".")
        if len(parts) == 4 and parts[0] == "blk" and parts[3] == "weight" and parts[2] in targets:
            n_in, n_out = t.shape[0], t.shape[1]  # GGUF order: ne0 = input features
            tensors[t.name] = (rng.normal(0, scale, size=(rank, n_in)).astype(np.float32),
                               rng.normal(0, scale, size=(n_out, rank)).astype(np.float32))
    write_lora_adapter(out, architecture=info.architecture, alpha=float(rank), tensors=tensors, name=out.stem,
                       metadata=metadata)
    return out
