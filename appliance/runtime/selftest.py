"""The start-up self-test: every serving model runs once, in a throwaway host, before any serves.

A llama.cpp build can load a model and then die on its first decode (a native build on a
Xeon with AMX died with SIGSEGV in ``ggml_backend_amx_mul_mat``), and a build for CPU
features a machine lacks dies of an illegal instruction. Before the engine serves, a
throwaway host process loads the serving models, decodes a few tokens with the generator
and with each adapter, reads the generator's logits (they must be finite), and embeds
three texts (finite, unit length, and a paraphrase nearer than an unrelated sentence).
If the host dies, hangs or computes nonsense, the appliance refuses to serve with one line
that names the CPU, its features, the build and the command that rebuilds it.

A pass is remembered in ``<models dir>/selftest.json`` under a key made of everything the
result depends on: the installed llama.cpp libraries, the CPU's features, the models' and
adapters' digests and the offload settings. A rebuilt library, another CPU or a new model
makes a new key, so the test runs again; nothing remembers a failure, so the appliance
serves again as soon as the build is fixed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from appliance.errors import EngineCrashedError, EngineError, EngineSelfTestError, EngineTimeoutError
from appliance.runtime.build_info import BuildInfo, CpuInfo, build_info, cpu_info
from appliance.runtime.client import EngineClient
from appliance.runtime.protocol import EngineSpec, GenerateRequest

__all__ = ["SelfTest", "SelfTestResult", "ModelIdentity"]

VERSION = 1  # of what the self-test does: a change runs it again everywhere
KEEP = 16  # passes remembered (generations, model sets)
MAX_STATE_BYTES = 1 << 20
DECODE_PROMPT = "Reply with one word: ready"
EMBED_TEXTS = ("The cat sat on the mat.", "A cat was sitting on the mat.",
               "Quarterly tax returns are due at the end of April.")
# A paraphrase must be nearer than an unrelated sentence by this much. Real embedders give
# about 0.8 against 0.0 for these; a kernel that computes garbage gives near-equal values.
# The margin is 40x any difference between CPU kernels (about 1e-3 in a cosine).
EMBED_MARGIN = 0.04
RERANK_QUERY = "Where does the cat sit?"
# The passage that answers must outscore the unrelated one by this many logits. The
# reranker gives several logits of difference for these; kernel differences between CPUs
# move a logit by about 1e-3, garbage kernels give near-equal or non-finite values.
RERANK_MARGIN = 0.5


@dataclass(frozen=True)
class ModelIdentity:
    role: str  # generator, embedder, reranker, verifier, adapter
    name: str
    sha256: str


@dataclass
class SelfTestResult:
    ok: bool
    key: str
    checked_at: str
    seconds: float
    cpu: str
    cpu_flags: list[str]
    build: str
    models: list[dict]
    stage: str | None = None  # what was running when it failed
    error: str | None = None
    details: dict = field(default_factory=dict)
    cached: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def identities(spec: EngineSpec, known: Mapping[str, tuple[str, str]] | None = None) -> list[ModelIdentity]:
    """The models ``spec`` loads, named and digested (``known``: path -> (name, sha256); others are hashed)."""
    known = known or {}

    def ident(role: str, path: str, name: str | None = None) -> ModelIdentity:
        got = known.get(str(path))
        if got is not None:
            return ModelIdentity(role, name or got[0], got[1])
        return ModelIdentity(role, name or Path(path).name, _file_sha256(path))

    out = []
    if spec.generator_path:
        out.append(ident("generator", spec.generator_path))
    if spec.embedder_path:
        out.append(ident("embedder", spec.embedder_path))
    if spec.reranker_path:
        out.append(ident("reranker", spec.reranker_path))
    if spec.verifier_path:
        out.append(ident("verifier", spec.verifier_path))
    for name, path in sorted(spec.adapters.items()):
        out.append(ident("adapter", path, name))
    return out


class SelfTest:
    """Runs (or remembers) the self-test for an engine spec; constructed once per ``Services``."""

    def __init__(self, state_file: Path, *, log_path: Path | None = None, start_timeout_s: float = 120.0,
                 request_timeout_s: float = 120.0, env: dict[str, str] | None = None,
                 host_command: Sequence[str] | None = None) -> None:
        self.state_file = state_file
        self.log_path = log_path
        self.start_timeout_s = start_timeout_s
        self.request_timeout_s = request_timeout_s
        self.env = env
        self.host_command = host_command
        self._failed: dict[str, SelfTestResult] = {}  # in this process only: a fixed build makes a new key

    # -- the key and the remembered passes ----------------------------------------------

    def key(self, spec: EngineSpec, models: list[ModelIdentity], build: BuildInfo, cpu: CpuInfo) -> str:
        text = json.dumps({
            "version": VERSION, "libraries": build.library_digest, "cpu_flags": sorted(cpu.flags),
            "models": sorted((m.role, m.name, m.sha256) for m in models),
            "offload": [spec.n_gpu_layers, spec.main_gpu, spec.flash_attn],
            "template": hashlib.sha256((spec.generator_template or "").encode()).hexdigest()[:16],
            "host": list(self.host_command or ()),
        }, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def _state(self) -> dict:
        try:
            if self.state_file.stat().st_size > MAX_STATE_BYTES:
                return {}
            state = json.loads(self.state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def _remember(self, result: SelfTestResult) -> None:
        state = self._state()
        passes = [p for p in state.get("passes", []) if isinstance(p, dict) and p.get("key") != result.key]
        if result.ok:
            passes = (passes + [result.as_dict()])[-KEEP:]
        state = {"passes": passes, "last": result.as_dict()}
        tmp = self.state_file.with_name(f".{self.state_file.name}.{os.getpid()}.tmp")
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(state, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.state_file)
        except OSError:  # a read-only model store: the test runs again at the next start, nothing breaks
            tmp.unlink(missing_ok=True)

    def last(self) -> dict | None:
        """The last self-test that ran (pass or failure), as recorded."""
        last = self._state().get("last")
        return last if isinstance(last, dict) else None

    def remembered(self, key: str) -> SelfTestResult | None:
        for p in self._state().get("passes", []):
            if isinstance(p, dict) and p.get("key") == key and p.get("ok") is True:
                try:
                    return replace(SelfTestResult(**p), cached=True)
                except TypeError:
                    return None
        return None

    # -- running it ----------------------------------------------------------------------

    def ensure(self, spec: EngineSpec, known: Mapping[str, tuple[str, str]] | None = None) -> SelfTestResult:
        """A remembered pass for exactly this build, CPU and model set, or a new run; a failure raises
        :class:`EngineSelfTestError` (one line: what died, the CPU and its features, the rebuild command)."""
        models = identities(spec, known)
        build, cpu = build_info(), cpu_info()
        key = self.key(spec, models, build, cpu)
        result = self._failed.get(key) or self.remembered(key) or self._run(spec, models, build, cpu, key)
        if not result.ok:
            self._failed[key] = result
            raise EngineSelfTestError(refusal(result, build))
        return result

    def run(self, spec: EngineSpec, known: Mapping[str, tuple[str, str]] | None = None) -> SelfTestResult:
        """Run the self-test now (``appliance doctor``), remembered as any other; never raises for a failure."""
        models = identities(spec, known)
        build, cpu = build_info(), cpu_info()
        return self._run(spec, models, build, cpu, self.key(spec, models, build, cpu))

    def _run(self, spec: EngineSpec, models: list[ModelIdentity], build: BuildInfo, cpu: CpuInfo,
             key: str) -> SelfTestResult:
        names = {m.role: m.name for m in models if m.role != "adapter"}
        started = time.perf_counter()
        details: dict[str, Any] = {}
        stage: str | None = "loading the models"
        client = EngineClient(spec, restart=False, request_timeout_s=self.request_timeout_s,
                              start_timeout_s=self.start_timeout_s, log_path=self.log_path, env=self.env,
                              host_command=self.host_command)
        error = None
        try:
            info = client.start()
            details["host_pid"] = info.get("pid")
            details["system_info"] = info.get("system_info")
            if spec.generator_path:
                stage = f"decoding with {names['generator']}"
                res = client.generate(GenerateRequest(prompt=DECODE_PROMPT, max_tokens=4, temperature=0.0))
                details["decoded_tokens"] = res.completion_tokens
                details["tokens_per_s"] = round(res.tokens_per_s, 1)
                stage = f"reading the logits of {names['generator']}"
                got = client.classify(f"{DECODE_PROMPT}\nAnswer:", ["ready", "busy"])
                if not (math.isfinite(got["confidence"]) and 0.0 < got["confidence"] <= 1.0):
                    raise EngineSelfTestError(f"the generator's probabilities are not finite ({got['confidence']})")
                loaded = info.get("adapters", {})
                for name in sorted(spec.adapters):
                    if loaded.get(name, {}).get("loaded"):
                        stage = f"decoding with adapter {name}"
                        client.generate(GenerateRequest(prompt=DECODE_PROMPT, max_tokens=2, adapter=name))
            if spec.embedder_path:
                stage = f"embedding with {names['embedder']}"
                vectors = client.embed(list(EMBED_TEXTS))
                details["embedding_dim"] = len(vectors[0])
                _check_vectors(vectors)
                details["embedding_margin"] = round(_cos(vectors[0], vectors[1]) - _cos(vectors[0], vectors[2]), 3)
            if spec.reranker_path:
                stage = f"reranking with {names['reranker']}"
                scores = client.rerank(RERANK_QUERY, [EMBED_TEXTS[0], EMBED_TEXTS[2]])
                _check_rerank(scores)
                details["rerank_margin"] = round(scores[0] - scores[1], 3)
            if spec.verifier_path:
                stage = f"checking entailment with {names['verifier']}"
                scores = client.entail(EMBED_TEXTS[1], [EMBED_TEXTS[0], EMBED_TEXTS[2]])
                _check_rerank(scores, "verifier", "the passage that states it")
                details["entail_margin"] = round(scores[0] - scores[1], 3)
            stage = None
        except (EngineCrashedError, EngineTimeoutError, EngineSelfTestError) as exc:
            error = str(exc)
        except EngineError as exc:  # any other refusal on the way is a failure of this build with these models
            error = f"{type(exc).__name__}: {exc}"
        finally:
            client.close()
        result = SelfTestResult(
            ok=error is None, key=key, checked_at=_now(), seconds=round(time.perf_counter() - started, 3),
            cpu=cpu.model, cpu_flags=cpu.relevant, build=build.describe(),
            models=[asdict(m) for m in models], stage=stage if error else None, error=error, details=details)
        self._remember(result)
        return result


def _check_rerank(scores: list[float], role: str = "reranker", good: str = "the answering passage") -> None:
    """A cross-encoder must score ``good`` (first) above an unrelated text (second) by RERANK_MARGIN."""
    if len(scores) != 2 or not all(math.isfinite(x) for x in scores):
        raise EngineSelfTestError(f"the {role}'s scores are not two finite numbers: {scores[:4]}")
    if scores[0] - scores[1] < RERANK_MARGIN:
        raise EngineSelfTestError(f"the {role}'s scores make no sense: {good} scores {scores[0]:.3f}, "
                                  f"an unrelated one {scores[1]:.3f}")


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else 0.0


def _check_vectors(vectors: list[list[float]]) -> None:
    if len(vectors) != len(EMBED_TEXTS) or not vectors[0]:
        raise EngineSelfTestError("the embedder returned no vectors")
    for v in vectors:
        if not all(math.isfinite(x) for x in v):
            raise EngineSelfTestError("the embedder's vectors are not finite")
        norm = math.sqrt(sum(x * x for x in v))
        if abs(norm - 1.0) > 1e-3:  # normalized in float32: within 1e-6 of 1 on any kernel
            raise EngineSelfTestError(f"the embedder's vectors are not unit length (norm {norm:.4f})")
    near, far = _cos(vectors[0], vectors[1]), _cos(vectors[0], vectors[2])
    if near - far < EMBED_MARGIN:
        raise EngineSelfTestError(f"the embedder's vectors make no sense: a paraphrase scores {near:.3f}, an "
                                  f"unrelated sentence {far:.3f}")


def refusal(result: SelfTestResult, build: BuildInfo) -> str:
    """The one line the appliance refuses to serve with."""
    what = result.error or "failed"
    if what.startswith("llama.cpp host "):
        what = what.removeprefix("llama.cpp host ")
        what = f"the host {what}"
    described = build.describe()  # names the problem itself when the build is unrecorded or replaced
    why = f"; {build.problem}" if build.problem and build.recorded and build.matches else ""
    return (f"llama.cpp failed its start-up self-test while {result.stage}: {what}. "
            f"CPU: {result.cpu} ({' '.join(result.cpu_flags) or 'no AVX'}); build: {described}{why}. "
            f"The appliance will not serve with this build: rebuild it with `{build.rebuild}`")
