"""Errors as responses: JSON ``{"error": {"message", "type"}}`` for the APIs, a page for browsers.

Never a stack trace: unexpected exceptions are logged with their traceback and answered with a
plain 500. The JSON shape matches OpenAI's error object, so ``/v1`` clients read it too.
"""
from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from bot.core.errors import SupportbotError

log = logging.getLogger(__name__)

API_PREFIXES = ("/api/", "/v1/")


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


def init_app(app: Flask) -> None:
    @app.errorhandler(SupportbotError)
    def _supportbot(exc: SupportbotError):
        return error_response(exc.message, exc.status, type(exc).__name__)

    @app.errorhandler(CSRFError)
    def _csrf(exc: CSRFError):
        return error_response(f"CSRF check failed: {exc.description}", 400, "CSRFError")

    @app.errorhandler(413)
    def _too_large(exc: HTTPException):
        limit_mb = (app.config.get("MAX_CONTENT_LENGTH") or 0) / 1e6
        return error_response(f"request body is larger than the {limit_mb:g} MB limit", 413,
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
        return error_response("internal error", 500, "InternalError")
