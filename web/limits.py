"""Rate limits (Flask-Limiter): per client IP on every API call, per visitor on messages.

Breaches answer 429 with ``Retry-After`` and a JSON error. Counters live in
``web.rate_limit_storage``: ``memory://`` counts per process, so with several gunicorn workers
point it at a shared store (``redis://host:6379``) for exact limits.
"""
from __future__ import annotations

from flask import Flask, current_app, request
from flask_limiter import Limiter

from bot.settings import WebSettings
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


def init_app(app: Flask, settings: WebSettings) -> Limiter:
    limiter = Limiter(
        key_func=client_ip,
        app=app,
        storage_uri=settings.rate_limit_storage,
        headers_enabled=True,
        strategy="moving-window",
    )
    return limiter


def limit_blueprint(limiter: Limiter, blueprint, rate: str) -> None:
    """Every route of ``blueprint`` counts against ``rate`` per client IP."""
    limiter.limit(rate, key_func=client_ip)(blueprint)


def limit_view(app: Flask, limiter: Limiter, endpoint: str, rate: str, key_func=client_ip,
               methods: list[str] | None = None) -> None:
    """Wrap a registered view with an extra limit (kept alongside its blueprint's limit)."""
    view = app.view_functions[endpoint]
    app.view_functions[endpoint] = limiter.limit(
        rate, key_func=key_func, methods=methods, override_defaults=False,
        scope=endpoint + ":" + ("visitor" if key_func is visitor_key else "ip"),
    )(view)
