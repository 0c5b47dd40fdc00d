"""Grounded replies: a generated sentence is shown only when the sources support it; degenerate
output never reaches the stream; with nothing supported, the sources' own words are the reply."""
from __future__ import annotations

from pathlib import Path

import pytest

from bot.checker import OverlapChecker
from bot.generators.base import GenerationStream
from bot.grounding import GroundedReply, fallback_text, source_text
from retrieval.types import Hit

REPO = Path(__file__).resolve().parent.parent
INTRO = "Here is what our help center says:"
RETURNS = Hit(
    1, "returns.md#used", "Returns", "Can I return used gear?\nUsed items can only be returned under "
    "the warranty if they are defective. Unused items can be returned within 30 days.",
    2.0, 0.9, metadata={"question": "Can I return used gear?",
                        "answer": "Used items can only be returned under the warranty if they are "
                                  "defective. Unused items can be returned within 30 days.",
                        "kind": "faq"})
PAGE = Hit(2, "shipping.md", "Shipping", "We ship with UPS. Orders leave our warehouse within two "
           "business days. Shipping is free over $50. We do not ship to PO boxes.", 1.0, 0.5)


class Pieces:
    """A model's stream of pieces that records whether it was stopped."""

    def __init__(self, pieces):
        self.pieces = list(pieces)
        self.closed = False
        self.read = 0

    def __iter__(self):
        for p in self.pieces:
            self.read += 1
            yield p

    def close(self):
        self.closed = True


def run(pieces, sources, checker, question="Can I return used gear?", embed=None):
    src = Pieces(pieces)
    reply = GroundedReply(iter(src), sources, question, checker, INTRO, embed=embed, close=src.close)
    return "".join(reply), reply, src


def test_supported_sentences_stream_as_they_complete(checker):
    text, reply, src = run(["Unused items can be ", "returned within 30 days [1]. ",
                            "Used items only under the warranty ", "if they are defective [1]."],
                           [RETURNS], checker)
    assert text == "Unused items can be returned within 30 days [1]. Used items only under the warranty if they are defective [1]."
    assert reply.rejected is None and reply.shown == 2 and not reply.fell_back


def test_a_contradicting_reply_falls_back_to_the_sources_words(checker):
    text, reply, src = run(["Yes, you can return ", "used gear [1]. ", "We can repair it, ", "replace it ",
                            "or refund it."], [RETURNS], checker)
    # its yes is dropped (without_yes_no) and what it says is still contradicted
    assert reply.rejected is not None and reply.rejected[0].startswith("You can return used gear")
    assert reply.fell_back and src.closed, "generation is stopped at the unsupported sentence"
    # a sentence ends once the next one's first character is seen: the model is stopped there
    assert src.read == 3, "nothing more is read from the model after the rejected sentence"
    assert text == f"{INTRO}\n\n{RETURNS.metadata['answer']} [1]"
    assert "Yes" not in text


def test_a_changed_number_after_a_supported_sentence_ends_the_reply_there(checker):
    text, reply, _ = run(["Unused items can be returned within 30 days [1]. ",
                          "Refunds reach your card within 2 hours."], [RETURNS], checker)
    assert text == "Unused items can be returned within 30 days [1]. "
    assert reply.rejected[0] == "Refunds reach your card within 2 hours." and not reply.fell_back


SHOP = Hit(3, "about.md", "About", "PedalPoint rents city bikes, e-bikes and kids' bikes from our shop "
           "at 14 Harbour Lane. We are open every day from 9 am to 7 pm.", 1.0, 0.6)


def test_a_bare_yes_is_checked_as_the_question_it_answers(checker):
    """"Yes, we do." has no words of its own: alone it passes any source; read with the question it
    answers, a yes to something the sources do not name is not shown."""
    assert checker.supports([SHOP.text], "Yes, we do.") >= checker.threshold  # why the question is needed
    text, reply, _ = run(["Yes, we do."], [SHOP], checker, question="do you rent tandem bikes?")
    assert reply.rejected == ("Yes, we do.", reply.rejected[1]) and reply.rejected[1].startswith("unsupported")
    assert reply.fell_back and "Yes" not in text and "city bikes, e-bikes and kids' bikes" in text
    text, reply, _ = run(["Yes, we do. ", "We rent city bikes, e-bikes and kids' bikes [1]."], [SHOP], checker,
                         question="what bikes can I rent, city bikes and e-bikes?")
    assert reply.rejected is None and text.startswith("Yes, we do.")


def test_a_yes_or_no_before_a_sentence_of_its_own_is_not_shown(checker):
    """The checker verifies what a sentence says, not a yes or no about the visitor's case: a
    generated "Yes, ..." whose words the sources support is shown without its yes."""
    owner = Hit(4, "permissions.md", "Permissions", "The account owner can transfer ownership to an existing "
                "Admin through Settings > Team > Transfer Ownership.", 1.0, 0.5)
    text, reply, _ = run(["Yes, the account owner can transfer ownership to an existing Admin ",
                          "through Settings > Team > Transfer Ownership [1]."], [owner], checker,
                         question="can i make our payroll manager the owner, she isnt an admin")
    assert reply.rejected is None and not reply.fell_back
    assert text == "The account owner can transfer ownership to an existing Admin through Settings > Team > Transfer Ownership [1]."
    assert "yes" not in text.lower()


@pytest.mark.parametrize("text, shown", [
    ("No, Early Bird tickets are non-refundable.", "Early Bird tickets are non-refundable."),
    ("**Yes**, on any plan.", "On any plan."),
    (" Yes. The fee is $5.", " The fee is $5."),
    ("Yes, we do.", "Yes, we do."),  # bare: checked with the question instead
    ("Yesterday's orders left today.", "Yesterday's orders left today."),
    ("Nothing is charged.", "Nothing is charged."),
])
def test_without_yes_no(text, shown):
    from bot.checking.text import without_yes_no

    assert without_yes_no(text) == shown


@pytest.mark.parametrize("pieces", [
    ["1. 1. 1. 2. 3. 4. 5. 6. 7. 8."],
    ["[1] Returns: Can I return used gear?\n"],
    ["Can I return used gear?"],
])
def test_degenerate_output_never_reaches_the_stream(pieces):
    text, reply, _ = run(pieces, [RETURNS], OverlapChecker(threshold=0.0))
    assert reply.rejected is not None and reply.fell_back
    assert text.startswith(INTRO) and pieces[0].strip() not in text.replace(RETURNS.metadata["answer"], "")


def test_fallback_of_a_help_page_picks_the_sentences_closest_to_the_question(minilm):
    text = fallback_text(PAGE, "do you deliver to a PO box?", minilm.embed, INTRO)
    assert text.startswith(INTRO) and text.endswith(" [1]")
    assert "We do not ship to PO boxes." in text and text.count(".") <= 4
    assert source_text(RETURNS).startswith("Can I return used gear?\nUsed items")


def test_the_dialogue_stores_what_was_shown(settings, minilm):
    """End to end: a scripted model states a policy the FAQ contradicts; the visitor sees and the
    store keeps the FAQ's own words, with the source cited."""
    from bot.components import Components
    from bot.core.events import text as joined_text

    class Inventing:
        model_id, tokenizer, last_usage = "inventing", None, None

        def load(self):
            return self

        def count_tokens(self, text):
            return len(text.split())

        def stream(self, messages, **params):
            def pieces(handle):
                for p in ("Yes, you can return ", "used gear at any time [1]. ", "We refund everything."):
                    handle.usage["completion_tokens"] += 1
                    yield p
            return GenerationStream(pieces, self.model_id)

    settings.dialogue = settings.dialogue.model_copy(update={
        "checker": "default", "answer_threshold": 0.0, "clarify_threshold": 0.0,
        "direct_answer_threshold": 2.0, "selector": ""})
    comps = Components(settings, parts={"embedder": minilm, "generator": Inventing()})
    comps.knowledge.ingest("default", [REPO / "samples" / "faq"], progress=False)
    cid = comps.conversations.create(comps.db.bot_id("default"), "visitor")
    events = list(comps.dialogue().respond(cid, "Can I return used gear?"))
    reply = joined_text(events)
    assert reply.startswith(INTRO) and "at any time" not in reply and reply.endswith("[1]")
    stored = comps.conversations.history(cid)[1]
    assert stored["text"] == reply and stored["complete"] is True
    assert [e.type for e in events][-2:] == ["sources", "done"]


def _review(chunk_id, entity, entity_id, sentence):
    return Hit(chunk_id, f"hotel:{entity_id}:review:{chunk_id}", entity, f"{entity}\n{sentence}", 1.0, 0.6,
               metadata={"entity_name": entity, "entity_id": entity_id, "doc_type": "review"})


def test_an_unsupported_reply_over_reviews_quotes_the_guests_not_the_help_center():
    """A review is one guest's opinion: the fallback quotes the selected reviews of the top
    entity (without their header line), each cited by its place, never as the help center's word."""
    sources = [_review(1, "AVALON", "7", "The room was spotless."),
               _review(2, "ACORN GUEST HOUSE", "3", "Our room smelled of smoke."),
               _review(3, "AVALON", "7", "Housekeeping came every morning.")]
    src = Pieces(["The rooms are cleaned every two weeks."])
    reply = GroundedReply(iter(src), sources, "is the avalon clean?", OverlapChecker(threshold=0.9), INTRO,
                          close=src.close, review_intro="Here is what guests wrote about {entity}:")
    text = "".join(reply)
    assert reply.fell_back and INTRO not in text
    assert text == ("Here is what guests wrote about Avalon:\n\n\u201cThe room was spotless.\u201d [1] "
                    "\u201cHousekeeping came every morning.\u201d [3]")
