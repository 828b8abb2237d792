"""PII in customers' words: collected, and card numbers masked so none survives."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.pii import (
    collect_pii,
    extract_pii,
    find_card_numbers,
    is_card_number,
    luhn_valid,
    mask_card_numbers,
    mask_value,
)


@pytest.mark.parametrize(
    ("number", "valid"),
    [("4111111111111111", True), ("5500000000000004", True), ("378282246310005", True), ("4111111111111112", False)],
)
def test_the_luhn_check(number: str, valid: bool) -> None:
    assert luhn_valid(number) is valid


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("card 4111 1111 1111 1111 please", "card **** **** **** 1111 please"),
        ("4111-1111-1111-1111", "****-****-****-1111"),
        ("amex 378282246310005.", "amex ***********0005."),
        ("not a card 4000 1234 5678 9011", "not a card 4000 1234 5678 9011"),
        ("a valid card inside a longer run: 34567890123456", "a valid card inside a longer run: **********3456"),
        ("call +1 555 123 4567 about ORD-78945", "call +1 555 123 4567 about ORD-78945"),
    ],
)
def test_card_numbers_are_masked_but_their_last_four_digits(text: str, masked: str) -> None:
    assert mask_card_numbers(text) == masked


def test_email_phone_and_order_id_are_collected_and_the_card_never() -> None:
    text = "I'm john@example.com, call +1-555-123-4567 about ORD-78945; card 4111 1111 1111 1111"

    assert extract_pii(text) == {"email": "john@example.com", "phone": "+1-555-123-4567", "order_id": "ORD-78945"}


def test_a_date_or_a_short_number_is_not_a_phone() -> None:
    assert extract_pii("delivered 2025-10-15, order ORD-12345, code 12345") == {"order_id": "ORD-12345"}


def test_a_later_mention_replaces_an_earlier_one() -> None:
    assert collect_pii(["order ORD-1 for a@example.com", "sorry, ORD-2"]) == {
        "order_id": "ORD-2",
        "email": "a@example.com",
    }


def with_check_digit(body: str) -> str:
    for digit in "0123456789":
        if luhn_valid(body + digit):
            return body + digit
    raise AssertionError("unreachable")


cards = st.builds(
    lambda first, body: with_check_digit(first + body),
    st.sampled_from("3456"),
    st.text("0123456789", min_size=11, max_size=17),
)
separated = st.tuples(cards, st.sampled_from(["", " ", "-"]), st.sampled_from([4, 3])).map(
    lambda t: t[1].join(t[0][i : i + t[2]] for i in range(0, len(t[0]), t[2]))
)
noise = st.text(st.sampled_from("0123456789 -abcxyz.@+"), max_size=30)


def holds_a_card(text: str) -> bool:
    """Brute force, independent of the masker: any 13-19 digits joined by single separators that pass Luhn."""
    for run in re.finditer(r"\d(?:[ -]?\d)*", text):
        digits = re.sub(r"[ -]", "", run.group())
        for start in range(len(digits)):
            for end in range(start + 13, min(start + 19, len(digits)) + 1):
                if luhn_valid(digits[start:end]):
                    return True
    return False


@given(st.lists(st.one_of(separated, noise), min_size=1, max_size=5).map("".join))
def test_masked_text_never_holds_a_valid_card_number(text: str) -> None:
    masked = mask_card_numbers(text)

    assert not holds_a_card(masked)
    assert find_card_numbers(masked) == []
    assert mask_card_numbers(masked) == masked
    assert len(masked) == len(text)


@given(separated)
def test_a_card_number_alone_is_found_and_keeps_its_last_four(card: str) -> None:
    assert is_card_number(card)
    masked = mask_card_numbers(f"pay with {card} now")
    assert masked.endswith(f"{card[-4:]} now") and "*" in masked


def test_masked_values_keep_their_shape_and_never_their_content() -> None:
    assert mask_value("john@example.com") == "j***@example.com"
    assert mask_value("+1-555-123-4567") == "***4567"
    assert mask_value("ORD-78945") == "***8945"
    assert mask_value("C12") == "***"
