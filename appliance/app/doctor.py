"""``appliance doctor``: is this box ready, and is it sealed?

Collects the configuration, the model store (with digests), the CPU and its features, the
llama.cpp build (its variant, CMake arguments and compiled features, and whether the
installed libraries are the recorded ones), the air-gap state, and, unless told not to,
runs the start-up self-test in a throwaway host and then the whole path once: the host
loads the models, embeds, a scratch Chroma index stores and finds the vectors, and the
generator answers a question.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from appliance.airgap import GUARD, airgap_status
from appliance.engines import active_models, engine_spec
from appliance.errors import ApplianceError
from appliance.runtime.build_info import build_info, cpu_info
from appliance.runtime.client import EngineClient
from appliance.runtime.protocol import GenerateRequest
from appliance.runtime.selftest import refusal
from appliance.services import Services, airgap_log

__all__ = ["run_doctor", "logged_attempts", "PROBE_QUESTION"]

PROBE_QUESTION = "In one sentence: what is an air-gapped computer?"
PROBE_TEXTS = [
    "An air-gapped computer has no connection to any network.",
    "Officers carry signed update bundles in on removable media.",
    "The audit log is exported and verified offline.",
]


def logged_attempts(log: Path) -> int:
    """Blocked egress attempts recorded in the air-gap log (all processes, all time)."""
    if not log.is_file():
        return 0
    with open(log, "rb") as fh:
        return sum(1 for _ in fh)


def _probe(services: Services) -> dict[str, Any]:
    from appliance.runtime.vector_index import VectorIndex

    t0 = time.perf_counter()
    engine = services.engine()
    assert isinstance(engine, EngineClient)  # the doctor probes the llama.cpp host (never a fixed test engine)
    loaded = time.perf_counter() - t0
    vectors = engine.embed(PROBE_TEXTS + [PROBE_QUESTION])
    with tempfile.TemporaryDirectory(prefix="doctor-index-", dir=services.settings.data_dir) as tmp:
        index = VectorIndex(Path(tmp))
        index.upsert("doctor-probe", [f"p{i}" for i in range(len(PROBE_TEXTS))], vectors[:-1], PROBE_TEXTS)
        hit = index.query("doctor-probe", vectors[-1], k=1)[0]
        del index
    result = engine.generate(GenerateRequest(
        prompt=f"Context: {hit.document}\n\nQuestion: {PROBE_QUESTION}", max_tokens=48, temperature=0.0))
    info = engine.info()
    return {
        "ok": True,
        "host_pid": engine.host_pid,
        "start_s": round(loaded, 3),
        "embedding_dim": len(vectors[0]),
        "index_top_hit": hit.document,
        "answer": result.text.strip(),
        "tokens_per_s": round(result.tokens_per_s, 1),
        "build": "CUDA" if info["gpu_offload_supported"] else "CPU",
        "n_gpu_layers": info["n_gpu_layers"],
        "system_info": info["system_info"],
        "llama_cpp_python": info["llama_cpp_python"],
        "adapters": info["adapters"],
    }


def run_doctor(services: Services, *, verify: bool = False, engine: bool = True) -> dict[str, Any]:
    settings = services.settings
    report: dict[str, Any] = {
        "data_dir": str(settings.data_dir),
        "config_file": str(settings.config_file) if settings.config_file else None,
        "models_dir": str(settings.models_dir),
        "runtime": {"generator": settings.runtime.generator, "embedder": settings.runtime.embedder,
                    "reranker": settings.runtime.reranker if settings.knowledge.rerank else None,
                    "verifier": settings.runtime.verifier if settings.agent.entailment else None,
                    "threads": settings.runtime.threads, "n_ctx": settings.runtime.n_ctx,
                    "n_gpu_layers": settings.runtime.n_gpu_layers, "main_gpu": settings.runtime.main_gpu},
    }
    models = [r.as_dict() for r in services.store.list()]
    if verify:
        checks = {v.name: v for v in services.store.verify()}
        for m in models:
            m["verified"] = checks[m["name"]].ok
            m["verify_detail"] = checks[m["name"]].detail
    report["models"] = models
    problems: list[str] = []
    info = services.generation()
    report["generation"] = {"serving": info.generation, "bundle": info.bundle, "release": info.release,
                            "applied_at": info.applied_at, "models": info.models, "adapters": sorted(info.adapters)}
    state_file = settings.data_dir / "updates" / "state.json"
    report["updates"] = json.loads(state_file.read_text()) if state_file.is_file() else {"release": 0}

    try:
        active = active_models(settings, services.store, info)
        report["runtime"]["serving"] = {kind: rec.name for kind, rec in active.items()}
    except ApplianceError as exc:
        problems.append(f"a serving model is not in the store: {exc} (run `appliance models fetch` or apply a "
                        "bundle)")
    problems += [f"model {m['name']}: {m['verify_detail']}" for m in models if m.get("verified") is False]
    cpu, build = cpu_info(), build_info()
    report["cpu"] = {"model": cpu.model, "features": cpu.relevant}
    report["llama_build"] = {k: v for k, v in build.as_dict().items() if k != "libraries"}
    if build.problem:
        problems.append(f"llama.cpp build: {build.problem}; rebuild it with `{build.rebuild}`")
    if engine and not problems:
        spec = engine_spec(settings, services.store, info=info)
        selftest = services.selftest().run(spec, services.model_identities())
        report["selftest"] = selftest.as_dict()
        if not selftest.ok:
            problems.append(refusal(selftest, build))
    else:
        last = services.selftest().last()
        report["selftest"] = dict(last, not_run_now=True) if last else {"ok": None, "not_run_now": True}
    if engine and not problems:
        try:
            report["engine"] = _probe(services)
        except ApplianceError as exc:
            report["engine"] = {"ok": False, "error": str(exc)}
            problems.append(f"engine: {exc}")
    catalog_file = settings.knowledge_dir / "catalog.db"
    if catalog_file.is_file():
        from appliance.knowledge.catalog import Catalog

        report["knowledge"] = Catalog(catalog_file).counts()
    else:
        report["knowledge"] = {"documents": 0, "chunks": 0, "partitions": 0}
    status = airgap_status()
    log = airgap_log(settings)
    status["blocked_attempts_logged"] = logged_attempts(log)
    status["log"] = str(log)
    report["airgap"] = status
    if not GUARD.installed:
        problems.append("egress guard not installed in this process")
    if status["blocked_attempts"]:
        problems.append(f"{status['blocked_attempts']} network attempt(s) blocked in this run: see {log}")
    warnings: list[str] = []
    if not status["network_isolated"]:
        others = [i for i in status["interfaces"] if i != "lo"]
        warnings.append(f"network interfaces present ({', '.join(others)}): this machine is not physically "
                        "air-gapped; the egress guard still blocks every connection")
    report["warnings"] = warnings
    report["problems"] = problems
    report["ok"] = not problems
    return report


def dumps(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=True, default=str)
