"""What `nox -s tests` runs without options: the tests in two pytest processes side by side.

The first runs the integration tests in order (one build of the ci profile, one test cluster, one set of .sif
files, one registry per module), but for the modules of BESIDE; the second runs the modules of BESIDE (with a
build folder of its own), then the unit tests. The integration tests leave a core idle much of the time (Slurm
jobs, the registry, containers: 43 % over a run of them alone), so the second process costs the command little of
its time. Its output follows the first's (and stays in a log file); the exit status is the first failure's, and a
Ctrl-C stops both.

Tried and left: the Slurm tests in the second stream too, after the unit tests. The command took no less time
(1422 s, against 1299 s and 1424 s for two runs of this arrangement): that stream converts again the .sif files the
first converts (each process has its own build folder), and its jobs take CPU from the first stream's conversions
and benchmarks.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

PYTEST = [sys.executable, "-m", "pytest", "-v"]
#: integration modules of the second process, before the unit tests: they need no .sif file and no image that a
#: test of the first process removes, rebuilds or re-tags (publish and supply chain do that to
#: mpi4py:py3.11-mpich4.2.3, which `invoke check` of every cell would meet). First, so that their benchmarks run
#: beside the ABI table rather than beside `invoke convert` (91 % busy: the Open MPI bench took 97 s there, 30 s
#: alone), and so that on a fresh machine the bench child's mpi4py compile overlaps the stand-ins' downloads.
BESIDE = ("tests/test_bench_integration.py", "tests/test_h5py_integration.py")
FIRST = [*PYTEST, "-m", "integration", *(f"--ignore={module}" for module in BESIDE)]
SECOND = [[*PYTEST, "-m", "integration", *BESIDE], [*PYTEST, "-m", "not integration"]]


class Stream(threading.Thread):
    """pytest commands run one after the other into one log (each, whether the one before failed or not, until
    told to stop); its exit status is the first failure's."""

    def __init__(self, commands: list[list[str]], log: Path) -> None:
        super().__init__(daemon=True)
        self.commands, self.log = commands, log
        self.code, self.proc, self.stopped = 0, None, threading.Event()

    def run(self) -> None:
        with self.log.open("w", encoding="utf-8") as out:
            for command in self.commands:
                if self.stopped.is_set():
                    return
                out.write(f"\n$ {' '.join(command)}\n")
                out.flush()
                self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
                code = self.proc.wait()
                self.code = self.code or code

    def stop(self) -> None:
        self.stopped.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.join()


def main() -> int:
    # the system's temporary folder, never the checkout: the tests' keys folders are refused inside it
    log = Path(tempfile.mkdtemp(prefix="hpcimages-tests-")) / "second-process.log"
    print(f"{', '.join(BESIDE)}, then the unit tests, run beside the other integration tests; their output "
          f"follows ({log})", flush=True)
    second = Stream(SECOND, log)
    second.start()
    try:
        first = subprocess.run(FIRST, check=False).returncode
    except BaseException:  # Ctrl-C, or the runner stopped: the second stream stops too
        second.stop()
        raise
    second.join()
    print(log.read_text(encoding="utf-8"), flush=True)
    print(f"integration tests: pytest exit {first}; beside them: pytest exit {second.code} (log: {log})", flush=True)
    return first or second.code


if __name__ == "__main__":
    sys.exit(main())
