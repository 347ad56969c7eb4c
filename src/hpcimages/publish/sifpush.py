"""``invoke publish --sif``: the cell's ``.sif`` (from ``invoke convert`` of exactly the published image) pushed
with ``apptainer push oras://`` beside the image (``<target>/sif/<family>:<tag>``), pulled back and compared byte
for byte. A registry that cannot take ORAS artifacts says so in the table; nothing fails silently.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from docker.models.images import Image

from .. import state
from ..define.matrix import Cell, Profile
from ..engine import Mount
from ..files import write_json
from ..images.wheelhouse import sha256_file
from ..sif import apptainer
from ..sif.convert import is_fresh, sif_dir, sif_name
from . import attest, remote, signing
from .record import Published, SifRecord
from .remote import Target

PUSH_TIMEOUT_S = 900


class SifPusher:
    def __init__(self, runtime: apptainer.Runtime, root: Path, profile: Profile, target: Target,
                 signer: signing.Signer | None = None) -> None:
        self.runtime = runtime
        self.root = root
        self.profile = profile
        self.target = target
        self.signer = signer

    def signed_copy(self, cell: Cell, sif: Path, entry: Published) -> tuple[Path, str]:
        """The cell's .sif with its SBOMs and provenance inside, signed with the Apptainer key (made again unless
        an earlier copy was signed from this very .sif with these very documents)."""
        assert self.signer is not None
        docs = attest.documents(self.root, self.target, cell.ref)
        if entry.signed is None or not docs.exist():
            raise signing.SigningError("the image was not signed, so its .sif has no SBOM to carry")
        signed = sif.parent / "signed" / sif.name
        stamp = signed.with_suffix(".json")
        fingerprint = signing.fingerprint(self.signer.tools, self.signer.keys)
        wanted = {"source_sha256": sha256_file(sif), "documents": list(docs.hashes()), "fingerprint": fingerprint}
        known = state.cached_object(stamp) or {}
        if signed.is_file() and {k: known.get(k) for k in wanted} == wanted \
                and known.get("signed_sha256") == sha256_file(signed):
            return signed, fingerprint
        self.signer.sign_sif(sif, signed, [(docs.spdx, "spdx-json"), (docs.cyclonedx, "cyclonedx-json"),
                                           (docs.provenance, "json")])
        write_json(stamp, {**wanted, "signed_sha256": sha256_file(signed)})
        return signed, fingerprint

    def __call__(self, cell: Cell, image: Image, entry: Published) -> str:
        sif = sif_dir(self.root) / sif_name(cell.image(self.profile.registry))
        if not is_fresh(sif, image):
            return f"FAILED: no .sif of this image ({sif.name}): run `invoke convert --profile {self.profile.name}`"
        fingerprint = ""
        if self.signer is not None:
            try:
                sif, fingerprint = self.signed_copy(cell, sif, entry)
            except signing.SigningError as exc:
                return f"FAILED: the .sif was not signed: {exc}"
        ref = f"{self.target.sif_repository(cell.family.name)}:{cell.tag}"
        sha = sha256_file(sif)
        if entry.sif is not None and entry.sif.sha256 == sha and entry.sif.ref == ref \
                and entry.sif.signed_by == fingerprint and remote.inspect(self.target, ref) is not None:
            return "up to date" + (" (signed)" if fingerprint else "")
        with tempfile.TemporaryDirectory(prefix="hpcimages-sifpush-") as tmp:
            work = Path(tmp)
            work.chmod(0o755)
            code, out = self._round_trip(sif, ref, work)
            if code != 0:
                return f"FAILED: the registry did not take or give back the .sif: {apptainer.tail(out, 2, 300)}"
            back = sha256_file(work / "back" / "back.sif")
            checked = self._verify_pulled(work / "back" / "back.sif", fingerprint) if fingerprint else ""
        if back != sha:
            return f"FAILED: the .sif pulled back differs (sha256 {back[:12]}, pushed {sha[:12]})"
        if checked.startswith("FAILED"):
            return checked
        manifest = remote.inspect(self.target, ref)
        entry.sif = SifRecord(ref, sha, manifest.digest if manifest else None, fingerprint)
        return f"pushed oras://{ref} (pulled back: same sha256{checked})"

    def _verify_pulled(self, pulled: Path, fingerprint: str) -> str:
        """The copy pulled back verifies with the centre's Apptainer public key alone (a fresh keyring)."""
        assert self.signer is not None
        outcome = signing.sif_signature(self.signer.tools, pulled, self.signer.keys.apptainer_pub)
        if not outcome[0] or outcome[1].lower() != fingerprint.lower():
            return f"FAILED: the .sif pulled back does not verify with {self.signer.keys.apptainer_pub.name}: " \
                   f"{outcome[2]}"
        return f"; apptainer verify: {outcome[2]}"

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
