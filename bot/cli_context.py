"""What every ``supportbot`` command shares: the settings of this invocation and its components."""
from __future__ import annotations

import click

from bot.components import Components


def components(ctx: click.Context) -> Components:
    """The shared ``Components`` of this invocation, built on first use."""
    if "components" not in ctx.obj:
        ctx.obj["components"] = Components(ctx.obj["settings"])
    return ctx.obj["components"]
