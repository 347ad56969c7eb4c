"""The package follows the pipeline: a stage imports only the stages it is declared to build on (a DAG, below) and
the shared modules, which import no stage; no module imports another stage's ``commands`` (the task entry points).
So there is no import circle, a sideways import fails unless it is declared here, and the data flow is visible in
the tree. The graph is drawn in docs/extending.md."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "hpcimages"
#: Which stages each stage may import (besides the shared modules). sif and measure are siblings: neither needs the
#: other. A new edge is a design decision: add it here, with the reason, and to docs/extending.md.
DEPENDS: dict[str, set[str]] = {
    "define": set(),                                  # the matrix, profiles, sites, stand-ins, locks, renderers
    "images": {"define"},                             # build, check, stand-ins installed, wheelhouse, reports
    "sif": {"define", "images"},                      # .sif conversion of built (and checked) images
    "measure": {"define", "images"},                  # benchmarks in built images; results
    "abi": {"define", "images", "sif", "measure"},    # the ABI table: runs .sif files, parses benchmark output
    "cluster": {"define", "images", "sif", "measure"},  # Slurm jobs of .sif files, collected into results
    "publish": {"define", "images", "sif", "measure", "abi"},  # the catalogue shows checks, results, ABI rows
}
STAGES = tuple(DEPENDS)
SHARED = ("cli", "engine", "errors", "files", "mpirun", "parallel", "paths", "state", "stats", "tables",
          "validate")


def imported_modules(path: Path, source: str | None = None) -> set[str]:
    """Absolute names of the hpcimages modules a file (or ``source`` given as its text) imports, relative imports
    resolved."""
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = [*base, *(node.module.split(".") if node.module else [])]
            if module[:1] == ["hpcimages"]:
                found.update(".".join([*module, a.name]) for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("hpcimages"))
    return found


def stage_of(module: str) -> str | None:
    """The stage folder of an hpcimages module ("shared" for the shared modules, None for the package itself)."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    return "shared" if parts[1] in SHARED else parts[1] if parts[1] in STAGES else None


def wrong_imports(path: Path, source: str | None = None) -> list[str]:
    here = stage_of("hpcimages." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
    wrong = []
    for module in imported_modules(path, source):
        there = stage_of(module)
        if here is None or there is None or there == here:
            continue
        if there != "shared" and (here == "shared" or there not in DEPENDS[here]):
            wrong.append(f"{path.relative_to(PACKAGE)} imports {module} ({here} -> {there} is not declared)")
        elif there != "shared" and module.split(".")[2:3] == ["commands"]:
            wrong.append(f"{path.relative_to(PACKAGE)} imports {module}: a stage's commands are entry points only")
    return wrong


def test_the_declared_graph_has_no_cycle():
    done: set[str] = set()
    while len(done) < len(DEPENDS):
        ready = [s for s, needs in DEPENDS.items() if s not in done and needs <= done]
        assert ready, f"a cycle among {set(DEPENDS) - done}"
        done.update(ready)


def test_every_module_belongs_to_a_stage_or_is_shared():
    top = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("__")}
    assert top == set(SHARED), top
    assert folders == set(STAGES), folders


def test_imports_follow_the_declared_graph():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "incontainer" in path.parts:  # runs inside the images, imports nothing of ours
            continue
        wrong += wrong_imports(path)
    assert not wrong, "\n".join(wrong)


def test_a_sideways_import_is_caught():
    """The rule can fail: measure importing sif (siblings), a shared module importing a stage, and publish importing
    measure's commands; a declared edge passes."""
    sideways = wrong_imports(PACKAGE / "measure" / "x.py", "from ..sif import convert")
    assert "measure -> sif is not declared" in sideways[0]
    assert "shared -> images" in wrong_imports(PACKAGE / "mpirun.py", "from .images import hostmpi")[0]
    assert "entry points only" in wrong_imports(PACKAGE / "publish" / "y.py", "from ..measure.commands import x")[0]
    assert wrong_imports(PACKAGE / "abi" / "z.py", "from ..measure.results import parse_osu") == []


def test_starting_a_task_loads_no_schema_validator():
    """Every `invoke` command imports every stage's tasks; jsonschema's format checkers (through cyclonedx's validator)
    took 1.5-2 s of a 3.6 s start, paid by each command and by every test that runs one. Only publishing and
    verifying validate, so the validator is imported where it is used."""
    import subprocess
    import sys

    probe = ("import sys, tasks; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in {'jsonschema', 'rfc3987_syntax'}))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=PACKAGE.parent.parent, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]", out
