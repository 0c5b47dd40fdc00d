"""Quantities in text: numbers with their unit class, normalised so that "thirty days" meets
"30 days", "$5" meets "5 USD", "5%" meets "5 percent" and "2 weeks" meets "14 days".

A reply sentence's quantities must each be stated in the sources (``quantity_supported``); the
support checker's number features are built on that.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from bot.checking.lexicon import NUMBER_WORDS
from bot.checking.text import clean

# unit word -> (unit class, factor to the class's base: hours for time, 1 otherwise)
_UNITS = {
    "minute": ("time", 1 / 60), "min": ("time", 1 / 60), "hour": ("time", 1.0), "hr": ("time", 1.0),
    "day": ("time", 24.0), "night": ("time", 24.0), "week": ("time", 168.0),
    "month": ("time", 730.0), "year": ("time", 8760.0), "yr": ("time", 8760.0),
    "dollar": ("money", 1.0), "usd": ("money", 1.0), "buck": ("money", 1.0), "euro": ("money", 1.0),
    "eur": ("money", 1.0), "pound": ("money", 1.0), "gbp": ("money", 1.0), "cent": ("money", 0.01),
    "percent": ("pct", 1.0), "pct": ("pct", 1.0), "am": ("clock", 1.0), "pm": ("clock", 1.0),
    "gb": ("gb", 1.0), "tb": ("gb", 1000.0), "mb": ("gb", 0.001), "mbps": ("mbps", 1.0),
    "gbps": ("mbps", 1000.0), "kg": ("kg", 1.0), "lb": ("kg", 0.4536), "km": ("km", 1.0),
    "mile": ("km", 1.609), "point": ("point", 1.0), "wh": ("wh", 1.0), "person": ("person", 1.0),
    "people": ("person", 1.0), "guest": ("person", 1.0), "seat": ("seat", 1.0),
}
_SKIP_BEFORE_UNIT = frozenset("business working calendar full extra more additional consecutive "
                              "interest-free separate".split())
_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_QTY = re.compile(
    rf"(?P<cur>[$\u20ac\u00a3])\s?(?P<cv>{_NUM})|(?P<v>{_NUM})(?P<ord>st|nd|rd|th)?(?P<pct>\s?%)?"
    rf"|\b(?P<w>{'|'.join(sorted(NUMBER_WORDS, key=len, reverse=True))})\b",
    re.IGNORECASE,
)
# "$35 a day", "for a week", "within an hour": one of a time unit, so that "$35 a day" meets
# "$35 for one day" and "within a day" meets "within 24 hours". Only after an amount or a
# duration word: "skip a week" and "a day pass" state no quantity.
_ARTICLE_UNIT = re.compile(
    r"(?:[\d%]|\b(?:once|twice|within|in|for|after|than|about|under|over|up to))\s+(?:a|an|per)\s+"
    r"(minute|hour|day|night|week|month|year)\b(?!\s+(?:pass|passes|trip|care|ticket|off)\b)", re.I)
_ANY_ARTICLE_UNIT = re.compile(r"\b(?:a|an|per|each|every)\s+(minute|hour|day|night|week|month|year)\b", re.I)
_LITERAL = re.compile(r"\b\d+(?:[-/.]\d+){2,}\b|\b\d+/\d+\b|\b\d{1,2}:\d{2}\b")  # phones, dates, 24/7


@dataclass(frozen=True)
class Quantity:
    value: float
    unit: str | None  # unit class: time, money, pct, clock, gb, ...; None when bare
    base: float  # value in the class's base unit (hours for time)
    literal: str = ""  # phone numbers, dates, "24/7": compared as strings
    implicit: bool = False  # "a day", "per month": no numeral written


def _unit_after(text: str, pos: int) -> tuple[str, float, str] | None:
    """(unit class, factor to base, unit word) of the word right after a number, if a unit."""
    for t in re.findall(r"[a-z%]+", text[pos:pos + 40].lower())[:3]:
        if t in _SKIP_BEFORE_UNIT:
            continue
        key = t if t in _UNITS else t.rstrip("s")
        if key in _UNITS:
            return (*_UNITS[key], key)
        return None
    return None


_RANGE_NEXT = re.compile(r"\s*(?:-|\u2013|to|and|or)\s*[$\u20ac\u00a3\d]", re.IGNORECASE)


def quantities(text: str, generous: bool = False) -> list[Quantity]:
    """Every number of ``text`` with its unit class: "$5" / "5 USD" / "five dollars" are the same
    money 5, "2 weeks" is 336 hours like "14 days", "3-5 business days" gives 3 and 5 days,
    "7 pm" is clock 19. Phone numbers, dates and "24/7" are compared as digit strings.

    "a day" after an amount or a duration word ("$35 a day", "within a day") is an implicit 1
    day; with ``generous`` (for sources, which then state more than a reply is checked for) every
    "a/an/per/each/every <time unit>" is ("A night in a suite costs $48")."""
    text = clean(text)
    out: list[Quantity] = []
    literal_spans = []
    for m in _LITERAL.finditer(text):
        out.append(Quantity(0.0, "literal", 0.0, re.sub(r"\D", "", m.group())))
        literal_spans.append(m.span())
    pending: list[int] = []  # indexes of bare numbers waiting for a range's unit: "3-5 days"
    last_end = -10
    for m in _QTY.finditer(text):
        if any(a <= m.start() < b for a, b in literal_spans):
            continue
        unit = None
        if m.group("cur"):
            value, unit = float(m.group("cv").replace(",", "")), ("money", 1.0, "$")
        elif m.group("v"):
            value = float(m.group("v").replace(",", ""))
            unit = ("pct", 1.0, "%") if m.group("pct") else _unit_after(text, m.end())
        else:
            word = m.group("w").lower()
            unit = _unit_after(text, m.end())
            # "one of our stores", "one free tune-up": "one" is how any singular is said; it counts
            # only before a unit, like "a day" does (``_ARTICLE_UNIT``).
            if word in ("one", "single") and not unit:
                continue
            if word in ("double", "triple", "half") and not unit:
                continue
            value = float(NUMBER_WORDS[word])
            if word in ("hundred", "thousand") and out and not text[last_end:m.start()].strip():
                value *= out.pop().value  # "two hundred"
        last_end = m.end()
        base = value * unit[1] if unit else value
        if unit and unit[0] == "clock":
            base = value % 12 + (12 if unit[2] == "pm" else 0)
        out.append(Quantity(value, unit[0] if unit else None, base))
        ranged = _RANGE_NEXT.match(text, m.end())
        if unit and pending:
            for idx in pending:
                v = out[idx].value
                out[idx] = Quantity(v, unit[0], v * unit[1] if unit[0] != "clock" else out[idx].base)
            pending = []
        if not unit and ranged:
            pending.append(len(out) - 1)
        elif not ranged:
            pending = []
    for m in (_ANY_ARTICLE_UNIT if generous else _ARTICLE_UNIT).finditer(text):
        cls, factor = _UNITS[m.group(1).lower()]
        out.append(Quantity(1.0, cls, factor, implicit=True))
    return out


def quantity_supported(q: Quantity, pool: list[Quantity]) -> bool:
    """Whether ``q`` is stated in ``pool`` (same value, and same unit class when both have one)."""
    for s in pool:
        if q.unit == "literal" or s.unit == "literal":
            if q.unit == s.unit and q.literal == s.literal:
                return True
            continue
        if q.unit and s.unit:
            if q.unit == s.unit and abs(q.base - s.base) < 1e-6 * max(1.0, abs(q.base)):
                return True
        elif abs(q.value - s.value) < 1e-9:
            return True
    return False
