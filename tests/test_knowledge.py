"""The knowledge base: ingest, replace, delete, partitioned retrieval, consistency."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.access.labels import Labels, Principal, parse_labels
from appliance.errors import KnowledgeError
from appliance.knowledge.retrieval import Retriever
from tests.helpers import fake_kb

UNCLASS = Labels("UNCLASSIFIED")
CRYPTO = parse_labels("SECRET:CRYPTO")
NUCLEAR = parse_labels("SECRET:NUCLEAR")
ANALYST = Principal("analyst", "UNCLASSIFIED")
CRYPTO_OFFICER = Principal("crypto", "SECRET", frozenset({"CRYPTO"}))
EVERYONE = Principal("root", "TOP SECRET", frozenset({"CRYPTO", "NUCLEAR"}))


def write(d: Path, name: str, text: str) -> Path:
    p = d / name
    p.write_text(text, encoding="utf-8")
    return p


@pytest.fixture()
def kb(tmp_path: Path):
    return fake_kb(tmp_path / "kb", chunk_chars=200, chunk_max_chars=400, retire_grace_s=0)


def search(kb, query: str, who: Principal, k: int = 10, mode: str = "hybrid"):
    return Retriever(kb, kb.settings).retrieve(query, who, k=k, mode=mode)


def test_ingest_catalogues_with_provenance(kb, tmp_path: Path) -> None:
    md = write(tmp_path, "handbook.md", "# Media\n\n## Removable media\n\nUSB drives are scanned at the kiosk. "
               "Every drive is logged.\n\n## Disposal\n\nDrives are shredded after use.\n")
    report = kb.ingest_files([md], UNCLASS, by="test")
    assert report.count("added") == 1 and report.count("failed") == 0
    doc = kb.catalog.get("handbook.md")
    assert doc.version == 1 and doc.labels == UNCLASS and doc.ingested_by == "test" and len(doc.sha256) == 64
    text = md.read_text()
    chunks = kb.catalog.chunks_of("handbook.md")
    assert all(text[c.start : c.end] == c.text for c in chunks)
    assert ("Media", "Disposal") in {c.heading for c in chunks}
    assert kb.check() == []


def test_reingest_unchanged_is_a_noop(kb, tmp_path: Path) -> None:
    f = write(tmp_path, "a.txt", "The kiosk scans every drive.")
    kb.ingest_files([f], UNCLASS)
    before = kb.catalog.get("a.txt")
    report = kb.ingest_files([f], UNCLASS)
    assert report.count("unchanged") == 1 and report.chunks == 0
    assert kb.catalog.get("a.txt") == before


def test_replace_swaps_every_chunk(kb, tmp_path: Path) -> None:
    f = write(tmp_path, "a.txt", "Old procedure: drives are wiped with zeros. " * 10)
    kb.ingest_files([f], UNCLASS)
    write(tmp_path, "a.txt", "New procedure: drives are degaussed and shredded. " * 10)
    report = kb.ingest_files([f], UNCLASS)
    assert report.count("replaced") == 1
    assert kb.catalog.get("a.txt").version == 2
    assert {c.version for c in kb.catalog.chunks_of("a.txt")} == {2}
    assert all("@2#" in i for i in kb.vectors.ids(UNCLASS.partition))
    assert search(kb, "wiped zeros", ANALYST, mode="bm25") == []
    assert search(kb, "degaussed shredded", ANALYST, mode="bm25")[0].chunk.version == 2
    assert kb.check() == []


def test_relabel_moves_the_document_between_partitions(kb, tmp_path: Path) -> None:
    f = write(tmp_path, "k.txt", "Key ceremony at dawn.")
    kb.ingest_files([f], UNCLASS)
    kb.ingest_files([f], CRYPTO)
    assert kb.catalog.get("k.txt").labels == CRYPTO
    assert search(kb, "key ceremony", ANALYST) == []
    assert search(kb, "key ceremony", CRYPTO_OFFICER)[0].document.doc_id == "k.txt"
    assert kb.vectors.ids(UNCLASS.partition) == set()
    assert kb.check() == []


def test_delete_removes_everywhere(kb, tmp_path: Path) -> None:
    kb.ingest_files([write(tmp_path, "a.txt", "Alpha bravo charlie."), write(tmp_path, "b.txt", "Delta echo.")],
                    UNCLASS)
    assert kb.delete("a.txt")
    assert kb.catalog.get("a.txt") is None and kb.catalog.chunks_of("a.txt") == []
    assert not any(i.startswith("a.txt@") for i in kb.vectors.ids(UNCLASS.partition))
    assert not any(i.startswith("a.txt@") for i in kb.catalog.fts_ids(UNCLASS.partition))
    assert not kb.delete("a.txt")
    assert kb.check() == []


def test_retrieval_searches_only_readable_partitions(kb, tmp_path: Path) -> None:
    kb.ingest_files([write(tmp_path, "pub.txt", "Reactor maintenance schedule, public summary.")], UNCLASS)
    kb.ingest_files([write(tmp_path, "keys.txt", "Reactor cipher keys rotate monthly.")], CRYPTO)
    kb.ingest_files([write(tmp_path, "core.txt", "Reactor core geometry and yields.")], NUCLEAR)
    for mode in ("dense", "bm25", "hybrid"):
        assert {h.document.doc_id for h in search(kb, "reactor", ANALYST, mode=mode)} == {"pub.txt"}
        assert {h.document.doc_id for h in search(kb, "reactor", CRYPTO_OFFICER, mode=mode)} == {"pub.txt",
                                                                                                  "keys.txt"}
        assert {h.document.doc_id for h in search(kb, "reactor", EVERYONE, mode=mode)} == {"pub.txt", "keys.txt",
                                                                                            "core.txt"}
    assert Retriever(kb, kb.settings).readable_partitions(ANALYST) == [UNCLASS.partition]


def test_results_carry_provenance_and_are_deduplicated_per_document(kb, tmp_path: Path) -> None:
    long = " ".join(f"Sentence {i} mentions the gateway." for i in range(60))
    kb.ingest_files([write(tmp_path, "long.txt", long), write(tmp_path, "short.txt", "The gateway is closed.")],
                    UNCLASS)
    hits = search(kb, "gateway", ANALYST, k=5)
    assert [h.document.doc_id for h in hits].count("long.txt") == 1
    h = hits[0]
    assert h.chunk.text and h.chunk.end > h.chunk.start and h.score > 0
    assert h.dense_rank is not None or h.bm25_rank is not None


def test_reranker_hook_reorders(kb, tmp_path: Path) -> None:
    kb.ingest_files([write(tmp_path, "a.txt", "gateway gateway gateway"), write(tmp_path, "b.txt", "gateway")],
                    UNCLASS)
    rev = Retriever(kb, kb.settings, reranker=lambda q, hits: list(reversed(hits)))
    plain = [h.document.doc_id for h in search(kb, "gateway", ANALYST)]
    assert [h.document.doc_id for h in rev.retrieve("gateway", ANALYST)] == list(reversed(plain))


def test_bad_file_reported_and_rest_of_batch_goes_on(kb, tmp_path: Path) -> None:
    good = write(tmp_path, "good.txt", "Useful text.")
    empty = write(tmp_path, "empty.txt", "")
    junk = tmp_path / "junk.pdf"
    junk.write_bytes(b"\x00\x01garbage" * 100)
    report = kb.ingest_files([empty, junk, good], UNCLASS)
    assert report.count("added") == 1 and report.count("failed") == 2
    reasons = " | ".join(o.reason for o in report.outcomes if o.status == "failed")
    assert "empty.txt" in reasons and "junk.pdf" in reasons
    assert [d.doc_id for d in kb.catalog.documents()] == ["good.txt"]
    assert all(i.startswith("good.txt@") for i in kb.vectors.ids(UNCLASS.partition))
    assert kb.check() == []


def test_embedder_failure_leaves_nothing_half_written(tmp_path: Path) -> None:
    kb = fake_kb(tmp_path / "kb")
    kb.ingest_files([write(tmp_path, "a.txt", "Version one.")], UNCLASS)

    def broken(texts):
        raise KnowledgeError("embedder exploded")

    kb.embed = broken
    report = kb.ingest_files([write(tmp_path, "a.txt", "Version two.")], UNCLASS)
    assert report.count("failed") == 1 and "exploded" in report.outcomes[0].reason
    assert kb.catalog.get("a.txt").version == 1
    assert kb.check() == []


def test_check_finds_and_repair_fixes_disagreements(kb, tmp_path: Path) -> None:
    kb.ingest_files([write(tmp_path, "a.txt", "Alpha. " * 50), write(tmp_path, "b.txt", "Bravo.")], UNCLASS)
    part = UNCLASS.partition
    kb.vectors.upsert(part, ["ghost@1#0"], [[0.1] * 64], None, [{"doc_id": "ghost", "version": 1}])
    victim = sorted(kb.vectors.ids(part) - {"ghost@1#0"})[0]
    kb.vectors.delete(part, [victim])
    kb.catalog.db.execute(f"DELETE FROM {kb.catalog.fts_table(part)} WHERE chunk_id = 'b.txt@1#0'")
    kb.catalog.db.conn.commit()
    problems = kb.check()
    assert any("no catalog chunk" in p for p in problems)
    assert any("no vector" in p for p in problems)
    assert any("full-text" in p for p in problems)
    kb.check(repair=True)
    assert kb.check() == []
    assert search(kb, "bravo", ANALYST, mode="bm25")[0].document.doc_id == "b.txt"


def test_query_limits(kb) -> None:
    with pytest.raises(KnowledgeError, match="empty query"):
        search(kb, "   ", ANALYST)
    with pytest.raises(KnowledgeError, match="over the 4000 limit"):
        search(kb, "x" * 5000, ANALYST)
    with pytest.raises(KnowledgeError, match="unknown retrieval mode"):
        search(kb, "x", ANALYST, mode="magic")


def test_fts_query_is_safe_for_any_text(kb, tmp_path: Path) -> None:
    kb.ingest_files([write(tmp_path, "a.txt", "NEAR AND OR NOT quotes\" here")], UNCLASS)
    for q in ['"unbalanced', "NEAR(", "a AND OR", "*", "col:umn", "日本語"]:
        search(kb, q, ANALYST, mode="bm25")


def test_hostile_inputs_leave_no_partial_state(kb, tmp_path: Path) -> None:
    import zipfile

    huge = tmp_path / "huge.txt"
    with open(huge, "wb") as fh:
        fh.truncate(2 * 2**30)  # sparse: 2 GB by size, nothing read
    bomb = tmp_path / "bomb.docx"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        zf.writestr("word/document.xml", b"\0" * (60 * 2**20))
    page = tmp_path / "page.html"
    page.write_text("<html><head><title>Notice</title><script>steal_secrets()</script></head>"
                    "<body><h1>Notice</h1><p>Badges must be worn.</p></body></html>")
    mixed = tmp_path / "mixed.txt"
    mixed.write_bytes("Plain UTF-8 line: naïve\n".encode() + "Old line: café\n".encode("cp1252"))
    report = kb.ingest_files([huge, bomb, page, mixed], UNCLASS)
    failed = {o.source: o.reason for o in report.outcomes if o.status == "failed"}
    assert set(failed) == {"huge.txt", "bomb.docx"}
    assert "over the limit" in failed["huge.txt"] and "zip bomb" in failed["bomb.docx"]
    assert {d.doc_id for d in kb.catalog.documents()} == {"page.html", "mixed.txt"}
    assert all("steal_secrets" not in c.text for c in kb.catalog.chunks_of("page.html"))
    mixed_chunks = " ".join(c.text for c in kb.catalog.chunks_of("mixed.txt"))
    assert "naïve" in mixed_chunks and "café" in mixed_chunks
    assert any("not UTF-8" in w for o in report.outcomes for w in o.warnings)
    assert kb.check() == []


def test_old_vectors_outlive_a_replace_for_the_grace_period(tmp_path: Path) -> None:
    kb = fake_kb(tmp_path / "kb", retire_grace_s=30)
    f = write(tmp_path, "a.txt", "First version of the rota.")
    kb.ingest_files([f], UNCLASS)
    write(tmp_path, "a.txt", "Second version of the rota.")
    kb.ingest_files([f], UNCLASS)
    ids = kb.vectors.ids(UNCLASS.partition)
    assert any("@1#" in i for i in ids) and any("@2#" in i for i in ids)  # a reader mid-query still finds v1
    assert kb.check() == []  # retiring vectors are not a disagreement
    assert [h.chunk.version for h in search(kb, "rota", ANALYST, mode="dense")] == [2]
    kb._retire([], grace_s=0)
    assert all("@2#" in i for i in kb.vectors.ids(UNCLASS.partition))
    reopened = fake_kb(tmp_path / "kb", retire_grace_s=30)  # a restart deletes them at once
    assert reopened.check() == []


def test_collections_are_recorded_and_follow_an_unchanged_reingest(kb, tmp_path: Path) -> None:
    f = tmp_path / "canteen.txt"
    f.write_text("The canteen serves lunch from noon.\n")
    kb.ingest_files([f], Labels("UNCLASSIFIED"), collection="facility-handbook")
    assert kb.catalog.get("canteen.txt").collection == "facility-handbook"
    report = kb.ingest_files([f], Labels("UNCLASSIFIED"), collection="handbook-2026")
    assert report.count("unchanged") == 1 and kb.catalog.get("canteen.txt").collection == "handbook-2026"
    f.write_text("The canteen serves lunch from one o'clock.\n")
    kb.ingest_files([f], Labels("UNCLASSIFIED"))  # a new version keeps its collection
    assert kb.catalog.get("canteen.txt").version == 2 and kb.catalog.get("canteen.txt").collection == "handbook-2026"
    with pytest.raises(KnowledgeError, match="bad collection name"):
        kb.ingest_files([f], Labels("UNCLASSIFIED"), collection="../etc")


def test_bm25_ranks_each_partition_on_its_own_scale(kb, tmp_path: Path) -> None:
    # a big partition where the query's words are rare, a small one where they are everywhere:
    # raw BM25 would rank every big-partition match above the small partition's exact answer
    for i in range(30):
        text = "Report {i} on the canteen menu" + (" and the key that was replaced." if i < 6 else ".")
        (tmp_path / f"u{i}.txt").write_text(text.format(i=i) + "\n")
    kb.ingest_files([tmp_path / f"u{i}.txt" for i in range(30)], Labels("UNCLASSIFIED"))
    for i, text in enumerate(["A key is compromised, reported and replaced.", "A compromised key is replaced "
                              "within one hour of the report.", "A compromised key is replaced by the custodian."]):
        (tmp_path / f"k{i}.txt").write_text(text + "\n")
        kb.ingest_files([tmp_path / f"k{i}.txt"], parse_labels("SECRET:CRYPTO"))
    who = Principal("c", "SECRET", frozenset({"CRYPTO"}))
    hits = Retriever(kb, kb.settings).retrieve("compromised key replaced within one hour", who, k=4, mode="bm25")
    assert "k1.txt" in [h.document.doc_id for h in hits[:2]]
    raw = sorted(((cid, sc) for part in kb.catalog.partitions() for cid, sc in
                  kb.catalog.bm25(part, "compromised key replaced within one hour", 50)), key=lambda h: -h[1])
    assert [cid.split("@")[0] for cid, _ in raw].index("k1.txt") >= 2  # what raw merging would have done
