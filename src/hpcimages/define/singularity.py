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
* the Dockerfile's comment header lands in ``%post``: it is dropped, and the recipe gets its own header;
* ``ENV`` goes to ``%environment`` (read when the image runs) and into ``%post`` as a plain assignment, which the
  commands after it do not see, as they do in a Dockerfile: it is exported there;
* ``apt-get`` in an unprivileged build fails ("Failed to setgroups"): a stage that runs it lets apt download as
  root while the recipe builds (``APT::Sandbox::User``), and removes that setting again at its end.

Multi-stage Dockerfiles (a source MPI compiled in stages of its own) become Apptainer multi-stage recipes, one
stage converted at a time (spython alone merges the stages into one): ``COPY --from=S src dst`` becomes
``%files from S`` (a directory ``src/`` as ``src/*``, which Apptainer merges into ``dst``), and a stage that only
``ADD``s a URL (Docker's content-keyed download) becomes a download in the ``%post`` of the stage that copies it.
Apptainer has no layer cache, so the stages there only keep the compiler out of the image.

The templates stay within what converts: ``FROM ${ARG}`` (``AS name`` for a build stage), ``COPY --from`` of a
named stage, ``ADD`` of a URL only in a stage of its own, no ``USER``, only braced ``${VAR}`` substitutions.
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from spython.logger import bot
from spython.main.parse.parsers import DockerParser
from spython.main.parse.writers import SingularityWriter

ARG_RE = re.compile(r"^\s*ARG\s+([A-Za-z_][A-Za-z0-9_]*)(?:=(.*))?$", re.M)
FROM_ARGS = ("BASE_IMAGE", "PARENT_IMAGE")
PIP_ARGS = ("PIP_NO_INDEX", "PIP_FIND_LINKS")
FROM_RE = re.compile(r"^FROM\s+\$\{([A-Za-z_][A-Za-z0-9_]*)\}(?:\s+AS\s+([A-Za-z0-9_.-]+))?\s*$", re.M | re.I)
COPY_FROM_RE = re.compile(r"^COPY\s+--from=(\S+)\s+(\S+)\s+(\S+)\s*$", re.M)
ADD_URL_RE = re.compile(r"^ADD\s+\$\{([A-Za-z_][A-Za-z0-9_]*)\}\s+(\S+)\s*$", re.M)
DOWNLOAD = "python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])'"


#: apt downloads as its sandbox user `_apt`, which needs setgroups(); an unprivileged Apptainer build (a user
#: namespace without a subuid range) refuses that ("Failed to setgroups"), so apt downloads as root for the build.
APT_CONF = "/etc/apt/apt.conf.d/00hpcimages-build"
APT_SANDBOX_ON = ["# an unprivileged build cannot setgroups(): apt downloads as root while this recipe builds",
                  f"echo 'APT::Sandbox::User \"root\";' > {APT_CONF}"]
APT_SANDBOX_OFF = [f"rm -f {APT_CONF}"]


@dataclass
class Stage:
    from_arg: str  # the ARG its FROM names
    name: str  # "" for the image stage
    text: str  # its instructions, without the FROM line


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


def split_stages(text: str) -> tuple[str, list[Stage]]:
    """(what precedes the first FROM, the stages in order)."""
    matches = list(FROM_RE.finditer(text))
    if not matches:
        raise ValueError("no `FROM ${ARG}` line: the templates name their images through an ARG")
    stages = []
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        stages.append(Stage(match.group(1), match.group(2) or "", text[match.end():end]))
    return text[:matches[0].start()], stages


def _instructions(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def _fold_downloads(stages: list[Stage]) -> list[Stage]:
    """A stage that only ADDs a URL is replaced, in the stages that COPY from it, by a download of that URL."""
    fetched = {}
    for stage in stages:
        body = [ln for ln in _instructions(stage.text) if not ln.startswith("ARG ")]
        adds = ADD_URL_RE.findall(stage.text)
        if stage.name and len(body) == 1 and len(adds) == 1:
            var, dest = adds[0]
            default = dockerfile_args(stage.text).get(var) or ""
            fetched[stage.name] = (var, default, dest)
    kept = []
    for stage in stages:
        if stage.name in fetched:
            continue
        text = stage.text
        for match in list(COPY_FROM_RE.finditer(text)):
            source, src, dst = match.groups()
            if source in fetched:
                var, default, dest = fetched[source]
                if src != dest:
                    raise ValueError(f"COPY --from={source} {src}: that stage fetched {dest}")
                text = text.replace(match.group(0), f"ARG {var}={default}\nRUN {DOWNLOAD} \"${{{var}}}\" {dst}")
        kept.append(Stage(stage.from_arg, stage.name, text))
    return kept


def recipe(dockerfile_text: str, generated_by: str) -> str:
    """The committed Singularity.def for one rendered Dockerfile."""
    prelude, stages = split_stages(dockerfile_text)
    stages = _fold_downloads(stages)
    parts = [*(f"# {line}" if line else "#" for line in generated_by.splitlines())]
    for i, stage in enumerate(stages):
        last = i == len(stages) - 1
        parts += _stage_recipe(prelude, stage, multi=len(stages) > 1, image_stage=last,
                               from_args={st.from_arg for st in stages})
        if not last:
            parts.append("")
    return "\n".join(parts)


def _stage_recipe(prelude: str, stage: Stage, multi: bool, image_stage: bool, from_args: set[str]) -> list[str]:
    """One stage: spython's translation of it alone, with the fixes the module docstring lists."""
    copies = COPY_FROM_RE.findall(stage.text)
    text = COPY_FROM_RE.sub("", stage.text)
    docker_text = f"{prelude}FROM ${{{stage.from_arg}}}\n{text}"
    args = dockerfile_args(docker_text)
    with tempfile.TemporaryDirectory() as tmp:  # spython works on files
        path = Path(tmp) / "Dockerfile"
        path.write_text(docker_text, encoding="utf-8")
        header, sections = _sections(spython_convert(path))
    from_image = re.search(r"^From:\s*(\S+)", header, re.M)
    if not from_image:
        raise ValueError(f"spython produced no From: line for stage {stage.name or 'image'}")
    from_arg = "FROM" if image_stage else stage.from_arg  # the image stage keeps the one name builds pass
    uses_pip = image_stage or any(arg in args for arg in PIP_ARGS)
    arguments = ["BOOTSTRAP=docker", f"{from_arg}={from_image.group(1)}"]
    if uses_pip:
        arguments.append("WHEELHOUSE=none")
    post = [ln for ln in sections.get("post", []) if not ln.startswith("#")]  # the Dockerfile's comment header
    # an ENV applies to every later RUN of a Dockerfile; %environment is read only when the image runs, and spython
    # writes the ENV into %post as a plain assignment, which the commands it starts do not see: exported instead
    env_names = {m.group(1) for ln in sections.get("environment", [])
                 if (m := re.match(r"^\s*export\s+([A-Za-z_][A-Za-z0-9_]*)=", ln))}
    fixed_post = []
    for line in post:
        assignment = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if assignment and assignment.group(1) in env_names and assignment.group(1) not in args:
            fixed_post.append(f"export {line}")
        elif assignment and assignment.group(1) in args:
            name = assignment.group(1)
            if name in FROM_ARGS or name in from_args:  # each stage's own From: line carries its image
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
                  "fi"] if uses_pip else []
    labels = [_label(line) for line in sections.get("labels", []) if line.strip()]
    out = ["Bootstrap: {{ BOOTSTRAP }}", f"From: {{{{ {from_arg} }}}}"]
    if multi:
        out.append(f"Stage: {stage.name or 'image'}")
    out += ["", "%arguments", *arguments, ""]
    by_source: dict[str, list[str]] = {}
    for source, src, dst in copies:  # a directory's contents: Apptainer merges `src/*` into dst
        by_source.setdefault(source, []).append(f"{src}* {dst}" if src.endswith("/") else f"{src} {dst}")
    for source, lines in by_source.items():
        out += [f"%files from {source}", *lines, ""]
    if sections.get("files"):
        out += ["%files", *[ln for ln in sections["files"] if ln.strip()], ""]
    if sections.get("environment"):
        out += ["%environment", *[ln for ln in sections["environment"] if ln.strip()], ""]
    apt = any("apt-get" in line for line in fixed_post)
    out += ["%post", *wheelhouse, *(APT_SANDBOX_ON if apt else []), *fixed_post]
    while out[-1] == "":
        out.pop()
    if apt:
        out += APT_SANDBOX_OFF
    out.append("")
    if labels:
        out += ["%labels", *labels, ""]
    if image_stage and re.search(r'^CMD \["python3"\]', text, re.M):
        out += ["%runscript", '    exec python3 "$@"', ""]
    return out


def _label(line: str) -> str:
    match = re.match(r'^\s*([^\s=]+)="?(.*?)"?\s*$', line)
    if not match:
        return line.strip()
    return f"{match.group(1)} {match.group(2)}"
