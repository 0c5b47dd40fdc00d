"""The admin console's fixes page (``/admin/fixes``, login required): the bot's bad answers with
what it retrieved, a form to write the right answer, and the drafts drafted from resolved
conversations to approve (with edits) or dismiss. The logic is ``bot/fixes.py``'s; forms carry
the CSRF token (``CSRFProtect``), templates autoescape.

``/admin/fixes/new?question=...`` opens the form with a question filled in (the analytics page's
"write the answer" links here).
"""
from __future__ import annotations

from flask import Blueprint, flash, g, redirect, render_template, request, session, url_for

from bot.core.errors import NotFound, SupportbotError
from bot.fixes import Fixes
from web.auth import login_required
from web.context import web

bp = Blueprint("fixes", __name__, url_prefix="/admin/fixes")
MAX_ID = 2**31 - 1


@bp.before_request
def _bot() -> None:
    # The bot chosen in the console, kept in the session as web/admin.py keeps it.
    if g.get("user") is None:
        return  # login_required answers first
    chosen = request.args.get("bot")
    if chosen:
        from web.admin import _bots

        if chosen not in _bots():
            raise NotFound(f"no bot called {chosen!r}")
        session["bot"] = chosen
    g.bot = session.get("bot") or web().settings.default_bot


def _fixes() -> Fixes:
    comps = web().components
    return Fixes(comps.db, comps.knowledge, comps.embedder)


def _id(value, what: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise SupportbotError(f"{what} must be a number") from None
    if not 0 < n <= MAX_ID:
        raise NotFound(f"no {what} {value}")
    return n


def _agent() -> str:
    return str((g.get("user") or {}).get("username", ""))


@bp.get("/")
@login_required
def index():
    f = _fixes()
    return render_template("admin/fixes.html", bad=f.bad_answers(g.bot, limit=100),
                           drafts=f.list(g.bot, status="draft"), approved=f.list(g.bot, status="approved", limit=50),
                           question=request.args.get("question", "")[:2000],
                           # the bot reply an analytics group links from: the fix is recorded against it
                           message_id=request.args.get("message_id", type=int))


@bp.get("/new")
@login_required
def new():
    return redirect(url_for("fixes.index", question=request.args.get("question", "")[:2000]) + "#write")


@bp.post("/write")
@login_required
def write():
    form = request.form
    message_id = _id(form["message_id"], "message") if form.get("message_id") else None
    fix = _fixes().write(g.bot, form.get("question", ""), form.get("answer", ""), message_id=message_id,
                         created_by=_agent())
    flash(f"Fix {fix['id']} published as the FAQ entry {fix['document']}.", "ok")
    return redirect(url_for("fixes.index"))


@bp.post("/bad/<int:message_id>/dismiss")
@login_required
def dismiss_bad(message_id: int):
    _fixes().dismiss_bad_answer(g.bot, _id(message_id, "message"), by=_agent())
    flash(f"Message {message_id} taken off the list.", "ok")
    return redirect(url_for("fixes.index"))


@bp.post("/<int:fix_id>/approve")
@login_required
def approve(fix_id: int):
    form = request.form
    fix = _fixes().approve(g.bot, _id(fix_id, "fix"), question=form.get("question"), answer=form.get("answer"),
                           by=_agent())
    flash(f"Fix {fix['id']} approved and published as {fix['document']}.", "ok")
    return redirect(url_for("fixes.index"))


@bp.post("/<int:fix_id>/dismiss")
@login_required
def dismiss(fix_id: int):
    _fixes().dismiss(g.bot, _id(fix_id, "fix"))
    flash(f"Fix {fix_id} dismissed.", "ok")
    return redirect(url_for("fixes.index"))


@bp.post("/draft")
@login_required
def draft():
    report = _fixes().draft_from_resolved(g.bot)
    flash(f"{report.seen} agent replies read: {len(report.drafted)} drafted, "
          f"{len(report.duplicates)} already covered by an FAQ entry or a fix.", "ok")
    return redirect(url_for("fixes.index"))
