"""The ``supportbot`` command: one click group; each feature module registers its commands."""
from __future__ import annotations

import os

import click

import training.cli
import web.cli
from bot import cli_dialogue, cli_fixes, cli_knowledge
from bot.core.errors import SupportbotError
from bot.core.settings import load_settings


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


for _module in (cli_knowledge, cli_dialogue, cli_fixes, web.cli, training.cli):
    _module.register(main)
