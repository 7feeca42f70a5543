"""A deterministic bag-of-words embedder: a fake at the engine seam for fast logic tests.

Every capability tested with it is also tested over the real engine (test_knowledge_real).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from appliance.access.labels import LevelScale
from appliance.config import KnowledgeSettings
from appliance.knowledge.base import KnowledgeBase

DIM = 64


def hashed_embed(texts: Sequence[str]) -> list[list[float]]:
    out = []
    for text in texts:
        v = np.zeros(DIM, dtype=np.float32)
        for word in re.findall(r"\w+", text.lower()):
            v[zlib.crc32(word.encode()) % DIM] += 1.0
        n = np.linalg.norm(v)
        out.append((v / n if n else v + 1.0 / np.sqrt(DIM)).tolist())
    return out


def fake_kb(root: Path, **settings: object) -> KnowledgeBase:
    return KnowledgeBase(root, hashed_embed, scale=LevelScale(), settings=KnowledgeSettings(**settings))
