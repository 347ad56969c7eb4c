"""One row of the ABI table: an image with one host-MPI stand-in injected the way a site does it.

Injection (mpirun.Binding): the stand-in's folder bind-mounted at ``/opt/host-mpi`` (read-only), its ``lib/`` first
on ``LD_LIBRARY_PATH``, ranks started by its own ``mpiexec`` (or the image's, for a library without one). Every
container runs with no network, the hostname ``localhost`` (mpi4py's suite resolves its own host name) and the
sandbox an informed site uses (mpirun.CROSS_MEMORY_ATTACH, which says why).

Measured per pair, each step only when the one before it passed:

load       mpi4py imports with the stand-in and the file it mapped lies under ``/opt/host-mpi`` (the proof by path);
           else the loader's reason (a missing symbol, ``GLIBC_x.y not found``) or the file it loaded instead
hello      2 ranks under the stand-in's launcher, through Docker, and through Apptainer when the image's ``.sif``
           is there (``apptainer exec`` with the folder bound in and ``APPTAINERENV_LD_LIBRARY_PATH``)
bench      ``osu_bw`` at 1 MiB and ``osu_latency`` at 8 B, interleaved with the image's own MPI, medians
suite      mpi4py's test suite from the sdist matching the image, 1 and 2 ranks, with a time limit per test
           (``test_timeout``) and per run (``suite_timeout``); a test that crashes or hangs the run is named, left
           out, and the run repeated (at most ``CRASH_RERUNS`` times)
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import docker

from .. import engine, stats
from ..engine import Mount
from ..errors import output_tail
from ..measure.results import ResultsError, parse_osu
from ..mpirun import (
    BENCH_MOUNT,
    CROSS_MEMORY_ATTACH,
    HOST_MPI_MOUNT,
    IMAGE_MPI,
    OPEN_MPI_SONAME,
    Binding,
    loaded_from_host,
    mpiexec_argv,
    run_in_image,
)
from ..sif.apptainer import Runtime

HOST_MOUNT = HOST_MPI_MOUNT
ABI_MOUNT = "/opt/hpcimages-abi"
TESTS_MOUNT = "/opt/mpi4py-test"
OUT_MOUNT = "/out"
INCONTAINER = Path(__file__).parent / "incontainer"
OWN = "own"  # the row of the image's own MPI: every other row is compared with it
STEP_TIMEOUT_S = 180
CRASH_RERUNS = 8
BW_SIZE, LAT_SIZE = 1048576, 8

Progress = Callable[[str], None]


@dataclass
class SuiteScore:
    ranks: int
    status: str = "not run"  # ran | crashed | timed out | not run
    run: int = 0
    failed: list[str] = field(default_factory=list)  # failures and errors, test ids
    skipped: int = 0
    crashed: list[str] = field(default_factory=list)  # tests that killed or hung a run (left out of the rerun)
    seconds: float = 0.0
    note: str = ""


@dataclass
class Pair:
    """One image × one stand-in (or the image's own MPI: ``host == "own"``)."""

    cell: str
    image: str
    image_id: str
    host: str
    host_version: str = ""
    abi: str = "mpich"
    status: str = "measured"  # measured | skipped
    skip_reason: str = ""
    loads: bool = False
    load_reason: str = ""
    library_file: str = ""
    library_version: str = ""
    mpiabi: str = ""
    mpi_version: str = ""
    mpi4py_version: str = ""
    mpi4: dict[str, str] = field(default_factory=dict)
    hello: str = ""  # pass, or why not
    apptainer: str = ""  # pass, why not, or why it was not tried
    c_probe: str = ""  # the C program compiled by the image's mpicc: pass, or what happened (cprobe.py)
    bw_mbs: float | None = None
    lat_us: float | None = None
    bw_ratio: float | None = None  # injected / own, 1 MiB (higher is faster)
    lat_ratio: float | None = None  # injected / own, 8 B (higher is slower)
    bw_interval: list[float] | None = None  # 95 % bootstrap interval of the repeats' paired ratios (>= 2 repeats)
    bench_note: str = ""  # a benchmark run that gave no number, and why
    suite: list[SuiteScore] = field(default_factory=list)
    verdict: str = ""
    verdict_reason: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Pair:
        """A stored row (unknown keys of another version dropped, its suite scores rebuilt)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        score_keys = {f.name for f in fields(SuiteScore)}
        values["suite"] = [SuiteScore(**{k: v for k, v in s.items() if k in score_keys})
                           for s in values.get("suite") or [] if isinstance(s, dict) and "ranks" in s]
        return cls(**values)


class PairRunner:
    """Runs the steps of a pair in containers of one image."""

    def __init__(self, client: docker.DockerClient, image_id: str, bench: Path, tests: Path | None,
                 suite_timeout: int, repeats: int, progress: Progress = print, suite_include: tuple[str, ...] = (),
                 test_timeout: int = 60) -> None:
        self.client = client
        self.image_id = image_id
        self.bench_dir = bench
        self.tests = tests
        self.suite_timeout = suite_timeout
        self.repeats = repeats
        self.progress = progress
        self.suite_include = suite_include  # regular expressions on test module names (main.py -i)
        self.test_timeout = test_timeout  # seconds one test may take (suite.py's watchdog)
        self.c_runner: PairRunner | None = None  # the same steps in the image's C-probe child (cprobe.py)
        self.c_problem = "not tried: no C probe"
        self.soname = "libmpi.so.12"  # what the image's mpi4py links: libmpi_abi.so.1 for the MPI-5 standard ABI
        self.own = IMAGE_MPI  # the image's own MPI with its launch settings (mpirun.image_mpi)

    def run(self, inj: Binding, argv: list[str], timeout: int = STEP_TIMEOUT_S, out: Path | None = None,
            env: dict[str, str] | None = None, ranks: int = 0) -> tuple[int, str]:
        """``argv`` in a container of the image with ``inj`` bound; ``ranks``: that many ranks of it under the
        launcher of what is bound (mpirun.mpiexec_argv)."""
        argv = mpiexec_argv(inj.launcher, argv, ranks) if ranks else argv
        mounts = [Mount(INCONTAINER, ABI_MOUNT), Mount(self.bench_dir, BENCH_MOUNT)]
        if self.tests is not None:
            mounts.append(Mount(self.tests, TESTS_MOUNT))
        if out is not None:
            mounts.append(Mount(out, OUT_MOUNT, read_only=False))
        return run_in_image(self.client, self.image_id, argv, timeout=timeout, binding=inj, mounts=mounts, env=env,
                            hostname="localhost", sandbox=CROSS_MEMORY_ATTACH)

    # -- steps -------------------------------------------------------------------------------------

    def probe(self, inj: Binding, pair: Pair) -> None:
        # abi_probe asks bench/mpiloaded.py which library it loaded (the one answer, shared with the scripts)
        code, out = self.run(inj, ["python3", f"{ABI_MOUNT}/abi_probe.py"], env={"PYTHONPATH": BENCH_MOUNT},
                             ranks=1)
        facts = engine.last_json_line(out)
        if facts is None:
            missing = self._missing_soname(inj)
            pair.load_reason = (f"{missing}; the image's own library then fails under the stand-in's launcher "
                                if missing else "the probe printed nothing ") + f"(exit {code}): {short(out)}"
            return
        files = facts.get("files") or []
        pair.library_file = " ".join(files)
        if "error" in facts:
            pair.load_reason = _load_error(str(facts["error"]))
            return
        pair.library_version = str(facts.get("library_version") or "")
        pair.mpiabi = str(facts.get("mpiabi") or "")
        pair.mpi_version = str(facts.get("mpi_version") or "")
        pair.mpi4py_version = str(facts.get("mpi4py") or "")
        pair.mpi4 = dict(facts.get("mpi4") or {})
        injected = loaded_from_host(files)
        if inj.bound and not injected:
            pair.load_reason = self._not_injected(inj, pair)
            return
        if not inj.bound and injected:
            pair.load_reason = f"the image's own run loaded {injected[0]}"
            return
        pair.loads = code == 0
        if not pair.loads:
            pair.load_reason = f"exit {code}: {short(out)}"

    def _not_injected(self, inj: Binding, pair: Pair) -> str:
        loaded = f"mpi4py loaded {pair.library_file or 'no library file'} ({pair.library_version})"
        missing = self._missing_soname(inj)
        if missing:
            return f"{missing} ({loaded} instead)"
        wanted = inj.soname if inj.bound and self.soname == "libmpi.so.12" else self.soname
        return f"{loaded}, not the injected {wanted} under {HOST_MOUNT}/lib"

    def _missing_soname(self, inj: Binding) -> str:
        """Why a standard-ABI image cannot bind this stand-in, read from its lib/ ('' when it has the soname)."""
        if self.soname == "libmpi.so.12" or inj.folder is None or (inj.folder / "lib" / self.soname).exists():
            return ""
        others = sorted(p.name for p in (inj.folder / "lib").glob("libmpi_abi.so.*"))
        has = f"it has {', '.join(others)}, a soname from before the MPI-5.0 standard" if others else \
            "it implements no MPI-5 standard ABI"
        return f"the stand-in has no {self.soname}: {has}"

    def hello(self, inj: Binding) -> str:
        code, out = self.run(inj, ["python3", f"{BENCH_MOUNT}/hello_mpi4py.py", "--library"], ranks=2)
        return _hello_verdict(code, out, inj)

    def bench(self, own: Binding, inj: Binding) -> tuple[float | None, float | None, float | None, float | None,
                                                           str, list[float]]:
        """Medians of osu_bw 1 MiB and osu_latency 8 B, own and injected runs interleaved:
        (bw_own, bw_inj, lat_own, lat_inj, what failed, injected / own bandwidth of each repeat where both ran)."""
        samples: dict[tuple[str, str], list[float]] = {}
        failed: dict[str, str] = {}
        bw_runs: dict[tuple[str, int], float] = {}  # (own | inj, repeat) -> MB/s, for the paired ratios
        for repeat in range(self.repeats):
            for name, which in (("own", own), ("inj", inj)):
                for bench, size, metric in (("osu_bw", BW_SIZE, "bandwidth_mbs"),
                                            ("osu_latency", LAT_SIZE, "latency_us")):
                    code, out = self.run(which, ["python3", f"{BENCH_MOUNT}/{bench}.py", "-m", f"{size}:{size}"],
                                         ranks=2)
                    value = _osu_value(out, size, metric) if code == 0 else None
                    if value is not None:
                        samples.setdefault((name, bench), []).append(value)
                        if bench == "osu_bw":
                            bw_runs[(name, repeat)] = value
                    else:
                        why = "timed out" if code == engine.EXIT_TIMEOUT else f"exit {code}"
                        failed.setdefault(f"{bench} {size} B ({'own' if name == 'own' else 'injected'})", why)
        bw_paired = stats.paired_ratios(bw_runs, "inj", "own")

        def median(key: tuple[str, str]) -> float | None:
            return stats.median_or_none(samples.get(key, []))

        note = "; ".join(f"{what}: {why}" for what, why in failed.items())
        return (median(("own", "osu_bw")), median(("inj", "osu_bw")), median(("own", "osu_latency")),
                median(("inj", "osu_latency")), note, bw_paired)

    def suite(self, inj: Binding, ranks: int) -> SuiteScore:
        score = SuiteScore(ranks)
        if self.tests is None:
            score.note = "no test suite (mpi4py sdist not prepared)"
            return score
        start = time.monotonic()
        left_out: list[str] = []
        for _ in range(CRASH_RERUNS + 1):
            with tempfile.TemporaryDirectory(prefix="hpcimages-suite-") as tmp:
                out_dir = Path(tmp)
                out_dir.chmod(0o777)
                # faulthandler: a crash while the suite imports its modules names the module in its traceback
                argv = ["python3", "-X", "faulthandler", f"{ABI_MOUNT}/suite.py", TESTS_MOUNT, OUT_MOUNT]
                for pattern in self.suite_include:
                    argv += ["-i", pattern]
                for test in left_out:
                    argv += ["-e", test] if "." not in test else ["-x", test]
                # the workers that mpi4py.futures and the pool tests spawn import the test modules by name
                code, out = self.run(inj, argv, timeout=self.suite_timeout, out=out_dir, ranks=ranks,
                                     env={"PYTHONPATH": TESTS_MOUNT, "HPCIMAGES_TEST_TIMEOUT": str(self.test_timeout)})
                results = [_read_json(out_dir / f"result-{r}.json") for r in range(ranks)]
                running = sorted({(out_dir / f"progress-{r}").read_text(encoding="utf-8").strip()
                                  for r in range(ranks) if (out_dir / f"progress-{r}").is_file()} - {""})
            if all(results):
                score.status = "ran" if not score.crashed else "crashed"
                score.run = max(r["run"] for r in results)  # type: ignore[index]
                score.failed = sorted({t for r in results for t in r["failures"] + r["errors"]})  # type: ignore[index]
                score.skipped = max(r["skipped"] for r in results)  # type: ignore[index]
                break
            # the whole run past its limit, or one test past its own (suite.py's watchdog prints "Timeout (")
            timed_out = code == engine.EXIT_TIMEOUT or "Timeout (" in out
            if not running:
                module = importing_module(out)
                if module is None or module in left_out:
                    score.status = "timed out" if timed_out else "crashed"
                    score.note = f"the suite stopped before its first test (exit {code}): {short(out)}"
                    break
                running = [module]  # it crashed importing this test module: leave the module out
                score.crashed.append(f"{module} (while importing it, {'hung' if timed_out else f'exit {code}'})")
                left_out.append(module)
                score.status = "timed out" if timed_out else "crashed"
                continue
            score.crashed.extend(f"{t} ({'hung' if timed_out else f'exit {code}'})" for t in running)
            for test in running:
                # a second test of the same module that kills the run: leave the whole module out, not test by test
                module = test.split(".", 1)[0]
                repeat = any(t.split(".", 1)[0] == module for t in left_out if t != test)
                left_out.append(module if repeat else test)
            score.status = "timed out" if timed_out else "crashed"
        else:
            score.note = f"still crashing after {CRASH_RERUNS} reruns"
        score.seconds = time.monotonic() - start
        return score

    def apptainer(self, runtime: Runtime | None, sif: Path | None, inj: Binding) -> str:
        if runtime is None:
            return "not tried: no Apptainer runtime"
        if sif is None:
            return "not tried: no up-to-date .sif (invoke convert)"
        sif_dir, sif_mounts = runtime.see(sif.parent, "/sif")
        bench_dir, bench_mounts = runtime.see(self.bench_dir, BENCH_MOUNT)
        mounts = [*sif_mounts, *bench_mounts]
        env = {"APPTAINERENV_UCX_POSIX_USE_PROC_LINK": "n"}
        binds = ["-B", bench_dir]
        hello = ["python3", f"{BENCH_MOUNT}/hello_mpi4py.py", "--library"]
        launcher = "mpiexec"
        if inj.folder is None and self.own.soname == OPEN_MPI_SONAME:
            # the launcher outside is MPICH's, whose PMI an Open MPI rank cannot speak: the image's own mpirun
            # starts its ranks inside the container (invoke convert's hello does the same)
            env.update(self.own.container_env())
            code, out = runtime.run(["apptainer", "exec", *binds, f"{sif_dir}/{sif.name}", "mpirun", "-n", "2",
                                     *hello], mounts, env=env, timeout=STEP_TIMEOUT_S)
            return _hello_verdict(code, out, inj)
        if inj.folder is not None:
            host_dir, host_mounts = runtime.see(inj.folder, HOST_MOUNT)
            mounts += host_mounts
            binds += ["-B", f"{host_dir}:{HOST_MOUNT}:ro"]
            # and the launcher outside reads the host MPI's own variables, and where it lies outside
            env.update(inj.apptainer_env(host_dir))
            if inj.own_launcher:
                launcher = f"{host_dir}/bin/mpiexec"
        code, out = runtime.run([launcher, "-n", "2", "apptainer", "exec", *binds, f"{sif_dir}/{sif.name}", *hello],
                                mounts, env=env, timeout=STEP_TIMEOUT_S)
        return _hello_verdict(code, out, inj)


# ---------------------------------------------------------------------------------------------
# reading outputs (pure, tested with recorded text)


def importing_module(out: str) -> str | None:
    """The test module whose import crashed the run, from faulthandler's traceback (its ``<module>`` frame)."""
    match = re.search(rf'File "{re.escape(TESTS_MOUNT)}/(test_\w+)\.py", line \d+ in <module>', out)
    return match.group(1) if match else None


def _load_error(error: str) -> str:
    """The loader's decisive line out of mpi4py's list of tries ('cannot load MPI library' + one line per name)."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    for marker in ("GLIBC_", "undefined symbol", "version `", "wrong ELF class"):
        hit = next((line for line in lines if marker in line), None)
        if hit:
            return hit
    return lines[-1] if lines else error


def _hello_verdict(code: int, out: str, inj: Binding) -> str:
    if code != 0 or "process 0 of 2" not in out or "process 1 of 2" not in out:
        return f"2-rank hello failed (exit {code}): {short(out)}"
    library_file = next((line.split(":", 1)[1].strip() for line in out.splitlines()
                         if line.startswith("# library file:")), "")
    from_host = bool(loaded_from_host(library_file.split()))
    if inj.bound and not from_host:
        return f"2 ranks ran, but on {library_file or 'an unnamed library'}, not the injected one"
    if not inj.bound and from_host:
        return f"2 ranks ran on the host library {library_file}"
    return "pass"


def _osu_value(out: str, size: int, metric: str) -> float | None:
    try:
        parsed = parse_osu(out)
    except ResultsError:
        return None
    row = next((r for r in parsed.rows if int(r["size"]) == size), None)
    return row.get(metric) if row else None


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def short(out: str) -> str:
    return output_tail(out, lines=3, limit=300)
