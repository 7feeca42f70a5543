"""llama.cpp lives in its own process: bad files and crashes never take the caller down."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from appliance.errors import EngineCrashedError, EngineRequestError, EngineTimeoutError, GGUFError
from appliance.runtime.client import EngineClient
from appliance.runtime.model_store import ModelRecord
from appliance.runtime.protocol import EngineSpec, GenerateRequest
from tests.conftest import make_random_adapter


@pytest.fixture()
def own_engine(generator: ModelRecord, embedder_record: ModelRecord, tmp_path: Path):
    client = EngineClient(EngineSpec(generator_path=str(generator.path), embedder_path=str(embedder_record.path),
                                     threads=2, n_ctx=512, embed_n_ctx=1024),
                          log_path=tmp_path / "host.log", request_timeout_s=30)
    client.start()
    yield client
    client.close()


def test_host_killed_between_requests_gives_error_then_recovers(own_engine: EngineClient) -> None:
    old = own_engine.host_pid
    os.kill(old, signal.SIGKILL)
    time.sleep(0.2)
    with pytest.raises(EngineCrashedError, match=r"died \(killed by SIGKILL\).*restarted"):
        own_engine.embed(["hello"])
    assert own_engine.host_pid != old
    assert len(own_engine.embed(["hello"])[0]) == 384
    assert own_engine.restarts == 1


def test_host_crash_mid_stream_gives_error_not_hang(own_engine: EngineClient) -> None:
    pieces: list[str] = []

    def killer() -> None:
        while not pieces:
            time.sleep(0.005)
        os.kill(own_engine.host_pid, signal.SIGSEGV)

    threading.Thread(target=killer, daemon=True).start()
    t0 = time.monotonic()
    with pytest.raises(EngineCrashedError, match="SIGSEGV"):
        own_engine.generate(GenerateRequest(prompt="Tell a long story.", max_tokens=400), on_token=pieces.append)
    assert time.monotonic() - t0 < 20
    assert own_engine.generate(GenerateRequest(prompt="Hi", max_tokens=3)).completion_tokens > 0


def test_hung_host_times_out_and_is_replaced(generator: ModelRecord, tmp_path: Path) -> None:
    client = EngineClient(EngineSpec(generator_path=str(generator.path), threads=2, n_ctx=512),
                          log_path=tmp_path / "host.log", request_timeout_s=1.5)
    client.start()
    try:
        old = client.host_pid
        os.kill(old, signal.SIGSTOP)  # alive but silent: the worst case for a caller
        with pytest.raises(EngineTimeoutError, match="did not answer ping within 2 s; it was restarted"):
            client.ping()
        assert client.host_pid != old
        client.ping()
    finally:
        client.close()


def test_cancel_stops_a_stream_and_keeps_what_came(own_engine: EngineClient) -> None:
    pieces: list[str] = []

    def on_token(piece: str) -> None:
        pieces.append(piece)
        if len(pieces) == 5:
            threading.Thread(target=own_engine.cancel).start()

    res = own_engine.generate(GenerateRequest(prompt="Tell a long story.", max_tokens=300), on_token=on_token)
    assert res.finish_reason == "cancelled"
    assert 5 <= len(pieces) < 100
    assert res.text == "".join(pieces)
    own_engine.ping()  # no stray answer left on the line
    assert own_engine.generate(GenerateRequest(prompt="Hi", max_tokens=2)).finish_reason in {"length", "stop"}


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    client = EngineClient(EngineSpec(generator_path=str(tmp_path / "nope.gguf")), log_path=tmp_path / "h.log")
    with pytest.raises(GGUFError, match="nope.gguf"):
        client.start()
    assert not client.running


def test_truncated_model_never_reaches_llama_cpp(generator: ModelRecord, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    with open(generator.path, "rb") as fh:
        cut.write_bytes(fh.read(generator.size // 2))
    client = EngineClient(EngineSpec(generator_path=str(cut)), log_path=tmp_path / "h.log")
    with pytest.raises(GGUFError, match="truncated"):
        client.start()


def test_bad_adapters_refused_while_host_keeps_serving(generator: ModelRecord, embedder_record: ModelRecord,
                                                       tmp_path: Path) -> None:
    """Adapters a host is started with that are missing, truncated, corrupt, not adapters, or do not fit the
    base: each is refused by name with its reason, and the host serves the base and the good one."""
    import numpy as np

    from appliance.runtime.gguf_check import validate_gguf
    from appliance.runtime.lora_gguf import write_lora_adapter

    good = make_random_adapter(generator.path, tmp_path / "good.gguf", seed=3)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(good.read_bytes()[:-1000])
    corrupt = tmp_path / "corrupt.gguf"
    data = bytearray(good.read_bytes())
    data[8:16] = (2**40).to_bytes(8, "little")  # bogus tensor count
    corrupt.write_bytes(bytes(data))
    wrong = make_random_adapter(generator.path, tmp_path / "wrong.gguf", seed=4, rank=4)
    info = validate_gguf(wrong)
    name = info.tensors[0].name.removesuffix(".lora_a").removesuffix(".lora_b")
    write_lora_adapter(tmp_path / "misfit.gguf", architecture="llama", alpha=4.0,  # llama.cpp itself must refuse
                       tensors={name: (np.zeros((4, 7), np.float32), np.zeros((9, 4), np.float32))})
    adapters = {"missing": tmp_path / "missing.gguf", "truncated": truncated, "corrupt": corrupt,
                "model-not-adapter": embedder_record.path, "misfit": tmp_path / "misfit.gguf", "good": good}
    spec = EngineSpec(generator_path=str(generator.path), threads=2, n_ctx=512,
                      adapters={n: str(p) for n, p in adapters.items()})
    with EngineClient(spec, log_path=tmp_path / "host.log", request_timeout_s=60) as host:
        pid = host.host_pid
        for bad, reason in (("missing", "missing.gguf"), ("truncated", "truncated"), ("corrupt", "corrupt.gguf"),
                            ("model-not-adapter", "not an adapter|general.type|adapter"), ("misfit", "refused")):
            with pytest.raises(EngineRequestError, match=rf"adapter '{bad}' is not usable: .*({reason})"):
                host.generate(GenerateRequest(prompt="Hi", max_tokens=3, adapter=bad))
        assert host.host_pid == pid
        assert host.generate(GenerateRequest(prompt="Hi", max_tokens=3, adapter="good")).completion_tokens > 0
        assert host.generate(GenerateRequest(prompt="Hi", max_tokens=3)).completion_tokens > 0


def test_unknown_operation_refused(own_engine: EngineClient) -> None:
    with pytest.raises(EngineRequestError, match="unknown operation"):
        own_engine._call("format_disk")
