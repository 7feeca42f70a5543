"""The knowledge base over the real engine, real Chroma and real FTS5, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.access.labels import Labels, LevelScale, Principal
from appliance.config import KnowledgeSettings
from appliance.knowledge.base import KnowledgeBase
from appliance.knowledge.retrieval import Retriever
from appliance.runtime.client import EngineClient
from appliance.runtime.model_store import ModelStore
from tests.helpers import SAMPLE_DOCS, make_accounts, run_cli

REPO = Path(__file__).resolve().parent.parent
SCIFACT = REPO.parent / "shared" / "data" / "scifact"

DOCS = SAMPLE_DOCS


def test_semantic_retrieval_with_real_embeddings(engine: EngineClient, tmp_path: Path) -> None:
    kb = KnowledgeBase(tmp_path / "kb", lambda t: engine.embed(list(t)), scale=LevelScale(),
                       settings=KnowledgeSettings())
    for name, text in DOCS.items():
        (tmp_path / name).write_text(text)
    kb.ingest_files([tmp_path / n for n in ("kiosk.md", "canteen.txt")], Labels("UNCLASSIFIED"))
    kb.ingest_files([tmp_path / "ciphers.txt"], Labels("SECRET", frozenset({"CRYPTO"})))
    r = Retriever(kb, kb.settings)
    analyst = Principal("a", "UNCLASSIFIED")
    # no shared words with the kiosk document: only the dense side can find it
    dense = r.retrieve("where are thumb sticks checked for malware", analyst, k=2, mode="dense")
    assert dense[0].document.doc_id == "kiosk.md"
    hybrid = r.retrieve("when is food served", analyst, k=2)
    assert hybrid[0].document.doc_id == "canteen.txt"
    assert all(h.document.doc_id != "ciphers.txt" for h in r.retrieve("key rotation schedule", analyst, k=5))
    crypto = Principal("c", "SECRET", frozenset({"CRYPTO"}))
    assert r.retrieve("key rotation schedule", crypto, k=1)[0].document.doc_id == "ciphers.txt"
    assert kb.check() == []


def test_cli_ingest_search_docs_check(tmp_path: Path, model_store: ModelStore) -> None:
    for name, text in DOCS.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    tok = make_accounts(tmp_path, model_store, {"officer": ("officer", "SECRET:CRYPTO"), "ann": ("analyst", "SECRET"),
                                            "carol": ("analyst", "SECRET:CRYPTO")})
    proc = run_cli(["ingest", str(tmp_path / "kiosk.md"), "--labels", "UNCLASSIFIED"], tmp_path, model_store,
                token=tok["ann"])
    assert proc.returncode == 2 and "needs the role officer or admin" in proc.stderr
    proc = run_cli(["ingest", str(tmp_path / "kiosk.md"), "--labels", "SECRET:NUCLEAR"], tmp_path, model_store,
                token=tok["officer"])
    assert proc.returncode == 2 and "not cleared for SECRET:NUCLEAR" in proc.stderr
    proc = run_cli(["ingest", str(tmp_path / "kiosk.md"), str(tmp_path / "canteen.txt"), str(tmp_path / "broken.pdf"),
                 "--labels", "UNCLASSIFIED"], tmp_path, model_store, token=tok["officer"])
    assert proc.returncode == 1  # one file failed, the others went in
    assert "broken.pdf" in proc.stdout and "2 added" in proc.stdout
    proc = run_cli(["ingest", str(tmp_path / "ciphers.txt"), "--labels", "secret:crypto", "--json"], tmp_path,
                model_store, token=tok["officer"])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["added"] == 1
    proc = run_cli(["ingest", str(tmp_path / "ciphers.txt"), "--labels", "SECRET:bad label"], tmp_path, model_store,
                token=tok["officer"])
    assert proc.returncode == 2 and "bad compartment" in proc.stderr
    listed = json.loads(run_cli(["docs", "list", "--json"], tmp_path, model_store, token=tok["officer"]).stdout)
    assert {d["doc_id"]: d["labels"] for d in listed} == {"canteen.txt": "UNCLASSIFIED", "kiosk.md": "UNCLASSIFIED",
                                                          "ciphers.txt": "SECRET:CRYPTO"}
    listed = json.loads(run_cli(["docs", "list", "--json"], tmp_path, model_store, token=tok["ann"]).stdout)
    assert "ciphers.txt" not in {d["doc_id"] for d in listed}  # no compartment: not even its title
    hidden = run_cli(["docs", "show", "ciphers.txt"], tmp_path, model_store, token=tok["ann"])
    missing = run_cli(["docs", "show", "nothing.txt"], tmp_path, model_store, token=tok["ann"])
    assert hidden.returncode == missing.returncode == 2
    assert hidden.stderr.replace("ciphers.txt", "X") == missing.stderr.replace("nothing.txt", "X")
    hits = json.loads(run_cli(["search", "cipher keys", "--json"], tmp_path, model_store, token=tok["ann"]).stdout)
    assert "ciphers.txt" not in {h["doc_id"] for h in hits}
    hits = json.loads(run_cli(["search", "cipher keys", "--json"], tmp_path, model_store, token=tok["carol"]).stdout)
    assert hits[0]["doc_id"] == "ciphers.txt" and hits[0]["labels"] == "SECRET:CRYPTO"
    narrowed = run_cli(["search", "cipher keys", "--labels", "UNCLASSIFIED", "--json"], tmp_path, model_store,
                    token=tok["officer"])
    assert "ciphers.txt" not in {h["doc_id"] for h in json.loads(narrowed.stdout)}
    proc = run_cli(["search", "x", "--labels", "TOP_SECRET"], tmp_path, model_store, token=tok["officer"])
    assert proc.returncode == 2 and "not within your own clearance" in proc.stderr
    proc = run_cli(["search", "x"], tmp_path, model_store)
    assert proc.returncode == 2 and "not logged in" in proc.stderr
    shown = json.loads(run_cli(["docs", "show", "kiosk.md", "--json"], tmp_path, model_store, token=tok["ann"]).stdout)
    assert shown["chunks"][0]["heading"] == ["Media kiosk"]
    assert run_cli(["index", "check"], tmp_path, model_store, token=tok["root"]).returncode == 0
    assert run_cli(["index", "check"], tmp_path, model_store, token=tok["ann"]).returncode == 2
    assert run_cli(["docs", "delete", "kiosk.md"], tmp_path, model_store, token=tok["officer"]).returncode == 0
    proc = run_cli(["docs", "delete", "kiosk.md"], tmp_path, model_store, token=tok["officer"])
    assert proc.returncode == 2 and "no document 'kiosk.md'" in proc.stderr


def test_eval_retrieval_on_a_scifact_slice(tmp_path: Path, model_store: ModelStore) -> None:
    queries = [json.loads(line) for line in (SCIFACT / "claims_train.jsonl").read_text().splitlines()]
    wanted = {str(d) for q in queries[:20] for d in q.get("cited_doc_ids", [])}
    lines = (SCIFACT / "corpus.jsonl").read_text().splitlines()
    keep = [ln for ln in lines if str(json.loads(ln)["doc_id"]) in wanted] + lines[:60]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(dict.fromkeys(keep)) + "\n")
    qfile = tmp_path / "claims.jsonl"
    qfile.write_text("\n".join(json.dumps(q) for q in queries[:20]) + "\n")
    proc = run_cli(["eval", "retrieval", "--corpus", str(corpus), "--queries", str(qfile), "--json"], tmp_path,
                model_store)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert set(result["modes"]) == {"dense", "bm25", "hybrid", "hybrid+rerank"}  # the reranker is provisioned
    for m in result["modes"].values():
        assert 0.0 <= m["ndcg@10"] <= 1.0 and m["recall@10"] <= m["recall@100"] <= 1.0
    assert result["modes"]["hybrid"]["ndcg@10"] > 0.5  # a small corpus: the cited abstract is usually on top
    assert result["ingest"]["documents"] == len(dict.fromkeys(keep))


@pytest.mark.slow  # 63 s (the contrast check on SciFact abstracts); the real agent stays in the default run
def test_eval_claims_compares_agent_and_single_shot(tmp_path: Path, model_store: ModelStore) -> None:
    claims = [json.loads(line) for line in (SCIFACT / "claims_train.jsonl").read_text().splitlines()][:4]
    wanted = {str(d) for c in claims for d in c.get("cited_doc_ids", [])}
    lines = (SCIFACT / "corpus.jsonl").read_text().splitlines()
    keep = [ln for ln in lines if str(json.loads(ln)["doc_id"]) in wanted] + lines[:30]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(dict.fromkeys(keep)) + "\n")
    cfile = tmp_path / "claims.jsonl"
    cfile.write_text("\n".join(json.dumps(c) for c in claims) + "\n")
    proc = run_cli(["eval", "claims", "--corpus", str(corpus), "--claims", str(cfile), "--json"], tmp_path, model_store)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["claims"] == 4 and set(result["systems"]) == {"agent", "single_shot"}
    for metrics in result["systems"].values():
        for name in ("label_accuracy", "evidence_doc_recall", "citation_precision", "groundedness",
                     "abstention_rate"):
            assert 0.0 <= metrics[name] <= 1.0
    agent = result["systems"]["agent"]
    assert agent["groundedness"] == 1.0 or agent["abstention_rate"] == 1.0  # block policy: only verified sentences
