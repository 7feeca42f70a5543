"""The llama.cpp host process: ``python -m appliance.runtime.host FD``.

llama.cpp runs here, never in the caller: if it crashes, only this process dies and
:class:`~appliance.runtime.client.EngineClient` restarts it. FD is this end of a Unix
socket pair; messages are described in :mod:`appliance.runtime.protocol`.
"""

from __future__ import annotations

import os
import sys
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from appliance.airgap import install_egress_guard
from appliance.errors import ApplianceError

__all__ = ["serve"]


def _error(rid: int, exc: BaseException) -> tuple[int, str, tuple[str, str]]:
    if isinstance(exc, ApplianceError):
        return (rid, "error", (type(exc).__name__, str(exc)))
    return (rid, "error", ("EngineError", f"{type(exc).__name__}: {exc}"))


def _generate(engine: Any, conn: Connection, rid: int, payload: Any) -> None:
    stream = engine.generate(payload)
    try:
        for item in stream:
            if isinstance(item, str):
                conn.send((rid, "chunk", item))
                if conn.poll():  # the only message a client sends mid-stream is "cancel"
                    conn.recv()
                    stream.close()
                    conn.send((rid, "ok", {"cancelled": True}))
                    return
            else:
                conn.send((rid, "ok", item))
    finally:
        stream.close()


def serve(conn: Connection) -> int:
    from appliance.runtime.engine import LlamaEngine

    rid, op, spec = conn.recv()
    if op != "init":
        conn.send((rid, "error", ("EngineError", f"expected init, got {op!r}")))
        return 2
    try:
        engine = LlamaEngine(spec)
    except BaseException as exc:  # report any start failure to the caller, then exit
        conn.send(_error(rid, exc))
        return 1
    conn.send((rid, "ok", engine.info() | {"pid": os.getpid()}))
    while True:
        try:
            rid, op, payload = conn.recv()
        except (EOFError, OSError):
            break
        try:
            if op == "ping":
                conn.send((rid, "ok", None))
            elif op == "generate":
                _generate(engine, conn, rid, payload)
            elif op == "embed":
                conn.send((rid, "ok", engine.embed(payload["texts"], normalize=payload.get("normalize", True))))
            elif op == "rerank":
                conn.send((rid, "ok", engine.rerank(payload["query"], payload["texts"],
                                                    model=payload.get("model", "reranker"))))
            elif op == "info":
                conn.send((rid, "ok", engine.info() | {"pid": os.getpid()}))
            elif op == "classify":
                conn.send((rid, "ok", engine.classify(payload["prompt"], list(payload["labels"]),
                                                      payload.get("adapter"))))
            elif op == "likelihoods":
                conn.send((rid, "ok", engine.likelihoods(payload["prefix"], list(payload["continuations"]))))
            elif op == "cancel":
                conn.send((rid, "ok", {"cancelled": False}))
            elif op == "shutdown":
                conn.send((rid, "ok", None))
                break
            else:
                conn.send((rid, "error", ("EngineRequestError", f"unknown operation {op!r}")))
        except Exception as exc:
            conn.send(_error(rid, exc))
    engine.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    log = os.environ.get("APPLIANCE_AIRGAP_LOG")
    install_egress_guard(Path(log) if log else None)
    conn = Connection(int(args[0]))
    try:
        return serve(conn)
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
