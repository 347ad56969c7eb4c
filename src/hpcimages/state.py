"""The one reader of the files the tool writes and later reads back: reports, job records, results, stamps.

They live in folders a user can edit, so they are input like the matrix: every entry is read into its dataclass
through :func:`typed`, which checks each field against the dataclass's annotations (a string is a string of at most
``MAX_TEXT`` characters, a number is finite, a count is whole, a list is a list of the right things), refuses a
missing or unknown field, and raises one :class:`StateError` line naming the file, the entry and the field. The
caller leaves the file as it is: a state file is never reset because one entry is wrong.

A dataclass says more about its fields with a ``field_checks`` class attribute (field name -> a function returning the
problem of a value, or None) and names keys that older versions wrote, or that are derived, in ``ignored``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from .errors import HpcImagesError
from .validate import CELL_REF_RE, problem, shown

#: the longest string a state file may hold in one field (check logs are paths, reasons a few lines)
MAX_TEXT = 65536
#: no count the tool writes (bytes, seconds, ranks) comes near this
MAX_WHOLE = 2**53

T = TypeVar("T")
Check = Callable[[Any], "str | None"]


class StateError(HpcImagesError):
    """A file the tool wrote, and a user may have edited, is not what the tool writes."""


def read_text(path: Path, what: str = "file") -> str:
    """The text of a UTF-8 file; a folder, an unreadable file or bytes that are no UTF-8 are one line naming it."""
    if path.is_dir():
        raise StateError(f"{path} cannot be read (a directory, not a {what})")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise StateError(f"{path} cannot be read ({exc.strerror or exc})") from None
    return decode(raw, path)


def decode(raw: bytes, path: Path | str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise StateError(f"{path} cannot be read (line {line}: byte 0x{raw[exc.start]:02x} is not UTF-8 text; save "
                         "the file as UTF-8)") from None


def load_json(path: Path, what: str = "file") -> Any:
    """A JSON document (NaN and Infinity read as numbers, so the field that holds one is named by ``typed``)."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise StateError(f"{path} cannot be read (not valid JSON: {exc})") from None
    except RecursionError:
        raise StateError(f"{path} cannot be read (nested deeper than the tool writes)") from None


def json_line(line: str) -> Any:
    """One line of a JSON-lines file (a ValueError says why it is none)."""
    try:
        return json.loads(line)
    except RecursionError:
        raise ValueError("nested deeper than the tool writes") from None


def typed(cls: type[T], data: Any, path: Path | str, entry: str) -> T:
    """``data`` read into the dataclass ``cls``: each field conformed to its annotation, raising StateError
    ``<path>: <entry>: <field>: <problem>``."""
    return _dataclass(cls, data, ": ".join(str(part) for part in (path, entry) if str(part)))


def _dataclass(cls: type[T], data: Any, where: str) -> T:
    if not isinstance(data, dict):
        raise StateError(_at(where, f"must be a table, got {_kind(data)}"))
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    ignored = set(getattr(cls, "ignored", ()))
    unknown = sorted(k for k in data if k not in fields and k not in ignored)
    if unknown:
        raise StateError(_at(where, f"unknown field {shown(unknown[0])} (the tool writes: {', '.join(fields)})"))
    checks: Mapping[str, Check] = getattr(cls, "field_checks", {})
    values = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise StateError(_at(where, f"{name}: missing"))
            continue
        value = _conform(data[name], hints[name], _at(where, name))
        refused = checks[name](value) if name in checks and value is not None else None
        if refused:
            raise StateError(_at(where, f"{name}: {refused}"))
        values[name] = value
    return cls(**values)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """A dataclass's resolved annotations, once per class (a report holds many entries of one class)."""
    return typing.get_type_hints(cls)


def _at(where: str, what: str) -> str:
    return f"{where}: {what}" if where else what


def _conform(value: Any, hint: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        [inner] = [a for a in args if a is not type(None)]
        return _conform(value, inner, where)
    if dataclasses.is_dataclass(hint):
        return _dataclass(hint, value, where)  # type: ignore[arg-type]
    if origin is list:
        if not isinstance(value, list):
            raise StateError(f"{where}: must be a list, got {_kind(value)}")
        return [_conform(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise StateError(f"{where}: must be a table, got {_kind(value)}")
        return {_conform(k, args[0], where): _conform(v, args[1], f"{where}.{shown(k)}") for k, v in value.items()}
    return _scalar(value, hint, where)


def _scalar(value: Any, hint: Any, where: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int | float) and not isinstance(value, bool) and abs(value) >= MAX_WHOLE:
            raise StateError(f"{where}: {shown(value)} is larger than any count the tool writes")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and math.isfinite(value) and value == int(value):
            return int(value)
        if isinstance(value, float):
            raise StateError(f"{where}: must be a whole number, got {shown(value)}")
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise StateError(f"{where}: must be a finite number, got {shown(value)}")
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            if len(value) > MAX_TEXT:
                raise StateError(f"{where}: {len(value)} characters is longer than the tool writes ({MAX_TEXT})")
            return value
    else:
        raise TypeError(f"state.typed does not read {hint!r}")  # a field type this reader was not taught
    raise StateError(f"{where}: must be {_article(hint)}, got {_kind(value)} {shown(value)}"[:300])


def _article(hint: Any) -> str:
    return {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}[hint]


def _kind(value: Any) -> str:
    return {dict: "a table", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, int | float) else type(value).__name__)


def non_negative(value: float) -> str | None:
    return None if value >= 0 else f"must not be negative, got {shown(value)}"


def cell_ref(value: str) -> str | None:
    """A cell's ``family:tag``: it names pages and folders, so it is checked like the matrix checks its parts."""
    reason = problem(value, CELL_REF_RE)
    return f"{shown(value)} is not a cell (family:tag; {reason})" if reason else None


def one_of(*allowed: str) -> Check:
    def check(value: str) -> str | None:
        return None if value in allowed else f"{shown(value)} is not one of {', '.join(allowed)}"
    return check


def cached_object(path: Path) -> dict[str, Any] | None:
    """A cache or stamp the tool can make again (a .sif's metadata, an inventory): its JSON object, or None when it
    is missing, unreadable or not an object, so it is made again instead of trusted or crashed on."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    return data if isinstance(data, dict) else None


def at_most(limit: int) -> Check:
    def check(value: float) -> str | None:
        return None if 0 <= value <= limit else f"must be from 0 to {limit}, got {shown(value)}"
    return check
