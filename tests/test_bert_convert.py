"""Our BERT converter: llama.cpp embeddings of the converted GGUF match transformers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from appliance.errors import ModelStoreError
from appliance.runtime.bert_convert import convert_bert
from appliance.runtime.client import EngineClient
from appliance.runtime.gguf_check import validate_gguf
from appliance.runtime.model_store import ModelStore

TOPICS = ["signed update bundles", "audit log export", "retrieval with citations", "LoRA adapters",
          "clearance levels", "the weather in Lisbon", "protein folding", "naïve café résumé", "北京 and 東京",
          "SQL injection", "a very long sentence " * 30]


def _texts(n: int = 120) -> list[str]:
    return [f"Note {i}: {TOPICS[i % len(TOPICS)]} — item {i * 7 % 13}, see §{i}." for i in range(n)]


def test_embeddings_match_transformers_mean_pooling(engine: EngineClient, model_store: ModelStore) -> None:
    import torch  # the station extra, which make test installs
    from transformers import AutoModel, AutoTokenizer

    src = model_store.root / "sources" / "all-minilm-l6-v2"
    tok = AutoTokenizer.from_pretrained(src, local_files_only=True)
    model = AutoModel.from_pretrained(src, local_files_only=True).eval()
    texts = _texts()
    refs = []
    with torch.no_grad():
        for i in range(0, len(texts), 32):
            enc = tok(texts[i : i + 32], padding=True, truncation=True, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            refs.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
    ref = np.concatenate(refs)
    got = np.array(engine.embed(texts, normalize=False))
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert len(texts) >= 100
    assert cos.min() >= 0.999, f"worst cosine {cos.min():.6f} at {texts[int(cos.argmin())]!r}"


def test_converted_gguf_carries_bert_metadata(embedder_record) -> None:
    info = validate_gguf(embedder_record.path)
    assert info.architecture == "bert"
    assert info.get("bert.pooling_type") == 1  # mean
    assert info.get("bert.attention.causal") is False
    assert info.get("tokenizer.ggml.model") == "bert"
    assert info.array_lengths["tokenizer.ggml.tokens"] == 30522
    assert not any(t.name.startswith("pooler") for t in info.tensors)


def test_converter_refuses_non_bert(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ModelStoreError, match="model_type is 'llama'"):
        convert_bert(tmp_path, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_converter_refuses_missing_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ModelStoreError, match="missing model.safetensors"):
        convert_bert(tmp_path, tmp_path / "out.gguf")
