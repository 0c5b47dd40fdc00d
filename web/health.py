"""Readiness: whether this process can answer from what the database holds.

At start (``Readiness.start``), every bot's index is compared with the database
(``KnowledgeBase.index_state``: a lost index folder, a process killed between an ingest's commit
and its publish, chunks embedded by another model). Bots in sync are ready at once; the others are
rebuilt from the database in a background thread, logged, and not ready until that is done
(``/healthz`` answers 503 ``ready: false``, the chat API 503 with ``Retry-After`` for those bots,
instead of handing every question off for want of knowledge). A failed rebuild is retried with
backoff. Bots created later (an empty knowledge base) are ready.
"""
from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)

RETRY_S = (2.0, 5.0, 15.0, 60.0)


class Readiness:
    def __init__(self, knowledge, enabled: bool = True):
        self.knowledge = knowledge
        self.enabled = enabled
        self._state: dict[str, str] = {}  # bot -> "rebuilding" | "failed" (absent: ready)
        self._started = False
        self._lock = threading.Lock()

    def start(self) -> None:
        """Check every bot now; rebuild the stale ones in the background."""
        self._started = True
        if not self.enabled:
            return
        try:
            bots = self.knowledge.bots()
        except Exception:  # noqa: BLE001 - reported by /healthz; the background check retries
            log.exception("could not list the bots to check their indexes")
            bots = None
        stale = []
        for bot in bots or []:
            try:
                state = self.knowledge.index_state(bot)
            except Exception:  # noqa: BLE001 - e.g. a bot name the index store refuses
                log.exception("could not check the index of bot %r", bot)
                continue
            if not state.in_sync:
                log.warning("index of bot %r is not ready (%s): rebuilding it from the database",
                            bot, state.reason)
                stale.append(bot)
        with self._lock:
            for bot in stale:
                self._state[bot] = "rebuilding"
            if bots is None:
                self._state["\0all"] = "rebuilding"
        if stale or bots is None:
            threading.Thread(target=self._rebuild, args=(stale, bots is None), name="index-rebuild",
                             daemon=True).start()

    def _rebuild(self, bots: list[str], relist: bool) -> None:
        attempt = 0
        while True:
            try:
                if relist:
                    bots = [b for b in self.knowledge.bots() if not self.knowledge.index_state(b).in_sync]
                    with self._lock:
                        self._state.pop("\0all", None)
                        for bot in bots:
                            self._state[bot] = "rebuilding"
                    relist = False
                for bot in list(bots):
                    self.knowledge.ensure_index(bot)
                    with self._lock:
                        self._state.pop(bot, None)
                    bots.remove(bot)
                return
            except Exception:  # noqa: BLE001 - logged, retried
                log.exception("rebuilding the index failed; retrying")
                with self._lock:
                    for bot in bots:
                        self._state[bot] = "failed"
                time.sleep(RETRY_S[min(attempt, len(RETRY_S) - 1)])
                attempt += 1

    def bot_ready(self, bot: str) -> bool:
        with self._lock:
            return bot not in self._state and "\0all" not in self._state

    @property
    def ready(self) -> bool:
        with self._lock:
            return self._started and not self._state

    def index_status(self) -> str:
        """``ok``, ``rebuilding`` or ``failed`` (no bot names: /healthz is public)."""
        with self._lock:
            states = set(self._state.values())
        if not states:
            return "ok"
        return "failed" if "failed" in states else "rebuilding"
