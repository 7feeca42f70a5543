"""Which models serve, and the engine spec that starts a host with them.

The serving generation names its models and adapters by digest when a bundle brought them;
otherwise the configured ones serve. Used by the services (the serving engine), the update
steps (a new generation's engine and its self-test) and the doctor.
"""

from __future__ import annotations

from appliance.config import Settings
from appliance.runtime.model_store import ModelRecord, ModelStore
from appliance.runtime.protocol import EngineSpec
from appliance.updates.generations import GenerationInfo

__all__ = ["active_models", "engine_spec", "spec_for"]


def active_models(settings: Settings, store: ModelStore, info: GenerationInfo | None,
                  generator: str | None = None) -> dict[str, ModelRecord]:
    """The generator, embedder, reranker and verifier that serve: a bundle's (by digest) if it brought one,
    else the configured. The reranker and the verifier are optional: none when switched off, or not (yet)
    provisioned."""
    rt = settings.runtime
    out = {}
    for kind, configured in (("generator", rt.generator), ("embedder", rt.embedder)):
        chosen = (info.models.get(kind) if info else None) or None
        out[kind] = store.by_sha256(chosen["sha256"]) if chosen else store.get(configured)
    if generator is not None:  # an evaluation comparing generators: this one for now, whatever serves
        out["generator"] = store.get(generator)
    for kind, on, configured in (("reranker", settings.knowledge.rerank, rt.reranker),
                                 ("verifier", settings.agent.entailment, rt.verifier)):
        chosen = (info.models.get(kind) if info else None) or None
        if not on:
            continue
        if chosen:
            out[kind] = store.by_sha256(chosen["sha256"])
        elif configured and store.has(configured):
            out[kind] = store.get(configured)
    return out


def engine_spec(settings: Settings, store: ModelStore, *, generator: bool = True, embedder: bool = True,
                info: GenerationInfo | None = None, generator_name: str | None = None) -> EngineSpec:
    """The host's start-up description: the serving models and every adapter for that base."""
    models = active_models(settings, store, info, generator_name) if (generator or embedder) else {}
    gen = models["generator"] if generator else None
    emb = models["embedder"] if embedder else None
    rer = models.get("reranker") if embedder else None  # the encoder side: embedder and cross-encoders
    ver = models.get("verifier") if embedder else None
    adapters = {}
    if gen is not None:
        adapters = {a.name: str(a.path) for a in store.list("adapter") if a.base_sha256 in (None, gen.sha256)}
        for name, sha in (info.adapters.items() if info else ()):  # a bundle's adapters, by digest
            adapters[name] = str(store.by_sha256(sha).path)
    return spec_for(settings, str(gen.path) if gen else None, str(emb.path) if emb else None, adapters,
                    reranker_path=str(rer.path) if rer else None, verifier_path=str(ver.path) if ver else None,
                    generator_template=gen.metadata.get("chat_template") if gen else None)


def spec_for(settings: Settings, generator_path: str | None, embedder_path: str | None,
             adapters: dict[str, str], *, reranker_path: str | None = None,
             verifier_path: str | None = None, generator_template: str | None = None) -> EngineSpec:
    """An engine spec for these model files, run as the settings say."""
    rt = settings.runtime
    return EngineSpec(
        generator_path=generator_path,
        embedder_path=embedder_path,
        reranker_path=reranker_path,
        verifier_path=verifier_path,
        generator_template=generator_template,
        adapters=adapters,
        threads=rt.threads,
        n_ctx=rt.n_ctx,
        n_batch=rt.n_batch,
        adapter_contexts=rt.adapter_contexts,
        embed_n_ctx=rt.embed_n_ctx,
        flash_attn=rt.flash_attn,
        n_gpu_layers=rt.n_gpu_layers,
        main_gpu=rt.main_gpu,
        seed=rt.seed,
        max_model_bytes=settings.limits.max_model_bytes,
        max_adapter_bytes=settings.limits.max_adapter_bytes,
    )
