"""Files that other steps read: written atomically, so a reader never sees half of one.

Every JSON report, record and generated file goes through here: the text is written to a temporary file
beside the target and moved over it in one rename.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path


def write_text(path: Path, text: str, *, sync: bool = False) -> Path:
    """Replace ``path`` with ``text`` in one rename; ``sync`` also flushes it to disk first (job records)."""
    return write_bytes(path, text.encode("utf-8"), sync=sync)


def write_bytes(path: Path, data: bytes, *, sync: bool = False) -> Path:
    """Replace ``path`` with ``data`` in one rename (the one writer under write_text and write_if_changed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            if sync:
                out.flush()
                os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_if_changed(path: Path, data: bytes) -> bool:
    """``path`` made to hold ``data``, written (in one rename) only when it holds something else: a generated tree
    rewritten with nothing changed keeps every file's time, so a sync or a web server sees no change. True when
    written."""
    try:
        if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except OSError:
        pass  # unreadable: written again
    write_bytes(path, data)
    return True


def write_json(path: Path, data: object, *, sync: bool = False) -> Path:
    """``data`` as indented JSON with sorted keys (stable diffs), written atomically."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n", sync=sync)


def expand_paths(spec: str) -> list[str]:
    """'a.jsonl,b.jsonl' or 'results/*.jsonl' -> paths (a glob that matches nothing stays, to be reported)."""
    paths: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if part:
            paths.extend(sorted(glob.glob(part)) or [part])
    return paths


def output_problem(option: str, target: Path, inputs: Iterable[Path], suffix: str) -> str | None:
    """Why ``target`` may not be written as an output named by ``option``: it is one of the inputs (the step would
    replace what it reads), a folder, or not a ``suffix`` file (``--store matrix.toml`` would append JSON lines to
    the matrix). None when it may."""
    if target.is_dir():
        return f"{option} {target}: is a directory; name a {suffix} file"
    if target.suffix != suffix:
        return f"{option} {target}: not a {suffix} file (it would be replaced by, or receive, {suffix} content)"
    resolved = target.resolve()
    if any(resolved == Path(i).resolve() for i in inputs):
        return f"{option} {target}: is one of the inputs; name another file"
    return None


@contextlib.contextmanager
def held(lock: Path) -> Iterator[None]:
    """An exclusive lock on the file ``lock`` (created) for the block: a second process asking for it waits until
    the first is done. The kernel lets it go with the process, so a crash leaves nothing to clean up."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
