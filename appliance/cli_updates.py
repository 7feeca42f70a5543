"""Update commands: build-station keys (registered on ``appliance``); bundles follow."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from appliance.cli import console, main

__all__: list[str] = []


def _passphrase(from_stdin: bool, confirm: bool) -> str:
    if from_stdin:
        return sys.stdin.readline(4096).rstrip("\r\n")
    return click.prompt("key passphrase", hide_input=True, confirmation_prompt=confirm)


@main.group()
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


@main.group()
def bundle() -> None:
    """Signed offline update bundles: build (build station); verify and apply arrive next."""


@bundle.command("build")
@click.option("--spec", "spec_path", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True,
              help="The bundle spec, e.g. bundles/demo.toml.")
@click.option("--keys", "keys_dir", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="The key ring made by `appliance keys init`.")
@click.option("--state", "state_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Where the build remembers its versions (default: <keys>/state).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="A new directory for the bundle.")
@click.option("--password-stdin", is_flag=True, help="Read the key passphrase from standard input.")
def bundle_build(spec_path: Path, keys_dir: Path, state_dir: Path | None, out: Path, password_stdin: bool) -> None:
    """Sign a bundle: root chain, targets and its delegations, snapshot, timestamp, and the blobs."""
    from appliance.updates.build import build_bundle, load_spec

    spec = load_spec(spec_path)
    summary = build_bundle(spec, keys_dir, _passphrase(password_stdin, False), state_dir or keys_dir / "state", out)
    console.print(f"built {summary['bundle']} release {summary['release']} for class {summary['class']}: "
                  f"{summary['payloads']} payloads, root v{summary['root_version']}, expires {summary['expires']} "
                  f"-> {out}", highlight=False)


@bundle.command("trust")
@click.argument("root_file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.pass_context
def bundle_trust(ctx: click.Context, root_file: Path) -> None:
    """Provision the appliance's first trusted root (officers, once; later roots come in bundles)."""
    from appliance.cli import _services
    from appliance.cli_access import current_account
    from appliance.updates.check import trust_root

    keyids = trust_root(_services(ctx), current_account(ctx), root_file)
    console.print(f"trusted root keys: {keyids}", highlight=False)


@bundle.command("verify")
@click.argument("directory", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def bundle_verify(ctx: click.Context, directory: Path, as_json: bool) -> None:
    """Dry run: verify a bundle on the media completely and show what applying it would change."""
    import json as _json
    import shutil

    from appliance.cli import _services
    from appliance.cli_access import current_account
    from appliance.updates.check import verify_bundle

    services = _services(ctx)
    with console.status("verifying the bundle (staging, signatures, versions, hashes)…"):
        plan = verify_bundle(services, current_account(ctx), directory, services.settings.updates.appliance_class)
    if plan.work is not None:
        shutil.rmtree(plan.work, ignore_errors=True)  # a dry run keeps nothing
    s = plan.summary()
    if as_json:
        click.echo(_json.dumps(s, indent=2))
        return
    console.print(f"verified {s['bundle']} release {s['release']} for {s['class']}: {s['targets']} payloads",
                  highlight=False)
    for word in ("add", "replace", "revoke"):
        console.print(f"  would {word} {len(s[word])}: {', '.join(s[word][:10])}{' …' if len(s[word]) > 10 else ''}",
                      highlight=False)
