"""The files the tool writes and reads back are input too (issue 28): every field of every state file, given a
value of the wrong type, a number that is not finite, a path with '..' or a huge string, is one clear line naming
the file and the field, and the file is left exactly as it was. Plus the reproductions of the issue, each as the
minimal case a user met.

The cases are generated from each file's own writer (a real report, record or results line the tool wrote) and its
reader's dataclass: a field added later is covered without a new line here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hpcimages.cluster import slurm
from hpcimages.define import load_matrix
from hpcimages.define.sites import load_site
from hpcimages.errors import HpcImagesError
from hpcimages.images import reports
from hpcimages.images.build import CellResult
from hpcimages.images.check import CellCheck, Outcome
from hpcimages.measure import results
from hpcimages.publish import record
from hpcimages.state import MAX_TEXT

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "hpcimages/mpi4py:py3.13-mpich4.3.2"
REF = "mpi4py:py3.13-mpich4.3.2"
DIGEST = "sha256:" + "a" * 64
HUGE = "x" * (MAX_TEXT + 1)


@dataclasses.dataclass
class StateFile:
    """One kind of state file: how the tool writes a sample, where its entry is, what reads it."""

    name: str
    cls: type
    write: Callable[[Path], Path]  # writes the sample into the folder, returns the file
    entry: Callable[[Any], dict[str, Any]]  # the entry (a dict inside the parsed file) whose fields are varied
    read: Callable[[Path], object]  # the reader the tasks use, given the file
    lines: bool = False  # JSON lines (one entry per line) instead of one document
    #: fields whose value is used as a path or names a page or folder: '..' in them must be refused
    path_fields: tuple[str, ...] = ()


def _build_report(folder: Path) -> Path:
    result = CellResult(REF, IMAGE, "built", 12.5, 1000, "sha256:1", "", None, [f"{IMAGE[:-2]}"])
    reports.record_build(folder, "ci", [result])
    return folder / reports.BUILD_REPORT


def _check_report(folder: Path) -> Path:
    reports.record_check(folder, "ci", [CellCheck(REF, IMAGE, "sha256:1", {"contents": Outcome("pass", "ok")}, 1.0)])
    return folder / reports.CHECK_REPORT


def _publish_report(folder: Path) -> Path:
    report = record.PublishReport(folder / record.PUBLISH_REPORT)
    report.put("127.0.0.1:5000/hpc", record.Published(
        "ci", REF, "sha256:" + "1" * 64, "127.0.0.1:5000/hpc/mpi4py", ["py3.13-mpich4.3.2"], DIGEST, 1000, 400,
        "2026-12-02T00:00:00Z", "abc", "abc", "2 ranks", record.SifRecord("127.0.0.1:5000/hpc/sif:x", "b" * 64), 3.0))
    return report.save()


def _job_record(folder: Path) -> Path:
    """(the caller points HPCIMAGES_SLURM_RUNS at ``folder``)"""
    from hpcimages.define.sites import parse_site

    site = parse_site("t", folder / "t.toml", {"container": {"sif_dir": "/cluster/sif"},
                                               "host_mpi": {"lib_dirs": ["/opt/site/mpi/lib"]}})
    spec = slurm.JobSpec(site, "osu_bw", IMAGE, "bind", nodes=2, ntasks_per_node=1)
    return slurm.prepare(ROOT, load_matrix(ROOT / "matrix.toml"), spec).path


def slurm_runs_var() -> str:
    return "HPCIMAGES_SLURM_RUNS"


def _results(folder: Path) -> Path:
    path = folder / "ci.jsonl"
    results.append_run(path, [results.ResultRow("osu_bw", "container", 1024, 12.5, "bandwidth_mbs", "MB/s",
                                                cell=REF, extra={"iterations": 100.0})])
    return path


STATE_FILES = [
    StateFile("build-report.json", reports.CellEntry, _build_report, lambda d: d["cells"][f"ci/{REF}"],
              lambda p: reports.load_entries(p.parent), path_fields=("ref",)),
    StateFile("check-report.json", reports.CellCheck, _check_report, lambda d: d["cells"][REF],
              lambda p: reports.load_checks(p.parent, "ci"), path_fields=("ref",)),
    StateFile("publish-report.json", record.Published, _publish_report,
              lambda d: d["targets"]["127.0.0.1:5000/hpc"][REF], lambda p: record.load(p.parent),
              path_fields=("ref", "tags")),
    StateFile("job record", slurm.JobRecord, _job_record, lambda d: d, slurm.read_record,
              path_fields=("key", "script", "site", "cell")),
    StateFile("results", results.ResultRow, _results, lambda d: d, lambda p: results.load([p]), lines=True),
]


def _base(hint: Any) -> Any:
    """str for ``str | None``, list for ``list[str]``: what a wrong value must differ from."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, __import__("types").UnionType) and len(args) == 1:
        hint = args[0]
    return typing.get_origin(hint) or hint


def mutations(state: StateFile) -> list[tuple[str, str, Any]]:
    """(field, what, value) for every field of the reader's dataclass."""
    hints = typing.get_type_hints(state.cls)
    cases = []
    for f in dataclasses.fields(state.cls):
        base = _base(hints[f.name])
        cases.append((f.name, "wrong type", 5 if base is str else "five"))
        if base in (int, float):
            cases += [(f.name, "NaN", float("nan")), (f.name, "Infinity", float("inf"))]
        if base is str:
            cases.append((f.name, "huge string", HUGE))
        if f.name in state.path_fields:
            cases.append((f.name, "path with ..", ["../../../elsewhere"] if base is list else "../../../elsewhere"))
    return cases


CASES = [(s, *m) for s in STATE_FILES for m in mutations(s)]


@pytest.mark.parametrize("state, field, what, value", CASES,
                         ids=[f"{s.name}-{f}-{w}" for s, f, w, _ in CASES])
def test_every_field_of_every_state_file_is_checked_and_the_file_left_as_it_is(tmp_path, monkeypatch, state, field,
                                                                             what, value):
    monkeypatch.setenv(slurm_runs_var(), str(tmp_path))
    path = state.write(tmp_path)
    text = path.read_text(encoding="utf-8")
    data = json.loads(text)
    state.entry(data)[field] = value
    broken = json.dumps(data, sort_keys=True) + "\n" if state.lines else json.dumps(data, indent=2)
    path.write_text(broken, encoding="utf-8")
    with pytest.raises(HpcImagesError) as exc:
        state.read(path)
    message = str(exc.value)
    assert "\n" not in message and len(message) < 1200, message
    assert str(path) in message and field in message, message
    assert path.read_text(encoding="utf-8") == broken, "a state file is never rewritten by a failed read"


@pytest.mark.parametrize("state", STATE_FILES, ids=[s.name for s in STATE_FILES])
def test_the_samples_themselves_read_back(tmp_path, monkeypatch, state):
    """The other half: what the tool writes it reads (the cases above would pass on a reader that refuses all)."""
    monkeypatch.setenv(slurm_runs_var(), str(tmp_path))
    assert state.read(state.write(tmp_path))


@pytest.mark.parametrize("state", STATE_FILES, ids=[s.name for s in STATE_FILES])
def test_an_unknown_field_and_a_missing_one_are_named(tmp_path, monkeypatch, state):
    monkeypatch.setenv(slurm_runs_var(), str(tmp_path))
    path = state.write(tmp_path)
    data = json.loads(path.read_text())
    state.entry(data)["surprise"] = 1
    path.write_text(json.dumps(data))
    with pytest.raises(HpcImagesError, match=r"unknown field 'surprise'"):
        state.read(path)
    required = next((f.name for f in dataclasses.fields(state.cls) if f.default is dataclasses.MISSING
                     and f.default_factory is dataclasses.MISSING and f.name not in ("profile", "ref", "image")), None)
    if required is None:
        return  # every field has a default (the build report's key gives profile and ref)
    del state.entry(data)["surprise"], state.entry(data)[required]
    path.write_text(json.dumps(data))
    with pytest.raises(HpcImagesError, match=rf"{required}: missing"):
        state.read(path)


# -- the reproductions of the issue ------------------------------------------------------------


def invoke(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=cwd, capture_output=True, text=True,
                          check=False, env={**os.environ, **(env or {})}, timeout=120)


@pytest.mark.parametrize("registry, expected", [
    ("127.0.0.1:71534/hpc", "port 71534 is not a TCP port (1-65535)"),
    ("127.0.0.1:0/hpc", "port 0 is not a TCP port"),
    ("999.0.0.1:5000/hpc", "999.0.0.1 is not an IPv4 address"),
    ("", "is not a registry reference"),
])
def test_a_registry_port_out_of_range_is_refused_before_anything_is_dialled(registry, expected):
    proc = invoke("publish", "--profile", "ci", "--dry-run", "--registry", registry)
    assert proc.returncode == 2 and expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_an_empty_only_is_refused_not_every_cell(tmp_path):
    proc = invoke("publish", "--profile", "ci", "--dry-run", "--only", "")
    assert proc.returncode == 2 and "--only '' is empty" in proc.stderr, proc.stdout + proc.stderr


def test_a_hostile_ref_in_the_publish_report_writes_nothing_anywhere(tmp_path):
    build = tmp_path / "checkout" / "build"
    _publish_report(build)
    report = build / record.PUBLISH_REPORT
    text = report.read_text().replace(f'"ref": "{REF}"', '"ref": "mpi4py:../../../../../../elsewhere/pwned"')
    report.write_text(text)
    proc = invoke("catalogue", "--registry", "127.0.0.1:5000/hpc", env={"HPCIMAGES_BUILD_DIR": str(build)})
    assert proc.returncode == 2 and "is not a cell (family:tag" in proc.stderr, proc.stdout + proc.stderr
    assert not list(tmp_path.rglob("pwned*")) and report.read_text() == text


def test_collect_writes_only_in_the_record_s_own_folder(tmp_path, monkeypatch):
    """A hand-edited run_dir is not followed: the record's folder is where it lies (so a moved checkout's records
    still read), and saving it writes there, nowhere else."""
    monkeypatch.setenv(slurm_runs_var(), str(tmp_path))
    path = _job_record(tmp_path)
    data = json.loads(path.read_text())
    data["run_dir"] = str(tmp_path / "elsewhere")
    path.write_text(json.dumps(data))
    [loaded] = slurm.load_records(ROOT)
    assert loaded.run_dir == str(path.parent) and loaded.path == path
    loaded.state = "failed"
    loaded.save()
    assert not (tmp_path / "elsewhere").exists() and json.loads(path.read_text())["state"] == "failed"


def test_an_output_never_replaces_an_input(tmp_path):
    store = _results(tmp_path)
    before = store.read_bytes()
    proc = invoke("tabulate", str(store), "--out", str(store))
    assert proc.returncode == 2 and "not a .md file" in proc.stderr, proc.stderr
    proc = invoke("tabulate", str(store), "--out", str(tmp_path))
    assert proc.returncode == 2 and "is a directory" in proc.stderr, proc.stderr
    matrix = tmp_path / "matrix.toml"
    matrix.write_text("# the matrix\n")
    proc = invoke("collect", "--store", str(matrix))
    assert proc.returncode == 2 and "not a .jsonl file" in proc.stderr, proc.stderr
    assert store.read_bytes() == before and matrix.read_text() == "# the matrix\n"


@pytest.mark.parametrize("section", ["container", "host_mpi"])
def test_a_comma_in_one_bind_entry_is_refused(section):
    from hpcimages.define.sites import SiteError, parse_site

    with pytest.raises(SiteError, match=r"one bind per list entry"):
        parse_site("t", Path("t.toml"), {section: {"bind": ["/scratch,data:/data"]}})


def test_a_newline_or_markup_in_a_check_reason_stays_in_its_cell():
    from hpcimages import tables

    reason = "ok\n\n## Injected heading\n<script>alert(1)</script>"
    table = tables.markdown([["contents", "pass", reason]], ["check", "outcome", "detail"])
    assert len(table.splitlines()) == 3 and "\n## " not in table and "<script>" not in table, table
    assert "&lt;script&gt;" in table and tables.markdown_code("a`b|c\nd") == "`a'b\\|c d`"


@pytest.mark.parametrize("row, expected", [
    ("8 nan", "not a finite number"), ("1048576 inf", "not a finite number"), ("nan 100.00", "not a finite number"),
    ("-8 100.00", "not a whole, non-negative number"), ("8.5 100.00", "not a whole, non-negative number"),
])
def test_a_job_output_row_that_is_no_figure_is_refused_not_stored(row, expected):
    text = f"# OSU MPI Bandwidth Test v7.5\n# Size      Bandwidth (MB/s)\n1 2.00\n{row}\n"
    with pytest.raises(results.ResultsError, match=expected):
        results.parse_osu(text)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_a_stored_non_finite_figure_is_a_corrupt_line(tmp_path, token):
    store = _results(tmp_path)
    store.write_text(store.read_text().replace('"value": 12.5', f'"value": {token}'))
    with pytest.raises(results.ResultsError, match=r"ci\.jsonl:1: corrupt result line \(value: must be a finite"):
        results.load([store])


def test_files_that_are_not_utf8_name_file_and_line(tmp_path):
    matrix = tmp_path / "matrix.toml"
    matrix.write_bytes((ROOT / "matrix.toml").read_bytes().replace(b"# ", "# café ".encode("latin-1"), 1))
    from hpcimages.errors import MatrixError

    with pytest.raises(MatrixError, match=r"matrix\.toml: \(file\): .*line \d+: byte 0xe9 is not UTF-8 text"):
        load_matrix(matrix)
    sites = tmp_path / "slurm" / "sites"
    sites.mkdir(parents=True)
    (sites / "bad.toml").write_bytes(b"description = \"\xff\"\n")
    (sites / "t-dir.toml").mkdir()
    from hpcimages.define.sites import SiteError, site_names

    with pytest.raises(SiteError, match=r"bad\.toml cannot be read \(line 1: byte 0xff"):
        load_site(sites, "bad")
    assert site_names(sites) == ["bad"], "a folder named x.toml is no site profile"


def test_collect_with_no_jobs_ignores_a_broken_profile_no_record_uses(tmp_path):
    bad = ROOT / "slurm" / "sites" / "zz-broken-test.toml"
    bad.write_bytes(b"\xff")
    try:
        proc = invoke("collect", env={slurm_runs_var(): str(tmp_path)})
    finally:
        bad.unlink()
    assert proc.returncode == 0 and "nothing to collect" in proc.stdout, proc.stdout + proc.stderr


def test_a_missing_matrix_names_the_path_it_looked_for(tmp_path):
    proc = invoke("check", "--matrix", "nope.toml", cwd=ROOT)
    assert proc.returncode == 2 and f"looked for {ROOT / 'nope.toml'}" in proc.stderr, proc.stderr


def test_nodes_zero_is_refused_not_the_site_default(tmp_path):
    proc = invoke("submit", "--site", "local", "--bench", "hello", "--image", IMAGE, "--nodes", "0", "--dry-run",
                  env={slurm_runs_var(): str(tmp_path)})
    assert proc.returncode == 2 and "--nodes 0" in proc.stderr, proc.stderr
    assert not list(tmp_path.iterdir()), "no record for a refused command"


def test_a_build_folder_that_cannot_be_made_is_refused_before_the_registry_is_contacted(tmp_path):
    afile = tmp_path / "a-file"
    afile.write_text("")
    proc = invoke("publish", "--profile", "ci", "--dry-run", env={"HPCIMAGES_BUILD_DIR": str(afile / "build")})
    assert proc.returncode == 2 and f"{afile} is not a folder" in proc.stderr, proc.stderr


def test_a_profile_registry_port_out_of_range_is_a_matrix_error(tmp_path):
    import shutil

    from hpcimages.errors import MatrixError

    for folder in ("dockerfiles", "pip-requirements"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    text = (ROOT / "matrix.toml").read_text().replace('registry = "127.0.0.1:5000/hpc"',
                                                      'registry = "127.0.0.1:99999/hpc"')
    (tmp_path / "matrix.toml").write_text(text)
    with pytest.raises(MatrixError, match=r"profiles\.ci\.publish\.registry.*port 99999 is not a TCP port"):
        load_matrix(tmp_path / "matrix.toml")


def test_reports_that_disagree_about_one_image_are_refused_not_published(tmp_path):
    """The build report says the check of an image passed, the check report that the same image failed: no hand
    edit of one report may make an image publishable (the engine is a stand-in: it only answers the image id)."""
    from types import SimpleNamespace

    from hpcimages.publish.publisher import Refused, eligibility

    matrix = load_matrix(ROOT / "matrix.toml")
    profile = matrix.profile("ci")
    cell = matrix.cell(REF)
    image_id = "sha256:" + "c" * 64
    reports.record_check(tmp_path, "ci", [CellCheck(REF, IMAGE, image_id, {"contents": Outcome("fail", "no")})])
    entries = reports.load_entries(tmp_path)
    entries[f"ci/{REF}"].check_passed = True  # the hand edit
    entries[f"ci/{REF}"].image_id = image_id
    engine = SimpleNamespace(images=SimpleNamespace(get=lambda ref: SimpleNamespace(id=image_id)))
    with pytest.raises(Refused, match="the reports disagree"):
        eligibility(cell, profile, entries, reports.load_checks(tmp_path, "ci"), engine)


@pytest.mark.parametrize("state", STATE_FILES, ids=[s.name for s in STATE_FILES])
def test_a_file_nested_deeper_than_the_tool_writes_is_one_line(tmp_path, monkeypatch, state):
    monkeypatch.setenv(slurm_runs_var(), str(tmp_path))
    path = state.write(tmp_path)
    path.write_text("[" * 100000 + "]" * 100000 + "\n")
    with pytest.raises(HpcImagesError, match="nested deeper than the tool writes"):
        state.read(path)


def test_more_registry_and_markdown_and_results_cases(tmp_path):
    from hpcimages import tables
    from hpcimages.define.tags import registry_problem

    assert "one port at most" in registry_problem("1.2.3.4:70000:5000/hpc")
    assert tables.markdown_cell("a\\|b") == "a\\\\\\|b"  # a backslash, then an escaped |: still one cell
    store = _results(tmp_path)
    store.write_bytes(store.read_bytes().replace(b'"container"', b'"cont\xffainer"'))
    with pytest.raises(results.ResultsError, match=r"ci\.jsonl:1: corrupt result line .*can't decode byte 0xff"):
        results.load([store])
    with pytest.raises(results.ResultsError, match="is a directory, not a results file"):
        results.load([tmp_path])


def test_a_broken_row_of_the_abi_table_stops_the_merge_and_is_left_as_it_is(tmp_path, monkeypatch):
    from hpcimages.abi import table
    from hpcimages.abi.pairs import Pair

    monkeypatch.setenv("HPCIMAGES_BUILD_DIR", str(tmp_path))
    table.write_reports(ROOT, "ci", [Pair(REF, IMAGE, "sha256:1", "own")])
    stored = tmp_path / "abi" / "abi-table.json"
    assert [p["host"] for p in table.rows_of_image(ROOT, "sha256:1")] == ["own"]
    text = stored.read_text().replace('"host": "own"', '"host": "own", "bogus": 1')
    stored.write_text(text)
    with pytest.raises(table.AbiError, match=r"abi-table\.json: pairs\[0\]: unknown field 'bogus'"):
        table.write_reports(ROOT, "ci", [Pair(REF, IMAGE, "sha256:2", "own")])
    assert stored.read_text() == text
