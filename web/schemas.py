"""Request bodies, validated by schema before a view reads them.

``parse_body(Model)`` takes the request's JSON body through every check a hostile client can
fail, each with its own status:

* 415 when a non-empty body is not declared ``application/json`` (``text/plain`` is the one
  content type a page can post cross-origin without a preflight);
* 413 past the blueprint's body limit (set per request, see ``web/chat_api.py``);
* 400 for JSON that does not parse, nests deeper than ``MAX_DEPTH``, is not an object, or does
  not fit the model (pydantic, strict types: ``true`` is not a rating, ``1.5`` is not an id,
  ``10**30`` is not a row id, a string holding NUL is not text).

Unknown fields are ignored. The error names the fields and what is wrong with them, never echoes
their values.
"""
from __future__ import annotations

import json
import re
from typing import Annotated, Any, TypeVar

from flask import request
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from bot.core.errors import SupportbotError
from web.errors import UnsupportedMediaType

MAX_DEPTH = 32
# Conversation ids are uuid4 strings; anything else in a path names no conversation.
CONVERSATION_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
MAX_ID = 2**31 - 1  # row ids: the largest integer every supported database stores in them
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(rb"[\[\]{}]")

M = TypeVar("M", bound=BaseModel)


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\ud800" in the JSON): no database stores it
        raise ValueError("must be valid Unicode text") from None
    return value


def _row_id(value: Any) -> int:
    """A row id: an integer (or a string of digits) in 1..MAX_ID; never a bool or a float."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError("must be an integer id")
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit() and len(value) <= 10):
            raise ValueError("must be an integer id")
        value = int(value)
    if not 1 <= value <= MAX_ID:
        raise ValueError("must be an integer id")
    return value


RATINGS = {1: 1, -1: -1, "1": 1, "-1": -1, "+1": 1, "up": 1, "down": -1}


def _rating(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value not in RATINGS:
        raise ValueError('must be 1 or -1 (or "up" / "down")')
    return RATINGS[value]


Text = Annotated[str, Field(strict=True), AfterValidator(_no_nul)]
RowId = Annotated[int, BeforeValidator(_row_id)]
Rating = Annotated[int, BeforeValidator(_rating)]


class Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class SessionBody(Body):
    site_key: Annotated[Text, Field(min_length=1, max_length=128)]
    visitor_token: Annotated[Text, Field(max_length=4096)] | None = None


class ConversationBody(Body):
    page: Annotated[Text, Field(max_length=8192)] | None = None


class MessageBody(Body):
    message: Text


class FeedbackBody(Body):
    message_id: RowId
    rating: Rating
    comment: Annotated[Text, Field(max_length=2000)] | None = None


class HandoffBody(Body):
    reason: Annotated[Text, Field(max_length=1024)] | None = None


class ContentPart(Body):
    type: Text
    text: Text | None = None


class ChatMessage(Body):
    role: Text
    content: Text | list[ContentPart] | None = None


class ChatCompletionBody(Body):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=256)]
    model: Annotated[Text, Field(max_length=256)] | None = None
    stream: bool | None = None


def too_deep(raw: bytes, limit: int = MAX_DEPTH) -> bool:
    """True when the JSON text nests arrays/objects deeper than ``limit`` (strings skipped)."""
    depth = 0
    for m in _BRACKET.finditer(_STRING.sub(b'""', raw)):
        if m.group() in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def is_json_type() -> bool:
    mimetype = request.mimetype or ""
    return mimetype == "application/json" or (mimetype.startswith("application/") and mimetype.endswith("+json"))


def raw_json() -> dict[str, Any] | None:
    """The body as a JSON object, None when there is no body; 413/415/400 as above."""
    raw = request.get_data(cache=True)  # 413 past the request's max_content_length
    if not raw.strip():
        return None
    if not is_json_type():
        raise UnsupportedMediaType(
            f"the request body must be JSON sent as Content-Type: application/json, not {request.mimetype or 'none'}")
    if too_deep(raw):
        raise SupportbotError(f"request body is nested too deep (more than {MAX_DEPTH} levels)")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SupportbotError(f"request body is not valid JSON: {type(exc).__name__}") from exc
    except RecursionError as exc:  # pragma: no cover - too_deep catches it first
        raise SupportbotError("request body is nested too deep") from exc
    if not isinstance(data, dict):
        raise SupportbotError("request body must be a JSON object")
    return data


def describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors(include_url=False)[:4]:
        loc = ".".join(str(p) for p in e["loc"]) or "body"
        msg = str(e["msg"]).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return "invalid request body: " + "; ".join(parts)


def parse_body(model: type[M]) -> M:
    """The request body validated by ``model``; an empty body is ``{}``."""
    data = raw_json()
    try:
        return model.model_validate({} if data is None else data)
    except ValidationError as exc:
        raise SupportbotError(describe(exc)) from None
