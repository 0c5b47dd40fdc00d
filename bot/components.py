"""Build the product's components once, from the one settings object, and hand out the parts.

``Components(settings)`` is cheap; each part is built on first use and cached. The CLI and
``web.create_app`` make one and pass its parts into what needs them (dependencies passed in, no
globals). Tests build one over a temp data dir with tiny real parts in ``parts``
(``Components(settings, parts={"embedder": HashingEmbedder()})``); a part given there is used
as it is.

This is the app tier: it is the one place that knows every package (``tests/test_architecture.py``).
"""
from __future__ import annotations

import threading
from functools import cached_property
from typing import Any, Callable, Mapping, TypeVar

from bot.checker import Checker, load_checker
from bot.faq_match import FAQMatcher, load_matcher
from bot.conversations import ConversationStore
from bot.core.errors import ConfigError
from bot.core.settings import DialogueSettings, Settings
from bot.core.store import Database
from bot.dialogue import DialogueManager
from bot.generators.base import Generator
from bot.generators.extractive_generator import ExtractiveGenerator
from bot.generators.following import following_generator
from bot.handoff import HandoffDesk
from bot.pipeline import TurnPipeline
from bot.selection import Selector, build_selector
from bot.webhooks import Webhooks
from retrieval.embedder import SentenceTransformerEmbedder, build_embedder
from retrieval.hybrid import HybridRetriever
from retrieval.knowledge import KnowledgeBase
from retrieval.snapshot import LiveSnapshot, SnapshotStore, StoredVectors
from retrieval.types import Embedder

PARTS = ("db", "embedder", "snapshots", "knowledge", "generator", "checker", "faq_matcher", "conversations",
         "webhooks")
T = TypeVar("T")


class Components:
    def __init__(self, settings: Settings, parts: Mapping[str, Any] | None = None):
        """``parts`` replace parts by name (one of ``PARTS``): ``{"embedder": HashingEmbedder(),
        "generator": ScriptedGenerator()}``."""
        unknown = set(parts or {}) - set(PARTS)
        if unknown:
            raise TypeError(f"unknown component(s) {', '.join(sorted(unknown))}; parts are {', '.join(PARTS)}")
        self.settings = settings
        self.parts = dict(parts or {})
        self._lock = threading.RLock()
        self._live: dict[str, LiveSnapshot] = {}
        self._retrievers: dict[str, HybridRetriever] = {}
        self._selectors: dict[str, Selector] = {}
        self._dialogues: dict[str, DialogueManager] = {}
        settings.ensure_dirs()

    def _part(self, name: str, build: Callable[[], T]) -> T:
        return self.parts[name] if name in self.parts else build()

    @cached_property
    def db(self) -> Database:
        def build() -> Database:
            db = Database(self.settings.db_url)
            db.migrate()
            return db

        return self._part("db", build)

    @cached_property
    def embedder(self) -> Embedder:
        def build() -> Embedder:
            emb = build_embedder(self.settings.embedder)
            if hasattr(emb, "load"):
                emb.load()
            return emb

        return self._part("embedder", build)

    @cached_property
    def snapshots(self) -> SnapshotStore:
        return self._part(
            "snapshots", lambda: SnapshotStore(self.settings.data_dir / "index", self.settings.index)
        )

    @cached_property
    def knowledge(self) -> KnowledgeBase:
        return self._part(
            "knowledge",
            lambda: KnowledgeBase(
                self.db, self.embedder, self.snapshots, self.settings.ingest, self.settings.index,
                lock_dir=self.settings.data_dir / "index",
            ),
        )

    def live(self, bot: str | None = None) -> LiveSnapshot:
        """The bot's current index snapshot, swapped in when another process publishes a newer one."""
        bot = bot or self.settings.default_bot
        with self._lock:
            if bot not in self._live:
                self._live[bot] = LiveSnapshot(self.snapshots, bot, self.settings.index.reload_interval_s)
            return self._live[bot]

    def retriever(self, bot: str | None = None) -> HybridRetriever:
        bot = bot or self.settings.default_bot
        with self._lock:
            if bot not in self._retrievers:
                self._retrievers[bot] = HybridRetriever(self.embedder, self.live(bot).get, self.settings.retrieval)
            return self._retrievers[bot]

    def selector(self, bot: str | None = None) -> Selector:
        """The knowledge selector named by ``dialogue.selector``, reading the bot's stored vectors."""
        bot = bot or self.settings.default_bot
        with self._lock:
            if bot not in self._selectors:
                self._selectors[bot] = build_selector(
                    self.settings.dialogue, self.embedder, stored_vectors=StoredVectors(self.live(bot).get)
                )
            return self._selectors[bot]

    @cached_property
    def generator(self) -> Generator:
        # Follows `supportbot promote`: a newly promoted model is swapped in on the next
        # request, without a restart (streams in flight finish on the old one).
        return self._part("generator", lambda: following_generator(
            self.settings.generator, self.settings.data_dir, self.settings.index.reload_interval_s
        ))

    @cached_property
    def checker(self) -> Checker | None:
        """The support checker of generated sentences (``dialogue.checker``; "" = none)."""
        return self._part("checker", lambda: self._load_checker(self.settings.dialogue.checker))

    def _load_checker(self, name: str) -> Checker | None:
        if not name:
            return None
        try:
            return load_checker(name, self.embedder)
        except ConfigError as exc:
            raise ConfigError(f"dialogue.checker={name!r}: {exc.message}. Use the embedder it was fitted "
                              "with, refit it (bench/train_checker.py), or set dialogue.checker to "
                              "'overlap' (word overlap) or '' (no checking)") from exc

    def adapted_embedder(self, adapter) -> Embedder:
        """The configured embedder model with the LoRA adapter folder ``adapter`` merged (the FAQ
        matcher's own embedder); loaded now, so a broken adapter fails at start-up."""
        return SentenceTransformerEmbedder(self.settings.embedder, adapter=adapter).load()

    @cached_property
    def faq_matcher(self) -> FAQMatcher | None:
        """P(the top FAQ entry answers the question) (``dialogue.faq_matcher``; "" = none)."""
        return self._part("faq_matcher", lambda: load_matcher(
            self.settings.dialogue.faq_matcher, self.embedder, self.settings.dialogue.selector_threads,
            self.adapted_embedder))

    @cached_property
    def conversations(self) -> ConversationStore:
        return self._part("conversations", lambda: ConversationStore(self.db))

    @cached_property
    def webhooks(self) -> Webhooks:
        return self._part("webhooks", lambda: Webhooks(self.db, self.settings.handoff))

    @cached_property
    def handoffs(self) -> HandoffDesk:
        """The live hand-off (one per process: its change signal wakes this process's streams)."""
        return HandoffDesk(self.conversations, self.settings.handoff, emit=self.webhooks.enqueue)

    def pipeline(self, bot: str | None = None, generator: Generator | None = None,
                 with_generator: bool = True, dialogue: DialogueSettings | None = None) -> TurnPipeline:
        """The bot's turn pipeline. ``generator`` replaces the served one (evaluation of another
        model), ``with_generator=False`` builds one that only retrieves and plans, ``dialogue``
        replaces the dialogue settings (an evaluation's own)."""
        gen = generator if generator is not None else (self.generator if with_generator else None)
        dialogue = dialogue or self.settings.dialogue
        selector = self.selector(bot)
        if (dialogue.selector, dialogue.selector_threads) != (
                self.settings.dialogue.selector, self.settings.dialogue.selector_threads):
            selector = build_selector(dialogue, self.embedder,
                                      stored_vectors=StoredVectors(self.live(bot).get))
        checker = (self.checker if dialogue.checker == self.settings.dialogue.checker
                   else self._load_checker(dialogue.checker))
        matcher = (self.faq_matcher if dialogue.faq_matcher == self.settings.dialogue.faq_matcher
                   else load_matcher(dialogue.faq_matcher, self.embedder, dialogue.selector_threads,
                                     self.adapted_embedder))
        return TurnPipeline(self.retriever(bot), selector, gen, ExtractiveGenerator(), dialogue,
                            checker=checker, embedder=self.embedder, matcher=matcher)

    def dialogue(self, bot: str | None = None) -> DialogueManager:
        bot = bot or self.settings.default_bot
        with self._lock:
            if bot not in self._dialogues:
                self._dialogues[bot] = DialogueManager(self.conversations, self.pipeline(bot), self.settings.dialogue,
                                                       handoffs=self.handoffs)
            return self._dialogues[bot]
