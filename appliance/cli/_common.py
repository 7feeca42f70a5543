"""What the command modules share: the consoles, the services, the login, progress displays, bounded reads,
and the sub-groups more than one module adds commands to."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from appliance.access.accounts import Account
from appliance.access.session_file import session_file
from appliance.config import load_settings
from appliance.errors import EngineRequestError, SessionExpiredError
from appliance.services import Services, build_services

__all__ = ["console", "current_account", "err_console", "eval_group", "eval_progress", "ingest_progress",
           "phase_progress", "read_limited", "services", "session_path", "trace_group"]

console = Console()
err_console = Console(stderr=True)


def services(ctx: click.Context) -> Services:
    """The services of this command, built on first use and closed when the command ends."""
    if ctx.obj is None:
        ctx.obj = build_services(load_settings())  # the egress guard, then what a crashed writer left
        ctx.call_on_close(ctx.obj.close)
        for line in ctx.obj.recovered:
            click.echo(f"recovered: {line}", err=True)
    return ctx.obj


def session_path(ctx: click.Context) -> Path:
    """The file this OS user's login keeps its session token in, for this data directory."""
    return session_file(services(ctx).settings.data_dir)


def current_account(ctx: click.Context) -> Account:
    """The logged-in account: ``APPLIANCE_SESSION``, else the session file; AccessError if none."""
    token = os.environ.get("APPLIANCE_SESSION")
    if not token:
        path = session_path(ctx)
        token = path.read_text(encoding="ascii", errors="replace").strip()[:200] if path.is_file() else ""
    if not token:
        raise SessionExpiredError("not logged in: run `appliance login USER`")
    return services(ctx).login_session(token)


def read_limited(path: Path, limit: int, what: str) -> str:
    """The UTF-8 text of ``path`` if it is at most ``limit`` bytes; EngineRequestError naming ``what`` if not."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise EngineRequestError(f"{what} {path}: {exc.strerror}") from exc
    if size > limit:
        raise EngineRequestError(f"{what} {path}: {size} bytes, over the {limit} byte limit")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise EngineRequestError(f"{what} {path}: not UTF-8 text") from exc


# -- progress ---------------------------------------------------------------------------


@contextmanager
def phase_progress() -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress display driven by (phase, done, total) calls."""
    if not console.is_terminal:  # a log file: a line per phase and at most one every 30 s within it
        yield _log_lines()
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[detail]}"),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("starting", total=None, detail="")

        def step(phase: str, done: int, total: int) -> None:
            bytes_phase = phase in ("staging", "checking payloads")
            detail = f"{done / 2**20:.1f} MiB" if bytes_phase else (f"{done}/{total}" if total > 1 else "")
            bar.update(task, description=phase, completed=done, total=total or None, detail=detail)
        yield step


def _log_lines() -> Callable[[str, int, int], None]:
    """Progress as lines on stderr (stdout may carry --json)."""
    err = Console(stderr=True)

    started = time.monotonic()
    last_phase, last_at = [""], [0.0]

    def step(phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        kind = phase.split(" (")[0]
        if kind == last_phase[0] and now - last_at[0] < 30 and not (total and done >= total):
            return
        last_phase[0], last_at[0] = kind, now
        count = f" {done}/{total}" if total > 1 else ""
        err.print(f"[{now - started:7.0f} s] {phase}{count}", highlight=False, markup=False)
    return step


@contextmanager
def ingest_progress(what: str, files: int, quiet: bool) -> Iterator[Callable[[str, int], None]]:
    """The ingest progress display (files done, chunks so far); yields the knowledge base's progress callback."""
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[chunks]} chunks"), TimeElapsedColumn(), console=console,
                  disable=quiet) as progress:
        task = progress.add_task(what, total=files, chunks=0)
        done: set[str] = set()

        def step(source: str, chunks: int) -> None:
            fields = progress.tasks[0].fields
            progress.update(task, description=source[:40], chunks=fields["chunks"] + chunks)
            if source not in done:
                done.add(source)
                progress.advance(task)

        yield step


def eval_progress(quiet: bool) -> Progress:
    """The progress display of the evaluation commands (silent under --json)."""
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, disable=quiet)


# -- sub-groups several modules add to ---------------------------------------------------


def eval_group(group: click.Group) -> click.Group:
    """``group``'s ``eval`` sub-group (made by the first module that asks for it; several add evaluations)."""
    if "eval" not in group.commands:
        @group.group("eval")
        def evaluations() -> None:
            """Evaluations on your own data (retrieval first; more arrive with later issues)."""
    return _group(group, "eval")


def trace_group(group: click.Group) -> click.Group:
    """``group``'s ``trace`` sub-group (made by the first module that asks for it: ``show`` and ``export``)."""
    if "trace" not in group.commands:
        @group.group()
        def trace() -> None:
            """Request traces: every step of an answer."""
    return _group(group, "trace")


def _group(group: click.Group, name: str) -> click.Group:
    found = group.commands[name]
    if not isinstance(found, click.Group):
        raise TypeError(f"`{name}` of {group.name} is a command, not a group")
    return found
