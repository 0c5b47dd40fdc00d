"""Webhooks in the admin console (login required, CSRF on every form): ``/admin/webhooks``.

Per bot: the receivers (URL, events, active), a form to add one (its secret is shown once, in
that response only: ``Cache-Control: no-store``, never flashed into the session cookie), and the
latest deliveries with their attempts and last error. Signing, queueing and delivery are
``bot/webhooks.py``'s.
"""
from __future__ import annotations

from flask import Blueprint, flash, g, redirect, render_template, request, url_for

from bot.core.errors import NotFound
from bot.webhooks import EVENTS
from web import admin
from web.auth import login_required
from web.context import web

bp = Blueprint("webhooks", __name__, url_prefix="/admin")
bp.before_request(admin._select_bot)
MAX_ID = 2**31 - 1


def _bot_id() -> int:
    return web().components.db.bot_id(g.bot)


def _page(new_secret: str | None = None, status: int = 200):
    hooks = web().components.webhooks
    bot_id = _bot_id()
    return render_template("admin/webhooks.html", webhooks=hooks.list(bot_id), events=EVENTS,
                           deliveries=hooks.deliveries(bot_id), new_secret=new_secret), status


@bp.get("/webhooks")
@login_required
def webhooks():
    return _page()


@bp.post("/webhooks")
@login_required
def create():
    info, secret = web().components.webhooks.create(_bot_id(), request.form.get("url", ""),
                                                    request.form.getlist("events"))
    flash(f"Webhook {info.id} created for {info.url}. Copy its secret now: it is not shown again.", "ok")
    return _page(new_secret=secret, status=201)


@bp.post("/webhooks/<int:webhook_id>/active")
@login_required
def set_active(webhook_id: int):
    if webhook_id > MAX_ID:
        raise NotFound(f"no webhook {webhook_id}")
    web().components.webhooks.set_active(_bot_id(), webhook_id, request.form.get("active") == "1")
    return redirect(url_for("webhooks.webhooks"))


@bp.post("/webhooks/<int:webhook_id>/delete")
@login_required
def delete(webhook_id: int):
    if webhook_id > MAX_ID:
        raise NotFound(f"no webhook {webhook_id}")
    web().components.webhooks.delete(_bot_id(), webhook_id)
    flash(f"Webhook {webhook_id} deleted.", "ok")
    return redirect(url_for("webhooks.webhooks"))
