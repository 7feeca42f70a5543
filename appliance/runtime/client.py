"""The caller's side of the llama.cpp host: start it, talk to it, restart it.

:class:`EngineClient` is the one object the rest of the appliance uses for generation
and embeddings. It spawns ``python -m appliance.runtime.host`` with one end of a Unix
socket pair, validates requests before they leave, and turns a host that died or hung
into an :class:`~appliance.errors.EngineCrashedError` / ``EngineTimeoutError`` after
starting a fresh host, so the caller gets an error, never a hang or a crash.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from appliance import errors
from appliance.errors import EngineCrashedError, EngineError, EngineRequestError, EngineTimeoutError
from appliance.runtime.protocol import EngineSpec, GenerateRequest, GenerateResult

__all__ = ["EngineClient", "RequestLimits", "HOST_COMMAND"]

MAX_CONTINUATIONS = 64  # continuations scored in one likelihoods call
MAX_CONTINUATION_CHARS = 2_000
HOST_COMMAND = (sys.executable, "-m", "appliance.runtime.host")  # the host; FD is appended

_ERRORS = {name: getattr(errors, name) for name in errors.__all__}


class RequestLimits:
    def __init__(self, max_prompt_chars: int = 200_000, max_schema_bytes: int = 65_536,
                 max_grammar_bytes: int = 65_536, max_embed_texts: int = 10_000,
                 max_embed_chars: int = 100_000, max_stop_sequences: int = 16, max_tokens: int = 65_536) -> None:
        self.max_prompt_chars = max_prompt_chars
        self.max_schema_bytes = max_schema_bytes
        self.max_grammar_bytes = max_grammar_bytes
        self.max_embed_texts = max_embed_texts
        self.max_embed_chars = max_embed_chars
        self.max_stop_sequences = max_stop_sequences
        self.max_tokens = max_tokens


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


class EngineClient:
    """Generation and embeddings through the isolated llama.cpp host."""

    def __init__(self, spec: EngineSpec, *, limits: RequestLimits | None = None, request_timeout_s: float = 300.0,
                 start_timeout_s: float = 120.0, log_path: Path | None = None,
                 env: dict[str, str] | None = None, restart: bool = True,
                 host_command: Sequence[str] | None = None) -> None:
        """``restart=False``: a host that dies or hangs is not replaced (the self-test's throwaway
        host); ``host_command`` is a seam for tests (a host double that crashes on purpose)."""
        self.spec = spec
        self.restart = restart
        self.host_command = tuple(host_command or HOST_COMMAND)
        self.limits = limits or RequestLimits()
        self.request_timeout_s = request_timeout_s
        self.start_timeout_s = start_timeout_s
        self.log_path = log_path
        self.env = env
        self.restarts = 0
        self.exit_code: int | None = None  # how the last host that died ended
        self.info_at_start: dict[str, Any] = {}
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._lock = threading.RLock()
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._streaming: int | None = None

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def host_pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> dict[str, Any]:
        with self._lock:
            if not self.running:
                self._spawn()
            return self.info_at_start

    def _spawn(self) -> None:
        self._teardown()
        parent, child = socket.socketpair()
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        env = dict(os.environ if self.env is None else self.env)
        try:
            self._proc = subprocess.Popen(
                [*self.host_command, str(child.fileno())],
                pass_fds=[child.fileno()], stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                start_new_session=True,
            )
        finally:
            child.close()
            if not isinstance(log, int):  # a file we opened, not subprocess.DEVNULL
                log.close()
        self._conn = Connection(parent.detach())
        rid = next(self._ids)
        self._conn.send((rid, "init", self.spec))
        try:
            self.info_at_start = self._receive(rid, "start", self.start_timeout_s, restart=False)
        except errors.ApplianceError:
            self._teardown()
            raise

    def _teardown(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            self._proc = None

    def close(self) -> None:
        with self._lock:
            if self.running and self._conn is not None:
                try:
                    rid = next(self._ids)
                    self._conn.send((rid, "shutdown", None))
                    self._receive(rid, "shutdown", 10.0, restart=False)
                    self._proc.wait(timeout=10)  # type: ignore[union-attr]
                except (EngineError, OSError, subprocess.TimeoutExpired):
                    pass
            self._teardown()

    def __enter__(self) -> EngineClient:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ----------------------------------------------------------------------

    def _host_log_tail(self) -> str:
        if not self.log_path or not self.log_path.is_file():
            return ""
        with open(self.log_path, "rb") as fh:
            fh.seek(max(0, self.log_path.stat().st_size - 400))
            lines = fh.read().decode(errors="replace").strip().splitlines()
        return f" (host log: {lines[-1].strip()})" if lines else ""

    def _died(self, op: str, restart: bool) -> EngineError:
        code = self._proc.wait() if self._proc else None
        self.exit_code = code
        what = f"llama.cpp host died ({_describe_exit(code)}) during {op}"
        if not restart or not self.restart:
            self._teardown()
            return EngineCrashedError(what + self._host_log_tail())
        self.restarts += 1
        try:
            self._spawn()
        except errors.ApplianceError as exc:
            return EngineCrashedError(f"{what}; restarting it failed: {exc}")
        return EngineCrashedError(f"{what}; it was restarted, try again")

    def _receive(self, rid: int, op: str, timeout: float, restart: bool = True,
                 on_chunk: Callable[[str], None] | None = None) -> Any:
        assert self._conn is not None
        deadline = time.monotonic() + timeout
        while True:
            try:
                ready = self._conn.poll(max(0.0, min(0.5, deadline - time.monotonic())))
                if not ready:
                    if self._proc is not None and self._proc.poll() is not None:
                        raise EOFError
                    if time.monotonic() >= deadline:
                        if not restart or not self.restart:
                            self._teardown()
                            raise EngineTimeoutError(f"llama.cpp host did not answer {op} within {timeout:.0f} s")
                        self._proc.kill()  # type: ignore[union-attr]
                        self._proc.wait()  # type: ignore[union-attr]
                        self.restarts += 1
                        self._spawn()
                        raise EngineTimeoutError(
                            f"llama.cpp host did not answer {op} within {timeout:.0f} s; it was restarted")
                    continue
                got, kind, data = self._conn.recv()
            except (EOFError, ConnectionResetError, BrokenPipeError) as exc:
                raise self._died(op, restart) from exc
            if got != rid:
                continue  # a late answer to a request already given up on
            if kind == "chunk":
                deadline = time.monotonic() + timeout  # streaming: the timeout is between pieces
                if on_chunk is not None:
                    on_chunk(data)
                continue
            if kind == "ok":
                return data
            name, message = data
            raise _ERRORS.get(name, EngineError)(message)

    def _call(self, op: str, payload: Any = None, on_chunk: Callable[[str], None] | None = None) -> Any:
        with self._lock:
            if not self.running:
                if self._proc is not None:  # died between requests
                    raise self._died(op, restart=True)
                if not self.restart and self.info_at_start:
                    raise EngineCrashedError(f"llama.cpp host is gone (it is not restarted); {op} refused")
                self._spawn()
            rid = next(self._ids)
            try:
                with self._send_lock:
                    self._conn.send((rid, op, payload))  # type: ignore[union-attr]
            except (BrokenPipeError, ConnectionResetError, OSError) as exc:
                raise self._died(op, restart=True) from exc
            self._streaming = rid if op == "generate" else None
            try:
                return self._receive(rid, op, self.request_timeout_s, on_chunk=on_chunk)
            finally:
                self._streaming = None

    # -- operations ---------------------------------------------------------------------

    def ping(self) -> None:
        self._call("ping")

    def info(self) -> dict[str, Any]:
        return self._call("info")

    def classify(self, prompt: str, labels: Sequence[str], adapter: str | None = None) -> dict[str, Any]:
        """One of ``labels`` for ``prompt`` (constrained to them), with its confidence; see the engine."""
        lim = self.limits
        if len(prompt) > lim.max_prompt_chars:
            raise EngineRequestError(f"prompt is {len(prompt)} characters, over the {lim.max_prompt_chars} limit")
        if not labels or len(labels) > 4096 or any(not isinstance(x, str) or not x or len(x) > 200 for x in labels):
            raise EngineRequestError("classify needs 1 to 4096 non-empty labels of at most 200 characters")
        return self._call("classify", {"prompt": prompt, "labels": list(labels), "adapter": adapter})

    def likelihoods(self, prefix: str, continuations: Sequence[str]) -> list[float]:
        """The generator's log-probability of each of ``continuations`` after ``prefix`` (summed
        over its tokens; each continuation carries its own leading space); see the engine."""
        lim = self.limits
        if not isinstance(prefix, str) or len(prefix) > lim.max_prompt_chars:
            raise EngineRequestError(f"the prefix must be a string of at most {lim.max_prompt_chars} characters")
        if len(continuations) > MAX_CONTINUATIONS:
            raise EngineRequestError(f"{len(continuations)} continuations, over the {MAX_CONTINUATIONS} limit per call")
        for i, text in enumerate(continuations):
            if not isinstance(text, str) or not text.strip() or len(text) > MAX_CONTINUATION_CHARS:
                raise EngineRequestError(f"continuation {i} must be non-empty text of at most "
                                         f"{MAX_CONTINUATION_CHARS} characters")
        return list(self._call("likelihoods", {"prefix": prefix, "continuations": list(continuations)}))

    def cancel(self) -> None:
        """Stop the generation in progress (from another thread); it returns what it has."""
        rid = self._streaming
        conn = self._conn
        if rid is not None and conn is not None:
            with self._send_lock:
                try:
                    conn.send((rid, "cancel", None))
                except OSError:
                    pass

    def check(self, req: GenerateRequest) -> None:
        """Refuse a request that breaks a limit, before it reaches the host."""
        lim = self.limits
        size = len(req.prompt or "") + len(req.system or "") + sum(len(str(m.get("content", ""))) for m in req.messages)
        if size > lim.max_prompt_chars:
            raise EngineRequestError(f"prompt is {size} characters, over the {lim.max_prompt_chars} limit")
        if req.prompt is None and not req.messages:
            raise EngineRequestError("empty request: give a prompt or messages")
        if req.json_schema is not None and req.grammar is not None:
            raise EngineRequestError("give a JSON schema or a grammar, not both")
        if req.json_schema is not None:
            import json

            if not isinstance(req.json_schema, dict):
                raise EngineRequestError("JSON schema must be a JSON object")
            if len(json.dumps(req.json_schema)) > lim.max_schema_bytes:
                raise EngineRequestError(f"JSON schema over the {lim.max_schema_bytes} byte limit")
        if req.grammar is not None and len(req.grammar.encode()) > lim.max_grammar_bytes:
            raise EngineRequestError(f"grammar over the {lim.max_grammar_bytes} byte limit")
        if len(req.stop) > lim.max_stop_sequences:
            raise EngineRequestError(f"{len(req.stop)} stop sequences, over the {lim.max_stop_sequences} limit")
        if not 1 <= req.max_tokens <= lim.max_tokens:
            raise EngineRequestError(f"max_tokens must be from 1 to {lim.max_tokens}, got {req.max_tokens}")

    def generate(self, req: GenerateRequest, on_token: Callable[[str], None] | None = None) -> GenerateResult:
        """Generate with the base model (or ``req.adapter``); ``on_token`` sees each piece as it comes."""
        self.check(req)
        pieces: list[str] = []

        def chunk(text: str) -> None:
            pieces.append(text)
            if on_token is not None:
                on_token(text)

        result = self._call("generate", req, on_chunk=chunk)
        if result.get("cancelled"):
            return GenerateResult(text="".join(pieces), finish_reason="cancelled", prompt_tokens=0,
                                  completion_tokens=len(pieces), seconds=0.0, first_token_s=None, decode_s=0.0,
                                  tokens_per_s=0.0, adapter=req.adapter)
        return GenerateResult(**result)

    def rerank(self, query: str, texts: Sequence[str]) -> list[float]:
        """The reranker's relevance logit for each of ``texts`` against ``query`` (one host call)."""
        return self._cross("reranker", query, texts)

    def entail(self, sentence: str, passages: Sequence[str]) -> list[float]:
        """The entailment judge's logit, for each of ``passages``, that it states ``sentence``
        (above 0: more likely entailed than not, as trained)."""
        return self._cross("verifier", sentence, passages)

    def _check_texts(self, texts: Sequence[str]) -> None:
        """Refuse a batch of texts over the limits, before it reaches the host."""
        lim = self.limits
        if len(texts) > lim.max_embed_texts:
            raise EngineRequestError(f"{len(texts)} texts, over the {lim.max_embed_texts} limit per call")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise EngineRequestError(f"text {i} is not a string")
            if len(text) > lim.max_embed_chars:
                raise EngineRequestError(f"text {i} is {len(text)} characters, over the {lim.max_embed_chars} limit")

    def _cross(self, model: str, query: str, texts: Sequence[str]) -> list[float]:
        lim = self.limits
        if not isinstance(query, str) or len(query) > lim.max_embed_chars:
            raise EngineRequestError(f"the {model}'s query must be a string of at most {lim.max_embed_chars} "
                                     "characters")
        self._check_texts(texts)
        return list(self._call("rerank", {"query": query, "texts": list(texts), "model": model}))

    def embed(self, texts: Sequence[str], *, normalize: bool = True, batch: int = 512,
              progress: Callable[[int], None] | None = None) -> list[list[float]]:
        """Embed ``texts`` in batches (each batch one host call, many texts per llama.cpp decode)."""
        self._check_texts(texts)
        out: list[list[float]] = []
        for start in range(0, len(texts), batch):
            part = list(texts[start : start + batch])
            out.extend(self._call("embed", {"texts": part, "normalize": normalize}))
            if progress:
                progress(len(part))
        return out
