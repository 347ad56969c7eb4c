from __future__ import annotations

import contextlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from hpcimages.define.matrix import Matrix
from hpcimages.files import held
from hpcimages.images.build import BuildReport
from hpcimages.paths import BUILD_DIR_VAR

ROOT = Path(__file__).resolve().parent.parent


#: fixtures that need the real engine and the built ci profile: a test that uses one is an integration test
ENGINE_FIXTURES = {"ci_built", "client", "ci_build"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that reaches the engine as ``integration`` (beside the modules that say so), so that
    ``-m "not integration"`` runs the unit tests alone and never starts a build."""
    for item in items:
        if ENGINE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session", autouse=True)
def build_dir():
    """Everything the tests make (reports, logs, .sif files, job records) goes to a build folder of their own,
    never into the checkout's build/ (a maintainer's reports and .sif files stay as they are). It is readable
    by the unprivileged users of the Apptainer and Slurm containers, which mount it."""
    path = Path(tempfile.mkdtemp(prefix="hpcimages-test-build-"))
    path.chmod(0o755)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(BUILD_DIR_VAR, str(path))
        yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """A copy of the parts of the repository the tool reads: matrix, templates, generated files, locks."""
    for name in ("matrix.toml",):
        shutil.copy(ROOT / name, tmp_path / name)
    for folder in ("dockerfiles", "pip-requirements"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    return tmp_path


@dataclass(frozen=True)
class CiBuild:
    client: docker.DockerClient
    matrix: Matrix
    report: BuildReport


@pytest.fixture(scope="session")
def ci_built(build_dir) -> CiBuild:
    """The `ci` profile built (or found up to date): what every integration test starts from."""
    from hpcimages.define import load_matrix
    from hpcimages.engine import connect
    from hpcimages.images.bases import ensure_bases
    from hpcimages.images.build import build

    client = connect()
    matrix = load_matrix(ROOT / "matrix.toml")
    # `nox -s tests` starts two pytest processes at once (tests/run_suite.py): one builds, the other then finds the
    # profile up to date instead of building the same cells beside it
    with held(Path(tempfile.gettempdir()) / "hpcimages-tests-ci-build.lock"):
        ensure_bases(client, matrix.profile("ci"))
        report = build(client, matrix, "ci", jobs=2)
    assert report.ok, report.table()
    return CiBuild(client, matrix, report)


@pytest.fixture(scope="session")
def client(ci_built: CiBuild) -> docker.DockerClient:
    """The engine, once the ci profile is built."""
    return ci_built.client


def default_sigint() -> None:
    """For a child that the test interrupts: a runner started in the background (no job control) ignores SIGINT,
    the child would inherit that, and Python installs no Ctrl-C handler where SIGINT starts out ignored."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass(frozen=True)
class CentreKeys:
    folder: Path
    password: str


@pytest.fixture(scope="session")
def centre_keys(ci_built, tmp_path_factory) -> CentreKeys:
    """The centre's signing keys (`invoke keys`), made once in a folder outside the repository with a password of
    this session; HPCIMAGES_KEYS and COSIGN_PASSWORD name them for every publish that signs (the ci profile does)."""
    import secrets

    from hpcimages.engine import connect
    from hpcimages.publish import signing

    folder = tmp_path_factory.mktemp("centre-keys") / "keys"
    password = "pw-" + secrets.token_hex(12)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(signing.PASSWORD_VAR, password)
        mp.setenv(signing.KEYS_VAR, str(folder))
        signing.create_keys(signing.Tools(connect, ROOT, progress=lambda _: None), folder, "hpcimages tests",
                            "tests@example.org", progress=lambda _: None)
        yield CentreKeys(folder, password)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def shared_registry(client, tmp_path_factory):
    """One registry for the tests that push and leave it running (publish, supply chain), each in a namespace of its
    own: a layer an earlier test pushed is mounted from that repository, not uploaded again (dockerd's cross-repository
    mount, as on a centre's registry that already holds the base layers). A test that stops, kills or empties its
    registry starts one of its own (registry_server)."""
    with registry_server(client, tmp_path_factory.mktemp("shared-registry")) as server:
        yield server


@contextlib.contextmanager
def registry_server(client: docker.DockerClient, folder: Path):
    """A real registry (Debian's docker-registry) on a free port of 127.0.0.1, stopped afterwards, and the local tags
    its pushes and pulls left (``<address>/...``) removed with it."""
    from hpcimages.publish.registry import RegistryServer

    server = RegistryServer(folder, free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
        for image in client.images.list():
            for ref in image.tags:
                if ref.startswith(server.address + "/"):
                    client.images.remove(ref, noprune=True)
