"""Widgets shared by the screens."""

from appliance.tui.widgets.header import AppHeader

__all__ = ["AppHeader"]
