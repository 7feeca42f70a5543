"""The wrong-claim set and its scoring: the loader refuses bad lines with the line and field
named, and the scores count what the verifier did."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.agent.grounding import Grounder
from appliance.errors import EvaluationError
from appliance.evaluation.verification import (
    KINDS,
    VerificationItem,
    grounder_verifier,
    load_verification_set,
    score_verifier,
)
from appliance.runtime.client import EngineClient


def test_the_shipped_set_has_the_kinds_and_sizes_the_targets_need() -> None:
    items = load_verification_set()
    wrong = [i for i in items if not i.supported]
    assert len(wrong) >= 50 and sum(i.supported for i in items) >= 40
    for kind in ("entity-swap", "number", "negation", "date", "relation"):
        assert sum(i.kind == kind for i in items) >= 8, kind
    assert any("A-014" in i.sentence and "A-017" in i.passage for i in wrong)  # the kiosk from the field


def _write(tmp_path: Path, lines: list[object]) -> Path:
    path = tmp_path / "v.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


GOOD = {"id": "a", "source": "demo:x.md", "passage": "The kiosk is in A-017.", "sentence": "It is in A-017.",
        "supported": True, "kind": "right"}


@pytest.mark.parametrize("line, message", [
    ("{not json", r"v.jsonl:2: not JSON"),
    ({**GOOD, "id": "b", "kind": "wrongish"}, r"v.jsonl:2: kind 'wrongish' is not one of"),
    ({**GOOD, "id": "b", "supported": "yes"}, r"v.jsonl:2: 'supported' must be true or false"),
    ({**GOOD, "id": "b", "kind": "number"}, r"v.jsonl:2: only 'right' sentences are supported"),
    ({**GOOD, "sentence": "x"}, r"v.jsonl:2: id 'a' appears twice"),
    ({**GOOD, "id": "b", "passage": ""}, r"v.jsonl:2: 'passage' must be a non-empty string"),
])
def test_a_bad_line_is_named(tmp_path: Path, line: object, message: str) -> None:
    with pytest.raises(EvaluationError, match=message):
        load_verification_set(_write(tmp_path, [GOOD, line]))


def test_an_oversized_set_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    with path.open("wb") as fh:
        fh.truncate((4 << 20) + 1)
    with pytest.raises(EvaluationError, match="over the limit"):
        load_verification_set(path)


def test_scores_count_what_the_verifier_did() -> None:
    items = [VerificationItem(str(n), "s", "p", f"s{n}", kind == "right", kind)
             for n, kind in enumerate(["right", "right", "number", "number", "relation"])]
    accept = {"0", "2"}  # keeps one right sentence, passes one wrong one
    report = score_verifier(items, lambda pairs: [s[1:] in accept for _, s in pairs])
    assert report["wrong_rejected"] == pytest.approx(2 / 3) and report["right_kept"] == 0.5
    assert report["rejection_precision"] == pytest.approx(2 / 3)  # 3 rejections, 2 of them wrong sentences
    assert report["per_kind"]["number"] == {"n": 2, "accepted": 1, "rejected": 1}
    assert report["passed_wrong"] == ["2"] and report["rejected_right"] == ["1"]
    assert set(report["per_kind"]) <= set(KINDS)


def test_todays_rule_runs_over_the_set_with_the_real_embedder(engine: EngineClient) -> None:
    """The baseline the next verifier is reported beside. Today's rule is word and meaning
    overlap, so it keeps most right sentences; what it passes of the wrong ones is the gap."""
    grounder = Grounder(lambda texts: engine.embed(list(texts)))
    items = load_verification_set()
    report = score_verifier(items, grounder_verifier(grounder))
    # measured 2026-12-05 on the portable build: 94/100 right kept, 24/158 wrong rejected. The
    # bar leaves 14 right sentences of room: MiniLM cosines move by ~1e-3 between CPU kernels,
    # which can flip only the few sentences that sit within that of the threshold.
    assert report["right_kept"] >= 0.8
    assert report["wrong"] == len(report["passed_wrong"]) + round(report["wrong_rejected"] * report["wrong"])
