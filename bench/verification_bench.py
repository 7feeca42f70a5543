"""The answer verifier on the wrong-claim set: wrong sentences rejected, right ones kept.

Side by side, in one run over the same 258 sentences:
- today's rule (lexical and semantic support, ``Grounder`` at the agent's threshold), the
  baseline;
- the entailment judge alone (the MiniLM cross-encoder trained by ``python -m
  appliance.rerank verifier``, at the threshold calibrated on its own held-out generated
  pairs, never on this set);
- today's rule as the fast first filter, then the judge;
- the generator as the judge (SmolLM2 asked yes or no, constrained to those two answers);
- today's rule, then the contrast check (``appliance/agent/contrast.py``) with each
  generator (SmolLM2, and Gemma 3 270M when provisioned): its margin calibrated first on
  generated pairs (``appliance.rerank.nli.generate_pairs``, a seed the judge was not trained
  with, the set's documents excluded), never on this set: the smallest margin keeping 0.95
  of the generated right sentences that are not verbatim copies (the margin counting the
  copies too is reported beside it).

The targets (issue 17) are >= 0.9 of wrong sentences rejected and >= 0.9 of right ones kept.
Every passage of the set comes from a document the judge was not trained on.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console

from appliance.agent.grounding import Grounder
from appliance.config import AgentSettings
from appliance.evaluation.verification import (
    VERIFICATION_SET,
    calibrate_contrast,
    contrast_margins,
    entailment_verifier,
    generator_judge,
    grounder_verifier,
    load_verification_set,
    score_verifier,
)
from appliance.runtime.client import EngineClient
from appliance.runtime.protocol import EngineSpec
from bench.runtime_bench import REPO, THREADS, _store

WORK = REPO / "bench" / "work" / "verifier"
SCIFACT = REPO.parent / "shared" / "data" / "scifact"
CALIBRATION_PAIRS = 400
KIOSK = "v002"  # "The Removable Media Kiosk is in room A-014." (the example; the passage says A-017)
CALIBRATION_SEED = 101  # the judge was trained with seed 23; these pairs are drawn afresh
CONTRAST_GENERATORS = ("smollm2-135m-instruct", "gemma3-270m")


def _calibration_pairs(n: int) -> list[tuple[str, str, int, str]]:
    from appliance.rerank.nli import NliConfig, excluded_documents, generate_pairs
    pairs, _ = generate_pairs(SCIFACT / "corpus.jsonl", excluded_documents(VERIFICATION_SET),
                              NliConfig(pairs=n, seed=CALIBRATION_SEED))
    return pairs


def _generator_spec(store, name: str) -> EngineSpec:  # noqa: ANN001
    record = store.get(name)
    return EngineSpec(generator_path=str(record.path), embedder_path=str(store.get("all-minilm-l6-v2").path),
                      generator_template=record.metadata.get("chat_template") or None, threads=THREADS)


def _remembered(verifier):  # noqa: ANN001, ANN202
    """The verifier, answering a (passage, sentence) it has judged from memory."""
    seen: dict[tuple[str, str], bool] = {}

    def verify(pairs):  # noqa: ANN001, ANN202
        todo = [p for p in pairs if p not in seen]
        for p, ok in zip(todo, verifier(todo), strict=True):
            seen[p] = ok
        return [seen[p] for p in pairs]
    return verify


def _contrast(store, items, pairs, console: Console) -> tuple[dict, dict, dict]:  # noqa: ANN001
    """For each provisioned generator: the margin calibrated on ``pairs``, then today's rule
    and the contrast check over the set."""
    settings = AgentSettings()
    results, seconds, calibrations = {}, {}, {}
    for name in CONTRAST_GENERATORS:
        if not store.has(name):
            console.print(f"{name} is not provisioned: no contrast check with it")
            continue
        with EngineClient(_generator_spec(store, name)) as engine:
            with console.status(f"calibrating the contrast margin for {name} on {len(pairs)} generated pairs…"):
                t0 = time.perf_counter()
                margins = contrast_margins([(s, p) for s, p, _, _ in pairs], engine.likelihoods)
                calibrations[name] = calibrate_contrast(margins, [y for _, _, y, _ in pairs],
                                                        [k for _, _, _, k in pairs]) | {
                    "seconds": time.perf_counter() - t0, "margins": [round(m, 3) for m in margins],
                    "labels": [y for _, _, y, _ in pairs], "kinds": [k for _, _, _, k in pairs]}
            first = calibrate_contrast(margins, [y for _, _, y, _ in pairs], keep=0.95, easy=())
            calibrations[name]["with_copied_sentences"] = {k: first[k] for k in ("margin", "right_kept",
                                                                                 "wrong_rejected")}
            grounder = Grounder(lambda texts: engine.embed(list(texts)), threshold=settings.support_threshold,
                                likelihoods=engine.likelihoods, contrast_margin=calibrations[name]["margin"])
            label = f"rule then contrast ({name})"
            verifier = _remembered(grounder_verifier(grounder))
            with console.status(f"{label} over {len(items)} sentences…"):
                t0 = time.perf_counter()
                results[label] = score_verifier(items, verifier)
                seconds[label] = time.perf_counter() - t0
            demo = [i for i in items if i.source.startswith("demo")]
            results[f"{label} on demo passages"] = score_verifier(demo, verifier)  # from what it remembered
    return results, seconds, calibrations


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
        demo = [i for i in items if i.source.startswith("demo")]
        results["rule_then_judge_on_demo_passages"] = score_verifier(demo, verifiers["rule then judge"]) if demo else {}
    base = results["today's rule"]
    rows = []
    for label, r in results.items():
        if label in seconds:
            rows += _rows(label, r, None if label == "today's rule" else base, seconds[label])
    judged = results["rule then judge"]
    for kind, k in judged["per_kind"].items():
        before = base["per_kind"][kind]
        rows.append({"name": f"  {kind}: accepted / n, rule then judge (today's)",
                     "appliance": f"{k['accepted']}/{k['n']}",
                     "baseline": f"{before['accepted']}/{before['n']}", "ratio": None, "target": "(reported)",
                     "met": True})
    pairs = _calibration_pairs(80 if quick else CALIBRATION_PAIRS)
    contrasted, contrast_seconds, calibrations = _contrast(store, items, pairs, console)
    for label, r in contrasted.items():
        results[label] = r
        if label in contrast_seconds:
            seconds[label] = contrast_seconds[label]
            rows += _rows(label, r, base, contrast_seconds[label])
            for kind, k in r["per_kind"].items():
                before = base["per_kind"][kind]
                rows.append({"name": f"  {kind}: accepted / n, {label} (today's)",
                             "appliance": f"{k['accepted']}/{k['n']}",
                             "baseline": f"{before['accepted']}/{before['n']}",
                             "ratio": None, "target": "(reported)", "met": True})
    for name, cal in calibrations.items():
        rows.append({"name": f"contrast margin for {name} (generated pairs: right kept, wrong rejected)",
                     "appliance": f"{cal['margin']:.2f}",
                     "baseline": f"{cal['right_kept']:.2f} / {cal['wrong_rejected']:.2f}", "ratio": None,
                     "target": "(calibrated)", "met": True})
    kiosk = next((i for i in items if i.id == KIOSK), None)
    if kiosk is not None:
        for label, r in results.items():
            if "passed_wrong" in r and "on demo" not in label and "demo_passages" not in label:
                caught = KIOSK not in r["passed_wrong"]
                rows.append({"name": f"the kiosk example ({kiosk.sentence!r}) refused, {label}",
                             "appliance": "yes" if caught else "no", "baseline": "-", "ratio": None,
                             "target": "refused", "met": caught})
    return {"results": results, "seconds": seconds, "threshold": threshold, "contrast_calibration": calibrations,
            "rows": rows}
