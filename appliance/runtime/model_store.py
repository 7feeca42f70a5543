"""The content-addressed model store: the one place models and adapters live.

Blobs are ``blobs/sha256-<hex>.gguf`` under the store root; ``registry.db`` (SQLite,
numbered migrations) maps a name to its blob with kind, architecture, quantisation,
digest, size and source. Both paths that bring models in write here: ``models fetch``
on the build station and bundle apply on the appliance.

A write is: validate the GGUF, copy into a temporary file in ``blobs/`` while hashing,
check the digest, ``os.replace`` into place, then one registry transaction. Any failure
before the transaction leaves the store exactly as it was.
"""

from __future__ import annotations

import builtins
import datetime as dt
import hashlib
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils

from appliance.db import open_db
from appliance.errors import DigestMismatchError, GGUFError, ModelStoreError, UnknownModelError
from appliance.migrations import Migrations
from appliance.runtime.gguf_check import GGUFInfo, GGUFLimits, validate_gguf
from appliance.runtime.profiles import ModelProfile, ProfileError, profile_of

__all__ = ["ModelStore", "ModelRecord", "VerifyResult", "KINDS", "MODEL_KINDS", "CROSS_ENCODERS", "sha256_file",
           "adapter_misfit", "encoder_misfit", "generator_misfit"]

CROSS_ENCODERS = ("reranker", "verifier")  # BERT GGUFs with rank pooling: query and text read together
MODEL_KINDS = ("generator", "embedder", *CROSS_ENCODERS)  # what a bundle or `models import` may bring
KINDS = (*MODEL_KINDS, "adapter")
ENCODER_ARCHITECTURES = frozenset({"bert", "nomic-bert", "jina-bert-v2"})
POOLING_NAMES = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}
CHUNK = 1 << 20
MIGRATIONS = Migrations("models")


@MIGRATIONS
def m001_models(db: sqlite_utils.Database) -> None:
    db.table("models").create(
        {
            "name": str,
            "kind": str,
            "architecture": str,
            "quantization": str,
            "sha256": str,
            "size": int,
            "source": str,
            "base_sha256": str,
            "added_at": str,
            "metadata": str,
        },
        pk="name",
    )


@dataclass(frozen=True)
class ModelRecord:
    name: str
    kind: str
    architecture: str
    quantization: str | None
    sha256: str
    size: int
    source: str
    base_sha256: str | None
    added_at: str
    metadata: dict
    path: Path

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "architecture": self.architecture,
            "quantization": self.quantization,
            "sha256": self.sha256,
            "size": self.size,
            "source": self.source,
            "base_sha256": self.base_sha256,
            "added_at": self.added_at,
            "path": str(self.path),
        }


@dataclass(frozen=True)
class VerifyResult:
    name: str
    ok: bool
    detail: str


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
            if progress:
                progress(len(block))
    return digest.hexdigest()


class ModelStore:
    """Models and adapters by name, stored by content digest."""

    def __init__(self, root: Path, *, max_model_bytes: int = 16 * 2**30, max_adapter_bytes: int = 2**30) -> None:
        self.root = Path(root)
        self.max_model_bytes = max_model_bytes
        self.max_adapter_bytes = max_adapter_bytes

    # -- reading ------------------------------------------------------------------------

    @property
    def blobs(self) -> Path:
        return self.root / "blobs"

    @property
    def db(self) -> sqlite_utils.Database:
        """The registry, one connection per thread (the TUI reads it from worker threads)."""
        local = self.__dict__.setdefault("_local", threading.local())
        db = getattr(local, "db", None)
        if db is None:
            self.blobs.mkdir(parents=True, exist_ok=True)
            db = local.db = open_db(self.root / "registry.db", MIGRATIONS)
            with self.__dict__.setdefault("_opened_lock", threading.Lock()):
                self.__dict__.setdefault("_opened", []).append(db)
        return db

    def close(self) -> None:
        """Close the registry connections every thread opened (the store opens new ones if used again)."""
        with self.__dict__.setdefault("_opened_lock", threading.Lock()):
            opened, self.__dict__["_opened"] = self.__dict__.get("_opened", []), []
            self.__dict__["_local"] = threading.local()
        for db in opened:
            db.close()

    def blob_path(self, sha256: str) -> Path:
        return self.blobs / f"sha256-{sha256}.gguf"

    def _record(self, row: dict) -> ModelRecord:
        return ModelRecord(
            name=row["name"],
            kind=row["kind"],
            architecture=row["architecture"],
            quantization=row["quantization"],
            sha256=row["sha256"],
            size=row["size"],
            source=row["source"],
            base_sha256=row["base_sha256"],
            added_at=row["added_at"],
            metadata=json.loads(row["metadata"] or "{}"),
            path=self.blob_path(row["sha256"]),
        )

    def list(self, kind: str | None = None) -> list[ModelRecord]:
        if not (self.root / "registry.db").exists():
            return []
        where, args = ("kind = ?", [kind]) if kind else (None, None)
        return [self._record(r) for r in self.db["models"].rows_where(where, args, order_by="kind, name")]

    def get(self, name: str) -> ModelRecord:
        rows = list(self.db["models"].rows_where("name = ?", [name])) if (self.root / "registry.db").exists() else []
        if not rows:
            known = ", ".join(r.name for r in self.list()) or "none; run `appliance models fetch` or apply a bundle"
            raise UnknownModelError(f"unknown model {name!r} (known: {known})")
        return self._record(rows[0])

    def by_sha256(self, sha256: str) -> ModelRecord:
        """The registered model or adapter with this content digest (bundles name models by digest)."""
        rows = list(self.db["models"].rows_where("sha256 = ?", [sha256], limit=1)) if (
            self.root / "registry.db").exists() else []
        if not rows:
            raise UnknownModelError(f"no registered model has sha256 {sha256[:16]}…")
        return self._record(rows[0])

    def has(self, name: str) -> bool:
        try:
            self.get(name)
        except UnknownModelError:
            return False
        return True

    # -- writing ------------------------------------------------------------------------

    def add_file(
        self,
        src: Path,
        *,
        name: str,
        kind: str,
        source: str,
        expected_sha256: str | None = None,
        base_sha256: str | None = None,
        metadata: dict | None = None,
        template: str | None = None,
        verified_sha256: str | None = None,
    ) -> ModelRecord:
        """Validate ``src`` and register it as ``name``; the store is unchanged on any error.

        ``verified_sha256``: the caller (a bundle apply) has verified ``src``, a file of its
        own, against this signed digest; it is moved into the store, not copied and re-hashed.
        """
        if kind not in KINDS:
            raise ModelStoreError(f"unknown model kind {kind!r} (one of {', '.join(KINDS)})")
        if not name or len(name) > 128 or not all(c.isalnum() or c in "-_." for c in name):
            raise ModelStoreError(f"bad model name {name!r}: use letters, digits, '-', '_' and '.' (max 128)")
        limit = self.max_adapter_bytes if kind == "adapter" else self.max_model_bytes
        info: GGUFInfo = validate_gguf(
            src, limits=GGUFLimits(max_file_bytes=limit), expect="adapter" if kind == "adapter" else "model"
        )
        encoder_misfit(src, info, kind)
        profile = generator_misfit(src, info, kind, template)
        if profile is not None:  # what the engine needs to serve it, checked now
            metadata = {**(metadata or {}), "profile": {"context_length": profile.context_length,
                                                        "template_source": profile.template_source,
                                                        "stop": list(profile.stop)}}
            if profile.template_source != "gguf":
                metadata["chat_template"] = profile.template
        elif template is not None:
            raise ModelStoreError("--template is only for generators")
        if kind == "adapter":
            base_sha256 = self._adapter_base(src, info, base_sha256)

        self.blobs.mkdir(parents=True, exist_ok=True)
        tmp = self.blobs / f".incoming-{os.getpid()}-{name}"
        try:
            if verified_sha256 is not None:  # the caller checked this digest over a file it owns: move it
                try:
                    os.replace(src, tmp)
                except OSError:  # another file system: copy after all
                    shutil.copyfile(src, tmp)
                with open(tmp, "rb") as fh:
                    os.fsync(fh.fileno())
                sha = verified_sha256
            else:
                digest = hashlib.sha256()
                with open(src, "rb") as fin, open(tmp, "wb") as fout:
                    while block := fin.read(CHUNK):
                        digest.update(block)
                        fout.write(block)
                    fout.flush()
                    os.fsync(fout.fileno())
                sha = digest.hexdigest()
            if expected_sha256 and sha != expected_sha256:
                raise DigestMismatchError(f"{src}: sha256 {sha} does not match the pinned {expected_sha256}")
            # the copy is what gets registered: validate the copy, not the source
            validate_gguf(tmp, limits=GGUFLimits(max_file_bytes=limit),
                          expect="adapter" if kind == "adapter" else "model")
            final = self.blob_path(sha)
            if final.exists() and final.stat().st_size == info.file_size:
                tmp.unlink()
            else:
                os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

        row = {
            "name": name,
            "kind": kind,
            "architecture": info.architecture,
            "quantization": info.quantization,
            "sha256": sha,
            "size": info.file_size,
            "source": source,
            "base_sha256": base_sha256,
            "added_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "metadata": json.dumps(metadata or {}, sort_keys=True),
        }
        with self.db.atomic():
            self.db.table("models").upsert(row, pk="name")
        self._collect_garbage()
        return self.get(name)

    def _adapter_base(self, src: Path, info: GGUFInfo, given: str | None) -> str | None:
        """The base digest an adapter is registered for; refused if it names another base or does not fit it."""
        recorded = str(info.get("adapter.base_sha256") or "") or None
        if given and recorded and given != recorded:
            raise ModelStoreError(f"{src}: the adapter was trained on the base with sha256 {recorded[:16]}…, "
                                  f"not on {given[:16]}…: train it again on this base")
        base_sha = given or recorded
        if base_sha is None:
            return None
        try:
            base = self.by_sha256(base_sha)
        except UnknownModelError:
            return base_sha  # its base may arrive later (a bundle registers models first); served only with it
        problem = adapter_misfit(info, validate_gguf(base.path, limits=GGUFLimits(max_file_bytes=self.max_model_bytes)))
        if problem:
            raise ModelStoreError(f"{src}: {problem} in the base {base.name}: it was made for another base")
        return base_sha

    def remove(self, name: str) -> None:
        self.get(name)
        with self.db.atomic():
            self.db.table("models").delete(name)
        self._collect_garbage()

    def _collect_garbage(self) -> None:
        """Remove blobs no registry row points at (after the registry committed)."""
        used = {r["sha256"] for r in self.db.query("SELECT sha256 FROM models")}
        for blob in self.blobs.glob("sha256-*.gguf"):
            if blob.name[len("sha256-") : -len(".gguf")] not in used:
                blob.unlink(missing_ok=True)

    # -- checking -----------------------------------------------------------------------

    def verify(self, progress: Callable[[int], None] | None = None) -> builtins.list[VerifyResult]:
        """Re-hash every registered blob and re-validate its GGUF structure."""
        results: list[VerifyResult] = []
        for rec in self.list():
            if not rec.path.is_file():
                results.append(VerifyResult(rec.name, False, f"blob missing: {rec.path}"))
                continue
            size = rec.path.stat().st_size
            if size != rec.size:
                results.append(VerifyResult(rec.name, False, f"size {size} != registered {rec.size}"))
                continue
            sha = sha256_file(rec.path, progress)
            if sha != rec.sha256:
                results.append(VerifyResult(rec.name, False, f"sha256 {sha[:16]}… != registered {rec.sha256[:16]}…"))
                continue
            try:
                validate_gguf(rec.path, expect="adapter" if rec.kind == "adapter" else "model")
            except GGUFError as exc:
                results.append(VerifyResult(rec.name, False, str(exc)))
                continue
            results.append(VerifyResult(rec.name, True, f"sha256 {sha[:16]}… ok"))
        return results

    def total_bytes(self) -> int:
        return sum(r.size for r in self.list())

    def __iter__(self) -> Iterator[ModelRecord]:
        return iter(self.list())


def encoder_misfit(src: Path, info: GGUFInfo, kind: str) -> None:
    """Refuse an embedder, reranker or verifier GGUF of the wrong architecture or pooling type."""
    if kind not in ("embedder", *CROSS_ENCODERS):
        return
    if info.architecture not in ENCODER_ARCHITECTURES:
        raise ModelStoreError(f"{src}: architecture {info.architecture!r} is not an encoder "
                              f"({', '.join(sorted(ENCODER_ARCHITECTURES))}), so it cannot be the {kind}")
    pooling = info.get(f"{info.architecture}.pooling_type")
    name = POOLING_NAMES.get(pooling if isinstance(pooling, int) else -1, repr(pooling))
    if kind == "embedder" and name not in ("mean", "cls"):
        raise ModelStoreError(f"{src}: pooling type {name}, an embedder needs mean or cls pooling")
    if kind in CROSS_ENCODERS and name != "rank":
        raise ModelStoreError(f"{src}: pooling type {name}, a {kind} needs rank pooling (a cross-encoder)")


def generator_misfit(src: Path, info: GGUFInfo, kind: str, template: str | None = None) -> ModelProfile | None:
    """A generator's profile (None for other kinds); refused if it is an encoder, or its chat template
    (its own, or the family ``template`` named for one that has none) is missing or does not render."""
    if kind != "generator":
        return None
    if info.architecture in ENCODER_ARCHITECTURES:
        raise ModelStoreError(f"{src}: architecture {info.architecture!r} is an encoder; it cannot be the generator")
    try:
        return profile_of(info, template)
    except ProfileError as exc:
        raise ModelStoreError(f"{src}: refused as a generator: {exc}") from exc


def adapter_misfit(adapter: GGUFInfo, base: GGUFInfo) -> str | None:
    """Why a LoRA adapter's tensors do not fit ``base`` (None if they do).

    In GGUF order ``W.lora_a`` is (in, r) and ``W.lora_b`` is (r, out); ``W`` is (in, out).
    """
    shapes = {t.name: t.shape for t in base.tensors}
    pairs = {t.name: t.shape for t in adapter.tensors}
    for name, a in pairs.items():
        if not name.endswith(".lora_a"):
            continue
        weight = name.removesuffix(".lora_a")
        b = pairs.get(weight + ".lora_b")
        if weight not in shapes:
            return f"{weight} does not exist"
        if b is None or len(a) != 2 or len(b) != 2 or a[1] != b[0]:
            return f"{weight} has no matching lora_b of the same rank"
        if shapes[weight][:2] != (a[0], b[1]):
            return f"{weight} is {shapes[weight][0]}x{shapes[weight][1]}, the adapter expects {a[0]}x{b[1]}"
    return None


def copy_tree_atomic(src: Path, dest: Path) -> None:
    """Copy a directory into place so that ``dest`` is either absent or complete."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
