"""Arithmetic sequences written in one of upstream's number systems."""

from __future__ import annotations

import random

from absence_tasks.sources import Document

NUMBER_SYSTEMS = ("base10", "binary", "hexadecimal", "words", "roman")
ORDERS = ("ascending", "descending", "random")
ROMAN_MAX = 3999  # standard Roman numerals stop here and have no zero

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**9, "billion"), (10**6, "million"), (10**3, "thousand"))
_ROMAN = ((1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"),
          (50, "L"), (40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I"))


def _words_below_thousand(n: int) -> str:
    parts = []
    if n >= 100:
        parts.append(f"{_ONES[n // 100]} hundred")
        n %= 100
    if n >= 20:
        parts.append(_TENS[n // 10] + (f"-{_ONES[n % 10]}" if n % 10 else ""))
    elif n or not parts:
        parts.append(_ONES[n])
    return " ".join(parts)


def to_words(n: int) -> str:
    """English words without commas or "and" (so one number is one unambiguous line)."""
    if n < 0:
        return "minus " + to_words(-n)
    if n < 1000:
        return _words_below_thousand(n)
    parts = []
    for value, name in _SCALES:
        if n >= value:
            parts.append(f"{to_words(n // value)} {name}")
            n %= value
    if n:
        parts.append(_words_below_thousand(n))
    return " ".join(parts)


def to_roman(n: int) -> str:
    if not 1 <= n <= ROMAN_MAX:
        raise ValueError(f"{n} has no standard Roman numeral (1..{ROMAN_MAX})")
    out = []
    for value, symbol in _ROMAN:
        count, n = divmod(n, value)
        out.append(symbol * count)
    return "".join(out)


def format_number(n: int, system: str) -> str:
    if system == "base10":
        return str(n)
    if system == "binary":
        return format(n, "b")
    if system == "hexadecimal":
        return format(n, "x")
    if system == "words":
        return to_words(n)
    if system == "roman":
        return to_roman(n)
    raise ValueError(f"unknown number system {system!r} (expected one of {', '.join(NUMBER_SYSTEMS)})")


def sequence_values(start: int, step: int, length: int, order: str, rng: random.Random) -> list[int]:
    values = [start + step * i for i in range(length)]
    if order == "descending":
        values.reverse()
    elif order == "random":
        rng.shuffle(values)
    elif order != "ascending":
        raise ValueError(f"unknown order {order!r} (expected one of {', '.join(ORDERS)})")
    return values


def sequence_document(start: int, step: int, length: int, order: str, system: str,
                      rng: random.Random) -> Document:
    values = sequence_values(start, step, length, order, rng)
    return Document(
        domain="numerical",
        # The order is left out of the source id: the same set of numbers shuffled differently is the
        # same source, so it can never sit in two splits.
        source_id=f"numerical:{system}:{start}:{step}:{length}",
        lines=tuple(format_number(v, system) for v in values),
        provenance={"start": start, "step": step, "length": length, "order": order,
                    "number_system": system},
    )
