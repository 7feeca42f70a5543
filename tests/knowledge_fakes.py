"""Moved to :mod:`tests.helpers` (kept while test_tui.py still imports it from here)."""

from tests.helpers import DIM, fake_kb, hashed_embed

__all__ = ["DIM", "fake_kb", "hashed_embed"]
