"""A second generator family: Gemma 3 270M (gemma3, Q4_K_M, no chat template of its own),
provisioned by `models fetch --with gemma3-270m` with the Gemma family template. The runtime
serves it as it serves SmolLM2: its profile, the template, stop markers, grammars, JSON
schemas, classify and the start-up self-test.

No test pins its text: it is a base model, and another CPU's kernels may change a greedy
token. What is asserted holds whatever it writes (the grammar's language, the schema's
shape, a label of the list, tokens of the right kind)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.errors import ModelStoreError
from appliance.runtime.client import EngineClient
from appliance.runtime.model_store import ModelRecord, ModelStore
from appliance.runtime.profiles import FAMILY_TEMPLATES
from appliance.runtime.protocol import EngineSpec, GenerateRequest
from appliance.runtime.selftest import SelfTest

GEMMA = "gemma3-270m"


@pytest.fixture(scope="module")
def gemma(model_store: ModelStore) -> ModelRecord:
    return model_store.get(GEMMA)  # provisioned by `make test-models`; missing is a failure, not a skip


@pytest.fixture(scope="module")
def client(gemma: ModelRecord, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineClient]:
    spec = EngineSpec(generator_path=str(gemma.path), generator_template=gemma.metadata["chat_template"],
                      threads=2, n_ctx=1024)
    with EngineClient(spec, log_path=tmp_path_factory.mktemp("gemma") / "host.log", request_timeout_s=120) as c:
        yield c


def test_profile_is_read_from_the_gguf_and_recorded(gemma: ModelRecord) -> None:
    assert gemma.architecture == "gemma3"
    assert gemma.metadata["profile"] == {"context_length": 32768, "template_source": "gemma",
                                         "stop": ["<end_of_turn>"]}
    assert gemma.metadata["chat_template"] == FAMILY_TEMPLATES["gemma"]


def test_import_without_a_template_is_refused_and_names_the_way_out(gemma: ModelRecord, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    with pytest.raises(ModelStoreError, match=r"refused as a generator: it has no chat template .*--template"):
        store.add_file(gemma.path, name="g", kind="generator", source="file:x")
    with pytest.raises(ModelStoreError, match="unknown template 'gemma4'"):
        store.add_file(gemma.path, name="g", kind="generator", source="file:x", template="gemma4")
    assert store.list() == []


def test_template_and_stop_markers_are_the_gemma_turns(client: EngineClient) -> None:
    info = client.info()
    assert info["chat_template"] == "given"
    assert info["stop_markers"] == ["<end_of_turn>"]
    assert len(info["stop_token_ids"]) == 2  # <eos> and <end_of_turn>, each one token of its vocabulary
    # the system text is folded into the first user turn (Gemma has no system role): it costs prompt tokens
    bare = client.generate(GenerateRequest(prompt="Name a colour.", max_tokens=1))
    with_system = client.generate(GenerateRequest(prompt="Name a colour.", system="Answer in one word.",
                                                  max_tokens=1))
    assert with_system.prompt_tokens > bare.prompt_tokens >= 8


def test_grammar_and_json_schema_constrain_it(client: EngineClient) -> None:
    r = client.generate(GenerateRequest(prompt="Is Paris in France? Answer yes or no.", max_tokens=4,
                                        grammar='root ::= "yes" | "no"'))
    assert r.text in ("yes", "no")
    schema = {"type": "object", "properties": {"room": {"type": "string", "maxLength": 12}}, "required": ["room"]}
    r = client.generate(GenerateRequest(prompt="Which room is the kiosk in? Reply as JSON.", max_tokens=48,
                                        json_schema=schema))
    assert isinstance(json.loads(r.text)["room"], str)


def test_classify_walks_only_the_labels(client: EngineClient) -> None:
    out = client.classify("Text: my card was stolen\nCategory:", ["lost_or_stolen_card", "exchange_rate", "top_up"])
    assert out["label"] in ("lost_or_stolen_card", "exchange_rate", "top_up")
    assert 0.0 < out["confidence"] <= 1.0


def test_startup_self_test_passes_with_it(gemma: ModelRecord, model_store: ModelStore, tmp_path: Path) -> None:
    spec = EngineSpec(generator_path=str(gemma.path), generator_template=gemma.metadata["chat_template"],
                      embedder_path=str(model_store.get("all-minilm-l6-v2").path), threads=2, n_ctx=1024)
    result = SelfTest(tmp_path / "selftest.json", start_timeout_s=120, request_timeout_s=120).ensure(spec)
    assert result.ok, result.error
    assert {m["role"] for m in result.models} == {"generator", "embedder"}
