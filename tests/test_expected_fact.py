"""`eval run` on questions reports whether the answer states the expected fact, and how often
the appliance answered rather than quoted or abstained."""

from __future__ import annotations

import pytest

from appliance.evaluation.compare import _qa_metrics, _Result
from appliance.evaluation.qa import states_fact
from appliance.evaluation.sets import EvalItem


def test_states_fact_needs_the_whole_fact_as_words() -> None:
    assert states_fact("The kiosk is open 07:30-18:00, Monday to Friday. [1]", ("07:30-18:00, Monday to Friday",))
    assert states_fact("It is in room A-017.", ("A-017",))
    assert not states_fact("It is in room A-0171.", ("A-017",))  # a longer number is another room
    assert not states_fact("The Badge Office is A-014; the kiosk is next to it.", ("A-017",))
    assert not states_fact("Monday to Friday, 07:30.", ("07:30-18:00, Monday to Friday",))  # words out of order
    assert not states_fact("anything", ("",))


def _item(answers: list[str], unanswerable: bool = False) -> EvalItem:
    return EvalItem(kind="qa", input="q", expected={"answers": answers, "sources": ["doc"],
                                                    "unanswerable": unanswerable})


def test_qa_metrics_count_facts_and_outcomes() -> None:
    items = [_item(["A-017"]), _item(["six"]), _item(["AP2"]), _item([], unanswerable=True)]
    results = [_Result(0.1, text="The kiosk is in room A-017.", cited_docs=["doc"], outcome="answered"),
               _Result(0.1, text="\u201cThere are six key fill devices.\u201d", cited_docs=["doc"], outcome="quoted"),
               _Result(0.1, text="", abstained=True, outcome="abstained"),
               _Result(0.1, text="", abstained=True, outcome="abstained")]
    m = _qa_metrics(items, results)
    assert m["expected_fact_rate"] == pytest.approx(2 / 3)
    assert m["answered_rate"] == pytest.approx(1 / 3) and m["quoted_rate"] == pytest.approx(1 / 3)
    assert m["abstained_rate_answerable"] == pytest.approx(1 / 3)  # the unanswerable one is not counted here
    assert m["abstained_when_unanswerable"] == 1.0
