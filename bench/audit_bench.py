"""Audit-log benchmarks for the audit issue.

1. Append rate with durable commits: ``AuditLog(durable=True)`` (WAL + synchronous=FULL,
   one committed transaction per entry, a signed checkpoint every 1,000 entries as the
   log does by default) vs raw sqlite3 inserts of the same canonical bytes into a bare
   table with the same PRAGMAs, one commit per row; rounds alternate who goes first.
2. Inclusion proofs at 1,000,000 entries: ``MerkleTree.from_leaf_hashes`` over the leaf
   hashes of a real log, then proofs at random indices (p50/p95/max); baseline: one
   ``merkle.root`` over the same leaf list.
3. Verification of an unfiltered export of 1,000,000 entries (``verify_export``) vs reading
   the same ``entries.jsonl`` and SHA-256 of every line (mean of a run before and after).
"""

from __future__ import annotations

import cProfile
import hashlib
import io
import json
import os
import pstats
import random
import shutil
import sqlite3
import statistics
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from appliance.audit.canonical import canonical_json
from appliance.audit.export import export_log
from appliance.audit.log import MAX_ENTRY_BYTES, AuditLog, _now
from appliance.audit.merkle import MerkleTree, root, verify_inclusion
from appliance.audit.verify import verify_export
from bench.runtime_bench import REPO

WORK = REPO / "bench" / "work" / "audit"
DURABILITY = "WAL + synchronous=FULL, one commit per entry"
_TOPICS = ["vitamin D supplementation and bone density in older adults",
           "statin therapy and the risk of type 2 diabetes in women",
           "aspirin for the primary prevention of cardiovascular events",
           "sleep duration and cognitive decline over ten years",
           "physical activity and all-cause mortality in cohort studies"]


def _fields(i: int) -> dict[str, Any]:
    """A realistic ``question`` entry: ~100-character question, 4 retrieved and 2 cited chunk ids, a digest."""
    question = f"What does the evidence say about {_TOPICS[i % len(_TOPICS)]} (case {i})?"
    question = (question + " Please cite the sources." * 3)[:100]
    doc = 1000 + (i * 7919) % 50_000
    retrieved = [f"doc{doc + k}@1#{(i + k) % 12}" for k in range(4)]
    return {"question": question, "retrieved": retrieved, "cited": retrieved[:2],
            "answer_sha256": hashlib.sha256(f"answer {i}".encode()).hexdigest()}


def _user(i: int) -> str:
    return f"analyst{i % 17:02d}"


def _pct(xs: list[float], q: float) -> float:
    return sorted(xs)[int(q * (len(xs) - 1))] * 1000


def bench_append(n: int, rounds: int = 5) -> dict[str, Any]:
    root_dir = WORK / "append"
    shutil.rmtree(root_dir, ignore_errors=True)
    root_dir.mkdir(parents=True)
    log = AuditLog(root_dir / "log", durable=True)
    raw = sqlite3.connect(root_dir / "raw.db", isolation_level=None)
    raw.execute("PRAGMA journal_mode=WAL")
    raw.execute("PRAGMA synchronous=FULL")
    raw.execute("CREATE TABLE entries (seq INTEGER PRIMARY KEY, data BLOB NOT NULL)")
    pragmas = {name: {"journal_mode": c.execute("PRAGMA journal_mode").fetchone()[0],
                      "synchronous": {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}[
                          c.execute("PRAGMA synchronous").fetchone()[0]]}
               for name, c in (("appliance", log.conn), ("raw", raw))}
    warm = 20
    total = warm + n
    # the baseline inserts the very bytes the log writes for the same entry (timestamp fixed in advance)
    raw_rows = [canonical_json({"seq": i, "ts": _now(), "kind": "question", "user": _user(i), **_fields(i)},
                               max_bytes=MAX_ENTRY_BYTES) for i in range(total)]
    fields = [_fields(i) for i in range(total)]
    lat: dict[str, list[float]] = {"appliance": [], "raw": []}
    secs = {"appliance": 0.0, "raw": 0.0}
    pos = {"appliance": 0, "raw": 0}

    def run_app(count: int, timed: bool = True) -> None:
        start = pos["appliance"]
        t_all = time.perf_counter()
        for i in range(start, start + count):
            t0 = time.perf_counter()
            log.record("question", _user(i), **fields[i])
            if timed:
                lat["appliance"].append(time.perf_counter() - t0)
        if timed:
            secs["appliance"] += time.perf_counter() - t_all
        pos["appliance"] += count

    def run_raw(count: int, timed: bool = True) -> None:
        start = pos["raw"]
        t_all = time.perf_counter()
        for i in range(start, start + count):
            t0 = time.perf_counter()
            raw.execute("BEGIN IMMEDIATE")
            raw.execute("INSERT INTO entries (seq, data) VALUES (?, ?)", [i, raw_rows[i]])
            raw.execute("COMMIT")
            if timed:
                lat["raw"].append(time.perf_counter() - t0)
        if timed:
            secs["raw"] += time.perf_counter() - t_all
        pos["raw"] += count

    try:
        run_raw(warm, timed=False)
        run_app(warm, timed=False)
        per_round = [n // rounds + (1 if r < n % rounds else 0) for r in range(rounds)]
        for r, count in enumerate(per_round):  # alternate who goes first: the disk drifts
            first, second = (run_raw, run_app) if r % 2 == 0 else (run_app, run_raw)
            first(count)
            second(count)
        stored = log.conn.execute("SELECT count(*), max(seq) FROM entries").fetchone()
        checkpoints = log.conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0]
        sample = bytes(log.conn.execute("SELECT data FROM entries WHERE seq = ?", [warm]).fetchone()[0])
    finally:
        log.close()
        raw.close()
    app_rate, raw_rate = n / secs["appliance"], n / secs["raw"]
    return {"entries": n, "durability": DURABILITY, "pragmas": pragmas, "rounds": rounds,
            "appliance_entries_per_s": app_rate, "raw_entries_per_s": raw_rate, "ratio": app_rate / raw_rate,
            "appliance_latency_ms": {"p50": _pct(lat["appliance"], 0.5), "p99": _pct(lat["appliance"], 0.99),
                                     "max": max(lat["appliance"]) * 1000},
            "raw_latency_ms": {"p50": _pct(lat["raw"], 0.5), "p99": _pct(lat["raw"], 0.99),
                               "max": max(lat["raw"]) * 1000},
            "stored_entries": stored[0], "checkpoints_stored": checkpoints,
            "entry_bytes": len(sample), "sample_entry": sample.decode()}


def build_log(n: int, console: Console) -> tuple[Path, list[bytes], dict[str, Any]]:
    """A real log of ``n`` entries (``n - 1`` questions and the export's own entry), exported unfiltered."""
    root_dir = WORK / "verify"
    shutil.rmtree(root_dir, ignore_errors=True)
    log = AuditLog(root_dir / "log", durable=False)
    try:
        with console.status(f"audit: recording {n - 1} entries (durable=False)…") as status:
            t0 = time.perf_counter()
            for i in range(n - 1):
                log.record("question", _user(i), **_fields(i))
                if i % 50_000 == 0:
                    status.update(f"audit: recording {n - 1} entries (durable=False): {i}")
            record_s = time.perf_counter() - t0
        with console.status("audit: exporting…"):
            t0 = time.perf_counter()
            manifest = export_log(log, root_dir / "export", by="officer")
            export_s = time.perf_counter() - t0
        leaves = [bytes(r[0]) for r in log.conn.execute("SELECT leaf FROM entries WHERE seq < ? ORDER BY seq",
                                                        [manifest["size"]])]
    finally:
        log.close()
    if manifest["entries"] != n or len(leaves) != n:
        raise RuntimeError(f"export holds {manifest['entries']} entries, expected {n}")
    return root_dir / "export", leaves, {"record_s": record_s, "records_per_s": (n - 1) / record_s,
                                         "export_s": export_s}


def bench_proofs(leaves: list[bytes], proofs: int) -> dict[str, Any]:
    size = len(leaves)
    t0 = time.perf_counter()
    tree = MerkleTree.from_leaf_hashes(leaves)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    full_root = root(leaves)
    root_s = time.perf_counter() - t0
    if tree.root() != full_root:
        raise RuntimeError("MerkleTree root differs from merkle.root over the same leaves")
    rng = random.Random(7)
    indices = [rng.randrange(size) for _ in range(proofs)]
    for i in indices[:50]:
        tree.inclusion_proof(i)  # warm
    times, made = [], []
    for i in indices:
        t0 = time.perf_counter()
        proof = tree.inclusion_proof(i, size)
        times.append(time.perf_counter() - t0)
        made.append(proof)
    for i, proof in zip(indices, made, strict=True):  # every proof checked, outside the timing
        verify_inclusion(leaves[i], i, size, proof, full_root)
    return {"entries": size, "proofs": proofs, "build_s": build_s, "root_ms": root_s * 1000,
            "proof_ms": {"p50": _pct(times, 0.5), "p95": _pct(times, 0.95), "max": max(times) * 1000,
                         "mean": statistics.fmean(times) * 1000},
            "proof_hashes": len(made[0]), "all_verified": True, "ratio": _pct(times, 0.5) / (root_s * 1000)}


def _sha_lines(path: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = 0
    with open(path, "rb") as fh:
        for line in fh:
            hashlib.sha256(line).digest()
            n += 1
    return time.perf_counter() - t0, n


def bench_verify(export: Path, n: int, profile: bool) -> dict[str, Any]:
    entries = export / "entries.jsonl"
    size = entries.stat().st_size
    _sha_lines(entries)  # page cache warm for both
    before, lines = _sha_lines(entries)
    t0 = time.perf_counter()
    report = verify_export(export)
    verify_s = time.perf_counter() - t0
    after, _ = _sha_lines(entries)
    if report.entries != n or lines != n:
        raise RuntimeError(f"verified {report.entries} entries, hashed {lines} lines, expected {n}")
    raw_s = (before + after) / 2
    out = {"entries": n, "bytes": size, "verify_s": verify_s, "verify_bytes_per_s": size / verify_s,
           "verify_entries_per_s": n / verify_s, "sha256_s": raw_s, "sha256_runs": [before, after],
           "sha256_bytes_per_s": size / raw_s, "ratio": raw_s / verify_s}
    if profile:  # where verify's time goes (cProfile inflates Python-level calls; shares, not speed)
        prof = cProfile.Profile()
        prof.runcall(verify_export, export)
        stats = pstats.Stats(prof, stream=io.StringIO())
        total = stats.total_tt  # type: ignore[attr-defined]
        top = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:10]  # type: ignore[attr-defined]
        out["profile"] = {"total_s": total, "top_by_own_time": [
            {"function": f"{Path(f).name}:{line}({name})", "calls": nc, "own_s": tt, "own_share": tt / total,
             "cumulative_s": ct} for (f, line, name), (_cc, nc, tt, ct, _callers) in top]}
    return out


def run(quick: bool = False, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    WORK.mkdir(parents=True, exist_ok=True)
    partial = REPO / "bench" / "results" / f"audit-partial{'-quick' if quick else ''}.json"
    n_append, n_log = (1_000, 100_000) if quick else (5_000, 1_000_000)
    out: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg()}}
    try:
        with console.status(f"audit: {n_append} durable appends vs raw sqlite3 ({DURABILITY})…"):
            out["append"] = bench_append(n_append)
        partial.write_text(json.dumps(out, indent=2))
        export, leaves, out["setup"] = build_log(n_log, console)
        with console.status(f"audit: inclusion proofs at {n_log} entries…"):
            out["proofs"] = bench_proofs(leaves, 2_000)
        del leaves
        partial.write_text(json.dumps(out, indent=2))
        with console.status(f"audit: verifying the export of {n_log} entries vs raw SHA-256…"):
            out["verify"] = bench_verify(export, n_log, profile=True)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)  # about 1 GB at full size
    partial.unlink(missing_ok=True)
    out["machine"]["load_avg_at_end"] = os.getloadavg()  # other work on the machine skews the figures
    ap, pr, vf = out["append"], out["proofs"], out["verify"]
    out["rows"] = [
        {"name": f"audit appends entries/s ({DURABILITY}) vs raw sqlite3 same PRAGMAs",
         "appliance": f"{ap['appliance_entries_per_s']:.0f}", "baseline": f"{ap['raw_entries_per_s']:.0f}",
         "ratio": ap["ratio"], "target": ">= 2000 entries/s", "met": ap["appliance_entries_per_s"] >= 2000},
        {"name": f"inclusion proof ms p50/p95/max at {pr['entries']:,} entries (baseline: merkle.root once, ms)",
         "appliance": f"{pr['proof_ms']['p50']:.3f} / {pr['proof_ms']['p95']:.3f} / {pr['proof_ms']['max']:.3f}",
         "baseline": f"{pr['root_ms']:.0f}", "ratio": pr["ratio"], "target": "p95 < 5 ms",
         "met": pr["proof_ms"]["p95"] < 5.0},
        {"name": f"verify export of {vf['entries']:,} entries, MB/s (vs SHA-256 per line)",
         "appliance": f"{vf['verify_bytes_per_s'] / 1e6:.1f}", "baseline": f"{vf['sha256_bytes_per_s'] / 1e6:.1f}",
         "ratio": vf["ratio"], "target": ">= 0.5", "met": vf["ratio"] >= 0.5},
    ]
    return out
