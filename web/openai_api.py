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

The answer runs like a widget's (``web/answers.py``: its own thread, progress persisted). A
generator that fails before the first word is a 502 in OpenAI's error shape (503 with
``Retry-After`` while the index is rebuilt), so OpenAI clients retry it as the server fault it is;
one that fails mid-stream ends the stream with an ``error`` chunk. Either way the message is
generic; the details are logged. Bodies: JSON (415 otherwise), at most 1 MB (413), validated by
schema (400).
"""
from __future__ import annotations

import json
import time
from typing import Any, Iterator

from flask import Blueprint, Response, jsonify, request, stream_with_context

from bot.core.errors import SupportbotError
from bot.core.events import Event
from web.context import web
from web.errors import UPSTREAM_FAILED, NotReady, RequestTooLarge, error_response
from web.schemas import ChatCompletionBody, parse_body
from web.security import bearer_token
from web.sse import HEADERS

bp = Blueprint("openai", __name__, url_prefix="/v1")

MAX_BODY_BYTES = 1_000_000
FIRST_WORDS = ("token", "handoff", "done", "error")


@bp.before_request
def _limit_body() -> None:
    request.max_content_length = MAX_BODY_BYTES
    if request.content_length and request.content_length > MAX_BODY_BYTES:
        raise RequestTooLarge(f"request body is larger than the {MAX_BODY_BYTES / 1e6:g} MB limit")


def _text(content: Any, index: int) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.text or "" for p in content if p.type == "text"]
        if parts:
            return "".join(parts)
    raise SupportbotError(f"messages[{index}].content must be a string or a list of text parts")


def _parse_messages(body: ChatCompletionBody) -> tuple[list[tuple[str, str]], str]:
    """(earlier turns as (role, text), the last user message)."""
    turns: list[tuple[str, str]] = []
    for i, m in enumerate(body.messages):
        role = m.role
        if role in ("system", "developer"):
            continue
        if role not in ("user", "assistant"):
            raise SupportbotError(f"messages[{i}].role must be system, user or assistant, got {role[:32]!r}")
        turns.append((role, _text(m.content, i)))
    if not turns or turns[-1][0] != "user":
        raise SupportbotError("the last message must have role 'user'")
    if not turns[-1][1].strip():
        raise SupportbotError("the last user message is empty")
    limit = web().settings.dialogue.max_message_chars
    if len(turns[-1][1]) > limit:
        raise SupportbotError(f"the last user message is too long ({len(turns[-1][1])} characters, max {limit})")
    return turns[:-1][-20:], turns[-1][1]


@bp.get("/models")
def models():
    key = web().api_keys.verify(bearer_token())
    return jsonify(object="list", data=[{"id": key.bot, "object": "model", "created": 0,
                                         "owned_by": "supportbot"}])


def _upstream_failed() -> Response:
    return error_response(UPSTREAM_FAILED, 502, "server_error")


def _events(stream, heartbeat_s: float) -> Iterator[Event | None]:
    """The answer's events as they come (None after each silent ``heartbeat_s``)."""
    for batch in stream.follow(heartbeat_s):
        if batch is None:
            yield None
            continue
        for event, _ in batch:
            yield event


@bp.post("/chat/completions")
def chat_completions():
    ctx = web()
    key = ctx.api_keys.verify(bearer_token())
    body = parse_body(ChatCompletionBody)
    history, question = _parse_messages(body)
    if not ctx.readiness.bot_ready(key.bot):
        raise NotReady("The assistant is getting ready (its knowledge is being loaded). Retry shortly.")
    model = body.model or key.bot
    store = ctx.components.conversations
    cid = store.create(key.bot_id, f"api:{key.id}", {"channel": "openai", "api_key": key.prefix})
    for role, text in history:
        store.add_message(cid, "user" if role == "user" else "bot", text)
    # Runs in its own thread with its progress persisted, like a widget's answer; error events
    # arrive with a generic message (web/answers.py).
    answer = ctx.answers.start(cid, ctx.components.dialogue(key.bot).respond(cid, question))
    events = _events(answer, ctx.settings.web.heartbeat_s)
    created = int(time.time())
    if body.stream:
        # Read up to the first word: a generator that cannot answer at all is a 502, not a 200
        # stream that carries an error.
        head: list[Event | None] = []
        for ev in events:
            head.append(ev)
            if ev is not None and ev.type in FIRST_WORDS:
                break
        if head and head[-1] is not None and head[-1].type == "error":
            return _upstream_failed()
        resp = Response(stream_with_context(_chunks(_chain(head, events), cid, model, created)),
                        mimetype="text/event-stream")
        resp.headers.update(HEADERS)
        return resp
    completion = _completion(events, cid, model, created)
    if completion is None:
        return _upstream_failed()
    return jsonify(completion)


def _chain(head: list, rest: Iterator) -> Iterator:
    yield from head
    yield from rest


def _extra(cid: str, decision: str, sources: list, handoff: dict | None) -> dict:
    return {"conversation_id": cid, "decision": decision, "sources": sources, "handoff": handoff}


def _completion(events, cid: str, model: str, created: int) -> dict | None:
    """The whole completion, or None when the answer failed."""
    text, sources, decision, handoff, done, mid = [], [], "", None, {}, None
    for ev in events:
        if ev is None:
            continue
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
            return None
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
            if ev is None:
                yield ": ping\n\n"  # an SSE comment: keeps proxies from closing a quiet stream
                continue
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
                err = {"message": UPSTREAM_FAILED, "type": "server_error", "code": 502}
                yield f"data: {json.dumps({'error': err})}\n\n"
                return
        yield chunk({}, "stop", supportbot=_extra(cid, decision, sources, handoff))
        yield "data: [DONE]\n\n"
    except SupportbotError as exc:
        message = exc.message if exc.status < 500 else UPSTREAM_FAILED
        yield f"data: {json.dumps({'error': {'message': message, 'type': type(exc).__name__}})}\n\n"
