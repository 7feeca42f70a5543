"""Specialist training data: the formats, the split, and every bad input named clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.specialists.data import DataError, load_classification, load_extraction, split

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_banking77_loads_with_its_category_column() -> None:
    data = load_classification(SHARED / "banking77" / "train.csv")
    assert len(data.examples) == 10_003 and len(data.labels) == 77
    assert data.examples[0].label == "card_arrival" and len(data.digest) == 64


def test_wnut17_loads_as_character_spans() -> None:
    data = load_extraction(SHARED / "wnut17" / "dev.conll")
    assert set(data.types) == {"person", "location", "group", "corporation", "product", "creative-work"}
    for s in data.sentences[:200]:
        for span in s.spans:
            assert s.text[span.start:span.end].strip() == s.text[span.start:span.end]  # whole tokens


def test_conll_runs_become_spans(tmp_path: Path) -> None:
    f = tmp_path / "x.conll"
    f.write_text("Empire\tB-location\nState\tI-location\nis\tO\nbig\tO\n\nBob\tB-person\nand\tO\nAnn\tI-person\n")
    data = load_extraction(f)
    first, second = data.sentences
    assert [first.text[s.start:s.end] for s in first.spans] == ["Empire State"]
    assert [(second.text[s.start:s.end], s.type) for s in second.spans] == [("Bob", "person"), ("Ann", "person")]


def test_jsonl_formats(tmp_path: Path) -> None:
    c = tmp_path / "c.jsonl"
    c.write_text('{"text": "lost card", "label": "lost"}\n{"text": "hello", "label": "greet"}\n')
    assert load_classification(c).labels == ["greet", "lost"]
    e = tmp_path / "e.jsonl"
    e.write_text('{"text": "Ann went to Paris", "spans": [{"start": 12, "end": 17, "type": "location"}]}\n')
    assert load_extraction(e).sentences[0].spans[0].type == "location"


@pytest.mark.parametrize(("name", "content", "message"), [
    ("empty.csv", "", "empty file"),
    ("header.csv", "words,label\nx,y\n", "header must name the columns text and label"),
    ("one.csv", "text,label\na,x\nb,x\n", "needs at least 2 classes"),
    ("quote.csv", 'text,label\na,"bad""label"\nb,ok\n', "characters a grammar cannot carry"),
    ("newline.jsonl", '{"text": "a", "label": "x\\ny"}\n{"text": "b", "label": "z"}\n', "characters a grammar"),
    ("columns.csv", "text,label\na,x,extra\n", ":2: 3 columns"),
    ("notjson.jsonl", '{"text": "a", "label": "x"}\n{oops\n', ":2: not JSON"),
    ("format.txt", "text,label\n", "must be .csv"),
])
def test_bad_classification_data_is_named(tmp_path: Path, name: str, content: str, message: str) -> None:
    f = tmp_path / name
    f.write_text(content)
    with pytest.raises(DataError, match=message):
        load_classification(f)


@pytest.mark.parametrize(("content", "message"), [
    ("Ann\tB-person\nbroken line without a tag\n", r":2: expected 'token<TAB>tag'"),
    ("Ann\tX-person\n", r":1: tag 'X-person' is not O, B-TYPE or I-TYPE"),
    ("Ann\tB-per\"son\n", "characters a grammar"),
    ("Ann\tO\nis\tO\n", "no entity in any sentence"),
])
def test_bad_conll_is_named_with_its_line(tmp_path: Path, content: str, message: str) -> None:
    f = tmp_path / "bad.conll"
    f.write_text(content)
    with pytest.raises(DataError, match=message):
        load_extraction(f)


def test_a_span_outside_its_text_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "e.jsonl"
    f.write_text('{"text": "Ann", "spans": [{"start": 0, "end": 9, "type": "person"}]}\n')
    with pytest.raises(DataError, match="outside the text"):
        load_extraction(f)


def test_split_is_deterministic_and_stratified() -> None:
    items = [(i, "a" if i % 4 else "b") for i in range(400)]
    train, held = split(items, 0.1, seed=7, key=lambda x: x[1])
    again = split(items, 0.1, seed=7, key=lambda x: x[1])
    assert (train, held) == again and len(held) == 40
    assert sum(1 for _, lab in held if lab == "b") == 10  # a quarter of the held-out, as in the data
    assert not set(train) & set(held)
    assert split(items, 0.1, seed=8, key=lambda x: x[1])[1] != held


def test_the_held_out_split_is_written_so_the_loaders_read_it_back(tmp_path: Path) -> None:
    from appliance.specialists.data import Example, Sentence, Span, load_classification, load_extraction, write_held_out

    examples = [Example('a "quoted", text', "x"), Example("line\nbreak", "y")]
    assert load_classification(write_held_out(examples, tmp_path / "h.csv")).examples == examples
    sentences = [Sentence("Ann met Bob in Oslo", (Span(0, 3, "person"), Span(15, 19, "location")))]
    back = load_extraction(write_held_out(sentences, tmp_path / "h.jsonl")).sentences
    assert [(s.text, s.spans) for s in back] == [(s.text, s.spans) for s in sentences]
