"""Open MPI images (issue 31) where no engine is needed: the image's own launcher settings, a site without Open MPI
saying so before anything starts, the benchmarks' swap variant, the swap partner of each Open MPI image and
how a bound Open MPI is told where it lies."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from hpcimages.cli import exit_code
from hpcimages.cluster import commands as cluster
from hpcimages.define import load_matrix
from hpcimages.images.check import Checker
from hpcimages.measure import bench
from hpcimages.mpirun import HOST_MPI_MOUNT, IMAGE_MPI, Binding, image_mpi, launch_settings

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


def test_submit_of_an_open_mpi_image_to_a_site_without_open_mpi_stops_before_anything(capsys):
    image = OPEN_MPI.image(M.profile("ci").registry)
    assert exit_code(cluster.submit, matrix=str(ROOT / "matrix.toml"), site="cray-ex", bench="hello", image=image,
                     dry_run=True) == 2
    err = capsys.readouterr().err
    assert "is an Open MPI image and site cray-ex says nothing of Open MPI: add an [open_mpi] table" in err
    assert "Traceback" not in err


def test_an_open_mpi_image_is_swapped_to_an_open_mpi_of_the_other_series():
    """Open MPI promises its ABI within a release series: the check crosses it, both ways; an MPICH-ABI image keeps
    the swap = true stand-in."""
    five = next(c for c in M.cells("offline") if c.mpi.name == "openmpi" and c.mpi.version.startswith("5."))
    four = next(c for c in M.cells("offline") if c.mpi.name == "openmpi" and c.mpi.version.startswith("4."))
    assert M.swap_host_for(five.mpi).name == "openmpi-4.1.8"
    assert M.swap_host_for(four.mpi).name == "openmpi-5.0.11"
    mpich = next(c for c in M.cells("ci") if c.mpi.abi == "mpich")
    assert M.swap_host_for(mpich.mpi) is M.swap_host and M.swap_host.abi == "mpich"
    # with only a stand-in of the image's own version there is nothing to swap to (it would prove nothing)
    alone = dataclasses.replace(M, host_mpis={n: h for n, h in M.host_mpis.items() if n != "openmpi-4.1.8"})
    assert alone.swap_host_for(five.mpi) is None
    assert alone.swap_host_for(four.mpi).name == "openmpi-5.0.11"
    outcome = Checker(None, alone, "offline", None).check_bind_swap(five, "sha256:x", {})
    assert outcome.status == "skip" and "no Open MPI stand-in of another version" in outcome.reason


def test_a_bound_open_mpi_is_told_where_it_lies_inside_and_to_its_launcher_outside(tmp_path):
    open_mpi = Binding(tmp_path, settings={"OMPI_ALLOW_RUN_AS_ROOT": "1"}, name="openmpi-4.1.8",
                       soname="libmpi.so.40")
    assert open_mpi.env == {"LD_LIBRARY_PATH": f"{HOST_MPI_MOUNT}/lib", "OPAL_PREFIX": HOST_MPI_MOUNT,
                            "OMPI_ALLOW_RUN_AS_ROOT": "1"}
    outside = open_mpi.apptainer_env("/site/openmpi")
    assert outside["APPTAINERENV_OPAL_PREFIX"] == HOST_MPI_MOUNT and outside["OPAL_PREFIX"] == "/site/openmpi"
    mpich = Binding(tmp_path, name="impi-rt-2021.17.2")
    assert "OPAL_PREFIX" not in mpich.env and "OPAL_PREFIX" not in mpich.apptainer_env("/site/impi")
    assert "OPAL_PREFIX" not in image_mpi("openmpi", "4.1.8").env  # the image's own: its own ENV says where


def test_the_swap_partner_is_the_newest_of_the_other_series_whatever_the_declaration_order(tmp_path):
    older = dataclasses.replace(M.host_mpis["openmpi-4.1.8"], version="4.1.6")
    hosts = {"openmpi-4.1.6": older, **M.host_mpis}  # declared first, older
    more = dataclasses.replace(M, host_mpis=hosts)
    five = next(c for c in M.cells("offline") if c.mpi.name == "openmpi" and c.mpi.version.startswith("5."))
    assert more.swap_host_for(five.mpi).name == "openmpi-4.1.8"
    # the MPICH-ABI swap binding reaches its cells whatever name the binding carries
    checker = Checker(None, M, "ci", Binding(tmp_path, name="renamed"))
    mpich = next(c for c in M.cells("ci") if c.mpi.abi == "mpich")
    assert checker.swap_for(mpich) is not None and checker.swap_for(mpich)[0] is M.swap_host
    outcome = Checker(None, M, "offline", None).check_bind_swap(five, "sha256:x", {})
    assert outcome.status == "skip" and "openmpi-4.1.8 was not prepared" in outcome.reason


def test_the_bench_swaps_an_open_mpi_image_to_the_other_series_and_names_the_variant_by_its_abi():
    """`nox -s bench` measures the same swap `invoke check` proves: 5.0.x images bind Open MPI 4.1.8 as
    container+openmpi, MPICH-ABI images Intel MPI as container+impi; a stand-in not prepared gives no variant."""
    five = next(c for c in M.cells("offline") if c.mpi.name == "openmpi" and c.mpi.version.startswith("5."))
    mpich = next(c for c in M.cells("ci") if c.mpi.abi == "mpich")
    four_folder = Binding(Path("/cache/openmpi-4.1.8"), soname="libmpi.so.40")
    impi = Binding(Path("/cache/impi"))
    swaps = {"openmpi-4.1.8": four_folder, M.swap_host.name: impi}
    assert bench.swap_of(M, five, swaps) == ("container+openmpi", four_folder)
    assert bench.swap_of(M, mpich, swaps) == ("container+impi", impi)
    assert bench.swap_of(M, five, {M.swap_host.name: impi}) is None
    variant = bench.swapped(five, "img", "sha256:x", bench.swap_of(M, five, swaps))
    assert variant.binding.env["OPAL_PREFIX"] == HOST_MPI_MOUNT and variant.binding.launcher.startswith(HOST_MPI_MOUNT)



def test_an_open_mpi_image_is_not_described_as_mpich():
    """The family's description names the cell's MPI in the image label; MPICH images keep their words."""
    mpich = next(c for c in M.cells("ci") if c.family.name == "mpi4py" and c.mpi.abi == "mpich")
    assert OPEN_MPI.description == "Python + Open MPI + mpi4py + numpy: the classic MPI base image"
    assert mpich.description == "Python + MPICH + mpi4py + numpy: the classic MPI base image"
    rendered = (ROOT / "dockerfiles/generated/mpi4py" / OPEN_MPI.tag / "Dockerfile").read_text()
    assert 'org.opencontainers.image.description="Python + Open MPI + mpi4py' in rendered
