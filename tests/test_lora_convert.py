"""peft LoRA -> llama.cpp GGUF adapter conversion (appliance.specialists.convert).

Parity: transformers + peft and llama.cpp + the converted adapter must predict the same
next token (top-1) at every position of several sequences, on a tiny random llama this
file builds (f32 on both sides) and on the real SmolLM2 base. A conversion without the
rotary q/k row permutation must fail that check, so the test catches a wrong permutation.
llama.cpp runs in a child process (tests/ggufs.py), as it can crash on a bad file.
"""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from appliance.errors import ConvertError
from appliance.runtime.gguf_check import validate_gguf
from appliance.runtime.model_store import ModelRecord, ModelStore
from appliance.specialists.convert import convert_peft_adapter, load_base_from_gguf
from tests.ggufs import llama_cpp_top1, permute_like_llama_cpp, tiny_model, write_llama_gguf

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
META = {"task": "classify", "labels": ["billing", "card_lost", "other"],
        "metrics": {"accuracy": 0.91, "n_eval": 200}, "created_at": "2025-01-02T03:04:05+00:00"}
TEXTS = [
    ("The appliance answers questions over the facility's own documents and cites the passages it used. Every "
     "update arrives on removable media as a signed bundle, and the analyst never sees a network connection."),
    ("Photosynthesis converts light energy into chemical energy. In plants, it takes place in the chloroplasts, "
     "where chlorophyll absorbs mostly blue and red light and water is split to release oxygen."),
    ("I lost my card yesterday and I think someone used it to withdraw cash at an ATM. Can you block it and tell "
     "me how to get a refund for the transactions I did not make?"),
    ("def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\n"
     "print([fibonacci(i) for i in range(10)])"),
    ("Dear committee, thank you for the opportunity to present our findings. In the first section we describe the "
     "data we collected over two years; in the second we compare three methods of analysis."),
    ("The river rose slowly through the night. By morning the low fields were under water, the bridge to the "
     "village was closed, and the farmers had moved their cattle to the hill above the church."),
]


def _attach_random_lora(model, *, std: float, seed: int, r: int = 8, alpha: int = 16):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=PROJECTIONS, init_lora_weights=False)
    peft_model = get_peft_model(model, config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * std)
    return peft_model


def _hf_top1(peft_model, sequences: list[list[int]], *, adapter: bool) -> tuple[np.ndarray, np.ndarray]:
    """Argmax next token at every position, and the top-1 minus top-2 logit margin."""
    tops, margins = [], []
    with torch.no_grad():
        for seq in sequences:
            if adapter:
                logits = peft_model(input_ids=torch.tensor([seq])).logits[0]
            else:
                with peft_model.disable_adapter():
                    logits = peft_model(input_ids=torch.tensor([seq])).logits[0]
            top2 = logits.topk(2, dim=-1)
            tops.append(top2.indices[:, 0].numpy())
            margins.append((top2.values[:, 0] - top2.values[:, 1]).numpy())
    return np.concatenate(tops), np.concatenate(margins)


def _flat(per_sequence: list[list[int]]) -> np.ndarray:
    return np.concatenate([np.asarray(s) for s in per_sequence])


def _agree(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float((a == b).mean())


_TENSORS_OF: dict[Path, dict[str, np.ndarray]] = {}
_SHAPES = {"q_proj": (576, 576), "k_proj": (192, 576), "v_proj": (192, 576)}  # (out, in) of the real base


def _peft_dir(path: Path, *, config: dict | None = None, r: int = 4,
              modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj"),
              shapes: dict | None = None, extra: dict | None = None) -> Path:
    """A saved peft adapter for layer 0 of the real base, written without peft."""
    path.mkdir(parents=True)
    cfg = {"peft_type": "LORA", "r": r, "lora_alpha": 16, "target_modules": list(modules), "bias": "none",
           "use_rslora": False, "use_dora": False, "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {}}
    cfg.update(config or {})
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    rng = np.random.default_rng(7)
    tensors = {}
    for module in modules:
        n_out, n_in = (shapes or _SHAPES)[module]
        prefix = f"base_model.model.model.layers.0.self_attn.{module}"
        tensors[f"{prefix}.lora_A.weight"] = rng.normal(0, 0.1, (r, n_in)).astype(np.float32)
        tensors[f"{prefix}.lora_B.weight"] = rng.normal(0, 0.1, (n_out, r)).astype(np.float32)
    tensors.update(extra or {})
    save_file(tensors, str(path / "adapter_model.safetensors"))
    _TENSORS_OF[path] = tensors
    return path


# -- parity on a tiny random llama -------------------------------------------------------


def test_tiny_llama_parity_and_broken_permutation(tmp_path: Path, generator: ModelRecord) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         rms_norm_eps=1e-5, tie_word_embeddings=False, initializer_range=0.1, rope_theta=10000.0)
    model = LlamaForCausalLM(config).eval()
    # the real base's vocabulary (49152) and tokenizer keys, so llama.cpp loads the tiny model
    base = write_llama_gguf(model, tmp_path / "tiny.gguf", tokenizer_gguf=generator.path)
    peft_model = _attach_random_lora(model, std=0.1, seed=1)
    peft_model.save_pretrained(tmp_path / "peft")

    good = convert_peft_adapter(tmp_path / "peft", tmp_path / "good.gguf", base_gguf=base, **META)
    broken = convert_peft_adapter(tmp_path / "peft", tmp_path / "broken.gguf", base_gguf=base, **META,
                                  _permute_qk=False)
    in_memory = convert_peft_adapter(peft_model, tmp_path / "mem.gguf", base_gguf=base, **META)

    # the saved directory and the in-memory PeftModel give the same tensors
    saved = {t.name: np.array(t.data) for t in gguf.GGUFReader(str(good)).tensors}
    mem = {t.name: np.array(t.data) for t in gguf.GGUFReader(str(in_memory)).tensors}
    assert saved.keys() == mem.keys() and len(saved) == 2 * 7 * 2
    assert all(np.array_equal(saved[k], mem[k]) for k in saved)

    rng = np.random.default_rng(0)
    sequences = [rng.integers(0, config.vocab_size, size=64).tolist() for _ in range(4)]
    hf_lora, _ = _hf_top1(peft_model, sequences, adapter=True)
    hf_base, _ = _hf_top1(peft_model, sequences, adapter=False)
    lc = llama_cpp_top1(base, sequences, {"base": None, "good": good, "broken": broken})

    figures = {
        "positions": len(hf_lora),
        "base_vs_base": _agree(hf_base, _flat(lc["base"])),
        "adapter": _agree(hf_lora, _flat(lc["good"])),
        "broken_permutation": _agree(hf_lora, _flat(lc["broken"])),
        "adapter_changes_top1": 1 - _agree(hf_lora, hf_base),
    }
    print("tiny llama parity:", json.dumps(figures))
    assert figures["positions"] >= 200
    assert figures["base_vs_base"] >= 0.99
    assert figures["adapter_changes_top1"] >= 0.5  # the adapter matters
    assert figures["adapter"] >= 0.99
    assert figures["broken_permutation"] <= 0.6  # measured 0.09


def test_adapter_metadata_reaches_the_model_store(tmp_path: Path, generator: ModelRecord) -> None:
    src = _peft_dir(tmp_path / "peft")
    out = convert_peft_adapter(src, tmp_path / "spec.gguf", base_gguf=generator.path,
                               base_sha256=generator.sha256, **META)
    info = validate_gguf(out, expect="adapter")
    assert info.architecture == "llama"
    assert info.get("adapter.lora.alpha") == pytest.approx(16.0)
    assert info.get("adapter.base_sha256") == generator.sha256
    assert info.get("appliance.task") == "classify"
    assert json.loads(str(info.get("appliance.labels"))) == META["labels"]
    assert json.loads(str(info.get("appliance.metrics"))) == META["metrics"]
    assert info.get("appliance.created_at") == META["created_at"]
    record = ModelStore(tmp_path / "store").add_file(out, name="spec", kind="adapter", source="test")
    assert record.base_sha256 == generator.sha256

    # lora_a as trained, lora_b of q (9 heads) and k (3 kv heads) permuted like the base rows
    reader = gguf.GGUFReader(str(out))
    got = {t.name: np.array(t.data) for t in reader.tensors}
    trained = _TENSORS_OF[src]
    prefix = "base_model.model.model.layers.0.self_attn"
    assert np.array_equal(got["blk.0.attn_q.weight.lora_a"], trained[f"{prefix}.q_proj.lora_A.weight"])
    assert np.array_equal(got["blk.0.attn_q.weight.lora_b"],
                          permute_like_llama_cpp(trained[f"{prefix}.q_proj.lora_B.weight"], 9))
    assert np.array_equal(got["blk.0.attn_k.weight.lora_b"],
                          permute_like_llama_cpp(trained[f"{prefix}.k_proj.lora_B.weight"], 3))
    assert np.array_equal(got["blk.0.attn_v.weight.lora_b"], trained[f"{prefix}.v_proj.lora_B.weight"])


def test_rslora_alpha_and_bf16_weights(tmp_path: Path, generator: ModelRecord) -> None:
    from safetensors.torch import save_file as save_torch

    src = _peft_dir(tmp_path / "peft", config={"use_rslora": True})
    weights = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in _TENSORS_OF[src].items()}
    save_torch(weights, str(src / "adapter_model.safetensors"))
    out = convert_peft_adapter(src, tmp_path / "rs.gguf", base_gguf=generator.path, **META)
    info = validate_gguf(out, expect="adapter")
    # llama.cpp scales by alpha / r; rsLoRA by lora_alpha / sqrt(r)
    assert info.get("adapter.lora.alpha") == pytest.approx(16.0 * math.sqrt(4))
    got = {t.name: np.array(t.data) for t in gguf.GGUFReader(str(out)).tensors}
    want = weights["base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight"].float().numpy()
    assert np.array_equal(got["blk.0.attn_v.weight.lora_a"], want)


# -- parity on the real base ---------------------------------------------------------------


def test_real_base_parity(tmp_path: Path, generator: ModelRecord, monkeypatch: pytest.MonkeyPatch) -> None:
    network: list[tuple] = []

    def refuse(*args, **kwargs):
        network.append(args)
        raise OSError("no network in this test")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    model, tokenizer = load_base_from_gguf(generator.path)
    assert network == [], "loading the base from the GGUF tried the network"
    assert model.dtype == torch.float32 and model.config.model_type == "llama"

    # the same dequantized weights as an f32 GGUF: llama.cpp without quantization noise
    f32 = write_llama_gguf(model, tmp_path / "dequantized.gguf", tokenizer_gguf=generator.path)
    peft_model = _attach_random_lora(model, std=0.06, seed=1)
    good = convert_peft_adapter(peft_model, tmp_path / "good.gguf", base_gguf=generator.path,
                                base_sha256=generator.sha256, **META)
    broken = convert_peft_adapter(peft_model, tmp_path / "broken.gguf", base_gguf=generator.path,
                                  **META, _permute_qk=False)

    sequences = [tokenizer(text).input_ids for text in TEXTS]
    hf_lora, margin = _hf_top1(peft_model, sequences, adapter=True)
    hf_base, _ = _hf_top1(peft_model, sequences, adapter=False)
    variants = {"base": None, "good": good, "broken": broken}
    quantized = llama_cpp_top1(generator.path, sequences, variants)
    try:
        dequantized = llama_cpp_top1(f32, sequences, variants)
    finally:
        f32.unlink()  # 540 MB

    clear = margin >= 0.25  # positions where transformers' top-1 leads by at least 0.25 logit
    q_good = _flat(quantized["good"])
    figures = {
        "positions": len(hf_lora),
        "adapter_changes_top1": 1 - _agree(hf_lora, hf_base),
        "q4_1_base_vs_base": _agree(hf_base, _flat(quantized["base"])),
        "q4_1_adapter": _agree(hf_lora, q_good),
        "q4_1_adapter_clear_positions": int(clear.sum()),
        "q4_1_adapter_on_clear_positions": _agree(hf_lora[clear], q_good[clear]),
        "q4_1_broken_permutation": _agree(hf_lora, _flat(quantized["broken"])),
        "q4_1_broken_on_clear_positions": _agree(hf_lora[clear], _flat(quantized["broken"])[clear]),
        "f32_base_vs_base": _agree(hf_base, _flat(dequantized["base"])),
        "f32_adapter": _agree(hf_lora, _flat(dequantized["good"])),
        "f32_broken_permutation": _agree(hf_lora, _flat(dequantized["broken"])),
    }
    print("real base parity:", json.dumps(figures))
    assert figures["positions"] >= 200
    assert figures["adapter_changes_top1"] >= 0.2  # measured 0.44
    # same weights on both sides: exact top-1 agreement, and the permutation matters
    assert figures["f32_base_vs_base"] >= 0.99
    assert figures["f32_adapter"] >= 0.99
    assert figures["f32_broken_permutation"] <= figures["f32_adapter"] - 0.08  # measured 0.83
    # llama.cpp on Q4_1 weights is judged on the clear positions only. Over all positions, near-ties
    # flip with the CPU's kernels (q4_1_adapter read 0.958 on an AVX-512 build and 0.933 on the
    # portable AVX2 build, same checkout, same machine), so no bar is set there. A kernel changes
    # a logit by about 1e-3 (summation order, FMA); a position is clear when transformers' top-1
    # leads by 0.25 logit, 250 times that, so only a position the Q4_1 rounding itself brought to
    # a near-tie can flip between CPUs. Measured 189 of 190 (AVX2) and 190 of 190 (AVX-512); the
    # bar leaves room for two more such flips. The broken permutation stays far below on the same
    # positions (measured 0.905 and 0.900), so the bar still tells the converter right from wrong.
    assert figures["q4_1_adapter_clear_positions"] >= 150
    assert figures["q4_1_adapter_on_clear_positions"] >= 0.98
    assert figures["q4_1_broken_on_clear_positions"] <= figures["q4_1_adapter_on_clear_positions"] - 0.06


# -- refusals ----------------------------------------------------------------------------------

def _refused(tmp_path: Path, source, base: Path, match: str, **kwargs) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "kept.gguf").write_bytes(b"previous adapter")
    params = {**META, **kwargs}
    with pytest.raises(ConvertError, match=match):
        convert_peft_adapter(source, out_dir / "new.gguf", base_gguf=base, **params)
    with pytest.raises(ConvertError, match=match):
        convert_peft_adapter(source, out_dir / "kept.gguf", base_gguf=base, **params)
    assert sorted(p.name for p in out_dir.iterdir()) == ["kept.gguf"]  # nothing new, no temporary file
    assert (out_dir / "kept.gguf").read_bytes() == b"previous adapter"


def test_refuses_a_base_that_is_not_llama(tmp_path: Path) -> None:
    base = tiny_model(tmp_path / "qwen.gguf", arch="qwen2")
    _refused(tmp_path, _peft_dir(tmp_path / "peft"), base, r"architecture 'qwen2' is not supported")


def test_refuses_a_peft_model_that_is_not_llama(tmp_path: Path, generator: ModelRecord) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tiny = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1))
    peft_model = get_peft_model(tiny, LoraConfig(r=2, target_modules=["q_proj"]))
    _refused(tmp_path, peft_model, generator.path, r"model is a 'qwen2'; only llama")


@pytest.mark.parametrize("config, match", [
    ({"target_modules": ["q_proj", "embed_tokens"]}, r"unsupported target module\(s\) embed_tokens"),
    ({"target_modules": ["q_proj", "lm_head"]}, r"unsupported target module\(s\) lm_head"),
    ({"use_dora": True}, r"DoRA"),
    ({"init_lora_weights": "mica"}, r"variant init_lora_weights='mica'"),
    ({"use_bdlora": {"block_size": 2}}, r"block-diagonal LoRA"),
    ({"rank_pattern": {"q_proj": 2}}, r"rank_pattern"),
    ({"modules_to_save": ["score"]}, r"modules_to_save"),
    ({"bias": "lora_only"}, r"bias='lora_only'"),
    ({"peft_type": "IA3"}, r"peft_type is 'IA3'"),
    ({"r": 8}, r"rank mismatch at blk\.0\.attn_\w\.weight"),
    ({"lora_alpha": 0}, r"bad lora_alpha"),
])
def test_refuses_an_unsupported_config(tmp_path: Path, generator: ModelRecord, config: dict, match: str) -> None:
    _refused(tmp_path, _peft_dir(tmp_path / "peft", config=config), generator.path, match)


def test_refuses_tensors_of_an_unsupported_module(tmp_path: Path, generator: ModelRecord) -> None:
    # a regex target_modules cannot be checked up front: the tensor names are
    extra = {"base_model.model.lm_head.lora_A.weight": np.zeros((4, 576), np.float32),
             "base_model.model.lm_head.lora_B.weight": np.zeros((49152, 4), np.float32)}
    src = _peft_dir(tmp_path / "peft", config={"target_modules": ".*(q_proj|lm_head)"}, extra=extra)
    _refused(tmp_path, src, generator.path, r"unsupported target module or tensor 'lm_head'")


def test_refuses_a_lora_for_another_base(tmp_path: Path, generator: ModelRecord) -> None:
    src = _peft_dir(tmp_path / "peft", shapes={"q_proj": (512, 512), "k_proj": (192, 576), "v_proj": (192, 576)})
    _refused(tmp_path, src, generator.path, r"blk\.0\.attn_q\.weight is 576x576 in the base model.*another base")
    _refused(tmp_path, _peft_dir(tmp_path / "peft2"), generator.path, r"not the given base_sha256",
             base_sha256="0" * 64)
    prefix = "base_model.model.model.layers.30.self_attn.q_proj"
    deeper = {f"{prefix}.lora_A.weight": np.zeros((4, 576), np.float32),
              f"{prefix}.lora_B.weight": np.zeros((576, 4), np.float32)}
    _refused(tmp_path, _peft_dir(tmp_path / "peft3", extra=deeper), generator.path,
             r"has layer 30; the base model has 30 layers")


def test_refuses_missing_files(tmp_path: Path, generator: ModelRecord) -> None:
    src = _peft_dir(tmp_path / "peft")
    (src / "adapter_model.safetensors").unlink()
    _refused(tmp_path, src, generator.path, r"missing adapter_model\.safetensors$")
    (src / "adapter_model.bin").write_bytes(b"pickle")
    _refused(tmp_path, src, generator.path, r"missing adapter_model\.safetensors \(adapter_model\.bin is a pickle")
    (src / "adapter_config.json").unlink()
    _refused(tmp_path, src, generator.path, r"missing adapter_config\.json")
    _refused(tmp_path, tmp_path / "nowhere", generator.path, r"no such peft adapter directory")
    _refused(tmp_path, _peft_dir(tmp_path / "peft2"), tmp_path / "no-base.gguf", r"base model: .*no-base\.gguf")


def test_refuses_a_truncated_weights_file_and_half_pairs(tmp_path: Path, generator: ModelRecord) -> None:
    src = _peft_dir(tmp_path / "peft")
    data = (src / "adapter_model.safetensors").read_bytes()
    (src / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    _refused(tmp_path, src, generator.path, r"not a valid safetensors file")
    half = _peft_dir(tmp_path / "half")
    tensors = {k: v for k, v in _TENSORS_OF[half].items() if "k_proj.lora_B" not in k}
    save_file(tensors, str(half / "adapter_model.safetensors"))
    _refused(tmp_path, half, generator.path, r"blk\.0\.attn_k\.weight has lora_B missing")


@pytest.mark.parametrize("meta, match", [
    ({"task": "summarize"}, r"unknown task 'summarize'"),
    ({"labels": []}, r"labels must be a non-empty list"),
    ({"labels": ['say "hi"']}, r"is not printable text"),
    ({"metrics": {"f1": float("nan")}}, r"metrics are not JSON"),
    ({"created_at": "yesterday"}, r"not an ISO 8601 time"),
])
def test_refuses_bad_specialist_metadata(tmp_path: Path, generator: ModelRecord, meta: dict, match: str) -> None:
    _refused(tmp_path, _peft_dir(tmp_path / "peft"), generator.path, match, **meta)


# -- the second architecture: Gemma 3 -----------------------------------------------------------


@pytest.mark.slow
def test_gemma3_base_parity(tmp_path: Path, model_store: ModelStore) -> None:
    """The same parity check on the Gemma 3 270M base (Q4_K_M, loaded and dequantized by
    transformers from the GGUF). Gemma's q/k rows are stored unpermuted, so here the wrong
    conversion is the one that permutes them as for llama. Judged on clear positions only
    (transformers' top-1 leads by 0.25 logit), for the reason given in the SmolLM2 test."""
    gemma = model_store.get("gemma3-270m")
    model, tokenizer = load_base_from_gguf(gemma.path)
    assert model.config.model_type in ("gemma3_text", "gemma3")
    peft_model = _attach_random_lora(model, std=0.03, seed=2)
    good = convert_peft_adapter(peft_model, tmp_path / "good.gguf", base_gguf=gemma.path,
                                base_sha256=gemma.sha256, **META)
    broken = convert_peft_adapter(peft_model, tmp_path / "broken.gguf", base_gguf=gemma.path, **META,
                                  _permute_qk=True)
    assert validate_gguf(good, expect="adapter").architecture == "gemma3"
    sequences = [tokenizer(text).input_ids for text in TEXTS]
    hf_lora, margin = _hf_top1(peft_model, sequences, adapter=True)
    hf_base, _ = _hf_top1(peft_model, sequences, adapter=False)
    got = llama_cpp_top1(gemma.path, sequences, {"base": None, "good": good, "broken": broken})
    clear = margin >= 0.25
    figures = {"positions": len(hf_lora), "clear": int(clear.sum()),
               "adapter_changes_top1": 1 - _agree(hf_lora, hf_base),
               "base_on_clear": _agree(hf_base[clear], _flat(got["base"])[clear]),
               "adapter_on_clear": _agree(hf_lora[clear], _flat(got["good"])[clear]),
               "broken_on_clear": _agree(hf_lora[clear], _flat(got["broken"])[clear])}
    print("gemma3 parity:", json.dumps(figures))
    # measured (AVX-512 host, portable build): 181 clear of 248 positions, the adapter changes 0.65 of the
    # top-1s, base 0.972 and adapter 0.978 on clear positions (Q4_K_M rounding flips a few), the wrongly
    # permuted conversion 0.746. The bar leaves room for five more flips and stays far above the broken one.
    assert figures["clear"] >= 100 and figures["adapter_changes_top1"] >= 0.2
    assert figures["adapter_on_clear"] >= 0.95
    assert figures["broken_on_clear"] <= figures["adapter_on_clear"] - 0.1


def test_refuses_an_adapter_of_one_family_for_a_base_of_another(tmp_path: Path, model_store: ModelStore) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    tiny = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1))
    peft_model = get_peft_model(tiny, LoraConfig(r=2, target_modules=["q_proj"]))
    _refused(tmp_path, peft_model, model_store.get("gemma3-270m").path,
             r"trained on a 'llama' model; the base gemma-3|trained on a 'llama' model; the base .* is 'gemma3'")
