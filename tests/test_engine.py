"""The real llama.cpp host: chat, streaming, stops, grammars, embeddings, adapters."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from appliance.errors import ContextOverflowError, EngineRequestError
from appliance.runtime.client import EngineClient
from appliance.runtime.model_store import ModelRecord
from appliance.runtime.protocol import EngineSpec, GenerateRequest


def test_chat_uses_the_models_own_template(engine: EngineClient) -> None:
    res = engine.generate(GenerateRequest(prompt="Hello", max_tokens=4))
    # SmolLM2's template adds a default system turn: far more prompt tokens than "Hello"
    assert res.prompt_tokens > 15
    with_system = engine.generate(GenerateRequest(prompt="Hello", system="Be brief.", max_tokens=4))
    assert with_system.prompt_tokens < res.prompt_tokens  # the given system turn replaces the default one


def test_streaming_delivers_pieces_in_order(engine: EngineClient) -> None:
    pieces: list[str] = []
    res = engine.generate(GenerateRequest(prompt="Count from one to ten in words.", max_tokens=40),
                          on_token=pieces.append)
    assert len(pieces) > 5
    assert "".join(pieces) == res.text
    assert res.completion_tokens > 5
    assert res.tokens_per_s > 0
    assert res.first_token_s is not None and res.first_token_s < res.seconds


def test_greedy_generation_is_deterministic(engine: EngineClient) -> None:
    req = GenerateRequest(prompt="Name a fruit.", max_tokens=12)
    first = engine.generate(req).text
    assert engine.generate(req).text == first
    engine.generate(GenerateRequest(prompt="Name a fruit and a vegetable, please.", max_tokens=12))
    assert engine.generate(req).text == first  # no cached prefix of another request changes the answer


def test_stop_sequence_ends_generation(engine: EngineClient) -> None:
    free = engine.generate(GenerateRequest(prompt="List the numbers 1, 2, 3, 4, 5, 6.", max_tokens=40))
    assert "3" in free.text
    stopped = engine.generate(GenerateRequest(prompt="List the numbers 1, 2, 3, 4, 5, 6.", max_tokens=40,
                                              stop=("3",)))
    assert "3" not in stopped.text
    assert stopped.finish_reason == "stop"
    assert len(stopped.text) < len(free.text)


def test_json_schema_output_parses_and_fits(engine: EngineClient) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
              "required": ["city", "population"]}
    res = engine.generate(GenerateRequest(prompt="Describe a city as JSON.", max_tokens=80, json_schema=schema))
    data = json.loads(res.text)
    assert set(data) == {"city", "population"}
    assert isinstance(data["city"], str) and isinstance(data["population"], int)


def test_gbnf_grammar_constrains_output(engine: EngineClient) -> None:
    grammar = 'root ::= ("yes" | "no") "."'
    res = engine.generate(GenerateRequest(prompt="Is the sky blue?", max_tokens=8, grammar=grammar))
    assert res.text in {"yes.", "no."}


def test_bad_grammar_is_a_clear_error_and_host_keeps_serving(engine: EngineClient) -> None:
    pid = engine.host_pid
    with pytest.raises(EngineRequestError, match="grammar does not parse"):
        engine.generate(GenerateRequest(prompt="x", grammar="root ::= [a-"))
    engine.ping()
    assert engine.host_pid == pid


def test_prompt_over_the_context_is_refused(engine: EngineClient) -> None:
    with pytest.raises(ContextOverflowError, match=r"prompt is \d+ tokens; the context holds 1024"):
        engine.generate(GenerateRequest(prompt="word " * 3000, max_tokens=4))


def test_request_limits_checked_before_the_host(engine: EngineClient) -> None:
    with pytest.raises(EngineRequestError, match="over the"):
        engine.generate(GenerateRequest(prompt="x" * (engine.limits.max_prompt_chars + 1)))
    with pytest.raises(EngineRequestError, match="not both"):
        engine.generate(GenerateRequest(prompt="x", grammar="root ::= \"a\"", json_schema={"type": "string"}))
    with pytest.raises(EngineRequestError, match="empty request"):
        engine.generate(GenerateRequest())


def test_embeddings_batched_normalised_and_in_order(engine: EngineClient) -> None:
    texts = [("short" if i % 3 else "a much longer sentence about signed bundles and audit logs " * (i % 5 + 1))
             + f" {i}" for i in range(300)]
    vecs = np.array(engine.embed(texts, batch=128))
    assert vecs.shape == (300, 384)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)
    single = np.array(engine.embed([texts[7]])[0])
    assert float(single @ vecs[7]) > 0.9999  # same text, same vector, wherever it sat in the batch
    related = np.array(engine.embed(["The cat sat on the mat.", "A cat was sitting on a rug.",
                                     "Quarterly tax filing deadlines."]))
    assert related[0] @ related[1] > related[0] @ related[2] + 0.2


def test_embed_limits(engine: EngineClient) -> None:
    with pytest.raises(EngineRequestError, match="over the"):
        engine.embed(["x" * (engine.limits.max_embed_chars + 1)])
    assert engine.embed([]) == []


def test_adapters_switch_per_request_without_reloading_the_base(engine: EngineClient) -> None:
    req = dict(prompt="Write one sentence about the sea.", max_tokens=16)
    before = engine.info()
    base = engine.generate(GenerateRequest(**req)).text
    alpha = engine.generate(GenerateRequest(**req, adapter="alpha")).text
    beta = engine.generate(GenerateRequest(**req, adapter="beta")).text
    alpha_again = engine.generate(GenerateRequest(**req, adapter="alpha")).text
    base_again = engine.generate(GenerateRequest(**req)).text
    assert alpha != base and beta != base and alpha != beta
    assert alpha_again == alpha and base_again == base
    after = engine.info()
    assert after["pid"] == before["pid"]
    assert after["stats"]["model_loads"] == before["stats"]["model_loads"] == 2  # base + embedder, once
    assert after["stats"]["adapter_switches"] >= before["stats"]["adapter_switches"] + 4
    assert after["adapters"]["alpha"]["loaded"] and after["adapters"]["beta"]["loaded"]


def test_each_adapter_keeps_its_own_context_so_a_switch_sets_nothing(engine: EngineClient) -> None:
    req = dict(prompt="Write one sentence about the sea.", max_tokens=4)
    engine.generate(GenerateRequest(**req, adapter="alpha"))
    engine.generate(GenerateRequest(**req, adapter="beta"))
    before = engine.info()
    assert sorted(before["contexts"], key=str) == [None, "alpha", "beta"]  # the base keeps the first
    for name in ("alpha", "beta", None, "alpha", "beta", "alpha"):
        engine.generate(GenerateRequest(**req, adapter=name))
    after = engine.info()
    assert after["stats"]["adapter_switches"] == before["stats"]["adapter_switches"] + 6
    assert after["stats"]["adapter_retargets"] == before["stats"]["adapter_retargets"]  # no graph re-reserved


@pytest.mark.parametrize("contexts", [0, 1])
def test_fewer_contexts_than_adapters_give_the_same_answers(
        contexts: int, engine: EngineClient, generator: ModelRecord, adapters_dir: Path) -> None:
    req = dict(prompt="Write one sentence about the sea.", max_tokens=12)
    order = ("alpha", "beta", None, "beta", "alpha", None)
    expected = [engine.generate(GenerateRequest(**req, adapter=name)).text for name in order]
    spec = EngineSpec(generator_path=str(generator.path), threads=2, n_ctx=1024, adapter_contexts=contexts,
                      adapters={"alpha": str(adapters_dir / "alpha.gguf"), "beta": str(adapters_dir / "beta.gguf")})
    with EngineClient(spec, request_timeout_s=120) as small:
        assert [small.generate(GenerateRequest(**req, adapter=name)).text for name in order] == expected
        info = small.info()
        assert len(info["contexts"]) == 1 + contexts
        # with one adapter context, each switch between alpha and beta re-targets it
        assert info["stats"]["adapter_retargets"] >= (5 if contexts == 0 else 3)


def test_unknown_adapter_named_in_error(engine: EngineClient) -> None:
    with pytest.raises(EngineRequestError, match=r"unknown adapter 'gamma' \(loaded: alpha, beta"):
        engine.generate(GenerateRequest(prompt="x", adapter="gamma"))


def test_info_reports_build_and_threads(engine: EngineClient) -> None:
    info = engine.info()
    assert info["gpu_offload_supported"] in (True, False)
    assert re.search(r"CPU|CUDA", info["system_info"])
    assert info["llama_cpp_python"] == "0.3.36"
