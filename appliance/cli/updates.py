"""Update commands: build-station ``keys`` and signed ``bundle``s (registered on ``appliance``)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from appliance.cli._common import console, current_account, phase_progress, services

__all__ = ["register"]


def register(group: click.Group) -> None:
    """Add the ``keys`` and ``bundle`` groups to ``group``."""
    group.add_command(keys)
    group.add_command(bundle)


def _passphrase(from_stdin: bool, confirm: bool) -> str:
    if from_stdin:
        return sys.stdin.readline(4096).rstrip("\r\n")
    return click.prompt("key passphrase", hide_input=True, confirmation_prompt=confirm)


@click.group()
def keys() -> None:
    """Signing keys of the build station (root M-of-N, roles, delegations)."""


@keys.command("init")
@click.option("--dir", "directory", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Where the key ring goes (keep it offline, e.g. on the build station's encrypted disk).")
@click.option("--root-keys", default=3, show_default=True, help="How many root keys.")
@click.option("--root-threshold", default=2, show_default=True, help="How many root keys must sign.")
@click.option("--password-stdin", is_flag=True, help="Read the passphrase from standard input.")
def keys_init(directory: Path, root_keys: int, root_threshold: int, password_stdin: bool) -> None:
    """Make new keys for every role; private keys are encrypted with the passphrase."""
    from appliance.updates.keys import init_keys

    ring = init_keys(directory, _passphrase(password_stdin, True), root_keys=root_keys,
                     root_threshold=root_threshold)
    for role, rk in ring.items():
        console.print(f"{role:>10}: {rk.threshold} of {len(rk.keys)}  " + " ".join(k.keyid[:12] for k in rk.keys),
                      highlight=False)


@keys.command("rotate")
@click.argument("role")
@click.option("--dir", "directory", type=click.Path(path_type=Path, file_okay=False), required=True)
@click.option("--password-stdin", is_flag=True, help="Read the passphrase from standard input.")
def keys_rotate(role: str, directory: Path, password_stdin: bool) -> None:
    """New keys for ROLE; the old ones are kept as retired (a root rotation is signed by both)."""
    from appliance.updates.keys import rotate_role

    rk = rotate_role(directory, role, _passphrase(password_stdin, False))
    console.print(f"{role}: new keys {' '.join(k.keyid[:12] for k in rk.keys)}; retired "
                  f"{' '.join(k.keyid[:12] for k in rk.retired)}", highlight=False)


@click.group()
def bundle() -> None:
    """Signed offline update bundles: build (build station); trust, verify, apply, history, rollback."""


@bundle.command("build")
@click.option("--spec", "spec_path", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True,
              help="The bundle spec, e.g. bundles/demo.toml.")
@click.option("--keys", "keys_dir", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="The key ring made by `appliance keys init`.")
@click.option("--state", "state_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Where the build remembers its versions (default: <keys>/state).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="A new directory for the bundle.")
@click.option("--password-stdin", is_flag=True, help="Read the key passphrase from standard input.")
@click.option("--delta", is_flag=True,
              help="Leave out blobs earlier builds shipped (for appliances that applied every earlier release).")
def bundle_build(spec_path: Path, keys_dir: Path, state_dir: Path | None, out: Path, password_stdin: bool,
                 delta: bool) -> None:
    """Sign a bundle: root chain, targets and its delegations, snapshot, timestamp, and the blobs."""
    from appliance.updates.build import build_bundle, load_spec

    spec = load_spec(spec_path)
    summary = build_bundle(spec, keys_dir, _passphrase(password_stdin, False), state_dir or keys_dir / "state", out,
                           delta=delta)
    console.print(f"built {summary['bundle']} release {summary['release']} for class {summary['class']}: "
                  f"{summary['payloads']} payloads ({summary['carried']} carried), root v{summary['root_version']}, "
                  f"expires {summary['expires']} -> {out}", highlight=False)


@bundle.command("trust")
@click.argument("root_file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.pass_context
def bundle_trust(ctx: click.Context, root_file: Path) -> None:
    """Provision the appliance's first trusted root (officers, once; later roots come in bundles)."""
    from appliance.app import updates

    keyids = updates.trust(services(ctx), current_account(ctx), root_file)
    console.print(f"trusted root keys: {keyids}", highlight=False)


@bundle.command("verify")
@click.argument("directory", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def bundle_verify(ctx: click.Context, directory: Path, as_json: bool) -> None:
    """Dry run: verify a bundle on the media completely and show what applying it would change."""
    import json as _json
    import shutil

    from appliance.app import updates

    with phase_progress() as step:
        plan = updates.verify(services(ctx), current_account(ctx), directory, step)
    if plan.work is not None:
        shutil.rmtree(plan.work, ignore_errors=True)  # a dry run keeps nothing
    s = plan.summary()
    if as_json:
        click.echo(_json.dumps(s, indent=2))
        return
    console.print(f"verified {s['bundle']} release {s['release']} for {s['class']}: {s['targets']} payloads",
                  highlight=False)
    if plan.already_applied:
        console.print("  this bundle is already applied: applying it again changes nothing", highlight=False)
        return
    for word in ("add", "replace", "revoke"):
        console.print(f"  would {word} {len(s[word])}: {', '.join(s[word][:10])}{' …' if len(s[word]) > 10 else ''}",
                      highlight=False)
    for kind in ("models", "adapters", "policy"):
        if s[kind]:
            console.print(f"  would install {kind}: {', '.join(s[kind])}", highlight=False)


@bundle.command("apply")
@click.argument("directory", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def bundle_apply(ctx: click.Context, directory: Path, as_json: bool) -> None:
    """Verify a bundle and apply it: into a new generation, switched to atomically after a health check."""
    import json as _json

    from appliance.app import updates

    with phase_progress() as step:
        result, gate = updates.apply(services(ctx), current_account(ctx), directory, step)
    if as_json:
        click.echo(_json.dumps(dict(result.as_dict(), gate=gate.as_dict()), indent=2))
        if gate.failed:
            sys.exit(1)
        return
    if result.noop:
        console.print(f"{result.bundle} release {result.release} is already applied: nothing changed", highlight=False)
        return
    c = result.changes
    console.print(f"applied {result.bundle} release {result.release} as generation {result.generation} in "
                  f"{result.seconds:.1f} s: {c.get('added', 0)} added, {c.get('replaced', 0)} replaced, "
                  f"{c.get('unchanged', 0)} unchanged, {c.get('revoked', 0)} revoked", highlight=False)
    if gate.verdict != "not run":
        from appliance.app.gate import gate_text

        console.print(gate_text(gate))
    if gate.failed:
        sys.exit(1)


@bundle.command("accept")
@click.argument("generation", type=int)
@click.pass_context
def bundle_accept(ctx: click.Context, generation: int) -> None:
    """Serve a generation the drift gate held (`[evaluation] gate_action = "hold"`) after all."""
    from appliance.app import updates

    state = updates.accept(services(ctx), current_account(ctx), generation)
    console.print(f"generation {generation} ({state.get('bundle')} release {state.get('release')}) serves, "
                  f"accepted over {len(state.get('failed') or [])} figures the drift gate failed", highlight=False)


@bundle.command("history")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def bundle_history(ctx: click.Context, as_json: bool) -> None:
    """The kept generations: which bundle made each, when and by whom; which one serves."""
    import json as _json

    from rich.table import Table

    from appliance.app import updates
    from appliance.app.gate import held

    serving, kept, state = updates.generations(services(ctx), current_account(ctx))
    holding = held(services(ctx))
    if as_json:
        click.echo(_json.dumps({"serving": serving, "generations": [g.as_dict() for g in kept], "state": state,
                                "held": holding}, indent=2))
        return
    table = Table(title=f"generations (highest release applied: {state.get('release', 0)})")
    for col in ("", "generation", "bundle", "release", "applied", "by", "changes"):
        table.add_column(col)
    for g in kept:
        changes = ", ".join(f"{v} {k}" for k, v in g.changes.items() if v)
        mark = "serving" if g.generation == serving else "held" if holding and holding["generation"] == g.generation \
            else ""
        table.add_row(mark, str(g.generation), g.bundle or "(initial)", str(g.release), g.applied_at or "", g.by or "",
                      changes)
    console.print(table)
    if holding:
        console.print(f"generation {holding['generation']} is held by the drift gate since {holding['at']} "
                      f"({len(holding['failed'])} figures dropped): `appliance bundle accept {holding['generation']}` "
                      "serves it", highlight=False)


@bundle.command("rollback")
@click.option("--to", "to", type=int, help="The generation to serve (default: the one before the serving one).")
@click.pass_context
def bundle_rollback(ctx: click.Context, to: int | None) -> None:
    """Serve an earlier kept generation again (the release high-water mark stays: no replay)."""
    from appliance.app import updates

    info = updates.roll_back(services(ctx), current_account(ctx), to)
    console.print(f"generation {info.generation} serves again ({info.bundle or 'initial'} release {info.release})",
                  highlight=False)
