#!/usr/bin/env python3
"""OSU-style point-to-point bandwidth with mpi4py: `mpiexec -n 2 python3 osu_bw.py [-m min:max] ...`.

Methodology of the OSU Micro-Benchmarks' osu_bw: for every message size, rank 0 posts a window of
``-W`` (64) non-blocking sends and waits for them, rank 1 posts the matching receives; rank 1 then sends a
4-byte acknowledgement. Sizes up to 8192 B run ``-i`` 100 timed iterations after ``-x`` 10 warm-ups,
larger ones 20 after 2. Bandwidth in MB/s (10^6 bytes per second), one ``%-10d%20.2f`` row per size.

Only mpi4py and numpy are needed (``-b bytearray`` needs neither numpy; ``cupy``/``numba`` buffers live on a
GPU). ``-c`` fills the send buffer with a pattern and checks every received byte.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

import mpiloaded  # same folder: which MPI library this process loaded
from mpi4py import MPI

LARGE_MESSAGE = 8192
ACK_BYTES = 4


def library_file() -> str:
    """The MPI library file this process loaded (mpi4py chooses and dlopens it): the proof of which MPI ran."""
    return mpiloaded.library_file()


def mpi_abi() -> str:
    """The MPI ABI mpi4py selected for the loaded library (mpiloaded.mpi_abi)."""
    return mpiloaded.mpi_abi(MPI)


def cpu_list(cpus: set[int]) -> str:
    """0,1,2,5 -> 0-2,5"""
    ranges: list[list[int]] = []
    for cpu in sorted(cpus):
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in ranges)


def placement(comm) -> str:
    """Where every rank runs: its node and the CPUs it may run on (pinned: one core each). Collective."""
    here = (MPI.Get_processor_name(), cpu_list(os.sched_getaffinity(0)))
    ranks = comm.gather(here, root=0)
    return "; ".join(f"rank {i} {node} cpus {cpus}" for i, (node, cpus) in enumerate(ranks or []))


def _hex_address(text: str) -> str:
    """An address of /proc/net/tcp ("0100007F:1F90") without the port, as an IP address."""
    host = text.split(":")[0]
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


def tcp_peers() -> list[str]:
    """The other hosts this process has established TCP connections to (its own sockets only; loopback and
    connections to an address of this host are left out): how messages crossed to another node when they went
    over TCP. Empty when they went through shared memory or a native fabric (or there is no /proc)."""
    mine = set()
    for fd in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else []:
        try:  # the descriptor of the listing itself is gone by now
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            mine.add(target[8:-1])
    peers = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            with open(table, encoding="ascii") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "01" or fields[9] not in mine:  # 01: ESTABLISHED
                continue
            local, remote = _hex_address(fields[1]), _hex_address(fields[2])
            if remote != local and not remote.startswith(("127.", "::1", "::ffff:127.")):
                peers.add(remote)
    return sorted(peers)


def transport(comm) -> str:
    """What rank 0 saw after the run: TCP connections to other hosts, or none. Collective."""
    peers = comm.gather(tcp_peers(), root=0) or []
    found = sorted({p for ranks in peers for p in ranks})
    return f"tcp to {', '.join(found)}" if found else "no tcp between ranks"


def print_provenance(comm, title: str, **settings: object) -> None:
    """The header every script prints (rank 0): title, library, its file, ABI, placement, settings. Collective."""
    where = placement(comm)
    if comm.Get_rank() == 0:
        print(f"# {title}")
        print(f"# {MPI.Get_library_version().splitlines()[0].strip()}")
        print(f"# Library file: {library_file()}")
        print(f"# MPI ABI: {mpi_abi()}")
        print(f"# Placement: {where}")
        if settings:
            print("# " + ", ".join(f"{k}: {v}" for k, v in settings.items()))


def print_transport(comm) -> None:
    """After the sizes: how the ranks' messages travelled (see tcp_peers). Collective."""
    seen = transport(comm)
    if comm.Get_rank() == 0:
        print(f"# Transport: {seen}", flush=True)


def size_range(minimum: int, largest: int):
    """The one `-m MIN:MAX` rule of every benchmark script: an empty side takes the default (``minimum``,
    ``largest``), and ``minimum <= MIN <= MAX`` (hpcimages checks the same before a job waits in a queue:
    Benchmark.sizes_problem)."""
    def parse(text: str) -> tuple[int, int]:
        low, _, high = text.partition(":")
        try:
            lo, hi = int(low or minimum), int(high or largest)
        except ValueError:
            lo, hi = minimum - 1, 0
        if lo < minimum or hi < lo:
            raise argparse.ArgumentTypeError(f"bad size range {text!r}: use MIN:MAX with {minimum} <= MIN <= MAX")
        return lo, hi

    return parse


parse_sizes = size_range(1, 4 * 1024 * 1024)


def sizes(lo: int, hi: int) -> list[int]:
    out, size = [], 1
    while size <= hi:
        if size >= lo:
            out.append(size)
        size *= 2
    return out


def allocate(kind: str, nbytes: int):
    if kind == "bytearray":
        return bytearray(nbytes)
    if kind == "numpy":
        import numpy as np

        return np.zeros(nbytes, dtype=np.uint8)
    if kind == "cupy":
        import cupy as cp

        return cp.zeros(nbytes, dtype=cp.uint8)
    if kind == "numba":
        import numpy as np
        from numba import cuda

        return cuda.device_array(nbytes, dtype=np.uint8)
    raise SystemExit(f"unknown buffer kind {kind!r}")


def fill(buf, kind: str, nbytes: int, seed: int) -> None:
    pattern = bytes((seed + i) % 251 for i in range(nbytes))
    if kind == "bytearray":
        buf[:nbytes] = pattern
    elif kind == "numpy":
        import numpy as np

        buf[:nbytes] = np.frombuffer(pattern, dtype=np.uint8)
    elif kind == "cupy":
        import cupy as cp
        import numpy as np

        buf[:nbytes] = cp.asarray(np.frombuffer(pattern, dtype=np.uint8))
    else:
        import numpy as np

        buf[:nbytes].copy_to_device(np.frombuffer(pattern, dtype=np.uint8))


def received_bytes(buf, kind: str, nbytes: int) -> bytes:
    if kind in ("bytearray", "numpy"):
        return bytes(memoryview(buf)[:nbytes])
    if kind == "cupy":
        return bytes(buf[:nbytes].get())
    return bytes(buf[:nbytes].copy_to_host())


def message(buf, nbytes: int):
    return [buf, nbytes, MPI.BYTE]


def bandwidth(comm, buf, ack, nbytes: int, window: int, iters: int, skip: int) -> float:
    rank = comm.Get_rank()
    requests = [MPI.REQUEST_NULL] * window
    start = 0.0
    for i in range(iters + skip):
        if i == skip:
            comm.Barrier()
            start = MPI.Wtime()
        if rank == 0:
            for w in range(window):
                requests[w] = comm.Isend(message(buf, nbytes), dest=1, tag=100)
            MPI.Request.Waitall(requests)
            comm.Recv([ack, ACK_BYTES, MPI.BYTE], source=1, tag=101)
        else:
            for w in range(window):
                requests[w] = comm.Irecv(message(buf, nbytes), source=0, tag=100)
            MPI.Request.Waitall(requests)
            comm.Send([ack, ACK_BYTES, MPI.BYTE], dest=0, tag=101)
    elapsed = MPI.Wtime() - start
    return nbytes / 1e6 * iters * window / elapsed


def bandwidth_persistent(comm, buf, ack, nbytes: int, window: int, iters: int, skip: int) -> float:
    """The same exchange with persistent requests: the window's Send_init/Recv_init are made once per size, each
    iteration is one Startall and one Waitall, so Python runs two calls per window instead of one per message and
    the figure shows the transport rather than the interpreter. The requests are freed at the end."""
    rank = comm.Get_rank()
    if rank == 0:
        requests = [comm.Send_init(message(buf, nbytes), dest=1, tag=100) for _ in range(window)]
    else:
        requests = [comm.Recv_init(message(buf, nbytes), source=0, tag=100) for _ in range(window)]
    start = 0.0
    try:
        for i in range(iters + skip):
            if i == skip:
                comm.Barrier()
                start = MPI.Wtime()
            MPI.Prequest.Startall(requests)
            MPI.Request.Waitall(requests)
            if rank == 0:
                comm.Recv([ack, ACK_BYTES, MPI.BYTE], source=1, tag=101)
            else:
                comm.Send([ack, ACK_BYTES, MPI.BYTE], dest=0, tag=101)
        elapsed = MPI.Wtime() - start
    finally:
        for request in requests:
            request.Free()
    return nbytes / 1e6 * iters * window / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--message-size", type=parse_sizes, default=(1, 4 * 1024 * 1024),
                        metavar="MIN:MAX", help="message sizes in bytes (default 1:4194304)")
    parser.add_argument("-i", "--iterations", type=int, default=None,
                        help="timed iterations (default 100 for small, 20 for large messages)")
    parser.add_argument("-x", "--warmup", type=int, default=None,
                        help="warm-up iterations (default 10 for small, 2 for large messages)")
    parser.add_argument("-W", "--window-size", type=int, default=64, help="messages in flight (default 64)")
    parser.add_argument("-b", "--buffer", choices=("bytearray", "numpy", "cupy", "numba"), default="numpy",
                        help="buffer kind (default numpy)")
    parser.add_argument("-c", "--validate", action="store_true", help="check every received byte")
    parser.add_argument("-P", "--persistent", action="store_true",
                        help="persistent requests (Send_init/Recv_init once per size, then Startall + Waitall per "
                             "window): the Python loop leaves the timed window, so this measures the transport")
    args = parser.parse_args(argv)

    comm = MPI.COMM_WORLD
    if comm.Get_size() != 2:
        if comm.Get_rank() == 0:
            print("osu_bw.py needs exactly 2 ranks: mpiexec -n 2 python3 osu_bw.py", file=sys.stderr)
        return 2
    lo, hi = args.message_size
    buf = allocate(args.buffer, hi)
    ack = bytearray(ACK_BYTES)
    rank = comm.Get_rank()
    print_provenance(comm, "OSU MPI-Python Bandwidth Test", buffer=args.buffer, window=args.window_size,
                     requests="persistent" if args.persistent else "nonblocking")
    if rank == 0:
        print(f"# {'Size':<10}{'Bandwidth (MB/s)':>20}", flush=True)
    failures = 0
    for nbytes in sizes(lo, hi):
        small = nbytes <= LARGE_MESSAGE
        iters = args.iterations if args.iterations is not None else (100 if small else 20)
        skip = args.warmup if args.warmup is not None else (10 if small else 2)
        if args.validate and rank == 0:
            fill(buf, args.buffer, nbytes, seed=nbytes)
        measure = bandwidth_persistent if args.persistent else bandwidth
        mbps = measure(comm, buf, ack, nbytes, args.window_size, iters, skip)
        if args.validate:
            ok = True
            if rank == 1:
                expected = bytes((nbytes + i) % 251 for i in range(nbytes))
                ok = received_bytes(buf, args.buffer, nbytes) == expected
            ok = comm.allreduce(ok, op=MPI.LAND)
            if not ok:
                failures += 1
                if rank == 0:
                    print(f"# validation FAILED at {nbytes} bytes", file=sys.stderr, flush=True)
        if rank == 0:
            print(f"{nbytes:<10d}{mbps:20.2f}", flush=True)
    print_transport(comm)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
