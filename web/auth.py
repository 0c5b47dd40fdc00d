"""Admin users and the login session.

Passwords are stored as werkzeug hashes (scrypt). The session cookie is signed, HttpOnly and
SameSite=Lax (Secure with ``web.cookie_secure``); every form carries a CSRF token (flask-wtf's
``CSRFProtect`` checks every POST outside the token-authenticated APIs). Login attempts are rate
limited per IP (``web.rate_limit_login``).
"""
from __future__ import annotations

import functools
from urllib.parse import urlsplit

from flask import Blueprint, g, redirect, render_template, request, session, url_for
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash, generate_password_hash

from bot.core.errors import SupportbotError
from bot.core.store import Database
from bot.core.store.models import User
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


@bp.before_app_request
def load_user() -> None:
    g.user = None
    uid = session.get("user_id")
    if uid is not None and request.path.startswith("/admin"):
        with web().components.db.session() as s:
            user = s.get(User, uid)
            g.user = {"id": user.id, "username": user.username} if user else None


def _safe_next(target: str | None) -> str:
    """Only local paths: a login link must not redirect to another site."""
    if target and target.startswith("/") and not target.startswith("//") and not urlsplit(target).netloc:
        return target
    return url_for("admin.documents")


@bp.route("/login", methods=["GET", "POST"])
def login():
    error = None
    if request.method == "POST":
        uid = authenticate(web().components.db, request.form.get("username", ""),
                           request.form.get("password", ""))
        if uid is not None:
            session.clear()  # a fresh session: no fixation
            session["user_id"] = uid
            session.permanent = True
            return redirect(_safe_next(request.args.get("next")))
        error = "Wrong username or password."
    status = 401 if error else 200
    return render_template("admin/login.html", error=error), status


@bp.post("/logout")
def logout():
    session.clear()
    return redirect(url_for("auth.login"))
