"""How well the answer verifier tells entailed sentences from wrong ones that reuse the passage's words.

The set (``bundles/demo/evaluation/verification.jsonl``) pairs a passage with a sentence
that cites it, labelled ``supported`` or not, and a ``kind``: ``right`` (a faithful
restatement) or one way of being wrong with the passage's own words (``entity-swap``,
``number``, ``negation``, ``date``, ``relation``, ``vacuous``). :func:`score_verifier`
runs a verifier over it and reports how many wrong sentences it rejects (the figure an
analyst most depends on), how many right ones it keeps, and precision and recall of its
rejections, per kind.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.agent.contrast import contrast
from appliance.agent.grounding import Grounder
from appliance.errors import EvaluationError

__all__ = ["VERIFICATION_SET", "VerificationItem", "grounder_verifier", "entailment_verifier", "generator_judge",
           "contrast_margins", "calibrate_contrast", "load_verification_set", "score_verifier", "JUDGE_PROMPT"]

VERIFICATION_SET = Path(__file__).resolve().parents[2] / "bundles" / "demo" / "evaluation" / "verification.jsonl"
MAX_SET_BYTES = 4 << 20
MAX_ITEMS = 10_000
MAX_FIELD_CHARS = 8_000
KINDS = ("right", "entity-swap", "number", "negation", "date", "relation", "vacuous")

# passages, sentence -> is the sentence supported by (entailed by) the passage?
Verifier = Callable[[Sequence[tuple[str, str]]], list[bool]]


@dataclass(frozen=True)
class VerificationItem:
    id: str
    source: str
    passage: str
    sentence: str
    supported: bool
    kind: str


def load_verification_set(path: Path = VERIFICATION_SET) -> list[VerificationItem]:
    """Read and check the set; a bad line is an error naming the line and the field."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise EvaluationError(f"{path.name}: cannot read: {exc.strerror}") from exc
    if size > MAX_SET_BYTES:
        raise EvaluationError(f"{path.name}: {size} bytes, over the limit of {MAX_SET_BYTES}")
    items: list[VerificationItem] = []
    seen: set[str] = set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvaluationError(f"{path.name}:{n}: not JSON: {exc.msg}") from exc
        if not isinstance(raw, dict):
            raise EvaluationError(f"{path.name}:{n}: not a JSON object")
        for key in ("id", "source", "passage", "sentence", "kind"):
            value = raw.get(key)
            if not isinstance(value, str) or not value.strip() or len(value) > MAX_FIELD_CHARS:
                raise EvaluationError(f"{path.name}:{n}: {key!r} must be a non-empty string of at most "
                                      f"{MAX_FIELD_CHARS} characters")
        if not isinstance(raw.get("supported"), bool):
            raise EvaluationError(f"{path.name}:{n}: 'supported' must be true or false")
        if raw["kind"] not in KINDS:
            raise EvaluationError(f"{path.name}:{n}: kind {raw['kind']!r} is not one of {', '.join(KINDS)}")
        if raw["supported"] != (raw["kind"] == "right"):
            raise EvaluationError(f"{path.name}:{n}: only 'right' sentences are supported")
        if raw["id"] in seen:
            raise EvaluationError(f"{path.name}:{n}: id {raw['id']!r} appears twice")
        seen.add(raw["id"])
        items.append(VerificationItem(raw["id"], raw["source"], raw["passage"], raw["sentence"], raw["supported"],
                                      raw["kind"]))
        if len(items) > MAX_ITEMS:
            raise EvaluationError(f"{path.name}: more than {MAX_ITEMS} items")
    if not items:
        raise EvaluationError(f"{path.name}: no items")
    return items


def score_verifier(items: Sequence[VerificationItem], verifier: Verifier) -> dict:
    """Rejected-wrong rate, kept-right rate, precision and recall of rejections, and per kind."""
    verdicts = verifier([(i.passage, i.sentence) for i in items])
    if len(verdicts) != len(items):
        raise EvaluationError(f"the verifier gave {len(verdicts)} verdicts for {len(items)} sentences")
    wrong = [(i, ok) for i, ok in zip(items, verdicts, strict=True) if not i.supported]
    right = [(i, ok) for i, ok in zip(items, verdicts, strict=True) if i.supported]
    rejected_wrong = sum(not ok for _, ok in wrong)
    rejected_right = sum(not ok for _, ok in right)
    rejected = rejected_wrong + rejected_right
    per_kind = {}
    for kind in KINDS:
        got = [ok for i, ok in zip(items, verdicts, strict=True) if i.kind == kind]
        if got:
            per_kind[kind] = {"n": len(got), "accepted": sum(got), "rejected": len(got) - sum(got)}
    return {
        "items": len(items), "wrong": len(wrong), "right": len(right),
        "wrong_rejected": rejected_wrong / len(wrong) if wrong else None,  # recall of rejection
        "right_kept": (len(right) - rejected_right) / len(right) if right else None,
        "rejection_precision": rejected_wrong / rejected if rejected else None,
        "per_kind": per_kind,
        "passed_wrong": [i.id for i, ok in wrong if ok],
        "rejected_right": [i.id for i, ok in right if not ok],
    }


def grounder_verifier(grounder: Grounder) -> Verifier:
    """Today's rule: lexical and semantic support of the sentence by the passage it cites."""
    def verify(pairs: Sequence[tuple[str, str]]) -> list[bool]:
        return [grounder.check([(sentence, [1])], [passage])[0].supported for passage, sentence in pairs]
    return verify


def entailment_verifier(entail: Callable[[str, Sequence[str]], list[float]], threshold: float) -> Verifier:
    """The entailment judge alone: its logit for (sentence, passage) at least ``threshold``."""
    def verify(pairs: Sequence[tuple[str, str]]) -> list[bool]:
        return [entail(sentence, [passage])[0] >= threshold for passage, sentence in pairs]
    return verify


JUDGE_PROMPT = ("Passage: {passage}\n\nStatement: {sentence}\n\nDoes the passage state the statement exactly, "
                "with the same names, numbers, dates and relations? Answer yes or no.\nAnswer:")


def generator_judge(classify: Callable[[str, Sequence[str]], dict]) -> Verifier:
    """The generator as the judge: asked whether the passage states the sentence, its answer
    constrained to "yes" or "no" (the engine's classify walks only those tokens)."""
    def verify(pairs: Sequence[tuple[str, str]]) -> list[bool]:
        return [classify(JUDGE_PROMPT.format(passage=passage, sentence=sentence), ["yes", "no"])["label"] == "yes"
                for passage, sentence in pairs]
    return verify


def contrast_margins(pairs: Sequence[tuple[str, str]],
                     likelihoods: Callable[[str, Sequence[str]], list[float]],
                     progress: Callable[[], None] | None = None) -> list[float]:
    """The contrast check's margin (best alternate minus the sentence, log-probability; -inf
    when the sentence has no alternate) for each (sentence, passage)."""
    out = []
    for sentence, passage in pairs:
        out.append(contrast(sentence, passage, likelihoods, margin=0.0).margin)
        if progress:
            progress()
    return out


def calibrate_contrast(margins: Sequence[float], labels: Sequence[int], kinds: Sequence[str] | None = None,
                       keep: float = 0.95, easy: tuple[str, ...] = ("verbatim",)) -> dict:
    """The smallest margin (on a 0.25 grid from -2 to 8) at which at least ``keep`` of the
    entailed pairs (label 1) pass, and the share of the others refused there.

    Keeping right sentences comes first: a margin that drops true sentences turns answers
    into quotes. Entailed pairs of the ``easy`` kinds (a passage sentence copied verbatim)
    are left out of the keep rate: a generator's answer restates, and a copied sentence
    beats its alternates by far more than a restatement does, so counting copies set the
    margin too low for written sentences (first calibration, README).
    """
    kinds = list(kinds) if kinds is not None else [""] * len(margins)
    right = [m for m, y, k in zip(margins, labels, kinds, strict=True) if y == 1 and k not in easy]
    wrong = [m for m, y in zip(margins, labels, strict=True) if y == 0]
    if not right or not wrong:
        raise ValueError("calibration needs entailed (not copied) and not entailed pairs")
    grid = [x / 4 for x in range(-8, 33)]
    chosen = next((m for m in grid if sum(x <= m for x in right) / len(right) >= keep), grid[-1])
    return {"margin": chosen, "right_kept": sum(x <= chosen for x in right) / len(right),
            "wrong_rejected": sum(x > chosen for x in wrong) / len(wrong), "pairs": len(margins),
            "right_pairs": len(right), "keep_target": keep, "left_out": list(easy)}
