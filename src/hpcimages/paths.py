"""Where the tool writes: the one place that knows the build folder (and the checkout's git revision).

Everything a run produces (logs, reports, ``.sif`` files, job records, bench venvs) goes under the build
folder: ``<repository>/build`` unless ``HPCIMAGES_BUILD_DIR`` names another (the test suite uses its own).
"""

from __future__ import annotations

import os
import re
import subprocess
import urllib.parse
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


#: a public source URL as a label and a provenance record carry it: https, a host, a path; no credentials, query
#: or fragment
PUBLIC_URL_RE = re.compile(r"https://[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?(/[A-Za-z0-9._~-]+)+/?")
SCP_REMOTE_RE = re.compile(r"^(?:[^@/:]+@)?(?P<host>[A-Za-z0-9.-]+\.[A-Za-z]{2,}):(?!//)(?P<path>[^\s]+)$")


def public_url_problem(value: object) -> str | None:
    """Why a configured source URL is not a public one (``[project] source``), or None."""
    if not isinstance(value, str):
        return f"must be an https URL (a string), got {type(value).__name__}"
    if "@" in value.split("//", 1)[-1].split("/", 1)[0]:
        return "must not carry credentials (user@ or user:token@ before the host)"
    if not PUBLIC_URL_RE.fullmatch(value) or len(value) > 300:
        return "must be https://HOST/PATH (e.g. https://github.com/centre/hpcimages), no query or fragment"
    return None


def normalised_remote(remote: str) -> str:
    """A git remote as a public https URL, or "" when it names no public place: an SSH remote
    (``git@host:org/repo.git``, ``ssh://git@host/org/repo``) becomes ``https://host/org/repo``; credentials in an
    https remote are dropped; a local path or ``file://`` remote (a clone from disk) is no public source."""
    remote = remote.strip()
    scp = SCP_REMOTE_RE.match(remote)
    if scp and "://" not in remote:
        host, path = scp.group("host"), scp.group("path")
    else:
        try:
            parsed = urllib.parse.urlsplit(remote)
            port = parsed.port
        except ValueError:  # a malformed remote names no public source
            return ""
        if parsed.scheme not in ("https", "ssh", "git") or not parsed.hostname:
            return ""  # http is no public https source; a path or file:// is the build machine's
        # an https port belongs to the web address; an SSH or git port does not
        host = f"{parsed.hostname}:{port}" if parsed.scheme == "https" and port else parsed.hostname
        path = parsed.path
    path = path.strip("/").removesuffix(".git")
    candidate = f"https://{host.lower()}/{path}"
    return candidate if path and public_url_problem(candidate) is None else ""


def public_source(root: Path, configured: str = "") -> str:
    """The project's public source URL for labels and provenance: the configured one, else the checkout's
    ``remote.origin.url`` normalised, else "" (absent rather than a path of the build machine)."""
    return configured or normalised_remote(git(root, "config", "--get", "remote.origin.url"))


def without_credentials(url: str) -> str:
    """A URL as a published document may name it: any ``user:password@`` before the host removed (an index or a
    mirror configured with a token must not put the token into a signed SBOM)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return ""
    if not parts.scheme or "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
