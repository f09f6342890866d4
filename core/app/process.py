"""How the bnfold process talks and ends: one plain line per message on stderr, results on stdout, the exit codes,
SIGTERM turned into a clean exit, and a standard output that is closed or full."""

import json
import os
import re
import signal
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import NoReturn, TextIO

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_TERMINATED = 143  # 128 + SIGTERM

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def one_line(text: object) -> str:
    """`text` with every control character (newlines, ANSI escapes) shown as \\xNN, so it prints as one plain line."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


def report_error(message: str) -> None:
    print(f"bnfold: error: {one_line(message)}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    print(f"bnfold: warning: {one_line(message)}", file=sys.stderr, flush=True)


def print_result(data: object, text: str, as_json: bool) -> None:
    """A command's result on stdout: strict JSON (no NaN or Infinity) when asked for, else its text."""
    print(json.dumps(data, indent=2, allow_nan=False) if as_json else text)


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that writes in progress clean up like on Ctrl-C."""


def _raise_terminated(signum: int, frame: FrameType | None) -> NoReturn:
    raise Terminated()


def _warning_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None) -> None:
    warn(f"{category.__name__}: {message}")


@contextmanager
def one_line_signals_and_warnings() -> Iterator[None]:
    """While it runs: SIGTERM raises Terminated (in the main thread; elsewhere signals are left alone), and Python
    warnings (from torch or elsewhere) print as one `bnfold: warning:` line each."""
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread
        pass
    show_warning, warnings.showwarning = warnings.showwarning, _warning_line
    try:
        yield
    finally:
        warnings.showwarning = show_warning
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def discard_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush into a closed pipe raises nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def stdout_writable() -> bool:
    """Flush stdout; if it fails, point it at /dev/null (so the interpreter's exit raises nothing) and say so."""
    try:
        sys.stdout.flush()
        return True
    except (OSError, ValueError):
        discard_stdout()
        return False
