"""Reading a bundle from removable media: the fetcher python-tuf's client uses instead of HTTP.

URLs are ``media:///<relative path>``; a path that escapes the bundle directory, goes
through a symlink, or names anything but a regular file is refused, and nothing larger
than the client asks for is read.
"""

from __future__ import annotations

import hashlib
import os
import queue
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from tuf.api.exceptions import DownloadHTTPError, LengthOrHashMismatchError
from tuf.api.metadata import TargetFile
from tuf.ngclient import FetcherInterface

__all__ = ["MediaFetcher", "MEDIA_URL", "BLOCK", "copy_verified"]

MEDIA_URL = "media:///"
BLOCK = 1 << 16


class MediaFetcher(FetcherInterface):
    """Reads ``metadata/...`` under ``root`` and ``targets/...`` under ``targets_root`` (default: root)."""

    def __init__(self, root: Path, targets_root: Path | None = None) -> None:
        self.root = root.resolve()
        self.targets_root = (targets_root or root).resolve()

    def _path(self, url: str) -> Path:
        if not url.startswith(MEDIA_URL):
            raise DownloadHTTPError(f"not a media URL: {url[:80]!r}", 400)
        rel = url[len(MEDIA_URL):]
        if not rel or "\x00" in rel or rel.startswith("/") or any(part in ("", ".", "..") for part in rel.split("/")):
            raise DownloadHTTPError(f"refused path {rel[:80]!r}", 400)
        root = self.targets_root if rel.startswith("targets/") else self.root
        path = root / rel
        # every component must be a real directory or, last, a regular file: no symlinks anywhere
        current = root
        for part in rel.split("/"):
            current = current / part
            try:
                mode = os.lstat(current).st_mode
            except FileNotFoundError as exc:
                raise DownloadHTTPError(f"{rel} is not on the media", 404) from exc
            if stat.S_ISLNK(mode):
                raise DownloadHTTPError(f"{rel} goes through a symlink", 403)
        if not stat.S_ISREG(os.lstat(path).st_mode):
            raise DownloadHTTPError(f"{rel} is not a regular file", 403)
        return path

    def _fetch(self, url: str) -> Iterator[bytes]:
        path = self._path(url)

        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            raise DownloadHTTPError(f"{url[len(MEDIA_URL):]}: {exc.strerror}", 403) from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped for something else since the check
            os.close(fd)
            raise DownloadHTTPError(f"{url[len(MEDIA_URL):]} is not a regular file", 403)

        def chunks() -> Iterator[bytes]:
            with os.fdopen(fd, "rb") as fh:
                while block := fh.read(BLOCK):
                    yield block
        return chunks()


def copy_verified(fetcher: MediaFetcher, tinfo: TargetFile, dest: Path,
                  progress: Callable[[int], None] | None = None) -> None:
    """Copy a payload from the media to ``dest`` in one pass, checking it against its signed
    length and hashes as it goes: never more than the signed length is read, and a payload
    that does not match is removed. (python-tuf's ``download_target`` makes three passes
    and a temporary file outside the appliance's disk; the checks are the same.)
    """
    dirname, sep, basename = tinfo.path.rpartition("/")
    url = f"{MEDIA_URL}targets/{dirname}{sep}{tinfo.hashes['sha256']}.{basename}"
    hashers = {}
    for algo, expected in tinfo.hashes.items():
        try:
            hashers[algo] = (hashlib.new(algo), expected)
        except ValueError as exc:
            raise LengthOrHashMismatchError(f"unsupported hash algorithm {algo!r}") from exc
    blocks: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
    failure: list[BaseException] = []

    def writer(out: BinaryIO) -> None:  # the disk write overlaps the hashing (both release the GIL)
        try:
            while (block := blocks.get()) is not None:
                if not failure:
                    out.write(block)
        except BaseException as exc:  # noqa: BLE001 - handed to the reading thread
            failure.append(exc)
            while blocks.get() is not None:
                pass

    size = 0
    try:
        with open(dest, "wb") as out:
            thread = threading.Thread(target=writer, args=(out,), daemon=True)
            thread.start()
            try:
                for block in fetcher.fetch(url):
                    size += len(block)
                    if size > tinfo.length:
                        raise LengthOrHashMismatchError(f"{tinfo.path} is longer than its signed length {tinfo.length}")
                    for h, _ in hashers.values():
                        h.update(block)
                    blocks.put(block)
                    if failure:
                        break
                    if progress:
                        progress(len(block))
            finally:
                blocks.put(None)
                thread.join()
            if failure:
                raise failure[0]
            out.flush()
            os.fsync(out.fileno())  # flushed now, while nothing else waits on the disk
        if size != tinfo.length:
            raise LengthOrHashMismatchError(f"Observed length {size} does not match expected length {tinfo.length}")
        for algo, (h, expected) in hashers.items():
            if h.hexdigest() != expected:
                raise LengthOrHashMismatchError(f"Observed hash {h.hexdigest()} does not match expected hash "
                                                f"{expected} ({algo})")
    except BaseException:
        dest.unlink(missing_ok=True)  # a bad payload is not kept
        raise
