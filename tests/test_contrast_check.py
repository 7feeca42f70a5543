"""The contrast check: alternates of a sentence, the grounder's gate at its seam (a fake
generator with known likelihoods), and the real generator's likelihoods in llama.cpp."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from appliance.agent.contrast import CONTRAST_PROMPT, MAX_ALTERNATES, alternates, contrast
from appliance.agent.grounding import Grounder
from appliance.config import AgentSettings
from appliance.errors import EngineRequestError
from appliance.runtime.client import MAX_CONTINUATIONS, EngineClient
from appliance.runtime.protocol import GenerateRequest
from tests.helpers import letters_embed

KIOSK = ("The Removable Media Kiosk is in room A-017 in Building A, next to the Badge Office (A-014). "
         "The kiosk is open 07:30-18:00, Monday to Friday.")
CANTEEN = "Meal | Hours\nLunch | 11:30-14:00\nDinner | 17:30-19:30"


def test_alternates_put_the_passages_other_values_in_place() -> None:
    alts = alternates("The Removable Media Kiosk is in room A-014.", KIOSK)
    texts = {a.text: a for a in alts}
    assert "The Removable Media Kiosk is in room A-017." in texts
    assert texts["The Removable Media Kiosk is in room A-017."].changed == "A-014 -> A-017"
    assert "The Removable Media Kiosk is not in room A-014." in texts  # negation
    times = {a.text for a in alternates("The kiosk is open 07:30-18:00, Monday to Saturday.", KIOSK)}
    assert "The kiosk is open 07:30-18:00, Monday to Friday." in times  # a weekday from the passage
    assert "The kiosk is open 07:30-18:00, Saturday to Monday." in times  # two values exchanged


def test_negation_and_opposites() -> None:
    alts = {a.kind: a.text for a in alternates("The canteen does not serve dinner.", CANTEEN)}
    assert alts["negation"] == "The canteen does serve dinner."
    passage = "The fire door is closed after 18:00."
    assert "The fire door is closed after 18:00." in {
        a.text for a in alternates("The fire door is open after 18:00.", passage) if a.kind == "opposite"}
    # an opposite the passage never uses is not an alternate
    assert not [a for a in alternates("The fire door is open after 18:00.", "The fire door is painted red.")
                if a.kind == "opposite"]


def test_alternates_are_bounded_and_never_the_sentence() -> None:
    passage = " ".join(f"Item {i} costs {i * 7} pounds." for i in range(1, 60))
    sentence = "Item 3 costs 21 pounds."
    alts = alternates(sentence, passage)
    assert len(alts) == MAX_ALTERNATES
    assert sentence not in {a.text for a in alts} and len({a.text for a in alts}) == len(alts)
    assert alternates("Fine words butter no parsnips.", "Nothing here.") == []


def test_the_grounder_refuses_a_sentence_whose_alternate_the_passage_backs() -> None:
    calls: list[tuple[str, list[str]]] = []

    def likelihoods(prefix: str, continuations: Sequence[str]) -> list[float]:
        calls.append((prefix, list(continuations)))
        return [-5.0 if "A-017" in c and "not" not in c else -12.0 for c in continuations]

    g = Grounder(letters_embed, likelihoods=likelihoods, contrast_margin=1.0)
    wrong, right = "The Removable Media Kiosk is in room A-014.", "The Removable Media Kiosk is in room A-017."
    checks = g.check([(wrong, [1]), (right, [1])], [KIOSK])
    assert checks[0].lexical == 1.0  # every word of the wrong sentence is in the passage
    assert not checks[0].supported
    assert checks[0].reason == "the passage backs a different claim (A-014 -> A-017, likelier by 7.0)"
    assert checks[0].contrast == pytest.approx(7.0)
    assert checks[1].supported and checks[1].contrast == pytest.approx(-7.0)
    assert calls[0][0] == CONTRAST_PROMPT.format(passage=KIOSK)
    assert calls[0][1][0] == " " + wrong  # the sentence first, then its alternates


def test_the_margin_decides_and_the_fast_filter_comes_first() -> None:
    def likelihoods(prefix: str, continuations: Sequence[str]) -> list[float]:
        return [-10.0] + [-9.5] * (len(continuations) - 1)  # every alternate 0.5 likelier

    sentence = "The Removable Media Kiosk is in room A-014."
    grounder = Grounder(letters_embed, likelihoods=likelihoods, contrast_margin=1.0)
    assert grounder.check([(sentence, [1])], [KIOSK])[0].supported
    assert not Grounder(letters_embed, likelihoods=likelihoods, contrast_margin=0.25).check(
        [(sentence, [1])], [KIOSK])[0].supported
    asked: list[str] = []
    g = Grounder(letters_embed, likelihoods=lambda p, cs: asked.append(p) or [0.0] * len(cs))
    checks = g.check([("Quarterly tax returns are due in April.", [1]), ("No citation here.", [])], [KIOSK])
    assert not any(c.supported for c in checks) and asked == []  # neither passed lexical and semantic support


def test_a_sentence_without_alternates_is_not_sent_to_the_generator() -> None:
    asked: list[str] = []
    verdict = contrast("Fine words butter no parsnips.", "Fine words butter no parsnips.",
                       lambda p, cs: asked.append(p) or [0.0] * len(cs), margin=0.0)
    assert verdict.ok and verdict.alternate is None and asked == []


def test_a_scorer_that_miscounts_is_an_error() -> None:
    with pytest.raises(ValueError, match="likelihoods for"):
        contrast("The Removable Media Kiosk is in room A-014.", KIOSK, lambda p, cs: [0.0], margin=1.0)


# -- the real generator ---------------------------------------------------------------------


def test_the_generator_prefers_what_the_passage_says(engine: EngineClient) -> None:
    prefix = CONTRAST_PROMPT.format(passage=KIOSK)
    right, wrong = engine.likelihoods(prefix, [" The Removable Media Kiosk is in room A-017.",
                                               " The Removable Media Kiosk is in room A-014."])
    assert right < 0 and wrong < 0
    # measured 4.2 nats apart with SmolLM2-135M Q4_1 on AVX-512 and AVX2 builds; another CPU's
    # kernels move a log-probability by hundredths, so half of that gap cannot be a rounding artefact
    assert right - wrong > 2.0


def test_likelihoods_do_not_depend_on_order_or_on_what_came_before(engine: EngineClient) -> None:
    prefix = CONTRAST_PROMPT.format(passage=KIOSK)
    a, b = " The kiosk opens at 07:30.", " The kiosk is open on Saturday and Sunday only."
    first = engine.likelihoods(prefix, [a, b])
    second = engine.likelihoods(prefix, [b, a])
    alone = engine.likelihoods(prefix, [b])
    # the same decodes in another order: a cache left over from the previous continuation would
    # shift them by whole nats, while batch-order noise stays in the thousandths
    assert first[0] == pytest.approx(second[1], abs=0.05) and first[1] == pytest.approx(second[0], abs=0.05)
    assert alone[0] == pytest.approx(first[1], abs=0.05)


def test_generation_is_unchanged_by_a_likelihood_call(engine: EngineClient) -> None:
    req = GenerateRequest(prompt="Name the kiosk's room.", system=KIOSK, max_tokens=12)
    before = engine.generate(req).text
    engine.likelihoods(CONTRAST_PROMPT.format(passage=KIOSK), [" The kiosk is in room A-017."])
    assert engine.generate(req).text == before


def test_likelihood_requests_over_the_limits_are_refused(engine: EngineClient) -> None:
    with pytest.raises(EngineRequestError, match="continuations, over the"):
        engine.likelihoods("Passage:", [" x"] * (MAX_CONTINUATIONS + 1))
    with pytest.raises(EngineRequestError, match="continuation 1 must be non-empty"):
        engine.likelihoods("Passage:", [" x", "   "])
    with pytest.raises(EngineRequestError, match="prefix must be a string"):
        engine.likelihoods("x" * 300_000, [" x"])
    assert engine.likelihoods("Passage:", []) == []


def test_the_kiosk_example_is_caught_with_the_real_generator(engine: EngineClient) -> None:
    settings = AgentSettings()
    g = Grounder(lambda texts: engine.embed(list(texts)), threshold=settings.support_threshold,
                 likelihoods=engine.likelihoods, contrast_margin=settings.contrast_margin)
    wrong, right = "The Removable Media Kiosk is in room A-014.", "The Removable Media Kiosk is in room A-017."
    checks = g.check([(wrong, [1]), (right, [1])], [KIOSK])
    assert not checks[0].supported and "A-014 -> A-017" in checks[0].reason
    assert checks[1].supported
    # without the check today's rule passes the wrong room: the reason the check exists
    assert Grounder(lambda texts: engine.embed(list(texts)),
                    threshold=settings.support_threshold).check([(wrong, [1])], [KIOSK])[0].supported


def test_a_passage_scored_again_reuses_its_cache_and_gives_the_same_figures(engine: EngineClient) -> None:
    prefix = CONTRAST_PROMPT.format(passage=KIOSK)
    conts = [" The kiosk opens at 07:30.", " The kiosk is in room A-014."]
    fresh = engine.likelihoods(prefix, conts)
    again = engine.likelihoods(prefix, conts)  # the prefix's cache kept from the call before
    engine.generate(GenerateRequest(prompt="Hello", max_tokens=4))  # clears the cache
    after = engine.likelihoods(prefix, conts)
    other = engine.likelihoods(CONTRAST_PROMPT.format(passage=CANTEEN), conts)
    assert again == pytest.approx(fresh, abs=1e-4) and after == pytest.approx(fresh, abs=0.05)
    assert other[1] != pytest.approx(fresh[1], abs=0.5)  # another passage is not served from the cache


def test_a_sentence_the_generator_cannot_check_is_not_verified() -> None:
    from appliance.errors import ContextOverflowError

    def likelihoods(prefix: str, continuations: Sequence[str]) -> list[float]:
        raise ContextOverflowError("prompt is 5000 tokens; the context holds 1024")

    check = Grounder(letters_embed, likelihoods=likelihoods).check(
        [("The Removable Media Kiosk is in room A-017.", [1])], [KIOSK])[0]
    assert not check.supported and check.reason == "its passage is too long for the generator to check it against"
