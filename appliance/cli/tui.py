"""`appliance tui`: the terminal UI (registered on ``appliance``)."""

from __future__ import annotations

import click

from appliance.cli import _services, main

__all__: list[str] = []


@main.command()
@click.pass_context
def tui(ctx: click.Context) -> None:
    """Open the terminal UI: log in, ask, browse the library, see the system, audit."""
    from appliance.tui.app import ApplianceApp

    ApplianceApp(_services(ctx)).run()
