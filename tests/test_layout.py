"""The package follows the pipeline: a stage imports only from the stages before it and from the shared
modules, which import no stage; so there is no import circle and the data flow is visible in the tree."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "hpcimages"
STAGES = ("define", "images", "sif", "measure", "abi", "cluster", "publish")
SHARED = ("cli", "engine", "errors", "files", "paths", "validate")


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the hpcimages modules a file imports (relative imports resolved)."""
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = [*base, *(node.module.split(".") if node.module else [])]
            if module[:1] == ["hpcimages"]:
                found.update(".".join([*module, a.name]) for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("hpcimages"))
    return found


def rank(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None
    if parts[1] in SHARED:
        return -1
    return STAGES.index(parts[1]) if parts[1] in STAGES else None


def test_every_module_belongs_to_a_stage_or_is_shared():
    top = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("__")}
    assert top == set(SHARED), top
    assert folders == set(STAGES), folders


def test_imports_only_flow_from_earlier_stages():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "incontainer" in path.parts:  # runs inside the images, imports nothing of ours
            continue
        here = rank("hpcimages." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
        for module in imported_modules(path):
            there = rank(module)
            if here is not None and there is not None and there > here:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert not wrong, "\n".join(wrong)
