"""The answer verifier on the wrong-claim set: wrong sentences rejected, right ones kept.

Side by side, in one run over the same 258 sentences:
- today's rule (lexical and semantic support, ``Grounder`` at the agent's threshold), the
  baseline;
- the entailment judge alone (the MiniLM cross-encoder trained by ``python -m
  appliance.rerank verifier``, at the threshold calibrated on its own held-out generated
  pairs, never on this set);
- today's rule as the fast first filter, then the judge;
- the generator as the judge (SmolLM2 asked yes or no, constrained to those two answers).

The targets (issue 17) are >= 0.9 of wrong sentences rejected and >= 0.9 of right ones kept.
Every passage of the set comes from a document the judge was not trained on.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console

from appliance.agent.grounding import Grounder
from appliance.config import AgentSettings
from appliance.evaluation.verification import (entailment_verifier, generator_judge, grounder_verifier,
                                               load_verification_set, score_verifier)
from appliance.runtime.client import EngineClient
from appliance.runtime.protocol import EngineSpec
from bench.runtime_bench import REPO, THREADS, _store

WORK = REPO / "bench" / "work" / "verifier"


def _verifier_gguf() -> str:
    """The entailment judge: from the store if provisioned, else converted here from the committed delta."""
    from appliance.runtime.bert_convert import convert_bert
    from appliance.runtime.fetch import _checked_delta
    from appliance.runtime.model_sources import VERIFIER

    store = _store()
    if store.has(VERIFIER.name):
        return str(store.get(VERIFIER.name).path)
    out = WORK / f"{VERIFIER.name}-{VERIFIER.delta_sha256[:12]}.gguf"
    if not out.is_file():
        WORK.mkdir(parents=True, exist_ok=True)
        convert_bert(store.root / "sources" / "all-minilm-l6-v2", out, name=VERIFIER.name,
                     rank_delta=_checked_delta(VERIFIER))
    return str(out)


def _rows(label: str, r: dict, base: dict | None, seconds: float) -> list[dict]:
    def ratio(key: str) -> float | None:
        return r[key] / base[key] if base and base[key] else None
    return [
        {"name": f"wrong sentences rejected, {label} ({r['wrong']} wrong)", "appliance": f"{r['wrong_rejected']:.3f}",
         "baseline": f"{base['wrong_rejected']:.3f}" if base else "-", "ratio": ratio("wrong_rejected"),
         "target": ">= 0.9", "met": r["wrong_rejected"] >= 0.9},
        {"name": f"right sentences kept, {label} ({r['right']} right)", "appliance": f"{r['right_kept']:.3f}",
         "baseline": f"{base['right_kept']:.3f}" if base else "-", "ratio": ratio("right_kept"),
         "target": ">= 0.9", "met": r["right_kept"] >= 0.9},
        {"name": f"precision of rejections, {label}", "appliance": f"{r['rejection_precision'] or 0:.3f}",
         "baseline": f"{base['rejection_precision'] or 0:.3f}" if base else "-", "ratio": None,
         "target": "(reported)", "met": True},
        {"name": f"ms per sentence, {label}", "appliance": f"{seconds * 1000 / r['items']:.1f}", "baseline": "-",
         "ratio": None, "target": "(reported)", "met": True},
    ]


def _calibrated_threshold() -> float:
    """The judge's threshold from its provenance (calibrated on held-out generated pairs)."""
    import json

    prov = json.loads((REPO / "appliance" / "rerank" / "weights" / "verifier-provenance.json").read_text())
    return float(prov["calibration"]["threshold"])


def run(quick: bool = False, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    items = load_verification_set()
    store = _store()
    settings = AgentSettings()
    spec = EngineSpec(generator_path=str(store.get("smollm2-135m-instruct").path),
                      embedder_path=str(store.get("all-minilm-l6-v2").path),
                      verifier_path=_verifier_gguf(), threads=THREADS)
    threshold = _calibrated_threshold()
    results: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    with EngineClient(spec) as engine:
        def embed(texts):  # noqa: ANN001, ANN202
            return engine.embed(list(texts))
        verifiers = {
            "today's rule": grounder_verifier(Grounder(embed, threshold=settings.support_threshold)),
            "entailment judge alone": entailment_verifier(engine.entail, threshold),
            "rule then judge": grounder_verifier(Grounder(embed, threshold=settings.support_threshold,
                                                                    entail=engine.entail,
                                                                    entail_threshold=threshold)),
            "generator as judge": generator_judge(engine.classify),
        }
        for label, verifier in verifiers.items():
            with console.status(f"{label} over {len(items)} sentences…"):
                t0 = time.perf_counter()
                results[label] = score_verifier(items, verifier)
                seconds[label] = time.perf_counter() - t0
    base = results["today's rule"]
    rows = []
    for label, r in results.items():
        rows += _rows(label, r, None if label == "today's rule" else base, seconds[label])
    judged = results["rule then judge"]
    for kind, k in judged["per_kind"].items():
        before = base["per_kind"][kind]
        rows.append({"name": f"  {kind}: accepted / n, rule then judge (today's)", "appliance": f"{k['accepted']}/{k['n']}",
                     "baseline": f"{before['accepted']}/{before['n']}", "ratio": None, "target": "(reported)",
                     "met": True})
    demo = [i for i in items if i.source.startswith("demo")]
    results["rule_then_judge_on_demo_passages"] = score_verifier(demo, verifiers["rule then judge"]) if demo else {}
    return {"results": results, "seconds": seconds, "threshold": threshold, "rows": rows}
