"""Tests of appliance.airgap.

Audit hooks are permanent, so every guarded scenario runs in a child interpreter
that installs the guard, tries something and prints one JSON object on stdout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from appliance.airgap import OFFLINE_ENVIRONMENT, set_offline_environment

REPO_ROOT = Path(__file__).resolve().parent.parent

PRELUDE = """\
import json, os, socket, sys
from pathlib import Path
from appliance.airgap import GUARD, airgap_status, install_egress_guard
from appliance.errors import EgressBlockedError

def attempt(fn):
    try:
        fn()
    except EgressBlockedError as exc:
        return {"blocked": True, "message": str(exc), "permission": isinstance(exc, PermissionError)}
    except Exception as exc:
        return {"blocked": False, "error": type(exc).__name__ + ": " + str(exc)}
    return {"blocked": False}
"""


def run_child(body: str, *, prefix: list[str] | None = None, log_path: Path | None = None) -> dict[str, Any]:
    """Run PRELUDE + body in a fresh interpreter; return the JSON it printed last."""
    log_arg = "None" if log_path is None else f"Path({str(log_path)!r})"
    code = PRELUDE + f"install_egress_guard({log_arg})\n"
    code += textwrap.dedent(body)
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_ENVIRONMENT}
    env["PYTHONPATH"] = str(REPO_ROOT)
    proc = subprocess.run(
        [*(prefix or []), sys.executable, "-c", code],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_inet_socket_blocked_and_names_caller() -> None:
    out = run_child("""
        def open_socket_from_zanzibar_helper():
            socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        r = attempt(open_socket_from_zanzibar_helper)
        r["attempts"] = [a.event for a in GUARD.attempts]
        print(json.dumps(r))
    """)
    assert out["blocked"] is True
    assert out["permission"] is True
    msg = out["message"]
    assert "\n" not in msg
    assert "socket.__new__" in msg and "AF_INET" in msg
    assert "open_socket_from_zanzibar_helper" in msg
    assert "<string>:" in msg  # file:line of the caller, not of socket.py
    assert out["attempts"] == ["socket.__new__"]


def test_create_connection_blocked_before_any_syscall() -> None:
    out = run_child("""
        def dial_test_net():
            socket.create_connection(("192.0.2.1", 80), timeout=5)
        r = attempt(dial_test_net)
        r["fds"] = sorted(os.listdir("/proc/self/fd"))
        r["events"] = [(a.event, a.target) for a in GUARD.attempts]
        print(json.dumps(r))
    """)
    assert out["blocked"] is True, out
    assert "192.0.2.1:80" in out["message"] and "dial_test_net" in out["message"]
    # Blocked at name resolution, before any socket was created or connected.
    assert out["events"] == [["socket.getaddrinfo", "192.0.2.1:80"]]


def test_connect_and_sendto_inet_address_blocked_even_on_rebuilt_socket() -> None:
    # A socket rebuilt from a file descriptor (family -1) is allowed; an inet
    # destination is still refused at connect/sendto.
    out = run_child("""
        GUARD.disable()
        raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        GUARD.enable()
        s = socket.socket(fileno=os.dup(raw.fileno()))
        print(json.dumps({
            "connect": attempt(lambda: s.connect(("192.0.2.1", 9))),
            "sendto": attempt(lambda: s.sendto(b"x", ("192.0.2.1", 9))),
            "bind": attempt(lambda: s.bind(("0.0.0.0", 0))),
        }))
    """)
    for name in ("connect", "sendto", "bind"):
        assert out[name]["blocked"] is True, (name, out)
        assert f"socket.{name}" in out[name]["message"]


def test_dns_resolution_blocked() -> None:
    out = run_child("""
        def resolve_it():
            socket.getaddrinfo("example.com", 80)
        print(json.dumps({
            "gai": attempt(resolve_it),
            "ghbn": attempt(lambda: socket.gethostbyname("example.com")),
            "ghbn_ex": attempt(lambda: socket.gethostbyname_ex("example.com")),
            "ghba": attempt(lambda: socket.gethostbyaddr("192.0.2.1")),
            "gni": attempt(lambda: socket.getnameinfo(("192.0.2.1", 80), 0)),
        }))
    """)
    assert out["gai"]["blocked"] is True
    assert "socket.getaddrinfo" in out["gai"]["message"]
    assert "example.com:80" in out["gai"]["message"] and "resolve_it" in out["gai"]["message"]
    for key in ("ghbn", "ghbn_ex", "ghba", "gni"):
        assert out[key]["blocked"] is True, (key, out)


def test_unix_sockets_still_work(tmp_path: Path) -> None:
    sock_path = tmp_path / "ctl.sock"
    out = run_child(f"""
        a, b = socket.socketpair()
        a.sendall(b"ping")
        pair_ok = b.recv(4) == b"ping"
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind({str(sock_path)!r})
        srv.listen(1)
        cli = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        cli.connect({str(sock_path)!r})
        conn, _ = srv.accept()
        cli.sendall(b"pong")
        print(json.dumps({{"pair": pair_ok, "unix": conn.recv(4) == b"pong",
                          "attempts": len(GUARD.attempts), "enabled": GUARD.enabled}}))
    """)
    assert out == {"pair": True, "unix": True, "attempts": 0, "enabled": True}
    assert sock_path.exists()


def test_multiprocessing_pipe_still_works() -> None:
    out = run_child("""
        import multiprocessing
        x, y = multiprocessing.Pipe()
        x.send({"k": [1, 2]})
        u, v = multiprocessing.Pipe(duplex=False)
        v.send("one-way")
        print(json.dumps({"duplex": y.recv(), "simplex": u.recv(), "attempts": len(GUARD.attempts)}))
    """)
    assert out == {"duplex": {"k": [1, 2]}, "simplex": "one-way", "attempts": 0}


def test_attempts_counted_and_json_log_written(tmp_path: Path) -> None:
    log_path = tmp_path / "nested" / "dir" / "egress.jsonl"
    out = run_child("""
        attempt(lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM))
        attempt(lambda: socket.getaddrinfo("updates.example.org", 443))
        print(json.dumps({"n": len(GUARD.attempts), "status": airgap_status()["blocked_attempts"]}))
    """, log_path=log_path)
    assert out == {"n": 2, "status": 2}
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [line["event"] for line in lines] == ["socket.__new__", "socket.getaddrinfo"]
    assert lines[0]["target"] == "AF_INET6"
    assert lines[1]["target"] == "updates.example.org:443"
    assert all(set(line) == {"event", "target", "caller", "at"} for line in lines)
    assert all("<lambda>" in line["caller"] for line in lines)


def test_unwritable_log_does_not_hide_the_block(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    out = run_child("""
        print(json.dumps(attempt(lambda: socket.socket(socket.AF_INET))))
    """, log_path=blocker / "egress.jsonl")
    assert out["blocked"] is True


def test_disable_allows_then_enable_blocks_again() -> None:
    out = run_child("""
        GUARD.disable()
        s = None
        def make():
            global s
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        off = attempt(make)
        off["family"] = s.family.name if s else None
        s and s.close()
        GUARD.enable()
        on = attempt(make)
        print(json.dumps({"off": off, "on": on, "enabled": GUARD.enabled, "n": len(GUARD.attempts)}))
    """)
    assert out["off"] == {"blocked": False, "family": "AF_INET"}
    assert out["on"]["blocked"] is True
    assert out["enabled"] is True and out["n"] == 1


def test_install_is_idempotent() -> None:
    out = run_child("""
        import appliance.airgap as ag
        install_egress_guard(); GUARD.install()
        attempt(lambda: socket.socket(socket.AF_INET))
        print(json.dumps({"guards": len(ag._ACTIVE_GUARDS), "n": len(GUARD.attempts)}))
    """)
    assert out == {"guards": 1, "n": 1}


def test_set_offline_environment_sets_every_variable() -> None:
    environ = {"HF_HUB_OFFLINE": "0", "ANONYMIZED_TELEMETRY": "True", "OTHER": "x"}
    set_offline_environment(environ)
    assert environ == {**OFFLINE_ENVIRONMENT, "OTHER": "x"}
    assert len(OFFLINE_ENVIRONMENT) == 7


def test_airgap_status_reports_count_and_env() -> None:
    out = run_child("""
        before = airgap_status()
        attempt(lambda: socket.socket(socket.AF_INET))
        attempt(lambda: socket.gethostbyname("example.com"))
        after = airgap_status()
        print(json.dumps({"before": before, "after": after, "n": len(GUARD.attempts)}))
    """)
    before, after = out["before"], out["after"]
    assert before["blocked_attempts"] == 0 and after["blocked_attempts"] == 2 and out["n"] == 2
    assert after["guard_installed"] is True and after["guard_enabled"] is True
    assert after["offline_env"] is True
    assert isinstance(after["interfaces"], list) and "lo" in after["interfaces"]


def test_network_isolated_in_empty_network_namespace() -> None:
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, f"`unshare -n true` failed: {probe.stderr.strip()}"
    out = run_child("""
        print(json.dumps(airgap_status()))
    """, prefix=["unshare", "-n"])
    assert out["interfaces"] == ["lo"]
    assert out["network_isolated"] is True
    assert out["blocked_attempts"] == 0
