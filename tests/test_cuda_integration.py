"""The CUDA family check fails where a user on a GPU fails (issue 27): real kernels compiled for the CUDA target.

The simulator (NUMBA_ENABLE_CUDASIM=1) never lowers a kernel for the GPU, so numba-cuda 0.30.4 beside numpy 2.5
passed it while the first kernel on every GPU failed. These tests take the ci cell of the newest Python, put
that pair back into it exactly as a lock pinning it would (numpy 2.5.5 installed from its hashed block, the
image's stored locks saying 2.5.5), and require the check to fail with numba-cuda's own error; the simulator
alone, run on the same image, still passes.
"""

from __future__ import annotations

import dataclasses
import io
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from hpcimages.images.check import CUDA_SIM_KERNEL, Checker, family_checks

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
NEWEST = "cuda-python:py3.13-mpich4.3.2-cuda12.8"
BROKEN_PIN = ROOT / "tests" / "fixtures" / "cuda" / "numpy-2.5.5.txt"
LOCKS = "/usr/local/share/hpcimages/requirements"


@pytest.fixture(scope="module")
def newest(ci_built):
    return next(c for c in ci_built.matrix.cells("ci") if c.ref == NEWEST)


@pytest.fixture(scope="module")
def checker(client, ci_built):
    return Checker(client, ci_built.matrix, "ci", None, progress=lambda _: None)


def _download_wheel(dest: Path) -> None:
    """numpy 2.5.5 for CPython 3.13 on x86_64, hash-checked against the fixture (pip's configured index)."""
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                           "--python-version", "3.13", "--implementation", "cp",
                           "--platform", "manylinux_2_28_x86_64", "--require-hashes", "-r", str(BROKEN_PIN),
                           "-d", str(dest)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and list(dest.glob("numpy-2.5.5-*.whl")), proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def broken_pair(client, ci_built, newest, tmp_path_factory):
    """The newest cell as a lock pinning numpy 2.5.5 beside numba-cuda 0.30.4 would have built it."""
    context = tmp_path_factory.mktemp("broken-cuda-pair")
    _download_wheel(context / "wheels")
    shutil.copy(BROKEN_PIN, context / "numpy.txt")
    image = newest.image(ci_built.matrix.profile("ci").registry)
    (context / "Dockerfile").write_text(
        f"FROM {image}\n"
        "COPY numpy.txt wheels /tmp/broken/\n"
        "RUN python3 -m pip install --no-cache-dir --no-index --find-links /tmp/broken --no-deps --require-hashes "
        "-r /tmp/broken/numpy.txt \\\n"
        f" && sed -i 's/^numpy==[0-9.]* /numpy==2.5.5 /' {LOCKS}/*.txt && rm -rf /tmp/broken\n")
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        tar.add(context, arcname=".")
    archive.seek(0)
    tag = "hpcimages-test/cuda-fixture:numpy-2.5.5"
    client.images.build(fileobj=archive, custom_context=True, tag=tag, network_mode="none", rm=True)
    yield tag
    client.images.remove(tag, force=True)


def test_the_newest_python_cell_compiles_real_kernels_for_every_claimed_capability(checker, newest):
    result = checker.check_cell(newest)
    family = result.checks["family"]
    assert family.status == "pass", family.reason
    sms = " ".join(f"sm_{cc.replace('.', '')}" for cc in newest.family.compute_capabilities)
    assert re.search(rf"compiled 3 kernels \(axpy, block_sum, numpy_inside\) for {sms} to PTX with NVVM in "
                     r"[0-9.]+ s", family.reason), family.reason
    assert "cuda-sim vector add ok (the simulator runs kernels as Python)" in family.reason
    assert result.checks["labels"].status == "pass", result.checks["labels"].reason


def test_numba_cuda_with_numpy_2_5_fails_the_check_with_the_compilers_own_error(checker, newest, broken_pair):
    result = checker.check_cell(newest, broken_pair)
    # the image is exactly what its locks say: only compiling for the GPU can tell
    assert result.checks["contents"].status == "pass", result.checks["contents"].reason
    family = result.checks["family"]
    assert family.status == "fail" and not result.passed
    assert family.reason.startswith("kernels compiled for the CUDA target: exit 1"), family.reason
    assert "error: kernel axpy for sm_70 did not compile" in family.reason, family.reason
    assert "AttributeError: module 'numpy' has no attribute 'row_stack'" in family.reason, family.reason


def test_the_simulator_alone_cannot_see_the_broken_pair(checker, broken_pair):
    code, out = checker.run(broken_pair, CUDA_SIM_KERNEL.argv, env=dict(CUDA_SIM_KERNEL.env))
    assert code == 0 and "vector add ok" in out, out


def test_a_capability_the_toolkit_cannot_compile_for_fails_the_check(client, ci_built, newest):
    claims = dataclasses.replace(newest.family, compute_capabilities=("3.0", "9.0"))
    matrix = dataclasses.replace(ci_built.matrix, families={**ci_built.matrix.families, claims.name: claims})
    cell = dataclasses.replace(newest, family=claims)
    checker = Checker(client, matrix, "ci", None, progress=lambda _: None)
    image = client.images.get(newest.image(ci_built.matrix.profile("ci").registry))
    family = checker.check_family(family_checks(matrix, claims.name), image.id, cell)
    assert family.status == "fail"
    assert "error: the toolkit cannot compile for sm_30 (it compiles for sm_50" in family.reason, family.reason
