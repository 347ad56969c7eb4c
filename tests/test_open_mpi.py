"""Open MPI images (issue 31, first slice) where no engine is needed: the image's own launcher settings, and the
stages that do not handle Open MPI yet saying so before they start anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcimages.cli import UsageError, exit_code, without_open_mpi
from hpcimages.cluster import commands as cluster
from hpcimages.define import load_matrix
from hpcimages.measure import commands as measure
from hpcimages.mpirun import IMAGE_MPI, image_mpi, launch_settings

ROOT = Path(__file__).resolve().parent.parent
M = load_matrix(ROOT / "matrix.toml")
OPEN_MPI = next(c for c in M.cells("ci") if c.mpi.abi == "openmpi")


def test_open_mpi_ranks_start_as_root_in_a_container_and_4_x_gets_an_rsh_agent():
    five, four = launch_settings("openmpi", "5.0.11"), launch_settings("openmpi", "4.1.8")
    assert five == {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    assert four == {**five, "OMPI_MCA_plm_rsh_agent": "false"}
    assert launch_settings("mpich", "4.3.2") == {} and launch_settings("mpi", "5.0.2") == {}
    assert image_mpi("mpich", "4.3.2") is IMAGE_MPI and IMAGE_MPI.env == {}
    own = image_mpi("openmpi", "5.0.11")
    assert own.env == five and not own.bound and own.launcher == "mpiexec"


def test_stages_without_open_mpi_name_the_cells_they_leave_out(capsys):
    mpich = next(c for c in M.cells("ci") if c.mpi.abi == "mpich")
    assert without_open_mpi([mpich, OPEN_MPI], "benchmarked") == [mpich]
    assert f"note: left out, Open MPI images are not benchmarked yet: {OPEN_MPI.ref}" in capsys.readouterr().out
    with pytest.raises(UsageError, match="Open MPI images are not in the ABI table yet"):
        without_open_mpi([OPEN_MPI], "in the ABI table")


def test_bench_and_submit_of_an_open_mpi_image_stop_before_anything(capsys, tmp_path):
    assert exit_code(measure.bench, matrix=str(ROOT / "matrix.toml"), profile="ci", only=[OPEN_MPI.ref],
                     results=str(tmp_path / "r.jsonl")) == 2
    assert "Open MPI images are not benchmarked yet" in capsys.readouterr().err
    assert not (tmp_path / "r.jsonl").exists()
    image = OPEN_MPI.image(M.profile("ci").registry)
    assert exit_code(cluster.submit, matrix=str(ROOT / "matrix.toml"), site="local", bench="hello", image=image,
                     dry_run=True) == 2
    err = capsys.readouterr().err
    assert "is an Open MPI image: its Slurm jobs" in err and "Traceback" not in err
