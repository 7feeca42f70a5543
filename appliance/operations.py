"""Moved to :mod:`appliance.app`: kept only while the command line and the TUI move over to it."""

from appliance.app.answers import record_feedback
from appliance.app.audit import check_audit, export_audit
from appliance.app.documents import (
                                     check_index,
                                     delete_document,
                                     ingest,
                                     list_documents,
                                     principal_of,
                                     search,
                                     show_document,
)
from appliance.app.specialists import run_specialist

__all__ = ["principal_of", "ingest", "delete_document", "check_index", "export_audit", "check_audit",
           "record_feedback", "search", "show_document", "list_documents", "run_specialist"]
