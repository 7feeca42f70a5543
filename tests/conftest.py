"""Shared fixtures.

Tests never touch the developer's data directory or home: every test gets a fresh
``APPLIANCE_DATA_DIR`` and ``HOME`` under its tmp_path. Tests over the real models read
the store ``make test`` provisions (``.test-data/models``, or ``APPLIANCE_TEST_MODELS``);
if it is missing they fail with the command to run, they do not skip.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.runtime.client import EngineClient
from appliance.runtime.model_store import ModelRecord, ModelStore
from appliance.runtime.protocol import EngineSpec

REPO = Path(__file__).resolve().parent.parent
GENERATOR = "smollm2-135m-instruct"
EMBEDDER = "all-minilm-l6-v2"


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [v for v in os.environ if v.startswith("APPLIANCE_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("APPLIANCE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)  # CLI sessions go under HOME
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))


def test_models_dir() -> Path:
    return Path(os.environ.get("APPLIANCE_TEST_MODELS") or REPO / ".test-data" / "models")


test_models_dir.__test__ = False  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def model_store() -> ModelStore:
    root = test_models_dir()
    store = ModelStore(root)
    if not (root / "registry.db").is_file() or not store.has(GENERATOR) or not store.has(EMBEDDER):
        pytest.fail(f"the test model store {root} is not provisioned: run `make test-models` (make test does it)")
    return store


@pytest.fixture(scope="session")
def generator(model_store: ModelStore) -> ModelRecord:
    return model_store.get(GENERATOR)


@pytest.fixture(scope="session")
def embedder_record(model_store: ModelStore) -> ModelRecord:
    return model_store.get(EMBEDDER)


def make_random_adapter(base: Path, out: Path, *, seed: int, scale: float = 0.05, rank: int = 4,
                        targets: tuple[str, ...] = ("attn_q", "attn_v", "ffn_down"),
                        metadata: dict | None = None) -> Path:
    """A real (random) LoRA adapter GGUF that fits ``base``: large enough to change outputs."""
    from bench.adapters import random_adapter

    return random_adapter(base, out, rank=rank, seed=seed, scale=scale, targets=targets,
                          metadata={"adapter.test_seed": seed, **(metadata or {})})


@pytest.fixture(scope="session")
def adapters_dir(tmp_path_factory: pytest.TempPathFactory, generator: ModelRecord) -> Path:
    d = tmp_path_factory.mktemp("adapters")
    make_random_adapter(generator.path, d / "alpha.gguf", seed=1)
    make_random_adapter(generator.path, d / "beta.gguf", seed=2)
    return d


@pytest.fixture(scope="session")
def engine(generator: ModelRecord, embedder_record: ModelRecord, adapters_dir: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineClient]:
    """One real host for the session: the base, two adapters and the embedder."""
    log = tmp_path_factory.mktemp("host") / "host.log"
    spec = EngineSpec(generator_path=str(generator.path), embedder_path=str(embedder_record.path),
                      adapters={"alpha": str(adapters_dir / "alpha.gguf"), "beta": str(adapters_dir / "beta.gguf")},
                      threads=2, n_ctx=1024)
    client = EngineClient(spec, log_path=log, request_timeout_s=120)
    client.start()
    yield client
    client.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test has a deadline: 120 s (pyproject), or 1800 s for one marked slow (`make test-all`). A test
    that needs the provisioned models (its fixtures reach ``model_store``) is marked ``models``; the rest run
    on the scripted engine and the fakes (`make test-fast`)."""
    for item in items:
        if item.get_closest_marker("slow") is not None and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(1800))
        if "model_store" in getattr(item, "fixturenames", ()) and item.get_closest_marker("models") is None:
            item.add_marker(pytest.mark.models)


@pytest.fixture
def appliance(tmp_path: Path):  # noqa: ANN201 - Services
    """A fresh appliance on the scripted engine, with root (admin), olga (officer, SECRET:CRYPTO) and ann
    (analyst, SECRET)."""
    from appliance.config import load_settings
    from appliance.services import build_services
    from tests.helpers import PASS, ScriptedEngine

    s = build_services(load_settings({"APPLIANCE_DATA_DIR": str(tmp_path / "appliance")}), engine=ScriptedEngine())
    s.accounts().add("root", role="admin", level="TOP SECRET", passphrase=PASS, by=None)
    admin = s.accounts().get("root")
    s.accounts().add("olga", role="officer", level="SECRET", compartments=["CRYPTO"], passphrase=PASS, by=admin)
    s.accounts().add("ann", role="analyst", level="SECRET", passphrase=PASS, by=admin)
    yield s
    s.close()
