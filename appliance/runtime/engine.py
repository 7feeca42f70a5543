"""llama.cpp inside the host process: one base model, its LoRA adapters, one embedder.

Only :mod:`appliance.runtime.host` uses this module; everybody else talks to the host
through :class:`appliance.runtime.client.EngineClient`. Every GGUF is validated here
again before llama.cpp opens it (llama.cpp crashes on bad files).
"""

from __future__ import annotations

import ctypes
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from appliance.errors import ContextOverflowError, EngineRequestError, GGUFError
from appliance.runtime.gguf_check import GGUFLimits, validate_gguf
from appliance.runtime.protocol import EngineSpec, GenerateRequest

__all__ = ["LlamaEngine"]


@dataclass
class _Adapter:
    name: str
    path: str
    handle: Any = None
    error: str | None = None


@dataclass
class _Slot:
    """One llama.cpp context on the shared base weights, with the adapter it has set."""

    ctx: Any  # llama_cpp._internals.LlamaContext
    adapter: str | None = None
    last_used: int = 0


@dataclass
class _Stats:
    requests: int = 0
    last_tokens_per_s: float = 0.0
    adapter_switches: int = 0
    adapter_retargets: int = 0  # a context's adapter set changed: llama.cpp re-reserves its graphs
    model_loads: int = 0
    extra: dict = field(default_factory=dict)


class LlamaEngine:
    def __init__(self, spec: EngineSpec) -> None:
        import llama_cpp  # imported here: only the host process loads llama.cpp

        self._lc = llama_cpp
        self.spec = spec
        self.stats = _Stats()
        self.generator: Any = None
        self._scored_prefix: tuple[list[int], Any] | None = None  # likelihoods' cached prefix and its last logits
        self.embedder: Any = None
        self.reranker: Any = None
        self.verifier: Any = None
        self.adapters: dict[str, _Adapter] = {}
        self._active_adapter: str | None = None
        self._slots: list[_Slot] = []  # [0] is the generator's own context
        self._uses = 0
        self._formatter: Any = None
        self.stop_markers: tuple[str, ...] = ()
        self.stop_token_ids: list[int] = []
        threads = spec.threads or None
        common: dict[str, Any] = dict(n_threads=threads, n_threads_batch=threads, n_gpu_layers=spec.n_gpu_layers,
                                      main_gpu=spec.main_gpu, flash_attn=spec.flash_attn, verbose=False)
        if spec.generator_path:
            validate_gguf(spec.generator_path, limits=GGUFLimits(max_file_bytes=spec.max_model_bytes), expect="model")
            self.generator = llama_cpp.Llama(spec.generator_path, n_ctx=spec.n_ctx, n_batch=spec.n_batch,
                                             seed=spec.seed, **common)
            self.stats.model_loads += 1
            self._slots.append(_Slot(self.generator._ctx))
            self._use_template(spec.generator_template or self.generator.metadata.get("tokenizer.chat_template"))
        if spec.embedder_path:
            validate_gguf(spec.embedder_path, limits=GGUFLimits(max_file_bytes=spec.max_model_bytes), expect="model")
            n = spec.embed_n_ctx
            self.embedder = llama_cpp.Llama(spec.embedder_path, embedding=True, n_ctx=n, n_batch=n, n_ubatch=n,
                                            **common)
            self.stats.model_loads += 1
        for role, path in (("reranker", spec.reranker_path), ("verifier", spec.verifier_path)):
            if path:
                validate_gguf(path, limits=GGUFLimits(max_file_bytes=spec.max_model_bytes), expect="model")
                n = max(spec.embed_n_ctx, spec.rerank_max_tokens)
                llm = llama_cpp.Llama(path, embedding=True, n_ctx=n, n_batch=n, n_ubatch=n,
                                      pooling_type=llama_cpp.LLAMA_POOLING_TYPE_RANK, **common)
                if llm.pooling_type() != llama_cpp.LLAMA_POOLING_TYPE_RANK:
                    llm.close()
                    raise GGUFError(f"{path}: llama.cpp does not pool it by rank")
                setattr(self, role, llm)
                self.stats.model_loads += 1
        for name, path in spec.adapters.items():
            self.load_adapter(name, path, strict=False)

    # -- adapters -----------------------------------------------------------------------

    def load_adapter(self, name: str, path: str, strict: bool = True) -> dict:
        """Load a LoRA adapter beside the base; a bad file is refused, the engine goes on."""
        if self.generator is None:
            raise EngineRequestError("no generator loaded: adapters need a base model")
        entry = _Adapter(name=name, path=path)
        try:
            info = validate_gguf(path, limits=GGUFLimits(max_file_bytes=self.spec.max_adapter_bytes), expect="adapter")
            base_arch = self.generator.metadata.get("general.architecture")
            if info.architecture != base_arch:
                raise GGUFError(f"{path}: adapter is for architecture {info.architecture!r}, base is {base_arch!r}")
            handle = self._lc.llama_adapter_lora_init(self.generator.model, path.encode())
            if not handle:
                raise GGUFError(f"{path}: llama.cpp refused the adapter (tensor shapes do not fit the base model?)")
            entry.handle = handle
        except GGUFError as exc:
            entry.error = str(exc)
            if strict:
                raise EngineRequestError(f"adapter {name!r}: {exc}") from exc
        old = self.adapters.get(name)
        self.adapters[name] = entry
        if old is not None and old.handle is not None and old.handle != entry.handle:
            if self._active_adapter == name:
                self._use_adapter(None)
            for slot in self._slots:  # no context may keep the freed weights
                if slot.adapter == name:
                    self._set_adapter(slot, None)
                    slot.last_used = 0
            self._lc.llama_adapter_lora_free(old.handle)
        return {"name": name, "loaded": entry.handle is not None, "error": entry.error}

    def _use_adapter(self, name: str | None) -> None:
        """Point the generator at a context whose adapter set is ``name`` (None: the base).

        Changing a context's adapters makes llama.cpp re-reserve its compute graphs on the
        next decode (about 4 ms here), so each adapter gets a context of its own on the one
        loaded base (``adapter_contexts`` of them, least recently used re-targeted when
        they run out), and the base keeps the generator's first context. A switch between
        requests is then a pointer swap; a context costs its KV cache and compute buffer.
        """
        if name == self._active_adapter:
            return
        if name is not None:
            entry = self.adapters.get(name)
            if entry is None:
                known = ", ".join(sorted(self.adapters)) or "none"
                raise EngineRequestError(f"unknown adapter {name!r} (loaded: {known})")
            if entry.handle is None:
                raise EngineRequestError(f"adapter {name!r} is not usable: {entry.error}")
        slot = self._slot_for(name)
        if slot.adapter != name:
            self._set_adapter(slot, name)
        self._uses += 1
        slot.last_used = self._uses
        self.generator._ctx = slot.ctx
        # the Python-side token count described the other context; its KV cache is cleared
        # by every request before its prompt is evaluated (generate, classify)
        self.generator.reset()
        self._active_adapter = name
        self.stats.adapter_switches += 1

    def _slot_for(self, name: str | None) -> _Slot:
        base, own = self._slots[0], self._slots[1:]
        if self.spec.adapter_contexts == 0:
            return base  # one context, re-targeted on every switch
        if name is None:
            return base
        for slot in own:
            if slot.adapter == name:
                return slot
        if len(own) < self.spec.adapter_contexts:
            from llama_cpp import _internals

            llm = self.generator
            slot = _Slot(_internals.LlamaContext(model=llm._model, params=llm.context_params, verbose=False))
            self._slots.append(slot)
            return slot
        return min(own, key=lambda s: s.last_used)

    def _set_adapter(self, slot: _Slot, name: str | None) -> None:
        if name is None:
            rc = self._lc.llama_set_adapters_lora(slot.ctx.ctx, None, 0, None)
        else:
            arr = (self._lc.llama_adapter_lora_p_ctypes * 1)(self.adapters[name].handle)
            scales = (ctypes.c_float * 1)(1.0)
            rc = self._lc.llama_set_adapters_lora(slot.ctx.ctx, arr, 1, scales)
        if rc != 0:
            raise EngineRequestError(f"llama.cpp could not switch to adapter {name!r} (code {rc})")
        slot.adapter = name
        self.stats.adapter_retargets += 1

    # -- generation ---------------------------------------------------------------------

    def _grammar(self, req: GenerateRequest) -> Any:
        from llama_cpp import LlamaGrammar
        from llama_cpp.llama_grammar import json_schema_to_gbnf

        if req.grammar is None and req.json_schema is None:
            return None
        if req.json_schema is not None:
            try:
                text = json_schema_to_gbnf(json.dumps(req.json_schema))
            except Exception as exc:  # the converter raises plain exceptions on bad schemas
                raise EngineRequestError(f"JSON schema not supported: {exc}") from exc
        else:
            text = req.grammar or ""
        # llama.cpp returns NULL for a grammar it cannot parse; check before sampling with it
        sampler = self._lc.llama_sampler_init_grammar(self.generator._model.vocab, text.encode(), b"root")
        if not sampler:
            raise EngineRequestError("grammar does not parse (GBNF syntax error or no 'root' rule)")
        self._lc.llama_sampler_free(sampler)
        return LlamaGrammar.from_string(text, verbose=False)

    def _messages(self, req: GenerateRequest) -> list[dict]:
        messages = list(req.messages)
        if req.prompt is not None:
            if req.system:
                messages.append({"role": "system", "content": req.system})
            messages.append({"role": "user", "content": req.prompt})
        if not messages:
            raise EngineRequestError("empty request: give a prompt or messages")
        return messages

    def _use_template(self, template: str | None) -> None:
        """Format every chat request with ``template`` (the GGUF's own, or the family template its
        profile names) and stop at the end of the assistant's turn: the model's end-of-sequence
        token and every end-of-turn marker the template writes that is one token in its vocabulary."""
        from appliance.runtime.profiles import stop_markers

        if not template:
            raise GGUFError(f"{self.spec.generator_path}: no chat template (import it with --template)")
        llm, lc = self.generator, self._lc
        model = llm._model
        stop_ids = [llm.token_eos()]
        for marker in stop_markers(template):
            ids = llm.tokenize(marker.encode(), add_bos=False, special=True)
            if len(ids) == 1 and ids[0] not in stop_ids:
                stop_ids.append(ids[0])
        self._formatter = lc.llama_chat_format.Jinja2ChatFormatter(
            template=template, eos_token=model.token_get_text(llm.token_eos()),
            bos_token=model.token_get_text(llm.token_bos()), stop_token_ids=stop_ids)
        llm.chat_handler = self._formatter.to_chat_handler()
        self.stop_markers = stop_markers(template)
        self.stop_token_ids = stop_ids

    def _format_prompt(self, messages: list[dict]) -> str:
        """The prompt text exactly as the model's chat template renders it."""
        return self._formatter(messages=messages).prompt

    def count_prompt_tokens(self, messages: list[dict]) -> int:
        prompt = self._format_prompt(messages)
        return len(self.generator.tokenize(prompt.encode(), add_bos=False, special=True))

    def generate(self, req: GenerateRequest) -> Iterator[str | dict]:
        """Yield text pieces, then one final dict with the result."""
        if self.generator is None:
            raise EngineRequestError("no generator model loaded")
        messages = self._messages(req)
        n_prompt = self.count_prompt_tokens(messages)
        n_ctx = self.generator.n_ctx()
        if n_prompt >= n_ctx:
            raise ContextOverflowError(f"prompt is {n_prompt} tokens; the context holds {n_ctx} (runtime.n_ctx)")
        grammar = self._grammar(req)
        self._scored_prefix = None
        self._use_adapter(req.adapter)
        # evaluate every prompt from a clean cache: reusing a cached prefix splits the batch
        # differently and can change a greedy answer; the same request must give the same answer
        self.generator.reset()
        self.generator._ctx.kv_cache_clear()
        start = time.perf_counter()
        first: float | None = None
        pieces: list[str] = []
        finish = None
        n_out = 0
        stream = self.generator.create_chat_completion(
            messages=messages, stream=True, max_tokens=req.max_tokens, temperature=req.temperature,
            stop=list(dict.fromkeys([*req.stop, *self.stop_markers])), seed=req.seed, grammar=grammar,
            top_k=40 if req.temperature > 0 else 1,
        )
        for chunk in stream:
            choice = chunk["choices"][0]
            text = choice.get("delta", {}).get("content")
            if text:
                n_out += 1
                if first is None:
                    first = time.perf_counter()
                pieces.append(text)
                yield text
            if choice.get("finish_reason"):
                finish = choice["finish_reason"]
        elapsed = time.perf_counter() - start
        text = "".join(pieces)
        completion_tokens = len(self.generator.tokenize(text.encode(), add_bos=False)) if text else 0
        decode_s = elapsed - ((first or start) - start)
        tps = completion_tokens / elapsed if elapsed > 0 else 0.0
        self.stats.requests += 1
        self.stats.last_tokens_per_s = tps
        yield {
            "text": text,
            "finish_reason": finish or "stop",
            "prompt_tokens": n_prompt,
            "completion_tokens": completion_tokens,
            "seconds": elapsed,
            "first_token_s": (first - start) if first else None,
            "decode_s": decode_s,
            "tokens_per_s": tps,
            "adapter": req.adapter,
        }

    # -- classification -----------------------------------------------------------------

    def classify(self, prompt: str, labels: list[str], adapter: str | None = None) -> dict:
        """Choose one of ``labels`` to complete ``prompt``, walking a trie of the labels' tokens.

        At each step only the tokens that continue some label are allowed; the model's
        probabilities are renormalized over them and the likeliest is taken, so the answer
        is always a label. The confidence is the product of those renormalized
        probabilities along the path (1.0 when the prompt leaves no choice). A label ends
        with the end-of-sequence token, so a label that is a prefix of another is told apart.
        """
        import numpy as np

        if self.generator is None:
            raise EngineRequestError("no generator model loaded")
        if not labels or len(set(labels)) != len(labels):
            raise EngineRequestError("classify needs distinct labels")
        llm = self.generator
        eos = llm.token_eos()
        trie: dict = {}
        for label in labels:
            node = trie
            for tok in [*llm.tokenize(f" {label}".encode(), add_bos=False, special=False), eos]:
                node = node.setdefault(tok, {})
            node[None] = label
        ids = llm.tokenize(prompt.encode(), add_bos=True, special=False)
        if len(ids) + 64 >= llm.n_ctx():
            raise ContextOverflowError(f"prompt is {len(ids)} tokens; the context holds {llm.n_ctx()}")
        self._scored_prefix = None
        self._use_adapter(adapter)
        llm.reset()
        llm._ctx.kv_cache_clear()
        start = time.perf_counter()
        llm.eval(ids)
        n_vocab = llm.n_vocab()
        node, confidence, steps = trie, 1.0, 0
        first: list[tuple[float, int]] = []  # the first real choice's top options: (probability, token)
        while None not in node:
            options = [t for t in node if t is not None]
            if len(options) == 1:
                choice, p = options[0], 1.0
            else:
                logits = np.ctypeslib.as_array(self._lc.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(n_vocab,))
                sub = logits[options].astype(np.float64)
                probs = np.exp(sub - sub.max())
                probs /= probs.sum()
                best = int(probs.argmax())
                choice, p = options[best], float(probs[best])
                if not first:
                    first = sorted(((float(q), t) for q, t in zip(probs, options, strict=True)), reverse=True)[:5]
            confidence *= p
            node = node[choice]
            steps += 1
            if None not in node:
                llm.eval([choice])
        self.stats.requests += 1
        return {"label": node[None], "confidence": confidence, "steps": steps,
                "seconds": time.perf_counter() - start, "adapter": adapter,
                "first_choices": [(q, llm.detokenize([t]).decode("utf-8", "replace")) for q, t in first]}

    def likelihoods(self, prefix: str, continuations: list[str]) -> list[float]:
        """The generator's log-probability (natural log, summed over tokens) of each of
        ``continuations`` right after ``prefix``, read from one decode of the prefix and one
        of each continuation (the prefix's cache kept between them). The base model scores,
        with no adapter. A continuation is tokenized as given, so it carries its own
        leading space.
        """
        import numpy as np

        if self.generator is None:
            raise EngineRequestError("no generator model loaded")
        if not continuations:
            return []
        llm = self.generator
        ids = llm.tokenize(prefix.encode(), add_bos=True, special=False)
        conts = [llm.tokenize(c.encode(), add_bos=False, special=False) for c in continuations]
        if any(not c for c in conts):
            raise EngineRequestError("an empty continuation has no likelihood")
        longest = max(len(c) for c in conts)
        if longest > llm.n_batch:
            raise EngineRequestError(f"a continuation of {longest} tokens is over the batch of {llm.n_batch}")
        if len(ids) + longest + 1 >= llm.n_ctx():
            raise ContextOverflowError(f"prefix and continuation are {len(ids) + longest} tokens; "
                                       f"the context holds {llm.n_ctx()}")
        self._use_adapter(None)
        lc = self._lc
        n_vocab = llm.n_vocab()

        def log_softmax_at(row: int, token: int) -> float:
            logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(llm._ctx.ctx, row), shape=(n_vocab,))
            top = float(logits.max())
            return float(logits[token]) - top - float(np.log(np.exp(logits - top, dtype=np.float64).sum()))

        n = len(ids)
        scored, self._scored_prefix = self._scored_prefix, None
        try:
            if scored is not None and scored[0] == ids:  # the same passage again: its cache is still there
                last = scored[1]
            else:
                llm.reset()
                llm._ctx.kv_cache_clear()
                llm.eval(ids)
                last = np.ctypeslib.as_array(lc.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(n_vocab,)).copy()
            top = float(last.max())
            norm = top + float(np.log(np.exp(last - top, dtype=np.float64).sum()))
            out: list[float] = []
            for cont in conts:
                total = float(last[cont[0]]) - norm
                if len(cont) > 1:
                    llm._ctx.kv_cache_seq_rm(-1, n, -1)
                    llm._batch.set_batch(batch=cont, n_past=n, logits_all=True)
                    llm._ctx.decode(llm._batch)
                    total += sum(log_softmax_at(i, tok) for i, tok in enumerate(cont[1:]))
                out.append(total)
            llm._ctx.kv_cache_seq_rm(-1, n, -1)
            llm.n_tokens = n
            self._scored_prefix = (ids, last)  # generate and classify clear it (they reset the cache)
        except BaseException:
            llm.reset()
            llm._ctx.kv_cache_clear()
            raise
        self.stats.requests += 1
        return out

    # -- embeddings ---------------------------------------------------------------------

    def embed(self, texts: list[str], normalize: bool = True) -> list[list[float]]:
        if self.embedder is None:
            raise EngineRequestError("no embedder model loaded")
        if not texts:
            return []
        # llama-cpp-python packs many texts into one decode; sorted by length they pack tighter
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        vectors = self.embedder.embed([texts[i] for i in order], normalize=normalize, truncate=True)
        out: list[list[float]] = [[] for _ in texts]
        for pos, i in enumerate(order):
            out[i] = vectors[pos]
        return out

    # -- reranking ----------------------------------------------------------------------

    def rerank(self, query: str, texts: list[str], model: str = "reranker") -> list[float]:
        """One logit per text for ``query``: relevance (the reranker), or whether the text
        entails ``query`` (``model="verifier"``, the entailment judge). Higher is more.

        Each pair is ``[CLS] query [SEP] text [SEP]``, cut to ``rerank_max_tokens`` (the query
        to half of it, the text to the rest); many pairs share one llama.cpp decode.
        """
        if model not in ("reranker", "verifier"):
            raise EngineRequestError(f"no cross-encoder called {model!r}: reranker or verifier")
        llm = getattr(self, model)
        if llm is None:
            raise EngineRequestError(f"no {model} model loaded")
        if not texts:
            return []
        budget = self.spec.rerank_max_tokens
        q = llm.tokenize(query.encode("utf-8"), add_bos=True, special=False)  # [CLS] query [SEP]
        if len(q) > budget // 2:
            q = q[: budget // 2 - 1] + q[-1:]
        sep = q[-1]
        pairs = [q + llm.tokenize(t.encode("utf-8"), add_bos=False, special=False)[: budget - len(q) - 1] + [sep]
                 for t in texts]
        lc = self._lc
        n_batch = llm.n_batch
        n_seq_max = llm.context_params.n_seq_max
        scores: list[float] = [0.0] * len(pairs)
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i]))
        batch: list[int] = []
        used = 0

        def flush() -> None:
            llm._ctx.kv_cache_clear()
            llm._ctx.decode(llm._batch)
            for seq, i in enumerate(batch):
                scores[i] = float(lc.llama_get_embeddings_seq(llm._ctx.ctx, seq)[0])
            llm._batch.reset()

        llm._batch.reset()
        for i in order:
            if batch and (used + len(pairs[i]) > n_batch or len(batch) >= n_seq_max):
                flush()
                batch, used = [], 0
            llm._batch.add_sequence(pairs[i], len(batch), True)
            batch.append(i)
            used += len(pairs[i])
        flush()
        self.stats.requests += 1
        return scores

    # -- information --------------------------------------------------------------------

    def info(self) -> dict:
        lc = self._lc
        return {
            "generator": self.spec.generator_path,
            "embedder": self.spec.embedder_path,
            "reranker": self.spec.reranker_path,
            "verifier": self.spec.verifier_path,
            "chat_template": ("given" if self.spec.generator_template else "gguf") if self.generator else None,
            "stop_markers": list(self.stop_markers),
            "stop_token_ids": list(self.stop_token_ids),
            "adapters": {n: {"loaded": a.handle is not None, "error": a.error} for n, a in self.adapters.items()},
            "active_adapter": self._active_adapter,
            "contexts": [slot.adapter for slot in self._slots],
            "gpu_offload_supported": bool(lc.llama_supports_gpu_offload()),
            "n_gpu_layers": self.spec.n_gpu_layers,
            "system_info": lc.llama_print_system_info().decode(errors="replace").strip(),
            "llama_cpp_python": lc.__version__,
            "n_ctx": self.generator.n_ctx() if self.generator else None,
            "stats": asdict(self.stats),
        }

    def close(self) -> None:
        if self.generator is not None and self._active_adapter is not None:
            self._use_adapter(None)
        for slot in self._slots[1:]:  # the contexts go before the adapters they hold
            slot.ctx.close()
        del self._slots[1:]
        for entry in self.adapters.values():
            if entry.handle is not None:
                self._lc.llama_adapter_lora_free(entry.handle)
                entry.handle = None
        for model in (self.generator, self.embedder, self.reranker, self.verifier):
            if model is not None:
                model.close()
