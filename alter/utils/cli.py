"""What the command-line tools share: argument types and how a bad input is reported.

A file or setting the user gave that cannot be used raises ``InputError``, whose
message names it, says what was expected and how to fix it; training that
diverges raises ``FloatingPointError`` naming the iteration and the loss term.
``run_tool`` prints either message without a traceback and exits with status 1.
Bad arguments are argparse errors (status 2).
"""
import argparse
import sys
from typing import Any, Callable


class InputError(ValueError):
    """A file or setting given to a tool is unusable (the message says which and why)."""


def run_tool(main: Callable[[], Any]) -> None:
    """Run a tool's ``main``; an ``InputError`` or ``FloatingPointError`` exits with
    status 1 and its message."""
    try:
        main()
    except (InputError, FloatingPointError) as error:
        sys.exit(f'error: {error}')


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be a positive integer, got {text}')
    return value


def open_fraction(text: str) -> float:
    """argparse type: a number strictly between 0 and 1."""
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f'must lie strictly between 0 and 1, got {text}')
    return value
