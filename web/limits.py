"""Rate limits (Flask-Limiter): per client IP on every API call, per visitor on messages.

The per-IP limit is one budget shared by all routes of the API blueprints; the per-visitor limit
counts the messages a visitor posts (keyed by the visitor id inside the token, so it holds across
IP changes and does not punish many visitors behind one NAT). Login attempts have their own per-IP
limit. Breaches answer 429 with ``Retry-After`` and a JSON error.

Counters live in ``web.rate_limit_storage``: ``memory://`` counts per process, so with several
gunicorn workers point it at a shared store (``redis://host:6379``) for exact limits.
"""
from __future__ import annotations

from flask import Blueprint, Flask, current_app, request
from flask_limiter import Limiter

from bot.core.settings import WebSettings
from web.security import bearer_token


def client_ip() -> str:
    # request.remote_addr is already the real client when ProxyFix trusts the proxies in front.
    return request.remote_addr or "unknown"


def visitor_key() -> str:
    """The visitor named by the request's token, or its IP when the token is missing or bad."""
    tokens = current_app.extensions["supportbot"].tokens
    try:
        return "visitor:" + tokens.verify(bearer_token()).visitor_id
    except Exception:  # noqa: BLE001 - an invalid token is refused later, by the view
        return "ip:" + client_ip()


def init_app(app: Flask, settings: WebSettings, api: list[Blueprint], message_endpoint: str,
             login_endpoint: str) -> Limiter:
    """Attach the limits. Call after the blueprints are registered."""
    limiter = Limiter(
        key_func=client_ip, app=app, storage_uri=settings.rate_limit_storage,
        headers_enabled=True, strategy="moving-window",
    )
    @limiter.request_filter
    def _preflight() -> bool:
        # A CORS preflight is not counted: it is cheap, the browser caches it (Max-Age), and a
        # preflight answered 429 would hide the limit from the widget (the browser reports a
        # failed preflight as a network error, not as the 429).
        return request.method == "OPTIONS"

    per_ip = limiter.shared_limit(settings.rate_limit_ip, scope="api-ip", key_func=client_ip)
    for bp in api:
        per_ip(bp)
    # A route with its own limits no longer gets its blueprint's: it gets the per-IP one again.
    view = app.view_functions[message_endpoint]
    view = limiter.limit(settings.rate_limit_visitor, key_func=visitor_key, methods=["POST"],
                         scope="visitor")(view)
    app.view_functions[message_endpoint] = per_ip(view)
    app.view_functions[login_endpoint] = limiter.limit(
        settings.rate_limit_login, key_func=client_ip, methods=["POST"]
    )(app.view_functions[login_endpoint])
    return limiter
