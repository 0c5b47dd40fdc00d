"""Webhooks: a bot's events POSTed as signed JSON to the receivers its admins configured.

Events: ``handoff`` (a conversation waits for a person), ``agent_reply`` (a person replied),
``resolved`` and ``feedback`` (a visitor rated a reply). ``Webhooks.enqueue`` writes one
``WebhookDelivery`` row per subscribed, active receiver in the caller's thread (cheap, nothing
waits on the network); a ``DeliveryWorker`` thread in the web process POSTs them. Rows rather than
an in-memory queue so that an event survives a restart and several worker processes share the
work: a delivery is *claimed* with one conditional UPDATE (``next_attempt_at`` moved past a lease),
so two processes never send the same attempt.

Each request carries::

    Content-Type: application/json
    X-Supportbot-Event: handoff
    X-Supportbot-Delivery: 42
    X-Supportbot-Timestamp: 1718000000            (unix seconds, also "sent_at" in the body)
    X-Supportbot-Signature: sha256=<hex HMAC-SHA256 of the raw body, keyed with the secret>

The timestamp is inside the signed body too, so a receiver that rejects old timestamps is safe
from replays. A 2xx answer delivers it; anything else (another status, a timeout, a refused
connection) is retried after ``webhook_backoff_s * 2**(attempt-1)`` seconds, until
``webhook_max_attempts``, then the row is ``failed`` with its last error. Redirects are not
followed (a 3xx is a failure): the signed body goes only where the admin said.

The secret must be kept (HMAC needs it to sign); it is shown to the admin once, when the webhook
is created, and never again in the console.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable
from urllib.parse import urlsplit

from sqlalchemy import and_, select, update

from bot.core.errors import NotFound, SupportbotError
from bot.core.settings import HandoffSettings
from bot.core.store.db import Database
from bot.core.store.models import Webhook, WebhookDelivery, utcnow

log = logging.getLogger(__name__)

EVENTS = ("handoff", "agent_reply", "resolved", "feedback")
SIGNATURE_HEADER = "X-Supportbot-Signature"
TIMESTAMP_HEADER = "X-Supportbot-Timestamp"
MAX_URL = 2000
BATCH = 20


def sign(secret: str, body: bytes) -> str:
    """The signature header's value: ``sha256=<hex HMAC-SHA256 of body>``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    """What a receiver checks (constant-time comparison)."""
    return bool(header) and hmac.compare_digest(sign(secret, body), str(header))


def check_url(url: str) -> str:
    """An absolute http(s) URL with a host, else a clear error."""
    url = (url or "").strip()
    if not url or len(url) > MAX_URL:
        raise SupportbotError(f"the webhook URL must be 1 to {MAX_URL} characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SupportbotError(f"{url[:100]!r} is not an http(s) URL like https://example.com/hook")
    if parts.username or parts.password:
        raise SupportbotError("the webhook URL must not carry a user name or password")
    return url


def check_events(events: Iterable[str]) -> list[str]:
    chosen = sorted({str(e).strip() for e in events if str(e).strip()})
    unknown = [e for e in chosen if e not in EVENTS]
    if unknown:
        raise SupportbotError(f"unknown webhook event(s) {', '.join(unknown)}; choose from {', '.join(EVENTS)}")
    if not chosen:
        raise SupportbotError(f"choose at least one event: {', '.join(EVENTS)}")
    return chosen


@dataclass(frozen=True)
class WebhookInfo:
    id: int
    bot_id: int
    url: str
    events: tuple[str, ...]
    active: bool
    created_at: dt.datetime


def _info(w: Webhook) -> WebhookInfo:
    return WebhookInfo(w.id, w.bot_id, w.url, tuple(w.events or ()), bool(w.active), w.created_at)


# (url, body, headers, timeout) -> HTTP status; raises on a network failure.
Poster = Callable[[str, bytes, dict, float], int]


def post_json(url: str, body: bytes, headers: dict, timeout: float) -> int:
    import requests

    r = requests.post(url, data=body, headers=headers, timeout=timeout, allow_redirects=False)
    r.close()
    return r.status_code


class Webhooks:
    """Receivers of each bot, their deliveries and the delivery pass the worker runs."""

    def __init__(self, db: Database, settings: HandoffSettings, post: Poster = post_json):
        self.db = db
        self.settings = settings
        self.post = post
        self.wake = threading.Event()  # set by enqueue: the worker looks at once

    # -- configuration ----------------------------------------------------------------------
    def create(self, bot_id: int, url: str, events: Iterable[str]) -> tuple[WebhookInfo, str]:
        """A new receiver; returns it and its secret (shown once)."""
        url, chosen = check_url(url), check_events(events)
        secret = "whsec_" + secrets.token_urlsafe(32)
        with self.db.session() as s:
            w = Webhook(bot_id=bot_id, url=url, secret=secret, events=chosen, active=True)
            s.add(w)
            s.flush()
            return _info(w), secret

    def list(self, bot_id: int) -> list[WebhookInfo]:
        with self.db.session() as s:
            return [_info(w) for w in s.scalars(select(Webhook).where(Webhook.bot_id == bot_id).order_by(Webhook.id))]

    def set_active(self, bot_id: int, webhook_id: int, active: bool) -> None:
        with self.db.session() as s:
            n = s.execute(update(Webhook).where(Webhook.id == webhook_id, Webhook.bot_id == bot_id)
                          .values(active=active)).rowcount
        if not n:
            raise NotFound(f"no webhook {webhook_id}")

    def delete(self, bot_id: int, webhook_id: int) -> None:
        with self.db.session() as s:
            w = s.scalar(select(Webhook).where(Webhook.id == webhook_id, Webhook.bot_id == bot_id))
            if w is None:
                raise NotFound(f"no webhook {webhook_id}")
            s.delete(w)

    def deliveries(self, bot_id: int, limit: int = 50) -> list[dict]:
        """The latest deliveries to the bot's receivers (for the admin page)."""
        with self.db.session() as s:
            rows = s.execute(
                select(WebhookDelivery, Webhook.url).join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
                .where(Webhook.bot_id == bot_id).order_by(WebhookDelivery.id.desc()).limit(limit)
            ).all()
            return [{"id": d.id, "webhook_id": d.webhook_id, "url": url, "event": d.event,
                     "status": d.status, "attempts": d.attempts, "last_error": d.last_error,
                     "created_at": d.created_at, "next_attempt_at": d.next_attempt_at,
                     "delivered_at": d.delivered_at} for d, url in rows]

    # -- producing ----------------------------------------------------------------------------
    def enqueue(self, bot_id: int, event: str, data: dict[str, Any]) -> int:
        """Queue ``event`` for every active receiver of ``bot_id`` subscribed to it; returns how
        many. Never raises for a delivery problem: events are best effort for the caller."""
        if event not in EVENTS:
            raise SupportbotError(f"unknown webhook event {event!r}")
        now = utcnow()
        with self.db.session() as s:
            hooks = [w for w in s.scalars(select(Webhook).where(Webhook.bot_id == bot_id, Webhook.active.is_(True)))
                     if event in (w.events or ())]
            for w in hooks:
                s.add(WebhookDelivery(webhook_id=w.id, event=event, payload=dict(data), status="pending",
                                      attempts=0, next_attempt_at=now, last_error=""))
        if hooks:
            self.wake.set()
        return len(hooks)

    # -- delivering ---------------------------------------------------------------------------
    def _claim(self, now: dt.datetime) -> list[int]:
        """Ids of due deliveries this process now owns (their next attempt moved past a lease)."""
        lease = now + dt.timedelta(seconds=self.settings.webhook_timeout_s * 2 + 5)
        with self.db.session() as s:
            due = list(s.scalars(
                select(WebhookDelivery.id).where(WebhookDelivery.status == "pending",
                                                 WebhookDelivery.next_attempt_at <= now)
                .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id).limit(BATCH)))
        claimed = []
        for did in due:
            with self.db.session() as s:
                n = s.execute(update(WebhookDelivery).where(
                    and_(WebhookDelivery.id == did, WebhookDelivery.status == "pending",
                         WebhookDelivery.next_attempt_at <= now))
                    .values(next_attempt_at=lease, attempts=WebhookDelivery.attempts + 1)).rowcount
            if n:
                claimed.append(did)
        return claimed

    def next_due_s(self) -> float | None:
        """Seconds until the earliest pending delivery is due (0 when one is), None when none is
        pending."""
        with self.db.session() as s:
            at = s.scalar(select(WebhookDelivery.next_attempt_at).where(WebhookDelivery.status == "pending")
                          .order_by(WebhookDelivery.next_attempt_at).limit(1))
        return None if at is None else max(0.0, (at - utcnow()).total_seconds())

    def deliver_due(self) -> int:
        """One pass: attempt every due delivery once; returns how many were attempted."""
        ids = self._claim(utcnow())
        for did in ids:
            self._attempt(did)
        return len(ids)

    def _attempt(self, delivery_id: int) -> None:
        with self.db.session() as s:
            row = s.execute(select(WebhookDelivery, Webhook).join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
                            .where(WebhookDelivery.id == delivery_id)).first()
            if row is None:
                return
            d, w = row
            event, payload, attempts, url, secret = d.event, dict(d.payload or {}), d.attempts, w.url, w.secret
            created = d.created_at
        sent_at = int(time.time())
        body = json.dumps({"id": delivery_id, "event": event, "created_at": created.isoformat() + "Z",
                           "sent_at": sent_at, "attempt": attempts, "data": payload}, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "supportbot-webhooks/1",
                   "X-Supportbot-Event": event, "X-Supportbot-Delivery": str(delivery_id),
                   TIMESTAMP_HEADER: str(sent_at), SIGNATURE_HEADER: sign(secret, body)}
        error = ""
        try:
            status = self.post(url, body, headers, self.settings.webhook_timeout_s)
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except Exception as exc:  # noqa: BLE001 - any failure to deliver is retried
            error = f"{type(exc).__name__}: {str(exc)[:300]}"
        now = utcnow()
        with self.db.session() as s:
            if not error:
                values: dict[str, Any] = {"status": "delivered", "delivered_at": now, "last_error": ""}
            elif attempts >= self.settings.webhook_max_attempts:
                values = {"status": "failed", "last_error": error, "next_attempt_at": None}
            else:
                delay = self.settings.webhook_backoff_s * 2 ** (attempts - 1)
                values = {"last_error": error, "next_attempt_at": now + dt.timedelta(seconds=delay)}
            s.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(**values))
        if error:
            log.warning("webhook delivery %s (%s) attempt %d failed: %s", delivery_id, event, attempts, error)


class DeliveryWorker:
    """A daemon thread that runs ``Webhooks.deliver_due``: at once after an ``enqueue`` in this
    process, when the next retry is due, and every ``webhook_poll_s`` while deliveries are pending
    (every ``IDLE_POLL_S`` when none is: an event another process queued is seen by then; that
    process's own worker sends it at once anyway)."""

    IDLE_POLL_S = 15.0

    def __init__(self, webhooks: Webhooks):
        self.webhooks = webhooks
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "DeliveryWorker":
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="webhook-delivery", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.webhooks.wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        poll = max(0.05, self.webhooks.settings.webhook_poll_s)
        while not self._stop.is_set():
            wait = self.IDLE_POLL_S
            try:
                while self.webhooks.deliver_due() and not self._stop.is_set():
                    pass
                due = self.webhooks.next_due_s()
                if due is not None:
                    wait = min(max(due, 0.05), poll if due <= 0 else due, self.IDLE_POLL_S)
            except Exception:  # noqa: BLE001 - the database may be busy or gone for a moment
                log.warning("webhook delivery pass failed", exc_info=True)
            self.webhooks.wake.wait(wait)
            self.webhooks.wake.clear()
