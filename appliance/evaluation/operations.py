"""Moved to :mod:`appliance.app.evaluation`: kept only while the command line and the TUI move over to it."""

from appliance.app.evaluation import delete_set, export_set, import_set, run_set, set_from_feedback

__all__ = ["import_set", "set_from_feedback", "export_set", "delete_set", "run_set"]
