"""Build the product's components once, from the one settings object, and hand out the parts.

``Components(settings)`` is cheap; each part is built on first use and cached. The CLI and
``web.create_app`` make one and pass its parts into what needs them (dependencies passed in, no
globals). Tests build one over a temp data dir with tiny real parts passed as overrides.
"""
from __future__ import annotations

import threading
from functools import cached_property
from typing import Any

from bot.core.settings import Settings


class Components:
    def __init__(self, settings: Settings, **overrides: Any):
        """``overrides`` replace parts by name (``embedder=HashingEmbedder()``, ``generator=...``)."""
        self.settings = settings
        self._overrides = overrides
        self._lock = threading.RLock()
        self._live: dict[str, Any] = {}
        self._retrievers: dict[str, Any] = {}
        self._dialogues: dict[str, Any] = {}
        settings.ensure_dirs()

    def _part(self, name: str, build):
        if name in self._overrides:
            return self._overrides[name]
        return build()

    @cached_property
    def db(self):
        from bot.core.store import Database

        def build():
            db = Database(self.settings.db_url)
            db.migrate()
            return db

        return self._part("db", build)

    @cached_property
    def embedder(self):
        def build():
            from retrieval.embedder import build_embedder

            emb = build_embedder(self.settings.embedder)
            if hasattr(emb, "load"):
                emb.load()
            return emb

        return self._part("embedder", build)

    @cached_property
    def snapshots(self):
        from retrieval.snapshot import SnapshotStore

        return self._part(
            "snapshots", lambda: SnapshotStore(self.settings.data_dir / "index", self.settings.index)
        )

    @cached_property
    def knowledge(self):
        from retrieval.knowledge import KnowledgeBase

        return self._part(
            "knowledge",
            lambda: KnowledgeBase(
                self.db, self.embedder, self.snapshots, self.settings.ingest, self.settings.index,
                lock_dir=self.settings.data_dir / "index",
            ),
        )

    def live(self, bot: str | None = None):
        """The bot's current index snapshot, swapped in when another process publishes a newer one."""
        from retrieval.snapshot import LiveSnapshot

        bot = bot or self.settings.default_bot
        with self._lock:
            if bot not in self._live:
                self._live[bot] = LiveSnapshot(
                    self.snapshots, bot, self.settings.index.reload_interval_s
                )
            return self._live[bot]

    def retriever(self, bot: str | None = None):
        from retrieval.hybrid import HybridRetriever

        bot = bot or self.settings.default_bot
        with self._lock:
            if bot not in self._retrievers:
                live = self.live(bot)
                self._retrievers[bot] = HybridRetriever(
                    self.embedder, live.get, self.settings.retrieval
                )
            return self._retrievers[bot]

    @cached_property
    def generator(self):
        def build():
            # Follows `supportbot promote`: a newly promoted model is swapped in on the next
            # request, without a restart (streams in flight finish on the old one).
            from training.registry import following_generator

            return following_generator(
                self.settings.generator, self.settings.data_dir, self.settings.index.reload_interval_s
            )

        return self._part("generator", build)

    @cached_property
    def conversations(self):
        from bot.conversations import ConversationStore

        return self._part("conversations", lambda: ConversationStore(self.db))

    def dialogue(self, bot: str | None = None):
        from bot.dialogue import DialogueManager

        bot = bot or self.settings.default_bot
        with self._lock:
            if bot not in self._dialogues:
                self._dialogues[bot] = DialogueManager(
                    self.conversations, self.retriever(bot), self.generator, self.settings.dialogue
                )
            return self._dialogues[bot]
