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

With `--cuda MM.m` (what `invoke check` passes) the toolkit wheels must be that CUDA version, and cuda-bindings
must be of its major (13.x needs a CUDA 13 driver): a compile cannot show that mismatch, a GPU node would.

Prints one line per kernel and capability, then `compiled K kernels for ... in S s` and exits 0; on the first
failure prints `error: ...` with the compiler's own message (the exception's first line, then the last frames of
its traceback) and exits 1.
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
CUDA_RE = re.compile(r"^\d{2}\.\d$")


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


def toolkit_version(major: str | None) -> tuple[str, str]:
    """The NVRTC wheel of a CUDA major (nvidia-cuda-nvrtc-cu12; CUDA 13's wheels drop the suffix), or of whichever
    major is installed when none is given, and its version."""
    names = (f"nvidia-cuda-nvrtc-cu{major}", "nvidia-cuda-nvrtc") if major else \
        ("nvidia-cuda-nvrtc-cu12", "nvidia-cuda-nvrtc-cu13", "nvidia-cuda-nvrtc")
    for name in names:
        found = version(name)
        if found != "not installed":
            return name, found
    return names[0], "not installed"


def toolkit_problem(cuda_version: str | None) -> str | None:
    """The toolkit wheels are the image's CUDA version, and cuda-bindings is of the same major. cuda-bindings follows
    the CUDA major: 13.x needs a CUDA 13 driver (580.65+) and CUDA 13 libraries, 12.x any CUDA 12 driver (525.60+);
    beside another major's toolkit the first kernel launch fails, which a compile alone cannot show."""
    bindings = version("cuda-bindings")
    name, toolkit = toolkit_version(cuda_version.split(".")[0] if cuda_version else None)
    if toolkit == "not installed":
        return f"{name} is not installed: numba-cuda finds NVRTC (and NVVM beside it) in the toolkit wheels"
    major = toolkit.split(".")[0]
    if cuda_version and not toolkit.startswith(f"{cuda_version}."):
        return f"the toolkit wheels are CUDA {toolkit} ({name}), the image claims CUDA {cuda_version}"
    if bindings == "not installed":
        return "cuda-bindings is not installed: numba-cuda reaches the driver and NVRTC through it"
    if bindings.split(".")[0] != major:
        return (f"cuda-bindings {bindings} is for CUDA {bindings.split('.')[0]} (a driver of that major), but the "
                f"toolkit wheels are CUDA {toolkit}: lock cuda-bindings {major}.x (numba-cuda[cu{major}])")
    return None


def compiler_message(exc: BaseException) -> str:
    """The compiler's own words: the exception's first line (what numba says went wrong; its later lines say where),
    then the last frames of its traceback."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    headline = f"{type(exc).__name__}: {lines[0].strip() if lines else ''}".rstrip(": ")
    frames = traceback.format_exception(type(exc), exc, exc.__traceback__)
    return f"{headline}\n{''.join(frames[-4:]).rstrip()}"


def supported_ccs() -> list[tuple[int, int]]:
    from numba.cuda.cudadrv import nvrtc

    return sorted(nvrtc.get_supported_ccs())


def sm(cc: tuple[int, int]) -> str:
    return f"sm_{cc[0]}{cc[1]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cc", required=True, help="compute capabilities, comma- or space-separated (8.0,9.0)")
    parser.add_argument("--cuda", help="the CUDA version the image claims (MM.m): the toolkit wheels must be it")
    args = parser.parse_args(argv)
    # one line at a time on both streams: a container's log keeps them in the order they were written, so the
    # error comes after the lines that passed, not before them
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True)
    if args.cuda is not None and not CUDA_RE.match(args.cuda):
        raise SystemExit(f"error: --cuda {args.cuda!r} is not a CUDA version (MM.m, e.g. 12.8)")
    wanted = parse_ccs(args.cc)
    kernels = load_numba()
    print(f"# {versions()}")
    problem = toolkit_problem(args.cuda)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    start = time.monotonic()
    try:
        supported = supported_ccs()
    except Exception as exc:  # the toolkit's NVRTC did not load: its own error says why
        print(f"error: the toolkit's NVRTC did not answer: {compiler_message(exc)}", file=sys.stderr)
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
                print(f"error: kernel {name} for {sm(cc)} did not compile: {compiler_message(exc)}",
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
