"""Web commands: ``supportbot serve`` and ``supportbot admin create-user | site-key | api-key``."""
from __future__ import annotations

import functools

import click

from bot.core.errors import SupportbotError


def _components(ctx):
    from bot.cli_context import components

    return components(ctx)


def _app_factory(settings, bot, demo_site_key):
    """Build the app inside a gunicorn worker (after the fork); load the models in the background."""
    import os
    import threading

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from web import create_app
    from web.demo import warm_up

    app = create_app(settings, demo_site_key=demo_site_key)
    components = app.extensions["supportbot"].components
    threading.Thread(target=warm_up, args=(components, bot), name="warm-up", daemon=True).start()
    return app


@click.command()
@click.option("--host", default=None, help="Interface to bind (web.host, default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (web.port, default 8080).")
@click.option("--workers", type=int, default=None, help="Worker processes (web.workers).")
@click.option("--threads", type=int, default=None, help="Threads (gthread) per worker: open streams it can hold.")
@click.option("--worker-class", type=click.Choice(["gthread", "gevent"]), default=None,
              help="gunicorn worker class (web.worker_class).")
@click.option("--demo", is_flag=True,
              help="Serve the demo site at /demo: ingest samples/faq if the knowledge base is empty "
                   "and create a site key for this server's own origin.")
@click.option("--public-url", default=None, help="With --demo: the origin visitors use, if not this host.")
@click.option("--access-log", is_flag=True, help="Log every request.")
@click.pass_context
def serve(ctx, host, port, workers, threads, worker_class, demo, public_url, access_log):
    """Run the web app (chat API, widget, admin console) under gunicorn."""
    from web.server import gunicorn_options, run

    settings = ctx.obj["settings"]
    web = settings.web
    for name, value in (("host", host), ("port", port), ("workers", workers), ("threads", threads),
                        ("worker_class", worker_class)):
        if value is not None:
            setattr(web, name, value)
    settings.ensure_dirs()
    if web.worker_class == "gevent" and settings.generator.backend == "hf":
        click.secho("warning: under gevent an in-process model blocks every other stream of its worker "
                    "while it generates; use --worker-class gthread with the hf backend", fg="yellow", err=True)
    demo_key = None
    base = f"http://{'127.0.0.1' if web.host in ('0.0.0.0', '::') else web.host}:{web.port}"
    from web.demo import demo_origins, prepare_in_subprocess

    click.echo("Preparing (a first run converts the default model once; --demo ingests the samples) ...", err=True)
    origins = demo_origins(web.host, web.port, public_url) if demo else None
    result = prepare_in_subprocess(settings, ctx.obj["bot"], origins)
    if demo:
        demo_key = result["site_key"]
        if result["ingested"]:
            click.echo(f"Ingested {result['ingested']} sample documents.", err=True)
        click.echo(f"Demo site: {public_url or base}/demo   (site key {demo_key})", err=True)
    click.echo(f"Admin console: {public_url or base}/admin   (create a login: supportbot admin create-user NAME)",
               err=True)
    run(functools.partial(_app_factory, settings, ctx.obj["bot"], demo_key), gunicorn_options(web, access_log))


@click.group()
def admin():
    """Admin accounts, site keys (the widget) and API keys (the OpenAI-compatible endpoint)."""


@admin.command("create-user")
@click.argument("username")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True,
              envvar="SUPPORTBOT_ADMIN_PASSWORD", help="Prompted for when not given.")
@click.pass_context
def create_user_cmd(ctx, username, password):
    """Create an admin console login."""
    from web.auth import create_user

    create_user(_components(ctx).db, username, password)
    click.echo(f"created user {username}")


@admin.command("site-key")
@click.option("--origin", "origins", multiple=True, help="An allowed origin, e.g. https://www.example.com (repeatable).")
@click.option("--list", "list_keys", is_flag=True, help="List the bot's site keys.")
@click.option("--deactivate", default=None, metavar="KEY", help="Deactivate a site key.")
@click.pass_context
def site_key_cmd(ctx, origins, list_keys, deactivate):
    """Create a site key for the widget (allowed on the given origins), or list/deactivate keys."""
    from web.keys import SiteKeys

    keys = SiteKeys(_components(ctx).db)
    bot = ctx.obj["bot"]
    if deactivate:
        keys.set_active(deactivate, False)
        click.echo(f"deactivated {deactivate}")
    elif list_keys:
        for k in keys.list(bot):
            click.echo(f"{k.key}\t{'active' if k.active else 'inactive'}\t{' '.join(k.origins)}")
    else:
        if not origins:
            raise SupportbotError("give at least one --origin (the site that embeds the widget)")
        info = keys.create(bot, list(origins))
        click.echo(info.key)
        click.echo(f'Embed: <script src="https://YOUR-SUPPORTBOT-HOST/widget.js" data-site-key="{info.key}" async></script>',
                   err=True)


@admin.command("api-key")
@click.option("--name", default="", help="What the key is for.")
@click.option("--list", "list_keys", is_flag=True, help="List API keys.")
@click.option("--revoke", type=int, default=None, metavar="ID", help="Revoke the key with this id.")
@click.option("--scope", type=click.Choice(["chat", "agent"]), default="chat", show_default=True,
              help="chat: the OpenAI-compatible /v1 API; agent: the agent API /api/agent (help desks).")
@click.pass_context
def api_key_cmd(ctx, name, list_keys, revoke, scope):
    """Create an API key (printed once) for POST /v1/chat/completions, or with --scope agent for
    the agent API; or list/revoke keys."""
    from web.keys import ApiKeys

    keys = ApiKeys(_components(ctx).db)
    if revoke is not None:
        keys.set_active(revoke, False)
        click.echo(f"revoked API key {revoke}")
    elif list_keys:
        for k in keys.list():
            click.echo(f"{k.id}\t{k.bot}\t{k.scope}\t{k.prefix}...\t{'active' if k.active else 'revoked'}\t{k.name}")
    else:
        _, secret = keys.create(ctx.obj["bot"], name, scope=scope)
        click.echo(secret)
        click.echo("Store it now: it is not shown again.", err=True)


def register(main: click.Group) -> None:
    main.add_command(serve)
    main.add_command(admin)
