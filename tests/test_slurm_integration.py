"""A real Slurm (the containerised test cluster): submit, track, collect, in the hybrid and the bind model."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path

import pytest

from hpcimages.cluster import slurm, testcluster
from hpcimages.define import load_matrix
from hpcimages.define.sites import load_site, parse_site
from hpcimages.measure import bench
from hpcimages.measure.results import load
from hpcimages.paths import build_dir
from hpcimages.sif import apptainer as ap
from hpcimages.sif import convert as cv

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
# trixie: its glibc loads the cluster's (sid) libpmi2 in the bind model; bookworm's is too old for it
CELL = "mpi4py:py3.13-mpich4.3.2"
IMAGE = f"hpcimages/{CELL}"
BOOKWORM_IMAGE = "hpcimages/mpi4py:py3.11-mpich4.3.2"
STANDARD_ABI_IMAGE = "hpcimages/mpi4py:py3.13-mpiabi-mpich5.0.2"  # invoke site verify binds Debian's libmpi_abi.so.1
OPEN_MPI_IMAGE = "hpcimages/mpi4py:py3.11-openmpi5.0.11"  # started by the site's mpirun ([open_mpi])
SIZES = "1:1048576"


@pytest.fixture(scope="module")
def cluster(ci_built):
    client = ci_built.client
    runtime = ap.choose_runtime("container", lambda: client, ROOT, progress=lambda _: None)
    for converted in cv.convert(client, runtime, [IMAGE, BOOKWORM_IMAGE, STANDARD_ABI_IMAGE, OPEN_MPI_IMAGE],
                                cv.sif_dir(ROOT), progress=lambda _: None):
        assert converted.status in ("converted", "up to date"), converted.reason
    testcluster.start(client, ROOT, progress=lambda _: None)
    # this module's scripts, outputs and records: in the tests' build folder (the cluster mounts it)
    runs = build_dir(ROOT) / "slurm" / f"test-runs-{uuid.uuid4().hex[:8]}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HPCIMAGES_SLURM_RUNS", str(runs))
        yield client
    shutil.rmtree(runs, ignore_errors=True)


def invoke(*args: str, timeout: int = 1200) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, capture_output=True, text=True,
                          check=False, timeout=timeout)


def local_site_with(**changes: dict) -> object:
    data = tomllib.loads((ROOT / "slurm" / "sites" / "local.toml").read_text())
    for section, values in changes.items():
        data.setdefault(section, {}).update(values)
    return parse_site("local", ROOT / "slurm" / "sites" / "local.toml", data)


def collect_all(**kwargs) -> list[slurm.Collected]:
    sites = {"local": load_site(ROOT / "slurm" / "sites", "local")}
    return slurm.collect(ROOT, sites, kwargs.pop("store_for"), poll_s=1, timeout_s=600, **kwargs)


def test_hello_and_osu_bw_in_both_models_land_beside_the_docker_runs(cluster, tmp_path):
    submitted = []
    for bench_name in ("hello", "osu_bw"):
        for model in ("hybrid", "bind"):
            proc = invoke("submit", "--site", "local", "--bench", bench_name, "--image", IMAGE, "--model", model,
                          "--sizes", SIZES)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert "submitted" in proc.stdout
            submitted.append((bench_name, model))
    listing = invoke("jobs")
    assert listing.returncode == 0 and listing.stdout.count("submitted") >= 4, listing.stdout + listing.stderr

    store = tmp_path / "slurm-local.jsonl"
    proc = invoke("collect", "--store", str(store), "--timeout", "900")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records, _ = load([store])
    by = {(r.benchmark, r.variant) for r in records}
    assert by == {("hello", "local"), ("hello", "local+hostmpi"), ("osu_bw", "local"), ("osu_bw", "local+hostmpi")}
    hello = {r.variant: r for r in records if r.benchmark == "hello"}
    assert hello["local"].value == 2 and hello["local+hostmpi"].value == 2
    assert hello["local"].mpi_library.startswith("MPICH Version")
    assert hello["local+hostmpi"].mpi_library.startswith("Intel(R) MPI Library")
    bw = [r for r in records if r.benchmark == "osu_bw"]
    assert {r.cell for r in records} == {CELL} and all(r.value > 0 for r in bw)
    assert {r.mpi_library.split()[0] for r in bw} == {"MPICH", "Intel(R)"}
    for job_output in Path(os.environ["HPCIMAGES_SLURM_RUNS"]).glob("*hello*/slurm-*.out"):
        text = job_output.read_text()
        assert "process 0 of 2" in text and "process 1 of 2" in text, text

    # the same cell measured by `nox -s bench` in Docker, then one table with both
    docker_store = tmp_path / "docker.jsonl"
    m = load_matrix(ROOT / "matrix.toml")
    cells = [c for c in m.cells("ci") if c.ref == CELL]
    bench.run(cluster, m, "ci", cells, ["osu_bw"], docker_store, repeats=1, sizes={"osu_bw": SIZES}, swap=False,
              c_reference=False, bare_metal=False, progress=lambda _: None)
    table = invoke("tabulate", f"{docker_store},{store}", "--no-plots", "--out", str(tmp_path / "t.md"))
    assert table.returncode == 0, table.stdout + table.stderr
    header = next(ln for ln in table.stdout.splitlines() if ln.strip().startswith("size (B)") and "container" in ln)
    assert "local" in header and "local+hostmpi" in header, table.stdout
    assert "bw local / container" in table.stdout


def test_one_job_alternates_both_models_and_collect_pairs_them_into_intervals(cluster, tmp_path):
    proc = invoke("submit", "--site", "local", "--bench", "osu_bw", "--image", IMAGE, "--model", "both",
                  "--repeats", "6", "--sizes", "262144:1048576")
    assert proc.returncode == 0 and "6 repeat(s) of the hybrid and bind model(s)" in proc.stdout, \
        proc.stdout + proc.stderr
    store = tmp_path / "slurm-local.jsonl"
    collected = invoke("collect", "--store", str(store), "--timeout", "900")
    assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-3000:]
    assert "12 of 12 runs (6 repeats of local, local+hostmpi)" in collected.stdout, collected.stdout
    records, _ = load([store])
    assert len({r.job for r in records}) == 1 and len({r.session for r in records}) == 1  # one job, one session
    runs = {(r.repeat, r.variant) for r in records}
    assert runs == {(n, v) for n in range(1, 7) for v in ("local", "local+hostmpi")}
    for row in records:  # each run proven by the library it loaded
        assert row.mpi_library.startswith("MPICH" if row.variant == "local" else "Intel(R) MPI"), row
    [job] = [r for r in slurm.load_records(ROOT) if r.result_key == records[0].job]
    assert job.state == "collected" and job.model == "both" and job.repeats == 6
    assert sorted(p.name for p in Path(job.run_dir).iterdir() if p.suffix in (".sh", ".sbatch")) == \
        ["bind.sh", "hybrid.sh", "job.sbatch"]

    table = invoke("tabulate", str(store), "--no-plots", "--out", str(tmp_path / "t.md"))
    assert table.returncode == 0, table.stdout + table.stderr
    assert "bw local+hostmpi / local" in table.stdout, table.stdout
    decided = [ln for ln in table.stdout.splitlines() if ln.startswith("local+hostmpi / local")]
    assert len(decided) == 3 and all("site: the site's MPI" in ln for ln in decided), table.stdout
    # a median, its interval (a bimodal machine's may reach past 10) and the 6 repeats it used
    assert all(re.search(r"\d+\.\d{3} \[\d+\.\d{3}, \d+\.\d{3}\]\s+6\s", ln) for ln in decided), table.stdout


def test_the_test_cluster_has_two_nodes_each_a_container_with_its_own_name_and_address(cluster):
    shims = testcluster.bin_dir(ROOT)
    sinfo = subprocess.run([str(shims / "sinfo"), "-N", "-h", "-o", "%N %T"], capture_output=True, text=True,
                           check=False, timeout=60)
    assert sinfo.returncode == 0, sinfo.stderr
    nodes = dict(line.split() for line in sinfo.stdout.splitlines())
    assert sorted(nodes) == ["node1", "node2"] and all(s in ("idle", "mixed", "allocated") for s in nodes.values())
    addresses = {}
    for node in nodes:
        container = cluster.containers.get(testcluster.node_container(node))
        assert container.attrs["Config"]["Hostname"] == node
        addresses[node] = container.attrs["NetworkSettings"]["Networks"][testcluster.NETWORK]["IPAddress"]
    assert len(set(addresses.values())) == 2 and all(addresses.values()), addresses


def test_point_to_point_across_two_nodes_records_its_layout_in_both_models(cluster, tmp_path):
    jobs = [(bench_name, model, ["--nodes", "2", "--ntasks-per-node", "1"]) for bench_name in ("osu_bw", "osu_latency")
            for model in ("hybrid", "bind")] + [("osu_bw", "hybrid", [])]  # and the site's own layout: one node
    jobs.append(("osu_bw", "hybrid", ["--no-sharens"]))  # the plain Apptainer configuration, kept as a variant
    for bench_name, model, layout in jobs:
        proc = invoke("submit", "--site", "local", "--bench", bench_name, "--image", IMAGE, "--model", model,
                      "--sizes", "1:65536", *layout)
        assert proc.returncode == 0 and "submitted" in proc.stdout, proc.stdout + proc.stderr
    store = tmp_path / "slurm-local.jsonl"
    proc = invoke("collect", "--store", str(store), "--timeout", "900")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records, _ = load([store])
    assert {(r.benchmark, r.variant) for r in records} == {
        ("osu_bw", "local inter-node"), ("osu_bw", "local+hostmpi inter-node"), ("osu_bw", "local"),
        ("osu_bw", "local no-sharens"), ("osu_latency", "local inter-node"),
        ("osu_latency", "local+hostmpi inter-node")}
    for r in records:
        if r.variant.endswith("inter-node"):
            # one rank on each node, each pinned by Slurm (task/affinity) to a core of its own
            assert r.layout == "inter-node" and re.fullmatch(r"rank 0 node1 cpus (\d+); rank 1 node2 cpus (?!\1)\d+",
                                                             r.placement), r.placement
            assert r.transport.startswith("tcp to "), r.transport  # the engine's network: TCP alone
        else:
            assert r.layout == "intra-node" and r.placement.count(" node1 ") == 2, r.placement
            assert r.transport == "no tcp between ranks"
    assert {r.mpi_library.split()[0] for r in records if "hostmpi" in r.variant} == {"Intel(R)"}
    table = invoke("tabulate", str(store), "--no-plots", "--out", str(tmp_path / "t.md"))
    assert table.returncode == 0, table.stdout + table.stderr
    header = next(ln for ln in table.stdout.splitlines() if ln.strip().startswith("size (B)") and "inter-node" in ln)
    assert re.search(r"\blocal\s+local inter-node\s+local no-sharens\s+local\+hostmpi inter-node", header), header
    assert "TCP fallback" not in table.stdout  # both MPIs cross this network by TCP: no fallback to flag


def test_an_open_mpi_image_runs_under_the_sites_mpirun_intra_and_inter_node_in_both_models(cluster, tmp_path):
    """This Slurm has no PMIx: the site's Open MPI mpirun (the local profile's [open_mpi]) starts one apptainer exec
    per rank inside the allocation, its daemons on the second node through srun."""
    inter = ["--nodes", "2", "--ntasks-per-node", "1"]
    for bench_name, model, layout in (("hello", "hybrid", []), ("osu_bw", "hybrid", inter),
                                      ("osu_latency", "bind", inter)):
        proc = invoke("submit", "--site", "local", "--bench", bench_name, "--image", OPEN_MPI_IMAGE, "--model", model,
                      "--sizes", "1:65536", *layout)
        assert proc.returncode == 0 and "submitted" in proc.stdout, proc.stdout + proc.stderr
    store = tmp_path / "slurm-local.jsonl"
    proc = invoke("collect", "--store", str(store), "--timeout", "900")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records, _ = load([store])
    by = {(r.benchmark, r.variant): r for r in records if r.size in (0, 8)}
    assert set(by) == {("hello", "local"), ("osu_bw", "local inter-node"),
                       ("osu_latency", "local+hostmpi inter-node")}, sorted(by)
    hello = by[("hello", "local")]
    assert hello.value == 2 and hello.mpi_library.startswith("Open MPI v5.0.11,"), hello
    own, bound = by[("osu_bw", "local inter-node")], by[("osu_latency", "local+hostmpi inter-node")]
    assert own.mpi_library_file == "/usr/local/lib/libmpi.so.40" and own.mpi_abi == "openmpi"
    assert bound.mpi_library_file == f"{testcluster.OPEN_MPI_MOUNT}/lib/libmpi.so.40", bound.mpi_library_file
    for r in (own, bound):
        assert r.layout == "inter-node" and re.fullmatch(r"rank 0 node1 cpus [\d,-]+; rank 1 node2 cpus [\d,-]+",
                                                         r.placement), r.placement
        assert r.value > 0 and r.cell == "mpi4py:py3.11-openmpi5.0.11"
    assert all(r.abi == "openmpi" for r in slurm.load_records(ROOT) if r.image == OPEN_MPI_IMAGE)


def test_an_open_mpi_bind_model_pointed_at_an_mpich_library_fails_before_any_rank(cluster, tmp_path):
    """[open_mpi] lib_dirs at the MPICH-ABI host MPI (Intel MPI's folder): no libmpi.so.40 there, so the loader
    takes the image's own, which then meets Intel's libfabric first on the path. The pre-flight says so before
    any rank starts, as a user would meet it."""
    site = local_site_with(open_mpi={"lib_dirs": ["/opt/host-mpi/lib"]})
    record = slurm.submit(ROOT, load_matrix(ROOT / "matrix.toml"), slurm.JobSpec(site, "hello", OPEN_MPI_IMAGE, "bind"))
    done = collect_all(store_for=lambda _: tmp_path / "r.jsonl")
    [failed] = [c.record for c in done if c.record.key == record.key]
    assert failed.state == "failed" and "bind model pre-flight failed" in failed.message, failed.message
    output = Path(failed.output).read_text()
    assert "host libraries do not load in this image: /opt/host-mpi/lib/libfabric.so.1" in output, output
    assert "required by /usr/local/lib/libmpi.so.40" in output and "Hello World" not in output


@pytest.mark.parametrize("cell,models,own,host", [
    # over Open MPI: its ranks started by the host's mpirun, HDF5 following the site's Open MPI under the bind model
    ("h5py-mpi:py3.13-openmpi5.0.11", ("hybrid", "bind"), "/usr/local/lib/libmpi.so.40",
     f"{testcluster.OPEN_MPI_MOUNT}/lib/libmpi.so.40"),
    # the MPICH image of the ci profile is a bookworm one: the test cluster's PMI2 library needs glibc 2.38 for the
    # bind model (docs/slurm.md, glibc), so its own MPICH alone
    ("h5py-mpi:py3.11-mpich4.3.2", ("hybrid",), "/usr/local/lib/libmpi.so.12", ""),
])
def test_h5py_write_runs_under_slurm_through_apptainer(cluster, tmp_path, cell, models, own, host):
    image = f"hpcimages/{cell}"
    for converted in cv.convert(cluster, ap.choose_runtime("container", lambda: cluster, ROOT, progress=lambda _: None),
                                [image], cv.sif_dir(ROOT), progress=lambda _: None):
        assert converted.status in ("converted", "up to date"), converted.reason
    for model in models:
        proc = invoke("submit", "--site", "local", "--bench", "h5py_write", "--image", image, "--model", model,
                      "--sizes", "65536:262144")
        assert proc.returncode == 0 and "submitted" in proc.stdout, proc.stdout + proc.stderr
    store = tmp_path / "slurm-local.jsonl"
    proc = invoke("collect", "--store", str(store), "--timeout", "900")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records, _ = load([store])
    assert {(r.benchmark, r.variant) for r in records} == {
        (f"h5py_{op}_{mode}", variant) for op in ("write", "read") for mode in ("independent", "collective")
        for variant in ("local", "local+hostmpi")[:len(models)]}
    assert {r.size for r in records} == {65536, 131072, 262144} and all(r.value > 0 for r in records)
    libraries = {r.variant: r.mpi_library_file for r in records}
    assert libraries["local"].startswith(own), libraries
    assert "bind" not in models or libraries["local+hostmpi"].startswith(host), libraries
    assert {r.cell for r in records} == {cell}


def test_an_sbatch_rejection_carries_slurms_message_and_marks_the_record(cluster):
    site = local_site_with(slurm={"partition": "nosuchpartition"})
    spec = slurm.JobSpec(site, "hello", IMAGE)
    with pytest.raises(slurm.SlurmError) as info:
        slurm.submit(ROOT, load_matrix(ROOT / "matrix.toml"), spec)
    assert "invalid partition" in str(info.value).lower()
    [record] = [r for r in slurm.load_records(ROOT) if r.state == "rejected"]
    assert "invalid partition" in record.message.lower() and record.job_id is None


def test_a_failed_job_is_reported_with_slurms_words(cluster, tmp_path):
    site = local_site_with(container={"binary": "/opt/no-such-runtime/apptainer"})
    record = slurm.submit(ROOT, load_matrix(ROOT / "matrix.toml"), slurm.JobSpec(site, "hello", IMAGE))
    done = collect_all(store_for=lambda _: tmp_path / "r.jsonl")
    [failed] = [c.record for c in done if c.record.key == record.key]
    assert failed.state == "failed" and failed.slurm_state == "FAILED"
    assert "no-such-runtime" in failed.message and "Slurm: FAILED" in failed.message
    assert not (tmp_path / "r.jsonl").exists()


def test_a_host_library_the_image_cannot_load_fails_the_bind_pre_flight_with_the_reason(cluster, tmp_path):
    # the cluster's Slurm PMI2 library wants glibc 2.38; the bookworm image has 2.36
    site = load_site(ROOT / "slurm" / "sites", "local")
    record = slurm.submit(ROOT, load_matrix(ROOT / "matrix.toml"), slurm.JobSpec(site, "hello", BOOKWORM_IMAGE, "bind"))
    done = collect_all(store_for=lambda _: tmp_path / "r.jsonl")
    [failed] = [c.record for c in done if c.record.key == record.key]
    assert failed.state == "failed" and failed.slurm_state == "FAILED"
    assert "bind model pre-flight failed" in failed.message and "GLIBC_2.38" in failed.message, failed.message
    output = Path(failed.output).read_text()
    assert "the host libraries need glibc 2.38, the image has glibc 2.36: use an image with glibc 2.38" in output
    assert "Hello World" not in Path(failed.output).read_text()


def test_collect_after_an_interruption_goes_on_where_it_stopped(cluster, tmp_path):
    m = load_matrix(ROOT / "matrix.toml")
    site = load_site(ROOT / "slurm" / "sites", "local")
    keys = [slurm.submit(ROOT, m, slurm.JobSpec(site, "hello", IMAGE)).key for _ in range(2)]
    store = tmp_path / "r.jsonl"

    def interrupt_after_first_stored(message: str) -> None:
        if " -> " in message:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        collect_all(store_for=lambda _: store, progress=interrupt_after_first_stored)
    states = {r.key: r.state for r in slurm.load_records(ROOT) if r.key in keys}
    assert sorted(states.values()) == ["collected", "submitted"]
    assert len(load([store])[0]) == 1

    done = collect_all(store_for=lambda _: store, progress=lambda _: None)
    assert [c.record.key for c in done] == [k for k, s in states.items() if s == "submitted"]
    assert all(r.state == "collected" for r in slurm.load_records(ROOT) if r.key in keys)
    assert len(load([store])[0]) == 2

    # killed after storing a job's rows but before marking its record: collecting it again stores nothing twice
    record = next(r for r in slurm.load_records(ROOT) if r.key == keys[0])
    record.state = "submitted"
    record.save()
    collect_all(store_for=lambda _: store, progress=lambda _: None)
    assert len(load([store])[0]) == 2
    assert json.loads(Path(record.path).read_text())["state"] == "collected"


def test_a_bind_model_that_loads_the_images_own_mpi_fails_before_any_rank(cluster, tmp_path):
    """The issue's reproduction: lib_dirs one directory above the host library. The loader satisfies libmpi.so.12
    with the image's own MPICH, so only the file mpi4py loaded tells; and a directory the node lacks."""
    one_up = local_site_with(host_mpi={"lib_dirs": ["/opt/host-mpi"]})
    missing = local_site_with(host_mpi={"lib_dirs": ["/opt/no-such-mpi/lib"]})
    m = load_matrix(ROOT / "matrix.toml")
    records = [slurm.submit(ROOT, m, slurm.JobSpec(site, "osu_bw", IMAGE, "bind", sizes="1048576:1048576"))
               for site in (one_up, missing)]
    done = {c.record.key: c.record for c in collect_all(store_for=lambda _: tmp_path / "r.jsonl")}
    wrong, absent = (done[r.key] for r in records)
    assert wrong.state == "failed", wrong.message
    assert "bind model pre-flight failed: mpi4py loaded /usr/local/lib/libmpi.so.12" in wrong.message, wrong.message
    assert "MPICH Version:" in wrong.message and "/opt/host-mpi holds no libmpi.so.12" in wrong.message
    assert "# Size" not in Path(wrong.output).read_text(), "no rank may run on the image's MPI under a bind label"
    assert absent.state == "failed" and "/opt/no-such-mpi/lib" in absent.message, absent.message
    assert not (tmp_path / "r.jsonl").exists()


def test_a_site_whose_lib_dirs_hold_open_mpi_is_told_it_is_not_the_mpich_abi(cluster, tmp_path):
    """The node has an Open MPI (libmpi.so.40) at /opt/foreign-mpi; a profile pointing at it must fail before any
    rank, naming Open MPI, instead of running the image's own MPICH under a bind label."""
    site = local_site_with(host_mpi={"lib_dirs": [f"{testcluster.FOREIGN_MOUNT}/lib"]})
    record = slurm.submit(ROOT, load_matrix(ROOT / "matrix.toml"),
                          slurm.JobSpec(site, "osu_bw", IMAGE, "bind", sizes="1048576:1048576"))
    done = {c.record.key: c.record for c in collect_all(store_for=lambda _: tmp_path / "r.jsonl")}
    failed = done[record.key]
    assert failed.state == "failed", failed.message
    assert "bind model pre-flight failed: mpi4py loaded /usr/local/lib/libmpi.so.12" in failed.message
    assert "libmpi.so.40" in failed.message and "Open MPI, not the MPICH ABI (libmpi.so.12)" in failed.message, \
        failed.message
    assert "# Size" not in Path(failed.output).read_text()
    assert not (tmp_path / "r.jsonl").exists()


# -- invoke site discover / verify: the bind model found from the cluster's own Debian MPICH -------------------------

DEBIAN_MPICH = "/usr/lib/x86_64-linux-gnu/libmpi.so.12"


@pytest.fixture(scope="module")
def discovered(cluster):
    """`invoke site discover` through the test cluster's srun, for the mpi4py cells: the profile, the module file
    and the record it writes, removed afterwards."""
    name = f"test-{uuid.uuid4().hex[:6]}"
    written = [ROOT / "slurm" / "sites" / f"{name}{suffix}" for suffix in (".toml", ".discovery.json",
                                                                         ".verified.json")]
    written.append(ROOT / "slurm" / "modules" / "hpcimages-bind" / f"{name}.lua")
    proc = invoke("site", "discover", "--name", name, "--via", "local", "--mpi-lib", DEBIAN_MPICH,
                  "--only", "mpi4py:py3.13-mpich4.3.2", "--only", "mpi4py:py3.11-mpich4.3.2",
                  "--only", "mpi4py:py3.13-mpiabi-mpich5.0.2")
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        yield name, proc.stdout
    finally:
        for path in written:
            path.unlink(missing_ok=True)


def test_discover_finds_the_closure_the_plugins_and_the_fit_of_each_cell(discovered):
    name, _ = discovered
    record = json.loads((ROOT / "slurm" / "sites" / f"{name}.discovery.json").read_text())
    assert record["libraries"] == {"libmpi.so.12": "/usr/lib/x86_64-linux-gnu/libmpich.so.12.6.2",
                                   "libmpi_abi.so.1": "/usr/lib/x86_64-linux-gnu/libmpi_abi_mpich.so.1.0.0"}
    sources = {b.split(":")[0] for b in record["binds"]}
    assert {"/usr/lib/x86_64-linux-gnu/libucp.so.0.0.0", "/usr/lib/x86_64-linux-gnu/libucs.so.0.0.0",
            "/usr/lib/x86_64-linux-gnu/libhwloc.so.15.10.4"} <= sources
    # never the image's own: no loader, no C library, no C++ runtime
    assert not [s for s in sources if re.search(r"/(ld-linux|libc|libm|libstdc\+\+|libgcc_s)[.-]", s)], sources
    # the UCX modules, opened at run time, come from what the two ranks mapped, placed beside the bound libucs
    assert "/usr/lib/x86_64-linux-gnu/ucx:/opt/hpcimages/host-mpi/lib/ucx" in record["binds"]
    assert any(p.startswith("/usr/lib/x86_64-linux-gnu/ucx/libuct_") for p in record["plugins"]), record["plugins"]
    assert record["needs_glibc"] == "GLIBC_2.38"
    fit = {r["cell"]: r for r in record["fit"]}
    assert fit["mpi4py:py3.13-mpich4.3.2"]["fits"] and fit["mpi4py:py3.13-mpiabi-mpich5.0.2"]["fits"]
    bookworm = fit["mpi4py:py3.11-mpich4.3.2"]
    assert not bookworm["fits"] and "needs GLIBC_2.38" in bookworm["reason"] and "glibc 2.36" in bookworm["reason"]
    assert "use an image with glibc 2.38 or newer" in bookworm["reason"]
    # the profile it wrote loads and runs the bind model through the existing schema
    site = load_site(ROOT / "slurm" / "sites", name)
    assert site.has_bind_model and site.host_dirs == ("/opt/hpcimages/host-mpi/lib",)


def test_verify_proves_library_and_plugins_by_identity_and_refuses_bookworm(discovered):
    name, _ = discovered
    proc = invoke("site", "verify", "--name", name, "--rounds", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads((ROOT / "slurm" / "sites" / f"{name}.verified.json").read_text())
    assert record["verified"]
    images = {i["cell"]: i for i in record["images"]}
    mpich = images["mpi4py:py3.13-mpich4.3.2"]
    assert mpich["status"] == "passed" and mpich["hello_ranks"] == 2
    assert mpich["library"] == "/opt/hpcimages/host-mpi/lib/libmpi.so.12"
    assert mpich["host_library"].startswith("/usr/lib/x86_64-linux-gnu/libmpich.so.12.6.2 (")
    assert mpich["plugins_proven"] and not mpich["plugins_missing"]
    assert any(f.startswith("osu_bw 1048576 B: bind/bare ") for f in mpich["figures"]), mpich["figures"]
    standard = images["mpi4py:py3.13-mpiabi-mpich5.0.2"]
    assert standard["status"] == "passed" and standard["library"] == "/opt/hpcimages/host-mpi/lib/libmpi_abi.so.1"
    assert images["mpi4py:py3.11-mpich4.3.2"]["status"] == "refused"
    assert "GLIBC_2.38" in images["mpi4py:py3.11-mpich4.3.2"]["reason"]
    assert f"{name}: verified on" in invoke("site", "status", "--name", name).stdout
    # a profile edited by hand after verification is no longer verified
    profile = ROOT / "slurm" / "sites" / f"{name}.toml"
    original = profile.read_text()
    try:
        profile.write_text(original.replace('time = "00:10:00"', 'time = "00:20:00"'))
        status = invoke("site", "status", "--name", name).stdout
        assert "not verified" in status and "changed after its verification" in status, status
    finally:
        profile.write_text(original)


def test_the_users_module_file_loaded_by_lmod_runs_the_bind_model_with_nothing_else(discovered, tmp_path):
    name, _ = discovered
    modules = ROOT / "slurm" / "modules"
    sif = cv.sif_dir(ROOT) / cv.sif_name(IMAGE)
    runs = Path(os.environ["HPCIMAGES_SLURM_RUNS"])
    runs.mkdir(parents=True, exist_ok=True)
    script = runs / f"lmod-{name}.sbatch"
    output = runs / f"lmod-{name}.out"
    # what a user writes: the module, then srun apptainer exec; no binds, no library path of their own
    script.write_text(f"""#!/bin/bash
#SBATCH --nodes=1 --ntasks-per-node=2 --time=00:05:00 --output={output}
source /usr/share/lmod/lmod/init/bash
module use {modules}
module load hpcimages-bind/{name}
srun --mpi=pmi2 apptainer exec {sif} python3 -c 'from mpi4py import MPI
maps = [l.split()[-1] for l in open("/proc/self/maps") if "libmpi" in l]
print("rank", MPI.COMM_WORLD.Get_rank(), "of", MPI.COMM_WORLD.Get_size(), maps[0])'
""")
    client = slurm.SlurmClient(ROOT, load_site(ROOT / "slurm" / "sites", "local"))
    job = client.sbatch(script)
    for _ in range(120):
        state, _ = client.state(job)
        if state in slurm.TERMINAL or state == "UNKNOWN":
            break
        time.sleep(1)
    text = output.read_text()
    assert state == "COMPLETED", text
    lines = sorted(line for line in text.splitlines() if line.startswith("rank "))
    assert lines == [f"rank {r} of 2 /opt/hpcimages/host-mpi/lib/libmpi.so.12" for r in (0, 1)], text


INTEL_ENV = ["I_MPI_PMI_LIBRARY=/usr/lib/x86_64-linux-gnu/libpmi2.so.0", "I_MPI_FABRICS=shm:ofi", "FI_PROVIDER=tcp",
             "FI_PROVIDER_PATH=/opt/host-mpi/lib", "LD_LIBRARY_PATH=/opt/host-mpi/lib"]


def test_an_intel_mpi_in_its_own_prefix_is_discovered_with_its_providers_and_verified(cluster):
    """Intel MPI as a site installs it: its own prefix, libfabric dlopened by name, providers opened at run time,
    Slurm's libpmi2 named by I_MPI_PMI_LIBRARY (a system folder: bound file by file)."""
    name = f"test-{uuid.uuid4().hex[:6]}"
    sites = ROOT / "slurm" / "sites"
    written = [sites / f"{name}.toml", sites / f"{name}.discovery.json", sites / f"{name}.verified.json",
               ROOT / "slurm" / "modules" / "hpcimages-bind" / f"{name}.lua"]
    try:
        proc = invoke("site", "discover", "--name", name, "--via", "local", "--mpi-lib",
                      "/opt/host-mpi/lib/libmpi.so.12", *[f"--env={e}" for e in INTEL_ENV],
                      "--only", "mpi4py:py3.13-mpich4.3.2", "--only", "mpi4py:py3.11-mpich4.3.2")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        record = json.loads((sites / f"{name}.discovery.json").read_text())
        assert record["version"].startswith("Intel(R) MPI Library")
        assert {"/opt/host-mpi/lib/libfabric.so.1", "/opt/host-mpi/lib/libtcp-fi.so",
                "/usr/lib/x86_64-linux-gnu/libpmi2.so.0.0.0"} <= set(record["plugins"]), record["plugins"]
        assert not [b for b in record["binds"] if b.startswith("/usr/lib/x86_64-linux-gnu:")]  # never whole
        site = load_site(sites, name)
        assert dict(site.host_mpi.vars)["I_MPI_PMI_LIBRARY"] == "/opt/hpcimages/host-mpi/lib/libpmi2.so.0"
        assert dict(site.host_mpi.vars)["FI_PROVIDER_PATH"] == "/opt/hpcimages/host-mpi/lib"
        fit = {r["cell"]: r for r in record["fit"]}
        # the sid libpmi2 needs glibc 2.38: bookworm is refused for it, with the reason
        bookworm = fit["mpi4py:py3.11-mpich4.3.2"]
        assert not bookworm["fits"] and "GLIBC_2.38" in bookworm["reason"]
        proc = invoke("site", "verify", "--name", name, "--rounds", "2")
        result = json.loads((sites / f"{name}.verified.json").read_text())
        image = next(i for i in result["images"] if i["cell"] == "mpi4py:py3.13-mpich4.3.2")
        assert image["hello_ranks"] == 2 and image["library"] == "/opt/hpcimages/host-mpi/lib/libmpi.so.12", image
        assert "/opt/host-mpi/lib/libtcp-fi.so" in image["plugins_proven"] and not image["plugins_missing"], image
        # the identity proofs hold; the only verdict left to the machine is the bandwidth one
        assert image["status"] == "passed" or image["reason"].startswith("osu_bw at "), image["reason"]
    finally:
        for path in written:
            path.unlink(missing_ok=True)


def test_an_open_mpi_is_another_abi_for_every_image_and_verify_runs_nothing(cluster):
    name = f"test-{uuid.uuid4().hex[:6]}"
    sites = ROOT / "slurm" / "sites"
    written = [sites / f"{name}.toml", sites / f"{name}.discovery.json",
               ROOT / "slurm" / "modules" / "hpcimages-bind" / f"{name}.lua"]
    try:
        proc = invoke("site", "discover", "--name", name, "--via", "local", "--mpi-lib",
                      f"{testcluster.FOREIGN_MOUNT}/lib/libmpi.so.40", "--only", "mpi4py:py3.13-*")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "Open MPI's ABI (libmpi.so.40): another ABI" in proc.stdout
        assert "no image of the profile fits this host MPI" in proc.stdout
        proc = invoke("site", "verify", "--name", name)
        assert proc.returncode == 2 and "no image fits the host MPI" in proc.stderr, proc.stdout + proc.stderr
    finally:
        for path in written:
            path.unlink(missing_ok=True)


def test_discover_names_a_library_missing_on_the_node_and_writes_nothing(cluster):
    proc = invoke("site", "discover", "--name", "test-nolib", "--via", "local", "--mpi-lib",
                  "/opt/nowhere/libmpi.so.12")
    assert proc.returncode == 2 and "/opt/nowhere/libmpi.so.12 cannot be read" in proc.stderr, proc.stderr
    assert not (ROOT / "slurm" / "sites" / "test-nolib.toml").exists()  # nothing written on a refusal
