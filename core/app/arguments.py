"""The command line's argument types and parser: a number is finite and in its range, or refused in one line that
names the option, the range and the value as typed. Nothing here imports torch, so a mistyped option fails at once."""

import argparse
import math
import re
from collections.abc import Callable
from typing import NoReturn

from core.app.process import EXIT_BAD_INPUT, one_line
from core.limits import (
    MAX_BATCH_SIZE,
    MAX_IMAGE_SIZE,
    MAX_INPUT_DIMS,
    MAX_INPUT_ELEMENTS,
    MAX_LR,
    MAX_ROUNDS,
    MAX_SAMPLES,
    MAX_SEED,
    MAX_STEPS,
    MAX_THREADS,
)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr (exit 2) instead of a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def _integer(text: str) -> int | None:
    """The integer written in `text` (digits, an optional sign, _ separators), else None; huge ones stay exact."""
    digits = text.strip().replace("_", "")
    if not re.fullmatch(r"[+-]?\d+", digits):
        return None
    if len(digits.lstrip("+-").lstrip("0")) > 40:  # beyond every range here; int() of 4300+ digits would refuse
        return -(10**41) if digits.startswith("-") else 10**41
    return int(digits)


def shown(text: str) -> str:
    """A user's value for an error message: as typed, or its start and length when it is very long."""
    return repr(text) if len(text) <= 40 else f"{text[:20]!r}... ({len(text)} characters)"


def integer_in(low: int, high: int, what: str = "an integer") -> Callable[[str], int]:
    """An argparse type accepting integers low..high, refusing anything else in one line."""

    def parse(text: str) -> int:
        value = _integer(text)
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {what} from {low} to {high}, got {shown(text)}")
        return value

    parse.__name__ = what
    return parse


def number_in(low: float, high: float, what: str = "a number") -> Callable[[str], float]:
    """An argparse type accepting finite numbers with low < x <= high, refusing nan, inf and overflow."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and low < value <= high):
            raise argparse.ArgumentTypeError(f"must be {what} greater than {low:g} and at most {high:g}, "
                                             f"got {shown(text)}")
        return value

    parse.__name__ = what
    return parse


steps_arg = integer_in(1, MAX_STEPS, "a step count")
seed_arg = integer_in(0, MAX_SEED, "a seed")
batch_size_arg = integer_in(1, MAX_BATCH_SIZE, "a batch size")
lr_arg = number_in(0.0, MAX_LR, "a learning rate")
samples_arg = integer_in(1, MAX_SAMPLES, "a count of names")
rounds_arg = integer_in(1, MAX_ROUNDS, "a count of rounds")
threads_arg = integer_in(1, MAX_THREADS, "a thread count")
image_size_arg = integer_in(1, MAX_IMAGE_SIZE, "an image size")


def input_shape_arg(text: str) -> tuple[int, ...]:
    """'1,3,224,224' -> (1, 3, 224, 224): 1..MAX_INPUT_DIMS positive integers, at most MAX_INPUT_ELEMENTS values."""
    parts = [_integer(part) for part in text.split(",")]
    if not 1 <= len(parts) <= MAX_INPUT_DIMS or any(p is None or p < 1 for p in parts):
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_INPUT_DIMS} positive integers separated by commas, "
                                         f"such as 1,3,224,224, got {shown(text)}")
    shape = tuple(p for p in parts if p is not None)
    if math.prod(shape) > MAX_INPUT_ELEMENTS:
        raise argparse.ArgumentTypeError(f"holds {math.prod(shape)} values, more than the {MAX_INPUT_ELEMENTS} "
                                         f"bnfold draws as an example input, got {shown(text)}")
    return shape
