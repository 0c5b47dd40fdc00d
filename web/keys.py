"""Site keys (public, for the widget, tied to allowed origins) and API keys (secret, for ``/v1``
or, of scope ``agent``, for ``/api/agent``).

A site key is printed in the site's HTML, so it is not a secret: what it grants is decided by the
browser's ``Origin`` header, which a web page cannot forge. It only lets a visitor on an allowed
origin obtain a short-lived visitor token. An API key is a secret for server-to-server clients of
the OpenAI-compatible endpoint; only its SHA-256 is stored.
"""
from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from sqlalchemy import select, update

from bot.core.errors import Forbidden, NotFound, SupportbotError, Unauthorized
from bot.core.store import Database
from bot.core.store.models import ApiKey, Bot, SiteKey, utcnow

DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_origin(value: str) -> str:
    """``"HTTPS://Shop.example.com:443/"`` -> ``"https://shop.example.com"``; raises on junk."""
    parts = urlsplit(value.strip())
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise SupportbotError(f"{value!r} is not an origin like https://www.example.com")
    try:
        port = parts.port
    except ValueError as exc:
        raise SupportbotError(f"{value!r} has an invalid port") from exc
    host = parts.hostname.lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    if port is None or port == DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


@dataclass(frozen=True)
class SiteKeyInfo:
    key: str
    bot_id: int
    bot: str
    origins: tuple[str, ...] = field(default_factory=tuple)
    active: bool = True

    def allows(self, origin: str | None) -> bool:
        if not origin:
            return False
        try:
            return normalize_origin(origin) in self.origins
        except SupportbotError:
            return False


class SiteKeys:
    """Site keys in the database, with a short cache so each request need not query it."""

    def __init__(self, db: Database, cache_s: float = 5.0):
        self.db = db
        self.cache_s = cache_s
        self._cache: dict[str, tuple[float, SiteKeyInfo | None]] = {}
        self._lock = threading.Lock()

    def create(self, bot: str, origins: list[str]) -> SiteKeyInfo:
        cleaned = sorted({normalize_origin(o) for o in origins if o.strip()})
        if not cleaned:
            raise SupportbotError("a site key needs at least one allowed origin")
        bot_id = self.db.bot_id(bot)
        key = "sk_" + secrets.token_urlsafe(18)
        with self.db.session() as s:
            s.add(SiteKey(bot_id=bot_id, key=key, allowed_origins=cleaned, active=True))
        return SiteKeyInfo(key, bot_id, bot, tuple(cleaned), True)

    def get(self, key: str) -> SiteKeyInfo:
        """The active key; Forbidden when unknown or deactivated."""
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        if hit is None or now - hit[0] > self.cache_s:
            hit = (now, self._load(key))
            with self._lock:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[key] = hit
        info = hit[1]
        if info is None or not info.active:
            raise Forbidden("unknown or inactive site key")
        return info

    def _load(self, key: str) -> SiteKeyInfo | None:
        with self.db.session() as s:
            row = s.execute(
                select(SiteKey, Bot.name).join(Bot, Bot.id == SiteKey.bot_id).where(SiteKey.key == key)
            ).first()
        if row is None:
            return None
        sk, bot = row
        return SiteKeyInfo(sk.key, sk.bot_id, bot, tuple(sk.allowed_origins or ()), bool(sk.active))

    def list(self, bot: str | None = None) -> list[SiteKeyInfo]:
        with self.db.session() as s:
            q = select(SiteKey, Bot.name).join(Bot, Bot.id == SiteKey.bot_id).order_by(SiteKey.id)
            if bot:
                q = q.where(Bot.name == bot)
            rows = s.execute(q).all()
        return [SiteKeyInfo(k.key, k.bot_id, b, tuple(k.allowed_origins or ()), bool(k.active))
                for k, b in rows]

    def set_active(self, key: str, active: bool) -> None:
        with self.db.session() as s:
            if s.execute(update(SiteKey).where(SiteKey.key == key).values(active=active)).rowcount == 0:
                raise NotFound(f"no site key {key!r}")
        with self._lock:
            self._cache.pop(key, None)

    def origin_allowed_anywhere(self, origin: str) -> bool:
        """True when some active key allows ``origin`` (answers CORS preflights, which carry no key)."""
        try:
            origin = normalize_origin(origin)
        except SupportbotError:
            return False
        return any(origin in k.origins for k in self._active_keys())

    def _active_keys(self) -> list[SiteKeyInfo]:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get("\0all")
        if hit is None or now - hit[0] > self.cache_s:
            keys = [k for k in self.list() if k.active]
            with self._lock:
                self._cache["\0all"] = (now, keys)  # type: ignore[assignment]
            return keys
        return hit[1]  # type: ignore[return-value]


@dataclass(frozen=True)
class ApiKeyInfo:
    id: int
    bot_id: int
    bot: str
    name: str
    prefix: str
    active: bool
    scope: str = "chat"  # "chat": /v1 (OpenAI-compatible); "agent": /api/agent (help-desk bridges)


SCOPES = ("chat", "agent")
SCOPE_USE = {"chat": "the OpenAI-compatible API (/v1)", "agent": "the agent API (/api/agent)"}


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKeys:
    def __init__(self, db: Database):
        self.db = db

    def create(self, bot: str, name: str = "", scope: str = "chat") -> tuple[ApiKeyInfo, str]:
        """A new key of ``scope`` (``chat`` | ``agent``); returns its info and the secret, which is
        never shown again."""
        if scope not in SCOPES:
            raise SupportbotError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
        bot_id = self.db.bot_id(bot)
        secret = "sb-" + secrets.token_urlsafe(32)
        with self.db.session() as s:
            row = ApiKey(bot_id=bot_id, name=name[:128], prefix=secret[:10], key_hash=_digest(secret),
                         scope=scope)
            s.add(row)
            s.flush()
            info = ApiKeyInfo(row.id, bot_id, bot, row.name, row.prefix, True, scope)
        return info, secret

    def verify(self, secret: str, scope: str = "chat") -> ApiKeyInfo:
        """The key's info; Unauthorized when the secret matches no active key, Forbidden when the
        key is of another scope than ``scope`` (a chat key on the agent API, or the reverse)."""
        if not secret:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        with self.db.session() as s:
            row = s.execute(
                select(ApiKey, Bot.name).join(Bot, Bot.id == ApiKey.bot_id)
                .where(ApiKey.key_hash == _digest(secret))
            ).first()
            if row is None or not row[0].active:
                raise Unauthorized("invalid API key")
            key, bot = row
            key_scope = key.scope or "chat"
            if key_scope != scope:
                raise Forbidden(f"this API key has scope {key_scope!r}, for {SCOPE_USE.get(key_scope, key_scope)}; "
                                f"{SCOPE_USE.get(scope, scope)} needs a key of scope {scope!r}")
            now = utcnow()
            if key.last_used_at is None or (now - key.last_used_at).total_seconds() > 60:
                key.last_used_at = now  # coarse, so busy clients do not write on every call
            return ApiKeyInfo(key.id, key.bot_id, bot, key.name, key.prefix, True, key_scope)

    def list(self) -> list[ApiKeyInfo]:
        with self.db.session() as s:
            rows = s.execute(
                select(ApiKey, Bot.name).join(Bot, Bot.id == ApiKey.bot_id).order_by(ApiKey.id)
            ).all()
        return [ApiKeyInfo(k.id, k.bot_id, b, k.name, k.prefix, bool(k.active), k.scope or "chat")
                for k, b in rows]

    def set_active(self, key_id: int, active: bool) -> None:
        with self.db.session() as s:
            if s.execute(update(ApiKey).where(ApiKey.id == key_id).values(active=active)).rowcount == 0:
                raise NotFound(f"no API key {key_id}")
