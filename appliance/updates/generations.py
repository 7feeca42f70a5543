"""Generations: each applied bundle's complete serving state, switched atomically.

Layout under the data directory::

    generations/g000000/            the first (empty) generation, made on first start
    generations/g000001/
        generation.json             what this generation is (bundle, release, models, policy ...)
        knowledge/                  its catalog, full-text tables and Chroma index
        policy.toml                 the signed access policy it carries, if any
    generations/.building-000002/   a generation being built (removed if a build dies)
    current -> generations/g000001  the one symlink that says which generation serves

A generation is built completely beside the serving one, fsynced, renamed into place, and
only then is ``current`` replaced (a new symlink renamed over the old one: POSIX rename is
atomic), so after a crash at any point the appliance serves either the old generation or
the new one, never a mixture. The audit log, accounts, traces and the model blobs live
outside generations: they are never rolled back.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path

from appliance.errors import BundleError

__all__ = ["GenerationInfo", "current_path", "current_info", "ensure_layout", "read_info", "list_generations",
           "new_building", "seal", "switch_to", "copy_knowledge", "fsync_tree", "prune", "generation_dir",
           "read_targets", "write_targets"]

_GEN = re.compile(r"^g(\d{6})$")
MAX_INFO_BYTES = 1 << 20
MAX_TARGETS_BYTES = 256 << 20


@dataclass
class GenerationInfo:
    generation: int
    kind: str = "initial"  # initial | apply
    bundle: str | None = None
    release: int = 0
    applied_at: str | None = None
    by: str | None = None
    parent: int | None = None
    models: dict[str, dict] = field(default_factory=dict)  # kind -> {"name", "sha256"}; empty: the configured ones
    adapters: dict[str, str] = field(default_factory=dict)  # adapter name -> sha256
    policy_sha256: str | None = None
    metadata: str | None = None  # the trusted-metadata set this generation's bundle left (updates/<name>)
    targets_sha256: str | None = None  # digest of the bundle's signed targets metadata
    changes: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def generation_dir(data_dir: Path, number: int) -> Path:
    return data_dir / "generations" / f"g{number:06d}"


def current_path(data_dir: Path) -> Path:
    """The serving generation's directory (resolved), or a BundleError if the layout is damaged."""
    link = data_dir / "current"
    try:
        target = os.readlink(link)
    except FileNotFoundError as exc:
        raise BundleError(f"{link} is missing: the appliance has no serving generation") from exc
    except OSError as exc:
        raise BundleError(f"{link} is not a symlink to a generation: {exc.strerror}") from exc
    path = (data_dir / target).resolve()
    if not _GEN.match(path.name) or not path.is_dir():
        raise BundleError(f"{link} points at {target!r}, which is not a generation")
    return path


def read_info(gen_dir: Path) -> GenerationInfo:
    f = gen_dir / "generation.json"
    try:
        if f.stat().st_size > MAX_INFO_BYTES:
            raise BundleError(f"{f} is over {MAX_INFO_BYTES} bytes")
        raw = json.loads(f.read_text(encoding="utf-8"))
        return GenerationInfo(**raw)
    except FileNotFoundError as exc:
        raise BundleError(f"{f} is missing") from exc
    except (ValueError, TypeError) as exc:
        raise BundleError(f"{f} is damaged: {exc}") from exc


def read_targets(gen_dir: Path) -> list[dict]:
    """The bundle payloads a generation serves: path, role, sha256, length, custom, docs."""
    f = gen_dir / "targets.json"
    if not f.is_file():
        return []
    if f.stat().st_size > MAX_TARGETS_BYTES:
        raise BundleError(f"{f} is over {MAX_TARGETS_BYTES} bytes")
    try:
        return list(json.loads(f.read_text(encoding="utf-8")))
    except ValueError as exc:
        raise BundleError(f"{f} is damaged: {exc}") from exc


def write_targets(gen_dir: Path, targets: list[dict]) -> None:
    _write_json(gen_dir / "targets.json", targets)


def current_info(data_dir: Path) -> GenerationInfo:
    return read_info(current_path(data_dir))


def _write_json(path: Path, obj: dict | list) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file and directory under ``root`` to disk."""
    for top, _dirs, names in os.walk(root):
        for name in names:
            fd = os.open(os.path.join(top, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(top))


def ensure_layout(data_dir: Path) -> None:
    """Make the first generation and ``current`` if absent (idempotent; crash-safe)."""
    link = data_dir / "current"
    if os.path.islink(link):
        current_path(data_dir)  # a damaged layout is reported, not papered over
        return
    gens = data_dir / "generations"
    gens.mkdir(mode=0o700, parents=True, exist_ok=True)
    first = generation_dir(data_dir, 0)
    if not first.is_dir():
        building = gens / ".building-000000"
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir()
        legacy = data_dir / "knowledge"  # an index from before generations existed moves in whole
        if legacy.is_dir() and not legacy.is_symlink():
            os.rename(legacy, building / "knowledge")
        else:
            (building / "knowledge").mkdir()
        _write_json(building / "generation.json", GenerationInfo(0).as_dict())
        os.rename(building, first)
        _fsync_dir(gens)
    _point(data_dir, first)


def _point(data_dir: Path, gen_dir: Path) -> None:
    tmp = data_dir / "current.new"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(os.path.relpath(gen_dir, data_dir), tmp)
    os.replace(tmp, data_dir / "current")
    _fsync_dir(data_dir)


def list_generations(data_dir: Path) -> list[GenerationInfo]:
    gens = data_dir / "generations"
    out = []
    for d in sorted(gens.iterdir()) if gens.is_dir() else []:
        if _GEN.match(d.name):
            try:
                out.append(read_info(d))
            except BundleError:
                continue
    return out


def new_building(data_dir: Path) -> tuple[int, Path]:
    """A fresh directory for the next generation (older unfinished builds are removed)."""
    gens = data_dir / "generations"
    for d in gens.glob(".building-*"):
        shutil.rmtree(d, ignore_errors=True)
    numbers = [int(m.group(1)) for d in gens.iterdir() if (m := _GEN.match(d.name))]
    number = max(numbers, default=0) + 1
    building = gens / f".building-{number:06d}"
    building.mkdir()
    return number, building


def seal(data_dir: Path, building: Path, info: GenerationInfo) -> Path:
    """Write the generation's description, flush it all to disk and rename it into place."""
    _write_json(building / "generation.json", info.as_dict())
    fsync_tree(building)
    final = generation_dir(data_dir, info.generation)
    os.rename(building, final)
    _fsync_dir(final.parent)
    return final


def switch_to(data_dir: Path, number: int) -> None:
    """Make generation ``number`` the serving one: one atomic rename of the ``current`` symlink."""
    target = generation_dir(data_dir, number)
    read_info(target)  # only a sealed, readable generation may serve
    _point(data_dir, target)


def _copy_sqlite(src: Path, dest: Path) -> None:
    """A consistent copy of a live SQLite database (the backup API, not a file copy)."""
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    target = sqlite3.connect(dest)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()


def copy_knowledge(src: Path, dest: Path, *, vectors: bool = True) -> None:
    """Copy a knowledge directory for a new generation.

    The Chroma segment files are copied before Chroma's SQLite database, so the database
    is never older than the segments (Chroma replays its log over older segments).
    With ``vectors=False`` only the catalog is copied: the index is rebuilt (a new embedder).
    """
    dest.mkdir(parents=True, exist_ok=True)
    if (src / "catalog.db").is_file():
        _copy_sqlite(src / "catalog.db", dest / "catalog.db")
    chroma = src / "chroma"
    if not vectors or not chroma.is_dir():
        return
    (dest / "chroma").mkdir()
    for entry in chroma.iterdir():
        if entry.is_dir():
            shutil.copytree(entry, dest / "chroma" / entry.name)
    for entry in chroma.iterdir():
        if entry.is_file() and not entry.name.endswith(("-wal", "-shm", "-journal")):
            if entry.suffix in (".sqlite3", ".db"):
                _copy_sqlite(entry, dest / "chroma" / entry.name)
            else:
                shutil.copy2(entry, dest / "chroma" / entry.name)


def prune(data_dir: Path, keep: int) -> list[int]:
    """Remove the oldest generations beyond ``keep`` (never the serving one); returns their numbers."""
    serving = current_path(data_dir).name
    gens = sorted(d for d in (data_dir / "generations").iterdir() if _GEN.match(d.name))
    removed = []
    for d in gens[: max(0, len(gens) - keep)]:
        if d.name != serving:
            shutil.rmtree(d)
            removed.append(int(d.name[1:]))
    return removed
