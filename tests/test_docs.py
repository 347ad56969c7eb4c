"""The README and docs/ stay true to the code: every `invoke TASK --option` and `nox -s SESSION` they show in code
exists (read live from tasks.py and noxfile.py), every relative link points at a file, and the README stays short.
Fast: no engine, no subprocess; tasks.py is imported, noxfile.py only parsed."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import re
import sys
from functools import cache
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_MAX_LINES = 220


def doc_pages() -> list[Path]:
    """The pages whose commands are checked: the README and every page of docs/."""
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def linked_pages() -> list[Path]:
    """The pages whose links are checked."""
    return [*doc_pages(), ROOT / "slurm" / "README.md"]


def where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT).as_posix()}:{line}"


# --- reading Markdown ------------------------------------------------------------------------------------------

FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
# an inline code span: a run of backticks, then anything up to the same run (not across a blank line)
CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)((?:(?!\n[ \t]*\n).)+?)(?<!`)\1(?!`)", re.DOTALL)


def split_fences(text: str) -> tuple[list[tuple[int, str]], str]:
    """The lines inside fenced code blocks (with their line numbers), and the text with those blocks blanked out
    (line numbers kept)."""
    fenced: list[tuple[int, str]] = []
    prose: list[str] = []
    fence = None
    for number, line in enumerate(text.splitlines(), start=1):
        found = FENCE.match(line)
        if fence is None and found:
            fence = found.group(1)
            prose.append("")
        elif fence is not None and found and found.group(1)[0] == fence[0] and len(found.group(1)) >= len(fence):
            fence = None
            prose.append("")
        elif fence is not None:
            fenced.append((number, line))
            prose.append("")
        else:
            prose.append(line)
    return fenced, "\n".join(prose)


def code_snippets(path: Path) -> list[tuple[int, str]]:
    """Every line of a fenced code block and every inline code span of a page, with the line it starts on."""
    fenced, prose = split_fences(path.read_text(encoding="utf-8"))
    spans = [(prose.count("\n", 0, m.start()) + 1, " ".join(m.group(2).split())) for m in CODE_SPAN.finditer(prose)]
    return sorted(fenced + spans)


def prose_without_code(path: Path) -> str:
    """A page with its code blocks and code spans blanked out (newlines kept), so links are found in prose only."""
    _, prose = split_fences(path.read_text(encoding="utf-8"))
    return CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), prose)


# --- what the docs mention ------------------------------------------------------------------------------------

# `invoke TASK`, also as `.venv/bin/invoke TASK`; `invoke --help TASK` names no task right after `invoke`
INVOKE = re.compile(r"(?<![\w.-])invoke\s+([A-Za-z][\w-]*)")
NOX = re.compile(r"(?<![\w.-])nox\s+-s\s+([A-Za-z_][\w-]*)")
# where a command's own options end: a table cell's or a shell's `|` (not `\|`, the escaped pipe of a table cell),
# `&&`, `;`, a shell comment, or the next command
OPTIONS_END = re.compile(r"(?<!\\)\||&&|;|\s#|(?<![\w.-])(?:invoke|nox)\s")
OPTION = re.compile(r"(?<![\w-])--([A-Za-z][\w-]*)")


def invoke_mentions() -> list[tuple[str, str, list[str]]]:
    """(where, task, [options]) for every `invoke TASK ...` in the code of the README and docs/."""
    found = []
    for path in doc_pages():
        for line, snippet in code_snippets(path):
            for m in INVOKE.finditer(snippet):
                rest = snippet[m.end():]
                end = OPTIONS_END.search(rest)
                options = OPTION.findall(rest[: end.start()] if end else rest)
                found.append((where(path, line), m.group(1), options))
    return found


def nox_mentions() -> list[tuple[str, str]]:
    """(where, session) for every `nox -s SESSION` in the code of the README and docs/."""
    return [(where(path, line), m.group(1))
            for path in doc_pages() for line, snippet in code_snippets(path) for m in NOX.finditer(snippet)]


# --- what exists ----------------------------------------------------------------------------------------------


@cache
def invoke_tasks() -> dict[str, object]:
    """tasks.py's tasks by their command-line name (dashes), through Invoke's own API: no subprocess."""
    from invoke import Collection

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location("tasks", ROOT / "tasks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    collection = Collection.from_module(module)
    return {name: collection[name] for name in collection.task_names}


def task_options(task) -> set[str]:
    """The long options a task takes: each parameter `foo_bar` as `foo-bar`, booleans also as `no-foo-bar`, and
    `help`; read from the signature and from Invoke's own argument list."""
    options = {"help"}
    parameters = list(inspect.signature(task.body).parameters.values())[1:]  # the first is the context
    for parameter in parameters:
        name = parameter.name.strip("_").replace("_", "-")
        options.add(name)
        if isinstance(parameter.default, bool):
            options.add("no-" + name)
    for argument in task.get_arguments():
        long_names = [name for name in argument.names if len(name) > 1]
        options.update(long_names)
        if argument.kind is bool:
            options.update("no-" + name for name in long_names)
    return options


def is_session_decorator(node: ast.expr) -> bool:
    target = node.func if isinstance(node, ast.Call) else node
    if isinstance(target, ast.Attribute):
        return target.attr == "session" and isinstance(target.value, ast.Name) and target.value.id == "nox"
    return isinstance(target, ast.Name) and target.id == "session"


@cache
def nox_sessions() -> frozenset[str]:
    """The sessions noxfile.py defines: functions decorated with `nox.session` (their name, or its `name=`)."""
    tree = ast.parse((ROOT / "noxfile.py").read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for decorator in filter(is_session_decorator, node.decorator_list):
            name = node.name
            if isinstance(decorator, ast.Call):
                for keyword in decorator.keywords:
                    if keyword.arg == "name" and isinstance(keyword.value, ast.Constant):
                        name = str(keyword.value.value)
            names.add(name)
    return frozenset(names)


# --- the tests ------------------------------------------------------------------------------------------------


def test_the_scanner_finds_the_quick_start_commands():
    """Guards the checks below against a pattern that silently matches nothing."""
    readme = [(task, options) for place, task, options in invoke_mentions() if place.startswith("README.md:")]
    assert ("build", ["all", "profile"]) in readme, readme
    assert any(place.startswith("README.md:") and name == "tests" for place, name in nox_mentions())
    assert {"build", "check", "render"} <= set(invoke_tasks())


def test_docs_name_only_tasks_and_options_that_exist():
    tasks = invoke_tasks()
    wrong = []
    for place, name, options in invoke_mentions():
        if name not in tasks:
            wrong.append(f"{place}: invoke {name}: no such task (tasks.py has {', '.join(sorted(tasks))})")
            continue
        known = task_options(tasks[name])
        wrong.extend(f"{place}: invoke {name} --{option}: no such option"
                     for option in options if option not in known)
    assert not wrong, "\n".join(wrong)


def test_docs_name_only_nox_sessions_that_exist():
    sessions = nox_sessions()
    assert sessions, "noxfile.py: no function decorated with nox.session found"
    wrong = [f"{place}: nox -s {name}: no such session (noxfile.py has {', '.join(sorted(sessions))})"
             for place, name in nox_mentions()
             if name not in sessions and not any(name.startswith(s + "-") for s in sessions)]
    assert not wrong, "\n".join(wrong)


INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]*)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
REFERENCE_LINK = re.compile(r"^[ ]{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|#|$)", re.IGNORECASE)  # http(s):, mailto:, ..., a pure #anchor


def test_relative_links_resolve():
    wrong = []
    for path in linked_pages():
        text = prose_without_code(path)
        for m in [*INLINE_LINK.finditer(text), *REFERENCE_LINK.finditer(text)]:
            target = m.group(1)
            if EXTERNAL.match(target):
                continue
            file_part = unquote(target.split("#", 1)[0].split("?", 1)[0])
            if not (path.parent / file_part).exists():
                line = text.count("\n", 0, m.start()) + 1
                wrong.append(f"{where(path, line)}: link to {target}: no such file")
    assert not wrong, "\n".join(wrong)


def test_readme_is_short():
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, (f"README.md has {lines} lines (at most {README_MAX_LINES}): move reference "
                                       "material into docs/")
