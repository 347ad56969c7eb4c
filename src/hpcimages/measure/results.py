"""Benchmark results as data: OSU-style output parsed into rows, stored one JSON object per line.

Parsing accepts the header variants in use: the OSU Micro-Benchmarks (``# Size      Bandwidth (MB/s)``),
OMB-Py (``# Size (B)      Bandwidth (MB/s)``), mpi4py's demos (``# Size [B]  Bandwidth [MB/s]``) and the
scripts in ``bench/``.

A result is a ``ResultRow``: the one way a row is made (``nox -s bench`` and ``invoke collect``), written
and read back (validated: a row with a missing key or a value of the wrong type is corrupt).

The store is append-only: each run's rows are written with one ``write`` on a file opened for appending and
synced, so an interrupted benchmark loses at most the run in flight, and a torn last line never merges into
the next run. Reading names the file and line of anything corrupt.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .. import state as statefile
from ..errors import HpcImagesError
from ..validate import shown

COLUMN_PATTERNS = (
    ("size", re.compile(r"^size\b", re.I)),
    ("bandwidth_mbs", re.compile(r"^bandwidth\s*[\[(]\s*MB/s\s*[\])]$", re.I)),
    ("bandwidth_gbps", re.compile(r"^bandwidth\s*[\[(]\s*Gb/s\s*[\])]$", re.I)),
    ("avg_us", re.compile(r"^avg\s*latency\s*[\[(]\s*us\s*[\])]$", re.I)),
    ("min_us", re.compile(r"^min\s*latency\s*[\[(]\s*us\s*[\])]$", re.I)),
    ("max_us", re.compile(r"^max\s*latency\s*[\[(]\s*us\s*[\])]$", re.I)),
    ("latency_us", re.compile(r"^latency\s*[\[(]\s*us\s*[\])]$", re.I)),
    ("iterations", re.compile(r"^iterations$", re.I)),
    ("write_independent_mbs", re.compile(r"^write\s+independent\s*[\[(]\s*MB/s\s*[\])]$", re.I)),
    ("write_collective_mbs", re.compile(r"^write\s+collective\s*[\[(]\s*MB/s\s*[\])]$", re.I)),
    ("read_independent_mbs", re.compile(r"^read\s+independent\s*[\[(]\s*MB/s\s*[\])]$", re.I)),
    ("read_collective_mbs", re.compile(r"^read\s+collective\s*[\[(]\s*MB/s\s*[\])]$", re.I)),
)
#: bench/h5py_write.py prints four figures per size: each is stored as a benchmark of its own (its own tables)
H5PY_SERIES = {"h5py_write_independent": "write_independent_mbs", "h5py_write_collective": "write_collective_mbs",
               "h5py_read_independent": "read_independent_mbs", "h5py_read_collective": "read_collective_mbs"}
#: the value a table shows for each benchmark, and its unit
PRIMARY = {"osu_bw": ("bandwidth_mbs", "MB/s"), "osu_latency": ("latency_us", "us"),
           "osu_allreduce": ("avg_us", "us"), **{name: (column, "MB/s") for name, column in H5PY_SERIES.items()}}
REQUIRED_KEYS = ("benchmark", "variant", "size", "value")
#: The variant of an image run under the engine's default sandbox (bench writes it, the report compares it), and the
#: cross-memory-attach probe's answers as they appear in a row's ``sandbox`` label
DEFAULT_SANDBOX_VARIANT = "container (default sandbox)"
#: The bind-model swap's variant, by the ABI of the stand-in bound in: Intel MPI for an MPICH-ABI image, another
#: release series of Open MPI for an Open MPI image (define/matrix.Matrix.swap_host_for)
SWAP_VARIANTS = {"mpich": "container+impi", "openmpi": "container+openmpi"}
#: A Slurm site's bind-model variant: its hybrid one with this after the site's name (`<site>+hostmpi`, slurm.py)
SITE_BIND = "+hostmpi"
#: The copy ceiling's variants (bench/copy_ceiling.c), by its -k mode: host-wide, shown beside every image's osu_bw
CEILING_VARIANTS = {"memcpy": "ceiling (memcpy)", "cma": "ceiling (process_vm_readv)"}
CMA_BLOCKED = "cross-memory attach blocked"
CMA_WORKS = "cross-memory attach works"


def series_of(benchmark: str) -> list[str]:
    """The benchmarks a script's output is stored as: itself, or h5py_write's four modes."""
    return list(H5PY_SERIES) if benchmark == "h5py_write" else [benchmark]


class ResultsError(HpcImagesError):
    """Benchmark output or a results file is not what it should be."""


@dataclass(frozen=True)
class ResultRow:
    """One figure of one run: a benchmark at one message size, with its provenance.

    ``variant`` says what ran (``container``, ``bare-metal (C)``, ``<site>+hostmpi``, ...); ``cell`` is the
    image's ``family:tag`` (None on bare metal); ``job`` is set for rows collected from a Slurm job; ``extra``
    keeps the other columns of the benchmark's output (min/max latency, iterations).
    """

    benchmark: str
    variant: str
    size: int
    value: float
    metric: str = ""
    unit: str = ""
    session: str | None = None
    run_id: str | None = None
    repeat: int = 1
    date: str | None = None
    host: str | None = None
    site: str | None = None
    profile: str | None = None
    language: str | None = None
    mpi: str | None = None
    cell: str | None = None
    image: str | None = None
    image_id: str | None = None
    mpi_library: str | None = None
    mpi_library_file: str | None = None
    mpi_abi: str | None = None  # the extension mpi4py selected: mpich, openmpi, mpiabi
    command: str | None = None
    model: str | None = None
    job: str | None = None
    sandbox: str | None = None  # what a Docker run allowed beyond the engine's defaults, e.g. "cap-add SYS_PTRACE"
    layout: str | None = None  # intra-node | inter-node: where the ranks ran (from the script's placement line)
    placement: str | None = None  # "rank 0 node1 cpus 0; rank 1 node2 cpus 1": node and pinning of every rank
    transport: str | None = None  # "tcp to 10.0.0.3" or "no tcp between ranks", as the ranks saw it after the run
    settings: str | None = None  # the script's settings line: "buffer: numpy, window: 64, requests: persistent"
    looks: str | None = None  # repeats until decided: the session's plan (stats.Sequential.text), None for fixed
    extra: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: object) -> ResultRow:
        """A stored row, every field checked (state.typed: finite numbers, whole sizes, no unknown field); raises
        ValueError saying what is wrong (the loader adds file and line)."""
        try:
            return statefile.typed(cls, data, "", "")
        except statefile.StateError as exc:
            raise ValueError(str(exc)) from None

    field_checks: ClassVar[dict[str, statefile.Check]] = {
        "size": statefile.non_negative, "repeat": statefile.non_negative}


@dataclass(frozen=True)
class Parsed:
    benchmark: str
    columns: tuple[str, ...]
    rows: tuple[dict[str, float], ...]
    library: str | None
    library_file: str | None = None
    mpi_abi: str | None = None
    placement: str | None = None
    transport: str | None = None
    settings: str | None = None

    @property
    def layout(self) -> str | None:
        return layout_of(self.placement)


PLACEMENT_RE = re.compile(r"rank (\d+) (\S+) cpus (\S+)")


def layout_of(placement: str | None) -> str | None:
    """intra-node when every rank of a placement line ran on one node, inter-node otherwise (None: not printed)."""
    nodes = {node for _, node, _ in PLACEMENT_RE.findall(placement or "")}
    return None if not nodes else ("inter-node" if len(nodes) > 1 else "intra-node")


def layout_contradiction(layout: str | None, inter_node: bool) -> str | None:
    """Why a run's placement line contradicts a label that says whether its ranks spanned nodes, or None. A run
    labelled inter-node must prove it with its placement line; one labelled intra-node must not have spanned nodes."""
    if inter_node and layout != "inter-node":
        return ("labelled inter-node, but " + ("every rank ran on one node" if layout else
                                               "the benchmark printed no placement line to prove it"))
    if not inter_node and layout == "inter-node":
        return "labelled as one node's, but the ranks ran on several nodes"
    return None


def library_contradiction(library_file: str | None, host_dirs: Iterable[str], bind: bool,
                          soname: str = "") -> str | None:
    """Why a run's loaded MPI library contradicts its label, or None. A bind-model run must have loaded a file under
    one of the host MPI's directories; any other run (the image's own MPI) must not have; a run labelled with an
    ABI (``soname``: libmpi.so.12, libmpi_abi.so.1) must have loaded that file. A run whose output names no file
    proves nothing and is refused for the bind model and for an ABI label."""
    roots = [d.rstrip("/") + "/" for d in host_dirs if d]
    files = (library_file or "").split()
    from_host = [f for f in files if any(f.startswith(root) for root in roots)]
    if bind and not from_host:
        return (f"labelled as the bind model, but the benchmark loaded {library_file or 'an unnamed library'}, "
                f"not a library under {', '.join(roots) or 'the host MPI directories'}")
    if not bind and from_host:
        return f"labelled as the image's own MPI, but the benchmark loaded the host library {from_host[0]}"
    names = [f.rsplit("/", 1)[-1] for f in files]  # a source build maps the real file: libmpi.so.12.2.2
    if soname and not any(n == soname or n.startswith(soname + ".") for n in names):
        return f"labelled as a {soname} run, but the benchmark loaded {library_file or 'an unnamed library'}"
    return None


def venv_contradiction(library_file: str | None, venv: str, soname: str) -> str | None:
    """Why a bare-metal run's loaded MPI library contradicts its label, or None: it must be the venv's own wheel
    library (``soname`` under ``venv``), not another libmpi the host happens to have, which mpi4py would find as
    readily."""
    root = venv.rstrip("/") + "/"
    files = (library_file or "").split()
    names = [f.rsplit("/", 1)[-1] for f in files if f.startswith(root)]
    if not any(n == soname or n.startswith(soname + ".") for n in names):
        return (f"labelled as bare metal with the venv's {soname}, but the benchmark loaded "
                f"{library_file or 'an unnamed library'}")
    return None


def _column(label: str) -> str:
    for name, pattern in COLUMN_PATTERNS:
        if pattern.match(label.strip()):
            return name
    return re.sub(r"\W+", "_", label.strip().lower()).strip("_")


def _benchmark(titles: list[str], columns: tuple[str, ...]) -> str:
    text = " ".join(titles).lower()
    if set(H5PY_SERIES.values()) <= set(columns):
        return "h5py_write"
    if "bandwidth_mbs" in columns:
        return "osu_bi_bw" if "bi-directional" in text or "bidirectional" in text else "osu_bw"
    if "avg_us" in columns:
        # OSU 7 prints "Avg Latency(us)" for point-to-point latency too; a collective is named in the title
        named = re.search(r"\b(allreduce|reduce|bcast|allgather|alltoall|gather|scatter|barrier)\b", text)
        if named:
            return f"osu_{named.group(1)}"
        return "osu_latency" if "latency test" in text and "min_us" not in columns else "osu_allreduce"
    if "latency_us" in columns:
        return "osu_latency"
    raise ResultsError(f"unrecognised benchmark output (columns: {', '.join(columns)})")


def _row_problem(values: list[float]) -> str | None:
    """Why a row of figures is none: a value that is not finite, or a size that is not a whole number of bytes."""
    if not all(math.isfinite(v) for v in values):
        return "a value is not a finite number"
    size = values[0]
    if size < 0 or size != int(size):
        return "the size is not a whole, non-negative number of bytes"
    return None


def parse_osu(text: str) -> Parsed:
    """Rows of an OSU-style output; raises ResultsError when there is no header or no row."""
    titles: list[str] = []
    columns: tuple[str, ...] | None = None
    rows: list[dict[str, float]] = []
    library = library_file = mpi_abi = placement = transport = settings = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            body = stripped.lstrip("#").strip()
            if body.startswith("Placement: "):
                placement = body.split(":", 1)[1].strip()
            elif body.startswith("Transport: "):  # printed after the rows
                transport = body.split(":", 1)[1].strip()
            elif body.startswith(("buffer: ", "ranks: ")):  # how the script allocated and sent (see bench/)
                settings = body
            elif re.match(r"^size\b", body, re.I):
                columns = tuple(_column(label) for label in re.split(r"\s{2,}|\t+", body) if label)
            elif columns is None:
                titles.append(body)
                if library is None and re.match(r"^(MPICH Version|Intel\(R\) MPI|Open MPI|MVAPICH)", body):
                    library = body
                elif body.lower().startswith("library file:"):
                    library_file = body.split(":", 1)[1].strip()
                elif body.lower().startswith("mpi abi:"):
                    mpi_abi = body.split(":", 1)[1].strip()
            continue
        if columns is None or not stripped:
            continue
        tokens = stripped.split()
        try:
            values = [float(t) for t in tokens]
        except ValueError:
            continue  # a warning printed by the MPI library between rows
        if len(values) != len(columns):
            continue
        row_problem = _row_problem(values)
        if row_problem:  # a figure that is no figure is refused, not stored (nor a crash later)
            raise ResultsError(f"result row {shown(stripped)}: {row_problem}")
        rows.append(dict(zip(columns, values, strict=True)))
    if columns is None:
        raise ResultsError("no '# Size ...' header in the benchmark output")
    if not rows:
        raise ResultsError("the benchmark output has a header but no result rows")
    benchmark = _benchmark(titles, columns)
    if benchmark == "osu_latency" and "latency_us" not in columns:
        rows = [{**row, "latency_us": row["avg_us"]} for row in rows]
    return Parsed(benchmark, columns, tuple(rows), library, library_file, mpi_abi, placement, transport,
                  settings)


# ---------------------------------------------------------------------------------------------
# the store


def append_run(path: Path, rows: list[ResultRow]) -> None:
    """Append one run's rows atomically (one write, synced); never truncates."""
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = "".join(json.dumps(r.to_json(), sort_keys=True) + "\n" for r in rows).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size:
            with path.open("rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":  # a torn line from an interrupted writer: keep it apart
                    payload = b"\n" + payload
        os.write(fd, payload)
        os.fsync(fd)
    finally:
        os.close(fd)


def load(paths: Iterable[Path], skip_corrupt: bool = False) -> tuple[list[ResultRow], list[str]]:
    """All rows of the files; corrupt lines raise (or, with skip_corrupt, are returned as warnings)."""
    records: list[ResultRow] = []
    problems: list[str] = []
    for path in paths:
        if path.is_dir():
            raise ResultsError(f"{path}: is a directory, not a results file (name its *.jsonl files)")
        if not path.is_file():
            raise ResultsError(f"{path}: no such results file")
        try:
            lines = path.read_bytes().splitlines(keepends=True)
        except OSError as exc:
            raise ResultsError(f"{path}: cannot be read ({exc.strerror or exc})") from None
        for number, raw in enumerate(lines, 1):
            line = raw.decode("utf-8", errors="replace")  # shown in the message; the row is read strictly
            if not line.strip():
                continue
            try:
                record = ResultRow.from_json(statefile.json_line(raw.decode("utf-8")))
            except (ValueError, TypeError) as exc:
                problem = f"{path}:{number}: corrupt result line ({exc}): {line.strip()[:80]!r}"
                if not skip_corrupt:
                    raise ResultsError(problem + " (fix or delete the line; --skip-corrupt ignores it)") from None
                problems.append(problem)
                continue
            records.append(record)
    return records, problems


def medians(records: Iterable[ResultRow]) -> dict[tuple[str, str, str, int], float]:
    """(cell, benchmark, variant, size) -> median value over repeats."""
    groups: dict[tuple[str, str, str, int], list[float]] = defaultdict(list)
    for r in records:
        groups[(r.cell or "-", r.benchmark, r.variant, r.size)].append(r.value)
    return {key: statistics.median(values) for key, values in groups.items()}
