"""An OpenAI-compatible endpoint, so existing clients can talk to a bot.

  GET  /v1/models             the bot this key belongs to, as the one "model"
  POST /v1/chat/completions   {messages, stream?} -> a chat.completion (or chunks as SSE)

Authentication: ``Authorization: Bearer <API key>``, a secret created by an admin
(``supportbot admin api-key`` or the console's Keys page); the key decides the bot, ``model`` is
echoed back. Site keys are not accepted here: they are public, printed in web pages.

The answer comes from the same dialogue manager as the widget's (retrieval, answer / clarify /
hand-off, sources): each call is stored as a conversation of channel ``openai`` whose earlier
``user``/``assistant`` messages are the request's history; ``system`` messages are ignored (the bot's
own system prompt applies). Extra fields under ``supportbot`` carry the decision and sources.
"""
from __future__ import annotations

import json
import time
from typing import Any, Iterator

from flask import Blueprint, Response, jsonify, stream_with_context

from bot.core.errors import SupportbotError
from web.context import web
from web.security import bearer_token, json_body
from web.sse import HEADERS

bp = Blueprint("openai", __name__, url_prefix="/v1")


def _text(content: Any, index: int) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if parts:
            return "".join(parts)
    raise SupportbotError(f"messages[{index}].content must be a string or a list of text parts")


def _parse_messages(body: dict) -> tuple[list[tuple[str, str]], str]:
    """(earlier turns as (role, text), the last user message)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise SupportbotError("messages must be a non-empty list")
    turns: list[tuple[str, str]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise SupportbotError(f"messages[{i}] must be an object with role and content")
        role = m["role"]
        if role in ("system", "developer"):
            continue
        if role not in ("user", "assistant"):
            raise SupportbotError(f"messages[{i}].role must be system, user or assistant, got {role!r}")
        turns.append((role, _text(m.get("content"), i)))
    if not turns or turns[-1][0] != "user":
        raise SupportbotError("the last message must have role 'user'")
    limit = web().settings.dialogue.max_message_chars
    if len(turns[-1][1]) > limit:
        raise SupportbotError(f"the last user message is too long ({len(turns[-1][1])} characters, max {limit})")
    return turns[:-1][-20:], turns[-1][1]


@bp.get("/models")
def models():
    key = web().api_keys.verify(bearer_token())
    return jsonify(object="list", data=[{"id": key.bot, "object": "model", "created": 0,
                                         "owned_by": "supportbot"}])


@bp.post("/chat/completions")
def chat_completions():
    ctx = web()
    key = ctx.api_keys.verify(bearer_token())
    body = json_body(required=("messages",))
    history, question = _parse_messages(body)
    model = str(body.get("model") or key.bot)
    store = ctx.components.conversations
    cid = store.create(key.bot_id, f"api:{key.id}", {"channel": "openai", "api_key": key.prefix})
    for role, text in history:
        store.add_message(cid, "user" if role == "user" else "bot", text)
    events = ctx.components.dialogue(key.bot).respond(cid, question)
    created = int(time.time())
    if body.get("stream"):
        resp = Response(stream_with_context(_chunks(events, cid, model, created)),
                        mimetype="text/event-stream")
        resp.headers.update(HEADERS)
        return resp
    return jsonify(_completion(events, cid, model, created))


def _extra(cid: str, decision: str, sources: list, handoff: dict | None) -> dict:
    return {"conversation_id": cid, "decision": decision, "sources": sources, "handoff": handoff}


def _completion(events, cid: str, model: str, created: int) -> dict:
    text, sources, decision, handoff, done, mid = [], [], "", None, {}, None
    for ev in events:
        if ev.type == "meta":
            decision, mid = ev.data.get("decision", ""), ev.data.get("message_id")
        elif ev.type == "token":
            text.append(ev.data.get("text", ""))
        elif ev.type == "sources":
            sources = ev.data.get("sources", [])
        elif ev.type == "handoff":
            handoff = ev.data
            text.append(ev.data.get("message", ""))
        elif ev.type == "done":
            done = ev.data
        elif ev.type == "error":
            raise SupportbotError(ev.data.get("message", "the answer failed"))
    completion_tokens = done.get("completion_tokens") or 0
    return {
        "id": f"chatcmpl-{mid}", "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(text)},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 0, "completion_tokens": completion_tokens,
                  "total_tokens": completion_tokens},
        "supportbot": _extra(cid, decision, sources, handoff),
    }


def _chunks(events, cid: str, model: str, created: int) -> Iterator[str]:
    mid, decision, sources, handoff = None, "", [], None

    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
        obj = {"id": f"chatcmpl-{mid}", "object": "chat.completion.chunk", "created": created,
               "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        obj.update(extra)
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    try:
        for ev in events:
            if ev.type == "meta":
                mid, decision = ev.data.get("message_id"), ev.data.get("decision", "")
                yield chunk({"role": "assistant", "content": ""})
            elif ev.type == "token":
                yield chunk({"content": ev.data.get("text", "")})
            elif ev.type == "handoff":
                handoff = ev.data
                yield chunk({"content": ev.data.get("message", "")})
            elif ev.type == "sources":
                sources = ev.data.get("sources", [])
            elif ev.type == "error":
                err = {"message": ev.data.get("message", "the answer failed"), "type": "GeneratorError"}
                yield f"data: {json.dumps({'error': err})}\n\n"
                return
        yield chunk({}, "stop", supportbot=_extra(cid, decision, sources, handoff))
        yield "data: [DONE]\n\n"
    except SupportbotError as exc:
        yield f"data: {json.dumps({'error': {'message': exc.message, 'type': type(exc).__name__}})}\n\n"
