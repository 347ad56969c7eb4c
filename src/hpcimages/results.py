"""Benchmark results as data: OSU-style output parsed into rows, stored one JSON object per line.

Parsing accepts the header variants in use: the OSU Micro-Benchmarks (``# Size      Bandwidth (MB/s)``),
OMB-Py (``# Size (B)      Bandwidth (MB/s)``), mpi4py's demos (``# Size [B]  Bandwidth [MB/s]``) and the
scripts in ``bench/``.

The store is append-only: each run's rows are written with one ``write`` on a file opened for appending and
synced, so an interrupted benchmark loses at most the run in flight, and a torn last line never merges into
the next run. Reading names the file and line of anything corrupt.
"""

from __future__ import annotations

import json
import os
import re
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import HpcImagesError

COLUMN_PATTERNS = (
    ("size", re.compile(r"^size\b", re.I)),
    ("bandwidth_mbs", re.compile(r"^bandwidth\s*[\[(]\s*MB/s\s*[\])]$", re.I)),
    ("bandwidth_gbps", re.compile(r"^bandwidth\s*[\[(]\s*Gb/s\s*[\])]$", re.I)),
    ("avg_us", re.compile(r"^avg\s*latency\s*[\[(]\s*us\s*[\])]$", re.I)),
    ("min_us", re.compile(r"^min\s*latency\s*[\[(]\s*us\s*[\])]$", re.I)),
    ("max_us", re.compile(r"^max\s*latency\s*[\[(]\s*us\s*[\])]$", re.I)),
    ("latency_us", re.compile(r"^latency\s*[\[(]\s*us\s*[\])]$", re.I)),
    ("iterations", re.compile(r"^iterations$", re.I)),
)
#: the value a table shows for each benchmark, and its unit
PRIMARY = {"osu_bw": ("bandwidth_mbs", "MB/s"), "osu_latency": ("latency_us", "us"),
           "osu_allreduce": ("avg_us", "us")}
REQUIRED_KEYS = ("benchmark", "variant", "size", "value")


class ResultsError(HpcImagesError):
    """Benchmark output or a results file is not what it should be."""


@dataclass(frozen=True)
class Parsed:
    benchmark: str
    columns: tuple[str, ...]
    rows: tuple[dict[str, float], ...]
    library: str | None


def _column(label: str) -> str:
    for name, pattern in COLUMN_PATTERNS:
        if pattern.match(label.strip()):
            return name
    return re.sub(r"\W+", "_", label.strip().lower()).strip("_")


def _benchmark(titles: list[str], columns: tuple[str, ...]) -> str:
    text = " ".join(titles).lower()
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


def parse_osu(text: str) -> Parsed:
    """Rows of an OSU-style output; raises ResultsError when there is no header or no row."""
    titles: list[str] = []
    columns: tuple[str, ...] | None = None
    rows: list[dict[str, float]] = []
    library = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            body = stripped.lstrip("#").strip()
            if re.match(r"^size\b", body, re.I):
                columns = tuple(_column(label) for label in re.split(r"\s{2,}|\t+", body) if label)
            elif columns is None:
                titles.append(body)
                if library is None and re.match(r"^(MPICH Version|Intel\(R\) MPI|Open MPI|MVAPICH)", body):
                    library = body
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
        rows.append(dict(zip(columns, values, strict=True)))
    if columns is None:
        raise ResultsError("no '# Size ...' header in the benchmark output")
    if not rows:
        raise ResultsError("the benchmark output has a header but no result rows")
    benchmark = _benchmark(titles, columns)
    if benchmark == "osu_latency" and "latency_us" not in columns:
        rows = [{**row, "latency_us": row["avg_us"]} for row in rows]
    return Parsed(benchmark, columns, tuple(rows), library)


# ---------------------------------------------------------------------------------------------
# the store


def append_run(path: Path, records: list[dict]) -> None:
    """Append one run's records atomically (one write, synced); never truncates."""
    if not records:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode()
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


def load(paths: Iterable[Path], skip_corrupt: bool = False) -> tuple[list[dict], list[str]]:
    """All records of the files; corrupt lines raise (or, with skip_corrupt, are returned as warnings)."""
    records: list[dict] = []
    problems: list[str] = []
    for path in paths:
        if not path.is_file():
            raise ResultsError(f"{path}: no such results file")
        with path.open(encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    if not isinstance(record, dict):
                        raise ValueError("not a JSON object")
                    missing = [k for k in REQUIRED_KEYS if k not in record]
                    if missing:
                        raise ValueError(f"missing {', '.join(missing)}")
                except ValueError as exc:
                    problem = f"{path}:{number}: corrupt result line ({exc}): {line.strip()[:80]!r}"
                    if not skip_corrupt:
                        raise ResultsError(problem + " (fix or delete the line; --skip-corrupt ignores it)") from None
                    problems.append(problem)
                    continue
                records.append(record)
    return records, problems


def medians(records: Iterable[dict]) -> dict[tuple[str, str, str, int], float]:
    """(cell, benchmark, variant, size) -> median value over repeats."""
    groups: dict[tuple[str, str, str, int], list[float]] = defaultdict(list)
    for r in records:
        groups[(r.get("cell") or "-", r["benchmark"], r["variant"], int(r["size"]))].append(float(r["value"]))
    return {key: statistics.median(values) for key, values in groups.items()}
