"""Benchmarks that decide: the sequential plan, the rules' outcomes, the looks the report reproduces, and what the
bench runs after a look (stats.Sequential, measure/decide.py, measure/bench.py's loop helpers)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from hpcimages import stats
from hpcimages.define import load_matrix
from hpcimages.measure import bench, decide
from hpcimages.measure.report import build_report
from hpcimages.measure.results import ResultRow, ResultsError, append_run
from hpcimages.mpirun import Binding

ROOT = Path(__file__).resolve().parent.parent
CELL = "mpi4py:py3.11-mpich4.3.2"
PLAN = stats.Sequential((8, 12, 18))


def rows(pairs: list[tuple[float, float]], a: str = "container", b: str = "bare-metal", size: int = 1 << 20,
         bench_name: str = "osu_bw", looks: str | None = None, session: str = "s1") -> list[ResultRow]:
    """One row of each variant per repeat, paired in order."""
    out = []
    for repeat, (x, y) in enumerate(pairs, 1):
        for variant, value in ((a, x), (b, y)):
            out.append(ResultRow(benchmark=bench_name, variant=variant, size=size, value=value, repeat=repeat,
                                 mpi="mpich4.3.2", cell=None if variant.startswith("bare-metal") else CELL,
                                 session=session, looks=looks))
    return out


def test_a_plan_is_stored_as_text_and_read_back():
    plan = stats.Sequential()
    assert stats.Sequential.parse(plan.text()) == plan
    assert plan.level == pytest.approx(1 - 0.05 / len(plan.looks))
    assert plan.next_look(0) == plan.looks[0] and plan.next_look(plan.looks[-1]) is None


@pytest.mark.parametrize("text", ["", "5,8", "5,3@0.05", "1,2@0.05", "5,8@1.5", "5,8@0.05;rm -rf /",
                                  "x@0.05", "5,,8@0.05", ",".join(["5"] * 30) + "@0.05", "9" * 5000 + "@0.05"])
def test_a_stored_plan_that_is_not_one_is_refused_with_what_a_plan_looks_like(text):
    with pytest.raises(stats.PlanError, match="is not a plan of looks"):
        stats.Sequential.parse(text)


def test_each_look_is_wider_than_a_plain_95_percent_interval():
    values = [0.91, 0.97, 1.02, 0.99, 1.04, 0.95, 1.01, 0.98]
    plain, look = stats.interval(values), stats.interval(values, PLAN.level)
    assert look.low <= plain.low and look.high >= plain.high and (look.low, look.high) != (plain.low, plain.high)


@pytest.mark.parametrize("rule_kind, bound, low, high, outcome", [
    (decide.EQUIVALENT, 1.0, 0.96, 1.04, decide.MET),
    (decide.EQUIVALENT, 1.0, 0.80, 0.94, decide.NOT_MET),
    (decide.EQUIVALENT, 1.0, 1.06, 1.20, decide.NOT_MET),
    (decide.EQUIVALENT, 1.0, 0.90, 1.01, decide.UNDECIDED),
    (decide.AT_LEAST, 0.95, 0.95, 1.30, decide.MET),
    (decide.AT_LEAST, 0.95, 0.70, 0.949, decide.NOT_MET),
    (decide.AT_LEAST, 0.95, 0.90, 1.10, decide.UNDECIDED),
    (decide.DIFFERENCE_AT_MOST, 0.4, 0.01, 0.40, decide.MET),
    (decide.DIFFERENCE_AT_MOST, 0.4, 0.41, 0.80, decide.NOT_MET),
    (decide.DIFFERENCE_AT_MOST, 0.4, 0.30, 0.50, decide.UNDECIDED),
])
def test_a_rule_is_decided_only_by_where_its_whole_interval_lies(rule_kind, bound, low, high, outcome):
    rule = decide.Rule("r", "osu_bw", "a", "b", rule_kind, bound)
    assert rule.outcome(stats.Interval((low + high) / 2, low, high)) == outcome
    assert rule.outcome(None) == decide.UNDECIDED


def test_the_report_judges_a_sequential_session_at_the_look_that_decided_it():
    # one repeat at 1.08: at eight repeats the interval is the smallest to the largest value, and holds it; at
    # twelve, the second smallest to the second largest (98.3 % at twelve), which leaves it out: decided there
    pairs = [(1.08, 1.0)] + [(1.0, 1.0)] * 17
    stored = rows(pairs, looks=PLAN.text())
    rule = decide.RULES[0]
    found = decide.answer(stored, rule, 1 << 20, decide.plan_of(stored))
    assert decide.plan_of(stored) == PLAN and (found.repeats, found.available, found.outcome) == (12, 18, decide.MET)
    ratios = [x / y for x, y in pairs]
    assert [PLAN.look(ratios[:n], lambda iv: rule.outcome(iv) != decide.UNDECIDED)[1:] for n in (8, 12)] == \
        [(8, False), (12, True)]
    # the same repeats without a plan: one 95 % interval over all eighteen
    fixed = decide.answer(rows(pairs), rule, 1 << 20, None)
    assert fixed.repeats == 18 and fixed.outcome == decide.MET
    table = next(t for t in build_report(stored).tables if "decisions" in t.title)
    assert "looks after 8, 12, 18 repeats; each distribution-free interval at 98.3 %" in table.title
    assert table.rows[0][:5] == ["container / bare-metal", 1 << 20, found.figure, "12 of 18", decide.MET]


def test_the_distribution_free_interval_holds_the_median_as_often_as_it_says():
    assert stats.median_interval([1.0] * 5) is None  # 1 - 2 / 2**5 < 95 %
    assert stats.repeats_for(0.95) == 6 and stats.repeats_for(0.99) == 8
    found = stats.median_interval([5.0, 1.0, 4.0, 2.0, 3.0, 6.0, 8.0, 7.0, 9.0, 10.0, 11.0, 12.0])
    assert (found.low, found.median, found.high) == (3.0, 6.5, 10.0)  # 1 - 2 * 79 / 4096 = 96.1 %


def test_sessions_pooled_by_tabulate_are_judged_without_a_plan():
    pooled = rows([(1.0, 1.0)] * 3, looks=PLAN.text(), session="a") + rows([(1.0, 1.0)] * 3, session="b")
    assert decide.plan_of(pooled) is None


def test_a_stored_plan_that_is_not_one_stops_the_report_with_a_clear_error(tmp_path):
    store = tmp_path / "r.jsonl"
    append_run(store, rows([(1.0, 1.0)] * 3, looks="3,2@0.05"))
    with pytest.raises(ResultsError, match=r"stored results: '3,2@0\.05' is not a plan of looks"):
        build_report(rows([(1.0, 1.0)] * 3, looks="3,2@0.05"))
    proc = subprocess.run([sys.executable, "-m", "invoke", "tabulate", str(store), "--no-plots"], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "is not a plan of looks" in proc.stderr and "Traceback" not in proc.stderr


def variant(name: str, cell: str | None = CELL, mpi: str = "mpich4.3.2", **kw) -> bench.Variant:
    from hpcimages.define import load_matrix

    found = load_matrix(ROOT / "matrix.toml").cell(cell) if cell else None
    return bench.Variant(name, "python", mpi, found, **kw)


def test_every_repeat_starts_one_job_further_on():
    jobs = [("b", n) for n in range(4)]
    assert [bench.rotated(jobs, k)[0][1] for k in range(1, 6)] == [0, 1, 2, 3, 0]
    assert all(sorted(bench.rotated(jobs, k)) == jobs for k in range(1, 6))


def test_after_a_look_only_the_variants_of_undecided_questions_run_on():
    osu_bw = bench.BENCHMARKS["osu_bw"]
    jobs = [(osu_bw, variant(n)) for n in ("container", "container (persistent)", "container (C)")]
    jobs += [(osu_bw, variant("bare-metal", None)), (osu_bw, variant("ceiling (memcpy)", None, "", ceiling="memcpy"))]
    stored = rows([(1.0, 1.0)] * 8, looks=PLAN.text())  # container / bare metal: equivalent at the first look
    stored += rows([(0.9, 1.0), (1.1, 1.0)] * 4, "container (persistent)", "container (C)", looks=PLAN.text())
    undecided = [(g, a) for g, a in bench.questions(stored, PLAN) if a.outcome == decide.UNDECIDED]
    assert [(g, a.rule.shown) for g, a in undecided] == [(CELL, "container (persistent) / container (C)")]
    kept = [v.name for _, v in bench.still_needed(jobs, undecided, stored)]
    assert kept == ["container (persistent)", "container (C)", "ceiling (memcpy)"]


def test_a_budget_the_next_look_would_overrun_stops_at_this_look():
    osu_bw = bench.BENCHMARKS["osu_bw"]
    jobs = [(osu_bw, variant(n)) for n in ("container (persistent)", "container (C)")]
    stored = rows([(0.9, 1.0), (1.1, 1.0)] * 4, "container (persistent)", "container (C)", looks=PLAN.text())
    seconds = {("osu_bw", id(v)): 30.0 for _, v in jobs}  # a minute per repeat: the next look is four more
    said: list[str] = []
    import time

    left = bench._after_look(PLAN, 8, jobs, jobs, stored, seconds, time.monotonic() - 60, 270, said.append)
    assert left == [] and "needs about 4.0 min more, past the budget (1.0 of 4 min spent): stopping here" in said[0]
    said.clear()
    assert bench._after_look(PLAN, 8, jobs, jobs, stored, seconds, time.monotonic(), 600, said.append) == jobs
    assert "go on to the next look at 12 repeats" in said[0]
    said.clear()
    assert bench._after_look(PLAN, 18, jobs, jobs, stored, seconds, time.monotonic(), None, said.append) == []
    assert "the plan's last" in said[0] and "stay undecided" in said[0]


def test_a_question_whose_variant_failed_does_not_keep_the_bench_going():
    """The default sandbox left out after a failed run (MPICH 5 there): its anomaly question can never be decided,
    so it must not hold the others' variants to the last look."""
    osu_bw = bench.BENCHMARKS["osu_bw"]
    jobs = [(osu_bw, variant(n)) for n in ("container", "container (default sandbox)")]
    jobs += [(osu_bw, variant("bare-metal", None))]
    stored = rows([(1.0, 1.0)] * 8, looks=PLAN.text())  # container / bare metal decided at 1 MiB
    stored += rows([(0.7, 1.0), (1.2, 1.0)] * 2, "container (default sandbox)", "container", looks=PLAN.text())
    said: list[str] = []
    import time

    left = bench._after_look(PLAN, 8, jobs, [j for j in jobs if j[1].name != "container (default sandbox)"], stored,
                             {}, time.monotonic(), None, said.append)
    assert left == [], said
    assert "1 questions stay undecided, a variant they read was left out" in said[0]
    assert said[1] == "look at 8 repeats: every question that can still be decided is decided"


def test_a_cell_keeps_its_plan_beside_the_host_rows_of_other_sessions():
    """results/<profile>.jsonl gathers sessions: the bare-metal and ceiling rows of another session sit in every
    cell's group, pair with none of its runs, and must not turn its until-decided session into a pooled one."""
    mine = rows([(1.0, 1.0)] * 8, looks=PLAN.text(), session="A")
    other = [r for r in rows([(1.0, 1.0)] * 6, session="B") if r.cell is None]
    ceiling = [ResultRow(benchmark="osu_bw", variant="ceiling (memcpy)", size=1 << 20, value=40000.0, repeat=1,
                         session="B")]
    assert decide.plan_of(mine + other + ceiling, CELL) == PLAN
    assert decide.plan_of(mine + other + ceiling) is None  # all rows: two sessions
    table = next(t for t in build_report(mine + other + ceiling).tables if "decisions" in t.title)
    assert "looks after 8, 12, 18 repeats" in table.title


@pytest.fixture(scope="module")
def copy_ceiling(tmp_path_factory) -> Path:
    import shutil

    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler on this host")
    binary = tmp_path_factory.mktemp("ceiling") / "copy_ceiling"
    subprocess.run([compiler, "-O2", "-Wall", "-Werror", "-o", str(binary), str(ROOT / "bench" / "copy_ceiling.c")],
                   check=True)
    return binary


@pytest.mark.parametrize("mode", ["memcpy", "cma"])
def test_the_copy_ceiling_prints_osu_bw_rows_on_one_host(copy_ceiling, mode):
    from hpcimages.measure.results import parse_osu

    proc = subprocess.run([str(copy_ceiling), "-k", mode, "-m", "64:4096", "-i", "3", "-x", "1", "-c", "0,0"],
                          capture_output=True, text=True, check=False, timeout=60)
    if mode == "cma" and proc.returncode == 3:
        pytest.skip(f"process_vm_readv refused here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    parsed = parse_osu(proc.stdout)
    assert parsed.benchmark == "osu_bw" and [int(r["size"]) for r in parsed.rows] == [64, 128, 256, 512, 1024, 2048,
                                                                                         4096]
    assert all(r["bandwidth_mbs"] > 0 for r in parsed.rows) and parsed.layout == "intra-node"


@pytest.mark.parametrize("args, words", [
    (["-k", "dma"], "-k is memcpy or cma"), (["-c", "3"], "-c takes two CPU numbers"),
    (["-m"], "an option without its value"), (["--fast", "1"], "unknown option"), (["-m", "8:4"], "MIN <= MAX"),
])
def test_the_copy_ceiling_refuses_what_it_cannot_measure(copy_ceiling, args, words):
    proc = subprocess.run([str(copy_ceiling), *args], capture_output=True, text=True, check=False, timeout=30)
    assert proc.returncode == 2 and words in proc.stderr and proc.stdout == ""


def test_a_bench_no_question_reads_stops_at_the_first_look():
    """osu_allreduce alone (or h5py_write): no target or anomaly reads it, so nothing is worth repeating for."""
    allreduce = bench.BENCHMARKS["osu_allreduce"]
    jobs = [(allreduce, variant("container")), (allreduce, variant("bare-metal", None))]
    stored = rows([(10.0, 9.0)] * 8, bench_name="osu_allreduce", looks=PLAN.text())
    said: list[str] = []
    import time

    assert bench._after_look(PLAN, 8, jobs, jobs, stored, {}, time.monotonic(), None, said.append) == []
    assert said == ["look at 8 repeats: no target or anomaly reads what ran here; stopping"]


def test_a_ceiling_row_is_labelled_by_the_copy_the_program_says_it_made(copy_ceiling):
    """The label of a ceiling row is proven by the program's own line, not by the mode the bench asked for."""
    proc = subprocess.run([str(copy_ceiling), "-k", "memcpy", "-m", "64:128", "-i", "2", "-x", "1"],
                          capture_output=True, text=True, check=True, timeout=60)
    memcpy = variant("ceiling (memcpy)", None, "", ceiling="memcpy")
    rows_stored = bench.records_of(proc.stdout, memcpy, bench.BENCHMARKS["osu_bw"], ["copy_ceiling"], "ci", 1, "r", "s")
    assert {r.variant for r in rows_stored} == {"ceiling (memcpy)"} and len(rows_stored) == 2
    cma = variant("ceiling (process_vm_readv)", None, "", ceiling="cma")
    with pytest.raises(ResultsError, match=r"does not say it copied by process_vm_readv \(# Copy ceiling: one copy "
                                           r"by memcpy\); not stored"):
        bench.records_of(proc.stdout, cma, bench.BENCHMARKS["osu_bw"], ["copy_ceiling"], "ci", 1, "r", "s")


def site_rows(ratios: list[float], site: str = "s", size: int = 1 << 20) -> list[ResultRow]:
    """A Slurm job of both models (`invoke submit --model both --repeats N`): one session, the repeats paired."""
    return [dataclasses.replace(row, cell=CELL, site=site) for row in
            rows([(9000.0 * r, 9000.0) for r in ratios], a=f"{site}+hostmpi", b=site, size=size, session="job-key")]


def test_a_site_s_bind_model_is_judged_against_its_hybrid_model_repeat_by_repeat():
    [bw, latency] = decide.site_rules({"s", "s+hostmpi", "container"})
    assert (bw.a, bw.b, bw.kind, bw.target, bw.reader) == ("s+hostmpi", "s", decide.DECIDED, False, "site")
    assert latency.bench == "osu_latency" and latency.max_size == 64
    inter = decide.site_rules({"s inter-node", "s+hostmpi inter-node", "s+hostmpi"})  # s itself did not run
    assert [(r.a, r.b) for r in inter] == [("s+hostmpi inter-node", "s inter-node")] * 2
    report = build_report(site_rows([0.52, 0.55, 0.49, 0.6, 0.51, 0.57]))
    text = report.text()
    assert "bw s+hostmpi / s" in text and "s+hostmpi / s" in text
    decisions = next(t for t in report.tables if "decisions" in t.title)
    assert [row[4] for row in decisions.rows] == ["slower"] and decisions.rows[0][5].startswith("site: the site's")
    assert not report.targets  # the Docker targets ask nothing of a site's runs


def test_a_site_s_runs_in_separate_jobs_pair_nothing():
    one, other = site_rows([0.5] * 6), [dataclasses.replace(r, session="another-job") for r in site_rows([0.5] * 6)]
    apart = [r for r in one if r.variant == "s"] + [r for r in other if r.variant == "s+hostmpi"]
    [decisions] = [t for t in build_report(apart).tables if "decisions" in t.title]
    assert [row[2:5] for row in decisions.rows] == [["not measured", 0, decide.UNDECIDED]]


def test_a_docker_group_still_lists_the_targets_it_did_not_measure():
    found = build_report(rows([(1.0, 1.0)] * 6)).targets  # container and bare metal only: no C reference
    outcomes = {t.statement.split(" ")[0] + (" persistent" if "persistent" in t.statement else ""): t.outcome
                for t in found}
    assert outcomes["osu_bw"] == decide.MET and outcomes["osu_bw.py persistent"] == decide.NOT_MEASURED
    assert outcomes["osu_latency.py persistent"] == decide.NOT_MEASURED


def test_a_twin_whose_copied_h5py_does_not_import_compiles_h5py_against_the_copied_hdf5(tmp_path, monkeypatch):
    """The h5py of the image that does not import on the host (a real one cannot be made to fail on demand) is taken
    out again, and h5py is compiled against the copied HDF5; an image without h5py (image_h5py gives nothing: the
    integration test proves it on the mpi4py image) goes straight to the compile."""
    from hpcimages.define import load_matrix

    matrix = load_matrix(ROOT / "matrix.toml")
    profile, cell = matrix.profile("ci"), matrix.cell("h5py-mpi:py3.11-mpich4.3.2")
    if bench.host_twin(matrix, cell) is None:
        pytest.skip("no h5py-mpi cell for this host's Python")
    venv = tmp_path / "venv"
    (venv / "lib").mkdir(parents=True)
    (venv / ".hpcimages-ready").write_text("venv key\n")
    package = bench.site_packages(venv) / "h5py"

    def copy_hdf5(client, image, into):
        (into / "lib" / "libhdf5.so.310").write_text("hdf5")
        return ["lib/libhdf5.so.310"]

    def copy_h5py(client, image, into):
        ran.append("copying the image's h5py")
        package.mkdir(parents=True)
        return [str(package.relative_to(into))]

    ran: list[str] = []

    def run_steps(steps, work, env, log):
        ran.extend(what for what, _ in steps)
        return "importing h5py with MPI failed (exit 1)" if ran[-1] == "importing h5py with MPI" and \
            "compiling h5py" not in ran else ""

    monkeypatch.setattr(bench, "image_hdf5", copy_hdf5)
    monkeypatch.setattr(bench, "image_h5py", copy_h5py)
    monkeypatch.setattr(bench, "_run_steps", run_steps)
    monkeypatch.setattr(bench, "_host_can_compile", lambda *_: None)
    monkeypatch.setattr(bench.wheelhouse, "download_wheels", lambda *_: None)
    monkeypatch.setattr(bench, "fetch_build_sdists", lambda *_: None)
    said: list[str] = []
    assert bench.bare_metal_hdf5(None, matrix, profile, cell, "img", venv, said.append)
    assert ran == ["removing an earlier h5py", "copying the image's h5py", "installing the rest of h5py's lock",
                   "importing h5py with MPI", "installing h5py's build dependencies", "removing an earlier h5py",
                   "compiling h5py", "importing h5py with MPI"]
    assert not package.exists() and (venv / "lib" / "libhdf5.so.310").exists()
    assert "did not serve on this host (importing h5py with MPI failed (exit 1))" in said[0]
    assert "h5py compiled into" in said[1] and "against the HDF5 build of img (1 files copied out of it)" in said[1]
    assert (venv / ".hpcimages-hdf5").read_text().strip()  # stamped: the twin is made
    # an image whose h5py does not import here, or that has none, keeps its id in the stamp: no copy is tried again
    # until it is rebuilt; an engine that failed (None) leaves "compiled", so that the next run tries the copy again
    stamp, key = venv / ".hpcimages-hdf5", bench.hdf5_twin_key
    monkeypatch.setattr(bench, "h5py_origin", lambda *_: "sha256:twin-image")
    twin, source = bench.host_twin(matrix, cell), bench.hdf5_source(profile, cell)
    for copied, origin in (([], "sha256:twin-image"), (None, "compiled on the host")):
        ran.clear()
        stamp.unlink()
        monkeypatch.setattr(bench, "image_h5py", lambda *_, found=copied: found)
        assert bench.bare_metal_hdf5(None, matrix, profile, cell, "img", venv, said.append)
        assert "installing the rest of h5py's lock" not in ran and "compiling h5py" in ran
        assert bench.stamp_holds(stamp, key(matrix, twin, source.sha256, venv, "img", origin)), origin
    # the copy did not serve and the host cannot compile: the variant is left out, nothing copied stays behind
    stamp.unlink()
    ran.clear()
    monkeypatch.setattr(bench, "image_h5py", copy_h5py)
    monkeypatch.setattr(bench, "_host_can_compile", lambda *_: "no cc on the host (the test's)")
    assert not bench.bare_metal_hdf5(None, matrix, profile, cell, "img", venv, said.append)
    assert said[-1] == "  no bare-metal h5py_write: no cc on the host (the test's)"
    assert not package.exists() and not (venv / "lib" / "libhdf5.so.310").exists()
    assert not (venv / "hdf5-build").exists() and not stamp.exists()


def test_a_host_twin_is_trusted_only_while_its_inputs_are_the_same(tmp_path, monkeypatch):
    from hpcimages.define import load_matrix

    matrix = load_matrix(ROOT / "matrix.toml")
    profile, cell = matrix.profile("ci"), matrix.cell("h5py-mpi:py3.11-mpich4.3.2")
    twin = bench.host_twin(matrix, cell)
    if twin is None:
        pytest.skip("no h5py-mpi cell for this host's Python")
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".hpcimages-ready").write_text("venv key\n")
    source = bench.hdf5_source(profile, cell)
    key = bench.hdf5_twin_key(matrix, twin, source.sha256, venv, "img", "compiled on the host")
    (venv / ".hpcimages-hdf5").write_text(key + "\n")
    monkeypatch.setattr(bench, "_host_can_compile", lambda *_: "no cc on the host (the test's)")  # never compile here
    said: list[str] = []
    made = bench.bare_metal_hdf5(None, matrix, profile, cell, "img", venv, said.append)
    assert made and said == []  # inputs unchanged
    monkeypatch.setattr(bench, "HDF5_CONFIGURE_OPTIONS", bench.HDF5_CONFIGURE_OPTIONS + " --enable-debug=all")
    assert not bench.bare_metal_hdf5(None, matrix, profile, cell, "img", venv, said.append)  # a new option: made again
    assert said == ["  no bare-metal h5py_write: no cc on the host (the test's)"]
    (venv / ".hpcimages-hdf5").write_text("")  # a stamp of the earlier version, which only existed
    key = bench.hdf5_twin_key(matrix, twin, source.sha256, venv, "img", "compiled on the host")
    assert not bench.stamp_holds(venv / ".hpcimages-hdf5", key)
    lock = tmp_path / "lock.txt"
    lock.write_text("numpy==2.1.0\n")
    before = bench.twin_key("3.11", lock)
    lock.write_text("numpy==2.1.1\n")
    assert bench.twin_key("3.11", lock) != before  # a file counts by its content


def test_every_run_leaves_open_mpis_unselected_ofi_transport_out_unless_the_variant_says_otherwise(tmp_path):
    """Open MPI's btl/ofi sleeps a second when closed, unselected, in each MPI_Init on a node without an OFI fabric:
    every bench run leaves it out (a host run here; a container run gets the same settings); a variant's own value
    wins."""
    echo = ["sh", "-c", 'echo "btl=$OMPI_MCA_btl"']
    plain = bench.Variant("bare-metal", "python", "openmpi5.0.11")
    assert bench.run_variant(None, None, plain, echo, tmp_path) == (0, "btl=^ofi\n")  # type: ignore[arg-type]
    own = bench.Variant("bare-metal", "python", "openmpi5.0.11", env={"OMPI_MCA_btl": "self,sm,tcp"})
    assert bench.run_variant(None, None, own, echo, tmp_path) == (0, "btl=self,sm,tcp\n")  # type: ignore[arg-type]
    # in a container, a bound host MPI's own settings win too (run_in_image puts them under the run's env)
    cell = load_matrix(ROOT / "matrix.toml").cell("mpi4py:py3.11-openmpi5.0.11")
    bound = Binding(Path("/opt/site/openmpi"), settings={"OMPI_MCA_btl": "self,vader"})
    assert bench.run_settings(bench.Variant("container+openmpi", "python", cell.mpi.key, cell, binding=bound)) == {}
    assert bench.run_settings(bench.Variant("container", "python", cell.mpi.key, cell)) == bench.RUN_SETTINGS
