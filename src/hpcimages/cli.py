"""The one entry point of every task (``invoke ...`` and ``nox -s bench``): errors become exit codes.

A task function returns its exit status. An ``HpcImagesError`` is the maintainer's mistake or the
machine's state, told in one line (exit 2); Ctrl-C is exit 130; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

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


def without_open_mpi(cells: list[Any], what: str) -> list[Any]:
    """The cells a stage can handle today: Open MPI images are not {what} yet (issue 31). They are named and left
    out; asking for them alone is an error that says so, never a run that fails on the way."""
    dropped = [c.ref for c in cells if c.mpi.abi == "openmpi"]
    kept = [c for c in cells if c.mpi.abi != "openmpi"]
    if dropped and not kept:
        raise UsageError(f"{', '.join(dropped)}: Open MPI images are not {what} yet (their launcher and stand-ins "
                         "are another ABI's)")
    if dropped:
        say(f"note: left out, Open MPI images are not {what} yet: {', '.join(dropped)}")
    return kept
