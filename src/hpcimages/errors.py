"""Errors the tool reports to a maintainer as one clear line (no traceback)."""

from __future__ import annotations

from collections.abc import Iterable

from .validate import CONTROL_RE


class HpcImagesError(Exception):
    """Base class: the message is meant for the person at the terminal."""


class MatrixError(HpcImagesError):
    """The matrix file is wrong. Names the file and the key, and what is allowed."""

    def __init__(self, path: object, key: str, message: str, more: tuple[MatrixError, ...] = ()) -> None:
        self.path = str(path)
        self.key = key if key.isprintable() and len(key) <= 120 else repr(key)[:120]  # a hostile key stays one line
        self.message = message
        self.problems = (self, *more)  # every problem found in one read of the file
        super().__init__(f"{self.path}: " + "; ".join(f"{p.key}: {p.message}" for p in self.problems))

    @classmethod
    def every(cls, problems: list[MatrixError]) -> MatrixError:
        """One error for every problem of a file, in the order they were found (each names its key)."""
        first = problems[0]
        return cls(first.path, first.key, first.message, tuple(problems[1:]))


class EngineError(HpcImagesError):
    """The Docker engine cannot be reached or refused a request."""


class LockError(HpcImagesError):
    """A lock could not be compiled or is out of date."""


class BaseImageError(HpcImagesError):
    """An offline base image could not be bootstrapped."""


class SelectionError(HpcImagesError):
    """`--only` names no cell of the profile."""


def output_tail(text: str, lines: int, limit: int, skip: Iterable[str] = ()) -> str:
    """The last non-empty lines of a command's output, on one line, for an error message; control characters (a
    NUL, a terminal escape sequence's ESC) shown as ``?``, so output a job wrote cannot drive the terminal."""
    kept = [CONTROL_RE.sub("?", ln.strip()) for ln in text.strip().splitlines()
            if ln.strip() and not any(s in ln for s in skip)]
    return " | ".join(kept[-lines:])[:limit] or "(no output)"
