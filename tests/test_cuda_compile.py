"""bench/cuda_compile.py's own rules (no numba here: the compile itself is tested in the images,
tests/test_cuda_integration.py), and how the family check reports what a command said."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest

from hpcimages.define import load_matrix
from hpcimages.images.check import (
    CUDA_COMPILE,
    CUDA_SIM_KERNEL,
    Checker,
    FamilyCommand,
    _failure,
    _reported,
    check_labels,
    family_argv,
    family_checks,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def script(monkeypatch):
    spec = importlib.util.spec_from_file_location("cuda_compile", ROOT / "bench" / "cuda_compile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compute_capabilities_are_major_dot_minor(script):
    assert script.parse_ccs("7.0, 9.0,12.0") == [(7, 0), (9, 0), (12, 0)]
    assert script.parse_ccs("8.0 8.6") == [(8, 0), (8, 6)]
    for bad in ("sm_90", "9", "9.0a", "09.0", "9.0;id", ""):
        with pytest.raises(SystemExit, match="compute capabilit"):
            script.parse_ccs(bad)


def test_the_script_and_the_matrix_read_a_compute_capability_alike(script):
    """The script runs in images without hpcimages, so it carries the matrix's rule as a pattern of its own."""
    from hpcimages.define.matrix import COMPUTE_CAPABILITY_RE

    for sample in ("7.0", "9.0", "12.0", "10.1", "99.9", "9", "09.0", "0.5", "9.0a", "sm_90", "100.0", "9.10", ""):
        assert bool(COMPUTE_CAPABILITY_RE.fullmatch(sample)) == bool(script.CC_RE.match(sample)), sample


@pytest.mark.parametrize("cuda, installed, fragment", [
    ("12.8", {"cuda-bindings": "13.5.0", "nvidia-cuda-nvrtc-cu12": "12.8.93"},
     "cuda-bindings 13.5.0 is for CUDA 13 (a driver of that major), but the toolkit wheels are CUDA 12.8.93: "
     "lock cuda-bindings 12.x (numba-cuda[cu12])"),
    ("12.8", {"cuda-bindings": "12.9.10", "nvidia-cuda-nvrtc-cu12": "12.8.93"}, None),
    ("12.6", {"cuda-bindings": "12.9.10", "nvidia-cuda-nvrtc-cu12": "12.6.85"}, None),
    (None, {"cuda-bindings": "12.9.10", "nvidia-cuda-nvrtc-cu12": "12.8.93"}, None),
    ("12.6", {"cuda-bindings": "12.9.10", "nvidia-cuda-nvrtc-cu12": "12.8.93"},
     "the toolkit wheels are CUDA 12.8.93 (nvidia-cuda-nvrtc-cu12), the image claims CUDA 12.6"),
    ("12.8", {"nvidia-cuda-nvrtc-cu12": "12.8.93"}, "cuda-bindings is not installed"),
    ("12.8", {"cuda-bindings": "12.9.10"}, "nvidia-cuda-nvrtc-cu12 is not installed"),
    (None, {"cuda-bindings": "12.9.10"}, "nvidia-cuda-nvrtc-cu12 is not installed"),
    (None, {"cuda-bindings": "12.9.10", "nvidia-cuda-nvrtc-cu13": "13.0.88"},
     "cuda-bindings 12.9.10 is for CUDA 12 (a driver of that major), but the toolkit wheels are CUDA 13.0.88"),
    ("13.0", {"cuda-bindings": "12.9.10", "nvidia-cuda-nvrtc": "13.0.88"},
     "cuda-bindings 12.9.10 is for CUDA 12 (a driver of that major), but the toolkit wheels are CUDA 13.0.88: "
     "lock cuda-bindings 13.x (numba-cuda[cu13])"),
])
def test_the_toolkit_is_the_images_cuda_and_cuda_bindings_of_its_major(script, monkeypatch, cuda, installed,
                                                                       fragment):
    monkeypatch.setattr(script, "version", lambda name: installed.get(name, "not installed"))
    problem = script.toolkit_problem(cuda)
    assert problem == fragment if fragment is None else problem.startswith(fragment), problem


def test_a_cuda_version_that_is_not_one_is_refused(script):
    with pytest.raises(SystemExit, match="--cuda '12' is not a CUDA version"):
        script.main(["--cc", "9.0", "--cuda", "12"])


def test_the_compilers_message_leads_with_what_went_wrong(script):
    try:
        raise ValueError("No implementation of function Function(<built-in function abs>)\n\nDuring: typing")
    except ValueError as exc:
        message = script.compiler_message(exc)
    first, _, frames = message.partition("\n")
    assert first == "ValueError: No implementation of function Function(<built-in function abs>)"
    assert "Traceback" in frames and "During: typing" in frames


def test_without_numba_the_script_says_what_is_missing(script, monkeypatch):
    monkeypatch.setitem(sys.modules, "numba", None)  # import numba raises ImportError
    with pytest.raises(SystemExit, match="numba with CUDA support is not installed"):
        script.main(["--cc", "9.0"])


def test_a_failed_command_is_reported_by_its_error_and_the_compilers_last_words():
    # the order a container's log has with line-buffered streams: what passed, then the error block
    out = ("# numba-cuda 0.30.4, numpy 2.5.5\n# the toolkit compiles for sm_50 sm_90\naxpy          sm_70   ok\n"
           "error: kernel block_sum for sm_70 did not compile: AttributeError: module 'numpy' has no attribute "
           "'row_stack'\n"
           '  File "a.py", line 1, in <module>\n    first()\n  File "b.py", line 2, in first\n    second()\n'
           '  File "arrayobj.py", line 6860, in <module>\n'
           "    overload(np.row_stack)(impl_np_vstack)\n    ^^^^^^^^^^^^\n"
           "AttributeError: module 'numpy' has no attribute 'row_stack'\n")
    reason = _failure(out)
    assert reason.startswith("error: kernel block_sum for sm_70 did not compile: AttributeError: module 'numpy' "
                             "has no attribute 'row_stack'")
    assert "overload(np.row_stack)" in reason and "a.py" not in reason  # the last frames, not the whole traceback
    assert "^^^" not in reason
    assert "axpy" not in reason and "# the toolkit" not in reason
    assert _failure("no error line\nlast words\n") == "no error line | last words"


def test_a_passed_command_reports_its_summary_line_or_its_name():
    out = "axpy sm_90 ok\ncompiled 3 kernels (axpy) for sm_90 to PTX with NVVM in 1.2 s\n"
    assert _reported(CUDA_COMPILE, out) == "compiled 3 kernels (axpy) for sm_90 to PTX with NVVM in 1.2 s"
    assert _reported(CUDA_SIM_KERNEL, "cuda-sim vector add ok (x)\n") == "cuda-sim vector add ok (x)"
    assert _reported(CUDA_COMPILE, "nothing to quote\n") == CUDA_COMPILE.what
    assert _reported(FamilyCommand("plain", ("true",), ()), "compiled\n") == "plain"


M = load_matrix(ROOT / "matrix.toml")
CUDA_CELL = next(c for c in M.cells("ci") if c.ref == "cuda-python:py3.13-mpich4.3.2-cuda12.8")


def test_the_compile_runs_for_the_cells_claims_and_cuda_version():
    assert family_argv(CUDA_COMPILE, CUDA_CELL) == [
        "python3", "/opt/hpcimages-bench/cuda_compile.py", "--cc", "7.0,7.5,8.0,8.6,8.9,9.0", "--cuda", "12.8"]
    assert CUDA_COMPILE in family_checks(M, "cuda-python").commands


def test_the_claimed_capabilities_are_a_label_the_check_compares():
    labels = {"io.hpcimages.family": "cuda-python", "io.hpcimages.python": "3.13", "io.hpcimages.mpi.name": "mpich",
              "io.hpcimages.mpi.version": "4.3.2", "io.hpcimages.mpi.method": "wheel", "io.hpcimages.mpi.abi": "mpich",
              "org.opencontainers.image.version": CUDA_CELL.tag, "io.hpcimages.cuda": "12.8",
              "io.hpcimages.cuda.compute_capabilities": "7.0 7.5 8.0 8.6 8.9 9.0",
              "org.opencontainers.image.created": "2026-12-02T00:00:00Z", "org.opencontainers.image.revision": "abc"}
    facts = {"python": "3.13.5", "mpichversion": "4.3.2"}
    assert check_labels(CUDA_CELL, labels, facts).status == "pass"
    wrong = check_labels(CUDA_CELL, {**labels, "io.hpcimages.cuda.compute_capabilities": "9.0"}, facts)
    assert wrong.status == "fail"
    assert "io.hpcimages.cuda.compute_capabilities='9.0', expected '7.0 7.5 8.0 8.6 8.9 9.0'" in wrong.reason


class Recorder(Checker):
    """A checker whose commands answer from a script instead of an engine (what it was asked is kept)."""

    def __init__(self, answers):
        super().__init__(None, M, "ci", None, progress=lambda _: None)
        self.answers, self.asked = answers, []

    def run(self, image, argv, env=None, host_mpi=None, ranks=0, own=None):
        self.asked.append(list(argv))
        return self.answers.pop(0)


def test_a_cuda_family_without_a_compile_says_its_claim_was_not_compiled():
    plain = dataclasses.replace(CUDA_CELL.family, name="cupy-mpi")
    cell = dataclasses.replace(CUDA_CELL, family=plain)
    checks = family_checks(M, "cuda-python")
    only_sim = dataclasses.replace(checks, commands=(CUDA_SIM_KERNEL,))
    outcome = Recorder([(0, "cuda-sim vector add ok (x)\n")]).check_family(only_sim, "sha256:x", cell)
    assert outcome.status == "pass"
    assert outcome.reason.endswith("compute capabilities 7.0 7.5 8.0 8.6 8.9 9.0 claimed, not compiled (no CUDA "
                                   "compile check for this family)")
    checker = Recorder([(0, "toolkit wheels: runtime 12.8 nvvm libnvvm.so.4\n"),
                        (0, "compiled 3 kernels ... to PTX with NVVM in 1 s\n"), (0, "cuda-sim vector add ok\n")])
    outcome = checker.check_family(checks, "sha256:x", CUDA_CELL)
    assert outcome.status == "pass" and "not compiled" not in outcome.reason
    assert checker.asked[1][-4:] == ["--cc", "7.0,7.5,8.0,8.6,8.9,9.0", "--cuda", "12.8"]
