"""Tags beyond a cell's own: alias rules, the designated ``latest`` cells and the immutable release tag, read from a
profile's ``[profiles.NAME.publish]`` table and checked like the rest of the matrix.

An alias rule is a tag with placeholders, e.g. ``{python}-{mpi_minor}-{cuda}``:

    {python}     py3.11             {mpi}        mpich4.3.2 (the MPI axis value, install method included)
    {mpi_minor}  mpich4.3           {cuda}       cuda12.8, or nothing for a cell without CUDA
    {tag}        the cell's tag

A placeholder that is empty for a cell drops out together with the dash before it. The release template may use
``{tag}``, ``{revision}`` (the image's git revision label, 7 hex digits, ``-dirty`` when the tree was) and
``{date}`` (the image's creation day, YYYYMMDD), and must use one of the last two: a release tag names one image
forever, and publish refuses to move one.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..validate import TAG_RE, problem, shown

if TYPE_CHECKING:
    from .matrix import Cell

# host[:port][/namespace...]: the host must look like one (a dot, a port or `localhost`), or Docker would read a
# bare word as a Docker Hub namespace
PUBLISH_REGISTRY_RE = re.compile(r"(localhost|[a-z0-9-]+(\.[a-z0-9-]+)+|[a-z0-9.-]+:[0-9]{1,5})"
                                 r"(:[0-9]{1,5})?(/[a-z0-9]+([._-][a-z0-9]+)*)*")
ALIAS_FIELDS = ("python", "mpi", "mpi_minor", "cuda", "tag")
RELEASE_FIELDS = ("tag", "revision", "date")
DEFAULT_ALIASES = ("{python}-{mpi_minor}-{cuda}",)
DEFAULT_RELEASE = "{tag}-{revision}"
PUBLISH_KEYS = {"registry", "aliases", "latest", "release", "retries", "sign"}

Fail = Callable[[str, str], Exception]


@dataclass(frozen=True)
class PublishSettings:
    """Where and under which tags a profile publishes (``--registry`` overrides ``registry``)."""

    registry: str | None = None
    aliases: tuple[str, ...] = DEFAULT_ALIASES
    latest: tuple[str, ...] = ()
    release: str = DEFAULT_RELEASE
    retries: int = 3
    sign: bool = False  # sign every pushed digest, attest its SBOMs and provenance (the keys of `invoke keys`)


def _fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


def render(template: str, values: Mapping[str, str]) -> str:
    """Fill a tag template; an empty value drops out with the dash before it."""
    out = ""
    for literal, name, _, _ in string.Formatter().parse(template):
        out += literal
        if name is not None:
            value = values[name]
            if value:
                out += value
            elif out.endswith("-"):
                out = out[:-1]
    return out.strip("-")


def alias_values(cell: Cell) -> dict[str, str]:
    short = ".".join(cell.mpi.version.split(".")[:2])
    minor = cell.mpi.key.replace(f"{cell.mpi.name}{cell.mpi.version}", f"{cell.mpi.name}{short}", 1)
    return {"python": f"py{cell.python}", "mpi": cell.mpi.key, "mpi_minor": minor,
            "cuda": f"cuda{cell.cuda}" if cell.cuda else "", "tag": cell.tag}


def alias_tags(cell: Cell, rules: Iterable[str]) -> list[str]:
    """The cell's alias tags (without its own tag), in rule order."""
    tags: list[str] = []
    values = alias_values(cell)
    for rule in rules:
        tag = render(rule, values)
        if tag and tag != cell.tag and tag not in tags:
            tags.append(tag)
    return tags


def release_tag(template: str, cell_tag: str, labels: Mapping[str, str]) -> str | None:
    """The release tag from the image's own labels, or None when the label it needs is missing."""
    revision = labels.get("org.opencontainers.image.revision") or ""
    created = labels.get("org.opencontainers.image.created") or ""
    short = revision[:7] + ("-dirty" if revision.endswith("-dirty") else "") if revision else ""
    values = {"tag": cell_tag, "revision": short, "date": created[:10].replace("-", "")}
    needed = [name for name in _fields(template) if name != "tag"]
    if any(not values[name] for name in needed):
        return None
    tag = render(template, values)
    return tag if problem(tag, TAG_RE) is None else None


def _template(value: Any, key: str, allowed: tuple[str, ...], fail: Fail) -> str:
    if not isinstance(value, str):
        raise fail(key, f"must be a tag template (a string), got {type(value).__name__}")
    try:
        names = _fields(value)
    except ValueError as exc:
        raise fail(key, f"{shown(value)} is not a valid tag template ({exc})") from None
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise fail(key, f"unknown placeholder {{{unknown[0][:40]}}}; allowed: "
                        + ", ".join("{" + n + "}" for n in allowed))
    literal = re.sub(r"\{[a-z_]+\}", "x", value)
    reason = problem(literal, TAG_RE, 128)
    if reason:
        raise fail(key, f"{shown(value)} would not give a valid tag ({reason})")
    return value


def load_publish(table: Any, key: str, fail: Fail) -> PublishSettings:
    """``[profiles.NAME.publish]``: checked here; the rules against the profile's cells in ``check_tags``."""
    if table is None:
        return PublishSettings()
    if not isinstance(table, dict):
        raise fail(key, f"must be a table, got {type(table).__name__}")
    unknown = sorted(set(table) - PUBLISH_KEYS)
    if unknown:
        raise fail(f"{key}.{unknown[0][:60]}", f"unknown key; allowed keys: {', '.join(sorted(PUBLISH_KEYS))}")
    registry = table.get("registry")
    if registry is not None:
        reason = registry_problem(registry)
        if reason:
            raise fail(f"{key}.registry", reason)
    aliases = table.get("aliases", list(DEFAULT_ALIASES))
    if not isinstance(aliases, list):
        raise fail(f"{key}.aliases", "must be a list of tag templates")
    rules = tuple(_template(v, f"{key}.aliases[{i}]", ALIAS_FIELDS, fail) for i, v in enumerate(aliases))
    latest = table.get("latest", [])
    if not isinstance(latest, list) or not all(isinstance(v, str) for v in latest):
        raise fail(f"{key}.latest", "must be a list of cells (family:tag), one per family at most")
    release = _template(table.get("release", DEFAULT_RELEASE), f"{key}.release", RELEASE_FIELDS, fail)
    if not {"revision", "date"} & set(_fields(release)):
        raise fail(f"{key}.release", f"{shown(release)} names no release: use {{revision}} or {{date}}, or every "
                                     "release would claim the same tag")
    retries = table.get("retries", 3)
    if isinstance(retries, bool) or not isinstance(retries, int) or not 1 <= retries <= 10:
        raise fail(f"{key}.retries", f"must be a whole number from 1 to 10 (push attempts), got {shown(retries)}")
    sign = table.get("sign", False)
    if not isinstance(sign, bool):
        raise fail(f"{key}.sign", f"must be true or false (sign and attest every pushed image), got {shown(sign)}")
    return PublishSettings(registry, rules, tuple(latest), release, retries, sign)


def registry_problem(value: Any) -> str | None:
    """Why a publish target (``HOST[:PORT][/NAMESPACE]``) is not one, or None."""
    if not isinstance(value, str):
        return f"must be HOST[:PORT]/NAMESPACE (a string), got {type(value).__name__}"
    reason = problem(value, PUBLISH_REGISTRY_RE, 200)
    if reason:
        detail = "" if reason.startswith("must match") else f" ({reason})"
        return (f"{shown(value)} is not a registry reference HOST[:PORT][/NAMESPACE]{detail}: e.g. "
                "127.0.0.1:5000/hpc or registry.example.org/hpc, a lower-case host with a dot or a port (a bare "
                "word would mean Docker Hub), no scheme, no tag")
    return _host_problem(value.split("/", 1)[0])


def _host_problem(host: str) -> str | None:
    """A port the socket layer would take modulo 65536 (71534 dials 5998), or an IPv4 literal that is none."""
    if host.count(":") > 1:
        return f"{shown(host)}: one port at most (HOST:PORT)"
    name, _, port = host.rpartition(":") if ":" in host else (host, "", "")
    if port and not 1 <= int(port) <= 65535:
        return f"{shown(host)}: port {port} is not a TCP port (1-65535)"
    parts = name.split(".")
    if len(parts) == 4 and all(p.isdigit() for p in parts) and any(int(p) > 255 for p in parts):
        return f"{shown(host)}: {name} is not an IPv4 address (each part 0-255)"
    return None


def check_tags(cells: list[Cell], settings: PublishSettings, key: str, fail: Fail) -> None:
    """Every tag a profile would publish names one cell: no alias claimed by two cells of a family, none equal to
    another cell's own tag, and at most one ``latest`` per family."""
    own = {(c.family.name, c.tag): c.ref for c in cells}
    claimed: dict[tuple[str, str], str] = {}
    for cell in cells:
        for tag in alias_tags(cell, settings.aliases):
            other = own.get((cell.family.name, tag)) or claimed.get((cell.family.name, tag))
            if other and other != cell.ref:
                raise fail(f"{key}.aliases", f"alias {cell.family.name}:{tag} would be claimed by {other} and "
                                             f"{cell.ref}: make the rule more specific or drop it")
            claimed[(cell.family.name, tag)] = cell.ref
    refs = {c.ref: c for c in cells}
    families: dict[str, str] = {}
    for i, ref in enumerate(settings.latest):
        if ref not in refs:
            raise fail(f"{key}.latest[{i}]", f"{shown(ref)} is not a cell of the profile")
        family = refs[ref].family.name
        if family in families:
            raise fail(f"{key}.latest[{i}]", f"{family}:latest would be claimed by {families[family]} and {ref}: "
                                             "one cell per family")
        families[family] = ref
