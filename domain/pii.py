"""Personal data in a customer's words: what to collect, and the card numbers no one may keep.

Pure functions over text, no I/O. A card number is 13 to 19 digits, optionally grouped by single
spaces or dashes, that passes the Luhn check. ``mask_card_numbers`` keeps the last four digits and
stars the rest, and repeats until no card number is left, so its output never holds one.
``extract_pii`` collects email, phone and order id, and never a card number: it reads the masked text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

CARD_MIN, CARD_MAX = 13, 19
KEEP = 4
MASK = "*"

EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
ORDER_ID = re.compile(r"\bORD-\d+\b", re.IGNORECASE)
# A phone number: an optional +, then digits grouped by spaces, dashes, dots or parentheses; 10-15 digits.
PHONE = re.compile(r"(?<![\w*])(?:\+|\()?\d[\d\s().-]{7,22}\d(?![\w*])")
PHONE_DIGITS = (10, 15)
# Digits joined by at most one space or dash between them: where a card number may hide.
_DIGIT_RUN = re.compile(r"\d(?:[ -]?\d)*")
# A run long enough to hold a card number (the others cannot; most messages have only those).
_LONG_DIGIT_RUN = re.compile(rf"\d(?:[ -]?\d){{{CARD_MIN - 1},}}")


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of a string of digits (no separators)."""
    if not digits.isdigit():
        return False
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def is_card_number(text: str) -> bool:
    """``text`` (spaces and dashes allowed) is 13-19 digits passing the Luhn check."""
    digits = re.sub(r"[ -]", "", text)
    return CARD_MIN <= len(digits) <= CARD_MAX and luhn_valid(digits)


def _card_windows(digits: str) -> Iterable[tuple[int, int]]:
    """Non-overlapping (start, end) digit windows that are card numbers: left to right, longest first."""
    start = 0
    while start <= len(digits) - CARD_MIN:
        for length in range(min(CARD_MAX, len(digits) - start), CARD_MIN - 1, -1):
            if luhn_valid(digits[start : start + length]):
                yield start, start + length
                start += length
                break
        else:
            start += 1


def find_card_numbers(text: str) -> list[str]:
    """Every card number in ``text``, digits only."""
    found: list[str] = []
    for run in _DIGIT_RUN.finditer(text):
        digits = re.sub(r"[ -]", "", run.group())
        found += [digits[start:end] for start, end in _card_windows(digits)]
    return found


def _mask_once(text: str) -> str:
    def mask_run(run: re.Match[str]) -> str:
        chars = list(run.group())
        positions = [index for index, char in enumerate(chars) if char.isdigit()]  # digit index -> char index
        digits = "".join(chars[index] for index in positions)
        for start, end in _card_windows(digits):
            for digit in range(start, end - KEEP):
                chars[positions[digit]] = MASK
        return "".join(chars)

    return _LONG_DIGIT_RUN.sub(mask_run, text)


def mask_card_numbers(text: str) -> str:
    """``text`` with each card number's digits starred but the last four, separators kept."""
    while True:
        masked = _mask_once(text)
        if masked == text:
            return masked
        text = masked


def find_emails(text: str) -> list[str]:
    return EMAIL.findall(text)


def find_order_ids(text: str) -> list[str]:
    return [match.upper() for match in ORDER_ID.findall(text)]


def find_phones(text: str) -> list[str]:
    """Phone numbers in ``text`` (card numbers masked first, so none is taken for a phone)."""
    low, high = PHONE_DIGITS
    phones = []
    for match in PHONE.finditer(mask_card_numbers(text)):
        candidate = match.group().strip()
        digits = re.sub(r"\D", "", candidate)
        if low <= len(digits) <= high and not re.search(r"\d{4}-\d{2}-\d{2}", candidate):
            phones.append(candidate)
    return phones


def extract_pii(text: str) -> dict[str, str]:
    """The last email, phone and order id mentioned in ``text``; never a card number."""
    text = mask_card_numbers(text)
    found: dict[str, str] = {}
    if emails := find_emails(text):
        found["email"] = emails[-1]
    if phones := find_phones(text):
        found["phone"] = phones[-1]
    if orders := find_order_ids(text):
        found["order_id"] = orders[-1]
    return found


def collect_pii(texts: Iterable[str]) -> dict[str, str]:
    """PII over several messages, oldest first: a later mention replaces an earlier one."""
    collected: dict[str, str] = {}
    for text in texts:
        collected.update(extract_pii(text))
    return collected


def mask_value(value: str) -> str:
    """What a caller not allowed to see personal data is shown: its shape, not its content.

    An email keeps its first letter and its domain (``j***@example.com``); anything else keeps its
    last four characters (``***4567``), and a value of four characters or fewer is starred whole.
    """
    local, at, domain = value.partition("@")
    if at and local:
        return f"{local[0]}***@{domain}"
    return "***" + value[-KEEP:] if len(value) > KEEP else MASK * len(value)


def mask_text(text: str) -> str:
    """``text`` with every email, phone number and order id in it shown as ``mask_value`` shows them
    (card numbers are masked before they are ever stored)."""
    text = EMAIL.sub(lambda m: mask_value(m.group()), text)
    for phone in find_phones(text):
        text = text.replace(phone, mask_value(phone))
    return ORDER_ID.sub(lambda m: mask_value(m.group()), text)
