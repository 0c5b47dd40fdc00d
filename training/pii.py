"""PII scrubbing: personal data in transcripts becomes typed placeholders before any training set is written.

Detected kinds and their placeholders:
  EMAIL   ``[EMAIL]``   addresses (``name+tag@sub.example.co.uk``)
  IBAN    ``[IBAN]``    the country's registered length, ISO 7064 mod-97 check must pass
  CARD    ``[CARD]``    13-19 digits, optionally grouped by spaces/dashes, network prefix 2-6, Luhn check
  IP      ``[IP]``      IPv4 and IPv6 addresses that ``ipaddress`` accepts
  <NAME>  ``[<NAME>]``  each configurable extra pattern (``{"order_id": r"\\bORD-\\d{6}\\b"}``)
  PHONE   ``[PHONE]``   numbers Google's libphonenumber finds (``phonenumbers``) for the given regions,
                        except digits introduced as an order/booking/reference number (add an
                        extra pattern to scrub those)

Check digits keep ordinary numbers (prices, order numbers, dates, versions) out of CARD and IBAN.
When detections overlap, the earlier kind in the list above wins. Scrubbing is idempotent:
placeholders match no pattern.
"""
from __future__ import annotations

import ipaddress
import re
from collections import Counter
from typing import Iterable, Mapping, Sequence

import phonenumbers

from bot.core.errors import ConfigError

_EMAIL = re.compile(r"(?<![\w.+%-])[\w.+%-]+@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}(?![\w-])")
# Country code, check digits, then the BBAN: unbroken or in the printed groups of four.
_IBAN = re.compile(r"(?<![\w])[A-Za-z]{2}\d{2}(?:[A-Za-z0-9]{11,30}|(?: [A-Za-z0-9]{4}){2,7}(?: [A-Za-z0-9]{1,3})?)(?![\w])")
# IBAN length of each country in the ISO 13616 registry.
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28, "TL": 23,
    "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}
_CARD = re.compile(r"(?<![\d.,])\d(?:[ -]?\d){12,18}(?![\d]|[.,]\d)")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?:%[\w.]+)?(?![\w:]|\.\d)"
)
_DATE = re.compile(r"^(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4})$")
# "order 3707955617", "booking reference is 12345678": identifiers, not phone numbers.
_ID_CONTEXT = re.compile(
    r"(?:order|purchase|invoice|booking|reservation|reference|ref|ticket|tracking|transaction|"
    r"confirmation|account|customer|case|item|sku|parcel)(?:\s+(?:id|no|number|code|#))?"
    r"(?:\s+(?:is|was|with\s+the\s+number))?[\s:#.]*$",
    re.I,
)
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def luhn_ok(digits: str) -> bool:
    """The Luhn check of a string of digits (payment card numbers)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    """ISO 13616 IBAN check: move the first four characters to the end, letters to numbers, mod 97 == 1."""
    s = iban.replace(" ", "").upper()
    if IBAN_LENGTHS.get(s[:2]) != len(s) or not (s[2:4].isdigit() and s.isalnum()):
        return False
    rearranged = s[4:] + s[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _iban_spans(text: str) -> Iterable[tuple[int, int]]:
    for m in _IBAN.finditer(text):
        if iban_ok(m.group(0)):
            yield m.span()


def _card_spans(text: str) -> Iterable[tuple[int, int]]:
    for m in _CARD.finditer(text):
        digits = re.sub(r"[ -]", "", m.group(0))
        # Issuer prefixes of the card networks start with 2-6 (Mastercard 2/5, Amex 3, Visa 4,
        # Discover/UnionPay 6); this keeps Luhn-valid order and account numbers out.
        if 13 <= len(digits) <= 19 and digits[0] in "23456" and luhn_ok(digits):
            yield m.span()


def _ip_spans(text: str) -> Iterable[tuple[int, int]]:
    for rx in (_IPV6, _IPV4):  # v6 first: "::ffff:192.0.2.1" is one address
        for m in rx.finditer(text):
            try:
                ipaddress.ip_address(m.group(0))
            except ValueError:
                continue
            yield m.span()


class PIIScrubber:
    """Replace personal data with typed placeholders; one verb: ``scrub``.

    ``extra_patterns`` maps a kind name to a regular expression (``{"order_id": r"#\\d{6,}"}``);
    ``phone_regions`` are the ISO country codes whose national formats count as phone numbers
    (numbers written with a ``+`` country prefix are found whatever the regions).
    """

    def __init__(
        self,
        extra_patterns: Mapping[str, str] | None = None,
        phone_regions: Sequence[str] = ("US",),
    ):
        self.extra: list[tuple[str, re.Pattern[str]]] = []
        for name, pattern in (extra_patterns or {}).items():
            if not _NAME.match(name):
                raise ConfigError(f"PII pattern name {name!r}: use letters, digits and _ only")
            try:
                rx = re.compile(pattern)
            except re.error as e:
                raise ConfigError(f"PII pattern {name!r}: invalid regular expression: {e}") from e
            if rx.search("") is not None:
                raise ConfigError(f"PII pattern {name!r} matches the empty string")
            self.extra.append((name.upper(), rx))
        for region in phone_regions:
            if region.upper() not in phonenumbers.SUPPORTED_REGIONS:
                raise ConfigError(f"phone region {region!r} is not an ISO country code libphonenumber knows")
        self.phone_regions = [r.upper() for r in phone_regions]

    def _spans(self, text: str) -> Iterable[tuple[str, int, int]]:
        # Yielded in priority order: earlier kinds win overlaps.
        for m in _EMAIL.finditer(text):
            yield "EMAIL", *m.span()
        for s, e in _iban_spans(text):
            yield "IBAN", s, e
        for s, e in _card_spans(text):
            yield "CARD", s, e
        for s, e in _ip_spans(text):
            yield "IP", s, e
        for name, rx in self.extra:
            for m in rx.finditer(text):
                if m.end() > m.start():
                    yield name, *m.span()
        for region in self.phone_regions:
            for m in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.POSSIBLE):
                # POSSIBLE leniency accepts short codes ("12/29" in GB): no phone has under 7 digits.
                if sum(ch.isdigit() for ch in m.raw_string) < 7 or _DATE.match(m.raw_string):
                    continue
                # A piece of a longer digit run ("4111 1111 [1111 1112]") is not a phone number.
                if not m.raw_string.startswith("+") and (
                    re.search(r"\d[ -]?$", text[:m.start]) or re.match(r"[ -]?\d", text[m.end:])
                ):
                    continue
                if m.raw_string.startswith("+") or not _ID_CONTEXT.search(text[max(0, m.start - 40):m.start]):
                    yield "PHONE", m.start, m.end

    def scrub(self, text: str) -> tuple[str, Counter]:
        """Return ``(scrubbed text, Counter of kind -> replacements)``."""
        taken: list[tuple[int, int, str]] = []
        for kind, s, e in self._spans(text):
            if all(e <= ts or s >= te for ts, te, _ in taken):
                taken.append((s, e, kind))
        if not taken:
            return text, Counter()
        taken.sort()
        out, pos = [], 0
        for s, e, kind in taken:
            out.append(text[pos:s])
            out.append(f"[{kind}]")
            pos = e
        out.append(text[pos:])
        return "".join(out), Counter(kind for _, _, kind in taken)
