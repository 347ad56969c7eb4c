#!/usr/bin/env python3
"""numba CUDA vector add, and device bandwidth: `python3 add_cuda_numba.py [-n N] [--bandwidth-mib M]`.

Prints the result array of a vector add computed on the GPU, then the host-to-device, device-to-host and
device-to-device copy bandwidth (MB/s = 10^6 bytes per second). Needs the host's CUDA driver inside the
container: `singularity exec --nv` / `apptainer exec --nv`, or `docker run --gpus all`. Under
`NUMBA_ENABLE_CUDASIM=1` the kernels run on the CPU simulator (bandwidths are then meaningless and marked so).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

try:
    from numba import cuda  # a module global: the simulator swaps it inside kernels
except ImportError as _exc:
    cuda = None
    _IMPORT_ERROR = str(_exc)

NO_DRIVER = ("no CUDA driver found: run the container with the host's GPU driver "
             "(`singularity exec --nv`, `apptainer exec --nv`, `docker run --gpus all`), "
             "or set NUMBA_ENABLE_CUDASIM=1 to run the kernels on the CPU simulator")


def simulated() -> bool:
    return os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def load_cuda():
    if cuda is None:
        raise SystemExit(f"numba with CUDA support is not installed: {_IMPORT_ERROR}")
    try:
        available = cuda.is_available()
    except Exception:  # numba raises several kinds of errors when libcuda is absent or broken
        available = False
    if not available:
        print(f"error: {NO_DRIVER}", file=sys.stderr)
        raise SystemExit(3)
    return cuda


def add_kernel(a, b, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = a[i] + b[i]


def vector_add(cuda, n: int) -> np.ndarray:
    add = cuda.jit(add_kernel)
    a = np.arange(n, dtype=np.float32)
    b = 2 * a
    d_out = cuda.device_array_like(a)
    threads = 128
    add[(n + threads - 1) // threads, threads](cuda.to_device(a), cuda.to_device(b), d_out)
    out = d_out.copy_to_host()
    if not np.allclose(out, a + b):
        raise SystemExit("vector add returned wrong values")
    return out


def bandwidth(cuda, mib: int, repeats: int) -> dict[str, float]:
    nbytes = mib * 1024 * 1024
    host = np.ones(nbytes, dtype=np.uint8)
    device = cuda.device_array(nbytes, dtype=np.uint8)
    other = cuda.device_array(nbytes, dtype=np.uint8)

    def best(copy) -> float:
        times = []
        for _ in range(repeats):
            cuda.synchronize()
            start = time.perf_counter()
            copy()
            cuda.synchronize()
            times.append(time.perf_counter() - start)
        return nbytes / min(times) / 1e6

    return {
        "host-to-device": best(lambda: device.copy_to_device(host)),
        "device-to-host": best(lambda: device.copy_to_host(host)),
        "device-to-device": best(lambda: other.copy_to_device(device)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=16, help="vector length (default 16)")
    parser.add_argument("--bandwidth-mib", type=int, default=256, help="copy size in MiB (default 256; 0 skips)")
    parser.add_argument("--repeats", type=int, default=5, help="copies per direction, best kept (default 5)")
    args = parser.parse_args(argv)
    cuda = load_cuda()
    device = "CUDA simulator (CPU)" if simulated() else cuda.get_current_device().name
    device = device.decode() if isinstance(device, bytes) else device
    print(f"# device: {device}")
    print(vector_add(cuda, args.n))
    if args.bandwidth_mib > 0:
        mib = min(args.bandwidth_mib, 8) if simulated() else args.bandwidth_mib
        note = "  (simulator: not a GPU figure)" if simulated() else ""
        print(f"# {'Copy':<18}{'Bandwidth (MB/s)':>20}   size {mib} MiB{note}")
        for name, mbs in bandwidth(cuda, mib, args.repeats).items():
            print(f"{name:<20}{mbs:20.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
