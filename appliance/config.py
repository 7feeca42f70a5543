"""Configuration: one TOML file plus ``APPLIANCE_*`` environment overrides.

Resolution order (later wins): built-in defaults, the TOML file, environment variables.

* ``APPLIANCE_DATA_DIR`` picks the data directory. Default: ``./var`` inside a source
  checkout (development), ``/var/lib/appliance`` when installed.
* ``APPLIANCE_MODELS_DIR`` puts the model store elsewhere (default ``<data_dir>/models``),
  for example on a separate volume.
* ``APPLIANCE_CONFIG`` names the TOML file. Default: ``<data_dir>/appliance.toml`` when it
  exists, else none.
* ``APPLIANCE_SESSION`` carries a login session token (``appliance login --print-token``).
* ``APPLIANCE_<SECTION>_<KEY>`` overrides one key, e.g. ``APPLIANCE_RUNTIME_N_CTX=4096``.

Unknown sections, keys or variables and out-of-range values are refused with a
:class:`~appliance.errors.ConfigError` naming the file or variable, the key and the value.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.errors import ConfigError

__all__ = ["Settings", "RuntimeSettings", "Limits", "AccessSettings", "AuditSettings", "AgentSettings",
           "UpdatesSettings",
           "SpecialistSettings",
           "KnowledgeSettings",
           "load_settings",
           "default_data_dir"]

MAX_CONFIG_BYTES = 1 << 20
ENV_PREFIX = "APPLIANCE_"
SPECIAL_ENV = {"APPLIANCE_DATA_DIR", "APPLIANCE_CONFIG", "APPLIANCE_MODELS_DIR", "APPLIANCE_SESSION",
               "APPLIANCE_FAULT_AT"}


@dataclass(frozen=True)
class RuntimeSettings:
    """How the llama.cpp host runs."""

    generator: str = "smollm2-135m-instruct"
    embedder: str = "all-minilm-l6-v2"
    reranker: str = "scifact-minilm-reranker"  # "": no reranking
    verifier: str = ""  # the entailment judge's name in the store; "": none (the default, see the README)
    threads: int = 0  # 0: one per core
    n_ctx: int = 2048
    n_batch: int = 512
    adapter_contexts: int = 2  # contexts kept with an adapter set (each costs its KV cache)
    embed_n_ctx: int = 512  # tokens per embedding decode (many short texts share one)
    flash_attn: bool = True
    n_gpu_layers: int = 0  # -1: offload every layer (needs a CUDA build)
    main_gpu: int = 0
    max_tokens: int = 256
    temperature: float = 0.0
    seed: int = 1234
    request_timeout_s: float = 300.0
    start_timeout_s: float = 120.0

    def checks(self) -> list[tuple[str, bool, str]]:
        return [
            ("threads", 0 <= self.threads <= 1024, "an integer from 0 to 1024"),
            ("n_ctx", 128 <= self.n_ctx <= 1 << 20, "an integer from 128 to 1048576"),
            ("n_batch", 32 <= self.n_batch <= 1 << 16, "an integer from 32 to 65536"),
            ("adapter_contexts", 0 <= self.adapter_contexts <= 64, "an integer from 0 to 64"),
            ("embed_n_ctx", 512 <= self.embed_n_ctx <= 1 << 20, "an integer from 512 to 1048576"),
            ("n_gpu_layers", self.n_gpu_layers >= -1, "-1 (all) or a count >= 0"),
            ("main_gpu", self.main_gpu >= 0, "a GPU index >= 0"),
            ("max_tokens", 1 <= self.max_tokens <= 1 << 16, "an integer from 1 to 65536"),
            ("temperature", 0.0 <= self.temperature <= 5.0, "a number from 0 to 5"),
            ("request_timeout_s", 0 < self.request_timeout_s <= 86400, "seconds, > 0"),
            ("start_timeout_s", 0 < self.start_timeout_s <= 3600, "seconds, > 0"),
            ("generator", bool(self.generator.strip()), "a model name"),
            ("embedder", bool(self.embedder.strip()), "a model name"),
        ]


@dataclass(frozen=True)
class Limits:
    """Size limits on untrusted input reaching the runtime."""

    max_model_bytes: int = 16 * 2**30
    max_adapter_bytes: int = 1 * 2**30
    max_prompt_chars: int = 200_000
    max_schema_bytes: int = 64 * 2**10
    max_grammar_bytes: int = 64 * 2**10
    max_embed_texts: int = 10_000
    max_embed_chars: int = 100_000
    max_stop_sequences: int = 16

    def checks(self) -> list[tuple[str, bool, str]]:
        return [(f.name, getattr(self, f.name) > 0, "an integer > 0") for f in dataclasses.fields(self)]


@dataclass(frozen=True)
class AccessSettings:
    """Classification levels (lowest first), login lockout and idle timeout."""

    levels: tuple[str, ...] = ("UNCLASSIFIED", "CONFIDENTIAL", "SECRET", "TOP SECRET")
    max_failures: int = 5  # failed logins in a row before the account locks
    lockout_s: int = 900
    idle_timeout_s: int = 900  # a login session unused this long ends
    min_passphrase_chars: int = 12

    def checks(self) -> list[tuple[str, bool, str]]:
        normal = [" ".join(x.replace("_", " ").upper().split()) for x in self.levels]
        positive = [(name, getattr(self, name) > 0, "an integer > 0")
                    for name in ("max_failures", "lockout_s", "idle_timeout_s", "min_passphrase_chars")]
        return positive + [("levels", bool(self.levels) and all(normal) and len(set(normal)) == len(normal),
                 "a non-empty list of distinct level names")]


@dataclass(frozen=True)
class AuditSettings:
    """The audit log: how often it checkpoints and whether it keeps answers or their digests."""

    checkpoint_every: int = 1000  # entries between signed checkpoints (one is also taken on every export)
    answers: str = "digest"  # digest: SHA-256 of each answer; text: the answer itself

    def checks(self) -> list[tuple[str, bool, str]]:
        return [("checkpoint_every", self.checkpoint_every > 0, "an integer > 0"),
                ("answers", self.answers in ("digest", "text"), '"digest" or "text"')]


@dataclass(frozen=True)
class UpdatesSettings:
    """Signed bundles: which appliance class this box is (a bundle for another class is refused)."""

    appliance_class: str = "northgate"
    keep_generations: int = 3  # the serving generation and the ones before it, for rollback

    def checks(self) -> list[tuple[str, bool, str]]:
        import re as _re

        return [("appliance_class", bool(_re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,62}", self.appliance_class)),
                 "1-63 of a-z 0-9 . _ -"),
                ("keep_generations", 2 <= self.keep_generations <= 20, "2 to 20")]


@dataclass(frozen=True)
class SpecialistSettings:
    """Fine-tuned specialists: when a classifier abstains, and how many texts a call takes."""

    abstain_threshold: float = 0.5  # a classification less confident than this is no answer
    max_texts: int = 10_000  # texts in one `classify --file` / `extract --file`

    def checks(self) -> list[tuple[str, bool, str]]:
        return [("abstain_threshold", 0 <= self.abstain_threshold <= 1, "from 0 to 1"),
                ("max_texts", 1 <= self.max_texts <= 1_000_000, "from 1 to 1000000")]


@dataclass(frozen=True)
class EvaluationSettings:
    """The drift gate: evaluation sets run after every bundle apply, and what a drop does."""

    gate_sets: tuple[str, ...] = ()  # evaluation set names; none: no gate
    gate_action: str = "rollback"  # rollback: the previous generation serves again; hold: also, until accepted
    max_drop: float = 0.05  # a quality figure (accuracy, F1, groundedness ...) falling by more fails the gate
    drop_thresholds: tuple[str, ...] = ()  # per figure, "metric=drop", e.g. "groundedness=0.02"
    gate_limit: int = 0  # items of each kind a gate run takes (0: all)

    def thresholds(self) -> dict[str, float]:
        return {k.strip(): float(v) for k, _, v in (t.partition("=") for t in self.drop_thresholds)}

    def checks(self) -> list[tuple[str, bool, str]]:
        try:
            ok = all(0 <= v <= 1 for v in self.thresholds().values())
        except ValueError:
            ok = False
        return [("gate_action", self.gate_action in ("rollback", "hold"), '"rollback" or "hold"'),
                ("max_drop", 0 <= self.max_drop <= 1, "from 0 to 1"),
                ("drop_thresholds", ok, 'a list of "metric=drop" with drops from 0 to 1'),
                ("gate_limit", 0 <= self.gate_limit <= 100_000, "from 0 to 100000")]


@dataclass(frozen=True)
class AgentSettings:
    """The question-answering loop: budgets, the evidence rule, the verification policy."""

    k: int = 4  # passages retrieved per query
    max_sub_questions: int = 3
    max_steps: int = 24
    max_tokens: int = 160  # generated, over the whole request
    max_seconds: float = 30.0
    evidence_corroborated: float = 0.5  # relevance for a passage both searches rank first
    evidence_single: float = 0.7  # relevance for a passage only one search ranks first
    # with the reranker, a passage its logit puts at least evidence_rerank also counts as evidence (beside
    # the rule above); off by default: set on SciFact claims 0-299 it did not hold on held-out claims (README)
    evidence_by_rerank: bool = False
    evidence_rerank: float = 13.7
    quote_by_rerank: bool = False  # choose quoted sentences with the reranker (off: see the README)
    quote_rerank: float = 0.0  # ... its logit for a sentence to be quoted as the answer
    entailment: bool = True  # answer sentences must be entailed by their passage (needs the verifier)
    entail_threshold: float = 0.0  # the entailment judge's logit for a sentence to pass
    # the contrast check (appliance/agent/contrast.py): a sentence is refused when the generator finds the
    # same sentence with one value, "not" or opposite changed likelier after its passage by more than
    # contrast_margin (natural log); the margin is calibrated on generated pairs (README, "Verification")
    contrast: bool = True
    contrast_margin: float = 1.0
    support_threshold: float = 0.55
    policy: str = "block"  # block: drop unsupported sentences; flag: keep them marked
    hyde: bool = True

    def checks(self) -> list[tuple[str, bool, str]]:
        return [("k", 1 <= self.k <= 50, "from 1 to 50"),
                ("max_sub_questions", 1 <= self.max_sub_questions <= 10, "from 1 to 10"),
                ("max_steps", 3 <= self.max_steps <= 200, "from 3 to 200"),
                ("max_tokens", 16 <= self.max_tokens <= 4096, "from 16 to 4096"),
                ("max_seconds", 1 <= self.max_seconds <= 600, "from 1 to 600"),
                ("evidence_corroborated", 0 <= self.evidence_corroborated <= 1, "from 0 to 1"),
                ("evidence_single", 0 <= self.evidence_single <= 1, "from 0 to 1"),
                ("evidence_rerank", -50 <= self.evidence_rerank <= 50, "a logit from -50 to 50"),
                ("quote_rerank", -50 <= self.quote_rerank <= 50, "a logit from -50 to 50"),
                ("entail_threshold", -50 <= self.entail_threshold <= 50, "a logit from -50 to 50"),
                ("contrast_margin", -20 <= self.contrast_margin <= 20, "from -20 to 20"),
                ("support_threshold", 0 <= self.support_threshold <= 1, "from 0 to 1"),
                ("policy", self.policy in ("block", "flag"), '"block" or "flag"')]


@dataclass(frozen=True)
class KnowledgeSettings:
    """Ingestion and retrieval."""

    chunk_chars: int = 900
    chunk_max_chars: int = 1500
    chunk_overlap_sentences: int = 1
    candidates: int = 50  # per partition and per method before fusion
    rrf_k: int = 20  # SciFact train claims: 20 gives nDCG@10 0.715, 60 gives 0.703
    dense_weight: float = 1.0
    bm25_weight: float = 1.0
    max_chunks_per_doc: int = 1  # in a result list
    rerank: bool = True  # rerank the fused candidates with the cross-encoder, when one is provisioned
    rerank_candidates: int = 30  # how many fused candidates the cross-encoder scores
    rerank_rank_weight: float = 4.0  # minus this x log(fused rank) is added to the reranker's logit (README)
    max_file_bytes: int = 64 * 2**20
    max_pages: int = 2_000
    max_text_chars: int = 5_000_000
    embed_batch: int = 256
    retire_grace_s: float = 30.0  # old vectors kept this long after a replace, for readers mid-query

    def checks(self) -> list[tuple[str, bool, str]]:
        return [
            ("chunk_chars", 100 <= self.chunk_chars <= 20_000, "from 100 to 20000"),
            ("chunk_max_chars", self.chunk_chars <= self.chunk_max_chars <= 50_000, "from chunk_chars to 50000"),
            ("chunk_overlap_sentences", 0 <= self.chunk_overlap_sentences <= 5, "from 0 to 5"),
            ("candidates", 1 <= self.candidates <= 1000, "from 1 to 1000"),
            ("rrf_k", 1 <= self.rrf_k <= 1000, "from 1 to 1000"),
            ("dense_weight", 0 <= self.dense_weight <= 10, "from 0 to 10"),
            ("bm25_weight", 0 <= self.bm25_weight <= 10, "from 0 to 10"),
            ("max_chunks_per_doc", 1 <= self.max_chunks_per_doc <= 100, "from 1 to 100"),
            ("rerank_candidates", 1 <= self.rerank_candidates <= 200, "from 1 to 200"),
            ("rerank_rank_weight", 0 <= self.rerank_rank_weight <= 10, "from 0 to 10"),
            ("max_file_bytes", self.max_file_bytes > 0, "> 0"),
            ("max_pages", self.max_pages > 0, "> 0"),
            ("max_text_chars", self.max_text_chars > 0, "> 0"),
            ("embed_batch", 1 <= self.embed_batch <= 10_000, "from 1 to 10000"),
            ("retire_grace_s", 0 <= self.retire_grace_s <= 3600, "seconds from 0 to 3600"),
        ]


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    limits: Limits = field(default_factory=Limits)
    access: AccessSettings = field(default_factory=AccessSettings)
    knowledge: KnowledgeSettings = field(default_factory=KnowledgeSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    agent: AgentSettings = field(default_factory=AgentSettings)
    updates: UpdatesSettings = field(default_factory=UpdatesSettings)
    specialists: SpecialistSettings = field(default_factory=SpecialistSettings)
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    config_file: Path | None = None
    models_dir_override: Path | None = None

    @property
    def models_dir(self) -> Path:
        return self.models_dir_override or self.data_dir / "models"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "log"

    @property
    def knowledge_dir(self) -> Path:
        """The serving generation's knowledge (``current`` is a symlink a bundle apply switches)."""
        return self.data_dir / "current" / "knowledge"


SECTIONS: dict[str, type] = {
    "runtime": RuntimeSettings,
    "limits": Limits,
    "access": AccessSettings,
    "knowledge": KnowledgeSettings,
    "audit": AuditSettings,
    "agent": AgentSettings,
    "updates": UpdatesSettings,
    "specialists": SpecialistSettings,
    "evaluation": EvaluationSettings,
}


def default_data_dir() -> Path:
    """``<checkout>/var`` when running from a source checkout, else ``/var/lib/appliance``."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "appliance").is_dir():
        return checkout / "var"
    return Path("/var/lib/appliance")


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from defaults, the TOML file and ``APPLIANCE_*`` variables."""
    env = os.environ if environ is None else environ
    data_dir = Path(env["APPLIANCE_DATA_DIR"]) if env.get("APPLIANCE_DATA_DIR") else default_data_dir()
    config_file: Path | None = None
    if env.get("APPLIANCE_CONFIG"):
        config_file = Path(env["APPLIANCE_CONFIG"])
        if not config_file.is_file():
            raise ConfigError(f"APPLIANCE_CONFIG: no such file: {config_file}")
    elif (data_dir / "appliance.toml").is_file():
        config_file = data_dir / "appliance.toml"

    values: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    if config_file is not None:
        doc = _read_toml(config_file)
        where = str(config_file)
        for key, value in doc.items():
            if key == "data_dir" and "APPLIANCE_DATA_DIR" not in env:
                if not isinstance(value, str) or not value:
                    raise ConfigError(f"{where}: data_dir: expected a path string, got {value!r}")
                data_dir = Path(value)
                continue
            if key == "data_dir":
                continue
            if key not in SECTIONS:
                raise ConfigError(f"{where}: unknown section [{key}] (known: {', '.join(SECTIONS)})")
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: [{key}] must be a table")
            for k, v in value.items():
                values[key][k] = _coerce(SECTIONS[key], k, v, f"{where}: [{key}] {k}")

    for var, raw in env.items():
        if not var.startswith(ENV_PREFIX) or var in SPECIAL_ENV:
            continue
        section, key = _split_env(var)
        values[section][key] = _coerce(SECTIONS[section], key, raw, var, from_env=True)

    built: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        obj = cls(**values[name])
        for key, ok, expected in obj.checks():
            if not ok:
                raise ConfigError(f"[{name}] {key}: expected {expected}, got {getattr(obj, key)!r}")
        built[name] = obj
    models_dir = Path(env["APPLIANCE_MODELS_DIR"]) if env.get("APPLIANCE_MODELS_DIR") else None
    return Settings(data_dir=data_dir, config_file=config_file, models_dir_override=models_dir, **built)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: config file is {size} bytes, over the {MAX_CONFIG_BYTES} byte limit")
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc


def _split_env(var: str) -> tuple[str, str]:
    rest = var[len(ENV_PREFIX) :].lower()
    for section in SECTIONS:
        if rest.startswith(section + "_"):
            return section, rest[len(section) + 1 :]
    known = ", ".join(f"{ENV_PREFIX}{s.upper()}_*" for s in SECTIONS)
    raise ConfigError(f"{var}: unknown variable (known: {', '.join(sorted(SPECIAL_ENV))}, {known})")


def _coerce(cls: type, key: str, value: Any, where: str, from_env: bool = False) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if key not in fields:
        raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(fields)})")
    hints = typing.get_type_hints(cls)
    kind = hints[key]
    if isinstance(kind, types.UnionType):  # pragma: no cover - no optional fields yet
        kind = next(t for t in typing.get_args(kind) if t is not type(None))
    try:
        if typing.get_origin(kind) is tuple:
            if from_env and isinstance(value, str):
                value = [v.strip() for v in value.split(",")]
            if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
                raise ValueError
            return tuple(value)
        if kind is bool:
            if isinstance(value, bool):
                return value
            if from_env and str(value).lower() in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
                return str(value).lower() in {"1", "true", "yes", "on"}
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or not (isinstance(value, int) or from_env):
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(value, bool) or not (isinstance(value, (int, float)) or from_env):
                raise ValueError
            return float(value)
        if kind is str:
            if not isinstance(value, str):
                raise ValueError
            return value
    except ValueError:
        pass
    name = "a list of strings" if typing.get_origin(kind) is tuple else kind.__name__
    raise ConfigError(f"{where}: expected {name}, got {value!r}")
