"""Messages between :class:`~appliance.runtime.client.EngineClient` and the host process.

Plain dataclasses, pickled over a Unix socket pair that only the two processes hold.
A request is ``(op, payload)``; the host answers with zero or more ``("chunk", text)``
then exactly one ``("ok", result)`` or ``("error", (error_class_name, message))``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["EngineSpec", "GenerateRequest", "GenerateResult"]


@dataclass(frozen=True)
class EngineSpec:
    generator_path: str | None = None
    embedder_path: str | None = None
    reranker_path: str | None = None
    verifier_path: str | None = None  # the entailment judge: a cross-encoder like the reranker
    generator_template: str | None = None  # a family chat template for a generator GGUF that has none
    adapters: dict[str, str] = field(default_factory=dict)
    threads: int = 0
    n_ctx: int = 2048
    n_batch: int = 512
    adapter_contexts: int = 2
    embed_n_ctx: int = 512
    rerank_max_tokens: int = 256  # one query-passage pair, [CLS] and both [SEP] included
    flash_attn: bool = True
    n_gpu_layers: int = 0
    main_gpu: int = 0
    seed: int = 1234
    max_model_bytes: int = 16 * 2**30
    max_adapter_bytes: int = 2**30


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str | None = None
    messages: tuple[dict, ...] = ()
    system: str | None = None
    max_tokens: int = 256
    temperature: float = 0.0
    stop: tuple[str, ...] = ()
    json_schema: dict | None = None
    grammar: str | None = None
    adapter: str | None = None
    seed: int = 1234


@dataclass(frozen=True)
class GenerateResult:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    first_token_s: float | None
    decode_s: float
    tokens_per_s: float
    adapter: str | None
