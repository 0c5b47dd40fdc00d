"""The FAQ matcher: P(the top FAQ entry answers the question) decides on flat knowledge bases.

Its features (rivals are entries with another question), the policy it drives (direct reply, ask
back, hand off) and, with the bundled matcher on the real embedder and cross-encoder, the bundled
sample FAQ: a paraphrase of an entry is answered with the entry's own answer, a question the FAQ
does not answer is not answered.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.faq_match import (COS_NO_RIVAL, FEATURES, MATCH_FILE, NO_RIVAL, FAQMatcher, answer_sentences,
                           answers_yes_no, entry_cosines, features_from, load_matcher)
from bot.policy import ANSWER, CLARIFY, DIRECT, HANDOFF, Decision, with_match

REPO = Path(__file__).resolve().parent.parent


def test_rivals_are_entries_with_another_question():
    # two answers to one question (as on StackFAQ) do not compete: the margin is to the third
    items = [(3.0, "How do I reset my password?", 0.8, 0.7, 0.6, 2.0),
             (2.9, "how do I reset my password", 0.8, 0.6, 0.5, 1.5),
             (1.0, "Can I change my email?", 0.3, 0.2, 0.4, -3.0)]
    margin, cos_q, cos_t, cos_s, cross, cross_margin, margin_q, margin_t, margin_s = features_from(items)
    assert margin == pytest.approx(2.0) and cos_q == pytest.approx(0.8)
    assert (cos_t, cos_s) == (pytest.approx(0.7), pytest.approx(0.6))
    assert cross == pytest.approx(2.0) and cross_margin == pytest.approx(5.0)
    # each cosine against the best rival's: the third entry's, not the same question's second
    assert (margin_q, margin_t, margin_s) == (pytest.approx(0.5), pytest.approx(0.5), pytest.approx(0.2))
    assert features_from(items, 2)[6:] == [pytest.approx(-0.5), pytest.approx(-0.5), pytest.approx(-0.2)]
    alone = features_from(items[:2])
    assert alone[0] == NO_RIVAL and alone[5] == NO_RIVAL and alone[6:] == [COS_NO_RIVAL] * 3
    assert len(alone) == len(FEATURES)


def test_answer_sentences_are_what_cos_s_reads():
    assert answer_sentences("Yes. Refunds take 5 days.\nCall us on 555-0100 any day!") == [
        "Refunds take 5 days.", "Call us on 555-0100 any day!"]


def test_entry_cosines_read_question_text_and_closest_answer_sentence():
    import numpy as np

    axes = {"q1": [1, 0, 0], "t1": [0.6, 0.8, 0], "a": [0, 1, 0], "b": [0.8, 0, 0.6], "q2": [0, 0, 1], "t2": [0, 1, 0]}
    batches = []

    def embed(texts):
        batches.append(list(texts))
        return np.asarray([axes[t] for t in texts], np.float32)

    cos_q, cos_t, cos_s = entry_cosines(np.asarray([1, 0, 0], np.float32), ["q1", "q2"], ["t1", "t2"],
                                        [["a", "b"], []], embed)
    assert cos_q.tolist() == pytest.approx([1.0, 0.0]) and cos_t.tolist() == pytest.approx([0.6, 0.0])
    assert cos_s == pytest.approx([0.8, 0.0])  # the closer of its two sentences; none is 0
    assert batches == [["q1", "q2", "t1", "t2", "a", "b"]]  # one batch


@pytest.mark.parametrize("p, action, reason", [
    (0.9, ANSWER, DIRECT), (0.5, CLARIFY, "ambiguous"), (0.1, HANDOFF, "not_in_knowledge")])
def test_the_policy_follows_the_matchers_probability(p, action, reason):
    decided = with_match(Decision(ANSWER, "confident", 0.9), p, direct=0.8, clarify=0.3)
    assert (decided.action, decided.reason, decided.confidence) == (action, reason, p)


def test_a_request_for_a_person_stays_a_handoff():
    requested = Decision(HANDOFF, "requested", 0.9)
    assert with_match(requested, 0.99, direct=0.8, clarify=0.3) is requested
    assert with_match(Decision(ANSWER, "confident", 0.9), None, 0.8, 0.3).reason == "confident"


def test_the_bundled_matcher_is_fitted_and_records_its_figures():
    meta = json.loads(MATCH_FILE.read_text())
    assert meta["features"] == FEATURES and len(meta["weights"]) == len(FEATURES)
    assert 0 < meta["clarify"] <= meta["direct"] < 1
    # and weights of its own for a help center's passages, fitted on the fit help centers
    passages = meta["passages"]
    assert len(passages["weights"]) == len(FEATURES) and 0 < passages["clarify"] <= passages["direct"] < 1
    assert passages["fitted_on"] and all(name.endswith("-help") for name in passages["fitted_on"])
    assert "held_out" in passages["figures"]
    assert meta["fitted_on"] == ["fit"]
    assert "held_out" in meta["figures"]
    if meta.get("cosines", "stock") != "stock":  # its FAQ embedder ships beside it, with its record
        adapter = MATCH_FILE.parent / meta["faq_embedder"]
        record = json.loads((adapter / "embedder.json").read_text())
        assert (adapter / "adapter_model.safetensors").stat().st_size < 5_000_000
        assert record["folds"] and record["held_out_top1"]["tuned"]["held_out"]["n"] > 0


@pytest.mark.parametrize("answer, yes_no", [
    ("Yes, if your vet agrees. We pay the vet and you pay the excess.", True),
    ("**No**, used items can only be returned under the warranty.", True),
    ("Unfortunately not: gift cards are for our shop only.", True),
    ("Nope.", True),
    ("Go to Account > Privacy > Delete my account.", False),
    ("Yesterday's orders ship today.", False),
    ("Notice periods are 30 days.", False),
    ("", False),
    (None, False),
])
def test_answers_that_open_with_yes_or_no_are_told_apart(answer, yes_no):
    assert answers_yes_no(answer) is yes_no


def test_a_matcher_whose_thresholds_are_out_of_order_is_a_clear_config_error(tmp_path):
    from bot.core.errors import ConfigError

    meta = json.loads(MATCH_FILE.read_text())
    meta["direct_yes_no"] = meta["clarify"] / 2  # below the clarify threshold
    path = tmp_path / "faq-match.json"
    path.write_text(json.dumps(meta))
    named = type("Named", (), {"model_id": meta["embedder"]})()  # thresholds are read before any model
    with pytest.raises(ConfigError, match="clarify at most each direct one"):
        FAQMatcher.load(path, named)


@pytest.mark.parametrize("passages", [{"weights": [1.0], "bias": 0.0, "direct": 0.5, "clarify": 0.2},
                                      {"weights": [0.0] * len(FEATURES), "bias": 0.0, "direct": 0.2, "clarify": 0.5},
                                      {"bias": 0.0, "direct": 0.5, "clarify": 0.2}])
def test_a_matcher_with_broken_passage_weights_is_a_clear_config_error(tmp_path, passages):
    from bot.core.errors import ConfigError

    meta = json.loads(MATCH_FILE.read_text()) | {"passages": passages}
    path = tmp_path / "faq-match.json"
    path.write_text(json.dumps(meta))
    named = type("Named", (), {"model_id": meta["embedder"]})()
    with pytest.raises(ConfigError, match="passages need weights"):
        FAQMatcher.load(path, named)


def test_a_wrong_embedder_turns_the_default_off_and_a_path_refuses_it():
    from bot.core.errors import ConfigError
    from retrieval.embedder import HashingEmbedder

    assert load_matcher("default", HashingEmbedder(32)) is None
    assert load_matcher("", HashingEmbedder(32)) is None
    with pytest.raises(ConfigError, match="embedder"):
        FAQMatcher.load(MATCH_FILE, HashingEmbedder(32))


@pytest.mark.slow
@pytest.mark.parametrize("change, error", [({"cosines": "tuned", "faq_embedder": ""}, "names none"),
                                           ({"cosines": "fine-tuned"}, "stock, tuned or both"),
                                           ({"cosines": "tuned", "faq_embedder": "no-such-adapter"}, "adapter_config")])
def test_a_matcher_whose_faq_embedder_is_missing_is_a_clear_config_error(tmp_path, minilm, change, error):
    from bot.core.errors import ConfigError

    meta = json.loads(MATCH_FILE.read_text()) | change
    path = tmp_path / "faq-match.json"
    path.write_text(json.dumps(meta))
    from bot.core.settings import EmbedderSettings
    from retrieval.embedder import SentenceTransformerEmbedder

    with pytest.raises(ConfigError, match=error):
        FAQMatcher.load(path, minilm, adapted=lambda d: SentenceTransformerEmbedder(EmbedderSettings(), d).load())


@pytest.fixture(scope="module")
def sample_bot(tmp_path_factory, minilm):
    from bot.components import Components
    from bot.core.settings import Settings

    settings = Settings(data_dir=tmp_path_factory.mktemp("faqmatch") / "var",
                        dialogue={"faq_matcher": "default", "checker": ""},
                        generator={"backend": "extractive"})
    comps = Components(settings, parts={"embedder": minilm})
    report = comps.knowledge.ingest("shop", [REPO / "samples" / "faq"], progress=False)
    assert not report.errors
    return comps.pipeline("shop", with_generator=False)


def test_a_paraphrase_is_answered_with_the_entrys_own_answer(sample_bot):
    assert sample_bot.matcher is not None
    message = "i see two charges on my card for one order??"
    plan = sample_bot.plan(message, sample_bot.retrieve(message, []))
    assert plan.decision.action == ANSWER and plan.direct
    assert plan.sources[0].question == "I was charged twice. What happened?"


def test_a_question_it_is_less_sure_of_offers_its_entry_first(sample_bot):
    # one of the questions the right-answers issue quotes (the old default replied about promo
    # codes): the refund entry's answer sentence about the card stands close to it too, so since
    # the cosine margins (2026-12-03) the bot asks back, offering the card-charge entry first
    message = "when do you take the money from my card"
    plan = sample_bot.plan(message, sample_bot.retrieve(message, []))
    assert plan.decision.action in (ANSWER, CLARIFY)
    offered = plan.sources if plan.decision.action == ANSWER else plan.topics
    assert offered[0].question == "When is my card charged?"


@pytest.mark.parametrize("message", ["what is the capital of Australia?",
                                     "can you recommend a good dentist in Bend?"])
def test_a_question_the_faq_does_not_answer_is_not_answered(sample_bot, message):
    plan = sample_bot.plan(message, sample_bot.retrieve(message, []))
    assert plan.decision.action != ANSWER, plan.decision


def test_a_matcher_can_give_entries_that_answer_yes_their_own_threshold(sample_bot):
    # The bundled matcher replies to this directly with "Can I rent gear instead of buying it?"
    # ("Yes, in Bend, Oregon only: our store rents ...", P 0.43 on 2026-12-03): a yes to another
    # question than the visitor's. A matcher with a yes/no threshold above that P asks back.
    bundled = sample_bot.matcher
    split = FAQMatcher(bundled.meta | {"direct_yes_no": 0.9}, bundled.cross, bundled.embedder, bundled.tuned)
    assert bundled.direct_yes_no == bundled.direct  # one threshold when the file has no split
    message = "can my scout troop order 40 sleeping bags at a bulk price"
    hits = sample_bot.retrieve(message, [])
    match = split.match(message, hits)
    assert answers_yes_no(match.entry.faq_answer) and match.direct == 0.9
    assert bundled.match(message, hits).direct == bundled.direct
    decided = with_match(Decision(ANSWER, "confident", 0.9), match.probability, match.direct, split.clarify)
    assert decided.action != ANSWER
    # an entry whose answer does not open with yes/no keeps the other threshold
    message = "i see two charges on my card for one order??"
    match = split.match(message, sample_bot.retrieve(message, []))
    assert not answers_yes_no(match.entry.faq_answer) and match.direct == split.direct


def test_a_clarifying_question_offers_the_chosen_topics_only(sample_bot):
    hits = sample_bot.retrieve("warranty", [])
    faq = [h for h in hits if h.faq_answer]
    text, offered = sample_bot.clarify(hits, [faq[2]])
    assert offered == [faq[2]] and f"\u201c{faq[2].question}\u201d" in text
    assert faq[0].question not in text


def test_entry_texts_are_embedded_once_and_the_verdict_is_the_same(sample_bot):
    class Counting:
        def __init__(self, inner):
            self.inner, self.model_id, self.texts = inner, inner.model_id, 0

        def embed(self, texts):
            self.texts += len(texts)
            return self.inner.embed(texts)

    bundled = sample_bot.matcher
    # the embedder whose cosines the features read (the FAQ embedder when the matcher has one)
    counting = Counting(bundled.tuned or bundled.embedder)
    matcher = (FAQMatcher(bundled.meta, bundled.cross, bundled.embedder, counting) if bundled.tuned
               else FAQMatcher(bundled.meta, bundled.cross, counting))
    message = "when do you take the money from my card"
    hits = sample_bot.retrieve(message, [])
    first = matcher.match(message, hits)
    cold = counting.texts
    again = matcher.match(message, hits)
    assert cold > 10 and counting.texts - cold == 1, "only the visitor's message is embedded again"
    assert again.entry.question == first.entry.question == bundled.match(message, hits).entry.question
    assert again.probability == pytest.approx(first.probability, abs=1e-5)


def _intro_first(bot, message):
    """``message``'s hits with the first of them that is not an FAQ entry (a page's intro) put first."""
    hits = bot.retrieve(message, [])
    intro = [h for h in hits if not h.faq_answer]
    assert intro, "the sample FAQ's pages have intro text"
    return [intro[0]] + [h for h in hits if h is not intro[0]]


def test_below_a_pages_intro_the_matchers_verdict_stands_unless_the_text_answers(sample_bot):
    message = "i see two charges on my card for one order??"
    plan = sample_bot.plan(message, _intro_first(sample_bot, message))
    assert plan.direct and plan.sources[0].question == "I was charged twice. What happened?"
    # one the matcher is not sure of is left to the retrieval path, and where that path does not
    # answer the matcher's verdict stands: its clarifying question offers the entry, not the intro
    unsure = "when do you take the money from my card"
    plan = sample_bot.plan(unsure, _intro_first(sample_bot, unsure))
    assert plan.decision.action == CLARIFY
    assert plan.topics and plan.topics[0].question == "When is my card charged?"
    assert all(t.faq_answer for t in plan.topics)
    # and a question the FAQ does not answer is handed off below the intro as anywhere else
    off = "what's the weather in Paris tomorrow"
    plan = sample_bot.plan(off, _intro_first(sample_bot, off))
    assert plan.decision.action == HANDOFF and not plan.topics
