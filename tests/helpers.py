"""Shared test helpers: passphrases, the CLI runner, account set-up, bundle specs, the fakes.

The fakes stand at the engine seam for fast logic tests; every capability tested with them
is also tested over the real engine (the ``*_real`` test modules).

- :class:`ScriptedEngine` is an :class:`~appliance.runtime.protocol.Engine` in the manner of
  llm's ``MockModel``: replies come from a queue, embeddings from a word hash, every request
  is recorded. ``build_services(settings, engine=ScriptedEngine())`` uses it.
- :func:`hashed_embed` is a deterministic bag-of-words embedder; :func:`fake_kb` a knowledge
  base over it.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from appliance.access.labels import LevelScale
from appliance.config import KnowledgeSettings
from appliance.errors import EngineRequestError
from appliance.knowledge.base import KnowledgeBase
from appliance.runtime.model_store import ModelStore
from appliance.runtime.protocol import GenerateRequest, GenerateResult

__all__ = ["REPO", "PASS", "BUILD_PASS", "KEY_PASS", "SAMPLE_DOCS", "DIM", "cli_bundle", "ScriptedEngine",
           "SPECIALIST_LABELS", "ENTITY_TYPES", "specialist_adapter",
           "hashed_embed", "letters_embed", "fake_kb",
           "run_cli", "run_cli_env", "make_accounts", "login", "bundle_spec", "store_copy"]

REPO = Path(__file__).resolve().parent.parent
PASS = "a long enough passphrase"  # every test account's
BUILD_PASS = "build station passphrase"  # the bundle signing keys' (made in-process)
KEY_PASS = "a build-station key passphrase"
SPECIALIST_LABELS = ["card_arrival", "lost_or_stolen_card", "exchange_rate", "reverted_card_payment?"]
ENTITY_TYPES = ["person", "location", "corporation"]  # the bundle signing keys' (made with `appliance keys init`)
SAMPLE_DOCS = {
    "kiosk.md": "# Media kiosk\n\nEvery USB drive brought into the facility is scanned at the media kiosk "
                "before it may be connected to any workstation.\n",
    "canteen.txt": "The canteen serves lunch from noon until two in the afternoon on weekdays.\n",
    "ciphers.txt": "Cipher keys for the secure link are rotated on the first Monday of each month.\n",
}
DIM = 64


# -- embedders and the scripted engine -------------------------------------------------------------


def hashed_embed(texts: Sequence[str]) -> list[list[float]]:
    """Bag of words hashed into 64 dimensions, unit length: shared words make texts close."""
    out = []
    for text in texts:
        v = np.zeros(DIM, dtype=np.float32)
        for word in re.findall(r"\w+", text.lower()):
            v[zlib.crc32(word.encode()) % DIM] += 1.0
        n = np.linalg.norm(v)
        out.append((v / n if n else v + 1.0 / np.sqrt(DIM)).tolist())
    return out


def letters_embed(texts: Sequence[str]) -> list[list[float]]:
    """Bag of letters: sentences made of a passage's words come out close to it."""
    out = []
    for t in texts:
        v = [0.0] * 26
        for ch in t.lower():
            if "a" <= ch <= "z":
                v[ord(ch) - 97] += 1.0
        out.append(v)
    return out


def fake_kb(root: Path, **settings: object) -> KnowledgeBase:
    """A private knowledge base (no writer lock) over :func:`hashed_embed`."""
    return KnowledgeBase(root, hashed_embed, scale=LevelScale(), settings=KnowledgeSettings(**settings))


class ScriptedEngine:
    """An engine whose answers are scripted: ``generate`` returns the queued replies in order (then
    ``default``), streaming them word by word; ``classify`` the queued labels (else the first label);
    ``embed`` hashes words. Every request is kept in ``requests``. The cross-encoders and likelihoods
    are absent unless given, as on an appliance that has none."""

    def __init__(self, replies: Iterable[str] = (), *, default: str = "",
                 embed: Callable[[Sequence[str]], list[list[float]]] = hashed_embed,
                 rerank: Callable[[str, Sequence[str]], list[float]] | None = None,
                 entail: Callable[[str, Sequence[str]], list[float]] | None = None,
                 likelihoods: Callable[[str, Sequence[str]], list[float]] | None = None) -> None:
        self.replies: deque[str] = deque(replies)
        self.labels: deque[str] = deque()
        self.default = default
        self.requests: list[Any] = []
        self.cancelled = False
        self.closed = False
        self._embed, self._rerank, self._entail, self._likelihoods = embed, rerank, entail, likelihoods

    def reply(self, *texts: str) -> ScriptedEngine:
        self.replies.extend(texts)
        return self

    def generate(self, req: GenerateRequest, on_token: Callable[[str], None] | None = None) -> GenerateResult:
        self.requests.append(req)
        self.cancelled = False
        text = self.replies.popleft() if self.replies else self.default
        pieces = re.findall(r"\S+\s*|\s+", text)
        for piece in pieces:
            if self.cancelled:
                break
            if on_token is not None:
                on_token(piece)
        return GenerateResult(text=text, finish_reason="stop", prompt_tokens=len((req.prompt or "").split()),
                              completion_tokens=len(pieces), seconds=0.0, first_token_s=0.0, decode_s=0.0,
                              tokens_per_s=0.0, adapter=req.adapter)

    def cancel(self) -> None:
        self.cancelled = True

    def embed(self, texts: Sequence[str], *, normalize: bool = True, batch: int = 512,
              progress: Callable[[int], None] | None = None) -> list[list[float]]:
        self.requests.append(("embed", len(texts)))
        out = self._embed(list(texts))
        if progress:
            progress(len(texts))
        return out

    def classify(self, prompt: str, labels: Sequence[str], adapter: str | None = None) -> dict[str, Any]:
        self.requests.append(("classify", prompt, adapter))
        label = self.labels.popleft() if self.labels else labels[0]
        return {"label": label, "confidence": 1.0, "steps": 1, "seconds": 0.0, "adapter": adapter,
                "first_choices": [(1.0, label)]}

    def _absent(self, what: str) -> EngineRequestError:
        return EngineRequestError(f"no {what} is loaded")

    def rerank(self, query: str, texts: Sequence[str]) -> list[float]:
        if self._rerank is None:
            raise self._absent("reranker")
        return self._rerank(query, texts)

    def entail(self, sentence: str, passages: Sequence[str]) -> list[float]:
        if self._entail is None:
            raise self._absent("verifier")
        return self._entail(sentence, passages)

    def likelihoods(self, prefix: str, continuations: Sequence[str]) -> list[float]:
        if self._likelihoods is None:
            raise self._absent("generator")
        return self._likelihoods(prefix, continuations)

    def close(self) -> None:
        self.closed = True


# -- the command line ------------------------------------------------------------------------------


def run_cli_env(args: list[str], data: Path, store: ModelStore, *, token: str | None = None,
                input: str | None = None, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``appliance ARGS`` in a child process on the data directory ``data``, with ``store``'s models."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env.update(APPLIANCE_DATA_DIR=str(data), APPLIANCE_MODELS_DIR=str(store.root), COLUMNS="200")
    if token:
        env["APPLIANCE_SESSION"] = token
    env.update(extra or {})
    return subprocess.run([sys.executable, "-m", "appliance", *args], env=env, capture_output=True, text=True,
                          timeout=600, input=input)


def run_cli(args: list[str], tmp_path: Path, store: ModelStore, *, token: str | None = None,
            input: str | None = None) -> subprocess.CompletedProcess:
    """``appliance ARGS`` on ``tmp_path/data``."""
    return run_cli_env(args, tmp_path / "data", store, token=token, input=input)


def login(tmp_path: Path, store: ModelStore, name: str) -> str:
    proc = run_cli(["login", name, "--password-stdin", "--print-token"], tmp_path, store, input=PASS + "\n")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def make_accounts(tmp_path: Path, store: ModelStore, users: dict[str, tuple[str, str]]) -> dict[str, str]:
    """Accounts NAME -> (role, LEVEL[:COMPS]) after a bootstrap admin ``root``; a session token per name."""
    tokens = {}
    boot = run_cli(["users", "add", "root", "--role", "admin", "--level", "TOP SECRET", "--compartments",
                    "CRYPTO,NUCLEAR", "--password-stdin"], tmp_path, store, input=PASS + "\n")
    assert boot.returncode == 0, boot.stderr
    tokens["root"] = login(tmp_path, store, "root")
    for name, (role, labels) in users.items():
        level, _, comps = labels.partition(":")
        args = ["users", "add", name, "--role", role, "--level", level, "--password-stdin"]
        proc = run_cli(args + (["--compartments", comps] if comps else []), tmp_path, store, token=tokens["root"],
                       input=PASS + "\n")
        assert proc.returncode == 0, proc.stderr
        tokens[name] = login(tmp_path, store, name)
    return tokens


# -- bundles and stores ----------------------------------------------------------------------------


def bundle_spec(tmp: Path, release: int = 1, extra: str = "") -> Path:
    """A knowledge bundle spec (canteen.txt UNCLASSIFIED, keys.txt SECRET:CRYPTO) written under ``tmp``."""
    (tmp / "docs").mkdir(exist_ok=True)
    (tmp / "docs" / "canteen.txt").write_text("The canteen serves lunch from noon.\n")
    (tmp / "docs" / "keys.txt").write_text("Cipher keys are rotated monthly.\n")
    spec = tmp / "demo.toml"
    spec.write_text(f"""
[bundle]
name = "northgate-knowledge"
appliance_class = "northgate"
release = {release}
expires_days = 30

[[knowledge]]
collection = "facility-handbook"
labels = "UNCLASSIFIED"
paths = ["docs/canteen.txt"]

[[knowledge]]
collection = "security"
labels = "SECRET:CRYPTO"
paths = ["docs/keys.txt"]
{extra}""")
    return spec


def cli_bundle(tmp: Path, spec: Path, out: str, store: ModelStore) -> Path:
    """``appliance keys init`` (once, in ``tmp/keys``) and ``appliance bundle build`` of ``spec`` into ``tmp/out``."""
    if not (tmp / "keys").exists():
        proc = run_cli(["keys", "init", "--dir", str(tmp / "keys"), "--password-stdin"], tmp, store,
                       input=KEY_PASS + "\n")
        assert proc.returncode == 0, proc.stderr
    proc = run_cli(["bundle", "build", "--spec", str(spec), "--keys", str(tmp / "keys"), "--out", str(tmp / out),
                    "--password-stdin"], tmp, store, input=KEY_PASS + "\n")
    assert proc.returncode == 0, proc.stderr
    return tmp / out


def specialist_adapter(base: Path, out: Path, task: str, labels: list[str], seed: int) -> Path:
    """A random (untrained) LoRA specialist for ``base``: the task and labels in its GGUF metadata."""
    import json

    from appliance.runtime.gguf_check import validate_gguf
    from appliance.runtime.lora_gguf import write_lora_adapter

    info = validate_gguf(base)
    rng = np.random.default_rng(seed)
    tensors = {}
    for t in info.tensors:
        parts = t.name.split(".")
        if len(parts) == 4 and parts[0] == "blk" and parts[3] == "weight" and parts[2] in ("attn_q", "attn_v"):
            tensors[t.name] = (rng.normal(0, 0.02, size=(4, t.shape[0])).astype(np.float32),
                               rng.normal(0, 0.02, size=(t.shape[1], 4)).astype(np.float32))
    write_lora_adapter(out, architecture=info.architecture, alpha=4.0, tensors=tensors, name=out.stem,
                       metadata={"appliance.task": task, "appliance.labels": json.dumps(labels),
                                 "appliance.metrics": json.dumps({"accuracy": 0.5})})
    return out


def store_copy(store: ModelStore, dest: Path) -> ModelStore:
    """The test models, hard-linked into a store of the test's own (a bundle registers models in it)."""
    dest.mkdir(parents=True)
    shutil.copytree(store.blobs, dest / "blobs", copy_function=os.link)
    src = sqlite3.connect(store.root / "registry.db")
    dst = sqlite3.connect(dest / "registry.db")
    src.backup(dst)
    src.close()
    dst.close()
    return ModelStore(dest)
