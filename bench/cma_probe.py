#!/usr/bin/env python3
"""Does cross-memory attach work here? `python3 cma_probe.py` prints one line and exits 0 either way:

    cross-memory attach: works
    cross-memory attach: blocked (process_vm_readv: [Errno 1] Operation not permitted)

MPICH (and Open MPI, Intel MPI) copy a large intra-node message straight from the sender's memory with
process_vm_readv/process_vm_writev. A container runtime's seccomp profile, or the kernel's Yama ptrace scope, can
forbid those calls between two ranks; the MPI then copies through a shared-memory segment twice (slower) or fails.
The probe does what the ranks do: two sibling processes of one parent, one reading the other's buffer.
No MPI and no third-party module is needed.
"""

from __future__ import annotations

import ctypes
import os
import sys

PATTERN = b"hpcimages cross-memory attach probe"


class IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


def read_remote(pid: int, address: int, length: int) -> bytes:
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(length)
    local = IoVec(ctypes.cast(buf, ctypes.c_void_p), length)
    remote = IoVec(address, length)
    done = libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if done < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return buf.raw[:done]


def holder(ready_w: int, done_r: int) -> None:
    """The first sibling: a buffer with PATTERN, its pid and address handed on, then wait to be read."""
    buf = ctypes.create_string_buffer(PATTERN)
    os.write(ready_w, f"{os.getpid()} {ctypes.addressof(buf)}\n".encode())
    os.read(done_r, 1)
    os._exit(0)


def reader(ready_r: int, done_w: int, result_w: int) -> None:
    """The second sibling: read the first one's buffer across the process boundary."""
    pid, address = map(int, os.read(ready_r, 100).split())
    try:
        got = read_remote(pid, address, len(PATTERN))
        line = "works" if got == PATTERN else f"wrong bytes ({got[:16]!r})"
    except OSError as exc:
        line = f"blocked (process_vm_readv: {exc})"
    os.write(result_w, line.encode())
    os.write(done_w, b"x")
    os._exit(0)


def main() -> int:
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    result_r, result_w = os.pipe()
    first = os.fork()
    if first == 0:
        holder(ready_w, done_r)
    second = os.fork()
    if second == 0:
        reader(ready_r, done_w, result_w)
    os.close(result_w)
    line = os.read(result_r, 300).decode() or "unknown (the probe's reader died)"
    for pid in (first, second):
        os.waitpid(pid, 0)
    print(f"cross-memory attach: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
