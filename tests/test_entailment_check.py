"""The entailment judge in the grounder and the reranker choosing quotes, at their seams
(fake scorers with known answers); the real models are tested in test_cross_encoders_real.py."""

from __future__ import annotations

from collections.abc import Sequence

from appliance.agent.grounding import Grounder
from tests.helpers import letters_embed

PASSAGE = ("The Removable Media Kiosk is in room A-017 in Building A, next to the Badge Office (A-014). "
           "The kiosk is open 07:30-18:00, Monday to Friday.")


def test_entailment_rejects_what_the_first_filter_passes() -> None:
    calls: list[tuple[str, list[str]]] = []

    def entail(sentence: str, passages: Sequence[str]) -> list[float]:
        calls.append((sentence, list(passages)))
        return [-4.0 if "A-014" in sentence else 3.0 for _ in passages]

    g = Grounder(letters_embed, entail=entail, entail_threshold=0.0)
    wrong, right = "The Removable Media Kiosk is in room A-014.", "The Removable Media Kiosk is in room A-017."
    checks = g.check([(wrong, [1]), (right, [1])], [PASSAGE])
    assert checks[0].lexical == 1.0  # every word of the wrong sentence is in the passage
    assert not checks[0].supported and "does not state it (entailment -4.0)" in checks[0].reason
    assert checks[0].entailment == -4.0
    assert checks[1].supported and checks[1].entailment == 3.0
    assert [c[1] for c in calls] == [[PASSAGE], [PASSAGE]]


def test_entailment_is_asked_only_after_the_fast_filter_passes() -> None:
    calls: list[str] = []
    g = Grounder(letters_embed, entail=lambda s, ps: calls.append(s) or [5.0])
    checks = g.check([("Quarterly tax returns are due in April.", [1]), ("No citation here.", [])], [PASSAGE])
    assert not any(c.supported for c in checks)
    assert calls == []  # neither sentence passed lexical and semantic support


def test_without_a_judge_the_first_filter_decides() -> None:
    g = Grounder(letters_embed)
    check = g.check([("The Removable Media Kiosk is in room A-014.", [1])], [PASSAGE])[0]
    assert check.supported and check.entailment is None  # today's rule: why the judge is needed


def test_quotes_are_the_sentences_the_reranker_scores_highest() -> None:
    passages = ["Upcoming rotations: 3 March and 7 April.\nThe schedule is kept by the custodian.",
                "Key: LE-400 traffic keys; Frequency: Monthly, first Tuesday of the month; Window: 02:00-04:00"]

    def rank(question: str, texts: Sequence[str]) -> list[float]:
        return [6.0 if "Monthly" in t else 1.0 if "custodian" in t else -2.0 for t in texts]

    g = Grounder(letters_embed)
    quotes = g.quotes("How often are the LE-400 traffic keys rotated?", passages, rank=rank, min_rank=0.0)
    assert [q.passage for q in quotes] == [2]
    assert quotes[0].text.startswith("Key: LE-400") and quotes[0].score == 6.0
    assert g.quotes("How often?", passages, rank=lambda q, ts: [-1.0] * len(ts), min_rank=0.0) == []
