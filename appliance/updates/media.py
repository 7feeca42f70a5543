"""Reading a bundle from removable media: the fetcher python-tuf's client uses instead of HTTP.

URLs are ``media:///<relative path>``; a path that escapes the bundle directory, goes
through a symlink, or names anything but a regular file is refused, and nothing larger
than the client asks for is read.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

from tuf.api.exceptions import DownloadHTTPError
from tuf.ngclient import FetcherInterface

__all__ = ["MediaFetcher", "MEDIA_URL", "BLOCK"]

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
            except FileNotFoundError:
                raise DownloadHTTPError(f"{rel} is not on the media", 404) from None
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
            raise DownloadHTTPError(f"{url[len(MEDIA_URL):]}: {exc.strerror}", 403) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped for something else since the check
            os.close(fd)
            raise DownloadHTTPError(f"{url[len(MEDIA_URL):]} is not a regular file", 403)

        def chunks() -> Iterator[bytes]:
            with os.fdopen(fd, "rb") as fh:
                while block := fh.read(BLOCK):
                    yield block
        return chunks()
