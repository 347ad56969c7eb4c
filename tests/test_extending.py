"""docs/extending.md followed as a new user would, on a copy of the repository: a family, an MPI and a site added by
the page's steps. The tool agrees at each step (the error for a missing axis value says where to add it), the plan
builds only what is new, the new family gets a check that can fail, and nothing is built here at all."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hpcimages.define import load_matrix
from hpcimages.images.check import IMPORT_REQUIREMENTS, family_checks

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration  # the plan asks the engine which cells are up to date

FAMILY = """
[families.dask-mpi]
description = "mpi4py plus dask"
template = "dask-mpi.Dockerfile.j2"
requirements = "pip-requirements/dask-mpi/requirements.in"
parent = "mpi4py"
axes = ["python", "mpi"]
"""
MPI = '\n[[axes.mpi]]\nname = "mpich"\nversion = "4.1.3"\nmethod = "wheel"\n'
NEW_CELLS = ('    "dask-mpi:py3.11-mpich4.3.2",\n', '    "mpi4py:py3.11-mpich4.1.3",\n')


def invoke(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, capture_output=True, text=True,
                          check=False, timeout=600)


def copy_repository(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(ROOT / "matrix.toml", root / "matrix.toml")
    for folder in ("dockerfiles", "pip-requirements", "slurm", "bench"):
        shutil.copytree(ROOT / folder, root / folder)
    return root


def add_to_ci_cells(text: str, *cells: str) -> str:
    head, ci = text.split("[profiles.ci]", 1)
    start = ci.index("cells = [") + len("cells = [\n")
    return head + "[profiles.ci]" + ci[:start] + "".join(cells) + ci[start:]


def test_a_family_an_mpi_and_a_site_added_by_the_page(ci_built, tmp_path):
    root = copy_repository(tmp_path)
    matrix = root / "matrix.toml"
    # a family: its template (a copy of hpc-python's, importing its own package), its requirements, its entry
    template = (root / "dockerfiles" / "hpc-python.Dockerfile.j2").read_text()
    (root / "dockerfiles" / "dask-mpi.Dockerfile.j2").write_text(
        template.replace("import scipy, h5py, numpy; print(\"scipy\", scipy.__version__, \"h5py\", h5py.__version__)",
                         "import dask; print(\"dask\", dask.__version__)"))
    (root / "pip-requirements" / "dask-mpi").mkdir()
    (root / "pip-requirements" / "dask-mpi" / "requirements.in").write_text("# dask on MPI\ndask\n")
    text = matrix.read_text()
    text = text.replace("\n[families.cuda-python]", FAMILY + "\n[families.cuda-python]", 1)
    # an MPI: the axis entry, and a cell of it in ci
    text = text.replace("\n[[axes.mpi]]", MPI + "\n[[axes.mpi]]", 1)
    matrix.write_text(add_to_ci_cells(text, *NEW_CELLS))

    # ci inherits its MPI list from offline: the error says so, and where to give the value
    refused = invoke("build", "--matrix", str(matrix), "--profile", "ci", "--dry-run")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "'mpi4py:py3.11-mpich4.1.3' matches no cell of the profile" in refused.stderr
    assert "inherited from profiles.offline.mpi through extends: give profiles.ci.mpi to change it" in refused.stderr
    text = matrix.read_text()
    head, ci = text.split("[profiles.ci]", 1)
    matrix.write_text(head + "[profiles.ci]" + ci.replace(
        'extends = "offline"\n', 'extends = "offline"\nmpi = ["mpich4.3.2", "mpich4.2.3", "mpiabi-mpich5.0.2", '
        '"openmpi5.0.11", "mpich4.1.3"]\n', 1))

    # lock (the new family's requirements, against its parent's pins), render; the plan builds the new cells only
    locked = invoke("lock", "--matrix", str(matrix), "--only", "dask-mpi")
    assert locked.returncode == 0, locked.stdout + locked.stderr
    assert "dask==" in (root / "pip-requirements/dask-mpi/requirements-py3.11.txt").read_text()
    rendered = invoke("render", "--matrix", str(matrix))
    assert rendered.returncode == 0, rendered.stdout + rendered.stderr
    assert (root / "dockerfiles/generated/dask-mpi/py3.11-mpich4.3.2/Dockerfile").is_file()
    assert (root / "dockerfiles/generated/mpi4py/py3.11-mpich4.1.3/Dockerfile").is_file()
    plan = invoke("build", "--matrix", str(matrix), "--profile", "ci", "--dry-run")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    rows = {line.split()[0]: line.split()[1:3] for line in plan.stdout.splitlines() if ":py3." in line}
    new = {"dask-mpi:py3.11-mpich4.3.2", "mpi4py:py3.11-mpich4.1.3"}
    assert {ref for ref, state in rows.items() if state == ["to", "build"]} == new, plan.stdout
    assert all(state == ["up", "to"] for ref, state in rows.items() if ref not in new), plan.stdout

    # the new family's own check: its requirements import (it has no FAMILY_CHECKS entry)
    commands = family_checks(load_matrix(matrix), "dask-mpi").commands
    assert commands and commands[-1].argv == ("python3", "-c", IMPORT_REQUIREMENTS, "dask")

    # a site: the template copied and filled in; its job writes where the cluster's nodes see
    sites = root / "slurm" / "sites"
    runs = tmp_path / "scratch" / "runs"
    site = (root / "slurm" / "site-template.toml").read_text().replace("/scratch/project0001/hpcimages/runs", str(runs))
    (sites / "mycluster.toml").write_text(site.replace('partition = "debug"', 'partition = "work"'))
    submitted = invoke("submit", "--matrix", str(matrix), "--site", "mycluster", "--bench", "hello", "--image",
                       "hpcimages/mpi4py:py3.11-mpich4.3.2", "--model", "bind", "--dry-run")
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    script = next(runs.glob("*/job.sbatch")).read_text()
    assert "#SBATCH --partition=work" in script and f"#SBATCH --output={runs}/" in script, script
    assert "BENCH=/scratch/project0001/hpcimages/bench" in script and "/opt/site/mpich/lib" in script
