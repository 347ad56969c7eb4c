"""The one entry point of every task (``invoke ...`` and ``nox -s bench``): errors become exit codes.

A task function returns its exit status. An ``HpcImagesError`` is the maintainer's mistake or the
machine's state, told in one line (exit 2); Ctrl-C is exit 130; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from .errors import HpcImagesError
from .validate import shown

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def exit_code(task: Callable[..., int], **kwargs: object) -> int:
    try:
        return task(**kwargs)
    except HpcImagesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def say(message: str) -> None:
    """Progress and tables for the person at the terminal (flushed: logs show them as they happen)."""
    print(message, flush=True)


class UsageError(HpcImagesError):
    """An option of the command line is wrong."""


def whole_number(option: str, value: object, minimum: int, maximum: int) -> int:
    """A numeric option as the person typed it (invoke passes text): one clear error instead of a traceback."""
    try:
        number = int(str(value).strip())
    except ValueError:
        raise UsageError(f"{option} {shown(value)}: a whole number from {minimum} to {maximum}") from None
    if not minimum <= number <= maximum:
        raise UsageError(f"{option} {number}: must be from {minimum} to {maximum}")
    return number
