"""Parsing recorded OSU-style outputs, and the append-only results store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcimages.measure.results import ResultRow, ResultsError, append_run, load, medians, parse_osu

FIXTURES = Path(__file__).parent / "fixtures" / "osu"

# (fixture, benchmark, primary column, {size: value})
CASES = [
    ("osu7_bw.txt", "osu_bw", "bandwidth_mbs", {1: 2.45, 1048576: 12254.21}),
    ("osu7_latency.txt", "osu_latency", "latency_us", {0: 0.21, 4194304: 412.77}),
    ("osu73_latency.txt", "osu_latency", "latency_us", {0: 1.92, 8: 1.52}),
    ("osu_allreduce_full.txt", "osu_allreduce", "avg_us", {4: 1.32, 1048576: 512.10}),
    ("ombpy_bw.txt", "osu_bw", "bandwidth_mbs", {1024: 82.20, 1048576: 1604.63}),
    ("mpi4py_demo_bw.txt", "osu_bw", "bandwidth_mbs", {1: 0.98, 1048576: 6021.55}),
    ("java_bw.txt", "osu_bw", "bandwidth_mbs", {1024: 210.51, 1048576: 5120.40}),
    ("hpcimages_bw.txt", "osu_bw", "bandwidth_mbs", {1: 0.10, 8: 2.27}),
    ("hpcimages_latency.txt", "osu_latency", "latency_us", {0: 1.82, 8: 2.40}),
    ("hpcimages_allreduce.txt", "osu_allreduce", "avg_us", {4: 3.89, 16: 6.34}),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_recorded_outputs_parse(case):
    name, benchmark, column, expected = case
    parsed = parse_osu((FIXTURES / name).read_text())
    assert parsed.benchmark == benchmark
    values = {int(row["size"]): row[column] for row in parsed.rows}
    for size, value in expected.items():
        assert values[size] == pytest.approx(value)


def test_allreduce_keeps_min_and_max_and_the_library_line():
    parsed = parse_osu((FIXTURES / "hpcimages_allreduce.txt").read_text())
    assert parsed.columns == ("size", "avg_us", "min_us", "max_us", "iterations")
    assert parsed.rows[0]["min_us"] == pytest.approx(3.44)
    assert parsed.library == "MPICH Version:      4.3.2"


def test_output_without_header_or_rows_is_an_error():
    with pytest.raises(ResultsError, match="no '# Size"):
        parse_osu("Hello World! I am process 0 of 2 on x.\n")
    with pytest.raises(ResultsError, match="no result rows"):
        parse_osu("# OSU MPI Bandwidth Test v7.5\n# Size      Bandwidth (MB/s)\nAbort(1) on node 0\n")


def record(i: int, **extra) -> ResultRow:
    return ResultRow(**{"benchmark": "osu_bw", "variant": "container", "cell": "c", "size": 1024, "value": float(i),
                        **extra})


def test_append_is_atomic_per_run_and_never_truncates(tmp_path):
    store = tmp_path / "results" / "ci.jsonl"
    append_run(store, [record(1), record(2)])
    append_run(store, [record(3)])
    records, problems = load([store])
    assert [r.value for r in records] == [1.0, 2.0, 3.0] and problems == []


def test_a_torn_line_from_an_interrupted_run_is_reported_and_loses_nothing_else(tmp_path):
    store = tmp_path / "ci.jsonl"
    append_run(store, [record(1), record(2)])
    with store.open("ab") as f:  # what a writer killed mid-line leaves behind
        f.write(b'{"benchmark": "osu_bw", "variant": "cont')
    append_run(store, [record(3)])  # the next run starts on a line of its own
    with pytest.raises(ResultsError, match=r"ci\.jsonl:3: corrupt result line"):
        load([store])
    records, problems = load([store], skip_corrupt=True)
    assert [r.value for r in records] == [1.0, 2.0, 3.0]
    assert len(problems) == 1 and ":3:" in problems[0]


def test_records_without_required_keys_are_corrupt(tmp_path):
    store = tmp_path / "x.jsonl"
    store.write_text(json.dumps(record(1).to_json()) + "\n" + json.dumps({"benchmark": "osu_bw"}) + "\n")
    with pytest.raises(ResultsError, match=r"x\.jsonl:2: corrupt result line \(variant: missing\)"):
        load([store])


def test_missing_results_file_is_an_error(tmp_path):
    with pytest.raises(ResultsError, match="no such results file"):
        load([tmp_path / "nope.jsonl"])


def test_medians_over_repeats():
    rows = [record(v, repeat=i) for i, v in enumerate((5, 1, 3))]
    assert medians(rows) == {("c", "osu_bw", "container", 1024): 3.0}


def test_a_row_whose_value_is_not_a_number_is_corrupt_not_a_traceback(tmp_path):
    store = tmp_path / "x.jsonl"
    store.write_text(json.dumps({**record(1).to_json(), "value": "fast"}) + "\n")
    with pytest.raises(ResultsError, match=r"x\.jsonl:1: corrupt result line \(value: must be a number"):
        load([store])
    assert load([store], skip_corrupt=True)[0] == []


def test_rows_round_trip_through_the_store(tmp_path):
    row = record(7, extra={"min_us": 1.5}, mpi_library="MPICH Version: 4.3.2", job="s:1:k")
    append_run(tmp_path / "r.jsonl", [row])
    assert load([tmp_path / "r.jsonl"])[0] == [row]


def test_the_loaded_library_file_and_the_abi_mpi4py_chose_are_parsed_and_kept():
    text = ("# OSU MPI-Python Bandwidth Test\n# MPICH Version:      4.3.2\n"
            "# Library file: /usr/local/lib/libmpi.so.12.5.2\n# MPI ABI: mpich\n"
            "# Size      Bandwidth (MB/s)\n1024   100.0\n")
    parsed = parse_osu(text)
    assert parsed.library.startswith("MPICH Version") and parsed.library_file == "/usr/local/lib/libmpi.so.12.5.2"
    assert parsed.mpi_abi == "mpich"
    assert parse_osu(text.replace("# MPI ABI: mpich\n", "")).mpi_abi is None  # an older script's output



@pytest.mark.parametrize(("library_file", "bind", "wrong"), [
    ("/opt/host-mpi/lib/release/libmpi.so.12", True, None),
    ("/usr/local/lib/libmpi.so.12.5.2", True, "labelled as the bind model, but the benchmark loaded /usr/local"),
    (None, True, "an unnamed library"),
    ("/usr/local/lib/libmpi.so.12.5.2", False, None),
    ("/opt/host-mpi/lib/libmpi.so.12", False, "labelled as the image's own MPI, but the benchmark loaded the host"),
    ("/opt/host-mpi-other/libmpi.so.12", True, "not a library under /opt/host-mpi/"),  # a prefix is no directory
])
def test_a_row_whose_library_contradicts_its_label_is_named(library_file, bind, wrong):
    from hpcimages.measure.results import library_contradiction

    reason = library_contradiction(library_file, ["/opt/host-mpi"], bind)
    assert (reason is None) if wrong is None else (wrong in reason), reason



@pytest.mark.parametrize(("library_file", "soname", "wrong"), [
    ("/usr/local/lib/libmpi_abi.so.1", "libmpi_abi.so.1", None),
    ("/usr/local/lib/libmpi.so.12", "libmpi_abi.so.1", "labelled as a libmpi_abi.so.1 run, but the benchmark loaded"),
    (None, "libmpi.so.12", "an unnamed library"),
    ("/usr/local/lib/libmpi.so.12.5.2", "libmpi.so.12", None),  # the real file behind the soname (a source build)
    ("/usr/local/lib/libmpi.so.120", "libmpi.so.12", "labelled as a libmpi.so.12 run"),
])
def test_a_row_whose_library_contradicts_its_abi_label_is_named(library_file, soname, wrong):
    from hpcimages.measure.results import library_contradiction

    reason = library_contradiction(library_file, ["/opt/host-mpi"], False, soname)
    assert (reason is None) if wrong is None else (wrong in reason), reason


VENV = "/work/build/bench/venv-py3.11-openmpi5.0.11"


@pytest.mark.parametrize("library_file,soname,wrong", [
    (f"{VENV}/lib/libmpi.so.40", "libmpi.so.40", None),
    (f"{VENV}/lib/libmpi.so.12.5.2", "libmpi.so.12", None),
    # a host with its own Open MPI: mpi4py finds it as readily as the venv's wheel
    ("/usr/lib/x86_64-linux-gnu/libmpi.so.40", "libmpi.so.40", "labelled as bare metal with the venv's libmpi.so.40"),
    (f"{VENV}/lib/libmpi.so.12", "libmpi.so.40", "but the benchmark loaded"),
    (f"{VENV}-old/lib/libmpi.so.40", "libmpi.so.40", "but the benchmark loaded"),  # another venv beside it
    (None, "libmpi.so.40", "an unnamed library"),
])
def test_a_bare_metal_row_must_have_loaded_the_venvs_own_library(library_file, soname, wrong):
    from hpcimages.measure.results import venv_contradiction

    reason = venv_contradiction(library_file, VENV, soname)
    assert (reason is None) if wrong is None else (wrong in reason), reason


INTER_NODE = """# OSU MPI-Python Bandwidth Test
# MPICH Version:      4.3.2
# Library file: /usr/local/lib/libmpi.so.12
# MPI ABI: mpich
# Placement: rank 0 node1 cpus 0; rank 1 node2 cpus 1
# buffer: numpy, window: 64, requests: persistent
# Size          Bandwidth (MB/s)
1                         0.11
2                         0.22
# Transport: tcp to 172.23.0.4
"""


def test_placement_settings_and_transport_are_parsed_and_name_the_layout():
    parsed = parse_osu(INTER_NODE)
    assert parsed.placement == "rank 0 node1 cpus 0; rank 1 node2 cpus 1" and parsed.layout == "inter-node"
    assert parsed.settings == "buffer: numpy, window: 64, requests: persistent"
    assert parsed.transport == "tcp to 172.23.0.4"  # printed after the rows
    assert [r["size"] for r in parsed.rows] == [1, 2]
    one_node = parse_osu(INTER_NODE.replace("node2", "node1"))
    assert one_node.layout == "intra-node"
    silent = parse_osu(INTER_NODE.replace("# Placement: rank 0 node1 cpus 0; rank 1 node2 cpus 1\n", ""))
    assert silent.layout is None and silent.placement is None  # an older script's output: nothing claimed


def test_a_persistent_variant_must_show_the_script_used_persistent_requests(tmp_path):
    from hpcimages.measure import bench

    variant = bench.Variant("bare-metal (persistent)", "python", "mpich4.3.2", venv=tmp_path, scripts=tmp_path,
                            args=bench.PERSISTENT)
    plain = INTER_NODE.replace("requests: persistent", "requests: nonblocking")
    with pytest.raises(ResultsError, match="does not say it used persistent requests"):
        bench.records_of(plain, variant, bench.BENCHMARKS["osu_bw"], ["x"], "ci", 1, "r", "s")
    rows = bench.records_of(INTER_NODE, variant, bench.BENCHMARKS["osu_bw"], ["x"], "ci", 1, "r", "s")
    assert rows[0].settings.endswith("requests: persistent") and rows[0].variant == "bare-metal (persistent)"


def test_the_scripts_size_rule_and_the_preflight_are_one_rule():
    """Every benchmark script parses `-m` with osu_bw.size_range(MIN, LARGEST); the check run before a job waits in
    a queue (Benchmark.sizes_problem) must use the same MIN and LARGEST, or it would refuse what runs (or pass
    what the script refuses)."""
    import ast

    from hpcimages.measure.bench import BENCHMARKS

    root = Path(__file__).resolve().parent.parent / "bench"
    for bench in BENCHMARKS.values():
        tree = ast.parse((root / bench.script).read_text())
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "size_range"]
        assert len(calls) == 1, f"{bench.script}: one size_range(...) call, found {len(calls)}"
        minimum, largest = (eval(compile(ast.Expression(a), bench.script, "eval")) for a in calls[0].args)
        assert (minimum, largest) == (bench.min_size, int(bench.default_sizes.split(":")[1])), bench.name
        assert bench.sizes_problem(f":{largest}") is None and bench.sizes_problem(f"{minimum}:") is None
        assert bench.sizes_problem(f"{minimum - 1}:{largest}") and bench.sizes_problem(f"{largest}:{minimum}")
