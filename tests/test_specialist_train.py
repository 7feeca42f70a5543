"""LoRA fine-tuning over the real transformers + peft, on a tiny random llama built here."""

from __future__ import annotations

import pytest

from appliance.specialists.data import Example, Sentence, Span
from appliance.specialists.train import (
    TrainConfig,
    TrainError,
    classification_pairs,
    extraction_completion,
    extraction_pairs,
    train_lora,
)

ANIMALS = ["cat", "dog", "horse", "cow", "goat", "owl"]
VEHICLES = ["car", "bus", "truck", "tram", "bike", "van"]


def _tiny():  # noqa: ANN202 - a tiny llama and a word-level tokenizer for the toy task
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = sorted({w for p, c in classification_pairs(_examples()) for w in (p + c).replace("\n", " ").split()}
                   | {"Label:", "Text:"})
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=128, pad_token_id=0, eos_token_id=1))
    with torch.no_grad():  # a random head at the usual 0.02 scale caps every logit near 0.6: no task is learnable
        model.lm_head.weight.mul_(50)
    return model, tokenizer


def _examples() -> list[Example]:
    out = []
    for i in range(60):
        a, v = ANIMALS[i % len(ANIMALS)], VEHICLES[i % len(VEHICLES)]
        out.append(Example(f"a {a}", "animal"))
        out.append(Example(f"a {v}", "vehicle"))
    return out


def _run(seed: int = 3, patience_: int = 5, eval_every_: int = 10, select_on: str = "loss"):  # noqa: ANN202
    model, tokenizer = _tiny()
    pairs = classification_pairs(_examples())
    config = TrainConfig(rank=4, alpha=8, dropout=0.0, learning_rate=2e-2, batch_size=8, max_steps=60, max_epochs=10,
                         eval_every=eval_every_, patience=patience_, seed=seed, select_on=select_on)
    seen: list[int] = []
    result = train_lora(model, tokenizer, pairs[:100], pairs[100:], config,
                        progress=lambda step, total, info: seen.append(step))
    return result, seen, tokenizer


def test_training_learns_the_task_and_reports_progress() -> None:
    import torch

    result, seen, tokenizer = _run()
    m = result.metrics
    assert m["best_val_loss"] < m["initial_val_loss"] * 0.3, m["history"]
    assert seen == list(range(1, m["steps"] + 1)) and m["steps"] == 60
    # the best adapter is what is returned: it now completes the prompt with the right label
    for text, label in (("a goat", "animal"), ("a tram", "vehicle")):
        ids = tokenizer(f"Classify the text.\nText: {text}\nLabel:", add_special_tokens=False,
                        return_tensors="pt")["input_ids"]
        with torch.no_grad():
            nxt = int(result.model(input_ids=ids).logits[0, -1].argmax())
        assert tokenizer.convert_ids_to_tokens(nxt) == label


def test_training_is_deterministic_for_a_seed() -> None:
    a, _, _ = _run(seed=5)
    b, _, _ = _run(seed=5)
    assert a.metrics["history"] == b.metrics["history"]


def test_early_stopping_keeps_the_best_weights() -> None:
    result, _, _ = _run(patience_=1, eval_every_=2)
    m = result.metrics
    if m["stopped_early"]:
        assert m["steps"] < 60
    assert m["best_val_loss"] == min(h["val_loss"] for h in m["history"])


def test_selection_on_exact_completions_keeps_the_most_right() -> None:
    result, _, _ = _run(patience_=100, eval_every_=5, select_on="exact")
    m, history = result.metrics, result.metrics["history"]
    assert m["selected_on"] == "exact" and history[0]["val_exact"] == 0.0  # an untrained adapter gets none right
    most = max(h["val_exact"] for h in history)
    assert m["best_val_exact"] == most > 0.5
    tied = [h for h in history if h["val_exact"] == most]  # among them, the lowest loss wins (by 1e-4)
    best = next(h for h in history if h["step"] == m["best_step"])
    assert best["val_exact"] == most and best["val_loss"] == m["best_val_loss"]
    assert m["best_val_loss"] <= min(h["val_loss"] for h in tied) + 1e-4


def test_bad_settings_and_no_data_are_refused() -> None:
    model, tokenizer = _tiny()
    with pytest.raises(TrainError, match="learning_rate"):
        train_lora(model, tokenizer, [("a", "b")], [("a", "b")], TrainConfig(learning_rate=5))
    with pytest.raises(TrainError, match="no training or no validation"):
        train_lora(model, tokenizer, [], [("a", "b")])


def test_extraction_completion_is_json_of_the_spans() -> None:
    s = Sentence("Ann went to Paris", (Span(0, 3, "person"), Span(12, 17, "location")))
    assert extraction_completion(s) == ' [{"text": "Ann", "type": "person"}, {"text": "Paris", "type": "location"}]'
    assert extraction_pairs([s])[0][0].endswith("Entities:")
