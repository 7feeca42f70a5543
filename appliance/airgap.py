"""Egress guard: the appliance never opens a network connection at run time.

:func:`install_egress_guard` (called at start by the CLI, the llama.cpp host and the
TUI) sets the offline variables of the Hugging Face / telemetry libraries and adds a
:func:`sys.addaudithook` hook that raises :class:`~appliance.errors.EgressBlockedError`
*before* the system call when code creates a non-Unix socket, connects / binds / sends
to an inet address, or resolves a name. Unix sockets keep working. Audit hooks cannot
be removed, so the hook consults the guard's state (:meth:`EgressGuard.disable`).
Not seen: ``send()`` on an inherited, already connected inet fd, and C code calling
``socket(2)`` itself -- hence also ``airgap_status()["network_isolated"]``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import sysconfig
import threading
import time
from collections.abc import MutableMapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from appliance.errors import EgressBlockedError

__all__ = [
    "EgressAttempt", "EgressGuard", "GUARD", "OFFLINE_ENVIRONMENT", "airgap_status",
    "install_egress_guard", "network_interfaces", "set_offline_environment",
]

_LOG = logging.getLogger("appliance.airgap")

OFFLINE_ENVIRONMENT: dict[str, str] = {
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1",
    "ANONYMIZED_TELEMETRY": "False", "TOKENIZERS_PARALLELISM": "false",
}

# Events whose address argument is blocked unless it is a Unix path (str / bytes).
_ADDRESS_EVENTS = frozenset({"socket.connect", "socket.sendto", "socket.sendmsg", "socket.bind"})
# Name resolution is network use. (CPython 3.11 audits gethostbyname_ex as
# "socket.gethostbyname"; the _ex name is listed in case a later version splits it.)
_RESOLVE_EVENTS = frozenset({
    "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex",
    "socket.gethostbyaddr", "socket.getnameinfo",
})
_AF_UNIX: int = getattr(socket, "AF_UNIX", 1)
# urllib3 (imported by python-tuf's client) creates an IPv6 socket at import time to learn
# whether IPv6 exists; it connects nowhere. It is refused like any other socket, silently.
_SILENT_PROBES = ("urllib3.util.connection._has_ipv6 ",)

_THIS_FILE = os.path.normcase(os.path.abspath(__file__))
_STDLIB_DIRS = tuple(  # a venv's platstdlib holds its site-packages: see _is_internal
    {os.path.normcase(os.path.abspath(sysconfig.get_path(k))) + os.sep for k in ("stdlib", "platstdlib")}
)


@dataclass(frozen=True)
class EgressAttempt:
    """One blocked attempt: audit event, target, first non-stdlib caller, epoch time."""

    event: str
    target: str
    caller: str
    at: float


def _is_internal(filename: str) -> bool:
    """True for frames of the stdlib, frozen modules or this file (not site-packages)."""
    if filename.startswith("<"):
        return filename.startswith("<frozen")
    path = os.path.normcase(os.path.abspath(filename))
    in_stdlib = path.startswith(_STDLIB_DIRS) and "site-packages" not in path and "dist-packages" not in path
    return in_stdlib or path == _THIS_FILE


def _find_caller(frame: FrameType | None) -> str:
    """``module.function (file:line)`` of the nearest frame outside the stdlib and
    this file; of the innermost frame when every frame is internal."""
    found = innermost = frame
    while found is not None and _is_internal(found.f_code.co_filename):
        found = found.f_back
    found = found or innermost
    if found is None:
        return "<unknown>"
    module = found.f_globals.get("__name__", "?")
    return f"{module}.{found.f_code.co_name} ({found.f_code.co_filename}:{found.f_lineno})"


def _format_address(address: object) -> str:
    """``host:port`` (``[v6]:port``) for inet tuples, ``str()`` of anything else."""
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address)


def _blocked_target(event: str, args: tuple[Any, ...]) -> str | None:
    """The target of a forbidden event, or None when the event is allowed."""
    if event == "socket.__new__":
        family: Any = args[1] if len(args) > 1 else None
        if family in (_AF_UNIX, -1):  # -1: a socket object rebuilt from an existing fd
            return None
        try:
            return socket.AddressFamily(family).name
        except (ValueError, TypeError):
            return f"family {family!r}"
    if event in _ADDRESS_EVENTS:
        address = args[1] if len(args) > 1 else None
        if address is None or isinstance(address, (str, bytes, bytearray)):
            return None  # Unix path, abstract name, or no address (connected socket)
        return _format_address(address)
    if event in _RESOLVE_EVENTS:  # getaddrinfo: (host, port, ...); else (host,) or (sockaddr,)
        return _format_address(args[:2] if event == "socket.getaddrinfo" else args[0] if args else "?")
    return None


class EgressGuard:
    """Blocks network egress through a process-wide audit hook; records each attempt."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._installed = self._enabled = False
        self._log_path: Path | None = None
        self._attempts: list[EgressAttempt] = []
        self._local = threading.local()

    @property
    def installed(self) -> bool:
        """Whether :meth:`install` was called."""
        return self._installed

    @property
    def enabled(self) -> bool:
        """Whether the guard currently blocks (installed and not disabled)."""
        return self._installed and self._enabled

    @property
    def attempts(self) -> tuple[EgressAttempt, ...]:
        """Every blocked attempt so far, oldest first."""
        with self._lock:
            return tuple(self._attempts)

    def install(self, log_path: Path | None = None) -> None:
        """Start blocking. Idempotent: a later call only updates the log path if given."""
        with self._lock:
            if log_path is not None:
                self._log_path = Path(log_path)
            if self._installed:
                return
            self._installed = self._enabled = True
        with _REGISTRY_LOCK:
            if not _ACTIVE_GUARDS:  # the first guard installed registers the one hook
                sys.addaudithook(_audit_hook)
            _ACTIVE_GUARDS.append(self)

    def disable(self) -> None:
        """Let every event through (the hook stays registered but does nothing)."""
        self._enabled = False

    def enable(self) -> None:
        """Block again after :meth:`disable` (no effect before :meth:`install`)."""
        self._enabled = True

    def _check(self, event: str, args: tuple[Any, ...], frame: FrameType | None) -> None:
        """Raise :class:`EgressBlockedError` if the event is forbidden; record it."""
        if not self.enabled:
            return
        target = _blocked_target(event, args)
        if target is None:
            return
        target, caller = target.replace("\n", " "), _find_caller(frame).replace("\n", " ")
        message = f"network egress blocked: {event} target={target} caller={caller}"
        if caller.startswith(_SILENT_PROBES):  # blocked all the same, but not reported as an attempt
            raise EgressBlockedError(message)
        if not getattr(self._local, "busy", False):  # a logging handler must not recurse
            self._local.busy = True
            try:
                self._record(EgressAttempt(event, target, caller, time.time()), message)
            finally:
                self._local.busy = False
        raise EgressBlockedError(message)

    def _record(self, attempt: EgressAttempt, message: str) -> None:
        """Keep, log and (if configured) append the attempt as a JSON line."""
        with self._lock:
            self._attempts.append(attempt)
            log_path = self._log_path
            if log_path is not None:
                try:
                    log_path.parent.mkdir(parents=True, exist_ok=True)
                    with open(log_path, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps(asdict(attempt), sort_keys=True) + "\n")
                except Exception:  # noqa: BLE001 - the block matters more than its log
                    pass
        try:
            _LOG.warning("%s", message)
        except Exception:  # noqa: BLE001 - nor its logging
            pass


_REGISTRY_LOCK = threading.Lock()
_ACTIVE_GUARDS: list[EgressGuard] = []  # only grows: audit hooks are permanent


def _audit_hook(event: str, args: tuple[Any, ...]) -> None:
    """The one audit hook of the process; cheap for every non-socket event."""
    if not event.startswith("socket."):
        return
    frame = sys._getframe(1)
    for guard in tuple(_ACTIVE_GUARDS):
        guard._check(event, args, frame)


GUARD = EgressGuard()


def set_offline_environment(environ: MutableMapping[str, str] | None = None) -> None:
    """Set (overwrite) every :data:`OFFLINE_ENVIRONMENT` variable in ``environ``."""
    target = os.environ if environ is None else environ
    target.update(OFFLINE_ENVIRONMENT)


def install_egress_guard(log_path: Path | None = None) -> EgressGuard:
    """Set the offline environment, install :data:`GUARD` and return it."""
    set_offline_environment()
    GUARD.install(log_path)
    return GUARD


def network_interfaces() -> list[str]:
    """Names of the network interfaces (``if_nameindex``; ``/sys/class/net`` fallback)."""
    try:
        return sorted(name for _, name in socket.if_nameindex())
    except (OSError, AttributeError):
        net = Path("/sys/class/net")
        return sorted(p.name for p in net.iterdir()) if net.is_dir() else []


def airgap_status() -> dict[str, Any]:
    """Guard state, blocked-attempt count, offline variables and interface isolation."""
    interfaces = network_interfaces()
    return {
        "guard_installed": GUARD.installed,
        "guard_enabled": GUARD.enabled,
        "blocked_attempts": len(GUARD.attempts),
        "offline_env": all(os.environ.get(k) == v for k, v in OFFLINE_ENVIRONMENT.items()),
        "interfaces": interfaces,
        "network_isolated": all(name == "lo" for name in interfaces),
    }
