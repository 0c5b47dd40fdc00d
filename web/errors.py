"""Errors as responses: JSON ``{"error": {"message", "type", "code"}}`` for the APIs, a page for browsers.

Never a stack trace, never an internal detail: unexpected exceptions are logged with their
traceback and answered with a plain 500; a ``SupportbotError`` of a 5xx status (a generator that
cannot be reached, a broken setting) is logged with its message and answered with a generic one
(a 502 for the generator, 503 while the index is being rebuilt, with ``Retry-After``), so an
OpenAI client retries instead of treating a server fault as its own. The JSON shape matches
OpenAI's error object, so ``/v1`` clients read it too.
"""
from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from bot.core.errors import GeneratorError, SupportbotError

log = logging.getLogger(__name__)

API_PREFIXES = ("/api/", "/v1/")
UPSTREAM_FAILED = "The answer could not be generated right now. Please try again in a moment."
INTERNAL = "internal error"


class RequestTooLarge(SupportbotError):
    status = 413


class UnsupportedMediaType(SupportbotError):
    status = 415


class NotReady(SupportbotError):
    """The server is up but cannot answer yet (its index is being rebuilt): try again soon."""

    status = 503
    retry_after_s = 5


class UpstreamFailed(SupportbotError):
    """The generator failed while answering (the details are logged, not shown)."""

    status = 502


def wants_json() -> bool:
    if request.path.startswith(API_PREFIXES):
        return True
    if request.headers.get("X-Requested-With") == "fetch":  # the admin console's upload script
        return True
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return best == "application/json" and request.accept_mimetypes[best] > request.accept_mimetypes["text/html"]


def error_response(message: str, status: int, kind: str) -> Response:
    if wants_json():
        resp = jsonify({"error": {"message": message, "type": kind, "code": status}})
    else:
        resp = Response(
            render_template("error.html", message=message, status=status), mimetype="text/html"
        )
    resp.status_code = status
    return resp


def public_error(exc: SupportbotError) -> tuple[str, int, str]:
    """(message, status, type) to show for ``exc``: its own message below 500, a generic one above."""
    if exc.status < 500 or isinstance(exc, (NotReady, UpstreamFailed)):
        return exc.message, exc.status, type(exc).__name__
    if isinstance(exc, GeneratorError):
        return UPSTREAM_FAILED, 502, "server_error"
    return INTERNAL, exc.status, "InternalError"


def init_app(app: Flask) -> None:
    @app.errorhandler(SupportbotError)
    def _supportbot(exc: SupportbotError):
        if exc.status >= 500:
            log.error("%s on %s %s: %s", type(exc).__name__, request.method, request.path, exc.message)
        message, status, kind = public_error(exc)
        resp = error_response(message, status, kind)
        retry = getattr(exc, "retry_after_s", None)
        if retry:
            resp.headers["Retry-After"] = str(retry)
        return resp

    @app.errorhandler(CSRFError)
    def _csrf(exc: CSRFError):
        return error_response(f"CSRF check failed: {exc.description}", 400, "CSRFError")

    @app.errorhandler(413)
    def _too_large(exc: HTTPException):
        limit = request.max_content_length or app.config.get("MAX_CONTENT_LENGTH") or 0
        small = limit < 1_000_000 and request.path.startswith(API_PREFIXES)
        shown = f"{limit // 1024} KB" if small else f"{limit / 1e6:g} MB"
        return error_response(f"request body is larger than the {shown} limit", 413,
                              "RequestEntityTooLarge")

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        resp = error_response(exc.description or exc.name, exc.code or 500, exc.name.replace(" ", ""))
        # Keep headers the exception carries (Retry-After on 429, Allow on 405, ...).
        original = exc.get_response()
        for name in ("Retry-After", "Allow", "X-RateLimit-Limit", "X-RateLimit-Remaining",
                     "X-RateLimit-Reset"):
            if name in original.headers:
                resp.headers[name] = original.headers[name]
        return resp

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(INTERNAL, 500, "InternalError")
