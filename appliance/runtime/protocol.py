"""The engine's interface: the :class:`Engine` protocol and the messages it takes and gives.

Everything that uses a model (the agent, the specialists, the knowledge base's embedder,
the evaluation) depends on :class:`Engine`, never on one implementation. The local
llama.cpp host (:class:`~appliance.runtime.client.EngineClient`) is one; tests use a
scripted one (``tests/fakes.py``); a shared service or a remote inference server would be
others.

The dataclasses are also what the local host's client and process exchange, pickled over
a Unix socket pair only the two hold: a request is ``(op, payload)``; the host answers
with zero or more ``("chunk", text)`` then exactly one ``("ok", result)`` or
``("error", (error_class_name, message))``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["Engine", "EngineSpec", "GenerateRequest", "GenerateResult"]


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


@runtime_checkable
class Engine(Protocol):
    """What the appliance asks of a model engine. Errors are :class:`~appliance.errors.EngineError` and its
    subclasses (a bad request: EngineRequestError, naming what was wrong)."""

    def generate(self, req: GenerateRequest, on_token: Callable[[str], None] | None = None) -> GenerateResult:
        """Generate with the base model (or ``req.adapter``); streams: ``on_token`` sees each piece as it comes."""
        ...

    def cancel(self) -> None:
        """Stop the generation in progress (from another thread); it returns what it has."""
        ...

    def embed(self, texts: Sequence[str], *, normalize: bool = True, batch: int = 512,
              progress: Callable[[int], None] | None = None) -> list[list[float]]:
        """One vector per text, from the serving embedder."""
        ...

    def classify(self, prompt: str, labels: Sequence[str], adapter: str | None = None) -> dict[str, Any]:
        """One of ``labels`` for ``prompt``: ``label`` and ``confidence`` (0-1), with how it was decided."""
        ...

    def rerank(self, query: str, texts: Sequence[str]) -> list[float]:
        """The reranker's relevance logit for each of ``texts`` against ``query``."""
        ...

    def entail(self, sentence: str, passages: Sequence[str]) -> list[float]:
        """The entailment judge's logit, for each passage, that it states ``sentence``."""
        ...

    def likelihoods(self, prefix: str, continuations: Sequence[str]) -> list[float]:
        """The generator's log-probability of each continuation after ``prefix``."""
        ...

    def close(self) -> None:
        """Release the engine (stop its process, close its connections)."""
        ...
