"""Train the entailment judge on the build station: does a passage state what a sentence says?

The judge is the same cross-encoder as the reranker (all-MiniLM-L6-v2 with a LoRA delta,
a pooler and a one-logit head; :mod:`appliance.rerank.train`), reading
``[CLS] sentence [SEP] passage [SEP]``, trained pointwise (binary cross-entropy) on pairs
generated here from SciFact abstracts. No hand labels: each pair is made by a rule whose
answer is known.

Entailed (label 1), the passage being two to four consecutive sentences of an abstract:
- one of its sentences verbatim, or with a parenthesis, a leading connective or a trailing
  clause dropped, or with words swapped for synonyms ("next to" -> "beside");
- two of its sentences joined into one.

Not entailed (label 0), each reusing the passage's own words, the way wrong answers do:
- ``number``: a number changed (17 -> 19, 2.77 -> 3.77, 45% -> 54%);
- ``date``: a year, month, weekday or clock time changed;
- ``negation``: a "not" put in or taken out, or a direction reversed (increased <->
  decreased, higher <-> lower);
- ``entity-swap``: two names or terms of the sentence swapped, or one replaced by another
  name from the passage;
- ``relation``: the start of one sentence joined to the end of another, so every word is in
  the passage but the relation is not;
- ``other-document``: a sentence from another abstract on the same subject (BM25's nearest).

Documents the verification test set (``bundles/demo/evaluation/verification.jsonl``) takes
passages from are excluded, and none of the demo documents is used, so every figure on that
set is on passages the judge never saw.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["NliConfig", "generate_pairs", "train_verifier", "VERIFIER_DELTA_FILE"]

VERIFIER_DELTA_FILE = "verifier-delta.safetensors"

_NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)(?![\w])")
_YEAR = re.compile(r"\b(19[5-9]\d|20[0-3]\d)\b")
_TIME = re.compile(r"\b([01]\d|2[0-3]):([0-5]\d)\b")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_AUX = re.compile(r"\b(is|are|was|were|can|could|will|would|should|may|might|must|has|have|had|does|did|do)\b(?! not)")
_NEGATED = re.compile(r"\b(is|are|was|were|can|could|will|would|should|may|might|must|has|have|had|does|did|do)"
                      r" not\b")
_OPPOSITES = {"increased": "decreased", "increase": "decrease", "increases": "decreases", "higher": "lower",
              "more": "less", "greater": "smaller", "larger": "smaller", "positive": "negative",
              "positively": "negatively", "before": "after", "up-regulated": "down-regulated",
              "enhanced": "reduced", "improved": "worsened", "promotes": "inhibits", "activates": "inhibits",
              "induced": "prevented", "required": "dispensable", "significant": "insignificant",
              "early": "late", "first": "last", "maximum": "minimum", "above": "below", "inside": "outside",
              "allowed": "forbidden", "open": "closed", "always": "never", "all": "no", "must": "need not"}
_OPPOSITES.update({v: k for k, v in list(_OPPOSITES.items()) if v not in _OPPOSITES})
_SYNONYMS = {"next to": "beside", "approximately": "about", "however": "but", "demonstrate": "show",
             "demonstrated": "showed", "utilize": "use", "utilized": "used", "in addition": "also",
             "subsequently": "then", "individuals": "people", "patients": "patients", "observed": "seen",
             "identified": "found", "significantly": "markedly", "examined": "studied", "obtained": "got",
             "reduced": "lowered", "investigated": "studied", "approximately ": "around "}
_CONNECTIVE = re.compile(r"^(However|In addition|Moreover|Furthermore|Additionally|Thus|Therefore|Finally|"
                         r"In contrast|Importantly|Notably|Here|Overall|Together|Collectively),\s+", re.IGNORECASE)
_PAREN = re.compile(r"\s*\([^()]{1,80}\)")
_TERM = re.compile(r"\b(?:[A-Z][A-Za-z0-9-]*[A-Z0-9][A-Za-z0-9-]*|[A-Z][a-z]{3,}(?:\s[A-Z][a-z]+)*)\b")
_SPLIT_VERB = re.compile(r"\s(is|are|was|were|has|have|had|showed|shows|increased|decreased|reduced|caused|"
                         r"led to|resulted in|correlated with|was associated with|were associated with)\s")


_WRONG_WEIGHTS = {"number": 0.26, "date": 0.08, "negation": 0.2, "entity-swap": 0.2, "relation": 0.16,
                  "other-document": 0.1}


@dataclass(frozen=True)
class NliConfig:
    pairs: int = 12000
    positive_share: float = 0.45
    facility_share: float = 0.2
    window: tuple[int, int] = (2, 3)
    batch: int = 16
    max_tokens: int = 192
    rank: int = 16
    alpha: float = 32.0
    lr: float = 3e-4
    head_lr: float = 1e-3
    epochs: int = 1
    seed: int = 23
    threads: int = 2


Pair = tuple[str, str, int, str]  # (sentence, passage, label, kind)


def _shift_number(m: re.Match, rng: random.Random) -> str:
    text = m.group(1)
    if "." in text:
        whole, frac = text.split(".")
        return f"{int(whole) + rng.choice((1, 2, 3))}.{frac}"
    n = int(text)
    if len(text) >= 2 and rng.random() < 0.3 and text[::-1] != text and not text.endswith("0"):
        return text[::-1]
    delta = rng.choice((1, 2, 3, 5, 10)) if n > 10 else rng.choice((1, 2, 3))
    out = n + delta if rng.random() < 0.6 or n - delta < 0 else n - delta
    return str(out).zfill(len(text)) if text.startswith("0") else str(out)


def _number(s: str, rng: random.Random) -> str | None:
    found = [m for m in _NUMBER.finditer(s) if not _YEAR.fullmatch(m.group(1))]
    if not found:
        return None
    m = rng.choice(found)
    return s[: m.start(1)] + _shift_number(m, rng) + s[m.end(1):]


def _date(s: str, rng: random.Random) -> str | None:
    options = []
    for m in _YEAR.finditer(s):
        options.append((m.start(), m.end(), str(int(m.group()) + rng.choice((-2, -1, 1, 2)))))
    for m in _TIME.finditer(s):
        options.append((m.start(), m.end(), f"{(int(m.group(1)) + rng.choice((1, 2, 3))) % 24:02d}:{m.group(2)}"))
    for names in (_MONTHS, _DAYS):
        for name in names:
            for m in re.finditer(rf"\b{name}\b", s):
                options.append((m.start(), m.end(), rng.choice([n for n in names if n != name])))
    if not options:
        return None
    a, b, new = rng.choice(options)
    return s[:a] + new + s[b:]


def _negation(s: str, rng: random.Random) -> str | None:
    m = _NEGATED.search(s)
    if m and rng.random() < 0.5:
        return s[: m.start()] + m.group(1) + s[m.end():]
    words = [w for w in re.finditer(r"\b[\w-]+\b", s) if w.group().lower() in _OPPOSITES]
    if words and rng.random() < 0.6:
        w = rng.choice(words)
        new = _OPPOSITES[w.group().lower()]
        new = new.capitalize() if w.group()[0].isupper() else new
        return s[: w.start()] + new + s[w.end():]
    m = _AUX.search(s)
    if m:
        return s[: m.end()] + " not" + s[m.end():]
    if " no " in s:
        return s.replace(" no ", " some ", 1)
    return None


_STOP_TERMS = {"The", "This", "These", "That", "Those", "In", "We", "Our", "It", "Its", "A", "An", "For", "To", "Of"}


def _terms(text: str) -> list[str]:
    """Names and terms: words with two capitals or a digit, or capitalised inside a sentence."""
    out = []
    for m in _TERM.finditer(text):
        t = m.group()
        inner = m.start() > 0 and not re.search(r"[.!?:]\s*$", text[: m.start()])
        marked = sum(c.isupper() for c in t) >= 2 or any(c.isdigit() for c in t)
        if len(t) > 2 and t not in _STOP_TERMS and (inner or marked):
            out.append(t)
    return list(dict.fromkeys(out))


def _entity(s: str, passage: str, rng: random.Random) -> str | None:
    own = _terms(s)
    if len(own) >= 2 and rng.random() < 0.5:
        a, b = rng.sample(own, 2)
        out = s.replace(a, "\0").replace(b, a).replace("\0", b)
        return out if out != s else None
    others = [t for t in _terms(passage) if t not in s]
    if own and others:
        a = rng.choice(own)
        return s.replace(a, rng.choice(others), 1)
    # nouns of the passage: swap a content word of the sentence for another one of the passage
    words = [w for w in re.findall(r"\b[a-z]{6,}\b", s)]
    pool = [w for w in re.findall(r"\b[a-z]{6,}\b", passage) if w not in s]
    if words and pool:
        a = rng.choice(words)
        return re.sub(rf"\b{re.escape(a)}\b", rng.choice(pool), s, count=1)
    return None


def _relation(s: str, others: Sequence[str], rng: random.Random) -> str | None:
    m = _SPLIT_VERB.search(s)
    if not m:
        return None
    for o in rng.sample(list(others), len(others)):
        n = _SPLIT_VERB.search(o)
        if n and o != s:
            out = s[: m.start()] + " " + n.group(1) + " " + o[n.end():]
            if out.strip() != s.strip() and len(out.split()) >= 6:
                return out
    return None


def _paraphrase(s: str, rng: random.Random) -> str:
    out = s
    if _PAREN.search(out) and rng.random() < 0.6:
        out = _PAREN.sub("", out)
    if _CONNECTIVE.match(out):
        rest = _CONNECTIVE.sub("", out)
        out = rest[:1].upper() + rest[1:]
    for a, b in _SYNONYMS.items():
        if a in out and rng.random() < 0.7:
            out = out.replace(a, b)
    if rng.random() < 0.35:
        parts = re.split(r"(?:,|;)\s+(?:and |but |while |whereas |which )?", out)
        if len(parts) > 1 and len(parts[0].split()) >= 6:
            out = parts[0].rstrip(" ,;") + "."
    return out


# Synthetic records in the style of a facility's notices and tables (times, days, rooms,
# extensions, frequencies), which SciFact lacks. Names come from these lists, not the demo.
_PLACES = ("Print Room", "Mail Desk", "Archive Store", "Key Safe", "Training Suite", "Loading Bay", "Clinic",
           "Library", "Pass Office", "Data Hall", "Visitor Lounge", "Armoury", "Gym", "Post Room", "Lab Store")
_TEAMS = ("Facilities Helpdesk", "Duty Officer", "Records Team", "Fire Marshal", "Network Operations",
          "Site Nurse", "Transport Office", "Estates Team", "Custodian", "Watch Desk")
_FREQ = ("daily", "weekly", "monthly", "quarterly", "yearly", "every two weeks", "every six months")
_NUMBERS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve")


def _t(rng: random.Random) -> str:
    return f"{rng.randint(6, 21):02d}:{rng.choice(('00', '15', '30', '45'))}"


def _room(rng: random.Random) -> str:
    return f"{rng.choice('ABCDEFG')}-{rng.randint(1, 399):03d}"


def _facility_pair(rng: random.Random) -> Pair:
    place, other = rng.sample(_PLACES, 2)
    team, team2 = rng.sample(_TEAMS, 2)
    room, room2 = _room(rng), _room(rng)
    t1, t2 = sorted(rng.sample([_t(rng) for _ in range(4)], 2))
    d1, d2 = rng.sample(_DAYS[:5], 2) if rng.random() < 0.5 else ("Monday", "Friday")
    ext, ext2 = rng.randint(1000, 9999), rng.randint(1000, 9999)
    freq, freq2 = rng.sample(_FREQ, 2)
    n, n2 = rng.sample(_NUMBERS, 2)
    facts = [  # (passage sentence, right restatements, wrong restatements with the passage's words)
        (f"The {place} is in room {room} in Building {room[0]}, next to the {other} ({room2}).",
         [f"The {place} is in room {room}.", f"The {place} is beside the {other}.",
          f"You find the {place} in room {room}, Building {room[0]}."],
         [(f"The {place} is in room {room2}.", "relation"), (f"The {other} is in room {room}.", "entity-swap"),
          (f"The {place} is in room {room[0]}-{int(room[2:]) + rng.randint(1, 9):03d}.", "number")]),
        (f"The {place} is open {t1}-{t2}, {d1} to {d2}.",
         [f"The {place} opens at {t1}.", f"The {place} is open from {t1} to {t2} on weekdays."
          if (d1, d2) == ("Monday", "Friday") else f"The {place} closes at {t2}."],
         [(f"The {place} is open {t1}-{_t(rng)}, {d1} to {d2}.", "date"),
          (f"The {place} is open {t1}-{t2}, {d1} to Saturday.", "date"),
          (f"The {place} is not open on {d1}.", "negation"), (f"The {other} is open {t1}-{t2}.", "entity-swap")]),
        (f"Out of hours, call the {team} on ext {ext}; the {team2} answers on ext {ext2}.",
         [f"Out of hours you call the {team} on ext {ext}.", f"The {team2} can be reached on ext {ext2}."],
         [(f"Out of hours, call the {team} on ext {ext2}.", "relation"),
          (f"Out of hours, call the {team2} on ext {ext}.", "entity-swap"),
          (f"Call the {team} on ext {ext + rng.randint(1, 9)}.", "number")]),
        (f"Service: {place}; Frequency: {freq}; Window: {t1}-{t2}; Owner: {team}",
         [f"The {place} service runs {freq}.", f"The {team} owns the {place} service.",
          f"The {place} window is {t1} to {t2}."],
         [(f"The {place} service runs {freq2}.", "date"), (f"The {team2} owns the {place} service.", "entity-swap"),
          (f"The {place} window starts at {t2}.", "relation")]),
        (f"There are {n} {other.lower()} terminals; each is checked {freq} by the {team}.",
         [f"There are {n} {other.lower()} terminals.", f"The {team} checks each terminal {freq}."],
         [(f"There are {n2} {other.lower()} terminals.", "number"),
          (f"Each terminal is checked {freq2} by the {team}.", "date"),
          (f"The terminals are never checked by the {team}.", "negation")]),
    ]
    picked = rng.sample(facts, rng.randint(2, 4))
    passage = " ".join(f for f, _, _ in picked)
    _fact, right, wrong = rng.choice(picked)
    if rng.random() < 0.45:
        return (rng.choice(right), passage, 1, "facility")
    sentence, kind = rng.choice(wrong)
    return (sentence, passage, 0, kind)


def _load(corpus: Path, exclude: set[str]) -> list[tuple[str, str, list[str]]]:
    out = []
    with open(corpus, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                if str(row["doc_id"]) in exclude:
                    continue
                sents = [str(s).strip() for s in row.get("sentences") or [] if 30 <= len(str(s).strip()) <= 400]
                if len(sents) >= 3:
                    out.append((str(row["doc_id"]), str(row.get("title", "")), sents))
    return out


def excluded_documents(verification_set: Path) -> set[str]:
    """SciFact documents the verification set takes passages from: never trained on."""
    out = set()
    for line in verification_set.read_text(encoding="utf-8").splitlines():
        if line.strip():
            source = json.loads(line)["source"]
            if source.startswith("scifact:"):
                out.add(source.split(":", 1)[1])
    return out


def generate_pairs(corpus: Path, exclude: set[str], cfg: NliConfig) -> tuple[list[Pair], dict]:
    """``cfg.pairs`` labelled pairs and how many of each kind."""
    from appliance.rerank.train import _BM25

    rng = random.Random(cfg.seed)
    docs = _load(corpus, exclude)
    bm25 = _BM25([" ".join(s) for _, _, s in docs])
    pairs: list[Pair] = []
    wrong_makers: list[tuple[str, Callable[..., str | None]]] = [
        ("number", lambda s, p, w: _number(s, rng)), ("date", lambda s, p, w: _date(s, rng)),
        ("negation", lambda s, p, w: _negation(s, rng)), ("entity-swap", lambda s, p, w: _entity(s, p, rng)),
        ("relation", lambda s, p, w: _relation(s, [x for x in w if x != s], rng))]
    order = list(range(len(docs)))
    rng.shuffle(order)
    i = 0
    while len(pairs) < cfg.pairs:
        if rng.random() < cfg.facility_share:
            pairs.append(_facility_pair(rng))
            continue
        d = order[i % len(order)]
        i += 1
        _doc_id, _title, sents = docs[d]
        size = min(len(sents), rng.randint(*cfg.window))
        start = rng.randrange(len(sents) - size + 1)
        window = sents[start : start + size]
        passage = " ".join(window)
        s = rng.choice(window)
        if rng.random() < cfg.positive_share:
            if len(window) >= 2 and rng.random() < 0.15:
                j = rng.randrange(len(window) - 1)
                a, b = window[j], window[j + 1]
                pairs.append((a.rstrip(".") + "; " + b[:1].lower() + b[1:], passage, 1, "joined"))
            else:
                p = _paraphrase(s, rng) if rng.random() < 0.6 else s
                pairs.append((p, passage, 1, "paraphrase" if p != s else "verbatim"))
            continue
        kind = rng.choices(list(_WRONG_WEIGHTS), weights=list(_WRONG_WEIGHTS.values()))[0]
        if kind == "other-document":
            near = [j for j in bm25.top(s, 5) if j != d]
            if near:
                pairs.append((rng.choice(docs[near[0]][2]), passage, 0, "other-document"))
            continue
        make = dict(wrong_makers)[kind]
        for cand in rng.sample(window, len(window)):
            wrong = make(cand, passage, window)
            if wrong and wrong.strip() != cand.strip():
                if rng.random() < 0.3:
                    wrong = _paraphrase(wrong, rng)
                pairs.append((wrong, passage, 0, kind))
                break
    kinds: dict[str, int] = {}
    for _, _, _, k in pairs:
        kinds[k] = kinds.get(k, 0) + 1
    return pairs, {"documents": len(docs), "excluded_documents": len(exclude), "kinds": kinds}


def split_pairs(pairs: Sequence[Pair], held_share: float = 0.1, seed: int = 5) -> tuple[list[Pair], list[Pair]]:
    """Train and calibration parts, split by passage so no passage is in both."""
    rng = random.Random(seed)
    passages = sorted({p for _, p, _, _ in pairs})
    held = set(rng.sample(passages, max(1, int(len(passages) * held_share))))
    return [x for x in pairs if x[1] not in held], [x for x in pairs if x[1] in held]


def calibration(logits: Sequence[float], labels: Sequence[int]) -> dict:
    """The threshold that best balances rejecting wrong sentences and keeping right ones
    (the larger of the two rates' minimum), with both rates there."""
    pairs = sorted(zip(logits, labels, strict=True))
    right = sum(labels)
    wrong = len(labels) - right
    best = (-1.0, 0.0, 0.0, 0.0)
    below_wrong = below_right = 0
    for i, (x, y) in enumerate(pairs):  # threshold just above pairs[i]: pairs[:i+1] are rejected
        below_wrong += y == 0
        below_right += y == 1
        reject, keep = below_wrong / max(1, wrong), 1 - below_right / max(1, right)
        if min(reject, keep) > best[0]:
            nxt = pairs[i + 1][0] if i + 1 < len(pairs) else x + 1.0
            best = (min(reject, keep), (x + nxt) / 2, reject, keep)
    return {"threshold": round(best[1], 3), "wrong_rejected": round(best[2], 4), "right_kept": round(best[3], 4),
            "pairs": len(labels)}


def train_verifier(model_dir: Path, pairs: Sequence[Pair], out_dir: Path, cfg: NliConfig = NliConfig(),
                   summary: dict | None = None, held: Sequence[Pair] = (),
                   progress: Callable[[int, int, float], None] | None = None) -> dict:
    """Train on ``pairs`` and write ``out_dir/verifier-delta.safetensors``; returns the provenance,
    with the threshold calibrated on ``held`` (pairs of passages not trained on)."""
    import numpy as np
    import torch
    from safetensors.numpy import save_file
    from transformers import AutoTokenizer

    from appliance.rerank.train import LORA_TARGETS, TrainConfig, _sha256, build_model, delta_tensors

    torch.set_num_threads(cfg.threads)
    rng = random.Random(cfg.seed)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model, wrapped = build_model(model_dir, TrainConfig(rank=cfg.rank, alpha=cfg.alpha, seed=cfg.seed))
    head = list(model.classifier.parameters()) + list(model.bert.pooler.parameters())
    lora = [p for m in wrapped.values() for p in (m.lora_a, m.lora_b)]
    opt = torch.optim.AdamW([{"params": lora, "lr": cfg.lr}, {"params": head, "lr": cfg.head_lr}], weight_decay=0.01)
    order = list(pairs)
    batches = [order[i : i + cfg.batch] for i in range(0, len(order), cfg.batch)]
    total = len(batches) * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, total // 20)) * max(0.0, (total - s) / total))
    model.train()
    step, losses, t0 = 0, [], time.perf_counter()
    for _epoch in range(cfg.epochs):
        rng.shuffle(order)
        batches = [order[i : i + cfg.batch] for i in range(0, len(order), cfg.batch)]
        for batch in batches:
            enc = tok([s for s, _, _, _ in batch], [p for _, p, _, _ in batch], truncation="longest_first",
                      max_length=cfg.max_tokens, padding=True, return_tensors="pt")
            logits = model(enc["input_ids"], enc["attention_mask"])
            target = torch.tensor([float(y) for _, _, y, _ in batch])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(lora + head, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            step += 1
            if progress:
                progress(step, total, float(np.mean(losses[-50:])))
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / (VERIFIER_DELTA_FILE + ".tmp")
    save_file(delta_tensors(model, wrapped), str(tmp),
              metadata={"format": "appliance-reranker-delta-1", "base": "all-minilm-l6-v2",
                        "targets": ",".join(LORA_TARGETS), "task": "entailment"})
    tmp.replace(out_dir / VERIFIER_DELTA_FILE)
    calibrated = None
    if held:
        model.eval()
        held_logits: list[float] = []
        with torch.no_grad():
            for i in range(0, len(held), 64):
                part = held[i : i + 64]
                enc = tok([s for s, _, _, _ in part], [p for _, p, _, _ in part], truncation="longest_first",
                          max_length=cfg.max_tokens, padding=True, return_tensors="pt")
                held_logits.extend(float(x) for x in model(enc["input_ids"], enc["attention_mask"]))
        calibrated = calibration(held_logits, [y for _, _, y, _ in held])
    provenance = {"base": "all-minilm-l6-v2", "task": "entailment", "config": asdict(cfg), "data": summary or {},
                  "calibration": calibrated,
                  "pairs": len(pairs), "steps": step, "seconds": round(time.perf_counter() - t0, 1),
                  "final_loss": round(float(np.mean(losses[-100:])), 4) if losses else None,
                  "delta_sha256": _sha256(out_dir / VERIFIER_DELTA_FILE)}
    return provenance
