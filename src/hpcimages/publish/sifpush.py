"""``invoke publish --sif``: the cell's ``.sif`` (from ``invoke convert`` of exactly the published image) pushed
with ``apptainer push oras://`` beside the image (``<target>/sif/<family>:<tag>``), pulled back and compared byte
for byte. A registry that cannot take ORAS artifacts says so in the table; nothing fails silently.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

from docker.models.images import Image

from ..define.matrix import Cell, Profile
from ..engine import Mount
from ..sif import apptainer
from ..sif.convert import is_fresh, sif_dir, sif_name
from . import remote
from .record import Published, SifRecord
from .remote import Target

PUSH_TIMEOUT_S = 900


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class SifPusher:
    def __init__(self, runtime: apptainer.Runtime, root: Path, profile: Profile, target: Target) -> None:
        self.runtime = runtime
        self.root = root
        self.profile = profile
        self.target = target

    def __call__(self, cell: Cell, image: Image, entry: Published) -> str:
        sif = sif_dir(self.root) / sif_name(cell.image(self.profile.registry))
        if not is_fresh(sif, image):
            return f"FAILED: no .sif of this image ({sif.name}): run `invoke convert --profile {self.profile.name}`"
        ref = f"{self.target.sif_repository(cell.family.name)}:{cell.tag}"
        sha = sha256_file(sif)
        if entry.sif is not None and entry.sif.sha256 == sha and entry.sif.ref == ref \
                and remote.inspect(self.target, ref) is not None:
            return "up to date"
        with tempfile.TemporaryDirectory(prefix="hpcimages-sifpush-") as tmp:
            work = Path(tmp)
            work.chmod(0o755)
            code, out = self._round_trip(sif, ref, work)
            if code != 0:
                return f"FAILED: the registry did not take or give back the .sif: {apptainer.tail(out, 2, 300)}"
            back = sha256_file(work / "back" / "back.sif")
        if back != sha:
            return f"FAILED: the .sif pulled back differs (sha256 {back[:12]}, pushed {sha[:12]})"
        manifest = remote.inspect(self.target, ref)
        entry.sif = SifRecord(ref, sha, manifest.digest if manifest else None)
        return f"pushed oras://{ref} (pulled back: same sha256)"

    def _round_trip(self, sif: Path, ref: str, work: Path) -> tuple[int, str]:
        (work / "back").mkdir()
        sif_seen, sif_mounts = self.runtime.see(sif.parent, "/sif")
        back_seen, back_mounts = self.runtime.see(work / "back", "/back", writable=True)
        flags = ["--no-https"] if self.target.loopback else []
        mounts: list[Mount] = [*sif_mounts, *back_mounts]
        authfile = remote.credential_file()
        if authfile is not None and remote.credentials(self.target):
            # a private copy the runtime's user can read, gone with the temporary folder
            (work / "auth").mkdir(mode=0o755)
            copy = work / "auth" / "config.json"
            shutil.copy(authfile, copy)
            copy.chmod(0o644)
            auth_seen, auth_mounts = self.runtime.see(work / "auth", "/auth")
            flags += ["--authfile", f"{auth_seen}/config.json"]
            mounts += auth_mounts
        code, out = self.runtime.run(["apptainer", "push", *flags, f"{sif_seen}/{sif.name}", f"oras://{ref}"],
                                     mounts, network=True, timeout=PUSH_TIMEOUT_S)
        if code != 0:
            return code, out
        return self.runtime.run(["apptainer", "pull", "--force", *flags, f"{back_seen}/back.sif", f"oras://{ref}"],
                                mounts, network=True, timeout=PUSH_TIMEOUT_S)
