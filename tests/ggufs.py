"""Tiny but structurally real GGUF files for tests that do not need a working model."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_model(path: Path, *, arch: str = "llama", n: int = 8, extra: dict | None = None) -> Path:
    writer = gguf.GGUFWriter(str(path), arch=arch)
    writer.add_name("tiny")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    # a generator must bring a chat template that renders (ChatML here); extra may override or blank it
    for key, value in ({"tokenizer.chat_template": CHATML} | (extra or {})).items():
        if value is None:
            continue
        writer.add_string(key, value)
    writer.add_tensor("token_embd.weight", np.arange(n * 4, dtype=np.float32).reshape(n, 4))
    writer.add_tensor("output_norm.weight", np.ones(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# -- a working llama GGUF from a Hugging Face model, and llama.cpp's top-1 next tokens -----------


def permute_like_llama_cpp(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute of q_proj / k_proj rows (written out again here)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(model, path: Path, *, tokenizer_gguf: Path) -> Path:
    """Write a transformers ``LlamaForCausalLM`` as an F32 llama GGUF llama.cpp runs.

    The tokenizer (``tokenizer.*`` keys) is copied from ``tokenizer_gguf``, whose vocabulary
    size must equal the model's.
    """
    cfg = model.config
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = cfg.hidden_size // n_head
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_name("tiny-llama")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    rope = getattr(cfg, "rope_parameters", None) or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(cfg.vocab_size)
    reader = gguf.GGUFReader(str(tokenizer_gguf))
    for key, field in reader.fields.items():
        if key.startswith("tokenizer."):
            array = field.types[0] == gguf.GGUFValueType.ARRAY
            writer.add_key_value(key, field.contents(), field.types[0], sub_type=field.types[-1] if array else None)
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        module, _, suffix = hf_name.rpartition(".")
        name = name_map.get_name(module)
        assert name is not None and suffix == "weight", hf_name
        data = tensor.detach().float().numpy().copy()
        if module.endswith("q_proj"):
            data = permute_like_llama_cpp(data, n_head)
        elif module.endswith("k_proj"):
            data = permute_like_llama_cpp(data, n_kv)
        writer.add_tensor(f"{name}.weight", data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def llama_cpp_top1(base: Path, sequences: list[list[int]], variants: dict[str, Path | None],
                   timeout: float = 300) -> dict[str, list[list[int]]]:
    """For every variant (an adapter GGUF, or None for the bare base) and every token sequence,
    llama.cpp's argmax next token at every position. Runs llama.cpp in a child process."""
    import json
    import subprocess
    import sys

    job = {"base": str(base), "sequences": sequences,
           "variants": {k: (str(v) if v is not None else None) for k, v in variants.items()}}
    proc = subprocess.run([sys.executable, __file__, "llama-top1"], input=json.dumps(job), capture_output=True,
                          text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"llama.cpp child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def _llama_top1_child() -> None:
    import ctypes
    import json
    import sys

    import llama_cpp

    job = json.loads(sys.stdin.read())
    n_ctx = max(len(s) for s in job["sequences"]) + 8
    llm = llama_cpp.Llama(job["base"], n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True,
                          n_threads=1, n_threads_batch=1, verbose=False)
    out: dict[str, list[list[int]]] = {}
    for name, path in job["variants"].items():
        if path is None:
            rc = llama_cpp.llama_set_adapters_lora(llm.ctx, None, 0, None)
        else:
            handle = llama_cpp.llama_adapter_lora_init(llm.model, path.encode())
            if not handle:
                raise SystemExit(f"llama.cpp refused the adapter {path}")
            arr = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(handle)
            rc = llama_cpp.llama_set_adapters_lora(llm.ctx, arr, 1, (ctypes.c_float * 1)(1.0))
        if rc != 0:
            raise SystemExit(f"llama_set_adapters_lora failed: {rc}")
        out[name] = []
        for seq in job["sequences"]:
            llm.reset()
            llm._ctx.kv_cache_clear()
            llm.eval(seq)
            out[name].append(np.argmax(llm.scores[: len(seq)], axis=1).tolist())
    print(json.dumps(out))


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["llama-top1"]:
        _llama_top1_child()
