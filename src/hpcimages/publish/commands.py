"""The publish stage's tasks: `invoke registry`, `invoke publish`, `invoke catalogue`."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .. import tables
from ..cli import UsageError, say, whole_number
from ..define import load_matrix
from ..define.matrix import Profile, select_cells
from ..engine import connect
from ..files import expand_paths
from ..paths import build_dir, build_dir_problem, relative, repository_root
from ..sif import apptainer
from . import catalogue as catalogue_mod
from . import publisher, record
from . import registry as registry_mod
from .record import PUBLISH_REPORT
from .remote import Target
from .sifpush import SifPusher


def registry(matrix: str, port: int | str = registry_mod.DEFAULT_PORT, stop: bool = False) -> int:
    root = repository_root(matrix)
    server = registry_mod.RegistryServer(build_dir(root) / "registry", whole_number("--port", port, 1024, 65535))
    say(f"registry: {server.stop() if stop else server.start()}")
    return 0


def target_of(profile: Profile, override: str | None) -> Target:
    if override is not None:  # `--registry ''` is a mistake, not "the profile's registry"
        return Target.parse(override)
    if profile.publish.registry:
        return Target.parse(profile.publish.registry, f"profiles.{profile.name}.publish.registry")
    raise UsageError(f"profile {profile.name!r} names no registry to publish to: give --registry "
                     f"HOST[:PORT]/NAMESPACE, or set registry in [profiles.{profile.name}.publish] of the matrix")


def publish(matrix: str, profile: str, only: Iterable[str] = (), registry: str | None = None, dry_run: bool = False,
            sif: bool = False, runtime: str = "auto") -> int:
    m = load_matrix(matrix)
    prof = m.profile(profile)
    cells = select_cells(m, prof, only, with_parents=False)
    target = target_of(prof, registry)
    unwritable = build_dir_problem(m.root)
    if unwritable:  # found before the registry is contacted, not after a push
        raise UsageError(unwritable)
    record.load(build_dir(m.root))  # and a broken report before anything is pushed
    client = connect()
    pusher = None
    if sif and not dry_run:
        rt = apptainer.choose_runtime(runtime, lambda: client, m.root, progress=say)
        pusher = SifPusher(rt, m.root, prof, target)
    results = publisher.publish(client, m, prof, cells, target, dry_run=dry_run, progress=say, sif_pusher=pusher)
    say("")
    say(table(results, target, sif))
    out = build_dir(m.root)
    if dry_run:
        say(f"\ndry run: nothing pushed; {sum(r.ok for r in results)}/{len(results)} cells would be published "
            f"to {target}")
        return 0
    written = catalogue_mod.write(client, m, target, progress=say)
    images = sum(r.status in ("published", "up to date") for r in results)
    sif_failed = sum(r.sif.startswith("FAILED") for r in results)
    say(f"\n{images}/{len(results)} images published or up to date at {target}"
        f"{f' ({sif_failed} .sif not pushed: see the table)' if sif_failed else ''}; "
        f"report: {relative(out / PUBLISH_REPORT, m.root)}; catalogue: {relative(written, m.root)}")
    return 0 if all(r.ok for r in results) else 1


def table(results: list[publisher.CellPublish], target: Target, sif: bool) -> str:
    rows = []
    for r in results:
        row = [r.ref, r.status if r.status != "failed" else "FAILED", ", ".join(r.tags[1:]) or "-",
               r.digest[:19] + "…" if r.digest else "-", f"{r.seconds:.1f}s", r.reason or ""]
        if sif:
            row.insert(5, r.sif or "-")
        rows.append(row)
    headers = ["cell", "status", "more tags", "digest", "time", "reason"]
    if sif:
        headers.insert(5, ".sif")
    return f"publish to {target}\n" + tables.terminal(rows, headers)


def catalogue(matrix: str, registry: str | None = None, profile: str = "ci", results: str | None = None) -> int:
    m = load_matrix(matrix)
    target = target_of(m.profile(profile), registry)
    files = [Path(p) for p in expand_paths(results)] if results else None
    record.load(build_dir(m.root))  # a broken report is refused before the engine is asked anything
    written = catalogue_mod.write(connect(), m, target, progress=say, results=files)
    say(f"catalogue: {relative(written, m.root)}")
    return 0
