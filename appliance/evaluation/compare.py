"""Which architecture serves which task here: every applicable one run on the same items.

Architectures:

- ``single_shot``: for questions and claims, retrieve once and generate once (RAG with no
  agent); for classification and extraction, the base model with a few-shot prompt and the
  same output constraint, no adapter;
- ``agentic``: the agent (route, decompose, retrieve what the user is cleared for, check
  the evidence, re-retrieve, verify every sentence), with no specialist;
- ``specialist``: the fine-tuned adapter alone (classification, extraction);
- ``hybrid``: the agent with the specialists as steps (routing, entity pulls for
  re-retrieval, tagging passages).

Each kind of item gets the metrics of the eval command for it, latency p50/p95, tokens
and grounding, and a recommendation: the best on the kind's primary metric, or, within
:data:`TIE` of it, the fastest, with the figures that decided it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from appliance.access.labels import Principal
from appliance.agent.loop import Agent, Answer
from appliance.agent.specialists import task_text
from appliance.errors import ApplianceError
from appliance.evaluation.claims import label_claim, single_shot
from appliance.evaluation.qa import exact_match, states_fact, token_f1
from appliance.evaluation.sets import EvalItem, EvalSet
from appliance.evaluation.specialists import (
    _anchored,
    _fewshot_classify_prompt,
    _fewshot_extract_prompt,
    _shots,
    macro_f1,
    span_prf,
)
from appliance.runtime.protocol import GenerateRequest
from appliance.specialists.data import Example, Sentence, Span

__all__ = ["ARCHITECTURES", "APPLICABLE", "PRIMARY", "Systems", "compare", "applicable", "headline",
           "merge_generators"]

ARCHITECTURES = ("single_shot", "agentic", "specialist", "hybrid")
APPLICABLE = {"qa": ("single_shot", "agentic", "hybrid"), "claim": ("single_shot", "agentic", "hybrid"),
              "classify": ("single_shot", "specialist", "hybrid"), "extract": ("single_shot", "specialist", "hybrid")}
PRIMARY = {"qa": "token_f1", "claim": "label_accuracy", "classify": "accuracy", "extract": "f1"}
QUALITY = {"qa": ("token_f1", "exact_match", "expected_fact_rate", "source_recall", "groundedness"),
           "claim": ("label_accuracy", "evidence_recall", "groundedness"),
           "classify": ("accuracy", "macro_f1"), "extract": ("f1", "precision", "recall")}
TIE = 0.02  # within this of the best primary metric, the faster architecture is recommended
SAME_SPEED = 1.10  # ... and within this latency ratio of the fastest, the simpler one
SIMPLEST_FIRST = ("specialist", "single_shot", "agentic", "hybrid")  # fewest moving parts first
SERVED = {"qa": ("hybrid", "agentic"), "claim": ("hybrid", "agentic"), "classify": ("specialist", "single_shot"),
          "extract": ("specialist", "single_shot")}  # what the appliance serves for a kind, first that applies
SHOTS = {"classify": 8, "extract": 3}
SHOT_SEED = 7
Progress = Callable[[int, int], None]


@dataclass
class Systems:
    """What the comparison runs: two agents (without and with specialists) and the specialists."""

    agent: Agent  # no specialist
    hybrid: Agent | None  # the same with the specialists (None: none is installed)
    specialists: dict[str, Any] = field(default_factory=dict)  # task -> AdapterSpecialist
    principal: Principal | None = None


@dataclass
class _Result:
    seconds: float
    tokens: int = 0
    text: str = ""
    label: str | None = None
    spans: set = field(default_factory=set)
    cited_docs: list[str] = field(default_factory=list)
    checks: list[bool] = field(default_factory=list)
    abstained: bool = False
    outcome: str = ""  # answered | quoted | specialist | abstained | cancelled


def applicable(kind: str, systems: Systems) -> dict[str, str | None]:
    """Architecture -> None when it runs on ``kind``, else why not."""
    out: dict[str, str | None] = {}
    for arch in ARCHITECTURES:
        if arch not in APPLICABLE[kind]:
            out[arch] = f"not an architecture for {kind}"
        elif arch == "specialist" and kind not in systems.specialists:
            out[arch] = f"no {kind} specialist is installed"
        elif arch == "hybrid" and (systems.hybrid is None or (kind in ("classify", "extract")
                                                              and kind not in systems.specialists)):
            out[arch] = "no specialist is installed" if systems.hybrid is None else f"no {kind} specialist is installed"
        else:
            out[arch] = None
    return out


def _tokens(agent: Agent, answer: Answer) -> int:
    try:
        return sum(int(s.get("tokens") or 0) for s in agent.store.trace(answer.trace_id)["steps"])
    except Exception:  # noqa: BLE001 - a trace not kept only loses the token count
        return 0


def _ask(agent: Agent, question: str, principal: Principal) -> tuple[Answer, float, int]:
    t0 = time.perf_counter()
    answer = agent.ask(question, principal)
    return answer, time.perf_counter() - t0, _tokens(agent, answer)


def _answer_result(answer: Answer, seconds: float, tokens: int) -> _Result:
    abstained = answer.outcome in ("abstained", "cancelled")
    return _Result(seconds, tokens, "" if abstained else " ".join(s.text for s in answer.sentences) or answer.text,
                   cited_docs=[c.doc_id for c in answer.citations], checks=[s.supported for s in answer.sentences],
                   abstained=abstained, outcome=answer.outcome)


class _Runner:
    def __init__(self, systems: Systems, principal: Principal) -> None:
        self.s = systems
        self.principal = principal

    # questions and claims ---------------------------------------------------------------

    def qa(self, arch: str, item: EvalItem) -> _Result:
        if arch == "single_shot":
            agent = self.s.agent
            t0 = time.perf_counter()
            shot = single_shot(agent.engine, agent.retriever, agent.grounder, item.input, self.principal,
                               k=agent.settings.k)
            return _Result(time.perf_counter() - t0, shot.tokens, shot.text if shot.cited else "",
                           cited_docs=[h.chunk.doc_id for h in shot.cited], checks=shot.checks,
                           abstained=not shot.cited, outcome="answered" if shot.cited else "abstained")
        answerer = self.s.agent if arch == "agentic" else self.s.hybrid
        assert answerer is not None
        return _answer_result(*_ask(answerer, item.input, self.principal))

    def claim(self, arch: str, item: EvalItem) -> _Result:
        t0 = time.perf_counter()
        if arch == "single_shot":
            agent = self.s.agent
            shot = single_shot(agent.engine, agent.retriever, agent.grounder, item.input, self.principal,
                               k=agent.settings.k)
            passages = [h.chunk.passage for h in shot.cited]
            out = _Result(0.0, shot.tokens, shot.text, cited_docs=[h.chunk.doc_id for h in shot.cited],
                          checks=shot.checks, abstained=not shot.cited)
        else:
            answerer = self.s.agent if arch == "agentic" else self.s.hybrid
            assert answerer is not None
            answer, _, tokens = _ask(answerer, item.input, self.principal)
            passages = [c.text for c in answer.citations]
            out = _answer_result(answer, 0.0, tokens)
        out.label = label_claim(self.s.agent.engine, item.input, passages)
        out.seconds = time.perf_counter() - t0
        return out

    # classification and extraction -------------------------------------------------------

    def classify(self, arch: str, item: EvalItem, labels: list[str], shots: list[Example]) -> _Result:
        t0 = time.perf_counter()
        if arch == "single_shot":
            out = self.s.agent.engine.classify(_fewshot_classify_prompt(labels, shots, item.input), labels)
            return _Result(time.perf_counter() - t0, int(out.get("steps") or 0), label=out["label"])
        if arch == "specialist":
            c = self.s.specialists["classify"].classify(item.input)
            return _Result(time.perf_counter() - t0, c.tokens, label=c.label, abstained=c.label is None)
        assert self.s.hybrid is not None
        answer, seconds, tokens = _ask(self.s.hybrid, f"classify this: {item.input}", self.principal)
        spec = answer.specialist or {}
        best = spec.get("labels") or []
        label = best[0][0] if best and best[0][1] >= self.s.specialists["classify"].threshold else None
        return _Result(seconds, tokens, label=label, abstained=label is None)

    def extract(self, arch: str, item: EvalItem, types: list[str], shots: list[Sentence]) -> _Result:
        t0 = time.perf_counter()
        if arch == "single_shot":
            spec = self.s.specialists.get("extract")
            schema = spec.schema() if spec is not None else {
                "type": "array", "items": {"type": "object", "properties": {
                    "text": {"type": "string"}, "type": {"type": "string", "enum": types}},
                    "required": ["text", "type"]}}
            reply = self.s.agent.engine.generate(GenerateRequest(
                prompt=_fewshot_extract_prompt(types, shots, item.input), json_schema=schema, max_tokens=400))
            return _Result(time.perf_counter() - t0, reply.completion_tokens,
                           spans=_anchored(item.input, reply.text, types))
        if arch == "specialist":
            out = self.s.specialists["extract"].extract(item.input)
            return _Result(time.perf_counter() - t0, out.tokens, spans={(s.start, s.end, s.kind) for s in out.spans})
        assert self.s.hybrid is not None
        question = f"extract the entities: {item.input}"
        answer, seconds, tokens = _ask(self.s.hybrid, question, self.principal)
        spans = (answer.specialist or {}).get("spans") or []
        # offsets are in the text the agent gave the specialist: the item's text, maybe trimmed of quotes
        shift = max(0, item.input.find(task_text(question)))
        return _Result(seconds, tokens, spans={(s["start"] + shift, s["end"] + shift, s["kind"]) for s in spans})


# -- metrics ------------------------------------------------------------------------------


def _latency(results: Sequence[_Result]) -> dict:
    lat = sorted(r.seconds * 1000 for r in results)
    return {"p50_ms": statistics.median(lat) if lat else None,
            "p95_ms": lat[min(len(lat) - 1, int(0.95 * (len(lat) - 1) + 0.5))] if lat else None,
            "tokens_mean": statistics.fmean(r.tokens for r in results) if results else 0.0,
            "total_s": sum(r.seconds for r in results)}


def _grounding(results: Sequence[_Result]) -> dict:
    sentences = sum(len(r.checks) for r in results)
    cited = sum(len(r.cited_docs) for r in results)
    return {"groundedness": sum(sum(r.checks) for r in results) / sentences if sentences else None,
            "abstention_rate": sum(r.abstained for r in results) / len(results) if results else 0.0,
            "citations_mean": cited / len(results) if results else 0.0}


def _qa_metrics(items: Sequence[EvalItem], results: Sequence[_Result]) -> dict:
    em, f1, fact, recall, cited, cited_gold = [], [], [], [], 0, 0
    unanswerable = abstained_right = 0
    outcomes: dict[str, int] = {}
    for item, r in zip(items, results, strict=True):
        answers, sources = tuple(item.expected.get("answers") or ()), set(item.expected.get("sources") or ())
        if item.expected.get("unanswerable"):
            unanswerable += 1
            abstained_right += r.abstained
            continue
        outcomes[r.outcome or "answered"] = outcomes.get(r.outcome or "answered", 0) + 1
        if answers:
            em.append(exact_match(r.text, answers))
            f1.append(token_f1(r.text, answers))
            fact.append(states_fact(r.text, answers))
        if sources:
            recall.append(float(bool(sources & set(r.cited_docs))))
            cited += len(r.cited_docs)
            cited_gold += sum(d in sources for d in r.cited_docs)
    answerable = sum(outcomes.values())
    return {"exact_match": statistics.fmean(em) if em else None, "token_f1": statistics.fmean(f1) if f1 else None,
            "expected_fact_rate": statistics.fmean(fact) if fact else None,
            # of the answerable questions: written (and verified) answers, quotes, abstentions
            "answered_rate": outcomes.get("answered", 0) / answerable if answerable else None,
            "quoted_rate": outcomes.get("quoted", 0) / answerable if answerable else None,
            "abstained_rate_answerable": outcomes.get("abstained", 0) / answerable if answerable else None,
            "source_recall": statistics.fmean(recall) if recall else None,
            "citation_precision": cited_gold / cited if cited else None,
            "abstained_when_unanswerable": abstained_right / unanswerable if unanswerable else None}


def _claim_metrics(items: Sequence[EvalItem], results: Sequence[_Result]) -> dict:
    right = sum(r.label == it.expected["label"] for it, r in zip(items, results, strict=True))
    with_sources = [(set(it.expected.get("sources") or ()), r) for it, r in zip(items, results, strict=True)
                    if it.expected.get("sources")]
    cited = sum(len(r.cited_docs) for _, r in with_sources)
    return {"label_accuracy": right / len(items) if items else 0.0,
            "evidence_recall": (statistics.fmean(float(bool(s & set(r.cited_docs))) for s, r in with_sources)
                                if with_sources else None),
            "citation_precision": (sum(d in s for s, r in with_sources for d in r.cited_docs) / cited
                                   if cited else None)}


def _classify_metrics(items: Sequence[EvalItem], results: Sequence[_Result], labels: list[str]) -> dict:
    gold = [it.expected["label"] for it in items]
    pred = [r.label for r in results]
    return {"accuracy": sum(g == p for g, p in zip(gold, pred, strict=True)) / len(items) if items else 0.0,
            "macro_f1": macro_f1(gold, pred, labels)}


def _extract_metrics(items: Sequence[EvalItem], results: Sequence[_Result]) -> dict:
    gold = [{(s["start"], s["end"], s["type"]) for s in it.expected["spans"]} for it in items]
    return span_prf(gold, [r.spans for r in results])


def recommend(kind: str, archs: dict[str, dict]) -> dict:
    """The architecture for ``kind``: the best primary metric, or within TIE of it the fastest; with reasons."""
    metric = PRIMARY[kind]
    ran = {a: m for a, m in archs.items() if "skipped" not in m and m.get(metric) is not None}
    if not ran:
        return {"architecture": None, "reasons": [f"no architecture produced {metric} on these items"]}
    best = max(ran, key=lambda a: ran[a][metric])
    close = [a for a in ran if ran[a][metric] >= ran[best][metric] - TIE]
    fastest = min(close, key=lambda a: ran[a]["p50_ms"] or 0.0)
    quick = [a for a in close if (ran[a]["p50_ms"] or 0.0) <= (ran[fastest]["p50_ms"] or 0.0) * SAME_SPEED]
    choice = min(quick, key=lambda a: SIMPLEST_FIRST.index(a.split("@", 1)[0]))
    top = ran[choice]
    others = ", ".join(f"{a} {m[metric]:.3f} at p50 {m['p50_ms']:.0f} ms" for a, m in ran.items() if a != choice)
    reasons = [f"{metric} {top[metric]:.3f} at p50 {top['p50_ms']:.0f} ms" + (f" (beside: {others})" if others else "")]
    if choice != best:
        reasons.append(f"within {TIE} of the best ({best}, {ran[best][metric]:.3f}) at "
                       f"{top['p50_ms'] / ran[best]['p50_ms']:.2f}x its latency")
    if len(quick) > 1:
        reasons.append(f"as fast as {', '.join(a for a in quick if a != choice)} (within {SAME_SPEED - 1:.0%}) "
                       "with fewer moving parts")
    if top.get("errors"):
        reasons.append(f"{top['errors']} of its items failed (counted as wrong): {top['error_examples'][0]}")
    if kind in ("qa", "claim") and top.get("groundedness") is not None:
        reasons.append(f"groundedness {top['groundedness']:.3f}, abstains on {top['abstention_rate']:.0%}")
    if kind in ("classify", "extract") and top.get("tokens_mean"):
        reasons.append(f"{top['tokens_mean']:.1f} tokens generated per item")
    for arch, m in archs.items():
        if "skipped" in m:
            reasons.append(f"{arch} not run: {m['skipped']}")
    return {"architecture": choice, "metric": metric, "reasons": reasons}


# -- the comparison ----------------------------------------------------------------------


def compare(evalset: EvalSet, systems: Systems, principal: Principal, *,
            architectures: Sequence[str] = ARCHITECTURES, limit: int | None = None, served: bool = False,
            progress: Progress | None = None) -> dict[str, Any]:
    """Run each applicable architecture on every item of ``evalset``; the report, by kind.
    ``served``: only the architecture the appliance serves for each kind (the drift gate's run)."""
    runner = _Runner(systems, principal)
    by_kind: dict[str, list[EvalItem]] = {}
    for item in evalset.items:
        by_kind.setdefault(item.kind, []).append(item)
    plans: dict[str, tuple[list[EvalItem], dict[str, str | None], Any, Any]] = {}
    for kind, items in by_kind.items():
        shots: list = []
        context: Any = None
        if kind == "classify":
            examples = [Example(it.input, it.expected["label"]) for it in items]
            shots, rest = _shots(examples, SHOTS[kind], SHOT_SEED, key=lambda e: e.label)
            kept = {id(e) for e in rest}
            items = [it for it, e in zip(items, examples, strict=True) if id(e) in kept]
            spec = systems.specialists.get("classify")
            context = sorted(set(spec.info.labels) if spec is not None else {e.label for e in examples})
        elif kind == "extract":
            sentences = [Sentence(it.input, tuple(Span(s["start"], s["end"], s["type"]) for s in it.expected["spans"]))
                         for it in items]
            shots, _ = _shots([s for s in sentences if s.spans], SHOTS[kind], SHOT_SEED)
            chosen = {id(s) for s in shots}
            items = [it for it, s in zip(items, sentences, strict=True) if id(s) not in chosen]
            spec = systems.specialists.get("extract")
            context = sorted(set(spec.info.labels) if spec is not None
                             else {sp["type"] for it in items for sp in it.expected["spans"]})
        items = items[:limit] if limit else items
        status = {a: (r if r is not None or a in architectures else "not asked for")
                  for a, r in applicable(kind, systems).items()}
        if served:
            served_arch = next((a for a in SERVED[kind] if status[a] is None), None)
            status = {a: (r if r is not None or a == served_arch else "not what is served")
                      for a, r in status.items()}
        if not items:
            status = {a: r or "no items left after the few-shot examples" for a, r in status.items()}
        plans[kind] = (items, status, shots, context)
    total = sum(len(items) * sum(r is None for r in status.values()) for items, status, _, _ in plans.values())
    done = 0
    t_start = time.perf_counter()
    report: dict[str, Any] = {"set": evalset.name, "digest": evalset.digest, "items": len(evalset.items),
                              "by_kind": {}}
    for kind, (items, status, shots, context) in plans.items():
        archs: dict[str, dict] = {}
        for arch, why_not in status.items():
            if arch not in APPLICABLE[kind]:
                continue
            if why_not is not None:
                archs[arch] = {"skipped": why_not}
                continue
            results, errors = [], []
            for n, item in enumerate(items, 1):
                t0 = time.perf_counter()
                try:
                    if kind == "qa":
                        results.append(runner.qa(arch, item))
                    elif kind == "claim":
                        results.append(runner.claim(arch, item))
                    elif kind == "classify":
                        results.append(runner.classify(arch, item, context, shots))
                    else:
                        results.append(runner.extract(arch, item, context, shots))
                except ApplianceError as exc:  # one item the architecture refuses (too long ...) counts as failed
                    results.append(_Result(time.perf_counter() - t0, abstained=True))
                    errors.append(f"item {n}: {exc}"[:300])
                done += 1
                if progress:
                    progress(done, total)
            if kind == "qa":
                metrics = _qa_metrics(items, results)
            elif kind == "claim":
                metrics = _claim_metrics(items, results)
            elif kind == "classify":
                metrics = _classify_metrics(items, results, context)
            else:
                metrics = _extract_metrics(items, results)
            archs[arch] = {**metrics, **_grounding(results), **_latency(results), "items": len(results),
                           "errors": len(errors), "error_examples": errors[:5]}
        report["by_kind"][kind] = {"items": len(items), "few_shot_examples": len(shots), "primary": PRIMARY[kind],
                                   "architectures": archs, "recommendation": recommend(kind, archs)}
    report["seconds"] = time.perf_counter() - t_start
    return report


def merge_generators(reports: Sequence[tuple[str, dict]]) -> dict[str, Any]:
    """One report of the same set run with several generators: each architecture appears once per
    generator (``agentic@gemma3-270m``), and the recommendation is made across all of them."""
    first = reports[0][1]
    out: dict[str, Any] = {"set": first["set"], "digest": first["digest"], "items": first["items"], "by_kind": {},
                           "generators": [g for g, _ in reports], "seconds": sum(r["seconds"] for _, r in reports)}
    for kind in first["by_kind"]:
        archs = {f"{arch}@{g}": m for g, r in reports for arch, m in r["by_kind"][kind]["architectures"].items()}
        section = dict(first["by_kind"][kind])
        section.update(architectures=archs, recommendation=recommend(kind, archs))
        out["by_kind"][kind] = section
    return out


def headline(report: dict) -> dict[str, float]:
    """The quality figures of a report, flat (``kind/architecture/metric``), for the drift gate."""
    out = {}
    for kind, k in report.get("by_kind", {}).items():
        for arch, m in k.get("architectures", {}).items():
            for metric in QUALITY.get(kind, ()):
                if isinstance(m.get(metric), (int, float)):
                    out[f"{kind}/{arch}/{metric}"] = float(m[metric])
    return out
