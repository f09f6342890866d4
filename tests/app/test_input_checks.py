"""Laws of the command line's argument checks: numbers in range or refused, messages on one line."""

import argparse
import math

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from core.app.arguments import integer_in, number_in
from core.app.process import one_line

bounds = st.tuples(st.integers(-(2**70), 2**70), st.integers(0, 2**70)).map(lambda t: (t[0], t[0] + t[1]))


@given(bounds=bounds, value=st.integers(-(2**80), 2**80))
@example(bounds=(0, 2**64 - 1), value=2**64)
@example(bounds=(1, 10), value=0)
def test_integer_check_accepts_exactly_the_range(bounds, value):
    """integer_in(a, b)(str(v)) = v if a ≤ v ≤ b, else ArgumentTypeError naming [a, b] on one line.

    The text is read as an exact integer (no float detour), compared with both ends, and echoed in the message.
    """
    low, high = bounds
    check = integer_in(low, high)
    if low <= value <= high:
        assert check(str(value)) == value
    else:
        with pytest.raises(argparse.ArgumentTypeError) as err:
            check(str(value))
        assert f"from {low} to {high}" in str(err.value) and "\n" not in str(err.value)


@given(text=st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.text(max_size=12),
                      st.just("1e400"), st.just("-0"), st.just("nan"), st.just("inf")))
def test_number_check_accepts_exactly_finite_values_in_range(text):
    """number_in(0, 1000)(t) = float(t) iff float(t) is finite and 0 < float(t) ≤ 1000; else ArgumentTypeError.

    nan fails every comparison and inf (also from overflow, 1e400) is not finite, so both are refused.
    """
    check = number_in(0.0, 1000.0)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if math.isfinite(value) and 0 < value <= 1000:
        assert check(text) == value
    else:
        with pytest.raises(argparse.ArgumentTypeError):
            check(text)


@given(st.text())
@example("bad\x1b[31mred\x1b[0m\nsecond line\r")
def test_messages_print_as_one_plain_line(text):
    """one_line(t) has no control character (so no newline, no ANSI escape) and equals t when t had none.

    Every C0/C1 control character and DEL is replaced by its \\xNN spelling; nothing else changes.
    """
    shown = one_line(text)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in shown)
    if not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text):
        assert shown == text
