"""The cross-encoder reranker: converter (delta merged, rank pooling), llama.cpp scores equal
the trained torch model's, refusals of wrong models, and the retrieval stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from appliance.access.labels import Labels
from appliance.errors import ModelStoreError
from appliance.knowledge.catalog import ChunkRow, DocumentRow
from appliance.knowledge.rerank import CrossEncoderReranker
from appliance.knowledge.retrieval import Hit
from appliance.rerank.train import TrainConfig
from appliance.runtime.bert_convert import BertConversionError, convert_bert
from appliance.runtime.client import EngineClient
from appliance.runtime.gguf_check import validate_gguf
from appliance.runtime.model_store import ModelStore
from appliance.runtime.protocol import EngineSpec

PAIRS = [
    ("How often are the traffic keys rotated?", "Traffic keys are rotated monthly, on the first Tuesday."),
    ("How often are the traffic keys rotated?", "The canteen serves lunch from 12:00 to 14:00."),
    ("Where is the kiosk?", "The Removable Media Kiosk is in room A-017 in Building A."),
    ("Where is the kiosk?", "Visitors wear yellow badges and are escorted at all times. " * 8),
    ("naïve café résumé — 北京", "A résumé from a café in 北京."),
]


def _minilm(model_store: ModelStore) -> Path:
    return model_store.root / "sources" / "all-minilm-l6-v2"


def _torch_model(src: Path, seed: int):  # noqa: ANN202
    """The training-time cross-encoder with random (not zero) low-rank factors and head."""
    import torch

    from appliance.rerank.train import build_model

    model, wrapped = build_model(src, TrainConfig(seed=seed))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lora in wrapped.values():
            lora.lora_b.copy_(torch.randn(lora.lora_b.shape, generator=gen) * 0.02)
        model.classifier.weight.copy_(torch.randn(model.classifier.weight.shape, generator=gen) * 0.5)
    return model.eval(), wrapped


@pytest.fixture(scope="module")
def random_reranker(model_store: ModelStore, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    from safetensors.numpy import save_file

    from appliance.rerank.train import delta_tensors
    from appliance.runtime.bert_convert import DELTA_FORMAT

    src = _minilm(model_store)
    model, wrapped = _torch_model(src, seed=5)
    d = tmp_path_factory.mktemp("reranker")
    save_file(delta_tensors(model, wrapped), str(d / "delta.safetensors"), metadata={"format": DELTA_FORMAT})
    convert_bert(src, d / "reranker.gguf", rank_delta=d / "delta.safetensors")
    return model, d


def test_llama_cpp_scores_equal_the_torch_cross_encoder(random_reranker, model_store: ModelStore,  # noqa: ANN001
                                                         tmp_path: Path) -> None:
    """Train-time model -> delta -> our converter -> llama.cpp gives the same logits.

    Tolerance 0.02 + 1% of the logit: the GGUF is f32, so CPU kernels differ by about 1e-4
    here; a wrong tensor mapping, a missing tanh or a token of the wrong type moves logits
    by tenths to units (zeroing the low-rank factors moves these logits by up to 0.5)."""
    import torch
    from transformers import AutoTokenizer

    model, d = random_reranker
    tok = AutoTokenizer.from_pretrained(str(_minilm(model_store)), local_files_only=True)
    with torch.no_grad():
        enc = tok([q for q, _ in PAIRS], [p for _, p in PAIRS], truncation="only_second", max_length=256,
                  padding=True, return_tensors="pt")
        ref = model(enc["input_ids"], enc["attention_mask"]).numpy()
    spec = EngineSpec(reranker_path=str(d / "reranker.gguf"), threads=2)
    with EngineClient(spec, log_path=tmp_path / "host.log", request_timeout_s=120) as client:
        by_query: dict[str, list[int]] = {}
        for i, (q, _) in enumerate(PAIRS):
            by_query.setdefault(q, []).append(i)
        got = np.zeros(len(PAIRS))
        for q, idx in by_query.items():
            got[idx] = client.rerank(q, [PAIRS[i][1] for i in idx])
    assert np.ptp(ref) > 0.3, "the random head should spread the logits"
    assert np.all(np.abs(got - ref) <= 0.02 + 0.01 * np.abs(ref)), f"llama.cpp {got} vs torch {ref}"


def test_converted_reranker_is_a_rank_pooled_bert(random_reranker) -> None:  # noqa: ANN001
    _, d = random_reranker
    info = validate_gguf(d / "reranker.gguf", expect="model")
    assert info.architecture == "bert"
    assert info.get("bert.pooling_type") == 4  # rank
    names = {t.name for t in info.tensors}
    assert {"cls.weight", "cls.bias", "cls.output.weight", "cls.output.bias"} <= names


def test_store_refuses_wrong_pooling_and_architecture(random_reranker, model_store: ModelStore,  # noqa: ANN001
                                                      tmp_path: Path) -> None:
    _, d = random_reranker
    store = ModelStore(tmp_path / "models")
    embedder = model_store.get("all-minilm-l6-v2").path
    generator = model_store.get("smollm2-135m-instruct").path
    with pytest.raises(ModelStoreError, match="pooling type mean, a reranker needs rank pooling"):
        store.add_file(embedder, name="r", kind="reranker", source="file:x")
    with pytest.raises(ModelStoreError, match="pooling type rank, an embedder needs mean or cls pooling"):
        store.add_file(d / "reranker.gguf", name="e", kind="embedder", source="file:x")
    with pytest.raises(ModelStoreError, match="architecture 'llama' is not an encoder"):
        store.add_file(generator, name="g", kind="reranker", source="file:x")
    assert store.list() == []
    rec = store.add_file(d / "reranker.gguf", name="r", kind="reranker", source="file:x")
    assert rec.kind == "reranker" and [r.name for r in store.list()] == ["r"]


def test_converter_refuses_bad_deltas(model_store: ModelStore, tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    from appliance.runtime.bert_convert import DELTA_FORMAT

    src = _minilm(model_store)
    head = {"pooler.dense.weight": np.zeros((384, 384), np.float32), "pooler.dense.bias": np.zeros(384, np.float32),
            "classifier.weight": np.zeros((1, 384), np.float32), "classifier.bias": np.zeros(1, np.float32)}
    cases = {
        "format": ({**head}, {"format": "something-else"}, "format 'something-else'"),
        "head": ({"classifier.bias": head["classifier.bias"]}, {"format": DELTA_FORMAT}, "missing pooler.dense.weight"),
        "shape": ({**head, "encoder.layer.0.attention.self.query.lora_a": np.zeros((4, 100), np.float32),
                   "encoder.layer.0.attention.self.query.lora_b": np.zeros((384, 4), np.float32)},
                  {"format": DELTA_FORMAT}, "do not fit"),
        "stray": ({**head, "encoder.layer.9.x.lora_a": np.zeros((4, 384), np.float32),
                   "encoder.layer.9.x.lora_b": np.zeros((384, 4), np.float32)},
                  {"format": DELTA_FORMAT}, "no matching lora_b or base weight"),
    }
    for name, (tensors, meta, message) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(path), metadata=meta)
        out = tmp_path / f"{name}.gguf"
        with pytest.raises(BertConversionError, match=message):
            convert_bert(src, out, rank_delta=path)
        assert not out.exists(), name
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(BertConversionError, match="not a safetensors file"):
        convert_bert(src, tmp_path / "junk.gguf", rank_delta=tmp_path / "junk.safetensors")


# -- the retrieval stage (a fake scorer at the seam) ----------------------------------------

def _hit(i: int, text: str) -> Hit:
    chunk = ChunkRow(chunk_id=f"c{i}", doc_id=f"d{i}", version=1, partition="p", ordinal=0, text=text, start=0,
                     end=len(text), page=None, heading=())
    doc = DocumentRow(doc_id=f"d{i}", version=1, title=f"doc {i}", source_name="s", format="text", sha256="0" * 64,
                      labels=Labels("UNCLASSIFIED"), partition="p", ingested_at="", ingested_by="t", n_chunks=1,
                      chars=len(text))
    return Hit(chunk=chunk, document=doc, score=1.0 / (i + 1), dense_rank=i + 1, bm25_rank=None)


def test_reranker_reorders_the_head_and_keeps_the_tail() -> None:
    hits = [_hit(i, f"passage {i}" + (" answer" if i == 3 else "")) for i in range(8)]
    seen: list[list[str]] = []

    def score(query: str, texts: list[str]) -> list[float]:
        seen.append(list(texts))
        return [5.0 if "answer" in t else -float(len(seen[-1]) - j) for j, t in enumerate(texts)]

    out = CrossEncoderReranker(score, candidates=5)("q", hits)
    assert len(seen[0]) == 5  # only the head is scored
    assert out[0].chunk.chunk_id == "c3" and out[0].rerank == 5.0
    assert [h.chunk.chunk_id for h in out[5:]] == ["c5", "c6", "c7"]  # the tail in fused order, unscored
    assert all(h.rerank is None for h in out[5:])
    assert sorted(h.chunk.chunk_id for h in out) == sorted(h.chunk.chunk_id for h in hits)


def test_rank_weight_lets_the_fused_order_break_near_ties() -> None:
    hits = [_hit(i, f"p{i}") for i in range(3)]
    flat = CrossEncoderReranker(lambda q, t: [0.0, 0.1, 3.0], candidates=3, rank_weight=0.0)("q", hits)
    assert [h.chunk.chunk_id for h in flat] == ["c2", "c1", "c0"]
    weighted = CrossEncoderReranker(lambda q, t: [0.0, 0.1, 3.0], candidates=3, rank_weight=1.0)("q", hits)
    assert [h.chunk.chunk_id for h in weighted] == ["c2", "c0", "c1"]  # 0.1 - log 2 < 0


def test_reranker_refuses_a_short_answer() -> None:
    with pytest.raises(ValueError, match="2 scores for 3 passages"):
        CrossEncoderReranker(lambda q, t: [0.0, 1.0], candidates=3)("q", [_hit(i, "x") for i in range(3)])


def test_verifier_is_a_second_cross_encoder_in_the_host(random_reranker, tmp_path: Path) -> None:  # noqa: ANN001
    """The entailment judge is loaded as its own model: `entail` scores with it, and a host
    without one refuses the call (naming what is missing) and keeps serving."""
    from appliance.errors import EngineRequestError

    _, d = random_reranker
    gguf = str(d / "reranker.gguf")
    texts = [p for _, p in PAIRS[:3]]
    with EngineClient(EngineSpec(reranker_path=gguf, verifier_path=gguf, threads=2), log_path=tmp_path / "a.log",
                      request_timeout_s=120) as client:
        assert client.entail(PAIRS[0][0], texts) == pytest.approx(client.rerank(PAIRS[0][0], texts), abs=1e-5)
        assert client.info()["verifier"] == gguf
    with EngineClient(EngineSpec(reranker_path=gguf, threads=2), log_path=tmp_path / "b.log",
                      request_timeout_s=120) as client:
        with pytest.raises(EngineRequestError, match="no verifier model loaded"):
            client.entail(PAIRS[0][0], texts)
        assert len(client.rerank(PAIRS[0][0], texts)) == 3


def test_store_refuses_a_verifier_without_rank_pooling(model_store: ModelStore, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    with pytest.raises(ModelStoreError, match="pooling type mean, a verifier needs rank pooling"):
        store.add_file(model_store.get("all-minilm-l6-v2").path, name="v", kind="verifier", source="file:x")
    assert store.list() == []


def test_reranker_logit_is_evidence_only_when_switched_on() -> None:
    from dataclasses import replace

    from appliance.agent.answer import evidence_reason
    from appliance.config import AgentSettings

    off = AgentSettings()
    on = replace(off, evidence_by_rerank=True, evidence_rerank=10.0)
    assert evidence_reason(3, 5, 0.2, off, rerank=15.0) is None  # the default: today's rule decides
    assert evidence_reason(3, 5, 0.2, on, rerank=15.0) == "the reranker scores it 15.0"
    assert evidence_reason(3, 5, 0.2, on, rerank=9.9) is None
    assert evidence_reason(1, 1, 0.6, on, rerank=-3.0) == "first in keyword and semantic search"  # either one
