"""Where the tool writes: the one place that knows the build folder (and the checkout's git revision).

Everything a run produces (logs, reports, ``.sif`` files, job records, bench venvs) goes under the build
folder: ``<repository>/build`` unless ``HPCIMAGES_BUILD_DIR`` names another (the test suite uses its own).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

BUILD_DIR_VAR = "HPCIMAGES_BUILD_DIR"


def repository_root(matrix: str | Path) -> Path:
    """The repository is the folder of its matrix file: the one way every task finds it."""
    return Path(matrix).resolve().parent


def build_dir(root: Path) -> Path:
    override = os.environ.get(BUILD_DIR_VAR)
    return Path(override).resolve() if override else root / "build"


def relative(path: Path, root: Path) -> str:
    """A path as a message shows it: relative to the repository when it lies inside it."""
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def git_revision(root: Path) -> str:
    """HEAD's sha, with ``-dirty`` when tracked files differ from it; empty outside a git checkout."""
    head = git(root, "rev-parse", "HEAD")
    if not head:
        return ""
    return head + ("-dirty" if git(root, "status", "--porcelain", "--untracked-files=no") else "")


def git(root: Path, *args: str) -> str:
    try:
        proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)
    except OSError:
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


def build_dir_problem(root: Path) -> str | None:
    """Why the build folder cannot take the reports a step writes (checked before a step that contacts anything)."""
    folder = build_dir(root)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        return f"the build folder {folder} cannot be made: {existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"the build folder {folder} is not writable ({existing}): set {BUILD_DIR_VAR} to a folder you can write"
    return None
