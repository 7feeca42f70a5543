"""Train the cross-encoder reranker on the build station (torch; never on the appliance).

The reranker is all-MiniLM-L6-v2 (the pinned embedder's own weights) turned into a
cross-encoder: ``[CLS] query [SEP] passage [SEP]`` goes through the BERT encoder, the
``[CLS]`` state through the pooler (dense + tanh) and a one-logit classifier. That is
exactly the graph llama.cpp runs for a BERT GGUF with rank pooling (``cls`` then
``cls.output``), and every token is of type 0, because llama.cpp gives every token type 0.

Only a low-rank delta is learned (LoRA on each encoder layer's linear maps) plus the
pooler and classifier, so what is committed is a small file; provisioning merges it into
the pinned MiniLM weights and converts the result with our own BERT converter.

Training data, all from the SciFact training file and corpus, never the held-out claims:
- the first ``dev_claims`` claims (the appliance's development split: claims 300-808 are
  held out for every reported figure) with their cited abstracts as positives;
- inverse-cloze pseudo-queries: a sentence taken out of an abstract is the query, the rest
  of that abstract the positive (unsupervised; a facility can do the same on its own
  documents, since it needs no labels);
- negatives: BM25's best non-relevant abstracts for the query (hard) and one at random.

Loss: softmax cross-entropy over each group of one positive and ``group - 1`` negatives.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["TrainConfig", "train_reranker", "DELTA_FILE", "PROVENANCE_FILE"]

DELTA_FILE = "reranker-delta.safetensors"
PROVENANCE_FILE = "provenance.json"
LORA_TARGETS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                "intermediate.dense", "output.dense")
_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class TrainConfig:
    dev_claims: int = 300
    claim_passes: int = 2  # each claim's positives seen this often, with fresh negatives each time
    ict_queries: int = 1000
    group: int = 8
    max_tokens: int = 256
    rank: int = 16
    alpha: float = 32.0
    lr: float = 3e-4
    head_lr: float = 1e-3
    epochs: int = 1
    seed: int = 17
    threads: int = 2


# -- data -------------------------------------------------------------------------------

def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class _BM25:
    def __init__(self, docs: Sequence[str], k1: float = 0.9, b: float = 0.4) -> None:
        self.tfs = [Counter(_words(d)) for d in docs]
        self.lens = [sum(tf.values()) for tf in self.tfs]
        self.avg = sum(self.lens) / max(1, len(self.lens))
        df: Counter[str] = Counter()
        for tf in self.tfs:
            df.update(tf.keys())
        n = len(docs)
        self.idf = {w: math.log(1 + (n - c + 0.5) / (c + 0.5)) for w, c in df.items()}
        self.post: dict[str, list[int]] = {}
        for i, tf in enumerate(self.tfs):
            for w in tf:
                self.post.setdefault(w, []).append(i)
        self.k1, self.b = k1, b

    def top(self, query: str, n: int) -> list[int]:
        scores: dict[int, float] = {}
        for w in sorted(set(_words(query))):  # sorted: the same sums, bit for bit, in every process
            idf = self.idf.get(w)
            if idf is None:
                continue
            for i in self.post[w]:
                tf = self.tfs[i][w]
                norm = tf * (self.k1 + 1) / (tf + self.k1 * (1 - self.b + self.b * self.lens[i] / self.avg))
                scores[i] = scores.get(i, 0.0) + idf * norm
        return sorted(scores, key=lambda i: -scores[i])[:n]


def _load_corpus(path: Path) -> tuple[list[str], list[str], list[list[str]]]:
    ids, titles, sentences = [], [], []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                ids.append(str(row["doc_id"]))
                titles.append(str(row.get("title", "")))
                sentences.append([str(s).strip() for s in row.get("sentences") or [row.get("text", "")]])
    return ids, titles, sentences


def _passage(title: str, sentences: Sequence[str]) -> str:
    return f"{title}\n{' '.join(sentences)}".strip()


def build_groups(corpus: Path, claims: Path, cfg: TrainConfig) -> tuple[list[tuple[str, list[str]]], dict]:
    """Training groups ``(query, [positive, negative, ...])`` and a summary of where they came from."""
    from appliance.evaluation.retrieval import load_queries

    rng = random.Random(cfg.seed)
    ids, titles, sentences = _load_corpus(corpus)
    index = {d: i for i, d in enumerate(ids)}
    texts = [_passage(t, s) for t, s in zip(titles, sentences)]
    bm25 = _BM25(texts)
    groups: list[tuple[str, list[str]]] = []

    def negatives(query: str, exclude: set[int]) -> list[str]:
        hard = [i for i in bm25.top(query, 40) if i not in exclude][:20]
        rng.shuffle(hard)
        picked = hard[: cfg.group - 2]
        while len(picked) < cfg.group - 1:
            j = rng.randrange(len(texts))
            if j not in exclude and j not in picked:
                picked.append(j)
        return [texts[j] for j in picked]

    queries = load_queries(claims)[: cfg.dev_claims]
    n_claim = 0
    for _ in range(cfg.claim_passes):
        for q in queries:
            rel = {index[d] for d in q.relevant if d in index}
            for i in sorted(rel):
                groups.append((q.text, [texts[i], *negatives(q.text, rel)]))
                n_claim += 1
    dev_docs = {d for q in queries for d in q.relevant}
    n_ict = 0
    order = list(range(len(ids)))
    rng.shuffle(order)
    for i in order:
        if n_ict >= cfg.ict_queries:
            break
        sents = sentences[i]
        if len(sents) < 4:
            continue
        k = rng.randrange(len(sents))
        query = sents[k]
        if not 6 <= len(query.split()) <= 40:
            continue
        rest = _passage(titles[i], [s for j, s in enumerate(sents) if j != k])
        groups.append((query, [rest, *negatives(query, {i})]))
        n_ict += 1
    rng.shuffle(groups)
    summary = {"claim_groups": n_claim, "claims": len(queries), "ict_groups": n_ict,
               "claim_documents": len(dev_docs), "corpus_documents": len(ids)}
    return groups, summary


# -- model ------------------------------------------------------------------------------

def _lora_linear(torch, base, rank: int, alpha: float, seed: int):  # noqa: ANN001, ANN202
    class LoRALinear(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.base = base
            for p in self.base.parameters():
                p.requires_grad_(False)
            gen = torch.Generator().manual_seed(seed)
            self.lora_a = torch.nn.Parameter(torch.randn(rank, base.in_features, generator=gen)
                                             / math.sqrt(base.in_features))
            self.lora_b = torch.nn.Parameter(torch.zeros(base.out_features, rank))
            self.scale = alpha / rank

        def forward(self, x):  # noqa: ANN001, ANN202
            return self.base(x) + (x @ self.lora_a.T @ self.lora_b.T) * self.scale

    return LoRALinear()


def build_model(model_dir: Path, cfg: TrainConfig):  # noqa: ANN201
    import torch
    from transformers import BertModel

    torch.manual_seed(cfg.seed)
    bert = BertModel.from_pretrained(str(model_dir), add_pooling_layer=True)
    for p in bert.parameters():
        p.requires_grad_(False)
    wrapped: dict[str, object] = {}
    for li, layer in enumerate(bert.encoder.layer):
        for ti, target in enumerate(LORA_TARGETS):
            parent = layer
            *path, leaf = target.split(".")
            for part in path:
                parent = getattr(parent, part)
            lora = _lora_linear(torch, getattr(parent, leaf), cfg.rank, cfg.alpha, cfg.seed * 1000 + li * 10 + ti)
            setattr(parent, leaf, lora)
            wrapped[f"encoder.layer.{li}.{target}"] = lora
    assert bert.pooler is not None  # loaded with add_pooling_layer=True
    for p in bert.pooler.parameters():
        p.requires_grad_(True)
    classifier = torch.nn.Linear(bert.config.hidden_size, 1)
    torch.nn.init.normal_(classifier.weight, std=0.02)
    torch.nn.init.zeros_(classifier.bias)

    class CrossEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert
            self.classifier = classifier

        def forward(self, input_ids, attention_mask):  # noqa: ANN001, ANN202
            out = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                            token_type_ids=torch.zeros_like(input_ids))
            return self.classifier(out.pooler_output).squeeze(-1)

    return CrossEncoder(), wrapped


def delta_tensors(model, wrapped: dict) -> dict:  # noqa: ANN001
    """The learned part: LoRA factors (scale folded into B), pooler and classifier."""
    out = {}
    for name, lora in wrapped.items():
        out[f"{name}.lora_a"] = lora.lora_a.detach().float().contiguous().numpy()
        out[f"{name}.lora_b"] = (lora.lora_b.detach().float() * lora.scale).contiguous().numpy()
    out["pooler.dense.weight"] = model.bert.pooler.dense.weight.detach().float().contiguous().numpy()
    out["pooler.dense.bias"] = model.bert.pooler.dense.bias.detach().float().contiguous().numpy()
    out["classifier.weight"] = model.classifier.weight.detach().float().contiguous().numpy()
    out["classifier.bias"] = model.classifier.bias.detach().float().contiguous().numpy()
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def train_reranker(model_dir: Path, corpus: Path, claims: Path, out_dir: Path, cfg: TrainConfig = TrainConfig(),
                   progress: Callable[[int, int, float], None] | None = None) -> dict:
    """Train and write ``out_dir/reranker-delta.safetensors`` and its provenance; returns the provenance."""
    import numpy as np
    import torch
    from safetensors.numpy import save_file
    from transformers import AutoTokenizer

    torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    groups, summary = build_groups(corpus, claims, cfg)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model, wrapped = build_model(model_dir, cfg)
    head = list(model.classifier.parameters()) + list(model.bert.pooler.parameters())
    lora = [p for m in wrapped.values() for p in (m.lora_a, m.lora_b)]
    opt = torch.optim.AdamW([{"params": lora, "lr": cfg.lr}, {"params": head, "lr": cfg.head_lr}], weight_decay=0.01)
    total = len(groups) * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, total // 20)) * max(0.0, (total - s) / total))
    model.train()
    step, losses, t0 = 0, [], time.perf_counter()
    target = torch.zeros(1, dtype=torch.long)
    for _epoch in range(cfg.epochs):
        for query, passages in groups:
            batch = tok([query] * len(passages), list(passages), truncation="only_second",
                        max_length=cfg.max_tokens, padding=True, return_tensors="pt")
            logits = model(batch["input_ids"], batch["attention_mask"])
            loss = torch.nn.functional.cross_entropy(logits.unsqueeze(0), target)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(lora + head, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss))
            step += 1
            if progress:
                progress(step, total, float(np.mean(losses[-50:])))
    out_dir.mkdir(parents=True, exist_ok=True)
    delta = delta_tensors(model, wrapped)
    tmp = out_dir / (DELTA_FILE + ".tmp")
    save_file(delta, str(tmp), metadata={"format": "appliance-reranker-delta-1", "base": "all-minilm-l6-v2",
                                         "targets": ",".join(LORA_TARGETS)})
    tmp.replace(out_dir / DELTA_FILE)
    provenance = {
        "base": "all-minilm-l6-v2",
        "config": asdict(cfg),
        "data": {"corpus": corpus.name, "corpus_sha256": _sha256(corpus), "claims": claims.name,
                 "claims_sha256": _sha256(claims), **summary},
        "steps": step,
        "seconds": round(time.perf_counter() - t0, 1),
        "final_loss": round(float(np.mean(losses[-100:])), 4) if losses else None,
        "delta_sha256": _sha256(out_dir / DELTA_FILE),
    }
    (out_dir / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
    return provenance
