"""Specialists served from adapters: the registry from GGUF metadata, classify with abstention,
extract with every span anchored in the input; over the real llama.cpp host and at a seam."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from appliance.runtime.client import EngineClient
from appliance.runtime.model_store import ModelStore
from appliance.runtime.protocol import EngineSpec
from appliance.specialists.serve import AdapterSpecialist, SpecialistError, read_specialist
from tests.helpers import ENTITY_TYPES, SPECIALIST_LABELS, specialist_adapter

LABELS, TYPES = SPECIALIST_LABELS, ENTITY_TYPES
_adapter = specialist_adapter


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, generator):  # noqa: ANN001, ANN201
    d = tmp_path_factory.mktemp("specialists")
    store = ModelStore(d / "store")
    for name, task, labels, seed in (("intent", "classify", LABELS, 1), ("ner", "extract", TYPES, 2)):
        path = _adapter(generator.path, d / f"{name}.gguf", task, labels, seed)
        store.add_file(path, name=name, kind="adapter", source="test", base_sha256=generator.sha256)
    infos = {r.name: read_specialist(r) for r in store.list("adapter")}
    client = EngineClient(EngineSpec(generator_path=str(generator.path), threads=2, n_ctx=1024,
                                     adapters={n: str(store.get(n).path) for n in infos}), request_timeout_s=120)
    client.start()
    yield infos, client
    client.close()


def test_the_registry_reads_task_and_labels_from_the_adapter(served) -> None:  # noqa: ANN001
    infos, _ = served
    assert infos["intent"].task == "classify" and list(infos["intent"].labels) == LABELS
    assert infos["ner"].task == "extract" and list(infos["ner"].labels) == TYPES
    assert infos["intent"].metrics == {"accuracy": 0.5}


def test_classify_gives_a_label_or_abstains(served) -> None:  # noqa: ANN001
    infos, client = served
    sure = AdapterSpecialist(infos["intent"], lambda: client, threshold=0.0)
    out = sure.classify("I think my card was stolen")
    assert out.label in LABELS and out.best == out.label and 0 < out.confidence <= 1
    never = AdapterSpecialist(infos["intent"], lambda: client, threshold=1.01)
    abstained = never.classify("I think my card was stolen")
    assert abstained.label is None and abstained.best == out.label  # the same answer, below the bar
    assert never.run("I think my card was stolen").labels == []
    with pytest.raises(SpecialistError, match="not an extractor"):
        sure.extract("x")
    with pytest.raises(SpecialistError, match="empty input"):
        sure.classify("   ")


def test_extract_over_the_real_engine_keeps_only_spans_in_the_input(served) -> None:  # noqa: ANN001
    infos, client = served
    text = "Alice Smith flew from Paris to meet Acme Corp in Berlin."
    out = AdapterSpecialist(infos["ner"], lambda: client).extract(text)
    for s in out.spans:
        assert text[s.start:s.end] == s.text and s.kind in TYPES
    for d in out.dropped:
        assert d["text"] not in text or d["type"] not in TYPES


def test_extract_anchors_items_in_order_and_drops_the_rest() -> None:
    text = "Ann met Bob, then Ann left for Oslo."
    reply = json.dumps([{"text": "Ann", "type": "person"}, {"text": "Bob", "type": "person"},
                        {"text": "Ann", "type": "person"}, {"text": "Oslo", "type": "location"},
                        {"text": "Rome", "type": "location"}, {"text": "Bob", "type": "alien"}])
    # a fake at the engine seam
    fake = SimpleNamespace(generate=lambda req: SimpleNamespace(text=reply, completion_tokens=7))
    info = SimpleNamespace(name="ner", task="extract", labels=("person", "location"))
    out = AdapterSpecialist(info, lambda: fake).extract(text)  # type: ignore[arg-type]
    assert [(s.text, s.start) for s in out.spans] == [("Ann", 0), ("Bob", 8), ("Ann", 18), ("Oslo", 31)]
    assert out.dropped == [{"text": "Rome", "type": "location"}, {"text": "Bob", "type": "alien"}]
    assert out.tokens == 7


def test_cli_classify_extract_and_list(tmp_path: Path, model_store: ModelStore, generator) -> None:  # noqa: ANN001
    from tests.helpers import make_accounts as _accounts
    from tests.helpers import run_cli as _run
    from tests.helpers import store_copy as _store_copy

    store = _store_copy(model_store, tmp_path / "models")
    store.add_file(_adapter(generator.path, tmp_path / "intent.gguf", "classify", LABELS, 1), name="intent",
                   kind="adapter", source="test", base_sha256=generator.sha256)
    store.add_file(_adapter(generator.path, tmp_path / "ner.gguf", "extract", TYPES, 2), name="ner",
                   kind="adapter", source="test", base_sha256=generator.sha256)
    tokens = _accounts(tmp_path, store, {"ann": ("analyst", "UNCLASSIFIED")})
    listed = _run(["specialists", "--json"], tmp_path, store, token=tokens["ann"])
    assert listed.returncode == 0, listed.stderr
    assert {(s["name"], s["task"]) for s in json.loads(listed.stdout)} == {("intent", "classify"), ("ner", "extract")}
    (tmp_path / "texts.txt").write_text("my card has not arrived\n\nwhat is the euro rate\n")
    out = _run(["classify", "--adapter", "intent", "--file", str(tmp_path / "texts.txt"), "--json"], tmp_path, store,
               token=tokens["ann"])
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["text"] for r in rows] == ["my card has not arrived", "what is the euro rate"]
    assert all(r["best"] in LABELS and 0 < r["confidence"] <= 1 for r in rows)
    wrong = _run(["extract", "--adapter", "intent", "hello"], tmp_path, store, token=tokens["ann"])
    assert wrong.returncode == 2 and "intent is a classify specialist" in wrong.stderr
    unknown = _run(["classify", "--adapter", "nope", "hello"], tmp_path, store, token=tokens["ann"])
    assert unknown.returncode == 2 and "no specialist 'nope'" in unknown.stderr
    assert "intent (classify)" in unknown.stderr
    both = _run(["classify", "--adapter", "intent"], tmp_path, store, token=tokens["ann"])
    assert both.returncode == 2 and "give a TEXT or --file" in both.stderr
    # the agent's router sends a classification request to the installed classifier
    ask = _run(["ask", "classify this: my card has not arrived", "--json"], tmp_path, store, token=tokens["ann"])
    assert ask.returncode == 0, ask.stderr
    answer = json.loads(ask.stdout)
    assert answer["outcome"] == "specialist" and answer["specialist"]["specialist"] == "intent", answer
    # evaluation: the adapter beside the base with a few-shot prompt, on the same items
    (tmp_path / "eval.csv").write_text("text,label\n" + "".join(
        f"text number {i},{LABELS[i % len(LABELS)]}\n" for i in range(12)))
    ev = _run(["eval", "classify", "--adapter", "intent", "--data", str(tmp_path / "eval.csv"), "--shots", "4",
               "--json"], tmp_path, store, token=tokens["ann"])
    assert ev.returncode == 0, ev.stderr
    report = json.loads(ev.stdout)
    assert report["items"] == 8 and report["few_shot_examples"] == 4
    for side in ("adapter", "few_shot_no_adapter"):
        assert 0 <= report[side]["accuracy"] <= 1 and report[side]["p50_ms"] > 0
    (tmp_path / "eval.conll").write_text("Ann\tB-person\nwent\tO\nto\tO\nParis\tB-location\n\n"
                                         "Bob\tB-person\nsaw\tO\nAcme\tB-corporation\n\n")
    ex = _run(["eval", "extract", "--adapter", "ner", "--data", str(tmp_path / "eval.conll"), "--shots", "1",
               "--json"], tmp_path, store, token=tokens["ann"])
    assert ex.returncode == 0, ex.stderr
    assert json.loads(ex.stdout)["gold_entities"] == 2  # the other sentence is the few-shot example
    audit = _run(["audit", "check"], tmp_path, store, token=tokens["root"])
    assert audit.returncode == 0, audit.stdout + audit.stderr


def test_metrics() -> None:
    from appliance.evaluation.specialists import macro_f1, span_prf

    assert macro_f1(["a", "a", "b"], ["a", "b", "b"], ["a", "b"]) == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert macro_f1(["a"], [None], ["a"]) == 0.0
    prf = span_prf([{(0, 3, "person"), (5, 8, "location")}], [{(0, 3, "person"), (5, 8, "person")}])
    assert prf == {"precision": 0.5, "recall": 0.5, "f1": 0.5}
