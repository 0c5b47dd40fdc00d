"""The agents' queue in the admin console (login required): live hand-offs, answered by a person.

  GET  /admin/queue[?open=<id>]            the page: waiting conversations (longest wait first) and
                                           those a person has, with waiting time, the hand-off's
                                           reason, the bot's sources of its last answer; the open
                                           one's transcript, the visitor typing, take / reply /
                                           hand back / resolve
  GET  /admin/queue/events[?open=<id>]     text/event-stream: a ``queue`` event with the whole
                                           picture whenever it changes (``static/queue.js`` draws it)
  POST /admin/queue/<id>/take | reply {text} | hand-back | resolve     (CSRF token required)
  POST /admin/queue/options                the bot's "ask the bot first" option

The page works without JavaScript (forms post, the page redirects back); with it, actions are
sent with ``fetch`` (``X-CSRFToken``) and the stream redraws the page. The agent is the logged-in
user (``assigned_to`` = their user name); an open queue page keeps them online (``AgentPresence``).
A refused action (a conversation another agent took) is a 409 with its reason, or, for a form, a
flashed message.
"""
from __future__ import annotations

import json
import time
from typing import Iterator

from flask import Blueprint, flash, g, jsonify, redirect, render_template, request, url_for

from bot.core.errors import NotFound, SupportbotError
from bot.core.events import Event
from bot.core.store.models import utcnow
from web import admin
from web.answers import Item
from web.auth import login_required
from web.context import web
from web.errors import wants_json
from web.schemas import CONVERSATION_ID
from web.sse import sse_response, with_heartbeats

bp = Blueprint("queue", __name__, url_prefix="/admin")
bp.before_request(admin._select_bot)  # the same bot selection (session, ?bot=) as the console


def _agent() -> str:
    return g.user["username"]


def _bot_id() -> int:
    return web().components.db.bot_id(g.bot)


def _open_id() -> str | None:
    cid = request.args.get("open") or ""
    return cid if CONVERSATION_ID.fullmatch(cid) else None


def snapshot(bot_id: int, open_id: str | None) -> dict:
    """Everything the page shows (the queue, agents online, the open conversation)."""
    desk = web().components.handoffs
    opened = None
    if open_id:
        try:
            opened = desk.detail(open_id, bot_id=bot_id)
        except NotFound:
            opened = None
    return {"conversations": desk.queue(bot_id), "agents_online": desk.agents_online(), "open": opened,
            "me": _agent(), "typing_s": web().settings.handoff.typing_s}


def _fingerprint(snap: dict) -> str:
    """The snapshot without what changes every second by itself (waiting times)."""
    rows = [{k: v for k, v in c.items() if k != "waiting_s"} for c in snap["conversations"]]
    opened = snap["open"] and {k: v for k, v in snap["open"].items() if k != "waiting_s"}
    return json.dumps([rows, snap["agents_online"], opened], sort_keys=True, default=str)


@bp.get("/queue")
@login_required
def queue():
    desk = web().components.handoffs
    desk.seen(_agent())
    bot_id = _bot_id()
    open_id = _open_id()
    return render_template("admin/queue.html", snap=snapshot(bot_id, open_id), open_id=open_id or "",
                           ask_bot_first=bool(desk.bot_options(bot_id).get("handoff_ask_bot_first")),
                           online_s=web().settings.handoff.agent_online_s)


def _follow(bot_id: int, open_id: str | None, agent: str, heartbeat_s: float) -> Iterator[Item]:
    desk = web().components.handoffs
    poll = max(0.05, web().settings.handoff.poll_s)
    last, last_sent = None, time.monotonic()
    while True:
        version = desk.changes.version
        desk.seen(agent)
        snap = snapshot(bot_id, open_id)
        mark = _fingerprint(snap)
        now = time.monotonic()
        if mark != last:
            snap["server_time"] = utcnow().isoformat(timespec="milliseconds") + "Z"
            yield [(Event("queue", snap), None)]
            last, last_sent = mark, now
        elif now - last_sent >= heartbeat_s:
            yield None
            last_sent = now
        desk.changes.wait(version, poll)


@bp.get("/queue/events")
@login_required
def queue_events():
    return sse_response(with_heartbeats(_follow(_bot_id(), _open_id(), _agent(), web().settings.web.heartbeat_s)))


def _act(conversation_id: str, action):
    if not CONVERSATION_ID.fullmatch(conversation_id or ""):
        raise NotFound(f"no conversation {conversation_id[:64]!r}")
    desk = web().components.handoffs
    desk.detail(conversation_id, bot_id=_bot_id())  # NotFound for another bot's conversation
    desk.seen(_agent())
    if wants_json():
        return jsonify(result=action(desk))
    try:
        action(desk)
    except SupportbotError as exc:
        flash(exc.message, "error")
    return redirect(url_for("queue.queue", open=conversation_id))


@bp.post("/queue/<conversation_id>/take")
@login_required
def take(conversation_id: str):
    return _act(conversation_id, lambda desk: desk.take(conversation_id, _agent()))


@bp.post("/queue/<conversation_id>/reply")
@login_required
def reply(conversation_id: str):
    text = request.form.get("text", "")
    return _act(conversation_id, lambda desk: desk.reply(conversation_id, _agent(), text))


@bp.post("/queue/<conversation_id>/hand-back")
@login_required
def hand_back(conversation_id: str):
    return _act(conversation_id, lambda desk: desk.hand_back(conversation_id, _agent()))


@bp.post("/queue/<conversation_id>/resolve")
@login_required
def resolve(conversation_id: str):
    return _act(conversation_id, lambda desk: desk.resolve(conversation_id, _agent()))


@bp.post("/queue/options")
@login_required
def options():
    on = request.form.get("ask_bot_first") == "1"
    web().components.handoffs.set_ask_bot_first(_bot_id(), on)
    flash("The bot now tries to answer before a person is asked." if on
          else "Asking for a person now reaches the queue at once.", "ok")
    return redirect(url_for("queue.queue"))
