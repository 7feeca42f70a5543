"""Messages more than one screen handles (each screen defines its own next to it).

Worker threads post messages; they never touch a widget themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

__all__ = ["PhaseProgressed"]


@dataclass
class PhaseProgressed(Message):
    """A step of long work that has named phases (a bundle's staging, verifying, ingesting ...)."""

    phase: str
    done: int
    total: int  # 0: not known
