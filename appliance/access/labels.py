"""Access labels: an ordered classification level plus a set of compartments.

A principal may read a document when its level is at least the document's level and it
holds every compartment of the document. Documents with the same labels share one
*partition* (one Chroma collection, one full-text table), so retrieval searches only
the partitions a principal may read instead of filtering rows.

Label strings: ``LEVEL`` or ``LEVEL:COMP1,COMP2`` (``SECRET:CRYPTO,NUCLEAR``). Levels
match case-insensitively, with ``_`` standing for a space (``top_secret``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from appliance.errors import LabelError

__all__ = ["DEFAULT_LEVELS", "LevelScale", "Labels", "Principal", "parse_labels"]

DEFAULT_LEVELS = ("UNCLASSIFIED", "CONFIDENTIAL", "SECRET", "TOP SECRET")
MAX_LABEL_CHARS = 512
MAX_COMPARTMENTS = 32
_COMPARTMENT = re.compile(r"^[A-Z0-9](?:[A-Z0-9_-]{0,30}[A-Z0-9])?$")


@dataclass(frozen=True)
class LevelScale:
    """The facility's ordered levels, lowest first."""

    levels: tuple[str, ...] = DEFAULT_LEVELS

    def __post_init__(self) -> None:
        if not self.levels:
            raise LabelError("no classification levels configured")
        normal = [self._norm(x) for x in self.levels]
        if len(set(normal)) != len(normal):
            raise LabelError(f"classification levels repeat: {', '.join(self.levels)}")

    @staticmethod
    def _norm(level: str) -> str:
        return " ".join(level.replace("_", " ").upper().split())

    def canonical(self, level: str) -> str:
        want = self._norm(level)
        for known in self.levels:
            if self._norm(known) == want:
                return self._norm(known)
        raise LabelError(f"unknown classification level {level!r} (levels: {', '.join(self.levels)})")

    def rank(self, level: str) -> int:
        want = self.canonical(level)
        return [self._norm(x) for x in self.levels].index(want)


@dataclass(frozen=True)
class Labels:
    level: str
    compartments: frozenset[str] = frozenset()

    def __str__(self) -> str:
        return self.level + (":" + ",".join(sorted(self.compartments)) if self.compartments else "")

    @property
    def partition(self) -> str:
        """A stable collection / table name for documents with exactly these labels."""
        slug = re.sub(r"[^a-z0-9]+", "-", self.level.lower()).strip("-")
        return ".".join(["lbl", slug, *sorted(c.lower() for c in self.compartments)])


@dataclass(frozen=True)
class Principal:
    """Someone (or something) retrieving: a name, a level and compartments."""

    name: str
    level: str
    compartments: frozenset[str] = frozenset()

    def can_read(self, labels: Labels, scale: LevelScale) -> bool:
        return scale.rank(self.level) >= scale.rank(labels.level) and labels.compartments <= self.compartments


def _compartments(raw: Iterable[str], where: str) -> frozenset[str]:
    out = set()
    for item in raw:
        name = item.strip().upper()
        if not name:
            continue
        if not _COMPARTMENT.match(name):
            raise LabelError(f"{where}: bad compartment {item.strip()!r} (letters, digits, '-', '_'; max 32)")
        out.add(name)
    if len(out) > MAX_COMPARTMENTS:
        raise LabelError(f"{where}: {len(out)} compartments, over the {MAX_COMPARTMENTS} limit")
    return frozenset(out)


def parse_labels(text: str, scale: LevelScale = LevelScale()) -> Labels:
    """Parse ``LEVEL[:COMP,...]``; a clear :class:`LabelError` names what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise LabelError("empty label: expected LEVEL or LEVEL:COMPARTMENT,...")
    if len(text) > MAX_LABEL_CHARS:
        raise LabelError(f"label is {len(text)} characters, over the {MAX_LABEL_CHARS} limit")
    level, _, comps = text.partition(":")
    where = f"label {text.strip()!r}"
    if ":" in comps:
        raise LabelError(f"{where}: more than one ':'")
    try:
        canonical = scale.canonical(level)
    except LabelError as exc:
        raise LabelError(f"{where}: {exc}") from exc
    return Labels(level=canonical, compartments=_compartments(comps.split(","), where))
