"""The ``appliance`` command line: thin fronts over the services.

Every command installs the egress guard first. A deliberate error (any
:class:`~appliance.errors.ApplianceError`) prints one line ``error: ...`` on stderr and
exits with status 2; nothing else is printed for it.

Each module here holds one area's commands and adds them to the group it is given
(``register``); the root group below registers them all.
"""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.markup import escape

from appliance.airgap import install_egress_guard
from appliance.cli import (
    access,
    agent,
    audit,
    demo,
    doctor,
    engine,
    evalsets,
    evaluation,
    knowledge,
    models,
    observability,
    specialists,
    tui,
    updates,
)
from appliance.cli._common import err_console
from appliance.errors import ApplianceError

__all__ = ["main"]


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ApplianceError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, markup=True, soft_wrap=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(package_name="appliance")
def main() -> None:
    """Air-gapped AI appliance: cited answers, specialists, signed updates, audit."""
    install_egress_guard()


for _module in (doctor, models, engine, access, knowledge, agent, specialists, evalsets, evaluation, observability,
                audit, updates, demo, tui):
    _module.register(main)
