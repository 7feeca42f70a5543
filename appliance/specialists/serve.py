"""Specialists on the appliance: fine-tuned adapters over the serving base, one call per text.

The registry is the model store: every adapter for the serving generator, with the task
and label set (or entity types) its GGUF carries (``appliance.task``, ``appliance.labels``,
``appliance.metrics``, written by :mod:`appliance.specialists.convert`). Adapters are
loaded once by the llama.cpp host and chosen per request, so the base is never reloaded.

* classify: the engine walks a trie of the labels' tokens (only label tokens allowed), so
  the answer is always a label; its confidence is the product of the renormalized token
  probabilities. Under ``threshold`` the specialist abstains (``label`` None).
* extract: generation under a JSON schema of ``{"text", "type"}`` items whose type is one
  of the adapter's entity types; every item is located in the input (in order), and an
  item the input does not contain is dropped, so offsets always point at the input.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from appliance.agent.specialists import Span as AgentSpan
from appliance.agent.specialists import SpecialistResult
from appliance.errors import (
    GGUFError,
    SpecialistError,  # defined with every other error class
)
from appliance.runtime.gguf_check import validate_gguf
from appliance.runtime.model_store import ModelRecord
from appliance.runtime.protocol import Engine, GenerateRequest
from appliance.specialists.train import classification_prompt, extraction_prompt

__all__ = ["SpecialistError", "SpecialistInfo", "Classification", "Extraction", "AdapterSpecialist",
           "read_specialist", "MAX_INPUT_CHARS"]

MAX_INPUT_CHARS = 4000



@dataclass(frozen=True)
class SpecialistInfo:
    name: str
    task: str  # classify | extract
    labels: tuple[str, ...]  # the label set, or the entity types
    base_sha256: str | None
    metrics: dict = field(default_factory=dict)
    sha256: str = ""

    def as_dict(self) -> dict:
        return {"name": self.name, "task": self.task, "labels": list(self.labels), "base_sha256": self.base_sha256,
                "metrics": self.metrics, "sha256": self.sha256}


@dataclass(frozen=True)
class Classification:
    label: str | None  # None: abstained (confidence under the threshold)
    best: str  # the likeliest label, even when abstaining
    confidence: float
    threshold: float
    seconds: float
    adapter: str
    tokens: int = 0  # generated: the label's tokens

    def as_dict(self) -> dict:
        return self.__dict__.copy()


@dataclass(frozen=True)
class Extraction:
    spans: list[AgentSpan]
    dropped: list[dict]  # items the model produced that the input does not contain (or of unknown type)
    seconds: float
    adapter: str
    tokens: int = 0  # generated: the JSON reply's tokens

    def as_dict(self) -> dict:
        return {"spans": [s.__dict__ for s in self.spans], "dropped": self.dropped, "seconds": self.seconds,
                "adapter": self.adapter}


def read_specialist(record: ModelRecord) -> SpecialistInfo | None:
    """The specialist an adapter record is, from its GGUF metadata (None: an adapter with no task)."""
    try:
        info = validate_gguf(record.path, expect="adapter")
    except GGUFError:
        return None
    task = info.get("appliance.task")
    if task not in ("classify", "extract"):
        return None
    try:
        labels = tuple(json.loads(str(info.get("appliance.labels") or "[]")))
        metrics = json.loads(str(info.get("appliance.metrics") or "{}"))
    except ValueError:
        return None
    base_sha256 = record.base_sha256 or str(info.get("adapter.base_sha256") or "") or None
    return SpecialistInfo(record.name, str(task), labels, base_sha256,
                          metrics if isinstance(metrics, dict) else {}, record.sha256)


def _check_input(text: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise SpecialistError("empty input: nothing to classify or extract")
    if len(text) > MAX_INPUT_CHARS:
        raise SpecialistError(f"input of {len(text)} characters, over the {MAX_INPUT_CHARS} limit")
    return text


def _occurrences(text: str, surface: str) -> list[int]:
    out, i = [], text.find(surface)
    while i >= 0:
        out.append(i)
        i = text.find(surface, i + 1)
    return out


class AdapterSpecialist:
    """One installed specialist, callable by the CLI, the TUI and the agent (``run``)."""

    def __init__(self, info: SpecialistInfo, engine: Callable[[], Engine], threshold: float = 0.5) -> None:
        self.info = info
        self.name = info.name
        self.task = info.task
        self._engine = engine
        self.threshold = threshold

    def classify(self, text: str) -> Classification:
        if self.task != "classify":
            raise SpecialistError(f"{self.name} is an {self.task} specialist, not a classifier")
        text = _check_input(text)
        started = time.perf_counter()
        out = self._engine().classify(classification_prompt(text), list(self.info.labels), adapter=self.name)
        conf = float(out["confidence"])
        return Classification(out["label"] if conf >= self.threshold else None, out["label"], conf, self.threshold,
                              time.perf_counter() - started, self.name, int(out.get("steps") or 0))

    def schema(self) -> dict:
        return {"type": "array", "maxItems": 32, "items": {
            "type": "object", "additionalProperties": False, "required": ["text", "type"],
            "properties": {"text": {"type": "string", "minLength": 1, "maxLength": 200},
                           "type": {"type": "string", "enum": list(self.info.labels)}}}}

    def extract(self, text: str) -> Extraction:
        if self.task != "extract":
            raise SpecialistError(f"{self.name} is a {self.task} specialist, not an extractor")
        text = _check_input(text)
        started = time.perf_counter()
        result = self._engine().generate(GenerateRequest(prompt=extraction_prompt(text), json_schema=self.schema(),
                                                          adapter=self.name, max_tokens=400))
        spans: list[AgentSpan] = []
        dropped: list[dict] = []
        try:
            items = json.loads(result.text)
        except ValueError:  # e.g. cut off at max_tokens: say so, it is not "no entities"
            items = []
            dropped.append({"text": result.text[:200], "type": "(the reply was not complete JSON)"})
        pos = 0
        for item in items if isinstance(items, list) else []:
            surface, kind = str(item.get("text", "")), str(item.get("type", ""))
            at = text.find(surface, pos) if surface.strip() else -1
            if at < 0 and surface.strip():  # earlier in the text, but never over a span already taken
                at = next((i for i in _occurrences(text, surface)
                           if all(i + len(surface) <= s.start or i >= s.end for s in spans)), -1)
            if at < 0 or kind not in self.info.labels:
                dropped.append({"text": surface, "type": kind})
                continue
            spans.append(AgentSpan(kind, surface, at, at + len(surface)))
            pos = max(pos, at + len(surface))
        spans.sort(key=lambda s: (s.start, s.end))
        return Extraction(spans, dropped, time.perf_counter() - started, self.name, result.completion_tokens)

    def run(self, text: str) -> SpecialistResult:
        """The agent's seam (:class:`appliance.agent.specialists.Specialist`)."""
        if self.task == "classify":
            c = self.classify(text)
            return SpecialistResult("classify", self.name, labels=[(c.best, c.confidence)] if c.label else [],
                                    tokens=c.tokens)
        e = self.extract(text)
        return SpecialistResult("extract", self.name, spans=e.spans, tokens=e.tokens)
