"""Messages that worker threads post to the UI (they never touch a widget themselves)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual.message import Message

__all__ = ["Token", "Answered", "Failed", "Progressed", "PhaseProgressed", "Done"]


@dataclass
class Token(Message):
    """One streamed piece of the answer's draft."""

    text: str
    at: float  # time.perf_counter() when the engine's piece reached the worker


@dataclass
class Answered(Message):
    answer: Any  # appliance.agent.loop.Answer


@dataclass
class Failed(Message):
    """A worker's failure, for the central handler."""

    error: BaseException
    what: str


@dataclass
class Progressed(Message):
    done: int
    total: int | None


@dataclass
class PhaseProgressed(Message):
    """A step of long work that has named phases (a bundle's staging, verifying, ingesting ...)."""

    phase: str
    done: int
    total: int  # 0: not known


@dataclass
class Done(Message):
    what: str
    result: Any
