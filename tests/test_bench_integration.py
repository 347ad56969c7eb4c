"""The benchmark scripts for real: 2-rank runs in a `ci` image, validation, the CUDA simulator, and the
runner (a short complete run, and an interrupted one)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import default_sigint
from hpcimages import engine
from hpcimages.engine import Mount
from hpcimages.measure.results import load, parse_osu

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
IMAGE = "hpcimages/mpi4py:py3.11-mpich4.3.2"
CUDA_IMAGE = "hpcimages/cuda-python:py3.11-mpich4.3.2-cuda12.8"
OPEN_MPI_CELL = "mpi4py:py3.11-openmpi5.0.11"

# Rank 1 sees one flipped byte in what it received: -c must notice and fail the run.
CORRUPTING_WRAPPER = """
import sys
sys.path.insert(0, "/opt/hpcimages-bench")
import osu_bw
from mpi4py import MPI
real = osu_bw.received_bytes
def corrupted(buf, kind, nbytes):
    data = bytearray(real(buf, kind, nbytes))
    if MPI.COMM_WORLD.Get_rank() == 1 and nbytes >= 64:
        data[nbytes // 2] ^= 0xFF
    return bytes(data)
osu_bw.received_bytes = corrupted
sys.exit(osu_bw.main(["-m", "1:256", "-c", "-i", "5", "-x", "1"]))
"""


def run(client, image: str, command: str, env: dict | None = None) -> tuple[int, str]:
    return engine.run(client, image, ["sh", "-c", command], timeout=600, env=env,
                      mounts=[Mount(ROOT / "bench", "/opt/hpcimages-bench")])


@pytest.mark.parametrize("script,args,benchmark,first,last", [
    ("osu_bw.py", "-m 1:65536 -c -i 20 -x 2", "osu_bw", 1, 65536),
    ("osu_bw.py", "-m 1024:4096 -c -b bytearray", "osu_bw", 1024, 4096),
    ("osu_bw.py", "-m 1:1048576 -c -i 10 -x 2 --persistent", "osu_bw", 1, 1048576),
    ("osu_latency.py", "-m 0:8192 -c -i 200 -x 10", "osu_latency", 0, 8192),
    ("osu_allreduce.py", "-m 4:65536 -c -i 50 -x 5", "osu_allreduce", 4, 65536),
])
def test_each_mpi_script_runs_with_two_ranks(client, script, args, benchmark, first, last):
    code, out = run(client, IMAGE, f"mpiexec -n 2 python3 /opt/hpcimages-bench/{script} {args}")
    assert code == 0, out
    parsed = parse_osu(out)
    assert parsed.benchmark == benchmark
    sizes = [int(r["size"]) for r in parsed.rows]
    assert sizes[0] == first and sizes[-1] == last
    assert parsed.library and parsed.library.startswith("MPICH Version:")
    assert "FAILED" not in out
    # where the ranks ran and how their messages travelled: one node, shared memory
    assert parsed.layout == "intra-node" and parsed.placement.count("rank ") == 2, parsed.placement
    assert parsed.transport == "no tcp between ranks"
    if "--persistent" in args:
        assert "requests: persistent" in parsed.settings


def test_the_cross_memory_attach_probe_tells_the_sandboxes_apart(client):
    """Docker's default seccomp profile blocks process_vm_readv; with CAP_SYS_PTRACE it is allowed."""
    from hpcimages.measure import bench as bench_mod

    assert bench_mod.probe_cma(client, ROOT / "bench", IMAGE, bench_mod.SANDBOX) == "works"
    blocked = bench_mod.probe_cma(client, ROOT / "bench", IMAGE, bench_mod.DEFAULT_SANDBOX)
    assert blocked.startswith("blocked (process_vm_readv:") and "Operation not permitted" in blocked


def test_hello_prints_every_rank(client):
    code, out = run(client, IMAGE, "mpiexec -n 2 python3 /opt/hpcimages-bench/hello_mpi4py.py")
    assert code == 0
    assert "Hello World! I am process 0 of 2 on" in out and "Hello World! I am process 1 of 2 on" in out


def test_validation_catches_a_corrupted_buffer(client):
    code, out = run(client, IMAGE, f"mpiexec -n 2 python3 -c '{CORRUPTING_WRAPPER}'")
    assert code != 0, out
    assert "validation FAILED at 64 bytes" in out and "validation FAILED at 32 bytes" not in out


def test_scripts_refuse_a_wrong_rank_count(client):
    code, out = run(client, IMAGE, "mpiexec -n 1 python3 /opt/hpcimages-bench/osu_bw.py")
    assert code != 0 and "needs exactly 2 ranks" in out


def test_cuda_script_under_the_simulator(client):
    code, out = run(client, CUDA_IMAGE, "python3 /opt/hpcimages-bench/add_cuda_numba.py -n 8 --bandwidth-mib 1",
                    env={"NUMBA_ENABLE_CUDASIM": "1"})
    assert code == 0, out
    assert "[ 0.  3.  6.  9. 12. 15. 18. 21.]" in out
    assert "host-to-device" in out and "simulator: not a GPU figure" in out


def test_cuda_script_without_a_driver_says_how_to_get_one(client):
    code, out = run(client, CUDA_IMAGE, "python3 /opt/hpcimages-bench/add_cuda_numba.py")
    assert code == 3
    assert "no CUDA driver found" in out and "--nv" in out and "Traceback" not in out


def bench_cmd(results: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "invoke", "bench", "--profile", "ci",
            "--only", "mpi4py:py3.11-mpich4.3.2", "--results", str(results), "--no-plots", *extra]


def test_a_short_bench_stores_every_variant_and_prints_tables(client, tmp_path):
    results = tmp_path / "ci.jsonl"
    proc = subprocess.run(bench_cmd(results, "--repeats", "1", "--sizes", "osu_bw=4096:65536",
                                    "--sizes", "osu_latency=0:64", "--sizes", "osu_allreduce=4:64"),
                          cwd=ROOT, capture_output=True, text=True, check=False, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records, _ = load([results])
    variants = {(r.benchmark, r.variant) for r in records}
    for variant in ("container", "container (default sandbox)", "container+impi", "container (persistent)",
                    "container (C)", "bare-metal", "bare-metal (persistent)", "bare-metal (C)"):
        assert ("osu_bw", variant) in variants
    assert ("osu_allreduce", "container (C)") not in variants  # no C reference for it
    assert ("osu_allreduce", "container (default sandbox)") not in variants  # point-to-point only
    assert ("osu_allreduce", "bare-metal (persistent)") not in variants  # a mode of osu_bw.py and osu_latency.py
    assert ("osu_latency", "bare-metal (persistent)") in variants
    # the same Intel MPI as the swap, on bare metal; the copy ceiling beside osu_bw only
    assert {("osu_bw", "bare-metal+impi"), ("osu_latency", "bare-metal+impi")} <= variants
    assert {("osu_bw", "ceiling (memcpy)"), ("osu_bw", "ceiling (process_vm_readv)")} <= variants
    assert not {v for b, v in variants if b != "osu_bw" and v.startswith("ceiling")}
    assert {r.layout for r in records if r.variant.startswith("ceiling")} == {"intra-node"}
    # the same image under the engine's defaults and under the informed sandbox; each run says what its probe saw
    sandboxes = {r.variant: r.sandbox for r in records if r.variant.startswith("container") and r.language == "python"}
    assert sandboxes["container"] == "cap-add SYS_PTRACE; cross-memory attach works"
    assert sandboxes["container (default sandbox)"].startswith("engine default; cross-memory attach blocked")
    # every rank pinned to a core of its own, on bare metal and in the container alike (the machine has >= 2)
    for variant in ("container", "bare-metal", "container (C)", "bare-metal (C)"):
        placement = next(r.placement for r in records if r.variant == variant)
        assert re.fullmatch(r"rank 0 \S+ cpus (\d+); rank 1 \S+ cpus (?!\1)\d+", placement), (variant, placement)
    c_run = next(r for r in records if r.variant == "bare-metal (C)")
    assert c_run.settings.startswith("buffer: numpy-like"), c_run.settings  # allocated like numpy's
    assert "Python overhead per message" in proc.stdout
    impi = next(r for r in records if r.variant == "container+impi")
    assert impi.mpi_library.startswith("Intel(R) MPI Library")
    own = next(r for r in records if r.variant == "container")
    assert own.mpi_library.startswith("MPICH Version:") and own.image_id.startswith("sha256:")
    # which library ran is proven by the file each run loaded, not by its label
    assert impi.mpi_library_file.startswith("/opt/host-mpi/"), impi.mpi_library_file
    bare_impi = next(r for r in records if r.variant == "bare-metal+impi")
    assert bare_impi.mpi_library.startswith("Intel(R) MPI Library") and bare_impi.image is None
    assert "/host-mpi/impi-rt-" in bare_impi.mpi_library_file, bare_impi.mpi_library_file  # the stand-in's folder
    ceiling = {r.size: r.value for r in records if r.variant == "ceiling (memcpy)"}
    assert sorted(ceiling) == [4096, 8192, 16384, 32768, 65536] and all(v > 0 for v in ceiling.values())
    assert "as a fraction of the copy ceiling" in proc.stdout and "decisions (a fixed number of repeats" in proc.stdout
    assert own.mpi_library_file.startswith("/usr/local/lib/libmpi"), own.mpi_library_file
    assert impi.mpi_abi == own.mpi_abi == "mpich"  # the extension mpi4py selected, printed by the script
    assert {"host", "date", "command", "session", "site"} <= {k for k, v in own.to_json().items() if v}
    assert "Bandwidth (MB/s)" in proc.stdout and "Targets" in proc.stdout
    assert results.with_suffix(".md").is_file()


def test_a_standard_abi_image_is_measured_against_the_mpich_abi_of_the_same_image(client, tmp_path):
    results = tmp_path / "ci.jsonl"
    proc = subprocess.run([sys.executable, "-m", "invoke", "bench", "--profile", "ci", "--only",
                           "mpi4py:py3.13-mpiabi-mpich5.0.2", "--results", str(results), "--no-plots", "--no-swap",
                           "--no-default-sandbox", "--no-ceiling",
                           "--repeats", "2", "--bench", "osu_bw", "--sizes", "osu_bw=1048576:1048576"],
                          cwd=ROOT, capture_output=True, text=True, check=False, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records, _ = load([results])
    by_variant = {r.variant: r for r in records}
    assert set(by_variant) == {"container", "container (MPICH ABI)", "container (C)", "container (C, MPICH ABI)",
                               "container (persistent)"}
    # each label proven by the library file its run loaded, in the same image with the same MPICH
    assert by_variant["container"].mpi_library_file == "/usr/local/lib/libmpi_abi.so.1"
    assert by_variant["container"].mpi_abi == "mpiabi"  # mpi4py compiled for the standard ABI
    assert by_variant["container (MPICH ABI)"].mpi_library_file == "/usr/local/lib/libmpi.so.12"
    assert by_variant["container (MPICH ABI)"].mpi_abi == "built-in"  # the same sdist, compiled for MPICH
    assert len({r.image_id for r in records}) == 2  # the image, and its child with the C references
    # MPICH 5 hangs or fails at 1 MiB without it
    assert all(r.sandbox.startswith("cap-add SYS_PTRACE") for r in records if r.language == "python")
    assert "MPI-5 standard ABI / MPICH ABI" in proc.stdout and "no bare-metal twin" in proc.stdout
    assert re.search(r"1048576\s+\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\] (equivalent|slower|faster|undecided)",
                     proc.stdout), proc.stdout[-2000:]


def test_an_open_mpi_image_is_measured_against_the_same_wheel_on_bare_metal_and_the_other_series(client, tmp_path):
    """The ci Open MPI image: its own Open MPI 5, the bind swap to Open MPI 4.1.8 (another release series, bound the way
    `invoke check` proves it), the same wheel in a host venv, and the C references; each label proven by the library
    file its run loaded."""
    results = tmp_path / "ci.jsonl"
    proc = subprocess.run([sys.executable, "-m", "invoke", "bench", "--profile", "ci", "--only", OPEN_MPI_CELL,
                           "--results", str(results), "--no-plots", "--repeats", "2", "--bench", "osu_bw,osu_latency",
                           "--sizes", "osu_bw=1048576:1048576", "--sizes", "osu_latency=8:8"],
                          cwd=ROOT, capture_output=True, text=True, check=False, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records, _ = load([results])
    by_variant = {r.variant: r for r in records if r.benchmark == "osu_bw"}
    assert set(by_variant) == {"container", "container (default sandbox)", "container+openmpi",
                               "container (persistent)", "container (C)", "bare-metal", "bare-metal (persistent)",
                               "bare-metal (C)", "bare-metal+openmpi", "ceiling (memcpy)", "ceiling (process_vm_readv)"}
    # the swap's Open MPI 4.1.8 on bare metal too, from the stand-in's folder on the host
    host = by_variant["bare-metal+openmpi"]
    assert host.mpi_library.startswith("Open MPI v4.1.8,") and "/host-mpi/openmpi-4.1.8/" in host.mpi_library_file
    own, swap, bare = by_variant["container"], by_variant["container+openmpi"], by_variant["bare-metal"]
    assert own.mpi_library.startswith("Open MPI v5.0.11,") and own.mpi_library_file == "/usr/local/lib/libmpi.so.40"
    assert swap.mpi_library.startswith("Open MPI v4.1.8,") and swap.mpi_library_file == "/opt/host-mpi/lib/libmpi.so.40"
    assert bare.mpi_library.startswith("Open MPI v5.0.11,") and bare.mpi_library_file.endswith(
        "venv-py3.11-openmpi5.0.11/lib/libmpi.so.40"), bare.mpi_library_file
    assert own.mpi_abi == swap.mpi_abi == bare.mpi_abi == "openmpi"  # mpi4py chose its Open MPI extension
    assert by_variant["container (C)"].mpi_library.startswith("Open MPI v5.0.11,")
    # Open MPI's shared memory wants cross-memory attach too: the probe tells the two sandboxes apart
    assert own.sandbox.endswith("cross-memory attach works")
    assert "cross-memory attach blocked" in by_variant["container (default sandbox)"].sandbox
    assert re.search(r"1048576\s+.*\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\] (equivalent|slower|faster|undecided)",
                     proc.stdout), proc.stdout[-2000:]
    assert "bw container+openmpi / bare metal" in proc.stdout
    assert "latency container+openmpi / bare metal" in proc.stdout
    assert "bind model / the same host MPI on bare metal (container+openmpi / bare-metal+openmpi)" in proc.stdout


def test_until_decided_stops_at_a_look_and_the_report_judges_at_that_look(client, tmp_path):
    """The smallest real --until-decided: the latency target's questions (persistent Python - C at 1 and 2 B) and
    nothing else; it stops at a planned look, every stored row carries the plan, and the report's decisions say at
    which look each question was decided (or that it was not)."""
    from hpcimages import stats

    results = tmp_path / "ci.jsonl"
    proc = subprocess.run(bench_cmd(results, "--until-decided", "--budget", "2", "--no-swap", "--no-default-sandbox",
                                    "--no-bare-metal", "--no-ceiling", "--bench", "osu_latency",
                                    "--sizes", "osu_latency=1:2"),
                          cwd=ROOT, capture_output=True, text=True, check=False, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records, _ = load([results])
    plan = stats.Sequential()
    assert {r.looks for r in records} == {plan.text()}
    assert {r.variant for r in records} == {"container", "container (persistent)", "container (C)"}
    repeats = {r.variant: max(x.repeat for x in records if x.variant == r.variant) for r in records}
    # "container" is read by no question: it stops after the first look; the target's two variants at a look
    assert repeats["container"] == plan.looks[0]
    assert repeats["container (persistent)"] == repeats["container (C)"] in plan.looks
    look = re.findall(r"look at (\d+) repeats[^\n]*", proc.stdout)
    assert look and int(look[-1]) == repeats["container (C)"], proc.stdout[-2000:]
    decisions = re.findall(r"container \(persistent\) - container \(C\)\s+(\d)\s+\S+ \[\S+, \S+\]\s+(\d+) of "
                           r"(\d+)\s+(met|NOT met|undecided)", proc.stdout)
    assert [d[0] for d in decisions] == ["1", "2"], proc.stdout[-3000:]
    for _, used, stored, _ in decisions:
        assert int(used) in plan.looks and int(used) <= int(stored) == repeats["container (C)"]
    outcomes = {d[3] for d in decisions}
    # it stopped because all were decided, or with one undecided at the last look it reached
    assert ("undecided" not in outcomes) == ("every question is decided" in proc.stdout), proc.stdout[-2000:]
    assert "osu_latency.py --persistent within +0.4 µs of the C reference" in proc.stdout


def test_an_interrupted_bench_keeps_every_finished_run(client, tmp_path):
    results = tmp_path / "ci.jsonl"
    proc = subprocess.Popen(bench_cmd(results, "--repeats", "5", "--no-c", "--no-bare-metal",
                                      "--sizes", "osu_bw=1:1024", "--bench", "osu_bw"),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and (not results.exists() or results.read_text().count("\n") < 11):
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-2000:] + err[-2000:]
    assert "interrupted: the runs finished before it are in" in err
    lines = results.read_text().splitlines()
    rows = [json.loads(line) for line in lines]  # every stored line is whole
    per_run = Counter(r["run_id"] for r in rows)
    assert per_run and set(per_run.values()) == {11}, per_run  # 1..1024 B: 11 sizes in every stored run
    assert len(per_run) < 10  # it stopped early
