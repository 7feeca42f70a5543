"""Widgets shared by the screens."""

from appliance.tui.widgets.header import AppHeader
from appliance.tui.widgets.tables import fill_table

__all__ = ["AppHeader", "fill_table"]
