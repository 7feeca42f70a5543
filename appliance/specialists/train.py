"""LoRA fine-tuning on the build station (transformers + peft), for classification and extraction.

Both tasks are taught as completions of a fixed prompt, so that the appliance serves them
the same way under a grammar: a classifier completes ``Label:`` with one of its labels, an
extractor completes ``Entities:`` with a JSON list of ``{"text", "type"}`` objects. The loss
is on the completion only. LoRA goes on the attention and MLP projections. Training is
deterministic for a seed (Python, NumPy and torch seeded; one thread order), evaluates the
validation loss every ``eval_every`` steps, keeps the best adapter weights and stops early
after ``patience`` evaluations without improvement.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from appliance.errors import TrainError  # defined with every other error class
from appliance.specialists.data import Example, Sentence

__all__ = ["TrainConfig", "TrainResult", "TrainError", "classification_prompt", "extraction_prompt",
           "extraction_completion", "classification_pairs", "extraction_pairs", "train_lora", "TARGET_MODULES"]

TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")



@dataclass(frozen=True)
class TrainConfig:
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    learning_rate: float = 3e-4
    batch_size: int = 12
    max_epochs: int = 3
    max_steps: int | None = None
    eval_every: int = 50
    patience: int = 3
    seed: int = 1234
    validation: float = 0.1
    max_tokens: int = 160  # prompt + completion, truncated from the left of the prompt
    eval_examples: int = 256  # validation loss on at most this many held-out examples
    init_adapter: str | None = None  # a saved peft adapter to continue training (else a fresh LoRA)
    order_seed: int | None = None  # seeds the order of the training examples (default: ``seed``)
    # the best weights: lowest validation loss, or most validation completions exactly right (every
    # completion token the argmax given the ones before it: what greedy decoding would produce)
    select_on: str = "loss"  # loss | exact

    def check(self) -> None:
        problems = [name for name, ok in (
            ("rank", 1 <= self.rank <= 256), ("alpha", self.alpha > 0), ("dropout", 0 <= self.dropout < 1),
            ("learning_rate", 0 < self.learning_rate < 1), ("batch_size", 1 <= self.batch_size <= 512),
            ("max_epochs", 1 <= self.max_epochs <= 100), ("eval_every", self.eval_every >= 1),
            ("patience", self.patience >= 1), ("validation", 0 < self.validation < 1),
            ("max_tokens", 16 <= self.max_tokens <= 4096), ("select_on", self.select_on in ("loss", "exact")))
            if not ok]
        if problems:
            raise TrainError(f"bad training settings: {', '.join(problems)}")


@dataclass
class TrainResult:
    model: Any  # the peft model, with the best weights loaded
    metrics: dict[str, Any] = field(default_factory=dict)


def classification_prompt(text: str) -> str:
    return f"Classify the text.\nText: {text.strip()}\nLabel:"


def extraction_prompt(text: str) -> str:
    return f"Extract the named entities of the text as JSON.\nText: {text.strip()}\nEntities:"


def extraction_completion(sentence: Sentence) -> str:
    items = [{"text": sentence.text[s.start:s.end], "type": s.type} for s in sentence.spans]
    return " " + json.dumps(items, ensure_ascii=False)


def classification_pairs(examples: Sequence[Example]) -> list[tuple[str, str]]:
    return [(classification_prompt(e.text), f" {e.label}") for e in examples]


def extraction_pairs(sentences: Sequence[Sentence]) -> list[tuple[str, str]]:
    return [(extraction_prompt(s.text), extraction_completion(s)) for s in sentences]


def _seed(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _encode(tokenizer: Any, pairs: Sequence[tuple[str, str]], max_tokens: int) -> list[tuple[list[int], list[int]]]:
    """Token ids and labels (-100 on the prompt) per pair; the prompt is cut from the left if too long."""
    eos = tokenizer.eos_token_id
    out = []
    for prompt, completion in pairs:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
        if len(c) >= max_tokens:
            c = c[: max_tokens - 1]
        p = p[-(max_tokens - len(c)):]
        out.append((p + c, [-100] * len(p) + c))
    return out


def _batch(rows: Sequence[tuple[list[int], list[int]]], pad: int) -> dict:
    import torch

    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (x, y) in enumerate(rows):  # right padding; the mask hides it
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def train_lora(model: Any, tokenizer: Any, train: Sequence[tuple[str, str]], validation: Sequence[tuple[str, str]],
               config: TrainConfig = TrainConfig(),
               progress: Callable[[int, int, dict], None] | None = None) -> TrainResult:
    """Fine-tune a LoRA on ``model`` (a transformers causal LM) for the prompt/completion pairs."""
    import torch
    from peft import LoraConfig, get_peft_model

    config.check()
    if not train or not validation:
        raise TrainError("no training or no validation examples")
    _seed(config.seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    rows = _encode(tokenizer, train, config.max_tokens)
    held = _encode(tokenizer, validation[: config.eval_examples], config.max_tokens)
    if config.init_adapter:
        from peft import PeftModel

        peft_model = PeftModel.from_pretrained(model, config.init_adapter, is_trainable=True)
    else:
        peft_model = get_peft_model(model, LoraConfig(
            # peft annotates lora_alpha as int, but only divides by it (alpha / r): a float alpha is meant
            r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,  # type: ignore[arg-type]
            target_modules=list(TARGET_MODULES), bias="none", task_type="CAUSAL_LM"))
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(rows) / config.batch_size)
    total = steps_per_epoch * config.max_epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(1, total // 20)) * max(0.0, 1 - s / max(1, total)))

    def validate() -> tuple[float, float]:
        """(loss per completion token, share of completions exactly right) on the validation examples."""
        peft_model.eval()
        losses, tokens, exact = 0.0, 0, 0
        with torch.no_grad():
            for i in range(0, len(held), config.batch_size):
                batch = _batch(held[i : i + config.batch_size], pad)
                n = int((batch["labels"][:, 1:] != -100).sum())
                out = peft_model(**batch)
                losses += float(out.loss) * n
                tokens += n
                gold = batch["labels"][:, 1:]
                hit = (out.logits[:, :-1].argmax(-1) == gold) | (gold == -100)
                exact += int(hit.all(dim=1).sum())
        peft_model.train()
        return losses / max(1, tokens), exact / max(1, len(held))

    def better(v: tuple[float, float], than: dict) -> bool:
        if config.select_on == "exact" and v[1] != than["val_exact"]:
            return v[1] > than["val_exact"]
        return v[0] < than["val_loss"] - 1e-4

    started = time.perf_counter()
    v0 = validate()
    best = {"val_loss": v0[0], "val_exact": v0[1], "step": 0}
    best_state = {k: v.detach().clone() for k, v in peft_model.state_dict().items() if "lora_" in k}
    initial_val = best["val_loss"]
    history: list[dict] = [{"step": 0, "val_loss": initial_val, "val_exact": v0[1]}]
    bad_evals, step, stopped_early, train_loss = 0, 0, False, float("nan")
    rng = random.Random(config.seed if config.order_seed is None else config.order_seed)
    peft_model.train()
    order = list(range(len(rows)))
    while step < total and not stopped_early:
        rng.shuffle(order)
        for start in range(0, len(order), config.batch_size):
            if step >= total:
                break
            batch = _batch([rows[i] for i in order[start : start + config.batch_size]], pad)
            loss = peft_model(**batch).loss
            if not torch.isfinite(loss):
                raise TrainError(f"the training loss is {float(loss)} at step {step}: lower the learning rate")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            value = float(loss.detach())
            train_loss = value if math.isnan(train_loss) else 0.9 * train_loss + 0.1 * value
            evaluated = step % config.eval_every == 0 or step == total
            if evaluated:
                v = validate()
                history.append({"step": step, "val_loss": v[0], "val_exact": v[1], "train_loss": train_loss})
                if better(v, best):
                    best = {"val_loss": v[0], "val_exact": v[1], "step": step}
                    best_state = {k: t.detach().clone() for k, t in peft_model.state_dict().items() if "lora_" in k}
                    bad_evals = 0
                else:
                    bad_evals += 1
                    if bad_evals >= config.patience:
                        stopped_early = True
            if progress:
                progress(step, total, {"train_loss": train_loss, "best_val_loss": best["val_loss"],
                                       "best_val_exact": best["val_exact"]})
            if stopped_early:
                break
    peft_model.load_state_dict(best_state, strict=False)
    peft_model.eval()
    metrics = {"config": asdict(config), "train_examples": len(rows), "validation_examples": len(held),
               "steps": step, "epochs": round(step / steps_per_epoch, 3), "best_step": best["step"],
               "initial_val_loss": initial_val, "best_val_loss": best["val_loss"],
               "best_val_exact": best["val_exact"], "selected_on": config.select_on, "stopped_early": stopped_early,
               "seconds": round(time.perf_counter() - started, 1), "history": history}
    return TrainResult(peft_model, metrics)
