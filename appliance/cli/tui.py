"""`appliance tui`: the terminal UI (registered on ``appliance``)."""

from __future__ import annotations

import click

from appliance.cli._common import services

__all__ = ["register"]


def register(group: click.Group) -> None:
    """Add ``tui`` to ``group``."""
    group.add_command(tui)


@click.command()
@click.pass_context
def tui(ctx: click.Context) -> None:
    """Open the terminal UI: log in, ask, browse the library, see the system, audit."""
    from appliance.tui.app import ApplianceApp

    ApplianceApp(services(ctx)).run()
