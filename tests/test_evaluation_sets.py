"""Evaluation sets: every input format, bad input named, atomic replace, export round trip, feedback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.errors import EvaluationError
from appliance.evaluation.compare import recommend
from appliance.evaluation.sets import EvalStore, SetLimits, items_from_feedback, load_items

REPO = Path(__file__).resolve().parents[1]
DEMO_SET = REPO / "bundles" / "demo" / "evaluation" / "demo-questions.jsonl"


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_the_demo_set_reads_with_every_kind() -> None:
    items = load_items(DEMO_SET)
    kinds = {i.kind for i in items}
    assert kinds == {"qa", "classify", "extract"}
    unanswerable = [i for i in items if i.kind == "qa" and i.expected["unanswerable"]]
    assert unanswerable and all(not i.expected["answers"] for i in unanswerable)


def test_formats_of_the_other_eval_commands(tmp_path: Path) -> None:
    squad = {"data": [{"title": "Kiosk", "paragraphs": [{"context": "The kiosk is in room A-017.", "qas": [
        {"id": "q1", "question": "Where is the kiosk?", "answers": [{"text": "room A-017", "answer_start": 16}]},
        {"id": "q2", "question": "Who owns it?", "answers": [], "is_impossible": True}]}]}]}
    qa = load_items(_write(tmp_path / "s.json", json.dumps(squad)))
    assert [i.kind for i in qa] == ["qa", "qa"]
    assert qa[0].expected == {"answers": ["room A-017"], "sources": ["Kiosk#0"], "unanswerable": False}
    assert qa[1].expected["unanswerable"]

    claims = load_items(_write(tmp_path / "c.jsonl", "\n".join(json.dumps(r) for r in [
        {"id": 1, "claim": "Aspirin cures all.", "cited_doc_ids": [5], "label": "CONTRADICT"},
        {"id": 1, "claim": "Aspirin cures all.", "cited_doc_ids": [6]},
        {"id": 2, "claim": "Water is wet.", "cited_doc_ids": []}])))
    assert [(i.kind, i.expected["label"], i.expected["sources"]) for i in claims] == [
        ("claim", "CONTRADICT", ["5", "6"]), ("claim", "NOT_ENOUGH_INFO", [])]

    csv_items = load_items(_write(tmp_path / "l.csv", "text,label\nmy card is lost,lost_card\nhi,greeting\n"))
    assert [(i.kind, i.expected["label"]) for i in csv_items] == [("classify", "lost_card"), ("classify", "greeting")]

    conll = load_items(_write(tmp_path / "e.conll", "Ann\tB-person\nvisits\tO\nParis\tB-location\n\nok\tO\n"))
    assert conll[0].kind == "extract" and conll[0].input == "Ann visits Paris"
    assert conll[0].expected["spans"] == [{"start": 0, "end": 3, "type": "person"},
                                          {"start": 11, "end": 16, "type": "location"}]


@pytest.mark.parametrize("name, text, message", [
    ("a.jsonl", '{"kind": "qa", "input": "Where?", "expected": {}}\n', r"a\.jsonl:1: a question needs answers"),
    ("b.jsonl", '{"kind": "qa", "input": "x"}\nnot json\n', r"b\.jsonl: line 2 is not JSON"),
    ("c.jsonl", '{"kind": "claim", "input": "x", "expected": {"label": "MAYBE"}}\n', r"c\.jsonl:1: a claim's label"),
    ("d.jsonl", '{"kind": "extract", "input": "Ann", "expected": {"spans": [{"start": 0, "end": 9, "type": "p"}]}}\n',
     r"d\.jsonl:1: span 1 \(0, 9\) is outside the text of 3 characters"),
    ("e.jsonl", '{"kind": "poem", "input": "x", "expected": {}}\n', r"e\.jsonl:1: kind must be one of"),
    ("f.jsonl", '{"what": 1}\n', r"f\.jsonl: line 1 is none of the known kinds"),
    ("g.txt", "Ann\tB-person\nbroken line with no tag\n", r"g\.txt"),
    ("h.xml", "<set/>", r"h\.xml: an evaluation set is"),
    ("i.jsonl", "", r"i\.jsonl: no items"),
])
def test_bad_files_are_refused_naming_file_and_line(tmp_path: Path, name: str, text: str, message: str) -> None:
    with pytest.raises(EvaluationError, match=message):
        load_items(_write(tmp_path / name, text))


def test_limits_on_size_items_and_text(tmp_path: Path) -> None:
    limits = SetLimits(max_file_bytes=200, max_items=2, max_text_chars=20)
    with pytest.raises(EvaluationError, match="over the 200 byte limit"):
        load_items(_write(tmp_path / "big.csv", "text,label\n" + "a,b\n" * 100), limits)
    with pytest.raises(EvaluationError, match="over the 2 item limit"):
        load_items(_write(tmp_path / "many.jsonl", '{"question": "q", "answers": ["a"]}\n' * 3), limits)
    with pytest.raises(EvaluationError, match="over the 20 limit"):
        load_items(_write(tmp_path / "long.jsonl", json.dumps({"question": "q" * 30, "answers": ["a"]})), limits)


def test_store_replace_is_whole_and_a_refused_save_changes_nothing(tmp_path: Path) -> None:
    store = EvalStore(tmp_path / "evaluation.db")
    items = load_items(DEMO_SET)
    made = store.save("demo", items, by="olga", origin="file demo-questions.jsonl", description="the demo")
    assert store.get("demo").digest == made.digest and len(store.get("demo").items) == len(items)
    with pytest.raises(EvaluationError, match="exists"):
        store.save("demo", items[:3], by="olga", origin="x")
    with pytest.raises(EvaluationError, match="set name"):
        store.save("Bad Name!", items, by="olga", origin="x")
    assert len(store.get("demo").items) == len(items)
    store.save("demo", items[:3], by="olga", origin="x", replace=True)
    assert len(store.get("demo").items) == 3
    assert store.list()[0]["kinds"] == {"qa": 3}
    with pytest.raises(EvaluationError, match=r"no evaluation set 'nope' \(sets: demo\)"):
        store.get("nope")
    store.delete("demo")
    assert store.list() == []


def test_export_imports_back_to_the_same_digest(tmp_path: Path) -> None:
    store = EvalStore(tmp_path / "evaluation.db")
    made = store.save("demo", load_items(DEMO_SET), by="olga", origin="file")
    out = tmp_path / "out.jsonl"
    assert store.export("demo", out) == len(made.items)
    again = store.save("copy", load_items(out), by="olga", origin="file", replace=True)
    assert again.digest == made.digest


def test_feedback_becomes_questions_and_says_what_it_left_out() -> None:
    rows = [
        {"trace_id": "t1", "question": "Where is the kiosk?", "answer": "In room A-017 [1].", "verdict": "right",
         "outcome": "answered", "cited_docs": json.dumps(["kiosk.md"]), "correct_answer": None, "correct_source": None},
        {"trace_id": "t2", "question": "Who owns the kiosk?", "answer": "Bob.", "verdict": "wrong",
         "outcome": "answered", "cited_docs": "[]", "correct_answer": "Rafael Duarte", "correct_source": "kiosk.md"},
        {"trace_id": "t3", "question": "What is the cat called?", "answer": "The documents do not say.",
         "verdict": "right", "outcome": "abstained", "cited_docs": "[]", "correct_answer": None,
         "correct_source": None},
        {"trace_id": "t4", "question": "When is it open?", "answer": "Never.", "verdict": "wrong",
         "outcome": "answered", "cited_docs": "[]", "correct_answer": None, "correct_source": None},
        {"trace_id": "t5", "question": "where is the  KIOSK?", "answer": "Room B.", "verdict": "wrong",
         "outcome": "answered", "cited_docs": "[]", "correct_answer": "A-017", "correct_source": None},
    ]
    items, skipped = items_from_feedback(rows)
    by_q = {i.input: i.expected for i in items}
    assert by_q["where is the  KIOSK?"] == {"answers": ["A-017"], "sources": [], "unanswerable": False}  # latest
    assert "Where is the kiosk?" not in by_q
    assert by_q["Who owns the kiosk?"] == {"answers": ["Rafael Duarte"], "sources": ["kiosk.md"],
                                           "unanswerable": False}
    assert by_q["What is the cat called?"]["unanswerable"]
    assert len(items) == 3 and skipped == ["trace t4: marked wrong with no correct answer or source"]


def test_recommendation_prefers_quality_then_speed_then_simplicity() -> None:
    def m(score: float, p50: float) -> dict:
        return {"accuracy": score, "p50_ms": p50, "tokens_mean": 2.0}

    rec = recommend("classify", {"single_shot": m(0.2, 1500), "specialist": m(0.9, 100), "hybrid": m(0.9, 98)})
    assert rec["architecture"] == "specialist"  # hybrid is 2% faster: not worth its moving parts
    assert any("fewer moving parts" in r for r in rec["reasons"])
    rec = recommend("classify", {"single_shot": m(0.95, 1500), "specialist": m(0.9, 100)})
    assert rec["architecture"] == "single_shot" and "0.950" in rec["reasons"][0]
    rec = recommend("classify", {"single_shot": m(0.91, 1500), "specialist": m(0.9, 100)})
    assert rec["architecture"] == "specialist" and "within 0.02 of the best (single_shot" in rec["reasons"][1]
    rec = recommend("classify", {"specialist": {"skipped": "no classify specialist is installed"},
                                 "single_shot": m(0.3, 900)})
    assert rec["architecture"] == "single_shot"
    assert "specialist not run: no classify specialist is installed" in rec["reasons"]
    assert recommend("qa", {"agentic": {"skipped": "x"}})["architecture"] is None


def test_compare_counts_refused_items_and_skips_a_kind_the_examples_emptied() -> None:
    from types import SimpleNamespace

    from appliance.access.labels import Principal
    from appliance.evaluation.compare import SHOT_SEED, SHOTS, Systems, compare
    from appliance.evaluation.sets import EvalItem, EvalSet
    from appliance.evaluation.specialists import _shots
    from appliance.specialists.data import Example
    from appliance.specialists.serve import SpecialistError

    class Classifier:  # a fake at the specialist seam: refuses a text over 20 characters
        info = SimpleNamespace(labels=("a", "b"))
        threshold = 0.5

        def classify(self, text: str) -> SimpleNamespace:
            if len(text) > 20:
                raise SpecialistError(f"input of {len(text)} characters, over the 20 limit")
            return SimpleNamespace(label=text[0], tokens=1)

    engine = SimpleNamespace(classify=lambda prompt, labels: {"label": "a", "steps": 1})
    systems = Systems(agent=SimpleNamespace(engine=engine), hybrid=None, specialists={"classify": Classifier()})
    items = [EvalItem("classify", t, {"label": t[0]}) for t in
             ["a one", "b two", "a three", "b four", "a five", "b six", "a seven", "b eight", "a nine", "b ten",
              "a " + "long " * 10, "b twelve", "a " + "longer " * 10, "b " + "long " * 10]]
    report = compare(EvalSet("s", tuple(items)), systems, Principal("olga", "SECRET"), architectures=("specialist",))
    section = report["by_kind"]["classify"]
    spec = section["architectures"]["specialist"]
    shots, rest = _shots([Example(i.input, i.expected["label"]) for i in items], SHOTS["classify"], SHOT_SEED,
                         key=lambda e: e.label)
    assert section["few_shot_examples"] == len(shots) == 2 and spec["items"] == len(rest) == 12  # one per label
    refused = sum(len(e.text) > 20 for e in rest)
    assert refused >= 1 and spec["errors"] == refused and "over the 20 limit" in spec["error_examples"][0]
    assert spec["accuracy"] == (12 - refused) / 12  # a refused item counts as wrong
    tiny = compare(EvalSet("t", tuple(items[:2])), systems, Principal("olga", "SECRET"))
    assert tiny["by_kind"]["classify"]["architectures"]["specialist"] == {
        "skipped": "no items left after the few-shot examples"}
    assert tiny["by_kind"]["classify"]["recommendation"]["architecture"] is None
