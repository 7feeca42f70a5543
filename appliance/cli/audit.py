"""Audit commands: export, verify, check, key (registered on ``appliance``)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from appliance.cli._common import console, current_account, err_console, services
from appliance.errors import AuditError

__all__ = ["register"]

MAX_CHECKPOINT_BYTES = 64 * 1024


def register(group: click.Group) -> None:
    """Add the ``audit`` group to ``group``."""
    group.add_command(audit)


@click.group()
def audit() -> None:
    """The tamper-evident audit log: export, verify, check."""


@audit.command("export")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="A new (or empty) directory, e.g. on removable media.")
@click.option("--since-checkpoint", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="The checkpoint file of an earlier export: add a proof that nothing was changed since.")
@click.option("--user", help="Only this user's entries (with an inclusion proof for each).")
@click.option("--from", "start", help="Only entries at or after this ISO 8601 time.")
@click.option("--to", "end", help="Only entries before this ISO 8601 time.")
@click.pass_context
def audit_export(ctx: click.Context, out: Path, since_checkpoint: Path | None, user: str | None, start: str | None,
                 end: str | None) -> None:
    """Write entries, a fresh signed checkpoint, proofs and the public key (officers, auditors)."""
    from appliance.app import audit as audit_use
    from appliance.audit.export import ExportFilter, normalise_time

    who = current_account(ctx)
    previous = None
    if since_checkpoint is not None:
        if since_checkpoint.stat().st_size > MAX_CHECKPOINT_BYTES:
            raise AuditError(f"{since_checkpoint}: over the {MAX_CHECKPOINT_BYTES} byte limit for a checkpoint")
        previous = since_checkpoint.read_bytes()
    filt = ExportFilter(user, normalise_time(start, "--from"), normalise_time(end, "--to"))
    manifest = audit_use.export_audit(services(ctx), who, out, since_checkpoint=previous, filt=filt)
    console.print(f"exported {manifest['entries']} of {manifest['size']} entries to {out}"
                  f"{' (filtered)' if manifest['filtered'] else ''}; keep {out / 'checkpoint'} for the next "
                  "export's --since-checkpoint", highlight=False)


@audit.command("verify")
@click.argument("directory", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--previous-checkpoint", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="A checkpoint taken away earlier: the log must extend it.")
@click.option("--key", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="The log's public key on record (instead of the one in the export).")
def audit_verify(directory: Path, previous_checkpoint: Path | None, key: Path | None) -> None:
    """Verify an export offline (also: python -m appliance.audit.verify, stdlib + cryptography only)."""
    from appliance.audit.verify import main as verify_main

    args = [str(directory)]
    if previous_checkpoint:
        args += ["--previous-checkpoint", str(previous_checkpoint)]
    if key:
        args += ["--key", str(key)]
    sys.exit(verify_main(args))


@audit.command("check")
@click.pass_context
def audit_check(ctx: click.Context) -> None:
    """Re-hash the whole local log and check every checkpoint (officers, auditors, admins)."""
    from appliance.app import audit as audit_use

    log = services(ctx).audit()
    if log.problem:
        err_console.print(f"[red]the log failed its start-up check:[/] {log.problem}", highlight=False)
    report = audit_use.check_audit(services(ctx), current_account(ctx))
    console.print(f"consistent: {report['entries']} entries, {report['checkpoints']} checkpoints, origin "
                  f"{report['origin']}, root {report['root']}", highlight=False)


@audit.command("key")
@click.pass_context
def audit_key(ctx: click.Context) -> None:
    """Print the log's public key (vkey): record it to pin later verifications."""
    click.echo(services(ctx).audit().vkey)
