"""The generator interface and the streaming pieces every backend shares.

Contract (``Generator``):

* ``stream(messages, **params) -> GenerationStream``: an iterator of text pieces, yielded as they
  are produced; joined they are the whole reply. ``messages`` are chat messages
  ``[{"role": "system"|"user"|"assistant", "content": str}, ...]``. Common ``params``:
  ``max_new_tokens``, ``temperature`` (0 = greedy), ``top_p``, ``stop`` (list of strings: the
  reply ends before the first one, which is not yielded); backends accept their own extras and
  ignore unknown ones.
* ``model_id``: what produced the text (stored with each message).
* Constructors are cheap; ``load()`` does the heavy work and returns the generator. ``stream``
  loads on first use when ``load`` was not called.
* ``count_tokens(text)``: tokens by the model's own tokenizer where there is one (``tokenizer``
  attribute, else ``None``), otherwise an approximation.
* Usage: the returned ``GenerationStream`` has ``usage`` (``{"prompt_tokens",
  "completion_tokens"}``, final once the stream is exhausted or closed) and ``text()``; the
  generator's ``last_usage`` is the usage of the last stream finished *in the calling thread*
  (thread-local, so concurrent web requests each see their own).
"""
from __future__ import annotations

import re
import threading
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence, runtime_checkable

_WORDS = re.compile(r"\w+|[^\w\s]", re.UNICODE)
_WORD_PIECES = re.compile(r"\s*\S+|\s+")


def approx_count_tokens(text: str) -> int:
    """Token count without a tokenizer: words and punctuation marks."""
    return len(_WORDS.findall(text))


def word_pieces(text: str) -> list[str]:
    """``text`` split into pieces of one word each with its leading whitespace (joins back exactly)."""
    return _WORD_PIECES.findall(text)


@runtime_checkable
class Generator(Protocol):
    model_id: str
    tokenizer: Any  # the model's own tokenizer, or None (openai, extractive)

    @property
    def last_usage(self) -> dict | None: ...

    def load(self) -> "Generator": ...

    def stream(self, messages: Sequence[dict], **params: Any) -> Iterator[str]:
        """Yield the reply to ``messages`` in text pieces as they are produced."""

    def count_tokens(self, text: str) -> int: ...


def validate_messages(messages: Sequence[dict]) -> list[dict]:
    """Check the chat messages shape; raise ``GeneratorError`` naming the bad field."""
    from bot.core.errors import GeneratorError

    if not messages:
        raise GeneratorError("messages: at least one message is needed")
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise GeneratorError(f"messages[{i}]: expected a dict with 'role' and 'content'")
        if not isinstance(msg["content"], str):
            raise GeneratorError(f"messages[{i}].content: expected a string")
        out.append({"role": str(msg["role"]), "content": msg["content"]})
    return out


def stop_list(stop: str | Iterable[str] | None) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop] if stop else []
    return [s for s in stop if s]


class StopMatcher:
    """Cut a stream of text at the first stop string, without ever yielding part of one.

    ``feed(piece)`` returns the text safe to show now; the tail that could still grow into a stop
    string is held back until the next piece decides it. ``stopped`` turns true once a stop string
    is complete (everything from it on is dropped). ``flush()`` releases the held-back tail at the
    end of the stream.
    """

    def __init__(self, stop: Sequence[str]):
        self.stop = [s for s in stop if s]
        self.stopped = False
        self._pending = ""

    def _held_back(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        if not self.stop:
            return piece
        text = self._pending + piece
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._pending = ""
            return text[:cut]
        keep = self._held_back(text)
        self._pending = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out


class RepeatGuard:
    """Cut a reply where a line repeats an earlier one (a small model looping), repeat not shown.

    ``feed(piece)`` returns the text safe to show now. The line being written is held back only
    while it could still turn into an earlier line of at least ``min_chars`` characters (it is
    that line's beginning so far); when it ends (newline, or ``flush`` at the end) equal to one,
    ``stopped`` turns true and it is dropped. Other text passes at once.
    """

    def __init__(self, min_chars: int = 12):
        self.min_chars = min_chars
        self.stopped = False
        self._seen: set[str] = set()
        self._line = ""  # the current line so far (shown or held)
        self._held = ""  # the part of it not shown yet

    def _could_repeat(self) -> bool:
        start = self._line.strip()
        return any(seen.startswith(start) for seen in self._seen)

    def _ends_in_repeat(self) -> bool:
        return len(self._line.strip()) >= self.min_chars and self._line.strip() in self._seen

    def feed(self, piece: str) -> str:
        out: list[str] = []
        for part in re.split(r"(\n)", piece):
            if self.stopped or not part:
                continue
            if part == "\n":
                if self._ends_in_repeat():
                    self.stopped, self._held = True, ""
                    break
                if len(self._line.strip()) >= self.min_chars:
                    self._seen.add(self._line.strip())
                out.append(self._held + "\n")
                self._line = self._held = ""
                continue
            self._line += part
            self._held += part
            if not self._could_repeat():
                out.append(self._held)
                self._held = ""
        return "".join(out)

    def flush(self) -> str:
        if self.stopped or self._ends_in_repeat():
            self.stopped, self._held = True, ""
        out, self._held = self._held, ""
        return out


class ReplyGuard:
    """Everything that may cut a model's reply, in one place: the ``stop`` strings (the reply ends
    before the first one) and, with ``cut_repeats``, a line that repeats an earlier one
    (``RepeatGuard``). ``feed``/``flush``/``stopped`` as for the parts."""

    def __init__(self, stop: Sequence[str] = (), cut_repeats: bool = True):
        self.stop = StopMatcher(stop_list(list(stop)))
        self.repeats = RepeatGuard() if cut_repeats else None

    @property
    def stopped(self) -> bool:
        return self.stop.stopped or bool(self.repeats and self.repeats.stopped)

    def _repeat(self, text: str) -> str:
        return self.repeats.feed(text) if self.repeats is not None and text else text

    def feed(self, piece: str) -> str:
        return self._repeat(self.stop.feed(piece))

    def flush(self) -> str:
        out = self._repeat(self.stop.flush())
        if self.repeats is not None:
            out += self.repeats.flush()
        return out


def guarded(pieces: Iterable[str], guard) -> Iterator[str]:
    """``pieces`` through ``guard`` (a ``ReplyGuard``, ``RepeatGuard`` or ``StopMatcher``); once it
    has stopped, ``pieces`` is closed (a backend's stream stops generating) and nothing more is
    read."""
    for piece in pieces:
        shown = guard.feed(piece)
        if shown:
            yield shown
        if guard.stopped:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()
            break
    tail = guard.flush()
    if tail:
        yield tail


class GenerationStream(Iterator[str]):
    """An iterator of text pieces with the call's usage, filled in as it runs.

    ``pieces`` is the backend's own generator; it receives this object and updates ``usage``.
    ``on_finish(usage)`` runs once, when the stream is exhausted, fails or is closed.
    """

    def __init__(
        self,
        pieces: Callable[["GenerationStream"], Iterator[str]],
        model_id: str,
        on_finish: Callable[[dict], None] | None = None,
    ):
        self.model_id = model_id
        self.usage: dict[str, int] = {"prompt_tokens": 0, "completion_tokens": 0}
        self.finish_reason: str | None = None  # "stop" | "length" | None while running
        self._chunks: list[str] = []
        self._on_finish = on_finish
        self._finished = False
        self._it = pieces(self)

    def __iter__(self) -> "GenerationStream":
        return self

    def __next__(self) -> str:
        try:
            piece = next(self._it)
        except BaseException:
            self._finish()
            raise
        self._chunks.append(piece)
        return piece

    def _finish(self) -> None:
        if not self._finished:
            self._finished = True
            if self._on_finish is not None:
                self._on_finish(dict(self.usage))

    def close(self) -> None:
        """Stop generating (frees the backend's per-call state at once)."""
        self._it.close()
        self._finish()

    def text(self) -> str:
        """Consume what is left and return the whole reply."""
        for _ in self:
            pass
        return "".join(self._chunks)


class UsageMixin:
    """Gives a backend a thread-local ``last_usage`` fed by its streams' ``on_finish``.

    Backends set ``self._usage_local = threading.local()`` in their constructor.
    """

    _usage_local: threading.local

    def _record_usage(self, usage: dict) -> None:
        self._usage_local.value = usage

    @property
    def last_usage(self) -> dict | None:
        """Usage of the last stream finished in this thread: ``{"prompt_tokens", "completion_tokens"}``."""
        return getattr(self._usage_local, "value", None)
