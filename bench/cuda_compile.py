#!/usr/bin/env python3
"""Compile real numba-cuda kernels for the GPU, with no GPU: `python3 cuda_compile.py --cc 8.0,9.0`.

numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1) runs kernels as Python and never lowers them for the CUDA
target, so it cannot see a numba-cuda that fails to compile with the image's numpy. This script does what the
first kernel on a GPU does before it is launched: type it, lower it to LLVM IR and compile that with NVVM to PTX
(`numba.cuda.compile_ptx`), for every compute capability asked for. NVVM and NVRTC come from the toolkit
wheels (nvidia-cuda-nvcc-cu12, nvidia-cuda-nvrtc-cu12); no driver is needed, so it runs in `docker run
--network none` as well as under `apptainer exec --nv` on a GPU node.

Three kernels: an elementwise axpy, a shared-memory block reduction finished with an atomic add, and one that
calls numpy functions inside the kernel. For each capability, the toolkit must list it among the architectures
it compiles for (numba would otherwise pick the nearest lower one without a word), and the PTX must target it.

Prints one line per kernel and capability, then `compiled K kernels for ... in S s` and exits 0; on the first
failure prints the compiler's own message (the exception and the last frames of its traceback) and exits 1.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import sys
import time
import traceback

import numpy as np

#: bound by load_numba(); the kernels read them as module globals when numba compiles them
cuda = float32 = None
THREADS = 128
TARGET_RE = re.compile(r"^\.target\s+(sm_\d+[a-z]?)", re.M)
CC_RE = re.compile(r"^([1-9]\d?)\.(\d)$")


def axpy(a, x, y, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = a * x[i] + y[i]


def block_sum(x, total):
    tile = cuda.shared.array(THREADS, float32)
    i = cuda.grid(1)
    t = cuda.threadIdx.x
    tile[t] = x[i] if i < x.size else float32(0)
    cuda.syncthreads()
    stride = THREADS // 2
    while stride > 0:
        if t < stride:
            tile[t] += tile[t + stride]
        cuda.syncthreads()
        stride //= 2
    if t == 0:
        cuda.atomic.add(total, 0, tile[0])


def numpy_inside(x, out):
    i = cuda.grid(1)
    if i < x.size:
        v = x[i]
        out[i] = np.hypot(np.sin(v), np.cos(v)) * np.tanh(v) + np.arctan2(v, np.float32(2.0)) + np.maximum(v, 0)


def load_numba() -> dict:
    """Import numba's CUDA target and return the kernels with their signatures (float32 arrays)."""
    global cuda, float32
    try:
        from numba import cuda, float32
    except ImportError as exc:  # the message names the missing package
        raise SystemExit(f"error: numba with CUDA support is not installed: {exc}") from None
    vector = float32[::1]
    return {"axpy": (axpy, (float32, vector, vector, vector)), "block_sum": (block_sum, (vector, vector)),
            "numpy_inside": (numpy_inside, (vector, vector))}


def parse_ccs(text: str) -> list[tuple[int, int]]:
    ccs = []
    for item in text.replace(" ", ",").split(","):
        if not item:
            continue
        match = CC_RE.match(item)
        if not match:
            raise SystemExit(f"error: {item!r} is not a compute capability (major.minor, e.g. 9.0)")
        ccs.append((int(match.group(1)), int(match.group(2))))
    if not ccs:
        raise SystemExit("error: --cc names no compute capability")
    return ccs


def version(name: str) -> str:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "not installed"


def versions() -> str:
    return ", ".join(f"{name} {version(name)}" for name in (
        "numba-cuda", "numba", "numpy", "cuda-bindings", "nvidia-cuda-nvcc-cu12", "nvidia-cuda-nvrtc-cu12"))


def bindings_mismatch() -> str | None:
    """cuda-bindings follows the CUDA major version: 13.x needs a CUDA 13 driver (580.65+) and CUDA 13 libraries,
    12.x any CUDA 12 driver (525.60+). Beside another major's toolkit wheels the first kernel launch fails."""
    bindings, toolkit = version("cuda-bindings"), version("nvidia-cuda-nvrtc-cu12")
    if "not installed" in (bindings, toolkit) or bindings.split(".")[0] == toolkit.split(".")[0]:
        return None
    major = toolkit.split(".")[0]
    return (f"cuda-bindings {bindings} is for CUDA {bindings.split('.')[0]} (a driver of that major), but the "
            f"toolkit wheels are CUDA {toolkit}: lock cuda-bindings {major}.x (numba-cuda[cu{major}])")


def compiler_message(exc: BaseException) -> str:
    """The compiler's own words: the exception, and where it was raised (the last frames of its traceback)."""
    frames = traceback.format_exception(type(exc), exc, exc.__traceback__)
    return "".join(frames[-4:]).rstrip()


def supported_ccs() -> list[tuple[int, int]]:
    from numba.cuda.cudadrv import nvrtc

    return sorted(nvrtc.get_supported_ccs())


def sm(cc: tuple[int, int]) -> str:
    return f"sm_{cc[0]}{cc[1]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cc", required=True, help="compute capabilities, comma- or space-separated (8.0,9.0)")
    args = parser.parse_args(argv)
    wanted = parse_ccs(args.cc)
    kernels = load_numba()
    print(f"# {versions()}")
    mismatch = bindings_mismatch()
    if mismatch:
        print(f"error: {mismatch}", file=sys.stderr)
        return 1
    start = time.monotonic()
    try:
        supported = supported_ccs()
    except Exception as exc:  # the toolkit's NVRTC did not load: its own error says why
        print(f"error: the toolkit's NVRTC did not answer:\n{compiler_message(exc)}", file=sys.stderr)
        return 1
    print(f"# the toolkit compiles for {' '.join(sm(cc) for cc in supported)}")
    unsupported = [cc for cc in wanted if cc not in supported]
    if unsupported:
        print(f"error: the toolkit cannot compile for {' '.join(sm(cc) for cc in unsupported)} (it compiles for "
              f"{' '.join(sm(cc) for cc in supported)})", file=sys.stderr)
        return 1
    for cc in wanted:
        for name, (kernel, signature) in kernels.items():
            began = time.monotonic()
            try:
                ptx, _ = cuda.compile_ptx(kernel, signature, cc=cc)
            except Exception as exc:  # what the user would see at the first launch on a GPU
                print(f"error: kernel {name} for {sm(cc)} did not compile:\n{compiler_message(exc)}",
                      file=sys.stderr)
                return 1
            targets = TARGET_RE.findall(ptx)
            if targets != [sm(cc)]:
                print(f"error: kernel {name} for {sm(cc)}: the PTX targets {' '.join(targets) or 'nothing'}",
                      file=sys.stderr)
                return 1
            print(f"{name:<14}{sm(cc):<8}ok  {len(ptx.splitlines()):>5} PTX lines  {time.monotonic() - began:.2f} s")
    print(f"compiled {len(kernels)} kernels ({', '.join(kernels)}) for {' '.join(sm(cc) for cc in wanted)} "
          f"to PTX with NVVM in {time.monotonic() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
