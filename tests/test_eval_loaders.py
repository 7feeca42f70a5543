"""Evaluation inputs: one query per claim, clear errors for bad lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.errors import KnowledgeError
from appliance.evaluation.claims import load_claims
from appliance.evaluation.retrieval import load_queries, mrr_at_k, ndcg_at_k, recall_at_k


def test_rows_of_one_claim_merge(tmp_path: Path) -> None:
    f = tmp_path / "claims.jsonl"
    f.write_text('{"id": 1, "claim": "A", "cited_doc_ids": ["d1"], "evidence_doc_id": "d1", "label": "SUPPORT"}\n'
                 '{"id": 1, "claim": "A", "cited_doc_ids": ["d2"], "evidence_doc_id": null, "label": null}\n'
                 '\n{"id": 2, "claim": "B", "cited_doc_ids": []}\n')
    (q,) = load_queries(f)
    assert q.relevant == frozenset({"d1", "d2"})
    claims = load_claims(f)
    assert [(c.id, c.label, sorted(c.gold_docs)) for c in claims] == [("1", "SUPPORT", ["d1", "d2"]),
                                                                       ("2", "NOT_ENOUGH_INFO", [])]


@pytest.mark.parametrize(("text", "message"), [("{bad\n", "line 1 is not JSON"), ("[1]\n", "not a JSON object"),
                                               ('{"id": 1}\n', "has no claim")])
def test_bad_lines_named(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "q.jsonl"
    f.write_text(text)
    with pytest.raises(KnowledgeError, match=message):
        load_queries(f)
    with pytest.raises(KnowledgeError, match=message):
        load_claims(f)


def test_metrics() -> None:
    rel = frozenset({"a", "b"})
    assert ndcg_at_k(["a", "b", "c"], rel) == pytest.approx(1.0)
    assert ndcg_at_k(["c", "a"], rel) == pytest.approx((1 / 1.585) / (1 + 1 / 1.585), rel=1e-3)
    assert recall_at_k(["c", "a"], rel, 10) == 0.5 and mrr_at_k(["c", "a"], rel) == 0.5
