"""The publish stage's tasks: `invoke registry`, `invoke publish`, `invoke catalogue`."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from .. import tables
from ..cli import UsageError, say, whole_number
from ..define import load_matrix
from ..define.matrix import Profile, select_cells
from ..engine import connect
from ..errors import HpcImagesError
from ..files import expand_paths
from ..paths import build_dir, build_dir_problem, relative, repository_root
from ..sif import apptainer
from ..validate import shown
from . import catalogue as catalogue_mod
from . import pages, publisher, record, signing
from . import registry as registry_mod
from . import verify as verify_mod
from .record import PUBLISH_REPORT
from .remote import Target
from .sifpush import SifPusher

KEY_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 .,'()&_-]{0,79}")
KEY_EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,190}\.[A-Za-z]{2,}")


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
            sif: bool = False, runtime: str = "auto", keys: str | None = None) -> int:
    m = load_matrix(matrix)
    prof = m.profile(profile)
    cells = select_cells(m, prof, only, with_parents=False)
    target = target_of(prof, registry)
    unwritable = build_dir_problem(m.root)
    if unwritable:  # found before the registry is contacted, not after a push
        raise UsageError(unwritable)
    record.load(build_dir(m.root))  # and a broken report before anything is pushed
    client = connect()
    signer = None
    if prof.publish.sign and not dry_run:  # the keys and the password, before anything is pushed
        signer = signing.Signer(signing.Tools(lambda: client, m.root, say),
                                signing.Keys(signing.keys_dir(m.root, keys)), target.loopback)
        try:
            fingerprint = signer.preflight(sif=sif)
        except signing.SigningError as exc:
            raise UsageError(f"profile {prof.name} signs what it publishes ([profiles.{prof.name}.publish] sign = "
                             f"true), and nothing was pushed: {exc}") from None
        say(f"signing with {signer.keys.cosign_pub} ({signer.keys.key_id[7:19]}) and the Apptainer key "
            f"{fingerprint[:16]}")
    pusher = None
    if sif and not dry_run:
        rt = apptainer.choose_runtime(runtime, lambda: client, m.root, progress=say)
        pusher = SifPusher(rt, m.root, prof, target, signer)
    results = publisher.publish(client, m, prof, cells, target, dry_run=dry_run, progress=say, sif_pusher=pusher,
                                signer=signer)
    say("")
    say(table(results, target, sif, signer is not None))
    out = build_dir(m.root)
    if dry_run:
        say(f"\ndry run: nothing pushed; {sum(r.ok for r in results)}/{len(results)} cells would be published "
            f"to {target}")
        return 0
    written = catalogue_mod.write(client, m, target, progress=say)
    _site_after(m.root, target)
    images = sum(r.status in ("published", "up to date") for r in results)
    sif_failed = sum(r.sif.startswith("FAILED") for r in results)
    say(f"\n{images}/{len(results)} images published or up to date at {target}"
        f"{f' ({sif_failed} .sif not pushed: see the table)' if sif_failed else ''}; "
        f"report: {relative(out / PUBLISH_REPORT, m.root)}; catalogue: {relative(written, m.root)}")
    return 0 if all(r.ok for r in results) else 1


def table(results: list[publisher.CellPublish], target: Target, sif: bool, signed: bool = False) -> str:
    rows = []
    for r in results:
        row = [r.ref, r.status if r.status != "failed" else "FAILED", ", ".join(r.tags[1:]) or "-",
               r.digest[:19] + "…" if r.digest else "-", f"{r.seconds:.1f}s", r.reason or ""]
        if sif:
            row.insert(5, r.sif or "-")
        if signed:
            row.insert(4, r.signed or "-")
        rows.append(row)
    headers = ["cell", "status", "more tags", "digest", "time", "reason"]
    if sif:
        headers.insert(5, ".sif")
    if signed:
        headers.insert(4, "signed")
    return f"publish to {target}\n" + tables.terminal(rows, headers)


def catalogue(matrix: str, registry: str | None = None, profile: str = "ci", results: str | None = None) -> int:
    m = load_matrix(matrix)
    target = target_of(m.profile(profile), registry)
    files = [Path(p) for p in expand_paths(results)] if results else None
    record.load(build_dir(m.root))  # a broken report is refused before the engine is asked anything
    written = catalogue_mod.write(connect(), m, target, progress=say, results=files)
    say(f"catalogue: {relative(written, m.root)}")
    _site_after(m.root, target)
    return 0


def _site_after(root: Path, target: Target) -> None:
    """The web site after the catalogue: what stops it (a docs page that is not UTF-8, an edited catalogue page) is
    a warning here, never a failed publish of images that were pushed and proven."""
    try:
        site = pages.write(root, target, progress=say)
    except HpcImagesError as exc:
        say(f"warning: the catalogue's web site was not written: {exc}")
    else:
        say(f"site: {relative(site.folder / 'index.html', root)}")


def site_pages(matrix: str, registry: str | None = None, profile: str = "ci") -> int:
    """The catalogue's static web site again, from what `invoke catalogue` wrote and the docs (no engine asked)."""
    m = load_matrix(matrix)
    target = target_of(m.profile(profile), registry)
    site = pages.write(m.root, target, progress=say)
    say(f"site: {relative(site.folder / 'index.html', m.root)} (open it in a browser, or serve the folder)")
    return 0


def keys(matrix: str, folder: str | None = None, name: str = "", email: str = "", force: bool = False) -> int:
    """The centre's key pairs (cosign, Apptainer), outside the repository, encrypted with $COSIGN_PASSWORD."""
    root = repository_root(matrix)
    if not KEY_NAME_RE.fullmatch(name or "") or not KEY_EMAIL_RE.fullmatch(email or ""):
        raise UsageError(f"give --name (the centre, e.g. 'Example HPC Centre': letters, digits, spaces and .,'()&-, "
                         f"at most 80) and --email (its contact address), got {shown(name)} and {shown(email)}: the "
                         "Apptainer key carries both")
    try:
        made = signing.create_keys(signing.Tools(connect, root, say), signing.keys_dir(root, folder), name, email,
                                   force, say)
        fingerprint = signing.fingerprint(signing.Tools(connect, root, say), made)
    except signing.SigningError as exc:
        raise UsageError(str(exc)) from None
    say(f"keys in {made.folder} (private keys mode 0600, encrypted with ${signing.PASSWORD_VAR}):\n"
        f"  cosign      {made.cosign_key.name} / {made.cosign_pub.name}  (key id {made.key_id[7:19]})\n"
        f"  Apptainer   {signing.APPTAINER_RING}/ / {made.apptainer_pub.name}  (fingerprint {fingerprint})\n"
        f"give sites the two public keys: {made.cosign_pub} and {made.apptainer_pub}")
    return 0


def verify(matrix: str, reference: str, key: str | None = None, runtime: str = "auto") -> int:
    """`invoke verify REF|SIF`: one line per check; 0 only when every check holds."""
    root = repository_root(matrix)
    path = Path(reference).expanduser()
    # a file that exists, or a name that reads as one (./x.sif, /data/x.sif, x.sif); anything else is an image
    is_sif = path.exists() or (reference.endswith(".sif") and ("/" not in reference or reference[:1] in "./~"))
    if is_sif and path.is_dir():
        raise UsageError(f"{reference} is a directory: name a .sif file, or an image HOST[:PORT]/PATH/NAME:TAG")
    try:
        default = signing.Keys(signing.keys_dir(root))
    except signing.SigningError:
        default = None
    chosen = Path(key).expanduser() if key else (default.apptainer_pub if is_sif else default.cosign_pub) \
        if default else None
    if chosen is None or not chosen.is_file():
        raise UsageError(f"no public key {chosen or ''}: give --key (the centre's cosign.pub for an image, "
                         "apptainer.pub.asc for a .sif)")
    tools = signing.Tools(connect, root, say)
    try:
        if is_sif:
            sif = path
            if not sif.is_file():
                raise UsageError(f"{reference}: no such .sif file")
            rt = apptainer.choose_runtime(runtime, connect, root, progress=say)
            outcome = verify_mod.verify_sif(root, sif.resolve(), chosen.resolve(), rt, tools, progress=say)
        else:
            outcome = verify_mod.verify_image(root, reference, chosen.resolve(), connect, tools, progress=say)
    except (verify_mod.VerifyError, signing.SigningError) as exc:
        raise UsageError(str(exc)) from None
    say("\n".join(outcome.lines()))
    say(f"{reference}: {'verified' if outcome.ok else 'NOT verified'}"
        + (f" ({outcome.digest})" if outcome.digest else ""))
    return 0 if outcome.ok else 1
