#!/usr/bin/env python3
"""What a host MPI really is and really loads: the probe ``invoke site discover`` runs on a node of a site.

Standard library only, so it runs on a compute node where hpcimages is not installed (the site's own launcher
starts it, ``srun python3 hostmpi_probe.py ...``), and inside an image (``apptainer exec image.sif python3 ...``).
Each mode prints one JSON object on stdout (as numbered lines, see ``emit``):

    python3 hostmpi_probe.py inspect --mpi-lib /usr/lib/x86_64-linux-gnu/libmpi.so.12
        # the library, its ABI, its load closure (each file: where the loader found it, who needs it, the
        # symbol versions it needs), the node's glibc
    srun -n 2 --mpi=pmi2 python3 hostmpi_probe.py run --mpi-lib LIB
        # per rank, after a real exchange of messages: every file the process mapped (path, device, inode):
        # the transport plugins the library opened at run time, which no closure shows
    python3 hostmpi_probe.py facts
        # inside an image: its glibc and the GLIBCXX_ versions its libstdc++ provides
    python3 hostmpi_probe.py ids FILE...
        # on the node: each file's device and inode, as a process's maps name them
    srun -n 2 python3 hostmpi_probe.py bw --mpi-lib LIB --sizes 1048576 --rounds 3
        # osu_bw's method (a window of 64 non-blocking sends, then an ack) and osu_latency's ping-pong, called
        # through ctypes: the same code on bare metal and inside an image under the bind model
    srun -n 2 python3 hostmpi_probe.py run --mpi4py
        # inside an image under the bind model: mpi4py chooses and loads the library, the ranks exchange
        # messages, and the maps say which files (by device and inode) the process really runs

Only ELF64 little-endian files are read (x86_64, aarch64).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import struct
import subprocess
import sys

PT_LOAD, PT_DYNAMIC = 1, 2
DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_SONAME, DT_RPATH, DT_RUNPATH = 1, 5, 10, 14, 15, 29
DT_VERNEED, DT_VERNEEDNUM = 0x6FFFFFFE, 0x6FFFFFFF
ET_NAMES = {0: "no type", 1: "a relocatable object (.o)", 2: "an executable", 3: "a shared library", 4: "a core dump"}
VERSION_RE = re.compile(r"(GLIBC|GLIBCXX|CXXABI|GCC)_(\d+(?:\.\d+)*)$")
#: the sonames of the three MPI ABIs the project knows (the MPI-5 standard ABI, the MPICH ABI, Open MPI's)
ABI_OF_SONAME = (("libmpi_abi.so.", "standard"), ("libmpi.so.12", "mpich"), ("libmpich.so.12", "mpich"),
                 ("libmpi.so.40", "openmpi"))


class ProbeError(Exception):
    """A clear, one-line reason the probe cannot go on."""


# ----------------------------------------------------------------------------------------------------------------
# ELF: the dynamic section (NEEDED, SONAME, RUNPATH) and the version needs (GLIBC_2.38, ...)


def read_elf(path: str) -> dict:
    """The dynamic facts of one ELF file, or a ProbeError that says what the file is instead."""
    if os.path.isdir(path):
        raise ProbeError(f"{path} is a directory, not a library: name the library file in it "
                         f"(e.g. {path}/libmpi.so.12)")
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ProbeError(f"{path} cannot be read: {exc.strerror or exc}") from None
    if data.startswith(b"!<arch>"):
        raise ProbeError(f"{path} is a static archive (.a): the bind model needs the shared library (a .so)")
    if not data.startswith(b"\x7fELF"):
        raise ProbeError(f"{path} is not an ELF file (it starts {data[:16]!r}): not a library")
    if data[4] != 2 or data[5] != 1:
        raise ProbeError(f"{path} is not a 64-bit little-endian ELF file")
    e_type = struct.unpack_from("<H", data, 16)[0]
    phoff = struct.unpack_from("<Q", data, 32)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    loads, dynamic = [], None
    for i in range(phnum):
        p_type, _, p_offset, p_vaddr, _, p_filesz, _, _ = struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize)
        if p_type == PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
    facts = {"path": path, "type": ET_NAMES.get(e_type, f"type {e_type}"), "shared": e_type == 3, "soname": "",
             "needed": [], "runpath": [], "needs": {}, "defines_mpi_init": False}
    if dynamic is None:
        return facts

    def offset(vaddr: int) -> int:
        for start, file_offset, size in loads:
            if start <= vaddr < start + size:
                return vaddr - start + file_offset
        raise ProbeError(f"{path}: a dynamic address lies outside its loaded segments (a damaged file?)")

    entries: dict[int, list[int]] = {}
    start, size = dynamic
    for pos in range(start, start + size, 16):
        tag, value = struct.unpack_from("<qQ", data, pos)
        if tag == 0:
            break
        entries.setdefault(tag, []).append(value)
    strtab = offset(entries[DT_STRTAB][0]) if DT_STRTAB in entries else 0
    strsz = entries.get(DT_STRSZ, [0])[0]

    def string(index: int) -> str:
        end = data.index(b"\0", strtab + index)
        return data[strtab + index:end].decode("utf-8", "replace")

    facts["needed"] = [string(i) for i in entries.get(DT_NEEDED, [])]
    facts["soname"] = string(entries[DT_SONAME][0]) if DT_SONAME in entries else ""
    for tag in (DT_RUNPATH, DT_RPATH):
        for i in entries.get(tag, []):
            facts["runpath"] += [p for p in string(i).split(":") if p]
    if DT_VERNEED in entries:
        pos = offset(entries[DT_VERNEED][0])
        for _ in range(entries.get(DT_VERNEEDNUM, [0])[0]):
            _, count, file_name, aux, following = struct.unpack_from("<HHIII", data, pos)
            names, apos = [], pos + aux
            for _ in range(count):
                _, _, _, name, anext = struct.unpack_from("<IHHII", data, apos)
                names.append(string(name))
                apos += anext
            facts["needs"][string(file_name)] = sorted(names, key=version_key)
            if not following:
                break
            pos += following
    # an MPI library defines MPI_Init; a library that only calls MPI (libhdf5) names it too, so the caller also
    # checks the soname
    facts["defines_mpi_init"] = b"MPI_Init\0" in data[strtab:strtab + strsz]  # PMPI_Init may hold it as a tail
    return facts


def version_key(name: str) -> tuple:
    match = VERSION_RE.match(name)
    return (match.group(1), tuple(int(x) for x in match.group(2).split("."))) if match else (name, ())


def highest(names: list[str], family: str) -> str:
    """The highest FAMILY_x.y of the names ('' if none), e.g. highest([...], 'GLIBC') -> 'GLIBC_2.38'."""
    found = [n for n in names if VERSION_RE.match(n) and VERSION_RE.match(n).group(1) == family]
    return max(found, key=version_key) if found else ""


# ----------------------------------------------------------------------------------------------------------------
# inspect: the library, its ABI and its load closure


def abi_of(facts: dict, path: str) -> str:
    names = [facts["soname"], os.path.basename(path)]
    for prefix, abi in ABI_OF_SONAME:
        if any(n.startswith(prefix) for n in names if n):
            return abi
    return "another ABI"


def loader_closure(path: str) -> dict[str, str]:
    """soname -> file, as the loader resolves them on this node (ldd: the loader's own answer)."""
    try:
        proc = subprocess.run(["ldd", path], capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError:
        raise ProbeError("ldd is not on this node's PATH: the closure needs the loader's own answer") from None
    resolved: dict[str, str] = {}
    missing = []
    for line in proc.stdout.splitlines():
        line = line.strip()
        if "=>" in line:
            name, _, rest = line.partition("=>")
            target = rest.strip().split(" (")[0].strip()
            if target == "not found":
                missing.append(name.strip())
            elif target:
                resolved[name.strip()] = target
        elif line.startswith("/"):
            resolved[os.path.basename(line.split(" (")[0])] = line.split(" (")[0]
    if missing:
        raise ProbeError(f"{path} needs {', '.join(missing)}, which the loader does not find on this node "
                         "(load the MPI's module first, or set LD_LIBRARY_PATH)")
    if proc.returncode != 0 and not resolved:
        raise ProbeError(f"ldd {path} failed: {(proc.stderr or proc.stdout).strip()[:300]}")
    return resolved


def inspect(path: str) -> dict:
    facts = read_elf(path)
    if not facts["shared"]:
        raise ProbeError(f"{path} is {facts['type']}, not a shared library: name the MPI's .so")
    abi = abi_of(facts, path)
    if not facts["defines_mpi_init"] or (abi == "another ABI" and not facts["soname"].startswith("libmpi")):
        raise ProbeError(f"{path} (soname {facts['soname'] or 'none'}) defines no MPI_Init: not an MPI library")
    closure = loader_closure(path)
    files = {}
    needed_by: dict[str, list[str]] = {}
    queue = [(os.path.basename(path), os.path.realpath(path))]
    root_name = queue[0][0]
    while queue:
        name, where = queue.pop(0)
        if where in files:
            continue
        elf = read_elf(where)
        files[where] = {"name": name, "soname": elf["soname"], "needed": elf["needed"], "needs": elf["needs"]}
        for child in elf["needed"]:
            needed_by.setdefault(child, []).append(elf["soname"] or name)
            target = closure.get(child)
            if target:
                queue.append((child, os.path.realpath(target)))
    for where, entry in files.items():
        entry["loader_path"] = closure.get(entry["name"], path if entry["name"] == root_name else where)
        entry["needed_by"] = sorted(set(needed_by.get(entry["name"], []) + needed_by.get(entry["soname"], [])))
    return {"library": path, "realpath": os.path.realpath(path), "soname": facts["soname"], "abi": abi,
            "files": files, "glibc": os.confstr("CS_GNU_LIBC_VERSION") or "", "node": os.uname().nodename,
            "siblings": siblings(path)}


def siblings(path: str) -> dict[str, str]:
    """The other ABIs' libraries beside this one (Debian's MPICH puts libmpi_abi.so.1 beside libmpi.so.12)."""
    folder = os.path.dirname(os.path.abspath(path))
    found = {}
    for name in ("libmpi.so.12", "libmpi_abi.so.1", "libmpi.so.40"):
        candidate = os.path.join(folder, name)
        if os.path.exists(candidate):
            found[name] = os.path.realpath(candidate)
    return found


# ----------------------------------------------------------------------------------------------------------------
# run: a real two-rank exchange through ctypes (MPICH ABI handles) or mpi4py, then the process's maps

MPICH_COMM_WORLD = 0x44000000
MPICH_BYTE = 0x4C00010D
STATUS_IGNORE = ctypes.c_void_p(1)  # MPI_STATUS(ES)_IGNORE in the MPICH ABI


class CtypesMpi:
    """The few MPI calls the probe needs, through ctypes and the MPICH ABI's integer handles."""

    def __init__(self, library: str) -> None:
        try:
            self.lib = ctypes.CDLL(library, mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:
            raise ProbeError(f"cannot load {library}: {exc}") from None
        self.lib.MPI_Wtime.restype = ctypes.c_double
        if self.lib.MPI_Init(None, None) != 0:
            raise ProbeError("MPI_Init failed")
        rank, size = ctypes.c_int(), ctypes.c_int()
        self.lib.MPI_Comm_rank(MPICH_COMM_WORLD, ctypes.byref(rank))
        self.lib.MPI_Comm_size(MPICH_COMM_WORLD, ctypes.byref(size))
        self.rank, self.size = rank.value, size.value

    def send(self, buf, count: int, peer: int, tag: int = 1) -> None:
        self._check(self.lib.MPI_Send(buf, count, MPICH_BYTE, peer, tag, MPICH_COMM_WORLD), "MPI_Send")

    def recv(self, buf, count: int, peer: int, tag: int = 1) -> None:
        self._check(self.lib.MPI_Recv(buf, count, MPICH_BYTE, peer, tag, MPICH_COMM_WORLD, STATUS_IGNORE),
                    "MPI_Recv")

    def isend(self, buf, count: int, peer: int, request) -> None:
        self._check(self.lib.MPI_Isend(buf, count, MPICH_BYTE, peer, 100, MPICH_COMM_WORLD, request), "MPI_Isend")

    def irecv(self, buf, count: int, peer: int, request) -> None:
        self._check(self.lib.MPI_Irecv(buf, count, MPICH_BYTE, peer, 100, MPICH_COMM_WORLD, request), "MPI_Irecv")

    def waitall(self, count: int, requests) -> None:
        self._check(self.lib.MPI_Waitall(count, requests, STATUS_IGNORE), "MPI_Waitall")

    def barrier(self) -> None:
        self._check(self.lib.MPI_Barrier(MPICH_COMM_WORLD), "MPI_Barrier")

    def wtime(self) -> float:
        return self.lib.MPI_Wtime()

    def version(self) -> str:
        buf, length = ctypes.create_string_buffer(8192), ctypes.c_int()
        self.lib.MPI_Get_library_version(buf, ctypes.byref(length))
        return buf.value.decode("utf-8", "replace").strip().splitlines()[0].strip()

    def finalize(self) -> None:
        self.lib.MPI_Finalize()

    @staticmethod
    def _check(code: int, call: str) -> None:
        if code != 0:
            raise ProbeError(f"{call} returned {code}")


def exchange_ctypes(mpi: CtypesMpi) -> None:
    """Small and large messages both ways, so eager and rendezvous transports are opened (a plugin is loaded when
    it is first needed, not at MPI_Init)."""
    peer = 1 - mpi.rank
    for size in (8, 65536, 4 << 20):
        buf = ctypes.create_string_buffer(size)
        if mpi.rank == 0:
            mpi.send(buf, size, peer)
            mpi.recv(buf, size, peer)
        else:
            mpi.recv(buf, size, peer)
            mpi.send(buf, size, peer)


def exchange_mpi4py(comm) -> None:
    peer = 1 - comm.Get_rank()
    for size in (8, 65536, 4 << 20):
        buf = bytearray(size)
        if comm.Get_rank() == 0:
            comm.Send(buf, dest=peer)
            comm.Recv(buf, source=peer)
        else:
            comm.Recv(buf, source=peer)
            comm.Send(buf, dest=peer)


def mapped_files(maps: str = "/proc/self/maps") -> dict[str, str]:
    """path -> 'MAJOR:MINOR INODE' of every file mapped into this process: the identity of a file across a bind
    mount (a bound file keeps its device and inode, whatever its path inside the container)."""
    found = {}
    with open(maps, encoding="utf-8") as lines:
        for line in lines:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].startswith("/") and parts[4] != "0":
                found[parts[5].strip()] = f"{parts[3]} {parts[4]}"
    return found


def run(library: str, use_mpi4py: bool) -> dict:
    if use_mpi4py:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        if comm.Get_size() != 2:
            raise ProbeError(f"run needs exactly 2 ranks, got {comm.Get_size()}")
        exchange_mpi4py(comm)
        comm.Barrier()
        rank, version = comm.Get_rank(), MPI.Get_library_version().strip().splitlines()[0].strip()
        maps = mapped_files()
    else:
        baseline = mapped_files()  # what Python itself mapped: not the MPI's
        mpi = CtypesMpi(library)
        if mpi.size != 2:
            raise ProbeError(f"run needs exactly 2 ranks, got {mpi.size} (is the launcher's PMI the MPI's?)")
        exchange_ctypes(mpi)
        mpi.barrier()
        rank, version = mpi.rank, mpi.version()
        maps = {path: ident for path, ident in mapped_files().items() if path not in baseline}
        mpi.finalize()
    libraries = {}
    for path in maps:
        if re.search(r"[.]so([.]\d+)*$", path):
            try:
                elf = read_elf(path)
            except ProbeError:
                continue
            libraries[path] = {"soname": elf["soname"], "needed": elf["needed"], "needs": elf["needs"]}
    return {"rank": rank, "node": os.uname().nodename, "version": version, "maps": maps, "libraries": libraries,
            "open_files": open_files()}


def identities(paths: list[str]) -> dict[str, str]:
    """path -> 'MAJOR:MINOR INODE' as /proc/PID/maps writes it, for the files a verify job bound (read outside the
    container, on the node): a file mapped inside with the same identity is that very file."""
    found = {}
    for path in paths:
        try:
            st = os.stat(path)
        except OSError as exc:
            found[path] = f"missing: {exc.strerror}"
            continue
        found[path] = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x} {st.st_ino}"
    return found


def open_files() -> list[str]:
    """Regular files the process holds open: configuration a library keeps open shows here; one read and closed
    does not (that needs a tracer)."""
    found = []
    try:
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith("/") and os.path.isfile(target) and not target.startswith("/proc/"):
                found.append(target)
    except OSError:
        pass
    return sorted(set(found))


# ----------------------------------------------------------------------------------------------------------------
# facts (inside an image) and bw (the benchmark of verify)


def facts() -> dict:
    glibcxx = []
    for folder in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib"):
        candidate = os.path.join(folder, "libstdc++.so.6")
        if os.path.exists(candidate):
            with open(os.path.realpath(candidate), "rb") as handle:
                glibcxx = sorted(set(m.decode() for m in re.findall(rb"GLIBCXX_\d+(?:\.\d+)+", handle.read())),
                                 key=version_key)
            break
    return {"glibc": os.confstr("CS_GNU_LIBC_VERSION") or "", "glibcxx": glibcxx[-1] if glibcxx else ""}


def user_namespace() -> str:
    """This process's user namespace (`user:[4026531837]`): ranks in different ones cannot attach to each other's
    memory (cross-memory attach), which costs large-message bandwidth."""
    try:
        return os.readlink("/proc/self/ns/user")
    except OSError:
        return ""


def bw(library: str, sizes: list[int], rounds: int) -> dict:
    """osu_bw (window 64, ack) and osu_latency (ping-pong) per size, `rounds` times, on rank 0 (MB/s, us)."""
    mpi = CtypesMpi(library)
    if mpi.size != 2:
        raise ProbeError(f"bw needs exactly 2 ranks, got {mpi.size}")
    peer, window = 1 - mpi.rank, 64
    requests = (ctypes.c_int * window)()
    out: dict[str, list] = {"bw": [], "latency": []}
    for _ in range(rounds):
        for size in sizes:
            bufs = [ctypes.create_string_buffer(size) for _ in range(window)]
            ack = ctypes.create_string_buffer(4)
            iters, skip = (100, 10) if size <= 8192 else (20, 2)
            for i in range(iters + skip):
                if i == skip:
                    mpi.barrier()
                    start = mpi.wtime()
                if mpi.rank == 0:
                    for w in range(window):
                        mpi.isend(bufs[w], size, peer, ctypes.byref(requests, w * ctypes.sizeof(ctypes.c_int)))
                    mpi.waitall(window, requests)
                    mpi.recv(ack, 4, peer, tag=101)
                else:
                    for w in range(window):
                        mpi.irecv(bufs[w], size, peer, ctypes.byref(requests, w * ctypes.sizeof(ctypes.c_int)))
                    mpi.waitall(window, requests)
                    mpi.send(ack, 4, peer, tag=101)
            elapsed = mpi.wtime() - start
            out["bw"].append([size, size / 1e6 * iters * window / elapsed])
            iters, skip = (1000, 100) if size <= 8192 else (100, 10)
            buf = bufs[0]
            for i in range(iters + skip):
                if i == skip:
                    mpi.barrier()
                    start = mpi.wtime()
                if mpi.rank == 0:
                    mpi.send(buf, size, peer, tag=102)
                    mpi.recv(buf, size, peer, tag=102)
                else:
                    mpi.recv(buf, size, peer, tag=102)
                    mpi.send(buf, size, peer, tag=102)
            out["latency"].append([size, (mpi.wtime() - start) * 1e6 / (2 * iters)])
    result = {"rank": mpi.rank, "node": os.uname().nodename, "version": mpi.version(), **out,
              "userns": user_namespace(),
              "maps": [p for p in mapped_files() if re.search(r"/lib(mpi|mpich)[^/]*[.]so", p)]}
    mpi.finalize()
    return result


#: a launcher forwards a rank's output in messages of at most this many bytes (Slurm's SLURM_IO_MAX_MSG_LEN): a
#: longer line is cut there and another rank's message may land inside it, so every line ``emit`` prints fits in one
LINE_MAX = 1024


def emit(result: dict) -> None:
    """Print an answer as numbered lines, ``@probe ID I N TEXT``, each at most ``LINE_MAX`` bytes with its newline,
    that the reader puts back together however the ranks' lines interleave."""
    text = json.dumps(result, sort_keys=True)  # ASCII: a character is a byte
    ident = f"{os.uname().nodename}.{os.getpid()}"
    chunk = LINE_MAX - len(f"@probe {ident} 999999 999999 \n")  # the reader's indices have at most 6 digits
    parts = [text[i:i + chunk] for i in range(0, len(text), chunk)] or [""]
    for i, part in enumerate(parts):
        print(f"@probe {ident} {i} {len(parts)} {part}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("inspect", "run", "facts", "bw", "ids"))
    parser.add_argument("paths", nargs="*", help="ids: the files whose identity to print")
    parser.add_argument("--mpi-lib", default="libmpi.so.12", help="the MPI library file (or a soname for the loader)")
    parser.add_argument("--mpi4py", action="store_true", help="run: let mpi4py choose and load the library")
    parser.add_argument("--sizes", default="8,1048576", help="bw: comma-separated message sizes in bytes")
    parser.add_argument("--rounds", type=int, default=1, help="bw: repeats of the whole sweep")
    args = parser.parse_args(argv)
    try:
        if args.mode == "inspect":
            result = inspect(args.mpi_lib)
        elif args.mode == "run":
            result = run(args.mpi_lib, args.mpi4py)
        elif args.mode == "facts":
            result = facts()
        elif args.mode == "ids":
            result = identities(args.paths)
        else:
            result = bw(args.mpi_lib, [int(s) for s in args.sizes.split(",") if s], args.rounds)
    except ProbeError as exc:
        emit({"error": str(exc)})
        return 2
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
