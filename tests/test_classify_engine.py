"""Constrained classification in the llama.cpp host: always a label, a confidence, per-request adapters."""

from __future__ import annotations

import pytest

from appliance.errors import EngineRequestError
from appliance.runtime.client import EngineClient

LABELS = ["card_arrival", "card_linking", "cash_withdrawal", "lost_or_stolen_card", "reverted_card_payment?",
          "card", "exchange_rate"]


def test_the_answer_is_always_one_of_the_labels_with_a_confidence(engine: EngineClient) -> None:
    prompts = ["Classify the text.\nText: I lost my card yesterday\nLabel:",
               "Classify the text.\nText: what is the rate for euros today\nLabel:",
               "Anything at all"]
    for prompt in prompts:
        out = engine.classify(prompt, LABELS)
        assert out["label"] in LABELS
        assert 0.0 < out["confidence"] <= 1.0
        firsts = [p for p, _ in out["first_choices"]]
        assert firsts == sorted(firsts, reverse=True) and sum(firsts) <= 1.0 + 1e-6
    # "card" is a prefix of other labels: the end-of-sequence token tells them apart
    assert engine.classify("Say the word card.\nWord:", ["card", "card_arrival"])["label"] in ("card", "card_arrival")


def test_a_single_possible_label_is_certain(engine: EngineClient) -> None:
    out = engine.classify("Anything", ["only"])
    assert out["label"] == "only" and out["confidence"] == 1.0


def test_adapters_are_chosen_per_request_and_change_the_scores(engine: EngineClient) -> None:
    prompt = "Classify the text.\nText: my card has not arrived yet\nLabel:"
    base = engine.classify(prompt, LABELS)
    alpha = engine.classify(prompt, LABELS, adapter="alpha")
    again = engine.classify(prompt, LABELS)
    assert base == {**again, "seconds": base["seconds"]}  # deterministic, and the base is back
    assert alpha["adapter"] == "alpha" and alpha["first_choices"] != base["first_choices"]


def test_bad_requests_are_refused(engine: EngineClient) -> None:
    with pytest.raises(EngineRequestError, match="labels"):
        engine.classify("x", [])
    with pytest.raises(EngineRequestError, match="distinct"):
        engine.classify("x", ["a", "a"])
    with pytest.raises(EngineRequestError, match="unknown adapter"):
        engine.classify("x", ["a", "b"], adapter="nope")
