"""Access commands: login, logout, whoami, users, policy (registered on ``appliance``).

A login writes a session token to a file of the OS user's own (``$XDG_STATE_HOME``, by
default ``~/.local/state``, ``appliance/session-<data dir digest>``, mode 0600), so two
people using one data directory never overwrite each other's login; or it prints it
with ``--print-token`` for ``APPLIANCE_SESSION``; later commands act as that account and
every check is made by the account store. The first account on a fresh appliance must
be an admin, and may be added without a login; every later change needs an admin.
"""

from __future__ import annotations

import json
import os
import sys
import tomllib
from pathlib import Path

import click
from rich.table import Table

from appliance.access.accounts import ROLES, Account
from appliance.cli._common import console, current_account, services, session_path
from appliance.errors import AccessError

__all__ = ["register"]

MAX_POLICY_BYTES = 1 << 20


def register(group: click.Group) -> None:
    """Add ``login``, ``logout``, ``whoami``, ``users`` and ``policy`` to ``group``."""
    for command in (login, logout, whoami, users, policy):
        group.add_command(command)


def _passphrase(from_stdin: bool, confirm: bool = False) -> str:
    if from_stdin:
        return sys.stdin.readline(4096).rstrip("\r\n")
    return click.prompt("passphrase", hide_input=True, confirmation_prompt=confirm)


def _split(text: str | None) -> list[str]:
    return [c.strip() for c in (text or "").split(",") if c.strip()]


@click.command()
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the passphrase from standard input.")
@click.option("--print-token", is_flag=True, help="Print the session token instead of saving it.")
@click.pass_context
def login(ctx: click.Context, name: str, password_stdin: bool, print_token: bool) -> None:
    """Log in; later commands act as this account until logout or the idle timeout."""
    session = services(ctx).accounts().login(name, _passphrase(password_stdin))
    if print_token:
        click.echo(session.token)
        return
    path = session_path(ctx)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(session.token + "\n")
    a = session.account
    idle = services(ctx).settings.access.idle_timeout_s
    compartments = ":" + ",".join(sorted(a.compartments)) if a.compartments else ""
    console.print(f"logged in as {a.name} ({a.role}, {a.level}{compartments}); the session ends after {idle} s idle",
                  highlight=False)


@click.command()
@click.pass_context
def logout(ctx: click.Context) -> None:
    """End the login session."""
    path = session_path(ctx)
    token = os.environ.get("APPLIANCE_SESSION") or (path.read_text().strip() if path.is_file() else "")
    if token:
        services(ctx).accounts().logout(token)
    path.unlink(missing_ok=True)
    console.print("logged out")


@click.command()
@click.pass_context
def whoami(ctx: click.Context) -> None:
    """The logged-in account, its role and clearance."""
    click.echo(json.dumps(current_account(ctx).as_dict()))


@click.group()
def users() -> None:
    """Local accounts (admin)."""


def _admin_or_bootstrap(ctx: click.Context) -> Account | None:
    return current_account(ctx) if services(ctx).accounts().list() else None


@users.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option("--level", required=True, help="Clearance level, e.g. SECRET.")
@click.option("--compartments", help="Comma-separated compartments, e.g. CRYPTO,NUCLEAR.")
@click.option("--password-stdin", is_flag=True, help="Read the passphrase from standard input.")
@click.pass_context
def users_add(ctx: click.Context, name: str, role: str, level: str, compartments: str | None,
              password_stdin: bool) -> None:
    """Add an account (the first one on a fresh appliance: an admin, no login needed)."""
    by = _admin_or_bootstrap(ctx)
    acct = services(ctx).accounts().add(name, role=role, level=level, compartments=_split(compartments),
                                        passphrase=_passphrase(password_stdin, confirm=True), by=by)
    console.print(f"added {acct.name} ({acct.role}, {acct.level})", highlight=False)


@users.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def users_list(ctx: click.Context, as_json: bool) -> None:
    """List accounts."""
    accounts = services(ctx).accounts().list(by=current_account(ctx))
    if as_json:
        click.echo(json.dumps([a.as_dict() for a in accounts], indent=2))
        return
    table = Table("name", "role", "level", "compartments", "state", "updated")
    for a in accounts:
        table.add_row(a.name, a.role, a.level, ",".join(sorted(a.compartments)), "disabled" if a.disabled else "active",
                      a.updated_at)
    console.print(table)


@users.command("disable")
@click.argument("name")
@click.pass_context
def users_disable(ctx: click.Context, name: str) -> None:
    """Disable an account and end its sessions."""
    services(ctx).accounts().disable(name, by=current_account(ctx))
    console.print(f"disabled {name}")


@users.command("enable")
@click.argument("name")
@click.pass_context
def users_enable(ctx: click.Context, name: str) -> None:
    """Enable an account (and clear a lockout)."""
    services(ctx).accounts().enable(name, by=current_account(ctx))
    console.print(f"enabled {name}")


@users.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the new passphrase from standard input.")
@click.pass_context
def users_passwd(ctx: click.Context, name: str, password_stdin: bool) -> None:
    """Set a passphrase: your own (the current one first), or anyone's as admin.

    With --password-stdin, your own change reads two lines: the current passphrase, then the new one.
    """
    me = current_account(ctx)
    current = None
    if me.name == name and me.role != "admin":
        current = (sys.stdin.readline(4096).rstrip("\r\n") if password_stdin
                   else click.prompt("current passphrase", hide_input=True))
    services(ctx).accounts().passwd(name, _passphrase(password_stdin, confirm=True), by=me, current=current)
    console.print(f"passphrase of {name} changed; their sessions have ended")


@users.command("grant")
@click.argument("name")
@click.option("--level", help="Raise the clearance to this level.")
@click.option("--compartments", help="Comma-separated compartments to add.")
@click.option("--role", type=click.Choice(ROLES), help="Change the role.")
@click.pass_context
def users_grant(ctx: click.Context, name: str, level: str | None, compartments: str | None, role: str | None) -> None:
    """Raise a clearance, add compartments or change a role."""
    acct = services(ctx).accounts().grant(name, by=current_account(ctx), level=level,
                                          compartments=_split(compartments), role=role)
    console.print(f"{acct.name}: {acct.role}, {acct.level} {','.join(sorted(acct.compartments))}", highlight=False)


@users.command("revoke")
@click.argument("name")
@click.option("--level", help="Lower the clearance to this level.")
@click.option("--compartments", help="Comma-separated compartments to remove.")
@click.pass_context
def users_revoke(ctx: click.Context, name: str, level: str | None, compartments: str | None) -> None:
    """Lower a clearance or remove compartments; the account's sessions end."""
    acct = services(ctx).accounts().revoke(name, by=current_account(ctx), level=level,
                                           compartments=_split(compartments))
    console.print(f"{acct.name}: {acct.role}, {acct.level} {','.join(sorted(acct.compartments))}", highlight=False)


@click.group()
def policy() -> None:
    """The access policy file: users, roles, levels, compartments (admin)."""


@policy.command("apply")
@click.argument("path", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.pass_context
def policy_apply(ctx: click.Context, path: Path) -> None:
    """Make the accounts match a policy file; accounts it does not list are disabled."""
    from appliance.access.policy_file import apply_policy, load_policy

    by = current_account(ctx)
    if path.stat().st_size > MAX_POLICY_BYTES:
        raise AccessError(f"{path}: over the {MAX_POLICY_BYTES} byte limit")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise AccessError(f"{path}: not valid TOML: {exc}") from exc
    svc = services(ctx)
    changes = apply_policy(svc.accounts(), load_policy(doc, svc.scale, str(path)), by=by)
    for line in changes or ["no changes"]:
        console.print(line, highlight=False)
