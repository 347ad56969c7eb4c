"""Site profiles and batch scripts: validation, quoting, rendering (no cluster needed)."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from hpcimages.cluster import slurm
from hpcimages.define import load_matrix
from hpcimages.define.sites import SiteError, load_site, parse_site, site_names

ROOT = Path(__file__).resolve().parent.parent
SITES = ROOT / "slurm" / "sites"
IMAGE = "hpcimages/mpi4py:py3.13-mpich4.3.2"


def site_from(text: str, name: str = "t"):
    return parse_site(name, Path(f"{name}.toml"), tomllib.loads(text))


def test_the_shipped_profiles_load():
    assert {"cray-ex", "ib-intelmpi", "local"} <= set(site_names(SITES))
    cray = load_site(SITES, "cray-ex")
    assert cray.launcher.mpi == "cray_shasta" and cray.container.runtime == "singularity"
    assert any("lib-abi-mpich" in d for d in cray.host_mpi.lib_dirs)
    ib = load_site(SITES, "ib-intelmpi")
    assert "/etc/libibverbs.d" in ib.host_mpi.bind and dict(ib.host_mpi.vars)["I_MPI_PMI_LIBRARY"]


@pytest.mark.parametrize("text, expected", [
    ('[slurm]\npartition = "debug; rm -rf ~"\n', "slurm.partition = 'debug; rm -rf ~': ' ;~' not allowed"),
    ('[slurm]\naccount = "$(reboot)"\n', "slurm.account"),
    ('[slurm]\npartition = "a`id`"\n', "not allowed"),
    ('[environment]\nmodules = ["ok/1.0", "x && y"]\n', "environment.modules[1]"),
    ('[environment.vars]\nFOO = "bar\\nbaz"\n', "environment.vars.FOO"),
    ('[environment.vars]\n"BAD NAME" = "x"\n', "not a valid environment variable name"),
    ('[host_mpi]\nlib_dirs = ["/opt/mpi lib"]\n', "host_mpi.lib_dirs[0]"),
    ('[slurm]\nnodes = "2"\n', "slurm.nodes = '2': must be an integer"),
    ('[slurm]\nnodes = 0\n', "between 1 and 100000"),
    ('[slurm]\ntime = "ten minutes"\n', "slurm.time"),
    ('[slurm]\noptions = ["-x"]\n', "a long sbatch option"),
    ('[slurm]\npartitoin = "debug"\n', "unknown key(s) partitoin"),
    ('colour = "blue"\n', "unknown key 'colour'"),
    ('slurm = "debug"\n', "[slurm] must be a table"),
    ('[container]\nruntime = "docker"\n', "container.runtime = 'docker': one of 'apptainer', 'singularity'"),
    ('[launcher]\nmpi = "pmi3"\n', "launcher.mpi"),
    ('[container]\ncleanenv = "yes"\n', "container.cleanenv = 'yes': must be true or false"),
    ('[host_mpi]\nlib_dirs = ["opt/host-mpi/lib"]\n', "host_mpi.lib_dirs[0] = 'opt/host-mpi/lib': must be an absolute"),
    ('[host_mpi]\nlib_path = ["lib64"]\n', "host_mpi.lib_path[0] = 'lib64': must be an absolute"),
    ('[host_mpi]\nbind = ["/a:/b:ro:x"]\n', "host_mpi.bind[0] = '/a:/b:ro:x': a bind is SRC[:DST[:OPTS]]"),
    ('[host_mpi]\nbind = ["/a:b"]\n', "with absolute paths"),
    ('[host_mpi]\nbind = ["/a:/b:rx"]\n', "OPTS one of ro, rw"),
    ('[container]\nbind = ["scratch"]\n', "container.bind[0] = 'scratch': a bind is SRC[:DST[:OPTS]]"),
    ('[slurm]\nruns_dir = "runs"\n', "slurm.runs_dir = 'runs': must be an absolute directory"),
    ('[slurm]\nruns_dir = "/scratch/../etc"\n', "no ':' or '..'"),
    ('[slurm]\nruns_dir = "/scratch/x;id"\n', "slurm.runs_dir = '/scratch/x;id': ';' not allowed"),
    ('[open_mpi]\nlauncher = "mpirun"\n', "open_mpi.launcher = 'mpirun': the absolute path of the host's Open MPI"),
    ('[open_mpi]\nlauncher = "srun"\n', "open_mpi.mpi = 'none': srun can start Open MPI ranks only as their PMIx"),
    ('[open_mpi]\nlauncher = "srun"\nmpi = "pmi2"\n', "only as their PMIx server"),
    ('[open_mpi]\nlauncher = "/opt/ompi/bin/mpirun"\nmpi = "pmix"\n', "mpirun starts its ranks itself"),
    ('[open_mpi]\nmpi = "pmix"\n', "[open_mpi] without a launcher"),
    ('[open_mpi]\nlib_dirs = ["/opt/ompi/lib"]\n', "[open_mpi] without a launcher"),
    ('[open_mpi]\nlauncher = "/opt/ompi/bin/mpirun;id"\n', "open_mpi.launcher = '/opt/ompi/bin/mpirun;id': ';' not"),
    ('[open_mpi]\nlauncher = "/o/bin/mpirun"\nlib_dirs = ["lib"]\n', "open_mpi.lib_dirs[0] = 'lib': must be"),
    ('[open_mpi]\nlauncher = "/o/bin/mpirun"\nbind = ["/a,/b"]\n', "open_mpi.bind[0]"),
])
def test_bad_values_are_refused_with_the_key_named(text, expected):
    with pytest.raises(SiteError) as info:
        site_from(text)
    assert expected in str(info.value)
    assert "t.toml" in str(info.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(SiteError) as info:
        site_from('[slurm]\npartition = "a;b"\naccount = "c|d"\n')
    assert "slurm.partition" in str(info.value) and "slurm.account" in str(info.value)


def test_unknown_site_names_the_known_ones():
    with pytest.raises(SiteError, match=r"known sites: .*cray-ex"):
        load_site(SITES, "nowhere")
    with pytest.raises(SiteError, match="lower-case"):
        load_site(SITES, "../etc/passwd")


def test_broken_toml_is_one_clear_error(tmp_path):
    (tmp_path / "bad.toml").write_text("[slurm\npartition=", encoding="utf-8")
    with pytest.raises(SiteError, match=r"bad\.toml: not valid TOML"):
        load_site(tmp_path, "bad")


@pytest.mark.parametrize("site", ["cray-ex", "ib-intelmpi", "local"])
@pytest.mark.parametrize("bench", slurm.BENCHES)
@pytest.mark.parametrize("model", slurm.MODELS)
def test_every_rendered_script_is_valid_bash(tmp_path, site, bench, model):
    spec = slurm.JobSpec(load_site(SITES, site), bench, IMAGE, model)
    script = tmp_path / "job.sbatch"
    script.write_text(slurm.render(ROOT, spec, tmp_path), encoding="utf-8")
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    text = script.read_text()
    assert text.startswith("#!/bin/bash\n") and "set -euo pipefail" in text
    assert f"#SBATCH --output={tmp_path}/slurm-%j.out" in text


def test_the_h5py_job_writes_its_shared_file_in_the_job_folder_bound_into_the_container(tmp_path):
    image = "hpcimages/h5py-mpi:py3.13-mpich4.3.2"
    text = slurm.render(ROOT, slurm.JobSpec(load_site(SITES, "cray-ex"), "h5py_write", image, "bind",
                                            sizes="65536:1048576"), tmp_path)
    assert f'python3 "$BENCH/h5py_write.py" -m 65536:1048576 --dir {tmp_path}' in text
    bindpath = next(line for line in text.splitlines() if line.startswith("export SINGULARITY_BINDPATH="))
    assert bindpath.endswith(f",{tmp_path}"), bindpath
    default = slurm.render(ROOT, slurm.JobSpec(load_site(SITES, "local"), "h5py_write", image), tmp_path)
    assert "-m 65536:16777216" in default


def test_cray_script_binds_the_host_mpi_for_singularity(tmp_path):
    text = slurm.render(ROOT, slurm.JobSpec(load_site(SITES, "cray-ex"), "osu_bw", IMAGE, "bind"), tmp_path)
    assert "srun --mpi=cray_shasta --cpu-bind=cores" in text
    assert "export SINGULARITYENV_LD_LIBRARY_PATH=/opt/cray/pe/mpich/" in text
    assert "export SINGULARITY_BINDPATH=" in text and "/usr/lib64/libcxi.so.1" in text
    assert "module load singularity/4.1.0-mpi" in text
    assert "#SBATCH --nodes=2\n#SBATCH --ntasks-per-node=1" in text
    assert 'exec -e "$IMAGE" python3 "$BENCH/osu_bw.py" -m 1:4194304' in text
    hybrid = slurm.render(ROOT, slurm.JobSpec(load_site(SITES, "cray-ex"), "osu_bw", IMAGE), tmp_path)
    assert "LD_LIBRARY_PATH" not in hybrid and "lib-abi-mpich" not in hybrid


def test_gpu_options_only_in_the_cuda_job(tmp_path):
    site = load_site(SITES, "ib-intelmpi")
    cuda = slurm.render(ROOT, slurm.JobSpec(site, "cuda", IMAGE), tmp_path)
    assert "#SBATCH --gres=gpu:1" in cuda and 'exec --sharens -e --nv "$IMAGE"' in cuda
    bw = slurm.render(ROOT, slurm.JobSpec(site, "osu_bw", IMAGE), tmp_path)
    assert "--gres" not in bw and "--nv" not in bw


def test_command_line_values_are_checked_before_rendering(tmp_path):
    site = load_site(SITES, "local")
    for spec, message in [
        (slurm.JobSpec(site, "osu_bww", IMAGE), "unknown benchmark 'osu_bww'"),
        (slurm.JobSpec(site, "osu_bw", IMAGE, "hybird"), "unknown model"),
        (slurm.JobSpec(site, "osu_bw", "x; rm -rf ~"), "not an image reference"),
        (slurm.JobSpec(site, "osu_bw", IMAGE, sizes="1:2;id"), "sizes"),
        (slurm.JobSpec(site, "convert", IMAGE, source="http://x/$(id)"), "source"),
        (slurm.JobSpec(site_from('description = "no host MPI"\n'), "hello", IMAGE, "bind"), "no [host_mpi]"),
    ]:
        with pytest.raises(slurm.SlurmError, match=message.replace("[", r"\[")):
            slurm.render(ROOT, spec, tmp_path)


def test_quoting_holds_even_for_a_value_that_passed_validation(tmp_path):
    # Defence in depth: the template quotes what reaches the shell; a validated value needs no quotes.
    env = slurm._environment(ROOT)
    assert env.from_string("{{ v | q }}").render(v="a b;c") == "'a b;c'"
    assert env.from_string("{{ v | q }}").render(v="/opt/x:/y,z") == "/opt/x:/y,z"


def test_dry_run_writes_script_and_record_and_submits_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCIMAGES_SLURM_RUNS", str(tmp_path))
    site = site_from('[slurm]\ncommands = "no/such/dir"\n[container]\nsif_dir = "/cluster/sif"\n', "nowhere")
    record = slurm.submit(ROOT, load_matrix(ROOT / "matrix.toml"), slurm.JobSpec(site, "hello", IMAGE), dry_run=True)
    assert record.state == "rendered" and record.job_id is None
    assert Path(record.script).is_file() and record.cell == "mpi4py:py3.13-mpich4.3.2" and record.mpi == "mpich4.3.2"
    assert "IMAGE=/cluster/sif/mpi4py_py3.13-mpich4.3.2.sif" in Path(record.script).read_text()
    assert [r.key for r in slurm.load_records(ROOT)] == [record.key]


@pytest.mark.parametrize("damage", ["bytes", "folder"])
def test_an_unreadable_job_record_is_named_and_left_in_place(tmp_path, monkeypatch, damage):
    monkeypatch.setenv("HPCIMAGES_SLURM_RUNS", str(tmp_path))
    bad = tmp_path / "20260101T000000000000-x" / "record.json"
    if damage == "bytes":
        bad.parent.mkdir()
        bad.write_bytes(b"\xff\xfe{")
    else:
        bad.mkdir(parents=True)  # a folder where the file should be: OSError, not a traceback
    with pytest.raises(slurm.SlurmError, match=r"unreadable job record: .*record\.json cannot be read .*left as it is"):
        slurm.load_records(ROOT)
    assert bad.exists()


def test_missing_sbatch_is_a_clear_error_and_no_record_claims_a_submission(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCIMAGES_SLURM_RUNS", str(tmp_path))
    site = site_from('[slurm]\ncommands = "no/such/dir"\n[container]\nsif_dir = "/cluster/sif"\n', "nowhere")
    with pytest.raises(slurm.SlurmError, match=r"`sbatch` is not in .*no/such/dir"):
        slurm.submit(ROOT, load_matrix(ROOT / "matrix.toml"), slurm.JobSpec(site, "hello", IMAGE))
    [record] = slurm.load_records(ROOT)
    assert record.state == "rendered"


def test_a_missing_sif_is_named_with_the_command_that_makes_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCIMAGES_SLURM_RUNS", str(tmp_path))
    site = load_site(SITES, "local")
    with pytest.raises(slurm.SlurmError, match=r"does not exist: convert the image first \(`invoke convert --only "
                                               r"mpi4py:py3.10-mpich3.4.3`\)"):
        slurm.submit(ROOT, load_matrix(ROOT / "matrix.toml"),
                     slurm.JobSpec(site, "hello", "hpcimages/mpi4py:py3.10-mpich3.4.3"))


def test_hello_output_must_have_every_rank():
    record = slurm.JobRecord(key="k", site="s", bench="hello", image=IMAGE, model="hybrid", variant="s",
                             script="x", run_dir="/nonexistent", sif="/nonexistent.sif", job_id="7")
    good = ("# hpcimages: job=7 site=s bench=hello model=hybrid node=n1\nHello World! I am process 1 of 2 on n1.\n"
            "Hello World! I am process 0 of 2 on n1.\n# library: MPICH Version:      4.3.2\n")
    rows, summary = slurm.parse_output(record, good, 2)
    assert rows[0].value == 2 and rows[0].mpi_library.startswith("MPICH") and rows[0].host == "n1"
    assert rows[0].job == "s:7:k" and "2 of 2 ranks" in summary
    singletons = "Hello World! I am process 0 of 1 on n1.\nHello World! I am process 0 of 1 on n1.\n"
    with pytest.raises(slurm.ResultsError, match="every rank"):
        slurm.parse_output(record, singletons, 2)


def test_collect_refuses_rows_whose_library_contradicts_the_model():
    bw = ("# OSU MPI-Python Bandwidth Test\n# MPICH Version:      4.3.2\n# Library file: {}\n"
          "# Size      Bandwidth (MB/s)\n1048576   9000.0\n")
    bind = slurm.JobRecord(key="k", site="s", bench="osu_bw", image=IMAGE, model="bind", variant="s+hostmpi",
                           script="x", run_dir="/nonexistent", sif="/nonexistent.sif", job_id="8")
    with pytest.raises(slurm.ResultsError, match="labelled as the bind model, but the benchmark loaded /usr/local"):
        slurm.parse_output(bind, bw.format("/usr/local/lib/libmpi.so.12.5.2"), 2, ("/opt/host-mpi",))
    rows, _ = slurm.parse_output(bind, bw.format("/opt/host-mpi/lib/libmpi.so.12"), 2, ("/opt/host-mpi/lib",))
    assert rows[0].mpi_library_file == "/opt/host-mpi/lib/libmpi.so.12"
    hybrid = slurm.JobRecord(key="k", site="s", bench="osu_bw", image=IMAGE, model="hybrid", variant="s",
                             script="x", run_dir="/nonexistent", sif="/nonexistent.sif", job_id="9")
    with pytest.raises(slurm.ResultsError, match="the image's own MPI, but the benchmark loaded the host library"):
        slurm.parse_output(hybrid, bw.format("/opt/host-mpi/lib/libmpi.so.12"), 2, ("/opt/host-mpi/lib",))


def test_collect_refuses_rows_whose_placement_contradicts_the_layout():
    bw = ("# OSU MPI-Python Bandwidth Test\n# MPICH Version:      4.3.2\n# Library file: /usr/local/lib/libmpi.so.12\n"
          "{}# Size      Bandwidth (MB/s)\n1048576   9000.0\n")
    inter = slurm.JobRecord(key="k", site="s", bench="osu_bw", image=IMAGE, model="hybrid", variant="s inter-node",
                            script="x", run_dir="/nonexistent", sif="/nonexistent.sif", job_id="8", nodes=2,
                            ntasks_per_node=1)
    one_node = "# Placement: rank 0 n1 cpus 0; rank 1 n1 cpus 1\n"
    two_nodes = "# Placement: rank 0 n1 cpus 0; rank 1 n2 cpus 0\n"
    with pytest.raises(slurm.ResultsError, match="labelled inter-node, but every rank ran on one node"):
        slurm.parse_output(inter, bw.format(one_node), 2)
    with pytest.raises(slurm.ResultsError, match="printed no placement line to prove it"):
        slurm.parse_output(inter, bw.format(""), 2)
    rows, _ = slurm.parse_output(inter, bw.format(two_nodes), 2)
    assert rows[0].layout == "inter-node" and rows[0].variant == "s inter-node"
    intra = slurm.JobRecord(key="k", site="s", bench="osu_bw", image=IMAGE, model="hybrid", variant="s",
                            script="x", run_dir="/nonexistent", sif="/nonexistent.sif", job_id="9", nodes=1,
                            ntasks_per_node=2)
    with pytest.raises(slurm.ResultsError, match="labelled as one node's, but the ranks ran on several nodes"):
        slurm.parse_output(intra, bw.format(two_nodes), 2)
    assert slurm.parse_output(intra, bw.format(""), 2)[0][0].layout is None  # an older script: nothing claimed


def test_the_bind_model_checks_its_host_libraries_load_before_any_rank_starts(tmp_path):
    site = load_site(SITES, "ib-intelmpi")
    bind = slurm.render(ROOT, slurm.JobSpec(site, "osu_bw", IMAGE, "bind"), tmp_path)
    preflight = bind.index("bind model pre-flight failed")
    assert preflight < bind.index("srun ")
    assert "' /opt/intel/oneapi/mpi/2021.13/lib:/opt/intel/oneapi/mpi/2021.13/opt/mpi/libfabric/lib " \
           "libmpi.so.12 /usr/lib64/libpmi2.so.0\n" in bind
    assert "/proc/self/maps" in bind[preflight - 3000:preflight], "the library is proven by the file it loaded"
    assert "LD_LIBRARY_PATH=/opt/intel/oneapi/mpi/2021.13/lib:/opt/intel/oneapi/mpi/2021.13/opt/mpi/libfabric/lib:" \
           "/usr/lib64\n" in bind
    hybrid = slurm.render(ROOT, slurm.JobSpec(site, "osu_bw", IMAGE), tmp_path)
    assert "pre-flight" not in hybrid


def test_a_profile_without_a_slurm_table_says_which_defaults_it_gets():
    site = site_from('description = "defaults"\n')
    assert site.slurm.nodes == 2 and site.warnings and "no [slurm] table" in site.warnings[0]
    assert not load_site(SITES, "local").warnings


def test_a_trailing_newline_is_refused_in_every_kind_of_value():
    for text, key in [('[slurm]\naccount = "proj0001\\n"\n', "slurm.account"),
                      ('[host_mpi.vars]\n"EVIL\\n" = "x"\n', "host_mpi.vars"),
                      ('[slurm]\ntime = "00:10:00\\n"\n', "slurm.time"),
                      ('[slurm]\noptions = ["--exclusive\\n"]\n', "slurm.options[0]")]:
        with pytest.raises(SiteError) as info:
            site_from(text)
        assert key in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_bench_dir_says_where_the_scripts_are_on_the_cluster(tmp_path):
    cray = slurm.render(ROOT, slurm.JobSpec(load_site(SITES, "cray-ex"), "osu_bw", IMAGE), tmp_path)
    assert "BENCH=/software/projects/project0001/hpcimages/bench\n" in cray and str(ROOT) not in cray
    local = slurm.render(ROOT, slurm.JobSpec(load_site(SITES, "local"), "osu_bw", IMAGE), tmp_path)
    assert f"BENCH={ROOT / 'bench'}\n" in local, "default: this checkout's bench/"


@pytest.mark.parametrize("bench,sizes,message", [
    ("osu_bw", "5:1", "osu_bw needs 1 <= MIN <= MAX"),
    ("osu_bw", "0:8", "osu_bw needs 1 <= MIN <= MAX"),
    ("osu_allreduce", "1:64", "osu_allreduce needs 4 <= MIN <= MAX"),
    ("osu_latency", "a:b", "a size or a range like 1:4194304"),
])
def test_sizes_are_checked_with_the_scripts_own_rule_before_submitting(tmp_path, bench, sizes, message):
    with pytest.raises(slurm.SlurmError, match=re.escape(message)):
        slurm.render(ROOT, slurm.JobSpec(load_site(SITES, "local"), bench, IMAGE, sizes=sizes), tmp_path)
    assert slurm.render(ROOT, slurm.JobSpec(load_site(SITES, "local"), "osu_latency", IMAGE, sizes="0:64"), tmp_path)
    hello = slurm.render(ROOT, slurm.JobSpec(load_site(SITES, "local"), "hello", IMAGE, sizes="5:1"), tmp_path)
    assert " -m " not in hello, "a job that takes no sizes ignores them"


def test_an_image_that_is_no_cell_is_named_with_the_nearest_cells(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCIMAGES_SLURM_RUNS", str(tmp_path))
    nearest = r"not a cell of any profile.*nearest: hpcimages/mpi4py:py3.13-mpich4.3.2"
    with pytest.raises(slurm.SlurmError, match=nearest) as info:
        slurm.submit(ROOT, load_matrix(ROOT / "matrix.toml"),
                     slurm.JobSpec(load_site(SITES, "local"), "hello", "hpcimages/mpi4py:py3.13-mpich4.3.3"))
    assert "convert" not in str(info.value)  # converting is no advice for a tag that no cell builds


H5PY_OUTPUT = """# hpcimages: job=9 site=s bench=h5py_write model=hybrid node=n1
# h5py parallel I/O bandwidth (MB/s, all ranks together)
# MPICH Version:      4.3.2
# Library file: /usr/local/lib/libmpi.so.12
# MPI ABI: mpich
# HDF5 1.14.5, h5py 3.16.0, driver mpio, 2 ranks
# Size        Write independent (MB/s)   Write collective (MB/s)   Read independent (MB/s)    Read collective (MB/s)
65536                       101.50                    202.25                   1003.00                   1504.75
131072                      111.50                    212.25                   1103.00                   1604.75
"""


def test_an_h5py_job_is_stored_as_its_four_modes():
    record = slurm.JobRecord(key="k", site="s", bench="h5py_write", image="hpcimages/h5py-mpi:py3.13-mpich4.3.2",
                             model="hybrid", variant="s", script="x", run_dir="/nonexistent", sif="/nonexistent.sif",
                             job_id="9")
    rows, summary = slurm.parse_output(record, H5PY_OUTPUT, 2)
    values = {(r.benchmark, r.size): r.value for r in rows}
    assert values == {("h5py_write_independent", 65536): 101.5, ("h5py_write_independent", 131072): 111.5,
                      ("h5py_write_collective", 65536): 202.25, ("h5py_write_collective", 131072): 212.25,
                      ("h5py_read_independent", 65536): 1003.0, ("h5py_read_independent", 131072): 1103.0,
                      ("h5py_read_collective", 65536): 1504.75, ("h5py_read_collective", 131072): 1604.75}
    assert {r.unit for r in rows} == {"MB/s"} and {r.mpi_library_file for r in rows} == {"/usr/local/lib/libmpi.so.12"}
    assert "2 sizes" in summary and "h5py_write_independent" in summary


def test_the_layout_comes_from_the_command_line_or_the_site_and_names_itself(tmp_path):
    site = load_site(SITES, "local")  # 1 node x 2 tasks
    intra = slurm.JobSpec(site, "osu_bw", IMAGE)
    inter = slurm.JobSpec(site, "osu_bw", IMAGE, "bind", nodes=2, ntasks_per_node=1)
    assert intra.layout == (1, 2) and intra.variant == "local"
    assert inter.layout == (2, 1) and inter.variant == "local+hostmpi inter-node"
    text = slurm.render(ROOT, inter, tmp_path)
    assert "#SBATCH --nodes=2\n#SBATCH --ntasks-per-node=1\n" in text
    assert "--model bind --nodes 2 --ntasks-per-node 1 --dry-run" in text  # how to render it again
    assert slurm.JobSpec(site, "convert", IMAGE, nodes=4).layout == (1, 1)  # one task builds the .sif


@pytest.mark.parametrize("nodes,tasks,message", [
    (2, 0, "osu_bw runs on exactly 2 ranks, but the layout is 2 node(s) x 2 task(s) (site local and the command line)"),
    (0, 1, "osu_bw runs on exactly 2 ranks, but the layout is 1 node(s) x 1 task(s)"),
    (-1, 0, "--nodes -1: use 1 to"),
])
def test_a_layout_a_point_to_point_benchmark_cannot_run_is_refused_before_submitting(tmp_path, nodes, tasks,
                                                                                     message):
    spec = slurm.JobSpec(load_site(SITES, "local"), "osu_bw", IMAGE, nodes=nodes, ntasks_per_node=tasks)
    with pytest.raises(slurm.SlurmError, match=re.escape(message)):
        slurm.render(ROOT, spec, tmp_path)


def test_invoke_submit_refuses_a_bad_layout_and_keeps_no_record(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCIMAGES_SLURM_RUNS", str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "invoke", "submit", "--site", "local", "--bench", "osu_latency",
                           "--image", IMAGE, "--nodes", "2", "--dry-run"], cwd=ROOT, capture_output=True, text=True,
                          check=False, env={**os.environ, "HPCIMAGES_SLURM_RUNS": str(tmp_path)})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--nodes 2 --ntasks-per-node 1 (inter-node)" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())
    words = subprocess.run([sys.executable, "-m", "invoke", "submit", "--site", "local", "--bench", "hello",
                            "--image", IMAGE, "--nodes", "two"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert words.returncode == 2 and "--nodes" in words.stderr and "Traceback" not in words.stderr


def test_apptainer_ranks_share_a_namespace_unless_asked_not_to(tmp_path):
    site = load_site(SITES, "local")
    assert site.container.sharens and not load_site(SITES, "cray-ex").container.sharens  # Singularity has none
    informed = slurm.render(ROOT, slurm.JobSpec(site, "osu_bw", IMAGE), tmp_path)
    assert '"$RUNTIME" exec --sharens -e "$IMAGE" python3' in informed
    plain_spec = slurm.JobSpec(site, "osu_bw", IMAGE, own_namespaces=True)
    plain = slurm.render(ROOT, plain_spec, tmp_path)
    assert "--sharens" not in plain.split("--dry-run")[1] and "--no-sharens --dry-run" in plain
    assert plain_spec.variant == "local no-sharens"
    off = site_from('[container]\nsharens = false\n')
    assert not off.container.sharens
    assert slurm.JobSpec(off, "hello", IMAGE, own_namespaces=True).variant == "t inter-node"  # nothing to turn off
    with pytest.raises(SiteError, match=r"sharens = true: only Apptainer \(1.1 or newer\) has --sharens"):
        site_from('[container]\nruntime = "singularity"\nsharens = true\n')


def test_the_site_template_sends_scripts_outputs_and_records_to_its_runs_dir(tmp_path):
    """A copy of template.toml is a real cluster's profile: its jobs write where its nodes see (runs_dir), the
    .sif and bench/ paths are the cluster's, and `invoke jobs` finds the record there."""
    template = load_site(ROOT / "slurm", "site-template")
    assert template.slurm.runs_dir and template.container.sif_dir and template.container.bench_dir
    assert template.has_bind_model
    root, runs = tmp_path / "checkout", tmp_path / "cluster-scratch" / "runs"
    shutil.copytree(ROOT / "slurm", root / "slurm")
    text = (ROOT / "slurm" / "site-template.toml").read_text().replace(template.slurm.runs_dir, str(runs))
    (root / "slurm" / "sites" / "mysite.toml").write_text(text)
    site = load_site(root / "slurm" / "sites", "mysite")
    assert slurm.runs_dir(root, site) == runs and slurm.runs_dir(root) != runs
    record = slurm.prepare(root, load_matrix(ROOT / "matrix.toml"), slurm.JobSpec(site, "osu_bw", IMAGE, "bind"))
    script = Path(record.script).read_text()
    assert Path(record.run_dir).parent == runs and record.path.is_file()
    assert f"#SBATCH --output={runs}/" in script and f"BENCH={template.container.bench_dir}" in script
    assert [r.key for r in slurm.load_records(root)] == [record.key]


OPEN_MPI_IMAGE = "hpcimages/mpi4py:py3.11-openmpi5.0.11"
OPEN_MPI_SITE = ('[open_mpi]\nlauncher = "/opt/ompi/bin/mpirun"\nlib_dirs = ["/opt/ompi/lib"]\n'
                 'bind = ["/opt/ompi/etc"]\nvars = { OPAL_PREFIX = "/opt/ompi", OMPI_MCA_btl = "self,vader,tcp" }\n')


def test_an_open_mpi_job_starts_under_the_sites_mpirun_and_keeps_its_settings_from_the_image(tmp_path):
    site = site_from(OPEN_MPI_SITE)
    hybrid = slurm.render(ROOT, slurm.JobSpec(site, "osu_bw", OPEN_MPI_IMAGE, nodes=2, ntasks_per_node=1,
                                              abi="openmpi"), tmp_path)
    assert "/opt/ompi/bin/mpirun -n 2 " in hybrid and "srun --mpi" not in hybrid
    # OPAL_PREFIX is the launcher's: exported for it, kept from the image's Open MPI; OMPI_ settings reach the ranks
    assert "export OPAL_PREFIX=/opt/ompi" in hybrid and "env -u OPAL_PREFIX \"$RUNTIME\" exec" in hybrid
    assert "APPTAINERENV_OPAL_PREFIX" not in hybrid and "OMPI_MCA_btl=-u" not in hybrid
    assert "(PMI_*, PMIX_*, PALS_*, OMPI_*, PRTE_*)" in hybrid and 'grep -vE "^OMPI_(COMMAND|ARGV)$"' in hybrid
    bind = slurm.render(ROOT, slurm.JobSpec(site, "osu_bw", OPEN_MPI_IMAGE, "bind", nodes=2, ntasks_per_node=1,
                                            abi="openmpi"), tmp_path)
    assert "export APPTAINER_BINDPATH=" in bind and "/opt/ompi/lib,/opt/ompi/etc" in bind
    assert "export APPTAINERENV_LD_LIBRARY_PATH=/opt/ompi/lib" in bind and "APPTAINERENV_OPAL_PREFIX=/opt/ompi" in bind
    assert "env -u" not in bind and "libmpi.so.40" in bind
    mpich = slurm.render(ROOT, slurm.JobSpec(site, "osu_bw", IMAGE), tmp_path)
    assert "mpirun" not in mpich and "OPAL_PREFIX" not in mpich and "(PMI_*, PMIX_*, PALS_*)" in mpich


def test_open_mpi_jobs_are_refused_with_what_to_add_and_convert_needs_no_launcher(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCIMAGES_SLURM_RUNS", str(tmp_path))
    m = load_matrix(ROOT / "matrix.toml")
    bare = site_from('[container]\nsif_dir = "/cluster/sif"\n')
    with pytest.raises(slurm.SlurmError, match=r"says nothing of Open MPI: add an \[open_mpi\] table"):
        slurm.submit(ROOT, m, slurm.JobSpec(bare, "hello", OPEN_MPI_IMAGE), dry_run=True)
    converted = slurm.submit(ROOT, m, slurm.JobSpec(bare, "convert", OPEN_MPI_IMAGE), dry_run=True)
    assert converted.abi == "openmpi" and converted.state == "rendered"
    no_dirs = site_from('[open_mpi]\nlauncher = "/opt/ompi/bin/mpirun"\n[container]\nsif_dir = "/cluster/sif"\n')
    with pytest.raises(slurm.SlurmError, match=r"no \[open_mpi\] lib_dirs: the bind model of an Open MPI image"):
        slurm.submit(ROOT, m, slurm.JobSpec(no_dirs, "hello", OPEN_MPI_IMAGE, "bind"), dry_run=True)
    with pytest.raises(slurm.SlurmError, match=r"--abi 'OpenMPI': one of mpich, mpi, openmpi"):
        slurm.submit(ROOT, m, slurm.JobSpec(no_dirs, "hello", "site/own:1.0", abi="OpenMPI"), dry_run=True)
    with pytest.raises(slurm.SlurmError, match=r"--abi mpich: .* is the cell mpi4py:py3.11-openmpi5.0.11, whose MPI "
                                               r"ABI is openmpi"):
        slurm.submit(ROOT, m, slurm.JobSpec(no_dirs, "hello", OPEN_MPI_IMAGE, abi="mpich"), dry_run=True)
    own = slurm.submit(ROOT, m, slurm.JobSpec(no_dirs, "hello", "site/own-openmpi:1.0", abi="openmpi"), dry_run=True)
    assert own.abi == "openmpi" and own.cell is None and "/opt/ompi/bin/mpirun -n " in Path(own.script).read_text()
    # an h5py-mpi image over Open MPI has its job; no cuda-python image is built over Open MPI
    h5py = slurm.submit(ROOT, m, slurm.JobSpec(no_dirs, "h5py_write", "hpcimages/h5py-mpi:py3.13-openmpi5.0.11"),
                        dry_run=True)
    script = Path(h5py.script).read_text()
    assert h5py.abi == "openmpi" and "/opt/ompi/bin/mpirun -n " in script and "h5py_write.py" in script
    with pytest.raises(slurm.SlurmError, match=r"--bench cuda: no cuda-python image is built over Open MPI"):
        slurm.submit(ROOT, m, slurm.JobSpec(no_dirs, "cuda", OPEN_MPI_IMAGE), dry_run=True)


# ---------------------------------------------------------------------------------------------
# one job of several runs: `invoke submit --model both --repeats N`

BW_RUN = ("# hpcimages: job=46 site=s bench=osu_bw model={model} node=n1\n# OSU MPI-Python Bandwidth Test\n"
          "# {version}\n# Library file: {library}\n# Placement: rank 0 n1 cpus 0; rank 1 n1 cpus 1\n"
          "# Size      Bandwidth (MB/s)\n262144   {value}\n1048576   {value}\n")
HYBRID_RUN = {"model": "hybrid", "version": "MPICH Version:      4.3.2", "library": "/usr/local/lib/libmpi.so.12"}
BIND_RUN = {"model": "bind", "version": "Intel(R) MPI Library 2021.17", "library": "/opt/host-mpi/lib/libmpi.so"}


def both_record(repeats: int = 3) -> slurm.JobRecord:
    return slurm.JobRecord(key="k", site="s", bench="osu_bw", image=IMAGE, model="both", variant="s, s+hostmpi",
                           script="x", run_dir="/nonexistent", sif="/nonexistent.sif", job_id="46", nodes=1,
                           ntasks_per_node=2, repeats=repeats)


def runs_output(order: list[tuple[int, dict]], value: float = 9000.0) -> str:
    return "".join(f"# hpcimages-run: repeat {r} model {run['model']}\n" + BW_RUN.format(**run, value=value + r)
                   for r, run in order)


def test_a_job_of_both_models_renders_each_model_s_own_script_and_rotates_their_order(tmp_path):
    site = load_site(SITES, "local")
    spec = slurm.JobSpec(site, "osu_bw", IMAGE, "both", "262144:1048576", repeats=3)
    files = slurm.render_files(ROOT, spec, tmp_path)
    assert sorted(files) == ["bind.sh", "hybrid.sh", "job.sbatch"]
    for model in ("hybrid", "bind"):  # each run is what a job of that model alone runs, named as its own script
        alone = slurm.render(ROOT, slurm.JobSpec(site, "osu_bw", IMAGE, model, "262144:1048576"), tmp_path)
        assert files[f"{model}.sh"] == alone.replace(str(tmp_path / "job.sbatch"), str(tmp_path / f"{model}.sh"))
    runs = re.findall(r"^run (\d) (\w+)$", files["job.sbatch"], re.M)
    assert runs == [("1", "hybrid"), ("1", "bind"), ("2", "bind"), ("2", "hybrid"), ("3", "hybrid"), ("3", "bind")]
    assert "--model both --repeats 3 --dry-run" in files["job.sbatch"]
    assert "#SBATCH --ntasks-per-node=2" in files["job.sbatch"] and "LD_LIBRARY_PATH" not in files["job.sbatch"]
    assert spec.variant == "local, local+hostmpi"
    script = tmp_path / "job.sbatch"
    script.write_text(files["job.sbatch"])
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    # one model repeated is a job of several runs too
    assert sorted(slurm.render_files(ROOT, slurm.JobSpec(site, "osu_bw", IMAGE, "bind", repeats=2), tmp_path)) == \
        ["bind.sh", "job.sbatch"]


def test_the_runs_script_names_each_run_and_goes_on_after_a_failed_one(tmp_path):
    site = load_site(SITES, "local")
    files = slurm.render_files(ROOT, slurm.JobSpec(site, "osu_bw", IMAGE, "both", repeats=2), tmp_path)
    (tmp_path / "job.sbatch").write_text(files["job.sbatch"])
    (tmp_path / "hybrid.sh").write_text("echo hybrid ran\n")
    (tmp_path / "bind.sh").write_text("echo bind ran; exit 3\n")
    proc = subprocess.run(["bash", str(tmp_path / "job.sbatch")], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "# hpcimages-run: repeat 1 model hybrid", "hybrid ran",
        "# hpcimages-run: repeat 1 model bind", "bind ran", "# hpcimages-run-failed: repeat 1 model bind exit 3",
        "# hpcimages-run: repeat 2 model bind", "bind ran", "# hpcimages-run-failed: repeat 2 model bind exit 3",
        "# hpcimages-run: repeat 2 model hybrid", "hybrid ran"]


@pytest.mark.parametrize("changes, message", [
    ({"repeats": 0}, "--repeats 0: use 1 to 100"),
    ({"repeats": 101}, "--repeats 101: use 1 to 100"),
    ({"bench": "hello", "repeats": 2}, "--bench hello: --repeats and --model both are for the benchmarks"),
    ({"bench": "convert", "model": "both"}, "--bench convert: --repeats and --model both"),
    ({"model": "all"}, "unknown model 'all'; known: hybrid, bind, both"),
])
def test_a_job_of_several_runs_refuses_what_it_cannot_pair(changes, message):
    spec = slurm.JobSpec(**{"site": load_site(SITES, "local"), "bench": "osu_bw", "image": IMAGE, **changes})
    with pytest.raises(slurm.SlurmError, match=re.escape(message)):
        spec.validate()


def test_both_models_need_the_site_s_bind_model():
    bare = site_from('[slurm]\ncommands = "no/such/dir"\n')
    with pytest.raises(slurm.SlurmError, match="has no \\[host_mpi\\] lib_dirs"):
        slurm.JobSpec(bare, "osu_bw", IMAGE, "both", repeats=6).validate()
    slurm.JobSpec(bare, "osu_bw", IMAGE, "hybrid", repeats=6).validate()  # one model repeated needs none


def test_collect_pairs_the_runs_of_one_job_by_repeat_each_proven_by_its_library():
    record = both_record()
    text = runs_output([(1, HYBRID_RUN), (1, BIND_RUN), (2, BIND_RUN), (2, HYBRID_RUN), (3, HYBRID_RUN),
                        (3, BIND_RUN)])
    rows, summary = slurm.parse_runs(record, text, 2, ("/opt/host-mpi/lib",))
    assert summary == "6 of 6 runs (3 repeats of s, s+hostmpi)"
    assert {(r.repeat, r.variant) for r in rows} == {(r, v) for r in (1, 2, 3) for v in ("s", "s+hostmpi")}
    assert {r.session for r in rows} == {"k"} and len({r.run_id for r in rows}) == 6
    assert all(r.mpi_library.startswith("Intel") == (r.variant == "s+hostmpi") for r in rows)
    assert {r.value for r in rows if r.repeat == 2} == {9002.0}


def test_a_run_that_failed_or_lies_about_its_library_is_named_and_the_others_are_stored():
    record = both_record(2)
    lying = {**BIND_RUN, "library": "/usr/local/lib/libmpi.so.12"}  # the bind run loaded the image's own MPI
    text = runs_output([(1, HYBRID_RUN), (1, lying), (2, BIND_RUN)]) + \
        "# hpcimages-run: repeat 2 model hybrid\nTraceback\n# hpcimages-run-failed: repeat 2 model hybrid exit 1\n"
    rows, summary = slurm.parse_runs(record, text, 2, ("/opt/host-mpi/lib",))
    assert {(r.repeat, r.variant) for r in rows} == {(1, "s"), (2, "s+hostmpi")}
    assert summary.startswith("2 of 4 runs") and "repeat 1 bind: " in summary and "repeat 2 hybrid: exit 1" in summary
    with pytest.raises(slurm.ResultsError, match="none of its 4 runs gave figures: repeat 1 bind"):
        slurm.parse_runs(record, runs_output([(1, lying)]), 2, ("/opt/host-mpi/lib",))
    with pytest.raises(slurm.ResultsError, match="no '# hpcimages-run:' line"):
        slurm.parse_runs(record, BW_RUN.format(**HYBRID_RUN, value=1.0), 2)


def test_a_run_named_twice_or_outside_the_job_is_not_stored():
    record = both_record(1)
    text = runs_output([(1, HYBRID_RUN), (1, HYBRID_RUN), (2, BIND_RUN), (1, BIND_RUN)])
    rows, summary = slurm.parse_runs(record, text, 2, ("/opt/host-mpi/lib",))
    assert {(r.repeat, r.variant) for r in rows} == {(1, "s"), (1, "s+hostmpi")} and len(rows) == 4
    assert "repeat 1 hybrid: not a run of this job" in summary and "repeat 2 bind: not a run" in summary


@pytest.mark.parametrize("variant", ["s", "s+hostmpi, s", "t, t+hostmpi", "s, s+hostmpi inter-node",
                                     "s, s+hostmpi, s", "s inter-node, s+hostmpi inter-node"])
def test_a_record_whose_labels_are_not_its_models_is_refused(variant):
    record = dataclasses.replace(both_record(), variant=variant)  # swapped, another site's, another layout's
    with pytest.raises(slurm.ResultsError, match="is not what the model\\(s\\) hybrid, bind at site s are named"):
        slurm.parse_runs(record, runs_output([(1, HYBRID_RUN)]), 2)
    no_sharens = dataclasses.replace(both_record(), variant="s no-sharens, s+hostmpi no-sharens")
    assert no_sharens.run_variants() == {"hybrid": "s no-sharens", "bind": "s+hostmpi no-sharens"}


def test_a_failure_line_counts_only_as_the_last_line_of_its_own_run():
    record = both_record(1)
    stray = "# hpcimages-run-failed: repeat 1 model bind exit 2\n"  # printed by the hybrid run itself
    text = runs_output([(1, HYBRID_RUN)]).replace("# OSU", stray + "# OSU", 1) + runs_output([(1, BIND_RUN)])
    rows, summary = slurm.parse_runs(record, text, 2, ("/opt/host-mpi/lib",))
    assert {r.variant for r in rows} == {"s", "s+hostmpi"} and "not stored" not in summary
    assert {r.command for r in rows} == {"/nonexistent/hybrid.sh", "/nonexistent/bind.sh"}


def test_a_job_slurm_ended_early_keeps_the_runs_it_finished(tmp_path):
    run_dir = tmp_path / "k"
    run_dir.mkdir()
    record = dataclasses.replace(both_record(3), run_dir=str(run_dir), script=str(run_dir / "job.sbatch"))
    cut = runs_output([(1, HYBRID_RUN), (1, BIND_RUN), (2, BIND_RUN)])
    cut = cut[:cut.rindex("1048576")]  # the time limit struck in the middle of repeat 2's bind run
    (run_dir / "slurm-46.out").write_text(cut + "slurmstepd: error: *** JOB 46 CANCELLED DUE TO TIME LIMIT ***\n")
    site = load_site(SITES, "local")
    store = tmp_path / "store.jsonl"
    done = slurm._finish(record, site, "TIMEOUT", "exit 0:0", store, set(), progress=lambda _: None)
    assert done.record.state == "collected" and done.stored == 4, done.record
    assert done.record.summary.startswith("Slurm: TIMEOUT (exit 0:0) before the job's end, its last run not stored; "
                                          "2 of 6 runs")
    failed = dataclasses.replace(record, state="submitted", key="k2", summary="")
    (run_dir / "slurm-46.out").write_text("module: command not found\n")  # nothing ran at all
    assert slurm._finish(failed, site, "FAILED", "exit 1:0", store, set(), progress=lambda _: None).record.state \
        == "failed"


def test_a_summary_names_the_first_problems_and_counts_the_rest():
    record = both_record(3)
    lying = {**BIND_RUN, "library": "/usr/local/lib/libmpi.so.12"}
    text = runs_output([(1, HYBRID_RUN), (1, lying), (2, lying), (3, lying), (2, HYBRID_RUN), (3, HYBRID_RUN)])
    text += "".join(f"# hpcimages-run: repeat {r} model bind\nboom\n# hpcimages-run-failed: repeat {r} model bind "
                    "exit 1\n" for r in (4, 5))
    _, summary = slurm.parse_runs(record, text, 2, ("/opt/host-mpi/lib",))
    assert summary.startswith("3 of 6 runs") and summary.endswith("(+2 more)"), summary
