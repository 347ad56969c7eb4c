"""One table renderer for every report: the terminal's plain columns and Markdown, with one escaping rule for a
Markdown cell and one unit for sizes of images and files (MiB, 2^20 bytes).

    terminal([["mpi4py:py3.11-mpich4.3.2", "built"]], ["cell", "status"])
    markdown([["a|b", 1.5]], ["name", "value"])          # '| name | value |', '|---|---|', '| a\\|b | 1.50 |'
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tabulate import tabulate

from .validate import CONTROL_RE

MISSING = "-"
#: numbers in tables: two decimals unless a column says otherwise
FLOAT_FORMAT = ".2f"


def terminal(rows: Iterable[Sequence[object]], headers: Sequence[str], floatfmt: str = FLOAT_FORMAT) -> str:
    """Plain columns for the terminal (tabulate's ``simple``), a missing value shown as ``-``."""
    return tabulate([list(r) for r in rows], headers=list(headers), tablefmt="simple", floatfmt=floatfmt,
                    missingval=MISSING)


def markdown_cell(value: object) -> str:
    """The one escaping rule of a value in Markdown (a table cell, a heading, a list item): one line (every control
    character and line break folded into a space, so no value starts a block), ``|`` escaped, and ``&``, ``<``,
    ``>`` written as entities, so no value carries HTML."""
    text = CONTROL_RE.sub(" ", str(value))
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("\\", "\\\\").replace("|", "\\|")  # a backslash first: `a\|b` stays one cell


def markdown_code(value: object) -> str:
    """A value shown as inline code: one line, ``|`` escaped (a table would split on it), a backtick (which would
    end the span) written as ``'``. Markdown keeps ``<`` literal inside code."""
    return "`" + CONTROL_RE.sub(" ", str(value)).replace("`", "'").replace("|", "\\|") + "`"


def markdown(rows: Iterable[Sequence[object]], headers: Sequence[str], floatfmt: str = FLOAT_FORMAT) -> str:
    """A Markdown table (one line a row, unpadded, so a diff shows only what changed): text cells escaped by
    markdown_cell, floats formatted by ``floatfmt``, a missing value ``-``."""
    def cell(value: object) -> str:
        if value is None:
            return MISSING
        if isinstance(value, float):
            return format(value, floatfmt)
        return markdown_cell(value)

    lines = ["| " + " | ".join(markdown_cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def size(nbytes: float | None) -> str:
    """An image's or a file's size, in the one unit every report uses: ``512 MiB`` (``-`` when unknown)."""
    return MISSING if not nbytes else f"{nbytes / 2**20:.0f} MiB"
