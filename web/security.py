"""Visitor tokens, the app's secret and security headers (request bodies: ``web/schemas.py``).

Visitor tokens: the widget exchanges the public site key for a short-lived token (signed with the
app secret by itsdangerous, default lifetime one hour) that names one visitor and one site key.
Every chat call carries it as ``Authorization: Bearer <token>``; conversations belong to the
visitor named in it, so a visitor can never read another's history. An expired token can be
exchanged for a fresh one of the *same* visitor for ``visitor_refresh_max_age_s`` (30 days), which
is how the conversation survives reloads without a long-lived secret in the page.
"""
from __future__ import annotations

import os
import secrets
import time
import uuid
from pathlib import Path
from typing import NamedTuple

from flask import Response, request
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from bot.core.errors import SupportbotError, Unauthorized
from bot.core.settings import Settings

ADMIN_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
# The demo page runs only its own scripts and the widget (same origin).
DEMO_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


class Visitor(NamedTuple):
    visitor_id: str
    site_key: str


class VisitorTokens:
    SALT = "supportbot.visitor.v1"

    def __init__(self, secret_key: str, ttl_s: int, refresh_max_age_s: int):
        self._s = URLSafeTimedSerializer(secret_key, salt=self.SALT)
        self.ttl_s = ttl_s
        self.refresh_max_age_s = refresh_max_age_s

    def issue(self, site_key: str, visitor_id: str | None = None) -> tuple[str, str]:
        """A new token for ``visitor_id`` (a new visitor when None): ``(token, visitor_id)``."""
        visitor_id = visitor_id or "v_" + uuid.uuid4().hex
        return self._s.dumps({"v": visitor_id, "k": site_key}), visitor_id

    def verify(self, token: str) -> Visitor:
        """The visitor named by a valid, unexpired token; Unauthorized otherwise."""
        if not token:
            raise Unauthorized("missing visitor token: send 'Authorization: Bearer <token>'")
        try:
            data = self._s.loads(token, max_age=self.ttl_s)
        except SignatureExpired as exc:
            raise Unauthorized("visitor token expired: get a new one from POST /api/session") from exc
        except BadSignature as exc:
            raise Unauthorized("invalid visitor token") from exc
        return Visitor(str(data["v"]), str(data["k"]))

    def renewable(self, token: str, site_key: str) -> str | None:
        """The visitor id of a genuine, possibly expired token of ``site_key``, within the refresh age."""
        try:
            data = self._s.loads(token, max_age=self.refresh_max_age_s)
        except BadSignature:  # includes SignatureExpired
            return None
        return str(data["v"]) if data.get("k") == site_key else None


def bearer_token() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def secret_key(settings: Settings) -> str:
    """``web.secret_key``, or one generated once and kept in ``data_dir/secret_key`` (mode 0600).

    Created with O_EXCL so that several worker processes starting together agree on one secret.
    """
    if settings.web.secret_key:
        return settings.web.secret_key
    path = Path(settings.data_dir) / "secret_key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another process may be writing it right now
            value = path.read_text().strip()
            if value:
                return value
            time.sleep(0.02)
        raise SupportbotError(f"{path} is empty; delete it to generate a new secret")
    value = secrets.token_urlsafe(48)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    return value


def common_headers(resp: Response) -> Response:
    """Headers every response gets."""
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    resp.headers.setdefault("Referrer-Policy", "strict-origin-when-cross-origin")
    return resp


def page_headers(resp: Response, csp: str) -> Response:
    """A strict CSP and no framing, for the admin console and the demo page."""
    resp.headers["Content-Security-Policy"] = csp
    resp.headers["X-Frame-Options"] = "DENY"
    return resp
