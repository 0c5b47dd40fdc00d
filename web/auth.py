"""Admin users and the login session.

Passwords are stored as werkzeug hashes (scrypt). The session cookie is signed, HttpOnly and
SameSite=Lax (Secure with ``web.cookie_secure``); every form carries a CSRF token (flask-wtf's
``CSRFProtect`` checks every POST outside the token-authenticated APIs).

Sessions are recorded server-side: the cookie carries only a random session id, valid while its
row in ``admin_sessions`` (keyed by the id's SHA-256) exists and has not expired
(``web.admin_session_hours``). Logging out deletes the row, so a copied cookie dies with it.

Login attempts are rate limited per IP (``web.rate_limit_login``) and per account: after
``web.login_max_failures`` failures within ``web.login_lockout_s`` from any addresses, the
account is locked for ``web.login_lockout_s`` (429 with ``Retry-After``, the password is not even
checked). Unknown user names are counted and locked the same way, so a lockout reveals nothing.
"""
from __future__ import annotations

import datetime as dt
import functools
import hashlib
import math
import secrets
from urllib.parse import urlsplit

from flask import Blueprint, g, make_response, redirect, render_template, request, session, url_for
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash, generate_password_hash

from bot.core.errors import SupportbotError
from bot.core.store import Database
from bot.core.store.models import AdminSession, LoginThrottle, User, utcnow
from web.context import web

bp = Blueprint("auth", __name__, url_prefix="/admin")

MIN_PASSWORD = 8
# Checked when the user does not exist, so a wrong name takes as long as a wrong password.
_DUMMY_HASH = generate_password_hash("not a real password")


def create_user(db: Database, username: str, password: str) -> int:
    username = (username or "").strip()
    if not username or len(username) > 128:
        raise SupportbotError("username must be 1 to 128 characters")
    if len(password or "") < MIN_PASSWORD:
        raise SupportbotError(f"password must be at least {MIN_PASSWORD} characters")
    try:
        with db.session() as s:
            user = User(username=username, password_hash=generate_password_hash(password))
            s.add(user)
            s.flush()
            return user.id
    except IntegrityError as exc:
        raise SupportbotError(f"user {username!r} already exists") from exc


def authenticate(db: Database, username: str, password: str) -> int | None:
    with db.session() as s:
        user = s.scalar(select(User).where(User.username == (username or "").strip()))
    if user is None:
        check_password_hash(_DUMMY_HASH, password or "")
        return None
    return user.id if check_password_hash(user.password_hash, password or "") else None


def login_required(view):
    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        if g.get("user") is None:
            return redirect(url_for("auth.login", next=request.full_path))
        return view(*args, **kwargs)

    return wrapped


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


# -- server-side sessions -----------------------------------------------------------------------
def start_session(db: Database, user_id: int, hours: float) -> str:
    """Record a new session of ``user_id``; returns the id the cookie carries."""
    sid = secrets.token_urlsafe(32)
    now = utcnow()
    with db.session() as s:
        s.execute(delete(AdminSession).where(AdminSession.expires_at < now))
        s.add(AdminSession(id=_digest(sid), user_id=user_id, created_at=now,
                           expires_at=now + dt.timedelta(hours=hours)))
    return sid


def session_user(db: Database, sid: str) -> dict | None:
    """``{id, username}`` of the live session ``sid``, or None."""
    if not isinstance(sid, str) or not sid or len(sid) > 128:
        return None
    with db.session() as s:
        row = s.execute(
            select(User.id, User.username).join(AdminSession, AdminSession.user_id == User.id)
            .where(AdminSession.id == _digest(sid), AdminSession.expires_at > utcnow())
        ).first()
    return {"id": row.id, "username": row.username} if row else None


def end_session(db: Database, sid: str | None) -> None:
    if isinstance(sid, str) and sid:
        with db.session() as s:
            s.execute(delete(AdminSession).where(AdminSession.id == _digest(sid)))


# -- per-account login throttling -----------------------------------------------------------------
def _account(username: str) -> str:
    return _digest((username or "").strip().casefold())


def locked_for(db: Database, username: str) -> float:
    """Seconds the account stays locked (0: not locked)."""
    with db.session() as s:
        row = s.get(LoginThrottle, _account(username))
    if row is None or row.locked_until is None:
        return 0.0
    return max(0.0, (row.locked_until - utcnow()).total_seconds())


def record_failure(db: Database, username: str, max_failures: int, window_s: float) -> None:
    """Count a failed login of ``username``; lock the account at ``max_failures`` in ``window_s``."""
    account, now = _account(username), utcnow()
    since = now - dt.timedelta(seconds=window_s)
    with db.session() as s:  # starts with a write: no read-then-write race between workers
        counted = s.execute(
            update(LoginThrottle).where(LoginThrottle.account == account,
                                        LoginThrottle.first_failure_at > since)
            .values(failures=LoginThrottle.failures + 1)
        ).rowcount
        if not counted:
            s.execute(delete(LoginThrottle).where(LoginThrottle.account == account))
            s.add(LoginThrottle(account=account, failures=1, first_failure_at=now, locked_until=None))
            s.flush()
        row = s.get(LoginThrottle, account)
        if row.failures >= max_failures:
            row.locked_until = now + dt.timedelta(seconds=window_s)
            row.failures, row.first_failure_at = 0, now


def clear_failures(db: Database, username: str) -> None:
    with db.session() as s:
        s.execute(delete(LoginThrottle).where(LoginThrottle.account == _account(username)))


@bp.before_app_request
def load_user() -> None:
    g.user = None
    sid = session.get("sid")
    if sid is not None and request.path.startswith("/admin"):
        g.user = session_user(web().components.db, sid)
        if g.user is None:
            session.clear()  # expired or logged out elsewhere


def _safe_next(target: str | None) -> str:
    """Only local paths: a login link must not redirect to another site."""
    if target and target.startswith("/") and not target.startswith("//") and not urlsplit(target).netloc:
        return target
    return url_for("admin.documents")


@bp.route("/login", methods=["GET", "POST"])
def login():
    error = None
    if request.method == "POST":
        ctx = web()
        ws, db = ctx.settings.web, ctx.components.db
        username = request.form.get("username", "")
        if not isinstance(username, str) or len(username) > 256:
            username = ""
        wait = locked_for(db, username)
        if wait > 0:
            retry = str(max(1, math.ceil(wait)))
            error = "Too many failed logins for this account. Try again later."
            resp = make_response(render_template("admin/login.html", error=error), 429)
            resp.headers["Retry-After"] = retry
            return resp
        uid = authenticate(db, username, request.form.get("password", ""))
        if uid is not None:
            clear_failures(db, username)
            end_session(db, session.get("sid"))
            session.clear()  # a fresh session: no fixation
            session["sid"] = start_session(db, uid, ws.admin_session_hours)
            session.permanent = True
            return redirect(_safe_next(request.args.get("next")))
        record_failure(db, username, ws.login_max_failures, ws.login_lockout_s)
        error = "Wrong username or password."
    status = 401 if error else 200
    return render_template("admin/login.html", error=error), status


@bp.post("/logout")
def logout():
    end_session(web().components.db, session.get("sid"))
    session.clear()
    return redirect(url_for("auth.login"))
