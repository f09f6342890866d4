"""The command line's own error, and the option named in front of (or after) a library error's message."""

from collections.abc import Iterator
from contextlib import contextmanager

from core.errors import BnfoldError


class UsageError(BnfoldError, ValueError):
    """A command-line option cannot be honoured here (an unwritable --out, --device cuda without CUDA); the message
    names the option and what to give instead."""


@contextmanager
def naming_option(before: str = "", after: str = "",
                  errors: tuple[type[BnfoldError], ...] = (BnfoldError,)) -> Iterator[None]:
    """Turn one of `errors` raised in the block into a UsageError reading `before` + its message + `after`, so that
    the line the user sees says which option to change (the library's messages name no option)."""
    try:
        yield
    except errors as e:
        raise UsageError(f"{before}{e}{after}") from e
