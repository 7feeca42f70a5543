"""Convert a peft LoRA adapter of a llama or Gemma 3 model to a llama.cpp GGUF adapter.

The appliance's own converter on the ``gguf`` package. Input: a saved peft adapter
directory (``adapter_config.json`` + ``adapter_model.safetensors``) or an in-memory
``PeftModel``; the base model GGUF the adapter was trained on (its header gives the
architecture, head counts and tensor shapes every LoRA pair is checked against).
Output: an adapter GGUF (:func:`appliance.runtime.lora_gguf.write_lora_adapter`, written
atomically) with ``adapter.base_sha256`` and the specialist's task, labels and metrics.

Mapping. peft names ``base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight``;
gguf's ``TensorNameMap`` for the llama architecture turns the module name into
``blk.N.attn_q``. Only the seven linear projections of a block are supported.

Rotary permutation. llama.cpp's ``convert_hf_to_gguf.py`` stores the rows of ``attn_q``
and ``attn_k`` permuted (HF rotates the two halves of each head, GGML rotates adjacent
pairs). ``W + s * B @ A`` keeps that row order only if ``B``'s rows are permuted the same
way (``n_head`` heads for q, ``n_head_kv`` for k); ``A`` (the columns) is unchanged.

Scale. peft adds ``(lora_alpha / r) * B @ A`` (``lora_alpha / sqrt(r)`` with rsLoRA);
llama.cpp adds ``(adapter.lora.alpha / rank) * B @ A``, so ``adapter.lora.alpha`` is
``lora_alpha`` (``lora_alpha * sqrt(r)`` with rsLoRA).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from appliance.agent.specialists import TASKS
from appliance.errors import ConvertError, GGUFError
from appliance.runtime.gguf_check import GGUFInfo, validate_gguf
from appliance.runtime.lora_gguf import write_lora_adapter
from appliance.runtime.model_store import sha256_file
from appliance.specialists.data import SAFE_LABEL

__all__ = ["SUPPORTED_MODULES", "PeftLora", "convert_peft_adapter", "load_base_from_gguf", "permute_qk_rows",
           "read_peft_adapter"]

MAX_CONFIG_BYTES = 1 << 20
MAX_WEIGHTS_BYTES = 2 << 30
MAX_METADATA_BYTES = 1 << 20
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"

# HF module (last name) -> the gguf tensor kind it maps to in a llama block
SUPPORTED_MODULES: dict[str, gguf.MODEL_TENSOR] = {
    "q_proj": gguf.MODEL_TENSOR.ATTN_Q, "k_proj": gguf.MODEL_TENSOR.ATTN_K,
    "v_proj": gguf.MODEL_TENSOR.ATTN_V, "o_proj": gguf.MODEL_TENSOR.ATTN_OUT,
    "gate_proj": gguf.MODEL_TENSOR.FFN_GATE, "up_proj": gguf.MODEL_TENSOR.FFN_UP,
    "down_proj": gguf.MODEL_TENSOR.FFN_DOWN,
}
_KINDS = frozenset(SUPPORTED_MODULES.values())
_KEY = re.compile(r"^base_model\.model\.(?P<module>[\w.]+)\.lora_(?P<ab>[AB])\.weight$")
# peft features that change the update beyond B @ A, or train weights outside the LoRA pairs
# (peft's own list of LoRA variants is added from LoraConfig's field metadata when peft is there)
_REFUSED_FEATURES = {
    "use_dora": "DoRA (use_dora)", "lora_bias": "LoRA biases (lora_bias)", "fan_in_fan_out": "fan_in_fan_out",
    "rank_pattern": "per-module ranks (rank_pattern)", "alpha_pattern": "per-module alphas (alpha_pattern)",
    "modules_to_save": "fully trained modules (modules_to_save)", "target_parameters": "target_parameters",
    "trainable_token_indices": "trainable_token_indices", "alora_invocation_tokens": "aLoRA",
    "layer_replication": "layer_replication", "use_qalora": "QALoRA", "megatron_config": "megatron_config",
    "use_bdlora": "block-diagonal LoRA (use_bdlora)", "arrow_config": "Arrow routing (arrow_config)",
    "kasa_config": "KaSA (kasa_config)", "velora_config": "VeLoRA (velora_config)",
    "monteclora_config": "MonteCLoRA (monteclora_config)",
}
@dataclass(frozen=True)
class _Arch:
    gguf_arch: gguf.MODEL_ARCH
    model_types: frozenset[str]  # transformers' model_type of a base of this architecture
    permute_qk: bool  # does convert_hf_to_gguf.py permute attn_q / attn_k rows for it?


# GGUF architecture -> how its adapters convert. Llama (transformers loads a llama GGUF named
# "mistral" as mistral) has its q/k rows permuted for GGML's rotary pairs; Gemma 3 uses NeoX-style
# rotary in llama.cpp, so its rows are stored as in Hugging Face.
ARCHITECTURES: dict[str, _Arch] = {
    "llama": _Arch(gguf.MODEL_ARCH.LLAMA, frozenset({"llama", "mistral"}), True),
    "gemma3": _Arch(gguf.MODEL_ARCH.GEMMA3, frozenset({"gemma3_text", "gemma3"}), False),
}
_NAMES = " or ".join(ARCHITECTURES)
_ST_DTYPES: dict[str, np.dtype] = {
    "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "F64": np.dtype("<f8"), "BF16": np.dtype("<u2"),
}


@dataclass(frozen=True)
class PeftLora:
    """A peft LoRA adapter read into memory: its config and its tensors (float32)."""

    source: str
    config: dict[str, Any]
    tensors: dict[str, np.ndarray]  # peft state-dict keys (no adapter name)
    model_type: str | None = None  # known for an in-memory PeftModel


# -- reading ------------------------------------------------------------------------------


def read_peft_adapter(source: Path | str | Any, *, adapter_name: str = "default") -> PeftLora:
    """Read a saved peft adapter directory, or take the adapter out of a ``PeftModel``."""
    if isinstance(source, (str, Path)):
        return _read_dir(Path(source))
    if not hasattr(source, "peft_config"):
        raise ConvertError(f"{type(source).__name__} is neither a peft adapter directory nor a PeftModel")
    from peft import get_peft_model_state_dict

    if adapter_name not in source.peft_config:
        known = ", ".join(sorted(source.peft_config))
        raise ConvertError(f"the PeftModel has no adapter {adapter_name!r} (it has: {known})")
    config = source.peft_config[adapter_name].to_dict()
    state = get_peft_model_state_dict(source, adapter_name=adapter_name)
    tensors = {k: v.detach().to("cpu").float().numpy().copy() for k, v in state.items()}
    base = source.get_base_model() if hasattr(source, "get_base_model") else None
    model_type = getattr(getattr(base, "config", None), "model_type", None)
    return PeftLora(source=f"PeftModel adapter {adapter_name!r}", config=_jsonable(config), tensors=tensors,
                    model_type=model_type)


def _jsonable(config: dict) -> dict:
    # to_dict() holds sets and enums; the saved adapter_config.json holds their JSON forms
    return json.loads(json.dumps(config, default=lambda v: sorted(v) if isinstance(v, set) else str(v)))


def _read_dir(path: Path) -> PeftLora:
    if not path.is_dir():
        raise ConvertError(f"{path}: no such peft adapter directory")
    config_file, weights_file = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not config_file.is_file():
        raise ConvertError(f"{path}: missing {CONFIG_FILE}")
    if not weights_file.is_file():
        hint = " (adapter_model.bin is a pickle and is not read: save with safe_serialization)" \
            if (path / "adapter_model.bin").exists() else ""
        raise ConvertError(f"{path}: missing {WEIGHTS_FILE}{hint}")
    if config_file.stat().st_size > MAX_CONFIG_BYTES:
        raise ConvertError(f"{config_file}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConvertError(f"{config_file}: not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ConvertError(f"{config_file}: not a JSON object")
    return PeftLora(source=str(path), config=config, tensors=_read_safetensors(weights_file))


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Float tensors of a safetensors file as float32, every size checked before reading."""
    size = path.stat().st_size
    if size > MAX_WEIGHTS_BYTES:
        raise ConvertError(f"{path}: {size} bytes, more than the limit of {MAX_WEIGHTS_BYTES}")

    def bad(why: str) -> ConvertError:
        return ConvertError(f"{path}: not a valid safetensors file: {why}")

    tensors: dict[str, np.ndarray] = {}
    with open(path, "rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < n <= min(size - 8, MAX_CONFIG_BYTES * 16):
            raise bad("bad header length")
        try:
            header = json.loads(fh.read(n))
        except (ValueError, UnicodeDecodeError) as exc:
            raise bad("header is not JSON") from exc
        if not isinstance(header, dict):
            raise bad("header is not a JSON object")
        data_size = size - 8 - n
        for name, info in header.items():
            if name == "__metadata__":
                continue
            try:
                dtype, shape, (begin, end) = info["dtype"], [int(d) for d in info["shape"]], info["data_offsets"]
            except (KeyError, TypeError, ValueError) as exc:
                raise bad(f"tensor {name!r} has no dtype, shape or data_offsets") from exc
            if dtype not in _ST_DTYPES:
                raise bad(f"tensor {name!r} has dtype {dtype}; LoRA weights must be F32, F16, BF16 or F64")
            np_dtype = _ST_DTYPES[dtype]
            count = math.prod(shape)
            if (min(shape, default=1) < 0 or not 0 <= begin <= end <= data_size
                    or end - begin != count * np_dtype.itemsize):
                raise bad(f"tensor {name!r}: offsets {begin}..{end} do not fit its shape {shape} or the file")
            fh.seek(8 + n + begin)
            arr = np.frombuffer(fh.read(end - begin), dtype=np_dtype)
            if dtype == "BF16":  # bfloat16 is the upper half of a float32
                arr = (arr.astype(np.uint32) << 16).view(np.float32)
            tensors[name] = arr.astype(np.float32).reshape(shape)
    return tensors


# -- checking -----------------------------------------------------------------------------


def _peft_variants() -> tuple[dict[str, str], frozenset[str]]:
    """Config keys that make a non-plain LoRA, and init_lora_weights values that do (peft's own list)."""
    refused, init_variants = dict(_REFUSED_FEATURES), {"mica"}
    try:
        from peft import LoraConfig
    except ImportError:
        return refused, frozenset(init_variants)
    for f in dataclasses.fields(LoraConfig):
        if f.metadata.get("is_lora_variant"):
            refused.setdefault(f.name, f"the LoRA variant {f.name}")
        if f.name == "init_lora_weights":
            init_variants.update(f.metadata.get("lora_variants") or ())
    return refused, frozenset(init_variants)


def _check_config(lora: PeftLora) -> tuple[int, float]:
    """Return (r, alpha for llama.cpp) or refuse what cannot be expressed as B @ A per module."""
    cfg, src = lora.config, lora.source
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        raise ConvertError(f"{src}: peft_type is {cfg.get('peft_type')!r}; only LORA adapters convert")
    refused, init_variants = _peft_variants()
    for key, what in refused.items():
        if cfg.get(key):
            raise ConvertError(f"{src}: {what} is not supported by llama.cpp adapters; train without it")
    if isinstance(cfg.get("init_lora_weights"), str) and cfg["init_lora_weights"] in init_variants:
        raise ConvertError(f"{src}: the LoRA variant init_lora_weights={cfg['init_lora_weights']!r} is not "
                           "supported by llama.cpp adapters")
    if cfg.get("bias", "none") != "none":
        raise ConvertError(f"{src}: bias={cfg['bias']!r} trains base biases, which an adapter cannot carry; "
                           "use bias='none'")
    r, alpha = cfg.get("r"), cfg.get("lora_alpha")
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise ConvertError(f"{src}: bad rank r={r!r}")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 < alpha < 1e6:
        raise ConvertError(f"{src}: bad lora_alpha={alpha!r} (must be positive)")
    targets = cfg.get("target_modules")
    if isinstance(targets, list):  # a str is a regex: the tensor names are checked instead
        unsupported = sorted(str(t) for t in targets if str(t).rsplit(".", 1)[-1] not in SUPPORTED_MODULES)
        if unsupported:
            raise ConvertError(f"{src}: unsupported target module(s) {', '.join(unsupported)} "
                               f"(supported: {', '.join(SUPPORTED_MODULES)})")
    # llama.cpp scales by alpha / rank; rsLoRA scales by lora_alpha / sqrt(r)
    return r, float(alpha) * math.sqrt(r) if cfg.get("use_rslora") else float(alpha)


def _read_base(base_gguf: Path) -> GGUFInfo:
    try:
        info = validate_gguf(base_gguf, expect="model")
    except GGUFError as exc:
        raise ConvertError(f"base model: {exc}") from exc
    if info.architecture not in ARCHITECTURES:
        raise ConvertError(f"{base_gguf}: architecture {info.architecture!r} is not supported; "
                           f"only {_NAMES} adapters convert")
    return info


def permute_qk_rows(rows: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order: within each head, HF's two halves become adjacent pairs.

    The same permutation ``convert_hf_to_gguf.py`` (``LlamaModel.permute``) applies to the
    q_proj / k_proj weights; ``n_head`` is the head count of that projection.
    """
    out = rows.shape[0]
    if out % (2 * n_head):
        raise ConvertError(f"{out} rows do not split into {n_head} heads of an even size")
    return rows.reshape(n_head, 2, out // n_head // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def _modules(lora: PeftLora) -> set[str]:
    return {m["module"] for k in lora.tensors if (m := _KEY.match(k))}


def _map_tensors(lora: PeftLora, base: GGUFInfo, r: int,
                 *, permute_qk: bool | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    arch = base.architecture
    n_block = int(base.get(f"{arch}.block_count") or 0)
    n_head = int(base.get(f"{arch}.attention.head_count") or 0)
    n_head_kv = int(base.get(f"{arch}.attention.head_count_kv") or n_head)
    permute_qk = ARCHITECTURES[arch].permute_qk if permute_qk is None else permute_qk
    if n_block <= 0 or n_head <= 0 or n_head_kv <= 0:
        raise ConvertError(f"{base.path}: block_count or attention.head_count missing from the base")
    layers = [int(x) for m in _modules(lora) for x in re.findall(r"(?:^|\.)layers\.(\d+)\.", m)]
    if layers and max(layers) >= n_block:
        raise ConvertError(f"{lora.source}: the adapter has layer {max(layers)}; the base model has {n_block} "
                           "layers: trained on another base?")
    name_map = gguf.get_tensor_name_map(ARCHITECTURES[arch].gguf_arch, n_block)
    shapes = {t.name: t.shape for t in base.tensors}
    pairs: dict[str, dict[str, np.ndarray]] = {}
    kinds: dict[str, gguf.MODEL_TENSOR] = {}
    for key, value in lora.tensors.items():
        m = _KEY.match(key)
        found = name_map.get_type_and_name(m["module"]) if m else None
        if m is None or found is None or found[0] not in _KINDS:
            what = m["module"] if m else key
            raise ConvertError(f"{lora.source}: unsupported target module or tensor {what!r} "
                               f"(supported: the {', '.join(SUPPORTED_MODULES)} projections of each layer)")
        kind, name = found
        weight = f"{name}.weight"
        if weight not in shapes:
            raise ConvertError(f"{lora.source}: {key} maps to {weight}, which the base model does not have")
        pairs.setdefault(weight, {})[m["ab"]] = value
        kinds[weight] = kind
    if not pairs:
        raise ConvertError(f"{lora.source}: no LoRA tensors")
    tensors = {}
    for weight, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise ConvertError(f"{lora.source}: {weight} has lora_{'A' if 'B' in ab else 'B'} missing")
        a, b = ab["A"], ab["B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != r or b.shape[1] != r:
            raise ConvertError(f"{lora.source}: rank mismatch at {weight}: lora_A {a.shape}, lora_B {b.shape}, "
                               f"adapter_config r={r}")
        n_in, n_out = shapes[weight][0], shapes[weight][1]  # GGUF order: ne0 = input features
        if (a.shape[1], b.shape[0]) != (n_in, n_out):
            raise ConvertError(f"{lora.source}: {weight} is {n_out}x{n_in} in the base model, the LoRA pair "
                               f"gives {b.shape[0]}x{a.shape[1]}: trained on another base?")
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            raise ConvertError(f"{lora.source}: {weight} has NaN or infinite values")
        if permute_qk and kinds[weight] in (gguf.MODEL_TENSOR.ATTN_Q, gguf.MODEL_TENSOR.ATTN_K):
            b = permute_qk_rows(b, n_head if kinds[weight] == gguf.MODEL_TENSOR.ATTN_Q else n_head_kv)
        tensors[weight] = (a, b)
    return tensors


def _metadata(*, task: str, labels: list[str], metrics: dict, created_at: str | None) -> dict[str, str]:
    """The specialist's own keys, checked before any work is done."""
    if task not in TASKS:
        raise ConvertError(f"unknown task {task!r} (one of {', '.join(TASKS)})")
    if not isinstance(labels, (list, tuple)) or not labels:
        raise ConvertError("labels must be a non-empty list (the label set or the entity types)")
    for label in labels:
        if not isinstance(label, str) or not SAFE_LABEL.match(label):
            raise ConvertError(f"label {label!r} is not printable text without quotes, backslashes or control "
                               "characters")
    if len(set(labels)) != len(labels):
        raise ConvertError("labels repeat a label")
    if not isinstance(metrics, dict):
        raise ConvertError("metrics must be a JSON object (a dict)")
    try:
        metrics_json = json.dumps(metrics, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConvertError(f"metrics are not JSON: {exc}") from exc
    if created_at is None:
        created_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    try:
        dt.datetime.fromisoformat(created_at)
    except (TypeError, ValueError) as exc:
        raise ConvertError(f"created_at {created_at!r} is not an ISO 8601 time") from exc
    meta = {"appliance.task": task, "appliance.labels": json.dumps(list(labels)),
            "appliance.metrics": metrics_json, "appliance.created_at": created_at}
    if sum(len(v) for v in meta.values()) > MAX_METADATA_BYTES:
        raise ConvertError(f"labels and metrics are larger than {MAX_METADATA_BYTES} bytes")
    return meta


# -- converting ---------------------------------------------------------------------------


def convert_peft_adapter(
    source: Path | str | Any,
    out: Path,
    *,
    base_gguf: Path,
    task: str,
    labels: list[str],
    metrics: dict,
    base_sha256: str | None = None,
    created_at: str | None = None,
    adapter_name: str = "default",
    _permute_qk: bool | None = None,
) -> Path:
    """Convert ``source`` (a peft adapter directory or a ``PeftModel``) to the adapter GGUF ``out``.

    ``base_gguf`` is the base model GGUF the adapter was trained on; ``base_sha256`` its
    digest (computed when not given, checked when given). ``task`` is ``classify`` or
    ``extract``; ``labels`` the label set or entity types; ``metrics`` a JSON object of the
    held-out figures. Raises :class:`ConvertError` naming the problem; ``out`` is then left
    as it was (the file is written to a temporary name and renamed into place).
    ``_permute_qk`` forces the rotary row permutation on (True) or off (False) whatever the base's
    architecture needs: a deliberately wrong conversion, for tests only.
    """
    out, base_gguf = Path(out), Path(base_gguf)
    meta: dict[str, str | int] = dict(_metadata(task=task, labels=labels, metrics=metrics, created_at=created_at))
    if not out.parent.is_dir():
        raise ConvertError(f"{out.parent}: no such directory for the output")
    lora = read_peft_adapter(source, adapter_name=adapter_name)
    known = {t for a in ARCHITECTURES.values() for t in a.model_types}
    if lora.model_type is not None and lora.model_type not in known:
        raise ConvertError(f"{lora.source}: the model is a {lora.model_type!r}; only {_NAMES} adapters convert")
    r, alpha = _check_config(lora)
    base = _read_base(base_gguf)
    if lora.model_type is not None and lora.model_type not in ARCHITECTURES[base.architecture].model_types:
        raise ConvertError(f"{lora.source}: the adapter was trained on a {lora.model_type!r} model; the base "
                           f"{base_gguf.name} is {base.architecture!r}")
    tensors = _map_tensors(lora, base, r, permute_qk=_permute_qk)
    digest = sha256_file(base_gguf)
    if base_sha256 is not None and base_sha256.lower() != digest:
        raise ConvertError(f"{base_gguf}: sha256 is {digest}, not the given base_sha256 {base_sha256}")
    meta.update({"adapter.base_sha256": digest, "appliance.lora_rank": r,
                 "appliance.target_modules": json.dumps(sorted({m.rsplit(".", 1)[-1] for m in _modules(lora)}))})
    try:
        write_lora_adapter(out, architecture=base.architecture, alpha=alpha, tensors=tensors, metadata=meta,
                           name=out.stem)
    except OSError as exc:
        raise ConvertError(f"{out}: cannot write: {exc.strerror or exc}") from exc
    return out


# -- the base for training ------------------------------------------------------------


def load_base_from_gguf(gguf_path: Path, *, dtype: Any = None) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` with transformers from a GGUF (dequantized; float32 by default).

    Local files only: nothing is fetched, whatever the Hugging Face environment says.
    """
    gguf_path = Path(gguf_path)
    _read_base(gguf_path)  # validated before transformers maps it
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, local_files_only=True,
                                                     dtype=dtype or torch.float32)
    except (OSError, ValueError) as exc:
        raise ConvertError(f"{gguf_path}: transformers cannot load it: {exc}") from exc
    model.eval()
    return model, tokenizer
