"""Convert a Hugging Face BERT sentence-embedding model directory to a BERT GGUF.

Our own converter on the ``gguf`` package (no torch): reads ``config.json``,
``model.safetensors``, ``vocab.txt``/``tokenizer.json`` and the sentence-transformers
pooling config, and writes the tensors and metadata llama.cpp's BERT graph expects
(WordPiece vocabulary in "phantom space" form, mean pooling, non-causal attention).

With ``rank_delta`` it writes a cross-encoder instead: the delta (see
:mod:`appliance.rerank.train`: low-rank factors for the encoder's linear maps, a pooler and
a one-logit classifier) is merged into the weights, the pooler becomes llama.cpp's ``cls``
and the classifier its ``cls.output``, and the pooling type is rank.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import gguf
import numpy as np

from appliance.errors import BertConversionError  # defined with every other error class
from appliance.runtime.gguf_write import atomic_gguf_writer

__all__ = ["convert_bert", "BertConversionError", "DELTA_FORMAT"]

MAX_JSON_BYTES = 8 * 2**20
MAX_WEIGHTS_BYTES = 4 * 2**30
MAX_DELTA_BYTES = 256 * 2**20
DELTA_FORMAT = "appliance-reranker-delta-1"
HEAD = {"pooler.dense.weight": "cls.weight", "pooler.dense.bias": "cls.bias",
        "classifier.weight": "cls.output.weight", "classifier.bias": "cls.output.bias"}
SKIPPED = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")



def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise BertConversionError(f"{path.parent}: missing {path.name}")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise BertConversionError(f"{path}: over {MAX_JSON_BYTES} bytes")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BertConversionError(f"{path}: not valid JSON: {exc}") from exc


def _pooling_type(model_dir: Path) -> gguf.PoolingType:
    modules = model_dir / "modules.json"
    if not modules.is_file():
        return gguf.PoolingType.MEAN
    for module in _read_json(modules):
        if str(module.get("type", "")).endswith("Pooling"):
            cfg = _read_json(model_dir / module["path"] / "config.json")
            if cfg.get("pooling_mode_mean_tokens"):
                return gguf.PoolingType.MEAN
            if cfg.get("pooling_mode_cls_token"):
                return gguf.PoolingType.CLS
            raise BertConversionError(f"{model_dir}: unsupported pooling mode in {module['path']}/config.json")
    return gguf.PoolingType.MEAN


def _vocab(model_dir: Path, vocab_size: int) -> tuple[list[str], list[int]]:
    vocab_file = model_dir / "vocab.txt"
    if not vocab_file.is_file():
        raise BertConversionError(f"{model_dir}: missing vocab.txt")
    words = vocab_file.read_text(encoding="utf-8").splitlines()
    if len(words) > vocab_size:
        raise BertConversionError(f"{vocab_file}: {len(words)} tokens, more than vocab_size {vocab_size}")
    special: set[str] = set()
    tok_json = model_dir / "tokenizer.json"
    if tok_json.is_file():
        for added in _read_json(tok_json).get("added_tokens", []):
            if added.get("special"):
                special.add(added["content"])
    else:
        special = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    tokens: list[str] = []
    types: list[int] = []
    for word in words:
        if word in special:
            tokens.append(word)
            types.append(gguf.TokenType.CONTROL)
        elif word.startswith("##"):
            tokens.append(word[2:])
            types.append(gguf.TokenType.NORMAL)
        else:
            tokens.append("\u2581" + word)  # phantom space marks a word start
            types.append(gguf.TokenType.NORMAL)
    for i in range(len(words), vocab_size):
        tokens.append(f"[PAD{i}]")
        types.append(gguf.TokenType.UNUSED)
    return tokens, types


def _merge_delta(tensors: dict, delta_path: Path) -> dict:
    """Merge a reranker delta into ``tensors`` (HF names); returns the head tensors (GGUF names)."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    if not delta_path.is_file():
        raise BertConversionError(f"{delta_path}: no such reranker delta")
    if delta_path.stat().st_size > MAX_DELTA_BYTES:
        raise BertConversionError(f"{delta_path}: over {MAX_DELTA_BYTES} bytes")
    try:
        with safe_open(str(delta_path), framework="numpy") as fh:
            meta = fh.metadata() or {}
        delta = load_file(str(delta_path))
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise BertConversionError(f"{delta_path}: not a safetensors file: {exc}") from exc
    if meta.get("format") != DELTA_FORMAT:
        raise BertConversionError(f"{delta_path}: format {meta.get('format')!r}, expected {DELTA_FORMAT!r}")
    prefix = "bert." if any(k.startswith("bert.") for k in tensors) else ""
    head: dict[str, np.ndarray] = {}
    for hf, gg in HEAD.items():
        if hf not in delta:
            raise BertConversionError(f"{delta_path}: missing {hf}")
        head[gg] = np.ascontiguousarray(delta.pop(hf), dtype=np.float32)
    for key in sorted(k for k in delta if k.endswith(".lora_a")):
        layer = key[: -len(".lora_a")]
        a, b = delta.pop(key), delta.pop(layer + ".lora_b", None)
        weight = prefix + layer + ".weight"
        if b is None or weight not in tensors:
            raise BertConversionError(f"{delta_path}: {layer} has no matching lora_b or base weight")
        w = tensors[weight]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1] or (b.shape[0], a.shape[1]) != w.shape:
            raise BertConversionError(f"{delta_path}: {layer}: delta shapes {b.shape}x{a.shape} do not fit {w.shape}")
        tensors[weight] = (w.astype(np.float32) + b.astype(np.float32) @ a.astype(np.float32)).astype(np.float32)
    if delta:
        raise BertConversionError(f"{delta_path}: unexpected tensors {sorted(delta)[:3]}")
    hidden = tensors[prefix + "embeddings.word_embeddings.weight"].shape[1]
    if head["cls.weight"].shape != (hidden, hidden) or head["cls.output.weight"].shape[1:] != (hidden,):
        raise BertConversionError(f"{delta_path}: head shapes do not fit hidden size {hidden}")
    return head


def convert_bert(model_dir: Path, out_path: Path, *, outtype: str = "f32", name: str | None = None,
                 rank_delta: Path | None = None) -> None:
    """Write ``out_path`` (atomically) as a BERT GGUF converted from ``model_dir``.

    ``outtype``: ``f32`` (exact) or ``f16`` (2-D weights in half precision).
    ``rank_delta``: a reranker delta to merge; the GGUF is then a cross-encoder (rank pooling).
    """
    from safetensors.numpy import load_file

    model_dir = Path(model_dir)
    config = _read_json(model_dir / "config.json")
    if config.get("model_type") != "bert":
        raise BertConversionError(f"{model_dir}: model_type is {config.get('model_type')!r}, expected 'bert'")
    if outtype not in {"f32", "f16"}:
        raise BertConversionError(f"unknown outtype {outtype!r} (f32 or f16)")
    weights = model_dir / "model.safetensors"
    if not weights.is_file():
        raise BertConversionError(f"{model_dir}: missing model.safetensors")
    if weights.stat().st_size > MAX_WEIGHTS_BYTES:
        raise BertConversionError(f"{weights}: over {MAX_WEIGHTS_BYTES} bytes")

    n_layers = int(config["num_hidden_layers"])
    tensors = load_file(str(weights))
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, n_layers)
    head = _merge_delta(tensors, Path(rank_delta)) if rank_delta is not None else {}
    with atomic_gguf_writer(out_path, "bert") as writer:
        writer.add_name(name or model_dir.name)
        writer.add_context_length(int(config["max_position_embeddings"]))
        writer.add_embedding_length(int(config["hidden_size"]))
        writer.add_feed_forward_length(int(config["intermediate_size"]))
        writer.add_block_count(n_layers)
        writer.add_head_count(int(config["num_attention_heads"]))
        writer.add_layer_norm_eps(float(config.get("layer_norm_eps", 1e-12)))
        writer.add_causal_attention(False)
        writer.add_pooling_type(gguf.PoolingType.RANK if head else _pooling_type(model_dir))
        writer.add_file_type(gguf.LlamaFileType.ALL_F32 if outtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)

        vocab_size = int(config["vocab_size"])
        tokens, types = _vocab(model_dir, vocab_size)
        writer.add_token_type_count(int(config.get("type_vocab_size", 1)))
        writer.add_tokenizer_model("bert")
        writer.add_tokenizer_pre("bert-bge")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        gguf_log = logging.getLogger("gguf")
        level = gguf_log.level
        gguf_log.setLevel(logging.ERROR)  # BERT's [CLS]/[SEP] need no handler: llama.cpp's WPM defaults cover them
        try:
            gguf.SpecialVocab(model_dir, n_vocab=len(tokens)).add_to_gguf(writer, quiet=True)
        finally:
            gguf_log.setLevel(level)

        for hf_name in sorted(tensors):
            clean = hf_name[5:] if hf_name.startswith("bert.") else hf_name
            if clean in SKIPPED or clean.startswith("cls."):
                continue
            new_name = name_map.get_name(clean, try_suffixes=(".weight", ".bias"))
            if new_name is None:
                raise BertConversionError(f"{weights}: cannot map tensor {hf_name!r}")
            data = np.ascontiguousarray(tensors[hf_name], dtype=np.float32)
            if outtype == "f16" and data.ndim == 2 and not new_name.startswith(("token_types", "position_embd")):
                data = data.astype(np.float16)
            writer.add_tensor(new_name, data)
        for new_name, data in head.items():
            if outtype == "f16" and data.ndim == 2 and new_name == "cls.weight":
                data = data.astype(np.float16)
            writer.add_tensor(new_name, data)
