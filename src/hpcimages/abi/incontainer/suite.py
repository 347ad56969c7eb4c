"""Run mpi4py's own test suite (the ``test/`` folder of the sdist matching the image) and keep score per rank.

Run *inside* a container by ``invoke abi``::

    mpiexec -n 2 python3 /opt/hpcimages-abi/suite.py TESTDIR OUTDIR [main.py options, e.g. -x PATTERN]

Each rank writes ``OUTDIR/progress-<rank>`` (the test it is running, rewritten before every test, so a crash names
its test) and, at the end, ``OUTDIR/result-<rank>.json``: tests run, failures and errors with their names, skips.
A test that runs longer than ``HPCIMAGES_TEST_TIMEOUT`` seconds (default 60) ends the rank through faulthandler's
own watchdog thread, which needs no GIL (a test stuck in a blocking MPI call still ends), printing
"Timeout (h:mm:ss)!" and the stacks; mpiexec then takes the other ranks down.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import sys
import unittest


def main() -> None:
    testdir, outdir, options = sys.argv[1], sys.argv[2], sys.argv[3:]
    sys.path.insert(0, testdir)
    sys.dont_write_bytecode = True
    import main as suite_main  # the sdist's runner: its options, its known-failure skips
    from mpi4py import MPI

    rank = MPI.COMM_WORLD.Get_rank()
    progress_path = os.path.join(outdir, f"progress-{rank}")
    limit = float(os.environ.get("HPCIMAGES_TEST_TIMEOUT") or 60)

    class Result(unittest.TextTestResult):
        def startTest(self, test):
            with open(progress_path, "w", encoding="utf-8") as progress:
                progress.write(test.id())
            faulthandler.dump_traceback_later(limit, exit=True)
            super().startTest(test)

        def stopTest(self, test):
            faulthandler.cancel_dump_traceback_later()
            super().stopTest(test)

    stream = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - lives as long as the run
    runner = unittest.TextTestRunner(stream=stream, resultclass=Result, verbosity=0)
    program = None

    class Program(suite_main.TestProgram):
        def runTests(self):
            nonlocal program
            program = self
            super().runTests()

    with contextlib.suppress(SystemExit):  # the sdist's runner exits with its verdict; the score is what counts
        Program(module=None, argv=["suite", *options], testRunner=runner, exit=False)
    if program is None or getattr(program, "result", None) is None:
        sys.exit("the suite did not run")
    result = program.result
    summary = {
        "rank": rank,
        "run": result.testsRun,
        "failures": sorted(test.id() for test, _ in result.failures),
        "errors": sorted(test.id() for test, _ in result.errors),
        "skipped": len(result.skipped),
        "expected_failures": len(result.expectedFailures),
        "unexpected_successes": len(result.unexpectedSuccesses),
    }
    with open(os.path.join(outdir, f"result-{rank}.json"), "w", encoding="utf-8") as out:
        json.dump(summary, out)
    with open(progress_path, "w", encoding="utf-8") as progress:
        progress.write("")


if __name__ == "__main__":
    main()
