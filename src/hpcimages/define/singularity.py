"""Singularity/Apptainer recipes from the rendered Dockerfiles, with spython, and fixes for its defects.

spython's Dockerfile parser and Singularity writer do the translation; what they get wrong for our
templates is repaired here, each fix named after the defect:

* ``ARG`` becomes a plain assignment in ``%post`` (or is dropped when it has no default), so a build could
  not pass it: every ARG becomes an Apptainer build argument (``{{ NAME }}`` with its default under
  ``%arguments``), and the pip wheelhouse becomes one ``WHEELHOUSE`` argument that exports the PIP_* variables;
* ``FROM ${BASE_IMAGE}`` is frozen to the default: the header becomes ``Bootstrap: {{ BOOTSTRAP }}`` /
  ``From: {{ FROM }}`` (default: ``docker`` and the Dockerfile's image), so an offline build can bootstrap
  from ``docker-archive`` of the locally built image;
* ``LABEL k="v"`` is written as ``k="v"`` (Singularity wants ``k v``);
* ``CMD ["python3"]`` becomes ``exec /bin/bash python3``: the runscript is ``exec python3 "$@"``;
* the Dockerfile's comment header lands in ``%post``: it is dropped, and the recipe gets its own header.

The templates stay within what converts: one ``FROM``, no ``COPY --from``, no ``USER``, only braced
``${VAR}`` substitutions.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

from spython.logger import bot
from spython.main.parse.parsers import DockerParser
from spython.main.parse.writers import SingularityWriter

ARG_RE = re.compile(r"^\s*ARG\s+([A-Za-z_][A-Za-z0-9_]*)(?:=(.*))?$", re.M)
FROM_ARGS = ("BASE_IMAGE", "PARENT_IMAGE")
PIP_ARGS = ("PIP_NO_INDEX", "PIP_FIND_LINKS")


def dockerfile_args(text: str) -> dict[str, str | None]:
    """ARG name -> default (None when it has none), in order."""
    args: dict[str, str | None] = {}
    for match in ARG_RE.finditer(text):
        default = match.group(2)
        args.setdefault(match.group(1), None if default is None else _unquote(default))
    return args


def _unquote(value: str) -> str:
    value = value.strip()
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value


def spython_convert(dockerfile: Path) -> str:
    """spython's own translation (its warnings about ARG are the defects fixed below)."""
    error_stream, bot.errorStream = bot.errorStream, io.StringIO()  # spython's logger keeps its own handle
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            parser = DockerParser(str(dockerfile))
            return SingularityWriter(parser.recipe).convert()
    finally:
        bot.errorStream = error_stream


def _sections(text: str) -> tuple[str, dict[str, list[str]]]:
    header, sections, current = [], {}, None
    for line in text.splitlines():
        match = re.match(r"^%(\w+)\s*$", line)
        if match:
            current = match.group(1)
            sections[current] = []
        elif current is None:
            header.append(line)
        else:
            sections[current].append(line)
    return "\n".join(header), sections


def recipe(dockerfile: Path, generated_by: str) -> str:
    """The committed Singularity.def for one rendered Dockerfile."""
    docker_text = dockerfile.read_text(encoding="utf-8")
    args = dockerfile_args(docker_text)
    header, sections = _sections(spython_convert(dockerfile))
    from_image = re.search(r"^From:\s*(\S+)", header, re.M)
    if not from_image:
        raise ValueError(f"spython produced no From: line for {dockerfile}")
    arguments = ["BOOTSTRAP=docker", f"FROM={from_image.group(1)}", "WHEELHOUSE=none"]
    post = [ln for ln in sections.get("post", []) if not ln.startswith("#")]  # the Dockerfile's comment header
    fixed_post = []
    for line in post:
        assignment = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if assignment and assignment.group(1) in args:
            name = assignment.group(1)
            if name in FROM_ARGS:
                continue
            arguments.append(f"{name}={args[name] or ''}")
            fixed_post.append(f'{name}="{{{{ {name} }}}}"')
        else:
            fixed_post.append(line)
    while fixed_post and not fixed_post[0].strip():
        fixed_post.pop(0)
    wheelhouse = ["# `--build-arg WHEELHOUSE=<url>`: pip installs from that wheelhouse only (offline builds)",
                  'if [ "{{ WHEELHOUSE }}" != "none" ]; then',
                  '    export PIP_NO_INDEX=1 PIP_FIND_LINKS="{{ WHEELHOUSE }}"',
                  "fi"]
    labels = [_label(line) for line in sections.get("labels", []) if line.strip()]
    out = [
        *(f"# {line}" if line else "#" for line in generated_by.splitlines()),
        "Bootstrap: {{ BOOTSTRAP }}",
        "From: {{ FROM }}",
        "",
        "%arguments",
        *arguments,
        "",
    ]
    if sections.get("files"):
        out += ["%files", *[ln for ln in sections["files"] if ln.strip()], ""]
    if sections.get("environment"):
        out += ["%environment", *[ln for ln in sections["environment"] if ln.strip()], ""]
    out += ["%post", *wheelhouse, *fixed_post]
    while out[-1] == "":
        out.pop()
    out.append("")
    if labels:
        out += ["%labels", *labels, ""]
    if re.search(r'^CMD \["python3"\]', docker_text, re.M):
        out += ["%runscript", '    exec python3 "$@"', ""]
    return "\n".join(out)


def _label(line: str) -> str:
    match = re.match(r'^\s*([^\s=]+)="?(.*?)"?\s*$', line)
    if not match:
        return line.strip()
    return f"{match.group(1)} {match.group(2)}"
