"""The one entry point of every task (``invoke ...`` and ``nox -s bench``): errors become exit codes.

A task function returns its exit status. An ``HpcImagesError`` is the maintainer's mistake or the
machine's state, told in one line (exit 2); Ctrl-C is exit 130; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from .errors import HpcImagesError

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
