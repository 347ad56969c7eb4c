"""Build the cells of a profile with the Docker engine: DAG order, parallel, incremental, fail-soft.

* A child cell starts only when its parent cell is built (or already up to date).
* A cell whose inputs are unchanged and whose image exists is skipped: the sha256 of its inputs (the
  rendered Dockerfile, every file it COPYs, the build args, the id of the image it starts FROM) is
  stored in the image's ``io.hpcimages.input-hash`` label.
* A failed cell does not stop the others; its descendants are reported as skipped.
* The first Ctrl-C stops the builds in flight within seconds (their connections are cut, and the engine stops a
  build whose client is gone), leaves every tag on the image it had, records those cells as interrupted, and
  ends the task with exit 130.
* Each cell's engine output is streamed to ``<build>/logs/<family>/<tag>.log``; a summary table is printed
  and the build report (reports.py) is written at the end.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import hashlib
import io
import json
import re
import socket
import tarfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors

from .. import tables
from ..define.lock import lock_drift, locked_pins
from ..define.matrix import Cell, Matrix, Profile, Source, select_cells
from ..define.render import dockerfile_path, drift
from ..engine import find_image
from ..errors import HpcImagesError
from ..paths import build_dir, git_revision, public_source, relative
from . import reports, wheelhouse

INPUT_LABEL = "io.hpcimages.input-hash"
COPY_RE = re.compile(r"^\s*COPY\s+(?!--from)(?:--\S+\s+)*(\S+)\s+\S+\s*$", re.M)
#: args whose values change from run to run (a port) and must not change the input hash
ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
TRANSIENT_ARGS = {"PIP_FIND_LINKS", "PIP_NO_INDEX", "MPI_SOURCE_URL", "HDF5_SOURCE_URL"}

Progress = Callable[[str], None]


@dataclass
class CellResult:
    ref: str
    image: str
    status: str = "pending"  # built | up to date | failed | skipped | interrupted
    seconds: float = 0.0
    size_bytes: int | None = None
    image_id: str | None = None
    reason: str = ""
    log: str | None = None
    aliases: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status in ("built", "up to date")


@dataclass
class BuildReport:
    profile: str
    results: list[CellResult]
    seconds: float

    interrupted: bool = False

    @property
    def failed(self) -> list[CellResult]:
        return [r for r in self.results if r.status in ("failed", "skipped", "interrupted")]

    @property
    def ok(self) -> bool:
        return not self.failed

    def table(self) -> str:
        rows = [[r.ref, r.status, f"{r.seconds:.1f}s", tables.size(r.size_bytes), r.image if r.ok else _clip(r.reason)]
                for r in self.results]
        return tables.terminal(rows, ["cell", "status", "time", "size", "image / reason"])


def _telling(line: str) -> bool:
    """A build output line that may say why a step failed (not the engine's own step bookkeeping)."""
    text = line.strip()
    return bool(text) and not text.startswith(("Step ", "---> ", "Removing intermediate container", "+ "))


def _short_command(error: str) -> str:
    """The engine's "The command '<the whole RUN>' returned a non-zero code: N" with the RUN cut to its start."""
    match = re.match(r"(?s)The command '(.*)' returned a non-zero code: (\d+)$", error)
    return f"The command '{_clip(match.group(1), 70)}' returned a non-zero code: {match.group(2)}" if match else error


def _clip(text: str, width: int = 100) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


STEP_CONTAINER_RE = re.compile(r"---> Running in ([0-9a-f]{12,64})\b")


class BuildError(HpcImagesError):
    """The build cannot start (stale generated files, unknown cells, ...)."""


class _Interrupted(Exception):
    """Ctrl-C reached the build while this cell was building."""


class _BuildAPI(docker.APIClient):
    """An API client for one cell's build whose stream another thread can cut (the first Ctrl-C)."""

    response = None
    step: str | None = None  # the engine's container of the step running now ("---> Running in <id>")

    def _stream_helper(self, response, decode=False):  # type: ignore[no-untyped-def]
        self.response = response
        return super()._stream_helper(response, decode)

    def cut(self) -> None:
        with contextlib.suppress(AttributeError, OSError):  # not streaming yet, or already over
            self.response.raw._fp.fp.raw._sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------------
# planning


def plan(matrix: Matrix, profile: str | Profile, only: Iterable[str] = ()) -> list[Cell]:
    """The cells to build: ``--only`` (the one selection rule) plus the parents the chosen cells need."""
    return select_cells(matrix, profile, only, with_parents=True)


def describe_plan(matrix: Matrix, profile: Profile, cells: list[Cell], stale: set[str] | None = None) -> str:
    """The plan as a table: each cell's tags, what it starts FROM and, where the engine could be asked (``stale``:
    the cells a build would build), whether it is up to date."""
    rows = []
    for cell in cells:
        tags = [cell.image(profile.registry), *cell.aliases(profile)]
        start = cell.parent_ref() or profile.bases[cell.python].image
        if mpi_source(profile, cell) is not None:
            start += f" (MPI compiled in {profile.mpi_build_image})"
        builder = matrix.hdf5_builder_apart(profile, cell)
        if builder is not None:
            start += f" (HDF5 compiled in {builder.ref})"
        state = "?" if stale is None else "to build" if cell.ref in stale else "up to date"
        rows.append([cell.ref, state, ", ".join(tags), start])
    if stale is None:
        summary = f"{len(cells)} cells (no Docker engine answered: which are up to date is not known)"
    else:
        summary = f"{len(cells)} cells: {len(cells) - len(stale & {c.ref for c in cells})} up to date, " \
                  f"{len(stale & {c.ref for c in cells})} to build"
    return tables.terminal(rows, ["cell", "state", "tags", "FROM"]) + f"\n{summary}"


def stale_for_plan(client: docker.DockerClient, matrix: Matrix, profile: Profile, cells: list[Cell]) -> set[str]:
    """The cells of a plan that a build would build (stale, or below a stale parent), by the engine's images."""
    return Builder(client, matrix, profile).stale_cells(cells)


def check_inputs_fresh(matrix: Matrix) -> None:
    problems = drift(matrix) + lock_drift(matrix)
    if problems:
        first = "\n".join(p.splitlines()[0] for p in problems[:10])
        more = f"\n... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise BuildError(f"generated files are out of date with matrix.toml / requirements:\n{first}{more}")


# ---------------------------------------------------------------------------------------------
# inputs of one cell


def copied_files(dockerfile: str) -> list[str]:
    return COPY_RE.findall(dockerfile)


def from_image(matrix: Matrix, profile: Profile, cell: Cell) -> tuple[str, str]:
    """(the ARG that names it, the image) a cell starts FROM: its base, or its parent cell's image."""
    if cell.family.parent is None:
        return "BASE_IMAGE", profile.bases[cell.python].image
    parent = next(c for c in matrix.cells(profile) if c.ref == cell.parent_ref())
    return "PARENT_IMAGE", parent.image(profile.registry)


def mpi_source(profile: Profile, cell: Cell) -> Source | None:
    """The MPI tarball a cell builds from: only a root-family cell of a source MPI (children inherit the MPI)."""
    return profile.sources.get(cell.mpi.key) if cell.family.parent is None else None


def hdf5_source(profile: Profile, cell: Cell) -> Source | None:
    """The HDF5 tarball a cell compiles (a family with ``hdf5``; the matrix loader made sure the profile has it)."""
    key = cell.family.hdf5_key
    return profile.sources[key] if key else None


def cell_sources(profile: Profile, cell: Cell) -> dict[str, Source]:
    """Every tarball a cell builds from, by the prefix of its build args (``MPI_SOURCE_*``, ``HDF5_SOURCE_*``)."""
    found = {"MPI": mpi_source(profile, cell), "HDF5": hdf5_source(profile, cell)}
    return {prefix: source for prefix, source in found.items() if source is not None}


def source_args(profile: Profile, cell: Cell, served: str | None) -> dict[str, str]:
    """The tarballs of a cell: served from the wheelhouse during a build, else their own URLs."""
    args = {}
    for prefix, source in cell_sources(profile, cell).items():
        args[f"{prefix}_SOURCE_URL"] = f"{served}/sources/{source.filename}" if served else source.url
        args[f"{prefix}_SOURCE_SHA256"] = source.sha256
    if mpi_source(profile, cell) is not None:
        args["MPI_BUILD_IMAGE"] = profile.mpi_build_image
    return args


def fetch_sources(profile: Profile, cell: Cell, cache: Path) -> None:
    """The cell's tarballs into the cache, each checked against its sha256 (wheelhouse.CacheError otherwise)."""
    for source in cell_sources(profile, cell).values():
        wheelhouse.fetch_source(source, cache)


def fetch_build_sdists(matrix: Matrix, cell: Cell, cache: Path) -> Path | None:
    """A cell that compiles a package (mpi4py for the standard ABI, h5py against a parallel HDF5) does it from the
    sdist of the version its lock pins, checked against the lock's hashes, put in the wheelhouse beside the wheels
    (pip's --no-binary finds it there). Returns the sdist (None: the cell compiles none)."""
    package = cell.sdist
    if package is None:
        return None
    version = locked_pins(matrix.root / str(cell.lock)).get(package)
    if version is None:
        raise wheelhouse.CacheError(f"{cell.lock} pins no {package} to build from its sdist")
    return wheelhouse.fetch_sdist(matrix.root, package, version, wheelhouse.wheelhouse_dir(cache))


def shared_compiles(matrix: Matrix, profile: Profile, cell: Cell) -> set[str]:
    """What a cell compiles in a stage other cells share (the engine's cache of that stage): its MPI, compiled in
    the profile's MPI build image, and its HDF5, compiled in the image of its MPI for the MPI build Python. Two cells
    with a key in common never build at once: the second waits, then finds the compile in the cache."""
    keys = set()
    if mpi_source(profile, cell) is not None:
        keys.add(f"mpi {cell.mpi.key}@{profile.mpi_build_image}")
    builder = matrix.hdf5_builder(profile, cell)
    if builder is not None:
        keys.add(f"hdf5 {cell.family.hdf5}@{builder.ref}")
    return keys


def hdf5_build_image(matrix: Matrix, profile: Profile, cell: Cell) -> dict[str, str]:
    """The HDF5_BUILD_IMAGE arg of a cell with HDF5 (see Matrix.hdf5_builder); none for the others."""
    builder = matrix.hdf5_builder(profile, cell)
    return {} if builder is None else {"HDF5_BUILD_IMAGE": builder.image(profile.registry)}


def build_args(matrix: Matrix, profile: Profile, cell: Cell, served: str | None) -> dict[str, str]:
    """Every build arg of a cell: the family's, FROM, the MPI tarball, and the wheelhouse when one is served."""
    name, image = from_image(matrix, profile, cell)
    args = {**cell.family.build_args, name: image, **source_args(profile, cell, served),
            **hdf5_build_image(matrix, profile, cell)}
    if served:
        args["PIP_NO_INDEX"] = "1"
        args["PIP_FIND_LINKS"] = f"{served}/wheelhouse/"
    return args


def hashed_args(profile: Profile, cell: Cell, args: dict[str, str]) -> dict[str, str]:
    """What the input hash sees: the args, plus where a tarball really comes from (the served URL is transient)."""
    origins = {f"{prefix}_SOURCE_ORIGIN": source.url for prefix, source in cell_sources(profile, cell).items()}
    return {**args, **origins}


def input_hash(matrix: Matrix, cell: Cell, args: dict[str, str], from_id: str) -> str:
    h = hashlib.sha256()
    text = dockerfile_path(matrix, cell).read_text(encoding="utf-8")
    h.update(text.encode())
    for rel in copied_files(text):
        h.update(f"\0{rel}\0".encode())
        h.update((matrix.root / rel).read_bytes())
    for key in sorted(args):
        if key not in TRANSIENT_ARGS:
            h.update(f"\0{key}={args[key]}".encode())
    h.update(f"\0FROM {from_id}".encode())
    return h.hexdigest()


def context_archive(matrix: Matrix, cell: Cell) -> tuple[io.BytesIO, str]:
    """Exactly the Dockerfile and the files it COPYs, at their repository paths (as plain docker build sees them)."""
    path = dockerfile_path(matrix, cell)
    rel_dockerfile = str(path.relative_to(matrix.root))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for rel in [rel_dockerfile, *copied_files(path.read_text(encoding="utf-8"))]:
            info = tar.gettarinfo(str(matrix.root / rel), arcname=rel)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with (matrix.root / rel).open("rb") as f:
                tar.addfile(info, f)
    buf.seek(0)
    return buf, rel_dockerfile


def provenance_labels(matrix: Matrix, profile: Profile, digest: str) -> dict[str, str]:
    labels = {
        INPUT_LABEL: digest,
        "io.hpcimages.profile": profile.name,
        "org.opencontainers.image.created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    revision = git_revision(matrix.root)
    if revision:
        labels["org.opencontainers.image.revision"] = revision
    # a public URL or nothing: never a path of the build machine (a clone from disk), never credentials
    source = public_source(matrix.root, matrix.source)
    if source:
        labels["org.opencontainers.image.source"] = source
    return labels


# ---------------------------------------------------------------------------------------------
# the build


class Builder:
    def __init__(self, client: docker.DockerClient, matrix: Matrix, profile: Profile, *, jobs: int = 2,
                 log_dir: Path | None = None, progress: Progress = print, force: bool = False) -> None:
        self.client = client
        self.matrix = matrix
        self.profile = profile
        self.jobs = max(1, jobs)
        self.log_dir = log_dir or build_dir(matrix.root) / "logs"
        self.progress = progress
        self.force = force
        self.cache = wheelhouse.cache_root()
        self._lock = threading.Lock()
        self._cancelled = threading.Event()
        self._streams: dict[str, _BuildAPI] = {}

    def say(self, message: str) -> None:
        with self._lock:
            self.progress(message)

    # -- before the engine builds anything -----------------------------------------------------

    def base_id(self, cell: Cell) -> str | None:
        base = self.profile.bases[cell.python]
        image = find_image(self.client, base.image)
        return image.id if image is not None else None

    def from_identity(self, cell: Cell, parent_id: str | None) -> str | None:
        """What the cell starts from, by image id where the engine has it: its parent or base, and the image its
        MPI or HDF5 is compiled in (a rebuilt build image changes the MPI or the HDF5)."""
        if cell.family.parent:
            builder = self.matrix.hdf5_builder_apart(self.profile, cell)
            if parent_id is None or builder is None:
                return parent_id
            found = find_image(self.client, builder.image(self.profile.registry))
            return f"{parent_id} {found.id}" if found is not None else None
        base = self.base_id(cell) or self.profile.bases[cell.python].image
        if mpi_source(self.profile, cell) is None:
            return base
        builder = find_image(self.client, self.profile.mpi_build_image)
        return f"{base} {builder.id if builder else self.profile.mpi_build_image}"

    def current_hash(self, cell: Cell, parent_id: str | None) -> str | None:
        """The input hash the cell would have now, or None if its FROM image is unknown yet."""
        from_id = self.from_identity(cell, parent_id)
        if from_id is None:
            return None
        args = build_args(self.matrix, self.profile, cell, None)
        try:
            return input_hash(self.matrix, cell, hashed_args(self.profile, cell, args), from_id)
        except FileNotFoundError:  # an input not there yet (a new family's lock before `invoke lock`): not fresh
            return None

    def up_to_date(self, cell: Cell, parent_id: str | None) -> tuple[bool, str | None]:
        image = find_image(self.client, cell.image(self.profile.registry))
        digest = self.current_hash(cell, parent_id)
        if self.force or image is None or digest is None:
            return False, None
        return image.labels.get(INPUT_LABEL) == digest, image.id

    def stale_cells(self, cells: list[Cell]) -> set[str]:
        """Cells that will (probably) be built: stale themselves, or below a stale parent or HDF5 build image."""
        stale: set[str] = set()
        ids: dict[str, str | None] = {}
        for cell in cells:
            parent = cell.parent_ref()
            if any(ref in stale for ref in self.matrix.build_needs(self.profile, cell)):
                stale.add(cell.ref)
                continue
            fresh, image_id = self.up_to_date(cell, ids.get(parent) if parent else None)
            if fresh:
                ids[cell.ref] = image_id
            else:
                stale.add(cell.ref)
        return stale

    def prepare_downloads(self, cells: list[Cell]) -> dict[str, str]:
        """Wheels and tarballs the stale cells need; returns {cell ref: reason} for cells that cannot build."""
        broken: dict[str, str] = {}
        done: dict[tuple[str, str], str | None] = {}
        for cell in cells:
            for lock in filter(None, (cell.mpi_lock, cell.lock, cell.build_lock)):
                key = (lock, cell.python)
                if key not in done:
                    self.say(f"  wheelhouse: {lock} for Python {cell.python}")
                    try:
                        wheelhouse.download_wheels(self.matrix.root / lock, cell.python, self.cache)
                        done[key] = None
                    except wheelhouse.CacheError as exc:
                        done[key] = str(exc)
                if done[key]:
                    broken.setdefault(cell.ref, done[key] or "")
            try:
                fetch_sources(self.profile, cell, self.cache)
                fetch_build_sdists(self.matrix, cell, self.cache)
            except wheelhouse.CacheError as exc:
                broken.setdefault(cell.ref, str(exc))
        return broken

    def check_registry_bases(self, cells: list[Cell]) -> None:
        """Bases pulled from a registry (no `debian` suite to bootstrap them) that the engine does not have must be
        reachable: on an air-gapped machine one message says what to do, instead of every cell failing alone."""
        missing = sorted({self.profile.bases[c.python].image for c in cells if c.family.parent is None
                          and self.profile.bases[c.python].debian is None
                          and find_image(self.client, self.profile.bases[c.python].image) is None})
        unreachable = {}
        for image in missing:
            try:
                self.client.api.inspect_distribution(image)
            except docker.errors.APIError as exc:
                unreachable[image] = str(exc.explanation or exc).strip().splitlines()[0][:160]
        if unreachable:
            first, reason = next(iter(unreachable.items()))
            raise BuildError(
                f"profile {self.profile.name!r} starts FROM {len(unreachable)} registry image(s) that this engine "
                f"does not have and cannot pull ({first}: {reason}). On a machine without registry access use "
                f"`--profile offline` (bases bootstrapped from the Debian mirror by `invoke bases`) or `--profile ci`.")

    def check_bases(self, cells: list[Cell]) -> dict[str, str]:
        broken = {}
        builder = self.profile.bases[self.profile.mpi_build_python]
        for cell in cells:
            needed = [self.profile.bases[cell.python]] if cell.family.parent is None else []
            if mpi_source(self.profile, cell) is not None:
                needed.append(builder)
            for base in needed:
                if base.debian and find_image(self.client, base.image) is None:
                    broken[cell.ref] = (f"base image {base.image} is missing: run `invoke bases --profile "
                                        f"{self.profile.name}`")
        return broken

    # -- one cell ---------------------------------------------------------------------------------

    def build_cell(self, cell: Cell, parent_id: str | None, served: str, result: CellResult) -> CellResult:
        start = time.monotonic()
        try:
            fresh, image_id = self.up_to_date(cell, parent_id)
            if fresh:
                result.status, result.image_id = "up to date", image_id
            else:
                self._engine_build(cell, parent_id, served, result)
        except BuildError as exc:
            result.status, result.reason = "failed", str(exc)
        except Exception as exc:  # one cell's failure (engine, I/O, ...) must not stop the others
            if isinstance(exc, _Interrupted) or self._cancelled.is_set():  # a cut stream ends in a protocol error
                result.status, result.reason = "interrupted", "Ctrl-C: the build was stopped; the tag keeps its image"
            else:
                result.status, result.reason = "failed", f"{exc.__class__.__name__}: {exc}"
        result.seconds = time.monotonic() - start
        if result.ok:
            image = find_image(self.client, result.image)
            result.size_bytes = image.attrs.get("Size") if image else None
        return result

    def _engine_build(self, cell: Cell, parent_id: str | None, served: str, result: CellResult) -> None:
        args = build_args(self.matrix, self.profile, cell, served)
        from_id = self.from_identity(cell, parent_id)
        builder = args.get("HDF5_BUILD_IMAGE")
        if builder and find_image(self.client, builder) is None:  # a plan without it: say so, not "pull access denied"
            raise BuildError(f"its HDF5 is compiled in {builder}, which this engine does not have: build it first "
                             f"(`invoke build --profile {self.profile.name}` builds the cells a cell needs)")
        digest = input_hash(self.matrix, cell, hashed_args(self.profile, cell, args), str(from_id))
        context, dockerfile = context_archive(self.matrix, cell)
        log_path = self.log_dir / cell.family.name / f"{cell.tag}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        result.log = relative(log_path, self.matrix.root)
        self.say(f"  building {cell.ref} (log: {result.log})")
        image_id, error = None, None
        api = _BuildAPI(**docker.utils.kwargs_from_env(), version=self.client.api.api_version,
                        timeout=self.client.api.timeout)
        with self._lock:
            if self._cancelled.is_set():
                raise _Interrupted
            self._streams[cell.ref] = api
        try:
            image_id, error = self._stream_build(api, cell, args, digest, context, dockerfile, log_path, result)
        finally:
            with self._lock:
                self._streams.pop(cell.ref, None)
            api.close()
            if self._cancelled.is_set():
                self._await_step_stopped(cell, api.step)
        if self._cancelled.is_set():
            raise _Interrupted
        if error or image_id is None:
            raise BuildError(f"{ANSI_RE.sub('', error or 'the engine returned no image')} (log: {result.log})")
        for alias in result.aliases:
            repo, _, tag = alias.rpartition(":")
            self.client.api.tag(image_id, repo, tag)
        result.status, result.image_id = "built", image_id

    def _stream_build(self, api: _BuildAPI, cell: Cell, args: dict[str, str], digest: str, context: io.BytesIO,
                      dockerfile: str, log_path: Path, result: CellResult) -> tuple[str | None, str | None]:
        """The engine's build of one cell, its output streamed into the cell's log: (image id, error)."""
        image_id, error = None, None
        with log_path.open("w", encoding="utf-8", buffering=1) as log:  # line-buffered: `tail -f` works
            log.write(f"# {cell.ref} -> {result.image}\n# build args: {json.dumps(args, sort_keys=True)}\n")
            stream = api.build(
                fileobj=context, custom_context=True, dockerfile=dockerfile, tag=result.image,
                buildargs=args, labels=provenance_labels(self.matrix, self.profile, digest),
                network_mode="host", rm=True, forcerm=True, pull=False, decode=True,
            )
            recent: collections.deque[str] = collections.deque(maxlen=3)  # what a failing step said last
            for chunk in stream:
                if "stream" in chunk:
                    text = ANSI_RE.sub("", chunk["stream"])
                    log.write(text)
                    if text.startswith("Step "):
                        self.say(f"  [{cell.ref}] {_clip(text.strip(), 140)}")
                    recent.extend(line.strip() for line in text.splitlines() if _telling(line))
                    step = STEP_CONTAINER_RE.search(text)
                    api.step = step.group(1) if step else api.step
                if "error" in chunk:
                    error = chunk["error"].strip()
                    log.write(f"ERROR: {error}\n")
                    if recent:  # e.g. configure's or h5py's own complaint, not only "returned a non-zero code"
                        error = f"{_short_command(error)}; last output: {_clip(' | '.join(recent), 400)}"
                aux = chunk.get("aux")
                if isinstance(aux, dict) and "ID" in aux:
                    image_id = aux["ID"]
            log.flush()
        return image_id, error

    def _await_step_stopped(self, cell: Cell, container: str | None, timeout: float = 60) -> None:
        """The engine stops a cut build's step container on its own, but a moment after the client is gone: wait
        for it, so that a Ctrl-C'd build has left nothing running when the tool exits."""
        deadline = time.monotonic() + timeout
        while container and time.monotonic() < deadline:
            try:
                self.client.containers.get(container)
            except docker.errors.NotFound:
                return
            except docker.errors.APIError:
                return  # the engine cannot tell: nothing more to wait for here
            time.sleep(0.2)
        if container:
            self.say(f"  [{cell.ref}] the engine has not yet stopped the step container {container[:12]}")

    # -- the whole plan ---------------------------------------------------------------------------

    def run(self, cells: list[Cell]) -> BuildReport:
        start = time.monotonic()
        results = {c.ref: CellResult(c.ref, c.image(self.profile.registry),
                                     aliases=c.aliases(self.profile)) for c in cells}
        stale = self.stale_cells(cells)
        self.check_registry_bases([c for c in cells if c.ref in stale])
        self.say(f"{len(cells)} cells in profile {self.profile.name!r}: {len(stale)} to build, "
                 f"{len(cells) - len(stale)} up to date")
        broken = self.check_bases([c for c in cells if c.ref in stale])
        if stale:
            broken.update(self.prepare_downloads([c for c in cells if c.ref in stale and c.ref not in broken]))
        for ref, reason in broken.items():
            results[ref].status, results[ref].reason = "failed", reason
            self.say(f"{ref}: failed before the build ({reason})")
        interrupted = False
        with wheelhouse.serve(self.cache) as served:
            try:
                self._schedule(cells, results, served)
            except KeyboardInterrupt:
                interrupted = True
                for r in results.values():
                    if r.status == "pending":
                        r.status, r.reason = "interrupted", "Ctrl-C before it started"
        return BuildReport(self.profile.name, [results[c.ref] for c in cells], time.monotonic() - start, interrupted)

    def cancel(self) -> None:
        """Cut every build in flight: the engine stops a build whose client is gone, so nothing gets tagged."""
        self._cancelled.set()
        with self._lock:
            streams = list(self._streams.values())
        for api in streams:
            api.cut()

    def _compiling_a_shared_stage(self, cell: Cell, running: dict[Future[CellResult], Cell]) -> bool:
        keys = shared_compiles(self.matrix, self.profile, cell)
        return any(keys & shared_compiles(self.matrix, self.profile, c) for c in running.values())

    def _schedule(self, cells: list[Cell], results: dict[str, CellResult], served: str) -> None:
        pending = [c for c in cells if results[c.ref].status == "pending"]
        running: dict[Future[CellResult], Cell] = {}
        total, done = len(cells), sum(1 for r in results.values() if r.status != "pending")
        with ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="build") as pool:
            while pending or running:
                for cell in list(pending):
                    parent = results.get(cell.parent_ref() or "")
                    needed = [results[ref] for ref in self.matrix.build_needs(self.profile, cell) if ref in results]
                    broken = next((n for n in needed if n.status in ("failed", "skipped")), None)
                    if broken is not None:
                        r = results[cell.ref]
                        role = "parent" if broken is parent else "HDF5 build image"
                        r.status, r.reason = "skipped", f"{role} {broken.ref} {broken.status}"
                        pending.remove(cell)
                        done += 1
                        self.say(f"[{done}/{total}] {cell.ref}: skipped ({r.reason})")
                    elif self._compiling_a_shared_stage(cell, running):
                        continue  # it waits, then finds that compile in the engine's cache
                    elif all(n.ok for n in needed) and len(running) < self.jobs:
                        pending.remove(cell)
                        future = pool.submit(self.build_cell, cell, parent.image_id if parent else None,
                                             served, results[cell.ref])
                        running[future] = cell
                if not running:
                    for cell in pending:  # cannot happen with a valid plan; never spin forever
                        results[cell.ref].status, results[cell.ref].reason = "skipped", "parent never built"
                    break
                try:
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                except KeyboardInterrupt:
                    self.say("interrupted: stopping the builds in flight ...")
                    self.cancel()
                    wait(running)  # seconds: each stream ends as soon as its connection is cut
                    for future, cell in running.items():
                        r = future.result()
                        self.say(f"{cell.ref}: {r.status} ({r.reason})")
                    raise
                for future in finished:
                    cell = running.pop(future)
                    r = future.result()
                    done += 1
                    detail = r.reason if r.status == "failed" else f"{r.seconds:.1f}s, {tables.size(r.size_bytes)}"
                    self.say(f"[{done}/{total}] {cell.ref}: {r.status} ({detail})")


def build(client: docker.DockerClient, matrix: Matrix, profile: str | Profile, only: Iterable[str] = (),
          jobs: int = 2, progress: Progress = print, force: bool = False, log_dir: Path | None = None) -> BuildReport:
    prof = matrix.profile(profile)
    return build_cells(client, matrix, prof, plan(matrix, prof, only), jobs=jobs, progress=progress, force=force,
                       log_dir=log_dir)


def build_cells(client: docker.DockerClient, matrix: Matrix, prof: Profile, cells: list[Cell], jobs: int = 2,
                progress: Progress = print, force: bool = False, log_dir: Path | None = None) -> BuildReport:
    """Build a planned list of cells (parents first, see ``plan``) and record them in the build report."""
    check_inputs_fresh(matrix)
    out = build_dir(matrix.root)
    reports.load_entries(out)  # an unreadable report stops the build before it starts, not after
    builder = Builder(client, matrix, prof, jobs=jobs, progress=progress, force=force, log_dir=log_dir)
    report = builder.run(cells)
    reports.record_build(out, prof.name, report.results)
    if report.interrupted:
        raise KeyboardInterrupt  # the report says which cells were interrupted; the task exits 130
    return report
