"""The visitor's side of a live hand-off, under ``/api`` (visitor token, like ``web/chat_api.py``).

  GET  /api/conversations/<id>/live[?after=<message id>]   text/event-stream, while the
       conversation is waiting for or with a person:
         status   {status, position, agents_online, ask_email, email_left, message} at the start
                  and whenever it changes (place in the queue, an agent joined, none online)
         message  {id, by: "human", text, created_at}: an agent's reply (SSE id = message id, so a
                  reconnect with Last-Event-ID, or ?after=, gets only what it has not seen)
       The stream ends after a status of ``bot`` (handed back) or ``resolved``.
  POST /api/conversations/<id>/typing                      204: the visitor is typing
  POST /api/conversations/<id>/email  {email}              the address, validated and normalised

The stream wakes as soon as this process records a change (``HandoffDesk.changes``) and re-reads
the database every ``handoff.poll_s`` (a reply written by another worker process), so an agent's
reply reaches the open widget well within a second.
"""
from __future__ import annotations

import time
from typing import Annotated, Iterator

from flask import Blueprint, Response, jsonify, request
from pydantic import Field

from bot.core.events import Event
from bot.handoff import WITH_PEOPLE
from web import chat_api
from web.answers import Item
from web.chat_api import current_visitor, owned_conversation
from web.context import web
from web.schemas import Body, Text, parse_body
from web.sse import sse_response, with_heartbeats

bp = Blueprint("live", __name__, url_prefix="/api")
bp.before_request(chat_api._before)  # the same CORS preflight and body limit as the chat API


class EmailBody(Body):
    email: Annotated[Text, Field(min_length=1, max_length=254)]


def _after(value: str | None) -> int:
    value = (value or "").strip()
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 10 else 0


def follow(conversation_id: str, after_id: int, heartbeat_s: float) -> Iterator[Item]:
    """Batches of ``(event, id)`` for the live stream (``None``: nothing new for a heartbeat)."""
    ctx = web()
    desk, store = ctx.components.handoffs, ctx.components.conversations
    poll = max(0.05, ctx.settings.handoff.poll_s)
    last_state: dict | None = None
    last_sent = time.monotonic()
    while True:
        version = desk.changes.version
        state = desk.visitor_state(conversation_id)
        batch: list[tuple[Event, str | None]] = []
        for m in store.messages_after(conversation_id, after_id):
            after_id = m["id"]
            if m["role"] == "human":
                batch.append((Event("message", {"id": m["id"], "by": "human", "text": m["text"],
                                                "created_at": m["created_at"]}), str(m["id"])))
        if state != last_state:
            batch.append((Event("status", state), str(after_id) if after_id else None))
            last_state = state
        now = time.monotonic()
        if batch:
            yield batch
            last_sent = now
        elif now - last_sent >= heartbeat_s:
            yield None
            last_sent = now
        if state["status"] not in WITH_PEOPLE:
            return
        desk.changes.wait(version, poll)


@bp.get("/conversations/<conversation_id>/live")
def live(conversation_id: str) -> Response:
    visitor, key = current_visitor()
    owned_conversation(conversation_id, visitor, key)
    after = _after(request.headers.get("Last-Event-ID") or request.args.get("after"))
    return sse_response(with_heartbeats(follow(conversation_id, after, web().settings.web.heartbeat_s)))


@bp.post("/conversations/<conversation_id>/typing")
def typing(conversation_id: str):
    visitor, key = current_visitor()
    owned_conversation(conversation_id, visitor, key)
    web().components.handoffs.typing(conversation_id)
    return Response(status=204)


@bp.post("/conversations/<conversation_id>/email")
def email(conversation_id: str):
    visitor, key = current_visitor()
    owned_conversation(conversation_id, visitor, key)
    address = web().components.handoffs.leave_email(conversation_id, parse_body(EmailBody).email)
    return jsonify(email=address, message="Thanks: we will reply to " + address + " if we cannot reply here.")
