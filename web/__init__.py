"""The web app: ``create_app(settings=None, components=None)`` (flaskr-style factory, no global app).

Blueprints: ``chat`` (/api, the widget's streaming chat API), ``openai`` (/v1, OpenAI-compatible),
``widget`` (/widget.js, /demo, /source, /healthz), ``auth`` and ``admin`` (/admin console),
``live`` (/api, a visitor's live hand-off), ``agent`` (/api/agent), ``queue`` and ``webhooks`` (/admin).
The components (database, knowledge base, dialogue managers) are built once per app and kept in
``app.extensions["supportbot"]`` (a ``web.context.WebContext``).

Development: ``flask --app web run``; production: ``supportbot serve`` (gunicorn, see web/server.py).
"""
from __future__ import annotations

import datetime as dt

from flask import Flask
from flask_wtf.csrf import CSRFProtect
from werkzeug.middleware.proxy_fix import ProxyFix

from bot.components import Components
from bot.core.settings import Settings, load_settings


def create_app(
    settings: Settings | None = None,
    components: Components | None = None,
    demo_site_key: str | None = None,
    test_config: dict | None = None,
) -> Flask:
    """Build the app. ``components`` defaults to ``bot.components.Components(settings)``;
    ``demo_site_key`` turns on the demo page (``supportbot serve --demo`` passes it)."""
    from web import admin, auth, chat_api, errors, limits, openai_api, widget
    from web import agent_api, live, queue, webhook_admin
    from web.answers import Answers
    from web.context import WebContext
    from web.health import Readiness
    from web.keys import ApiKeys, SiteKeys
    from web.security import VisitorTokens, common_headers, secret_key

    if settings is None:
        settings = components.settings if components is not None else load_settings()
    if components is None:
        components = Components(settings)
    ws = settings.web

    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=secret_key(settings),
        # The largest request body: an upload (plus room for the multipart envelope).
        MAX_CONTENT_LENGTH=int(ws.max_upload_mb * 1_000_000) + 64 * 1024,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=ws.cookie_secure,
        SESSION_COOKIE_NAME="supportbot_admin",
        PERMANENT_SESSION_LIFETIME=dt.timedelta(hours=ws.admin_session_hours),
        WTF_CSRF_TIME_LIMIT=12 * 3600,
        JSON_SORT_KEYS=False,
    )
    if test_config:
        app.config.update(test_config)
    if ws.trusted_proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=ws.trusted_proxies, x_proto=ws.trusted_proxies,
                                x_host=ws.trusted_proxies)

    db = components.db
    app.extensions["supportbot"] = WebContext(
        settings=settings,
        components=components,
        site_keys=SiteKeys(db),
        api_keys=ApiKeys(db),
        tokens=VisitorTokens(app.config["SECRET_KEY"], ws.visitor_token_ttl_s,
                             ws.visitor_refresh_max_age_s),
        # Progress and a heartbeat go to the database as the answer runs: another worker may serve
        # a resume, and the text shown survives this process.
        answers=Answers(components.conversations, ws.resume_persist_s, ws.answer_stale_s),
        readiness=Readiness(components.knowledge, ws.check_index_at_start),
        demo_site_key=demo_site_key,
    )

    csrf = CSRFProtect(app)
    for bp in (chat_api.bp, openai_api.bp, live.bp, agent_api.bp):  # bearer-token APIs: no cookies, so no CSRF
        csrf.exempt(bp)

    for bp in (chat_api.bp, openai_api.bp, widget.bp, auth.bp, admin.bp, live.bp, agent_api.bp, queue.bp,
               webhook_admin.bp):
        app.register_blueprint(bp)
    from web import analytics  # /admin/analytics (login required)

    app.register_blueprint(analytics.bp)
    from web import fixes  # /admin/fixes (login required)

    app.register_blueprint(fixes.bp)

    limiter = limits.init_app(app, ws, [chat_api.bp, openai_api.bp, live.bp, agent_api.bp], "chat.post_message",
                              "auth.login")
    app.extensions["supportbot_limiter"] = limiter

    errors.init_app(app)
    app.after_request(common_headers)

    # The index is derived state: rebuilt from the database (in the background) when it does not
    # hold what the database holds; answers a dead process left unfinished are closed.
    ctx = app.extensions["supportbot"]
    ctx.readiness.start()
    ctx.answers.close_abandoned()
    # Webhook deliveries (bot/webhooks.py) are POSTed by a background thread of this process.
    from bot.webhooks import DeliveryWorker

    app.extensions["supportbot_webhooks"] = DeliveryWorker(components.webhooks).start()
    return app
