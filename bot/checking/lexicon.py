"""Word lists and idioms read by the support checker (``bot.checking.text``): data, no logic.

English only, tuned on support FAQs (bench/checker_set/). Changing a list changes the features:
refit with bench/train_checker.py.
"""
from __future__ import annotations

import re

# Function words that carry no checkable content. Negations and restriction words are left out on
# purpose: they are read by ``polarity``/``restricted``, not counted as content.
STOPWORDS = frozenset(
    """a an the and or of to in on at by for from with into onto as is are was were be been being
    am do does did doing have has had having i me my mine we us our ours you your yours he him his
    she her hers it its they them their theirs this that these those there here what which who whom
    whose when where why how all any both each few other some such own same so than too very just
    also can could will would shall should may might must about above below up down out off over
    under again further then once s t d ll m re ve y get gets got let lets please via per yes yeah
    ok okay sure absolutely course indeed well still even really actually simply just any anything
    one ones thing things way like within after before until while because since though although
    more most less much many lot lots""".split()
)
# Negations, and words that negate by meaning ("prohibited", "closed").
NEGATIONS = frozenset(
    "not no never cannot none nobody neither nor without unable cant wont dont doesnt isnt arent wasnt "
    "werent didnt couldnt shouldnt wouldnt hasnt havent prohibited prohibit forbidden banned "
    "closed unavailable impossible".split()
)
# Idioms with a negation word that mean "free", read as "free" before polarity is judged.
FREE_IDIOMS = re.compile(
    r"\b(?:at\s+)?no\s+(?:extra\s+|additional\s+|hidden\s+|cancellation\s+|)(?:charge|cost|fee)s?\b"
    r"|\bwithout\s+(?:a\s+|any\s+)?(?:fee|charge|cost)s?\b|\bcosts?\s+nothing\b|\bfree\s+of\s+charge\b",
    re.IGNORECASE)
# Comparisons with "no" are bounds, not negations: "no longer than 6 feet" is "at most 6 feet".
BOUND_IDIOMS = [
    (re.compile(r"\bno\s+(?:more|longer|later|bigger|larger|heavier|higher)\s+than\b", re.I), "at most"),
    (re.compile(r"\bno\s+(?:less|fewer|earlier|shorter|smaller|lower)\s+than\b", re.I), "at least"),
]
# Negative adjectives read as "not X": "unused items" states what "items not used" does.
NEGATIVE_PREFIXED = re.compile(
    r"\b(?:un|non-?)(used|ridden|opened|worn|washed|claimed|paid|available|limited|signed|sold|"
    r"refundable|returnable|transferable)\b", re.I)
RESTRICTIONS = frozenset("only unless except excluding exclude excludes if provided must require "
                         "required requires need needs but however".split())
MULTI_RESTRICTIONS = ("as long as", "apart from", "other than", "on condition", "subject to")
YES_OPENERS = re.compile(r"^\W*(yes|yeah|yep|sure|of course|absolutely|certainly|definitely)\b",
                         re.IGNORECASE)
NO_OPENERS = re.compile(r"^\W*(no|nope|unfortunately|sorry|i'm afraid|i am afraid)\b", re.IGNORECASE)

# Words of harmless conversational filler ("I hope this helps", "Let me know if ...").
FILLER_WORDS = frozenset(
    """hope help helps helped helpful glad happy assist assistance question questions anything else
    know let feel free reach reaching out thanks thank contact welcome great day nice good luck
    enjoy further anytime time ask asking need needs more information info other here there
    wonderful pleasure again trip adventure adventures hesitate understand understandable
    frustrating frustration sorry apologize apologise inconvenience trouble patience appreciate
    wait waiting if have""".split()
)
FILLER_PATTERNS = re.compile(
    r"^\W*(i hope (this|that) helps|let me know|feel free|thanks? (you )?for|happy to help|glad (i|to)|"
    r"is there anything else|anything else|have a (great|nice|good)|you'?re welcome|no problem|"
    r"i understand|i'?m sorry|sorry (about|for)|great question|good question|i can help|"
    r"i'?d be happy|hope you|enjoy)\b",
    re.IGNORECASE,
)

# Word pairs where the sentence saying one and its matched evidence the other is a contradiction
# ("free" vs "fee"). Whole words here; ``ANTONYMS`` maps their stems.
ANTONYM_GROUPS = [
    ({"free", "complimentary"}, {"fee", "cost", "charge", "pay", "paid", "deduct", "price", "extra"}),
    ({"before", "earlier", "prior"}, {"after", "later"}),
    ({"more", "longer", "over", "above", "exceed"}, {"less", "fewer", "shorter", "under", "below"}),
    ({"minimum", "least"}, {"maximum", "most"}),
    ({"always", "every", "all"}, {"never", "sometimes", "some"}),
    ({"include", "including"}, {"exclude", "excluding"}),
    ({"accept", "allow", "permit", "welcome"}, {"decline", "refuse", "reject", "prohibited", "banned"}),
    ({"required", "mandatory"}, {"optional"}),
    ({"full", "entire"}, {"partial"}),
    ({"weekday", "weekdays"}, {"weekend", "weekends"}),
    ({"monthly"}, {"annual", "annually", "yearly"}),
    ({"online"}, {"in-person", "in-store"}),
    ({"automatically", "automatic"}, {"manually", "manual"}),
    ({"refund", "refunded"}, {"credit", "credited"}),
    ({"only"}, {"every", "all", "any"}),
]

NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
    "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20,
    "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
    "hundred": 100, "thousand": 1000, "twice": 2, "dozen": 12, "half": 0.5, "single": 1,
    "double": 2, "triple": 3,
}
