"""Verify an audit export anywhere: needs only the standard library and ``cryptography``.

``python -m appliance.audit.verify DIR [--previous-checkpoint FILE] [--key VKEY_FILE]``

Checks, naming the first thing that fails:

* the checkpoint is well formed and signed by the log key (the pinned ``--key`` if
  given, else the export's ``log.vkey``: compare its fingerprint with the one on record);
* unfiltered: the entries hash to exactly the checkpoint's root, so they are byte for
  byte what the appliance wrote and signed (when they do not, every line is parsed to
  name the first entry that is not canonical, numbered in order, or present);
* filtered: every entry is canonical JSON, numbered in order, matches the stated
  filter, and has an inclusion proof to the checkpoint's root;
* with an earlier checkpoint: same log, not shorter, and the consistency proof shows
  the new log extends the old one unchanged (a truncated or rewritten log fails).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from appliance.audit.canonical import parse_canonical
from appliance.audit.checkpoint import Checkpoint, Verifier, open_checkpoint, same_tree, verifier_from_vkey
from appliance.audit.merkle import leaf_hash, root, verify_inclusion
from appliance.errors import AuditError, AuditVerifyError

__all__ = ["VerifyReport", "verify_export", "main"]

MAX_ENTRY_BYTES = 256 * 1024
MAX_SMALL_FILE = 64 * 1024
MAX_ENTRIES_FILE = 8 * 2**30


@dataclass(frozen=True)
class VerifyReport:
    origin: str
    size: int
    entries: int
    filtered: bool
    key_id: str
    previous_size: int | None


def _read(path: Path, limit: int) -> bytes:
    if not path.is_file():
        raise AuditVerifyError(f"{path.name} is missing from the export")
    if path.stat().st_size > limit:
        raise AuditVerifyError(f"{path.name} is over the {limit} byte limit")
    return path.read_bytes()


def _hashes(values: object, what: str) -> list[bytes]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise AuditVerifyError(f"{what} is not a list of base64 hashes")
    try:
        return [base64.b64decode(v, validate=True) for v in values]
    except (binascii.Error, ValueError) as exc:
        raise AuditVerifyError(f"{what} holds a hash that is not base64") from exc


def _verifier(directory: Path, key_file: Path | None) -> Verifier:
    text = _read(key_file or directory / "log.vkey", MAX_SMALL_FILE).decode("ascii", "replace").strip()
    return verifier_from_vkey(text)


def verify_export(directory: Path, *, previous: bytes | None = None, key_file: Path | None = None) -> VerifyReport:
    verifier = _verifier(directory, key_file)
    manifest = json.loads(_read(directory / "manifest.json", MAX_SMALL_FILE))
    cp = open_checkpoint(_read(directory / "checkpoint", MAX_SMALL_FILE), verifier)
    if manifest.get("origin") != cp.origin or manifest.get("size") != cp.size:
        raise AuditVerifyError("manifest.json does not agree with the checkpoint")
    filtered = bool(manifest.get("filtered"))
    filters = manifest.get("filters") or {}
    if filtered and not any(filters.get(k) for k in ("user", "from", "to")):
        raise AuditVerifyError("manifest.json says filtered but names no filter: a full export must hold every entry")
    entries_path = directory / "entries.jsonl"
    if not entries_path.is_file() or entries_path.stat().st_size > MAX_ENTRIES_FILE:
        raise AuditVerifyError("entries.jsonl is missing or over its size limit")
    proofs: dict[int, list[bytes]] = {}
    if filtered:
        for n, line in enumerate(_read(directory / "inclusion.jsonl", MAX_ENTRIES_FILE).splitlines(), 1):
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("seq"), int) or row["seq"] in proofs:
                raise AuditVerifyError(f"inclusion.jsonl line {n} is malformed or repeats an entry")
            proofs[row["seq"]] = _hashes(row.get("proof"), f"inclusion proof of entry {row['seq']}")
    if not filtered:
        count = _unfiltered(entries_path, cp)
    else:
        count = _entries(entries_path, cp, filtered, filters, proofs)
    if filtered and proofs:
        raise AuditVerifyError(f"inclusion proofs for entries not in the export: {sorted(proofs)[:5]}")
    if manifest.get("entries") != count:
        raise AuditVerifyError(f"manifest.json says {manifest.get('entries')} entries, the export holds {count}")
    prev = _previous(directory, previous, verifier, cp)
    return VerifyReport(cp.origin, cp.size, count, filtered, verifier.key_id.hex(), prev.size if prev else None)


def _unfiltered(path: Path, cp: Checkpoint) -> int:
    """Hash every line as a leaf; if they give the signed root, the export is exactly what was signed.

    Only when they do not is every line parsed, to say which entry is wrong.
    """
    sha256 = hashlib.sha256
    with open(path, "rb") as fh:
        leaves = [sha256(b"\x00" + line[:-1]).digest() for line in fh]
    whole = True  # the last line ends with a newline (an empty file is whole)
    if path.stat().st_size:
        with open(path, "rb") as fh:
            fh.seek(-1, 2)
            whole = fh.read(1) == b"\n"
    if whole and len(leaves) == cp.size and root(leaves) == cp.root:
        return len(leaves)
    _entries(path, cp, False, {}, {})  # names the first bad entry, if one is
    if len(leaves) != cp.size:
        raise AuditVerifyError(f"the export holds {len(leaves)} entries, the checkpoint {cp.size}")
    raise AuditVerifyError("the entries do not hash to the checkpoint's root")


def _entries(path: Path, cp: Checkpoint, filtered: bool, filters: dict, proofs: dict[int, list[bytes]]) -> int:
    """Parse and check every line; returns the count (raises on the first problem)."""
    last, count = -1, 0
    with open(path, "rb") as fh:
        for n, line in enumerate(fh, 1):
            count = n
            if not line.endswith(b"\n"):
                raise AuditVerifyError(f"entries.jsonl line {n} is cut short (no newline)")
            data = line[:-1]
            try:
                entry = parse_canonical(data, MAX_ENTRY_BYTES)
            except AuditVerifyError as exc:
                raise AuditVerifyError(f"entries.jsonl line {n}: {exc}") from exc
            seq = entry.get("seq") if isinstance(entry, dict) else None
            if not isinstance(seq, int) or seq <= last or seq >= cp.size:
                raise AuditVerifyError(f"entries.jsonl line {n}: entry number {seq!r} is out of order, repeated "
                                       f"or beyond the checkpoint ({cp.size} entries)")
            if not filtered and seq != last + 1:
                raise AuditVerifyError(f"entries.jsonl line {n}: expected entry {last + 1}, found {seq} "
                                       "(entries missing, moved or repeated)")
            last = seq
            if filtered:
                assert isinstance(entry, dict)  # seq above is an int only when the entry is an object
                _check_filter(entry, filters, n)
                if seq not in proofs:
                    raise AuditVerifyError(f"entry {seq} has no inclusion proof")
                try:
                    verify_inclusion(leaf_hash(data), seq, cp.size, proofs.pop(seq), cp.root)
                except AuditVerifyError as exc:
                    raise AuditVerifyError(f"entry {seq} is not in the checkpointed log: {exc}") from exc
    return count


def _check_filter(entry: dict, filters: dict, n: int) -> None:
    ts = entry.get("ts", "")
    if filters.get("user") is not None and entry.get("user") != filters["user"]:
        raise AuditVerifyError(f"entries.jsonl line {n} belongs to another user than the export's filter")
    if (filters.get("from") and ts < filters["from"]) or (filters.get("to") and ts >= filters["to"]):
        raise AuditVerifyError(f"entries.jsonl line {n} is outside the export's time filter")


def _previous(directory: Path, given: bytes | None, verifier: Verifier, cp: Checkpoint) -> Checkpoint | None:
    note = given if given is not None else (
        _read(directory / "previous-checkpoint", MAX_SMALL_FILE) if (directory / "previous-checkpoint").exists()
        else None)
    if note is None:
        return None
    prev = open_checkpoint(note, verifier)
    if prev.size > cp.size:
        raise AuditVerifyError(f"the log was truncated: the earlier checkpoint has {prev.size} entries, "
                               f"this one {cp.size}")
    proof: list[bytes] = []
    if 0 < prev.size < cp.size:
        cons = json.loads(_read(directory / "consistency.json", MAX_SMALL_FILE))
        if cons.get("size1") != prev.size or cons.get("size2") != cp.size:
            raise AuditVerifyError(f"consistency.json proves {cons.get('size1')} -> {cons.get('size2')}, "
                                   f"not {prev.size} -> {cp.size}")
        proof = _hashes(cons.get("proof"), "consistency proof")
    try:
        same_tree(prev, cp, proof)
    except AuditVerifyError as exc:
        raise AuditVerifyError(f"this log does not extend the earlier checkpoint: {exc}") from exc
    return prev


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance.audit.verify", description=__doc__.split("\n")[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--previous-checkpoint", type=Path, help="a checkpoint taken away earlier")
    parser.add_argument("--key", type=Path, help="the log's public key (vkey) on record, instead of the export's")
    args = parser.parse_args(argv)
    try:
        previous = args.previous_checkpoint.read_bytes()[:MAX_SMALL_FILE + 1] if args.previous_checkpoint else None
        report = verify_export(args.directory, previous=previous, key_file=args.key)
    except (AuditError, OSError, ValueError) as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"OK: {report.entries} entries of {report.origin} (log size {report.size}, key {report.key_id}"
          f"{', filtered' if report.filtered else ''}"
          f"{f', extends the checkpoint of {report.previous_size}' if report.previous_size is not None else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
