"""PII scrubber: hostile positives must become typed placeholders, look-alikes must survive."""
from __future__ import annotations

import pytest

from bot.core.errors import ConfigError
from training.pii import PIIScrubber, iban_ok, luhn_ok


@pytest.fixture(scope="module")
def scrubber():
    return PIIScrubber({"order_id": r"\bORD-\d{6}\b"}, phone_regions=("US", "GB"))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Write to JOHN.doe+vip@Example.co.uk, thanks", "Write to [EMAIL], thanks"),
        ("(mail: a_b-c@mail-server.example.org).", "(mail: [EMAIL])."),
        ("héllo.wörld@exämple.de", "[EMAIL]"),
        ("call +44 20 7946 0958 or (415) 555-0132!", "call [PHONE] or [PHONE]!"),
        ("ring +1.415.555.0132 now", "ring [PHONE] now"),
        ("my mobile is 07700 900123", "my mobile is [PHONE]"),
        ("card 4111-1111-1111-1111 exp 12/29", "card [CARD] exp 12/29"),
        ("amex 3782 822463 10005, mc 5555555555554444.", "amex [CARD], mc [CARD]."),
        ("IBAN DE89 3704 0044 0532 0130 00 please", "IBAN [IBAN] please"),
        ("iban gb82west12345698765432.", "iban [IBAN]."),
        ("from 192.168.0.1, then 10.0.0.255.", "from [IP], then [IP]."),
        ("v6 2001:db8::8a2e:370:7334 and ::1 and fe80::1%eth0", "v6 [IP] and [IP] and [IP]"),
        ("mapped ::ffff:192.0.2.128 here", "mapped [IP] here"),
        ("your order ORD-123456 shipped", "your order [ORDER_ID] shipped"),
        (
            "me@x.io 4111111111111111 DE89370400440532013000 8.8.8.8 ORD-000001",
            "[EMAIL] [CARD] [IBAN] [IP] [ORDER_ID]",
        ),
    ],
)
def test_hostile_pii_becomes_typed_placeholders(scrubber, text, expected):
    out, counts = scrubber.scrub(text)
    assert out == expected
    assert sum(counts.values()) == expected.count("[")


@pytest.mark.parametrize(
    "text",
    [
        "4111 1111 1111 1112 fails the Luhn check",
        "order 113542617735902 and 1234567812345678",  # Luhn-valid by chance / wrong network
        "DE89 3704 0044 0532 0130 01 has a bad check digit",
        "I have the TR8792 which you will arrive at 10:07.",
        "postcode cb238el, room 204, 3 nights for 4 people",
        "it cost $1,299.99 on 2024-05-12 at 10:30:15",
        "version 1.2.3 and 256.1.1.1 and 1.2.3.4.5",
        "cancel order 3707955617 please",
        "your booking reference is 0122335388",
        "a@b is not an address; neither is user@localhost",
        "ratio 12:30:45 and a:b:c",
        "[EMAIL] [PHONE] [CARD] [IBAN] [IP] [ORDER_ID]",
    ],
)
def test_look_alikes_are_kept(scrubber, text):
    out, counts = scrubber.scrub(text)
    assert out == text
    assert not counts


def test_counts_per_kind_and_idempotence(scrubber):
    text = "a@b.co c@d.co 4111111111111111 +44 20 7946 0958 ORD-999999"
    out, counts = scrubber.scrub(text)
    assert dict(counts) == {"EMAIL": 2, "CARD": 1, "PHONE": 1, "ORDER_ID": 1}
    again, counts2 = scrubber.scrub(out)
    assert again == out and not counts2


def test_overlap_goes_to_the_stronger_kind():
    # A Luhn-valid card number is also a "possible" phone number for libphonenumber.
    out, counts = PIIScrubber().scrub("pay with 4012888888881881")
    assert out == "pay with [CARD]" and dict(counts) == {"CARD": 1}


def test_check_digit_helpers():
    assert luhn_ok("79927398713") and not luhn_ok("79927398710")
    assert iban_ok("GB82 WEST 1234 5698 7654 32") and not iban_ok("GB82 WEST 1234 5698 7654 33")
    assert not iban_ok("XX82WEST12345698765432")  # unknown country
    assert not iban_ok("GB82WEST123456987654")  # wrong length for GB


@pytest.mark.parametrize(
    "patterns, regions, message",
    [
        ({"order id": r"\d+"}, ("US",), "order id"),
        ({"order_id": r"(\d+"}, ("US",), "invalid regular expression"),
        ({"any": r"\d*"}, ("US",), "empty string"),
        ({}, ("ZZ",), "'ZZ'"),
    ],
)
def test_bad_configuration_is_named(patterns, regions, message):
    with pytest.raises(ConfigError, match=message):
        PIIScrubber(patterns, phone_regions=regions)
