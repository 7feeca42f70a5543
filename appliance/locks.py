"""One writer per data directory, across processes and threads.

Everything that changes what the appliance serves takes this lock: ingest, delete,
``index check --repair``, bundle apply, rollback, accepting a held generation, and the
start-up recovery that finishes what a crashed writer left. Readers never take it: they
resolve every hit through the catalog, which changes in single SQLite transactions.

The lock is an ``flock`` on ``<data dir>/run/writer.lock`` (released by the kernel when
its holder dies, so a crash never leaves it held) plus a re-entrant thread lock, so an
apply that ingests into its new generation, or a TUI worker inside another, takes it
again without deadlock. The holder writes what it is doing into the file; a writer that
waits longer than its deadline gets :class:`BusyError` naming it.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from appliance.errors import BusyError

__all__ = ["WriterLock", "writer_lock", "DEFAULT_WAIT_S"]

DEFAULT_WAIT_S = 60.0
POLL_S = 0.05
MAX_HOLDER_BYTES = 512

_registry: dict[Path, WriterLock] = {}
_registry_lock = threading.Lock()


def writer_lock(data_dir: Path) -> WriterLock:
    """The one lock object of ``data_dir`` in this process (every store and service shares it)."""
    key = Path(os.path.realpath(data_dir))
    with _registry_lock:
        lock = _registry.get(key)
        if lock is None:
            lock = _registry[key] = WriterLock(key)
        return lock


class WriterLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "run" / "writer.lock"
        self._threads = threading.RLock()
        self._depth = 0
        self._fd: int | None = None
        self._owner: int | None = None  # the thread ident holding it

    def held(self) -> bool:
        """Whether the calling thread holds the lock."""
        return self._owner == threading.get_ident() and self._depth > 0

    def holder(self) -> str:
        """What the current holder (any process) said it is doing, or '' if unknown."""
        try:
            with open(self.path, "rb") as fh:
                return fh.read(MAX_HOLDER_BYTES).decode("utf-8", "replace").strip()
        except OSError:
            return ""

    @contextmanager
    def hold(self, what: str, wait_s: float = DEFAULT_WAIT_S) -> Iterator[None]:
        """Hold the lock for ``what`` (said to whoever waits), waiting up to ``wait_s``; BusyError after."""
        if not self.acquire(what, wait_s):
            doing = self.holder()
            raise BusyError(f"the data directory is busy{': ' + doing if doing else ''}; {what} waited "
                            f"{wait_s:g} s: try again when it has finished")
        try:
            yield
        finally:
            self.release()

    @contextmanager
    def attempt(self, what: str) -> Iterator[bool]:
        """Hold the lock if it is free now (yields True), else do not wait (yields False)."""
        got = self.acquire(what, 0.0)
        try:
            yield got
        finally:
            if got:
                self.release()

    def acquire(self, what: str, wait_s: float) -> bool:
        deadline = time.monotonic() + max(0.0, wait_s)
        got = self._threads.acquire(timeout=wait_s) if wait_s > 0 else self._threads.acquire(blocking=False)
        if not got:
            return False
        if self._depth > 0:  # this thread holds it already
            self._depth += 1
            return True
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except BaseException:
            self._threads.release()
            raise
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        os.close(fd)
                        self._threads.release()
                        return False
                    time.sleep(POLL_S)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{what[:200]} (process {os.getpid()}, since {stamp})\n".encode(), 0)
        except BaseException:
            os.close(fd)
            self._threads.release()
            raise
        self._fd, self._depth, self._owner = fd, 1, threading.get_ident()
        return True

    def release(self) -> None:
        if not self.held():
            raise RuntimeError("the writer lock is released by a thread that does not hold it")
        self._depth -= 1
        if self._depth == 0:
            fd, self._fd, self._owner = self._fd, None, None
            assert fd is not None
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        self._threads.release()
