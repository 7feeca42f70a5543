"""Copy a bundle from removable media into staging, refusing anything unsafe on the way.

Only regular files and directories are copied. Symlinks, hard links, devices, FIFOs and
sockets are refused, as are names with NUL or control characters, ``.``/``..``, names
that differ only in case within a directory, and anything over the size limits (checked
from ``lstat`` before a byte is read). Verification then reads only the staged copy, so
a media file changed after it was staged cannot reach the appliance.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import BundleError, BundleTooLargeError

__all__ = ["StagingLimits", "stage"]


@dataclass(frozen=True)
class StagingLimits:
    max_metadata_bytes: int = 1 << 20  # each file under metadata/
    max_target_bytes: int = 32 * 2**30  # each file under targets/
    max_total_bytes: int = 64 * 2**30
    max_files: int = 100_000


def _check_name(name: str, where: str) -> None:
    if name in (".", "..") or "\x00" in name or any(ord(c) < 32 or ord(c) == 127 for c in name) or "/" in name:
        raise BundleError(f"unsafe name {name[:60]!r} in {where}")


def stage(media: Path, staging: Path, limits: StagingLimits = StagingLimits(),
          progress: Callable[[int, int], None] | None = None, copy_targets: bool = True) -> Path:
    """Copy ``media`` (a bundle directory) into the new directory ``staging``; returns it.

    Every member is checked. With ``copy_targets=False`` only ``metadata/`` is copied: the
    TUF client then copies each payload from the media itself, checking its length and
    hash as it goes (one copy of a large blob instead of two).
    ``progress(bytes_copied, 0)`` is called as the copy goes (the total is not known ahead).
    """
    if not media.is_dir() or media.is_symlink():
        raise BundleError(f"{media} is not a bundle directory")
    for part in ("metadata", "targets"):
        if not (media / part).is_dir() or (media / part).is_symlink():
            raise BundleError(f"{media} has no {part}/ directory: not a bundle")
    staging.mkdir(parents=True, exist_ok=False)
    total, files, copied_total = 0, 0, 0
    try:
        for top, dirs, names in os.walk(media, followlinks=False):
            rel_dir = Path(top).relative_to(media)
            seen: dict[str, str] = {}
            for name in dirs + names:
                _check_name(name, str(rel_dir))
                folded = name.casefold()
                if folded in seen:
                    raise BundleError(f"{rel_dir / name} and {rel_dir / seen[folded]} differ only in case")
                seen[folded] = name
            for d in dirs:
                st = os.lstat(Path(top) / d)
                if not stat.S_ISDIR(st.st_mode):
                    raise BundleError(f"{rel_dir / d} is a symlink or special file, not a directory")
                (staging / rel_dir / d).mkdir()
            for name in names:
                src = Path(top) / name
                st = os.lstat(src)
                rel = rel_dir / name
                if stat.S_ISLNK(st.st_mode):
                    raise BundleError(f"{rel} is a symlink")
                if not stat.S_ISREG(st.st_mode):
                    raise BundleError(f"{rel} is a device, FIFO or socket, not a file")
                if st.st_nlink > 1:
                    raise BundleError(f"{rel} is a hard link")
                cap = limits.max_metadata_bytes if rel.parts[0] == "metadata" else limits.max_target_bytes
                if rel.parts[0] not in ("metadata", "targets") or len(rel.parts) < 2:
                    raise BundleError(f"{rel} is outside metadata/ and targets/")
                if st.st_size > cap:
                    raise BundleTooLargeError(f"{rel} is {st.st_size} bytes, over the {cap} byte limit")
                total += st.st_size
                files += 1
                if total > limits.max_total_bytes or files > limits.max_files:
                    raise BundleTooLargeError(f"the bundle is over {limits.max_total_bytes} bytes or "
                                              f"{limits.max_files} files")
                if rel.parts[0] == "targets" and not copy_targets:
                    continue
                dst = staging / rel
                fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
                with os.fdopen(fd, "rb") as fin, open(dst, "wb") as fout:
                    copied = 0
                    while block := fin.read(1 << 20):
                        copied += len(block)
                        if copied > st.st_size:  # grew while being read: a changing file is refused
                            raise BundleError(f"{rel} changed while it was being copied")
                        fout.write(block)
                        if progress:
                            progress(copied_total + copied, 0)
                    copied_total += copied
                    fout.flush()
                    os.fsync(fout.fileno())
    except OSError as exc:  # disk full and the like: nothing half-staged is left behind
        shutil.rmtree(staging, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            raise BundleError(f"staging failed: the appliance's disk is full ({staging.parent}); nothing was "
                              "changed") from exc
        raise BundleError(f"staging failed: {exc}") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging
