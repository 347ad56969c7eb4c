"""The one rule for every string that reaches generated text (a Dockerfile, a Singularity recipe, a shell or batch
script, a Jinja context), whichever file it comes from:

* the whole string matches its pattern (``fullmatch``: ``re.match('^x$', 'x\\n')`` would let a final newline
  through);
* no control characters at all: line breaks of any kind (``\\n``, ``\\r``, ``\\x85``, U+2028, U+2029), NUL, ...;
* a length limit, so nothing downstream (a tag, a file name) overflows.

Free text (descriptions) is one line of printable characters without the characters that are special inside the
double-quoted label values it lands in (``"``, ``\\``, ``$``). Templates check again what they insert
(``refuse_unsafe``), so a value that bypassed validation still cannot break a generated file.
"""

from __future__ import annotations

import re

CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
#: what no value inserted into a Dockerfile may hold: a line break, or what is special in a quoted ARG/LABEL value
DOCKERFILE_UNSAFE_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\"\\$]")
FREE_TEXT_RE = re.compile(r"[^\"\\$]*")
#: a family, profile or site name; a tag; and a cell's ``family:tag``, wherever it is read (matrix, state files)
NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,40}")
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
CELL_REF_RE = re.compile(f"{NAME_RE.pattern}:{TAG_RE.pattern}")
DEFAULT_LIMIT = 400
FREE_TEXT_LIMIT = 200
SHOWN = 60


def problem(value: str, pattern: re.Pattern[str], limit: int = DEFAULT_LIMIT) -> str | None:
    """Why ``value`` may not reach generated text, or None when it may."""
    if len(value) > limit:
        return f"{len(value)} characters long (at most {limit})"
    bad = CONTROL_RE.search(value)
    if bad:
        return f"it holds a control character ({bad.group(0)!r}): a value must stay on one line"
    if not pattern.fullmatch(value):
        return f"must match {pattern.pattern}"
    return None


def free_text_problem(value: str, limit: int = FREE_TEXT_LIMIT) -> str | None:
    reason = problem(value, FREE_TEXT_RE, limit)
    if reason and reason.startswith("must match"):
        return 'one line of text without ", \\ or $'
    return reason


def shown(value: object, width: int = SHOWN) -> str:
    """A value as an error message quotes it: its repr, shortened (a 5,000-character value is not echoed)."""
    text = repr(value)
    if len(text) <= width:
        return text
    return f"{text[: width - 5]}...{text[-2:]} ({len(str(value))} characters)"


class UnsafeValue(ValueError):
    """A template was about to insert a value that could break the generated file."""


def refuse_unsafe(value: object, forbidden: re.Pattern[str] = CONTROL_RE) -> object:
    """Jinja ``finalize``: every ``{{ ... }}`` passes through here before it reaches the output."""
    if isinstance(value, str) and forbidden.search(value):
        raise UnsafeValue(f"refusing to insert {shown(value)}: it would break the generated file")
    return value
