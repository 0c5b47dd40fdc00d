"""The agent API under ``/api/agent``: for integrations (a help desk, a Slack or Teams bridge).

  GET  /api/agent/handoffs[?status=waiting|human]  -> {"conversations": [{id, status, waiting_since,
                                                      waiting_s, reason, assigned_to, position,
                                                      question, sources, visitor_typing, ...}]}
  GET  /api/agent/conversations/<id>               -> that summary plus messages and hand-offs
  POST /api/agent/conversations/<id>/messages      {"text"} -> 201 {"message": {...}}
  POST /api/agent/conversations/<id>/take          -> {"conversation": {...}}
  POST /api/agent/conversations/<id>/hand-back     -> {"conversation": {...}}
  POST /api/agent/conversations/<id>/resolve       -> {"conversation": {...}}

Authentication: ``Authorization: Bearer <key>`` with an API key of scope ``agent``
(``supportbot admin api-key --name NAME --scope agent``). The key names the bot (conversations of
other bots are 404) and the agent: ``assigned_to`` is the key's name (its prefix when unnamed).
A missing or unknown key is 401; a chat key (scope ``chat``, for ``/v1``) and a visitor token
(the widget's) are 403 with a message saying which credential this API wants. A refused
transition (taking a conversation another agent has, resolving one with the bot) is 409. Every
call counts as the agent being online (``AgentPresence``). Bodies: JSON, at most 64 KB, validated
by schema (``web/schemas.py`` conventions).
"""
from __future__ import annotations

from typing import Annotated

from flask import Blueprint, jsonify, request
from pydantic import Field

from bot.core.errors import Forbidden, NotFound, Unauthorized
from bot.handoff import MAX_REPLY_CHARS
from web.context import web
from web.errors import RequestTooLarge
from web.keys import ApiKeyInfo
from web.schemas import CONVERSATION_ID, Body, Text, parse_body
from web.security import bearer_token

bp = Blueprint("agent", __name__, url_prefix="/api/agent")

MAX_JSON_BYTES = 64 * 1024


class AgentMessageBody(Body):
    text: Annotated[Text, Field(min_length=1, max_length=MAX_REPLY_CHARS)]


@bp.before_request
def _limit_body() -> None:
    request.max_content_length = MAX_JSON_BYTES
    if request.content_length and request.content_length > MAX_JSON_BYTES:
        raise RequestTooLarge(f"request body is larger than the {MAX_JSON_BYTES // 1024} KB limit")


def current_agent() -> tuple[ApiKeyInfo, str]:
    """The agent key of this request and the agent's name; 401/403 otherwise."""
    ctx = web()
    token = bearer_token()
    if not token:
        raise Unauthorized("missing agent API key: send 'Authorization: Bearer <key>' with a key of scope "
                           "'agent' (supportbot admin api-key --name NAME --scope agent)")
    if not token.startswith("sb-"):
        try:
            ctx.tokens.verify(token)
        except Unauthorized:
            pass
        else:
            raise Forbidden("visitor tokens are not accepted by the agent API: use an API key of scope 'agent'")
    key = ctx.api_keys.verify(token, scope="agent")
    agent = key.name or key.prefix
    ctx.components.handoffs.seen(agent)
    return key, agent


def _conversation_id(conversation_id: str) -> str:
    if not CONVERSATION_ID.fullmatch(conversation_id or ""):
        raise NotFound(f"no conversation {conversation_id[:64]!r}")
    return conversation_id


def _owned(conversation_id: str, key: ApiKeyInfo) -> str:
    """The id when the conversation belongs to the key's bot; NotFound otherwise."""
    web().components.handoffs.detail(_conversation_id(conversation_id), bot_id=key.bot_id)
    return conversation_id


@bp.get("/handoffs")
def handoffs():
    key, _ = current_agent()
    status = request.args.get("status") or None
    return jsonify(conversations=web().components.handoffs.queue(key.bot_id, status))


@bp.get("/conversations/<conversation_id>")
def conversation(conversation_id: str):
    key, _ = current_agent()
    return jsonify(web().components.handoffs.detail(_conversation_id(conversation_id), bot_id=key.bot_id))


@bp.post("/conversations/<conversation_id>/messages")
def reply(conversation_id: str):
    key, agent = current_agent()
    body = parse_body(AgentMessageBody)
    message = web().components.handoffs.reply(_owned(conversation_id, key), agent, body.text)
    return jsonify(message=message), 201


@bp.post("/conversations/<conversation_id>/take")
def take(conversation_id: str):
    key, agent = current_agent()
    return jsonify(conversation=web().components.handoffs.take(_owned(conversation_id, key), agent))


@bp.post("/conversations/<conversation_id>/hand-back")
def hand_back(conversation_id: str):
    key, agent = current_agent()
    return jsonify(conversation=web().components.handoffs.hand_back(_owned(conversation_id, key), agent))


@bp.post("/conversations/<conversation_id>/resolve")
def resolve(conversation_id: str):
    key, agent = current_agent()
    return jsonify(conversation=web().components.handoffs.resolve(_owned(conversation_id, key), agent))
