"""Export the audit log for an officer to carry out and verify elsewhere.

An export directory holds:

* ``entries.jsonl``: the entries, one canonical JSON per line, byte for byte the leaves;
* ``checkpoint``: a checkpoint signed at export time (after the export's own entry);
* ``log.vkey``: the log's public key (compare it with the one on record);
* ``inclusion.jsonl``: when filtered, a proof per entry that it is in the checkpointed tree;
* ``previous-checkpoint`` and ``consistency.json``: with ``--since-checkpoint``, the
  earlier checkpoint and the proof that this log extends it (nothing removed or changed);
* ``manifest.json``: origin, size, filters, counts.

The directory is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.audit.checkpoint import open_checkpoint
from appliance.audit.log import AuditLog
from appliance.errors import AuditError

__all__ = ["ExportFilter", "export_log", "MAX_CHECKPOINT_BYTES"]

MAX_CHECKPOINT_BYTES = 64 * 1024


@dataclass(frozen=True)
class ExportFilter:
    user: str | None = None
    start: str | None = None  # ISO 8601 timestamps, compared as UTC
    end: str | None = None

    @property
    def active(self) -> bool:
        return any((self.user, self.start, self.end))

    def matches(self, entry: dict) -> bool:
        ts = entry.get("ts", "")
        return ((self.user is None or entry.get("user") == self.user)
                and (self.start is None or ts >= self.start) and (self.end is None or ts < self.end))

    def as_dict(self) -> dict:
        return {"user": self.user, "from": self.start, "to": self.end}


def normalise_time(text: str | None, what: str) -> str | None:
    """An ISO date or time as the log writes it (UTC, ``Z``), or AuditError naming ``what``."""
    if text is None:
        return None
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise AuditError(f"{what}: {text!r} is not an ISO 8601 date or time") from exc
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _b64(proof: list[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in proof]


def export_log(log: AuditLog, out: Path, *, by: str, since_checkpoint: bytes | None = None,
               filt: ExportFilter = ExportFilter(), progress: Callable[[int, int], None] | None = None) -> dict:
    """Write an export of ``log`` to ``out``; ``by`` is who asked (the caller has authorized them)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AuditError(f"{out} exists and is not an empty directory")
    previous = None
    if since_checkpoint is not None:
        if len(since_checkpoint) > MAX_CHECKPOINT_BYTES:
            raise AuditError(f"the earlier checkpoint is over {MAX_CHECKPOINT_BYTES} bytes")
        previous = open_checkpoint(since_checkpoint, log.signer.verifier, origin=log.origin)
    log.record("audit.export", by, filters=filt.as_dict(), since=previous.size if previous else None)
    note = log.checkpoint()
    cp = open_checkpoint(note, log.signer.verifier)
    if previous is not None and previous.size > cp.size:
        raise AuditError(f"the earlier checkpoint covers {previous.size} entries but the log holds {cp.size}: "
                         "the log has been truncated")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        kept = 0
        with open(tmp / "entries.jsonl", "wb") as entries, open(tmp / "inclusion.jsonl", "w") as inclusion:
            for e in log.entries(0, cp.size):
                if progress is not None and (e.seq % 1000 == 0 or e.seq == cp.size - 1):
                    progress(e.seq + 1, cp.size)
                if filt.active and not filt.matches(e.value()):
                    continue
                entries.write(e.data + b"\n")
                kept += 1
                if filt.active:
                    inclusion.write(json.dumps({"seq": e.seq, "proof": _b64(log.tree.inclusion_proof(e.seq, cp.size))})
                                    + "\n")
        if not filt.active:
            (tmp / "inclusion.jsonl").unlink()
        (tmp / "checkpoint").write_bytes(note)
        (tmp / "log.vkey").write_text(log.vkey + "\n")
        if previous is not None and since_checkpoint is not None:
            (tmp / "previous-checkpoint").write_bytes(since_checkpoint)
            proof = log.tree.consistency_proof(previous.size, cp.size) if 0 < previous.size < cp.size else []
            (tmp / "consistency.json").write_text(json.dumps({"size1": previous.size, "size2": cp.size,
                                                              "proof": _b64(proof)}))
        manifest = {"origin": log.origin, "size": cp.size, "entries": kept, "filtered": filt.active,
                    "filters": filt.as_dict(), "since": previous.size if previous else None,
                    "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
