"""Text analysis for support checking: content tokens, clauses, polarity cues, filler.

Everything here is deterministic and model-free (word lists in ``bot.checking.lexicon``, numbers in
``bot.checking.quantities``); ``bot.checking.features`` combines it with embedding similarities.
"""
from __future__ import annotations

import re

from bot.checking.lexicon import (ANTONYM_GROUPS, BOUND_IDIOMS, FILLER_PATTERNS, FILLER_WORDS,
                                  FREE_IDIOMS, MULTI_RESTRICTIONS, NEGATIONS, NEGATIVE_PREFIXED,
                                  NO_OPENERS, NUMBER_WORDS, RESTRICTIONS, STOPWORDS, YES_OPENERS)

_CITATION = re.compile(r"\s?\[\d{1,3}(?:\s*[,\u2013-]\s*\d{1,3})*\]")
_MARKUP = re.compile(r"[*_`#>]+")
_CONTRACTIONS = [
    (re.compile(r"\bcan'?t\b|\bcannot\b", re.I), "can not"),
    (re.compile(r"\bwon'?t\b", re.I), "will not"),
    (re.compile(r"\bshan'?t\b", re.I), "shall not"),
    (re.compile(r"n['\u2019]t\b", re.I), " not"),
]
_TOKEN = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")


def clean(text: str) -> str:
    """Text without citation markers and markdown emphasis, whitespace collapsed."""
    text = _CITATION.sub("", text)
    text = _MARKUP.sub("", text)
    return re.sub(r"\s+", " ", text).strip()


def words(text: str) -> list[str]:
    """Lower-case word tokens, contractions expanded ("can't" -> "can", "not"), "no extra
    charge" / "costs nothing" read as "free"."""
    text = FREE_IDIOMS.sub("free", text.replace("\u2019", "'"))
    for pattern, repl in BOUND_IDIOMS:
        text = pattern.sub(repl, text)
    text = NEGATIVE_PREFIXED.sub(r"not \1", text)
    for pattern, repl in _CONTRACTIONS:
        text = pattern.sub(repl, text)
    return [w.replace("'", "") for w in _TOKEN.findall(text.lower())]


def stem(word: str) -> str:
    """A light suffix stripper: enough that "returns"/"returned"/"returning" meet, and
    "shipping"/"shipped"/"ship" too. Not a linguistic stemmer; both sides go through it."""
    w = word
    if len(w) > 4 and w.endswith("ies"):
        w = w[:-3] + "y"
    elif len(w) > 4 and w.endswith("sses"):
        w = w[:-2]
    elif len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    for suffix in ("ing", "ed"):
        if len(w) > len(suffix) + 2 and w.endswith(suffix):
            w = w[: -len(suffix)]
            if len(w) > 2 and w[-1] == w[-2] and w[-1] not in "lsz":
                w = w[:-1]  # shipp -> ship
            break
    if len(w) > 4 and w.endswith("y") and w[-2] not in "aeiou":
        w = w[:-1]
    if len(w) > 4 and w.endswith("e"):
        w = w[:-1]
    return w


ANTONYMS: dict[str, frozenset[str]] = {}
for _a, _b in ANTONYM_GROUPS:
    _sa, _sb = frozenset(map(stem, _a)), frozenset(map(stem, _b))
    for _w in _sa:
        ANTONYMS[_w] = ANTONYMS.get(_w, frozenset()) | _sb
    for _w in _sb:
        ANTONYMS[_w] = ANTONYMS.get(_w, frozenset()) | _sa


def content_tokens(text: str) -> list[str]:
    """Stemmed content words of ``text`` (stopwords, negations, restrictions and numbers out)."""
    out = []
    for w in (p for word in words(clean(text)) for p in word.split("-")):  # "e-bikes" -> "bikes"
        if w in STOPWORDS or w in NEGATIONS or w in RESTRICTIONS or w.isdigit() or w in NUMBER_WORDS:
            continue
        if len(w) < 2:
            continue
        out.append(stem(w))
    return out


# Clause breaks: punctuation that separates statements, conjunctions that start one, and a
# comma or "and"/"or" only when a new subject or verb follows ("..., we refund", "and cannot be
# returned"); a comma inside a list ("Alaska, Hawaii or PO boxes") keeps the negation in scope.
_VERB = ("can|cannot|can't|is|are|isn't|aren't|will|won't|must|may|do|does|don't|doesn't|have|"
         "has|get|gets|need|needs")
_SUBJECT_OR_VERB = ("we|you|it|they|there|this|that|our|your|he|she|i|can|cannot|can't|will|won't|"
                    "must|may|is|are|isn't|aren't|was|do|does|don't|doesn't|not|never|have|has|"
                    "get|gets|takes|costs?|includes?")
_CLAUSE_BREAK = re.compile(
    r"[;\u2014]|:(?=\s)|\s[-\u2013]\s"
    r"|\b(?:but|however|although|though|whereas|while|so|because|since|which|then|otherwise)\b"
    rf"|,\s+(?=(?:and|or|unless|except|if|only|provided|as long as|when|once|{_SUBJECT_OR_VERB})\b)"
    rf"|,\s+(?=(?:\w+\s+){{1,3}}(?:{_VERB})\b)"
    rf"|\b(?:and|or)\s+(?=(?:only|{_SUBJECT_OR_VERB})\b)"
    r"|,\s+(?:and|or)\b",
    re.IGNORECASE)
_LEADING_CONDITION = re.compile(r"^(?:if|unless|once|when|after|before|until|during|for)\b[^,]*,", re.I)
_PARENTHESES = re.compile(r"\([^)]*\)")
_CONDITION_OPENER = re.compile(
    r"^\W*(?:only|unless|if|except|provided|as long as|excluding|apart from|other than)\b", re.I)


def clauses(text: str) -> list[str]:
    """``text`` cut at commas, semicolons and conjunctions: the units whose polarity is compared
    ("X is final sale and cannot be returned, unless damaged" has three)."""
    text = _PARENTHESES.sub(lambda m: " " + m.group()[1:-1].strip(), clean(text))  # no break
    out = []
    for part in _CLAUSE_BREAK.split(text):
        part = part.strip(" ,") if part else ""
        lead = _LEADING_CONDITION.match(part)
        if lead:  # "If you don't take a contract, installation is $150" is two clauses
            out += [lead.group().strip(" ,"), part[lead.end():].strip(" ,")]
        else:
            out.append(part)
    return [c for c in out if c]


def opens_condition(text: str) -> bool:
    """Whether a clause is a condition on its neighbour ("unless it arrived damaged")."""
    return bool(_CONDITION_OPENER.match(text))


def capitalised(text: str) -> set[str]:
    """Stemmed lower-cased capitalised words that do not open a sentence: names, brands, places.
    Tokenised like ``words`` ("Wi-Fi" is one word)."""
    text = clean(text)
    out = set()
    for m in re.finditer(r"[A-Za-z0-9]+(?:[-'][A-Za-z0-9]+)*", text):
        tok = m.group()
        before = text[:m.start()].rstrip()
        if tok[0].isupper() and before and before[-1] not in ".!?:":
            out.add(stem(tok.lower().replace("'", "")))
    return out - STOPWORDS


_ANSWER_WORD = re.compile(r"^\W*(?:yes|no)\b\s*[,.!:;\u2014-]+\s*", re.IGNORECASE)


def polarity_negative(text: str) -> bool:
    """Whether ``text`` is negated: an odd number of negations, so that "not unused" (two) is
    affirmative. A leading "No," / "Yes," answers the question and is not counted; "neither"/"nor"
    go with another negation; "without" negates only a clause with no other negation ("we do not
    give medication without it" is negative once)."""
    ws = words(clean(_ANSWER_WORD.sub("", clean(text))))
    core = sum(w in NEGATIONS and w not in ("nor", "neither", "without") for w in ws)
    if core == 0:
        return "without" in ws
    return core % 2 == 1


UNIVERSAL = re.compile(r"\b(any|every|all|always|whenever|wherever|whatever|regardless|no matter|even|"
                       r"anyone|anything|everyone|everything|anywhere|unlimited|including)\b", re.I)


def universal(text: str) -> bool:
    """Whether ``text`` claims something without exception ("any plan", "whenever you cancel")."""
    return bool(UNIVERSAL.search(clean(text)))


def restricted(text: str) -> bool:
    """Whether ``text`` states a condition or restriction (only, unless, except, if, must, ...)."""
    low = " " + " ".join(words(clean(text))) + " "
    return any(f" {w} " in low for w in RESTRICTIONS) or any(f" {p} " in low for p in MULTI_RESTRICTIONS)


def opens_yes(text: str) -> bool:
    return bool(YES_OPENERS.match(clean(text)))


def opens_no(text: str) -> bool:
    return bool(NO_OPENERS.match(clean(text)))


def bare_answer(text: str) -> bool:
    """A yes or no with nothing of its own to check ("Yes, we do.", "No, you can't."): what it
    asserts is the question it answers, so it is checked together with that question."""
    return (opens_yes(text) or opens_no(text)) and not content_tokens(text)


_YES_NO_OPENER = re.compile(r"^(\s*)(?:\*\*)?(?:yes|no|yeah|yep|nope)\b(?:\*\*)?[\s,.!:;\u2013\u2014-]*", re.IGNORECASE)


def without_yes_no(text: str) -> str:
    """``text`` without a leading yes or no when it says something of its own ("Yes, the owner can
    hand the account to an Admin." -> "The owner can hand the account to an Admin."): the checker
    verifies what a sentence says against the sources, but a yes or no is a verdict on the
    visitor's case that no passage states, and a generated reply's yes was seen answering another
    question than the visitor's (a non-Admin as owner: "Yes, ... to an existing Admin"). A bare
    yes or no (``bare_answer``) is left as it is: it is checked with the question instead."""
    m = _YES_NO_OPENER.match(text)
    if not m or bare_answer(text):
        return text
    rest = text[m.end():]
    if not content_tokens(rest):
        return text
    return m.group(1) + rest[:1].upper() + rest[1:]


def is_filler(text: str) -> bool:
    """Conversational filler with nothing to check: a known opener and no quantity, or only
    filler words. ("I hope this helps!", "Let me know if you have other questions.")"""
    body = clean(text)
    if not body or re.search(r"\d", body) or any(w in NUMBER_WORDS for w in words(body)):
        return False
    toks = [w for w in words(body) if w not in STOPWORDS]
    if all(w in FILLER_WORDS for w in toks):
        return True
    return bool(FILLER_PATTERNS.match(body)) and sum(w not in FILLER_WORDS for w in toks) <= 1
