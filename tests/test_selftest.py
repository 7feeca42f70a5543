"""The start-up self-test: every serving model runs once in a throwaway host before any serves.

The crash is simulated by a host double (``tests/crashing_host.py``: the real host whose
first decode kills it with SIGSEGV, as the native AMX build did); everything else is real:
llama.cpp, the models, the model store, bundles, generations and the audit log.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.config import load_settings
from appliance.errors import BundleError, EngineSelfTestError
from appliance.runtime.build_info import CpuInfo, build_info, cpu_info
from appliance.runtime.model_store import ModelRecord, ModelStore
from appliance.runtime.protocol import EngineSpec
from appliance.runtime.selftest import EMBED_MARGIN, ModelIdentity, SelfTest, SelfTestResult, refusal
from appliance.services import build_services
from appliance.updates.apply import apply_bundle
from appliance.updates.check import trust_root
from tests.helpers import store_copy

REPO = Path(__file__).resolve().parent.parent
CRASHING = (sys.executable, str(REPO / "tests" / "crashing_host.py"))


def _spec(generator: ModelRecord, embedder: ModelRecord) -> EngineSpec:
    return EngineSpec(generator_path=str(generator.path), embedder_path=str(embedder.path), threads=2, n_ctx=512)


def _known(*records: ModelRecord) -> dict[str, tuple[str, str]]:
    return {str(r.path): (r.name, r.sha256) for r in records}


def _hosts_of(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (a leftover throwaway host would show here)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and " Z " not in stat:
                out.append(int(d.name))
    return out


@pytest.fixture
def new_hosts() -> Callable[[], list[int]]:
    """Child processes started during the test and still alive (the session's shared engine, made
    by an earlier test, is alive all along and is not this test's leftover)."""
    before = set(_hosts_of(os.getpid()))
    return lambda: [pid for pid in _hosts_of(os.getpid()) if pid not in before]


def test_a_pass_with_the_real_build_is_remembered_for_this_build_cpu_and_models(
        tmp_path: Path, generator: ModelRecord, embedder_record: ModelRecord,
        new_hosts: Callable[[], list[int]]) -> None:
    test = SelfTest(tmp_path / "selftest.json", log_path=tmp_path / "host.log")
    first = test.ensure(_spec(generator, embedder_record), _known(generator, embedder_record))
    assert first.ok and not first.cached and first.error is None
    assert first.details["embedding_dim"] == 384
    # a paraphrase is nearer than an unrelated sentence by far more than the bar (measured 0.6+)
    assert first.details["embedding_margin"] > EMBED_MARGIN
    assert "CPU" in first.details["system_info"]  # the host's own report of the kernels it runs
    assert [m["name"] for m in first.models] == [generator.name, embedder_record.name]
    again = test.ensure(_spec(generator, embedder_record), _known(generator, embedder_record))
    assert again.cached and again.key == first.key and again.checked_at == first.checked_at
    # another process (a new SelfTest over the same file) remembers it too
    assert SelfTest(tmp_path / "selftest.json").remembered(first.key) is not None
    assert new_hosts() == []  # the throwaway host is gone


def test_the_key_changes_with_the_models_the_libraries_the_cpu_and_offload(tmp_path: Path) -> None:
    test = SelfTest(tmp_path / "s.json")
    spec = EngineSpec(generator_path="g.gguf")
    models = [ModelIdentity("generator", "g", "a" * 64)]
    build = build_info()
    cpu = CpuInfo("x", frozenset({"avx2", "fma"}))
    key = test.key(spec, models, build, cpu)
    assert key == test.key(spec, list(models), build, cpu)
    assert key != test.key(spec, [ModelIdentity("generator", "g", "b" * 64)], build, cpu)
    assert key != test.key(spec, models, build, CpuInfo("x", frozenset({"avx2", "fma", "amx_int8"})))
    from dataclasses import replace

    assert key != test.key(spec, models, replace(build, library_digest="0" * 64), cpu)
    assert key != test.key(EngineSpec(generator_path="g.gguf", n_gpu_layers=-1), models, build, cpu)
    assert key != SelfTest(tmp_path / "s.json", host_command=CRASHING).key(spec, models, build, cpu)


def test_a_crash_on_the_first_decode_refuses_with_one_line_then_a_fixed_build_serves(
        tmp_path: Path, generator: ModelRecord, embedder_record: ModelRecord,
        new_hosts: Callable[[], list[int]]) -> None:
    state = tmp_path / "selftest.json"
    spec, known = _spec(generator, embedder_record), _known(generator, embedder_record)
    broken = SelfTest(state, log_path=tmp_path / "host.log", host_command=CRASHING)
    with pytest.raises(EngineSelfTestError) as err:
        broken.ensure(spec, known)
    line = str(err.value)
    assert "\n" not in line
    assert f"while decoding with {generator.name}" in line and "killed by SIGSEGV" in line
    cpu = cpu_info()
    assert cpu.model in line and all(flag in line for flag in cpu.relevant)  # the CPU and its features
    assert "llama-rebuild" in line and build_info().rebuild in line  # the command that rebuilds
    last = broken.last()
    assert last is not None and last["ok"] is False and last["stage"] == f"decoding with {generator.name}"
    assert json.loads(state.read_text())["passes"] == []  # a failure is never remembered as a pass
    assert new_hosts() == []
    # the build is fixed (the real host): the same models pass and the appliance serves again
    fixed = SelfTest(state, log_path=tmp_path / "host.log")
    assert fixed.ensure(spec, known).ok


def test_the_refusal_names_a_replaced_build_once_and_a_recorded_build_with_its_problem() -> None:
    failed = SelfTestResult(False, "k", "t", 0.1, "Some CPU", ["avx2"], "b", [], stage="decoding with g",
                            error="llama.cpp host died (killed by SIGSEGV) during generate")
    build = build_info()
    replaced = dataclasses.replace(build, recorded=True, matches=False, problem="the libraries were replaced")
    line = refusal(failed, replaced)
    assert line.count("the libraries were replaced") == 1 and "the host died (killed by SIGSEGV)" in line
    recorded = dataclasses.replace(build, recorded=True, matches=True, variant="portable", description="x86-64-v3",
                                   backend="cpu", key="abc", problem="the build uses AVX2, which this CPU lacks")
    line = refusal(failed, recorded)
    assert "portable x86-64-v3 (cpu), build abc; the build uses AVX2, which this CPU lacks." in line


def test_an_embedder_crash_is_named_as_such(tmp_path: Path, embedder_record: ModelRecord,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRASHING_HOST_ON", "embed")
    test = SelfTest(tmp_path / "s.json", host_command=CRASHING)
    result = test.run(EngineSpec(embedder_path=str(embedder_record.path)), _known(embedder_record))
    assert not result.ok and result.stage == f"embedding with {embedder_record.name}"
    assert "SIGSEGV" in (result.error or "")


def test_services_start_no_engine_when_the_selftest_fails(tmp_path: Path, model_store: ModelStore,
                                                          new_hosts: Callable[[], list[int]]) -> None:
    services = build_services(load_settings({"APPLIANCE_DATA_DIR": str(tmp_path / "data"),
                                             "APPLIANCE_MODELS_DIR": str(model_store.root)}))
    services.host_command = CRASHING
    try:
        with pytest.raises(EngineSelfTestError, match="start-up self-test"):
            services.engine()
        assert services._engine is None and new_hosts() == []
        with pytest.raises(EngineSelfTestError):  # remembered in this process: no second crash to find out
            services.engine()
        services.host_command = None  # the build is fixed
        services._selftest = None
        assert len(services.engine().embed(["hello"])[0]) == 384
    finally:
        services.close()


# -- a bundle whose model crashes the self-test ---------------------------------------------------


def _renamed_model(src: Path, dest: Path) -> Path:
    """The same model with one byte of its name changed: valid, and new to the store (another digest)."""
    data = bytearray(src.read_bytes())
    at = data.find(b"general.name")
    assert at > 0
    at = data.find(b"SmolLM", at)
    data[at] = ord("Z")
    dest.write_bytes(bytes(data))
    return dest


def test_a_bundle_model_that_crashes_the_selftest_leaves_store_and_generation_unchanged(
        tmp_path: Path, model_store: ModelStore, generator: ModelRecord,
        new_hosts: Callable[[], list[int]]) -> None:
    from appliance.updates.build import build_bundle, load_spec
    from appliance.updates.keys import init_keys
    from tests.helpers import BUILD_PASS as PASS
    from tests.helpers import PASS as ACCOUNT_PASS

    store = store_copy(model_store, tmp_path / "models")
    services = build_services(load_settings({"APPLIANCE_DATA_DIR": str(tmp_path / "data"),
                                             "APPLIANCE_MODELS_DIR": str(store.root)}))
    services.accounts().add("root", role="admin", level="TOP SECRET", passphrase=ACCOUNT_PASS, by=None)
    services.accounts().add("olga", role="officer", level="SECRET", passphrase=ACCOUNT_PASS,
                            by=services.accounts().get("root"))
    olga = services.accounts().get("olga")
    _renamed_model(generator.path, tmp_path / "new-generator.gguf")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "canteen.txt").write_text("The canteen serves lunch from noon until two.\n")
    (tmp_path / "spec.toml").write_text("""
[bundle]
name = "northgate-models"
appliance_class = "northgate"
release = 1
expires_days = 30

[[knowledge]]
collection = "handbook"
labels = "UNCLASSIFIED"
paths = ["docs/canteen.txt"]

[[models]]
name = "new-generator"
kind = "generator"
path = "new-generator.gguf"
""")
    init_keys(tmp_path / "keys", PASS)
    build_bundle(load_spec(tmp_path / "spec.toml"), tmp_path / "keys", PASS, tmp_path / "state", tmp_path / "b1")
    trust_root(services.update_site(), olga, tmp_path / "b1" / "metadata" / "1.root.json")
    models_before = [(r.name, r.sha256) for r in store.list()]
    blobs_before = sorted(p.name for p in store.blobs.iterdir())
    serving_before = services.generation()
    services.host_command = CRASHING
    try:
        with pytest.raises(BundleError) as err:
            apply_bundle(services.update_site(), olga, tmp_path / "b1")
        line = str(err.value)
        assert "\n" not in line and "self-test" in line and "killed by SIGSEGV" in line
        assert "decoding with new-generator" in line and "llama-rebuild" in line
        assert [(r.name, r.sha256) for r in store.list()] == models_before
        assert sorted(p.name for p in store.blobs.iterdir()) == blobs_before
        assert services.generation() == serving_before
        refused = [e.value() for e in services.audit().entries()][-1]
        assert refused["kind"] == "bundle.refused" and "self-test" in refused["reason"]
        assert new_hosts() == []
        # the build is fixed: the same bundle applies and the new model serves
        services.host_command = None
        services._selftest = None
        result = apply_bundle(services.update_site(), olga, tmp_path / "b1")
        assert result.generation == 1
        assert services.generation().models["generator"]["name"] == "new-generator"
        assert services.engine().generate(
            __import__("appliance.runtime.protocol", fromlist=["x"]).GenerateRequest(prompt="Hi", max_tokens=2)
        ).completion_tokens > 0
    finally:
        services.close()


# -- the CLI and doctor with a build that crashes --------------------------------------------------


WRAPPER = """
import sys
import appliance.runtime.client as client
client.HOST_COMMAND = (sys.executable, {crashing!r})
from appliance.cli import main
sys.argv = ["appliance", *sys.argv[1:]]
main()
"""


def _cli(args: list[str], tmp_path: Path, store: ModelStore, crashing: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env.update(APPLIANCE_DATA_DIR=str(tmp_path / "data"), APPLIANCE_MODELS_DIR=str(store.root), COLUMNS="200")
    cmd = [sys.executable, "-c", WRAPPER.format(crashing=CRASHING[1])] if crashing else \
        [sys.executable, "-m", "appliance"]
    return subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=110, cwd=REPO)


def test_doctor_and_generate_refuse_with_one_line_when_the_build_crashes(tmp_path: Path,
                                                                        model_store: ModelStore) -> None:
    store = store_copy(model_store, tmp_path / "models")
    (store.root / "selftest.json").unlink(missing_ok=True)
    gen = _cli(["generate", "Say hello", "--max-tokens", "4"], tmp_path, store, crashing=True)
    assert gen.returncode == 2
    lines = gen.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: llama.cpp failed its start-up self-test"), gen.stderr
    assert "killed by SIGSEGV" in lines[0] and "llama-rebuild" in lines[0]
    doc = _cli(["doctor", "--json"], tmp_path, store, crashing=True)
    assert doc.returncode == 1
    report = json.loads(doc.stdout)
    assert report["selftest"]["ok"] is False and "SIGSEGV" in report["selftest"]["error"]
    assert report["cpu"]["features"] == cpu_info().relevant
    assert report["llama_build"]["variant"] in {"portable", "compat"}
    assert any("start-up self-test" in p for p in report["problems"])
    assert "engine" not in report  # the live probe never ran on a build that crashed
    # fixed: the real host; doctor passes and shows the build and the self-test
    ok = _cli(["doctor", "--json"], tmp_path, store, crashing=False)
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
    report = json.loads(ok.stdout)
    assert report["selftest"]["ok"] is True and report["engine"]["ok"] is True
    assert report["llama_build"]["matches"] is True and report["llama_build"]["compiled"]
    assert "CPU" in report["engine"]["system_info"]
    text = _cli(["doctor"], tmp_path, store, crashing=False)
    assert "self-test passed" in text.stdout and "llama.cpp build" in text.stdout, text.stdout
