"""Entity matcher: full names, partial names, typos, recency, ambiguity, fallback."""
from __future__ import annotations

import pytest

from retrieval.entities import EntityMatcher, entity_of, normalise

NAMES = [
    "ALLENBELL",
    "A AND B GUEST HOUSE",
    "HOBSONS HOUSE",
    "ARBURY LODGE GUESTHOUSE",
    "THE CAMBRIDGE BELFRY",
    "PIZZA HUT CITY CENTRE",
    "PIZZA HUT FEN DITTON",
    "WORTH HOUSE",
    "CITY CENTRE NORTH B AND B",
]
# What the knowledge base says about each entity: "worth" is used about many of them.
TEXTS = {
    "ALLENBELL": ["The Allenbell has free parking.", "Rooms were worth the money."],
    "HOBSONS HOUSE": ["Hobsons House is worth it.", "Great price."],
    "A AND B GUEST HOUSE": ["Good value, worth every penny."],
    "THE CAMBRIDGE BELFRY": ["Worth the price for the view."],
    "WORTH HOUSE": ["Nice and quiet."],
}


@pytest.fixture(scope="module")
def matcher() -> EntityMatcher:
    return EntityMatcher(NAMES, TEXTS)


def test_normalise_canonical_spellings():
    assert normalise("Hobson's Guesthouse & B&B") == ["hobsons", "guest", "house", "and", "bed", "and", "breakfast"]
    assert normalise("City Centre") == ["city", "center"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Does the Allenbell have free wifi?", "ALLENBELL"),
        ("I'd like to stay at the a and b guest house.", "A AND B GUEST HOUSE"),
        ("Yes, the Hobsons House has 3 stars.", "HOBSONS HOUSE"),
        ("I need info on Hobson's.", "HOBSONS HOUSE"),  # core alias, no generic word
        ("The arbury lodge guest house is in the north.", "ARBURY LODGE GUESTHOUSE"),
        ("Tell me about the Belfry.", "THE CAMBRIDGE BELFRY"),
        ("Booked you at the allenbel for 3 nights.", "ALLENBELL"),  # one typo
        ("I want the City Centre North B&B.", "CITY CENTRE NORTH B AND B"),
    ],
)
def test_single_turn_mentions(matcher, text, expected):
    assert matcher.current([text]) == (expected,)


def test_most_recent_mention_wins_across_user_and_agent_turns(matcher):
    turns = [
        "Can you tell me about the Allenbell?",
        "Sure. Or you could try Hobsons House, it's cheaper.",  # agent names another hotel
        "Do they have a nice view?",
    ]
    assert matcher.current(turns) == ("HOBSONS HOUSE",)
    assert matcher.current(turns[:1] + ["Do they have a nice view?"]) == ("ALLENBELL",)


def test_common_words_are_not_aliases(matcher):
    # "worth" is said about many entities in the knowledge base: it does not name WORTH HOUSE.
    turns = ["I'm booked at the Allenbell.", "Is the breakfast worth the price?"]
    assert matcher.current(turns) == ("ALLENBELL",)
    assert matcher.current(["Is Worth House quiet?"]) == ("WORTH HOUSE",)
    # Known words are not taken for typos of names.
    assert matcher.current(["What is the price?"]) == ()


def test_ambiguous_part_resolves_to_earlier_full_name(matcher):
    turns = ["Pizza Hut Fen Ditton serves pizza.", "Great. Does pizza hut have outdoor seating?"]
    assert matcher.current(turns) == ("PIZZA HUT FEN DITTON",)
    group = matcher.current(["Is there a pizza hut nearby?"])
    assert set(group) == {"PIZZA HUT CITY CENTRE", "PIZZA HUT FEN DITTON"}


def test_full_name_beats_weak_partial_in_a_later_turn(matcher):
    turns = ["Your table at Pizza Hut City Centre is booked.", "Anything near Fen Ditton?"]
    # "fen ditton" is only a part of a name; the full name one turn earlier is stronger.
    assert matcher.current(turns) == ("PIZZA HUT CITY CENTRE",)


def test_nothing_matches_gives_empty_fallback(matcher):
    assert matcher.current(["I need a cheap hotel in the north with free wifi."]) == ()
    assert matcher.current([]) == ()
    assert EntityMatcher([]).current(["Allenbell"]) == ()


def test_entity_of_uses_metadata_then_short_titles():
    assert entity_of({"entity_name": "ALLENBELL"}, "anything") == ("ALLENBELL", True)
    assert entity_of({}, "Shipping") == ("Shipping", False)
    assert entity_of({}, "How do I delete my Facebook account?") == ("", False)
    assert entity_of(None, "A title that is far too long to be a name of anything") == ("", False)


def test_exact_only_names_have_no_aliases():
    m = EntityMatcher(["Strikethrough with GitHub Markdown", "HOBSONS HOUSE"],
                      exact_only=["Strikethrough with GitHub Markdown"])
    assert m.current(["How do I strikethrough text on GitHub?"]) == ()
    assert m.current(["strikethrough with github markdown, how?"]) == ("Strikethrough with GitHub Markdown",)
    assert m.current(["Is Hobsons quiet?"]) == ("HOBSONS HOUSE",)
