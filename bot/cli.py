"""The ``supportbot`` command: one click group; each feature module registers its commands."""
from __future__ import annotations

import importlib
import os

import click

from bot.core.errors import SupportbotError
from bot.core.settings import load_settings

# Feature modules that each expose ``register(main)``.
COMMAND_MODULES = ("bot.cli_knowledge", "bot.cli_dialogue", "web.cli", "training.cli")


class TranslatingGroup(click.Group):
    """Turns SupportbotError into a clean ``Error: ...`` message instead of a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SupportbotError as e:
            raise click.ClickException(e.message) from e


@click.group(cls=TranslatingGroup)
@click.option("--data-dir", type=click.Path(), default=None, help="Data directory (default ./var).")
@click.option("--bot", "bot_name", default=None, help="Bot name (default: the 'default' bot).")
@click.version_option(package_name="supportbot")
@click.pass_context
def main(ctx: click.Context, data_dir: str | None, bot_name: str | None) -> None:
    """supportbot: customer-service chatbots grounded in your FAQ and help documents."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    overrides = {"data_dir": data_dir} if data_dir else {}
    settings = load_settings(**overrides)
    ctx.obj = {"settings": settings, "bot": bot_name or settings.default_bot}


def components(ctx: click.Context):
    """The shared Components of this invocation, built on first use."""
    from bot.components import Components

    if "components" not in ctx.obj:
        ctx.obj["components"] = Components(ctx.obj["settings"])
    return ctx.obj["components"]


for _name in COMMAND_MODULES:
    try:
        _module = importlib.import_module(_name)
    except ModuleNotFoundError as _e:  # a feature package not installed in this build
        if _e.name and _name.startswith(_e.name):
            continue
        raise
    _module.register(main)
