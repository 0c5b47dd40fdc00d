"""The visitor chat API under ``/api``: what the widget (or any site's own front end) calls.

  POST /api/session                         {site_key, visitor_token?} -> {visitor_token, ...}
  POST /api/conversations                   -> 201 {id}
  GET  /api/conversations/<id>              -> {id, status, messages: [...]}
  POST /api/conversations/<id>/messages     {message} -> text/event-stream
       with a Last-Event-ID header instead: the rest of that answer (no new message)
  GET  /api/conversations/<id>/events       Last-Event-ID header -> the rest of that answer
  POST /api/conversations/<id>/feedback     {message_id, rating: 1|-1|"up"|"down", comment?}
  POST /api/conversations/<id>/handoff      {reason?} -> {status: "waiting", message, queue}
                                            (or, when the bot asks first, {status: "bot", ask_bot_first})
  GET  /api/conversations/<id>/live         while waiting / with a person (web/live.py)
  POST /api/conversations/<id>/typing       the visitor is typing (web/live.py)
  POST /api/conversations/<id>/email        {email} left when no agent is online (web/live.py)

Every call but ``/session`` needs ``Authorization: Bearer <visitor token>``. The token names one
visitor and one site key; a conversation is visible only to the visitor who started it (another
visitor gets 404, the same answer as for an id that does not exist). A request that carries an
``Origin`` must come from an origin the site key allows; ``/session`` requires one, and
``Origin: null`` (a sandboxed frame, a ``data:`` page) is refused, never replaced by the Referer.
Every response to an origin some active site key allows carries the CORS headers, whatever its
status: a widget must be able to read a 401 (renew the token), a 429 (wait ``Retry-After``) or a
400, which a browser hides from it otherwise. Other origins get no CORS headers at all.
Bodies are JSON (``application/json``, else 415), at most 64 KB (413), validated by schema
(``web/schemas.py``, 400). The stream's events: meta, token, sources, done, handoff, error, and
offer / queued (the live hand-off, ``bot/dialogue.py``).
"""
from __future__ import annotations

import logging
from typing import Any, Iterable, Iterator
from urllib.parse import quote, urlsplit

from flask import Blueprint, Response, g, jsonify, request
from bot.core.errors import Forbidden, NotFound, SupportbotError
from bot.core.events import Event
from web.answers import Item
from web.context import web
from web.errors import NotReady, RequestTooLarge
from web.keys import SiteKeyInfo, normalize_origin
from web.schemas import CONVERSATION_ID, ConversationBody, FeedbackBody, HandoffBody, MessageBody, SessionBody, parse_body
from web.security import Visitor, bearer_token
from web.sse import sse_response, with_heartbeats

log = logging.getLogger(__name__)

bp = Blueprint("chat", __name__, url_prefix="/api")

MAX_JSON_BYTES = 64 * 1024
CORS_HEADERS = "Authorization, Content-Type, Last-Event-ID"


# -- origin, CORS, authentication ---------------------------------------------------------------
def request_origin() -> str | None:
    """The browser's Origin header, or, only when there is none (some browsers omit it on
    same-origin GETs), the Referer's origin. ``Origin: null`` is returned as it is: refused."""
    origin = request.headers.get("Origin")
    if origin is not None:
        return origin
    referer = request.headers.get("Referer")
    if referer:
        parts = urlsplit(referer)
        if parts.scheme and parts.netloc:
            return f"{parts.scheme}://{parts.netloc}"
    return None


@bp.before_request
def _before() -> Response | None:
    if request.method == "OPTIONS":
        return _preflight()
    request.max_content_length = MAX_JSON_BYTES  # also bounds a chunked body without a length
    if request.content_length and request.content_length > MAX_JSON_BYTES:
        raise RequestTooLarge(f"request body is larger than the {MAX_JSON_BYTES // 1024} KB limit")
    return None


def _preflight() -> Response:
    origin = request.headers.get("Origin", "")
    if not origin or not web().site_keys.origin_allowed_anywhere(origin):
        raise Forbidden(f"origin {origin or '(none)'} is not allowed by any site key")
    resp = Response(status=204)
    resp.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
    resp.headers["Access-Control-Allow-Headers"] = CORS_HEADERS
    resp.headers["Access-Control-Max-Age"] = "600"
    g.cors_origin = origin
    return resp


def cors_origin() -> str | None:
    """The origin to name in ``Access-Control-Allow-Origin``: the one this request's site key
    allowed, else the request's Origin when some active site key allows it (a response refused
    before the key was known: a bad token, a rate limit, a malformed body). Never ``null``."""
    origin = g.get("cors_origin")
    if origin:
        return origin
    raw = request.headers.get("Origin")
    if not raw or raw == "null":
        return None
    try:
        return raw if web().site_keys.origin_allowed_anywhere(raw) else None
    except Exception:  # noqa: BLE001 - the database may be what failed this request
        log.warning("could not check origin %r for CORS", raw, exc_info=True)
        return None


@bp.after_app_request
def _cors(resp: Response) -> Response:
    # App-wide, so that it also runs for responses no view of this blueprint produced (404 for an
    # unknown /api path, a 429 of the limiter, a 413 of the body limit, a 500).
    if not request.path.startswith("/api/"):
        return resp
    origin = cors_origin()
    if origin:
        resp.headers["Access-Control-Allow-Origin"] = origin
        resp.headers["Access-Control-Expose-Headers"] = "Retry-After"
    resp.headers.add("Vary", "Origin")
    resp.headers.setdefault("Cache-Control", "no-store")
    return resp


def _check_origin(key: SiteKeyInfo, required: bool) -> None:
    origin = request_origin()
    if origin is None:
        if required:
            raise Forbidden("missing Origin header: visitor sessions start from a web page")
        return
    if not key.allows(origin):
        raise Forbidden(f"origin {origin} is not allowed for this site key")
    g.cors_origin = request.headers.get("Origin") or normalize_origin(origin)


def current_visitor() -> tuple[Visitor, SiteKeyInfo]:
    """The visitor of this request and their site key; 401/403 otherwise."""
    ctx = web()
    visitor = ctx.tokens.verify(bearer_token())
    key = ctx.site_keys.get(visitor.site_key)
    _check_origin(key, required=False)
    return visitor, key


def owned_conversation(conversation_id: str, visitor: Visitor, key: SiteKeyInfo) -> dict:
    """``{id, status, created_at}`` of the conversation if this visitor started it on this bot;
    NotFound otherwise (also for another visitor's: its existence is not revealed)."""
    if not CONVERSATION_ID.fullmatch(conversation_id or ""):
        raise NotFound(f"no conversation {conversation_id[:64]!r}")
    row = web().components.conversations.owner(conversation_id)
    if row is None or row["visitor_id"] != visitor.visitor_id or row["bot_id"] != key.bot_id:
        raise NotFound(f"no conversation {conversation_id!r}")
    return {"id": conversation_id, "status": row["status"], "created_at": row["created_at"]}


# -- sources shown to visitors ------------------------------------------------------------------
def source_url(source: dict[str, Any], site_key: str) -> str:
    """A link for a source: its own URL when it has one, else the app's page for that passage."""
    src = str(source.get("source") or "")
    if src.startswith(("https://", "http://")):
        return src
    return f"/source/{int(source.get('chunk_id', 0))}?k={quote(site_key)}"


def public_sources(sources: Iterable[dict], site_key: str) -> list[dict]:
    """What a visitor is told of each source; a clarifying question's topics keep their words
    (``topic``: the widget's buttons send them)."""
    return [
        {"n": s.get("n"), "title": s.get("title") or s.get("doc_id") or "", "doc_id": s.get("doc_id"),
         "url": source_url(s, site_key), **({"topic": str(s["topic"])} if s.get("topic") else {})}
        for s in sources or []
    ]


def _link_sources(items: Iterable[Item], site_key: str) -> Iterator[Item]:
    for batch in items:
        if batch is not None:
            batch = [(Event("sources", {"sources": public_sources(e.data.get("sources"), site_key)}), i)
                     if e.type == "sources" else (e, i) for e, i in batch]
        yield batch


def _stream(items: Iterable[Item], site_key: str) -> Response:
    return sse_response(with_heartbeats(_link_sources(items, site_key)))


# -- views --------------------------------------------------------------------------------------
@bp.post("/session")
def session():
    """Exchange a site key (plus, optionally, an earlier visitor token) for a fresh visitor token."""
    ctx = web()
    body = parse_body(SessionBody)
    key = ctx.site_keys.get(body.site_key)
    _check_origin(key, required=True)
    # A genuine earlier token of this site key keeps the same visitor (and their conversations).
    renewed = ctx.tokens.renewable(body.visitor_token, key.key) if body.visitor_token else None
    token, visitor_id = ctx.tokens.issue(key.key, renewed)
    return jsonify(
        visitor_token=token, visitor_id=visitor_id, expires_in=ctx.tokens.ttl_s, bot=key.bot,
        renewed=renewed is not None, max_message_chars=ctx.settings.dialogue.max_message_chars,
    )


@bp.post("/conversations")
def create_conversation():
    visitor, key = current_visitor()
    page = (parse_body(ConversationBody).page or "")[:500]
    meta = {"channel": "widget", "site_key": key.key, "origin": g.get("cors_origin") or "", "page": page}
    cid = web().components.conversations.create(key.bot_id, visitor.visitor_id, meta)
    return jsonify(id=cid, status="bot"), 201


@bp.get("/conversations/<conversation_id>")
def get_conversation(conversation_id: str):
    visitor, key = current_visitor()
    conv = owned_conversation(conversation_id, visitor, key)
    messages = []
    for m in web().components.conversations.history(conversation_id):
        item = {
            "id": m["id"], "role": "user" if m["role"] == "user" else "agent", "by": m["role"], "text": m["text"],
            "decision": m.get("decision") or "", "complete": m.get("complete", True),
            "created_at": m.get("created_at"),
            "sources": public_sources(m.get("sources") or [], key.key),
        }
        if m.get("feedback"):
            item["feedback"] = m["feedback"]
        messages.append(item)
    extra = {}
    if conv["status"] in ("waiting", "human"):
        extra["queue"] = web().components.handoffs.visitor_state(conversation_id)
    return jsonify(id=conv["id"], status=conv["status"], created_at=conv["created_at"], messages=messages,
                   **extra)


@bp.post("/conversations/<conversation_id>/messages")
def post_message(conversation_id: str):
    ctx = web()
    visitor, key = current_visitor()
    owned_conversation(conversation_id, visitor, key)
    heartbeat = ctx.settings.web.heartbeat_s
    last_event_id = request.headers.get("Last-Event-ID")
    if last_event_id:  # a client reconnecting: the rest of that answer, not a second one
        return _stream(ctx.answers.resume(conversation_id, last_event_id, heartbeat), key.key)
    message = parse_body(MessageBody).message
    if not message.strip():
        raise SupportbotError("message must be a non-empty string")
    if not ctx.readiness.bot_ready(key.bot):
        raise NotReady("The assistant is getting ready (its knowledge is being loaded). Please try again in a moment.")
    # respond() checks everything it needs (length included) before returning, so bad input is a
    # plain 4xx here.
    events = ctx.components.dialogue(key.bot).respond(conversation_id, message)
    stream = ctx.answers.start(conversation_id, events)
    return _stream(stream.follow(heartbeat), key.key)


@bp.get("/conversations/<conversation_id>/events")
def resume_events(conversation_id: str):
    ctx = web()
    visitor, key = current_visitor()
    owned_conversation(conversation_id, visitor, key)
    last_event_id = request.headers.get("Last-Event-ID") or request.args.get("last_event_id", "")
    if not last_event_id:
        raise SupportbotError("send the Last-Event-ID of the answer to resume")
    return _stream(ctx.answers.resume(conversation_id, last_event_id, ctx.settings.web.heartbeat_s),
                   key.key)


@bp.post("/conversations/<conversation_id>/feedback")
def feedback(conversation_id: str):
    visitor, key = current_visitor()
    owned_conversation(conversation_id, visitor, key)
    body = parse_body(FeedbackBody)
    comps = web().components
    fid = comps.conversations.add_feedback(conversation_id, body.message_id, body.rating, body.comment or "")
    try:
        comps.webhooks.enqueue(key.bot_id, "feedback", {
            "conversation_id": conversation_id, "message_id": body.message_id, "rating": body.rating,
            "comment": body.comment or ""})
    except Exception:  # noqa: BLE001 - the rating is stored; a webhook problem is only logged
        log.warning("could not queue the feedback webhook", exc_info=True)
    return jsonify(id=fid, message_id=body.message_id, rating=body.rating), 201


@bp.post("/conversations/<conversation_id>/handoff")
def handoff(conversation_id: str):
    ctx = web()
    visitor, key = current_visitor()
    owned_conversation(conversation_id, visitor, key)
    reason = (parse_body(HandoffBody).reason or "requested")[:64]
    desk = ctx.components.handoffs
    if desk.ask_bot_first(conversation_id):  # the bot's option: it tries first, the person after
        return jsonify(status="bot", ask_bot_first=True, message=desk.settings.ask_bot_first_message)
    state = desk.request(conversation_id, reason)
    return jsonify(status=state["status"], message=ctx.settings.dialogue.requested_handoff_message,
                   queue=state)
