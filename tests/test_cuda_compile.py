"""bench/cuda_compile.py's own rules (no numba here: the compile itself is tested in the images,
tests/test_cuda_integration.py), and how the family check reports what a command said."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from hpcimages.images.check import CUDA_COMPILE, CUDA_SIM_KERNEL, FamilyCommand, _failure, _reported

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


@pytest.mark.parametrize("bindings, toolkit, refused", [
    ("13.5.0", "12.8.93", True), ("12.9.10", "12.8.93", False), ("12.9.10", "12.6.85", False),
    ("12.9.10", "13.0.88", True), ("not installed", "12.8.93", False)])
def test_cuda_bindings_must_be_of_the_toolkits_major(script, monkeypatch, bindings, toolkit, refused):
    versions = {"cuda-bindings": bindings, "nvidia-cuda-nvrtc-cu12": toolkit}
    monkeypatch.setattr(script, "version", versions.__getitem__)
    message = script.bindings_mismatch()
    assert (message is not None) == refused
    if refused:
        assert f"cuda-bindings {bindings} is for CUDA {bindings[:2]}" in message
        assert f"numba-cuda[cu{toolkit[:2]}]" in message


def test_without_numba_the_script_says_what_is_missing(script, monkeypatch):
    monkeypatch.setitem(sys.modules, "numba", None)  # import numba raises ImportError
    with pytest.raises(SystemExit, match="numba with CUDA support is not installed"):
        script.main(["--cc", "9.0"])


def test_a_failed_command_is_reported_by_its_error_and_the_compilers_last_words():
    out = ("# numba-cuda 0.30.4, numpy 2.5.5\naxpy ok\nerror: kernel axpy for sm_70 did not compile:\n"
           '  File "a.py", line 1, in <module>\n  File "arrayobj.py", line 6860, in <module>\n'
           "    overload(np.row_stack)(impl_np_vstack)\n"
           "AttributeError: module 'numpy' has no attribute 'row_stack'\n")
    reason = _failure(out)
    assert reason.startswith("error: kernel axpy for sm_70 did not compile:")
    assert reason.endswith("AttributeError: module 'numpy' has no attribute 'row_stack'")
    assert "a.py" not in reason  # the last frames, not the whole traceback
    assert _failure("no error line\nlast words\n") == "no error line | last words"


def test_a_passed_command_reports_its_summary_line_or_its_name():
    out = "axpy sm_90 ok\ncompiled 3 kernels (axpy) for sm_90 to PTX with NVVM in 1.2 s\n"
    assert _reported(CUDA_COMPILE, out) == "compiled 3 kernels (axpy) for sm_90 to PTX with NVVM in 1.2 s"
    assert _reported(CUDA_SIM_KERNEL, "cuda-sim vector add ok (x)\n") == "cuda-sim vector add ok (x)"
    assert _reported(CUDA_COMPILE, "nothing to quote\n") == CUDA_COMPILE.what
    assert _reported(FamilyCommand("plain", ("true",), ()), "compiled\n") == "plain"
