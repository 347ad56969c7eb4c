"""Nox sessions: tests, lint, render_check (the test suite is `nox -s tests`)."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import nox

nox.options.sessions = ["lint", "render_check", "tests"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite: unit tests and integration tests against the real Docker engine. The unit tests run in a
    second pytest beside the integration tests (one process, in order: one build, one test cluster), which leave a
    core idle much of the time; their output follows.

    Options after `--` replace this: `nox -s tests -- -k convert` runs one pytest with them."""
    session.install("-e", ".[test]")
    if session.posargs:
        session.run("pytest", *session.posargs)
        return
    # not session.create_tmp(): it points TMPDIR into the checkout, where the tests' keys folders must never be
    log = Path(tempfile.mkdtemp(prefix="hpcimages-unit-tests-")) / "unit-tests.log"
    session.log(f"unit tests beside the integration tests; their output follows them ({log})")
    with log.open("w", encoding="utf-8") as out:
        unit = subprocess.Popen([str(Path(session.bin) / "pytest"), "-v", "-m", "not integration"],
                                stdout=out, stderr=subprocess.STDOUT)
        try:
            session.run("pytest", "-v", "-m", "integration")
        finally:
            code = unit.wait()
            print(log.read_text(encoding="utf-8"), flush=True)
    if code != 0:
        session.error(f"the unit tests failed (pytest exit {code}): {log}")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the package, tasks, noxfile and tests."""
    session.install("-e", ".[test]")
    session.run("ruff", "check", "src", "tests", "bench", "tasks.py", "noxfile.py")


@nox.session
def render_check(session: nox.Session) -> None:
    """Fail when committed Dockerfiles or locks differ from what matrix.toml and requirements.in give."""
    session.install("-e", ".")
    session.run("invoke", "render", "--check")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks in every built image, with the bind-model swap, C references and bare metal; tables, plots.

    Options after `--` are `invoke bench`'s (`nox -s bench -- --help` lists them): --profile, --only, --bench,
    --sizes, --repeats, --strict, ...
    """
    session.install("-e", ".[bench]")
    session.run("invoke", "bench", *session.posargs)
