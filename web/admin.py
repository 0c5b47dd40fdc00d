"""The admin console under ``/admin`` (login required): documents, keys, conversations.

Pages are server-rendered (Jinja autoescaping) under a strict Content-Security-Policy: scripts
and styles come only from ``/static``. Uploads go one file per request from ``static/admin.js``
so each file shows its own progress and its own error; without JavaScript the form posts all the
files at once and the page lists the outcome of each.
"""
from __future__ import annotations

from pathlib import PurePosixPath

from flask import Blueprint, flash, g, jsonify, redirect, render_template, request, session, url_for
from sqlalchemy import select

from bot.core.errors import FileTooLarge, NotFound, SupportbotError, UnsupportedFileType
from bot.core.store.models import Bot
from web.auth import login_required
from web.context import web
from web.errors import wants_json
from web.schemas import CONVERSATION_ID
from web.security import ADMIN_CSP, page_headers
from web.uploads import parse_upload

bp = Blueprint("admin", __name__, url_prefix="/admin")


@bp.after_app_request
def _admin_headers(resp):
    if request.path.startswith("/admin"):
        page_headers(resp, ADMIN_CSP)
        resp.headers.setdefault("Cache-Control", "no-store")
    return resp


@bp.before_request
def _select_bot() -> None:
    if g.get("user") is None:
        return  # login_required answers first: no bot name is checked (or revealed) before login
    chosen = request.args.get("bot")
    if chosen:
        if chosen not in _bots():
            raise NotFound(f"no bot called {chosen!r}")
        session["bot"] = chosen
    g.bot = session.get("bot") or web().settings.default_bot


def _bots() -> list[str]:
    with web().components.db.session() as s:
        return list(s.scalars(select(Bot.name).order_by(Bot.name)))


@bp.app_context_processor
def _template_globals():
    bots = _bots() if g.get("user") and request.path.startswith("/admin") else []
    return {"current_bot": g.get("bot"), "user": g.get("user"), "bots": bots}


@bp.get("/")
@login_required
def index():
    return redirect(url_for("admin.documents"))


# -- documents ----------------------------------------------------------------------------------
@bp.get("/documents")
@login_required
def documents():
    query = request.args.get("q", "").strip() or None
    kb = web().components.knowledge
    rows = kb.documents(g.bot, query=query)
    return render_template("admin/documents.html", documents=rows, q=query or "",
                           suffixes=_suffixes(), max_mb=web().settings.web.max_upload_mb)


def _suffixes() -> tuple[str, ...]:
    from retrieval.parsers import SUPPORTED_SUFFIXES

    return SUPPORTED_SUFFIXES


def _ingest_one(storage) -> dict:
    """Ingest one uploaded file; the outcome names the file, whatever happens."""
    name = PurePosixPath((storage.filename or "").replace("\\", "/")).name[:200]
    if not name:
        return {"file": "(unnamed)", "ok": False, "status": 400, "errors": ["the file has no name"]}
    try:
        if PurePosixPath(name).suffix.lower() not in _suffixes():
            raise UnsupportedFileType(name, f"unsupported file type; supported: {', '.join(_suffixes())}")
        data = storage.read()
        limit_mb = web().settings.web.max_upload_mb
        if len(data) > limit_mb * 1_000_000:
            raise FileTooLarge(name, f"larger than the {limit_mb:g} MB upload limit")
        if not data:
            raise SupportbotError(f"{name}: the file is empty")
        # Parsed in a child process under the ingest limits (web/uploads.py), not in this thread.
        docs = parse_upload(name, data, web().settings.ingest)
        report = web().components.knowledge.ingest_documents(
            g.bot, docs, replace_sources={d.source for d in docs if d.source})
    except SupportbotError as exc:
        return {"file": name, "ok": False, "status": exc.status, "errors": [exc.message]}
    return {
        "file": name, "ok": not report.errors, "status": 422 if report.errors else 200,
        "errors": list(report.errors), "added": len(report.added), "replaced": len(report.replaced),
        "unchanged": len(report.unchanged), "chunks": report.chunks,
    }


@bp.post("/documents/upload")
@login_required
def upload():
    files = [f for f in request.files.getlist("files") if f and f.filename]
    if not files:
        raise SupportbotError("choose at least one file to upload")
    results = [_ingest_one(f) for f in files]
    if wants_json():
        worst = max(r["status"] for r in results)
        return jsonify(files=results), worst
    for r in results:
        if r["ok"]:
            flash(f"{r['file']}: {r['added']} added, {r['replaced']} replaced, {r['chunks']} chunks", "ok")
        else:
            for err in r["errors"]:
                flash(err, "error")
    return redirect(url_for("admin.documents"))


@bp.post("/documents/delete")
@login_required
def delete_document():
    doc_id = request.form.get("doc_id", "")
    if not doc_id:
        raise SupportbotError("doc_id is required")
    web().components.knowledge.delete(g.bot, doc_id)
    flash(f"Deleted {doc_id}.", "ok")
    return redirect(url_for("admin.documents"))


@bp.post("/reindex")
@login_required
def reindex():
    version = web().components.knowledge.reindex(g.bot)
    flash(f"Index rebuilt (version {version}).", "ok")
    return redirect(url_for("admin.documents"))


# -- keys ---------------------------------------------------------------------------------------
def _keys_page(new_secret: str | None = None, status: int = 200):
    ctx = web()
    return render_template(
        "admin/keys.html", site_keys=ctx.site_keys.list(g.bot),
        api_keys=[k for k in ctx.api_keys.list() if k.bot == g.bot],
        new_secret=new_secret, host=request.host_url.rstrip("/"),
    ), status


@bp.get("/keys")
@login_required
def keys():
    return _keys_page()


@bp.post("/keys/site")
@login_required
def create_site_key():
    origins = request.form.get("origins", "").replace(",", "\n").split()
    key = web().site_keys.create(g.bot, origins)
    flash(f"Site key {key.key} created for {', '.join(key.origins)}.", "ok")
    return redirect(url_for("admin.keys"))


@bp.post("/keys/site/<key>/active")
@login_required
def set_site_key_active(key: str):
    web().site_keys.set_active(key, request.form.get("active") == "1")
    return redirect(url_for("admin.keys"))


@bp.post("/keys/api")
@login_required
def create_api_key():
    info, secret = web().api_keys.create(g.bot, request.form.get("name", "").strip(),
                                         scope=request.form.get("scope", "chat") or "chat")
    # Shown once, in this response only (Cache-Control: no-store): never stored anywhere, not in
    # the session cookie, not server-side; only its SHA-256 is kept.
    flash(f"API key {info.prefix}... created. Copy it now: it is not shown again.", "ok")
    return _keys_page(new_secret=secret, status=201)


@bp.post("/keys/api/<int:key_id>/active")
@login_required
def set_api_key_active(key_id: int):
    if key_id > MAX_ID:
        raise NotFound(f"no API key {key_id}")
    web().api_keys.set_active(key_id, request.form.get("active") == "1")
    return redirect(url_for("admin.keys"))


# -- conversations ------------------------------------------------------------------------------
PAGE = 50
MAX_ID = 2**31 - 1  # the largest integer id every database here stores


@bp.get("/conversations")
@login_required
def conversations():
    status = request.args.get("status") or None
    offset = min(max(0, request.args.get("offset", 0, type=int)), MAX_ID)
    bot_id = web().components.db.bot_id(g.bot)
    rows = web().components.conversations.list(bot_id, limit=PAGE, offset=offset, status=status)
    return render_template("admin/conversations.html", conversations=rows, status=status or "",
                           offset=offset, page=PAGE)


@bp.get("/conversations/<conversation_id>")
@login_required
def conversation(conversation_id: str):
    if not CONVERSATION_ID.fullmatch(conversation_id):
        raise NotFound(f"no conversation {conversation_id[:64]!r}")
    store = web().components.conversations
    conv = store.get(conversation_id)
    if conv["bot_id"] != web().components.db.bot_id(g.bot):
        raise NotFound(f"no conversation {conversation_id!r} in bot {g.bot!r}")
    return render_template("admin/conversation.html", conv=conv, messages=store.history(conversation_id),
                           handoffs=store.handoffs(conversation_id))


@bp.post("/conversations/<conversation_id>/status")
@login_required
def set_conversation_status(conversation_id: str):
    if not CONVERSATION_ID.fullmatch(conversation_id):
        raise NotFound(f"no conversation {conversation_id[:64]!r}")
    # Through the hand-off state machine (bot/handoff.py): resolve a conversation waiting for or
    # with a person, or hand one the admin has back to the bot; anything else is refused (409).
    desk, status = web().components.handoffs, request.form.get("status", "")
    desk.detail(conversation_id, bot_id=web().components.db.bot_id(g.bot))  # this bot's only
    if status == "resolved":
        desk.resolve(conversation_id, g.user["username"])
    elif status == "bot":
        desk.hand_back(conversation_id, g.user["username"])
    else:
        raise SupportbotError("status must be 'resolved' or 'bot' (hand back); take and reply in the queue")
    return redirect(url_for("admin.conversation", conversation_id=conversation_id))
