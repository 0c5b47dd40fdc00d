"""No reply says what its sources don't: a generated reply is shown sentence by sentence, each only
once the sources support it.

``GroundedReply(pieces, sources, question, checker, ...)`` reads the model's text pieces (already
cut at stop strings and repeated lines, ``bot.generators.base.ReplyGuard``), splits them into
sentences as they complete (``SentenceSplitter``) and, for each sentence:

* drops it and stops when it is degenerate (a number loop, an echoed source header or question,
  a repeated sentence: ``bot.checking.degenerate``);
* shows it when ``checker.supports(source texts, sentence) >= checker.threshold``; a bare yes or
  no ("Yes, we do.") is checked as the visitor's question followed by it, since that is what it
  asserts ("do you rent tandem bikes? Yes, we do." against "we rent city bikes and e-bikes");
* otherwise stops the model there (``rejected`` says why).

When nothing could be shown, the reply falls back to the sources' own words: ``fallback_intro``
and the top source's answer (an FAQ entry's own answer, or the sentences of a passage closest to
the question), cited ``[1]``. When the top source is a guest's review (``metadata["doc_type"] ==
"review"``, as in an entity knowledge base), the reply quotes up to three of the selected reviews
of that entity, each cited, after ``review_intro`` ("Here is what guests wrote about Avalon:"): a
review is one visitor's opinion, never what the help center says. What was shown is what the
dialogue manager stores.
"""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np

from bot.checker import Checker, DegenerateGuard, SentenceSplitter, split_sentences
from bot.checking.text import bare_answer, without_yes_no
from bot.generators.extractive_generator import quoted_answer
from retrieval.types import Hit

MAX_FALLBACK_SENTENCES = 3


def source_text(hit: Hit) -> str:
    """What a sentence is checked against: the passage as the prompt shows it (an FAQ entry's
    question and answer, or the passage text)."""
    answer = hit.faq_answer
    if answer and hit.question:
        return f"{hit.question}\n{answer}"
    return str(hit.text or "")


def fallback_text(source: Hit, question: str, embed: Callable[[Sequence[str]], np.ndarray] | None,
                  intro: str) -> str:
    """The sources' own words for ``question``: an FAQ entry's whole answer, else the (up to three)
    sentences of the passage most similar to the question, in the passage's order."""
    answer = source.faq_answer
    if answer:
        words = quoted_answer(source, answer).strip()
    else:
        sentences = [s.strip() for s in split_sentences(str(source.text or "")) if s.strip()]
        if len(sentences) > MAX_FALLBACK_SENTENCES and embed is not None:
            vecs = embed([question] + sentences)
            sims = vecs[1:] @ vecs[0]
            keep = sorted(np.argsort(-sims)[:MAX_FALLBACK_SENTENCES].tolist())
            sentences = [sentences[i] for i in keep]
        words = " ".join(sentences[:MAX_FALLBACK_SENTENCES]) if sentences else str(source.text or "").strip()
    return f"{intro}\n\n{words} [1]" if intro else f"{words} [1]"


def _review_sentence(hit: Hit) -> str:
    """A review passage without the entity header line its chunk text starts with."""
    lines = [ln.strip() for ln in str(hit.text or "").splitlines() if ln.strip()]
    header = {str(hit.title or "").strip().lower(), hit.entity_key}
    while len(lines) > 1 and lines[0].lower() in header:
        lines = lines[1:]
    return " ".join(lines)


def review_fallback_text(sources: Sequence[Hit], intro: str) -> str | None:
    """Up to three selected reviews of the top source's entity, quoted and cited by their place in
    ``sources`` (``intro`` may name the entity as ``{entity}``, "AVALON" written "Avalon"); None
    when the top source is not a review or none has a sentence to quote."""
    top = sources[0]
    if top.doc_type != "review":
        return None
    quoted = [f"\u201c{sentence}\u201d [{i}]" for i, hit in enumerate(sources, start=1)
              if hit.doc_type == "review" and hit.entity_key == top.entity_key
              and (sentence := _review_sentence(hit))][:MAX_FALLBACK_SENTENCES]
    if not quoted:
        return None
    name = top.entity.title() if top.entity.isupper() else top.entity
    head = intro.replace("{entity}", name) if intro else ""
    return f"{head}\n\n{' '.join(quoted)}" if head else " ".join(quoted)


class GroundedReply(Iterator[str]):
    """The supported sentences of a generated reply, or the sources' own words (module docstring)."""

    def __init__(self, pieces: Iterator[str], sources: Sequence[Hit], question: str, checker: Checker,
                 intro: str, embed: Callable[[Sequence[str]], np.ndarray] | None = None,
                 close: Callable[[], None] | None = None, review_intro: str = ""):
        self.sources = list(sources)
        self.question = question
        self.checker = checker
        self.intro = intro
        self.review_intro = review_intro
        self.embed = embed
        self._pieces = pieces
        self._close = close
        self._texts = [source_text(h) for h in self.sources]
        self.rejected: tuple[str, str] | None = None  # (sentence, reason) that stopped the reply
        self.fell_back = False
        self.shown = 0  # sentences shown
        self._it = self._run()

    def __iter__(self) -> "GroundedReply":
        return self

    def __next__(self) -> str:
        return next(self._it)

    def close(self) -> None:
        self._it.close()
        if self._close is not None:
            self._close()

    def _verdict(self, guard: DegenerateGuard, sentence: str) -> str | None:
        """None when ``sentence`` may be shown, else the reason it may not."""
        if not sentence.strip():
            return None
        reason = guard.check(sentence)
        if reason is not None:
            return reason
        claim = sentence
        if self.question and bare_answer(sentence):  # "Yes, we do." asserts the question's own words
            claim = f"{self.question.strip()} {sentence}"
        score = self.checker.supports(self._texts, claim)
        return None if score >= self.checker.threshold else f"unsupported ({score:.2f})"

    def _run(self) -> Iterator[str]:
        splitter = SentenceSplitter()
        guard = DegenerateGuard(self._texts, self.question)

        def judged(sentences: list[str]) -> Iterator[str]:
            for sentence in sentences:
                sentence = without_yes_no(sentence)  # what is checked is what is shown
                reason = self._verdict(guard, sentence)
                if reason is not None:
                    self.rejected = (sentence, reason)
                    return
                if sentence.strip():
                    self.shown += 1
                yield sentence

        for piece in self._pieces:
            yield from judged(splitter.feed(piece))
            if self.rejected is not None:
                break
        if self.rejected is None:
            yield from judged(splitter.flush())
        if self.rejected is not None and self._close is not None:
            self._close()  # stop generating: nothing after an unsupported sentence is shown
        if self.rejected is not None and self.shown == 0 and self.sources:
            self.fell_back = True
            yield (review_fallback_text(self.sources, self.review_intro)
                   or fallback_text(self.sources[0], self.question, self.embed, self.intro))
