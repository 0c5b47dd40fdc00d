"""Support checker (bot/checker.py): the bundled calibrated checker with the real default embedder,
OverlapChecker, degenerate-output detection, the streaming sentence splitter, quantities, and the
labelled set in bench/checker_set/."""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

from bot.checker import (BUNDLED, REASONS, CalibratedChecker, Checker, OverlapChecker, DegenerateGuard,
                         SentenceSplitter, degenerate, load_checker, split_sentences)
from bot.checking import degenerate as dg
from bot.checking.quantities import quantities, quantity_supported
from bot.checking.text import is_filler, polarity_negative
from bot.core.errors import ConfigError
from retrieval.embedder import HashingEmbedder

REPO = Path(__file__).resolve().parent.parent

# Fictional passages, written for these tests (not in the labelled set).
RETURNS = ("Can I return used gear?\nUsed items can only be returned under our warranty if they are "
           "defective. Unused items in their original packaging can be returned within 60 days of "
           "delivery for a full refund.")
INSTALL = ("Is installation free?\nInstallation is free only if you sign a 12-month contract. Without "
           "a contract, installation costs $150. A technician visit takes about 2 hours.")
HOURS = ("When are you open?\nThe shop is open Tuesday to Saturday from 10 am to 6 pm. We are closed "
         "on Sundays and Mondays.")
SOURCES = [RETURNS, INSTALL, HOURS]


def shown(checker, sentence, sources=SOURCES) -> bool:
    score = checker.supports(sources, sentence)
    assert 0.0 <= score <= 1.0
    return score >= checker.threshold


# ------------------------------------------------------------------ calibrated checker


def test_bundled_checker_is_a_checker_with_a_calibrated_cut(checker):
    assert isinstance(checker, Checker) and isinstance(checker, CalibratedChecker)
    assert 0.5 < checker.threshold < 1.0


def test_supported_sentence_passes_and_contradicted_one_is_rejected(checker):
    assert shown(checker, "Unused items can be returned within 60 days of delivery for a full refund [1].")
    assert shown(checker, "We're open Tuesday to Saturday, 10 am to 6 pm.")
    assert not shown(checker, "Yes, you can return used gear.")
    assert not shown(checker, "We're open on Sundays.")


def test_changed_number_is_rejected(checker):
    assert not shown(checker, "Unused items can be returned within 90 days of delivery.")
    assert not shown(checker, "Without a contract, installation is $99.")
    # the same claim with a unit the sources do not state either
    assert not shown(checker, "Unused items can be returned within two months of delivery.")


def test_flipped_only_if_is_rejected(checker):
    assert shown(checker, "Installation is free if you sign a 12-month contract.")
    assert not shown(checker, "Installation is free, with or without a contract.")
    assert not shown(checker, "Used gear can be returned within 60 days.")


def test_filler_passes_and_unsupported_claim_does_not(checker):
    for filler in ("I hope this helps!", "Let me know if you have any other questions.",
                   "Thanks for reaching out!"):
        assert shown(checker, filler), filler
    assert not shown(checker, "We also offer free gift wrapping.")


def test_supports_many_matches_supports(checker):
    sentences = ["A technician visit takes about 2 hours.", "Installation is always free.", "\n"]
    many = checker.supports_many(SOURCES, sentences)
    assert many == pytest.approx([checker.supports(SOURCES, s) for s in sentences], abs=1e-5)
    assert many[2] == 1.0  # whitespace between sentences claims nothing


def test_no_sources_support_nothing_but_filler(checker):
    assert not shown(checker, "Installation is free if you sign a 12-month contract.", sources=[])
    assert shown(checker, "Thanks for reaching out!", sources=[])


def test_load_checker_rejects_another_embedder():
    with pytest.raises(ConfigError, match="fitted with embedder"):
        load_checker("default", HashingEmbedder(384))


def test_load_checker_errors(tmp_path, minilm):
    with pytest.raises(ConfigError, match="not found"):
        load_checker(str(tmp_path / "nope.json"), minilm)
    weights = json.loads(BUNDLED["default"].read_text())
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps({**weights, "feature_version": -1}))
    with pytest.raises(ConfigError, match="feature version"):
        load_checker(str(stale), minilm)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({**weights, "coef": [1.0]}))
    with pytest.raises(ConfigError, match="incomplete"):
        load_checker(str(broken), minilm)
    with pytest.raises(ConfigError, match="embedder"):
        load_checker("default", None)
    assert isinstance(load_checker("overlap"), OverlapChecker)


def test_weights_header_names_the_embedder(minilm):
    weights = json.loads(BUNDLED["default"].read_text())
    assert weights["embedder"] == minilm.model_id
    assert "northwind-outfitters" in weights["trained_on"]["held_out"]


# ------------------------------------------------------------------ overlap checker


def test_overlap_checker_basics():
    c = OverlapChecker()
    assert isinstance(c, Checker)
    assert c.supports(SOURCES, "Installation costs $150 without a contract.") >= c.threshold
    assert c.supports(SOURCES, "Installation costs $120 without a contract.") == 0.0  # number
    assert c.supports(SOURCES, "We sell kayaks and paddles.") < c.threshold
    assert c.supports(SOURCES, "I hope this helps!") == 1.0
    assert c.supports([], "Installation costs $150.") == 0.0


# ------------------------------------------------------------------ degenerate output


@pytest.mark.parametrize("sentence, reason", [
    ("1. 1. 1. 2. 3. 4. 5.", dg.NUMBER_LOOP),
    ("1. 2. 3. Sign 4. 5. 6.", dg.NUMBER_LOOP),
    ("[1] General Account Questions: Returns & Refunds", dg.SOURCE_HEADER),
    ("Sources:", dg.SOURCE_HEADER),
    ("Title: Returns & Refunds", dg.SOURCE_HEADER),
    ("Returns & Refunds", dg.SOURCE_HEADER),  # a source's title line
    ("Can I return used gear?", dg.QUESTION_ECHO),  # the FAQ question in the sources
    ("Do you deliver on weekends?", dg.QUESTION_ECHO),  # the visitor's question
    ("... 42.", dg.NO_WORDS),
    ("?!", dg.NO_WORDS),
    ("The rooms are clean and the rooms are very clean.", dg.REPEATED_CLAUSE),  # a loop in one sentence
    ("Guests were very quiet, and the guests were very quiet.", dg.REPEATED_CLAUSE),
])
def test_degenerate_catches_each_kind(sentence, reason):
    sources = ["Returns & Refunds\n" + RETURNS, INSTALL]
    assert degenerate(sentence, sources, "Do you deliver on weekends?") == reason
    assert reason in REASONS


@pytest.mark.parametrize("sentence", [
    "Yes, unused items can be returned within 60 days [1].", "No.", "I hope this helps!",
    "1. Sign in and open Account > Orders.", "Call us at 1-800-555-0199.", "\n",
    "Do you want me to start a return for you?",
    "You can return it in store, or you can return it by post.",  # two clauses, not one said twice
    "Rooms are cleaned daily and towels are changed daily.",
])
def test_degenerate_leaves_ordinary_sentences_alone(sentence):
    assert degenerate(sentence, ["Returns & Refunds\n" + RETURNS], "Can I return my boots?") is None


def test_reply_guard_catches_a_repeated_sentence():
    guard = DegenerateGuard(SOURCES, "Is installation free?")
    assert guard.check("Installation is free with a 12-month contract. ") is None
    assert guard.check("A visit takes about 2 hours. ") is None
    assert guard.check("Installation is free with a 12-month contract! ") == dg.REPEATED
    assert guard.check("Is installation free?") == dg.QUESTION_ECHO


# ------------------------------------------------------------------ sentence splitter

SPLIT_CASES = [
    ("Yes, returns are free within 30 days [1]. You can start one online, e.g. from your account. "
     "Prices start at $4.99 in the U.S. and 2.5% tax applies. See shop.example/returns. Thanks!",
     ["Yes, returns are free within 30 days [1]. ", "You can start one online, e.g. from your account. ",
      "Prices start at $4.99 in the U.S. and 2.5% tax applies. ", "See shop.example/returns. ", "Thanks!"]),
    ("Returns are free. [2] Shipping costs $6.95.[3] Ok?",
     ["Returns are free. [2] ", "Shipping costs $6.95.[3] ", "Ok?"]),
    ("To return:\n1. Sign in.\n2. Open Account > Orders. Click Start.\n3. Print the label\n\nDone.",
     ["To return:\n", "1. Sign in.\n", "2. Open Account > Orders. ", "Click Start.\n", "3. Print the label\n\n",
      "Done."]),
    ("- tents\n- stoves\nAsk in store.", ["- tents\n", "- stoves\n", "Ask in store."]),
    ("No. We never sell your data. See No. 5 in the policy, i.e. the sharing rules.",
     ["No. ", "We never sell your data. ", "See No. 5 in the policy, i.e. the sharing rules."]),
    ("Check your spam folder, then contact us. Our team can never see\nyour password.",
     ["Check your spam folder, then contact us. ", "Our team can never see\nyour password."]),
    ("Wait... really? Yes!  ", ["Wait... ", "really? ", "Yes!  "]),
]


@pytest.mark.parametrize("text, expected", SPLIT_CASES)
def test_splitter_cases(text, expected):
    assert split_sentences(text) == expected
    assert "".join(split_sentences(text)) == text


@pytest.mark.parametrize("text, expected", SPLIT_CASES)
def test_splitter_streaming_equals_whole_text(text, expected):
    rng = random.Random(7)
    for _ in range(30):
        splitter, out, i = SentenceSplitter(), [], 0
        while i < len(text):
            j = i + rng.randint(1, 7)
            out += splitter.feed(text[i:j])
            i = j
        out += splitter.flush()
        assert out == expected
        assert "".join(out) == text


def test_splitter_waits_for_the_next_character_and_flush_resets():
    s = SentenceSplitter()
    assert s.feed("It costs $4.") == []  # "$4." may become "$4.99"
    assert s.feed("99. ") == []  # the next sentence may start in lower case ("e.g. the")
    assert s.feed("Then") == ["It costs $4.99. "]
    assert s.feed(" more [") == []
    assert s.flush() == ["Then more ["]
    assert s.flush() == []


# ------------------------------------------------------------------ text analysis


@pytest.mark.parametrize("sentence, source", [
    ("within thirty days", "within 30 days"), ("$5 fee", "a 5 USD fee"), ("5% off", "5 percent off"),
    ("two weeks", "14 days"), ("within 48 hours", "within 2 days"), ("$1,000", "$1000"),
    ("3 to 5 business days", "3-5 business days"), ("7 pm", "19:00 or 7 pm"), ("$35 for one day", "$35 a day"),
])
def test_quantities_match_across_forms(sentence, source):
    pool = quantities(source, generous=True)
    assert all(quantity_supported(q, pool) for q in quantities(sentence)), (sentence, source)


@pytest.mark.parametrize("sentence, source", [
    ("within 60 days", "within 30 days"), ("$5 fee", "a 5% fee"), ("30 minutes", "30 days"),
    ("7 pm", "7 am"), ("call 1-800-555-0100", "call 1-800-555-0147"),
])
def test_quantities_differ(sentence, source):
    assert not all(quantity_supported(q, quantities(source)) for q in quantities(sentence))


def test_polarity_and_filler():
    assert polarity_negative("We don't ship to Alaska.") and not polarity_negative("We ship to Alaska.")
    assert not polarity_negative("No, this is free.")  # the answer word is not counted
    assert not polarity_negative("It comes at no extra charge.")  # an idiom for "free"
    assert not polarity_negative("A leash no longer than 6 feet.")  # a bound
    assert is_filler("Let me know if you have other questions.") and is_filler("Thanks for reaching out!")
    assert not is_filler("Thanks for asking: shipping is free worldwide.")
    assert not is_filler("Let me know your order number, which starts with NW.")


# ------------------------------------------------------------------ labelled set


def test_labelled_set_is_built_from_the_hand_files():
    sys.path.insert(0, str(REPO / "bench" / "checker_set"))
    try:
        import build_set
    finally:
        sys.path.pop(0)
    rows = [json.loads(line) for line in (REPO / "bench/checker_set/checker_set.jsonl").read_text().splitlines()]
    assert rows == build_set.build(), "checker_set.jsonl is stale: run bench/checker_set/build_set.py"
    assert len(rows) >= 600 and sum(r["origin"] == "hand" for r in rows) >= 300
    assert {r["label"] for r in rows} == {"supported", "unsupported", "contradicted"}
    groups = {r["group"] for r in rows}
    assert "northwind-outfitters" in groups and len(groups) >= 9
    assert all(r["sources"] and r["sentence"] for r in rows)
