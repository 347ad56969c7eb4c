"""Nox sessions: tests, lint, render_check (the test suite is `nox -s tests`)."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "render_check", "tests"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite: unit tests and integration tests against the real Docker engine, in two pytest processes
    side by side (tests/run_suite.py: the integration tests, and the unit tests beside them).

    Options after `--` replace this: `nox -s tests -- -k convert` runs one pytest with them."""
    session.install("-e", ".[test]")
    if session.posargs:
        session.run("pytest", *session.posargs)
    else:
        session.run("python", "tests/run_suite.py")


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
