"""Filling a DataTable whose rows arrive after it is shown.

Textual's ``DataTable`` measures auto-width columns when it next idles, and keeps what it
rendered before (its caches are keyed by an update count that the measuring does not
change). A table of ``height: auto`` first shows its header alone; if the screen renders
between the rows going in and the measuring, that narrow header stays beside the wider
rows (a snapshot caught it on a loaded machine). :func:`fill_table` sizes every column
before the rows go in, as the auto width would: its label or widest cell.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.widgets import DataTable

__all__ = ["fill_table"]


def _cells(value: str) -> int:
    return Text.from_markup(value).cell_len  # a str cell is markup to DataTable


def fill_table(table: DataTable, columns: Sequence[tuple[str, int | None]],
               rows: Sequence[tuple[Sequence[str], str | None]]) -> None:
    """Replace the table's columns and rows: ``columns`` as (label, width or None for as wide as its content),
    ``rows`` as (cells, key)."""
    table.clear(columns=True)
    for at, (label, width) in enumerate(columns):
        if width is None:
            width = max([_cells(label), *(_cells(cells[at]) for cells, _ in rows)])
        table.add_column(label, width=width)
    for cells, key in rows:
        table.add_row(*cells, key=key)
