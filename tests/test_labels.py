"""Labels and principals: parsing, ordering, compartments."""

from __future__ import annotations

import pytest

from appliance.access.labels import Labels, LevelScale, Principal, parse_labels
from appliance.errors import LabelError


def test_parse_level_and_compartments() -> None:
    lab = parse_labels("secret:crypto, Nuclear")
    assert lab == Labels("SECRET", frozenset({"CRYPTO", "NUCLEAR"}))
    assert str(lab) == "SECRET:CRYPTO,NUCLEAR"
    assert parse_labels("top_secret").level == "TOP SECRET"
    assert lab.partition == "lbl.secret.crypto.nuclear"
    assert parse_labels("SECRET:NUCLEAR,CRYPTO").partition == lab.partition


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty label"),
    ("COSMIC", "unknown classification level 'COSMIC'"),
    ("SECRET:bad name", "bad compartment 'bad name'"),
    ("SECRET:A:B", "more than one ':'"),
    ("SECRET:" + ",".join(f"C{i}" for i in range(40)), "over the 32 limit"),
    ("S" * 600, "over the 512 limit"),
])
def test_bad_labels_named(text: str, message: str) -> None:
    with pytest.raises(LabelError, match=message):
        parse_labels(text)


def test_read_rule_level_and_every_compartment() -> None:
    scale = LevelScale()
    doc = Labels("SECRET", frozenset({"CRYPTO"}))
    assert Principal("a", "TOP SECRET", frozenset({"CRYPTO", "X"})).can_read(doc, scale)
    assert not Principal("b", "TOP SECRET").can_read(doc, scale)  # lacks the compartment
    assert not Principal("c", "CONFIDENTIAL", frozenset({"CRYPTO"})).can_read(doc, scale)  # level too low
    assert Principal("d", "UNCLASSIFIED").can_read(Labels("UNCLASSIFIED"), scale)


def test_custom_scale() -> None:
    scale = LevelScale(("PUBLIC", "INTERNAL", "RESTRICTED"))
    assert parse_labels("internal", scale).level == "INTERNAL"
    with pytest.raises(LabelError, match="levels: PUBLIC, INTERNAL, RESTRICTED"):
        parse_labels("SECRET", scale)
    with pytest.raises(LabelError, match="repeat"):
        LevelScale(("A", "a"))
