"""The embeddable widget script, the demo site, public source pages and the health check.

  GET /widget.js              the widget (any site may load it; it only talks to this server)
  GET /demo                   a fictional company's help page with the widget (``serve --demo``)
  GET /source/<chunk_id>?k=   the passage a source link points at, for the bot of site key ``k``
  GET /healthz                {"status": "ok", "ready": true, ...} once the database answers and the
                              index holds what the database holds; 503 "ready": false before
"""
from __future__ import annotations

import logging
from pathlib import Path

from flask import (
    Blueprint, abort, jsonify, make_response, redirect, render_template, request, send_file, url_for,
)
from sqlalchemy import select, text

from bot.core.errors import NotFound
from bot.core.store.models import Chunk, Document
from web.context import web
from web.security import DEMO_CSP, page_headers

log = logging.getLogger(__name__)

bp = Blueprint("widget", __name__)

STATIC = Path(__file__).parent / "static"


@bp.get("/widget.js")
def widget_js():
    resp = send_file(STATIC / "widget.js", mimetype="application/javascript", max_age=300)
    # Embedded by other sites: allow cross-origin loading of this one script.
    resp.headers["Cross-Origin-Resource-Policy"] = "cross-origin"
    resp.headers["Access-Control-Allow-Origin"] = "*"
    return resp


@bp.get("/")
def home():
    if web().demo_site_key:
        return redirect(url_for("widget.demo"))
    return redirect(url_for("admin.documents"))


@bp.get("/demo")
def demo():
    key = web().demo_site_key
    if not key:
        abort(404, "the demo page is off; start the server with `supportbot serve --demo`")
    return page_headers(make_response(render_template("demo.html", site_key=key)), DEMO_CSP)


@bp.get("/source/<int:chunk_id>")
def source(chunk_id: int):
    ctx = web()
    key = ctx.site_keys.get(request.args.get("k", ""))
    with ctx.components.db.session() as s:
        row = s.execute(
            select(Chunk, Document).join(Document, Document.id == Chunk.document_id)
            .where(Chunk.id == chunk_id, Chunk.bot_id == key.bot_id)
        ).first()
    if row is None:
        raise NotFound(f"no source {chunk_id}")
    chunk, doc = row
    return page_headers(make_response(render_template("source.html", chunk=chunk, doc=doc)), DEMO_CSP)


@bp.get("/healthz")
def healthz():
    """Readiness, truthfully: 200 ``ready: true`` once the database answers and every bot's index
    holds what the database holds; 503 ``ready: false`` (with ``Retry-After``) before."""
    ctx = web()
    try:
        with ctx.components.db.session() as s:
            s.execute(text("SELECT 1"))
        database = "ok"
    except Exception:  # noqa: BLE001 - reported as not ready
        log.warning("health check: the database does not answer", exc_info=True)
        database = "unavailable"
    ready = database == "ok" and ctx.readiness.ready
    status = "ok" if ready else ("starting" if database == "ok" else "unavailable")
    resp = jsonify(status=status, ready=ready, database=database, index=ctx.readiness.index_status())
    resp.status_code = 200 if ready else 503
    resp.headers["Cache-Control"] = "no-store"
    if not ready:
        resp.headers["Retry-After"] = "5"
    return resp
