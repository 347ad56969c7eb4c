"""The centre's keys, and what signs with them: ``cosign`` for images in a registry, Apptainer for ``.sif`` files.

- ``invoke keys`` creates the key pairs in a folder **outside the repository** (``--dir``, ``$HPCIMAGES_KEYS`` or
  ``~/.config/hpcimages/keys``): ``cosign.key``/``cosign.pub`` (cosign's encrypted key pair) and an Apptainer PGP
  keyring with its public key exported as ``apptainer.pub.asc``. Both private keys are encrypted with one password,
  read from ``$COSIGN_PASSWORD`` (cosign's own variable) and never written anywhere.
- ``Signer.preflight`` is what ``invoke publish`` runs before it pushes anything when its profile signs: the keys are
  there, the password is set and really opens the cosign key.
- ``Signer.sign_image`` signs a pushed digest and attests its SBOMs and provenance (``cosign sign`` / ``cosign
  attest``, offline: no transparency log, no certificate authority). The registry (distribution 2.8) has no
  referrers API: cosign 3 stores the signature and the attestations under the tag ``sha256-<digest>``.
- ``Signer.sign_sif`` adds the SBOMs and the provenance to a copy of a ``.sif`` as SIF objects of its first group and
  signs it with the Apptainer key, so the signature covers them and they travel inside the file.

cosign and Apptainer are the host's own when they are on the PATH, otherwise the tools image's (Debian sid packages
both), run as the calling user so the private keys keep their mode 0600.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import docker

from .. import engine
from ..engine import Mount
from ..errors import HpcImagesError, output_tail
from ..sif import tools as tools_image

KEYS_VAR = "HPCIMAGES_KEYS"
PASSWORD_VAR = "COSIGN_PASSWORD"
COSIGN_KEY, COSIGN_PUB = "cosign.key", "cosign.pub"
APPTAINER_RING, APPTAINER_PUB = "apptainer", "apptainer.pub.asc"
#: cosign 3 offline: no signing config (Fulcio, Rekor, TSA), no transparency log; verification ignores it too
SIGN_FLAGS = ("--use-signing-config=false", "--tlog-upload=false", "--yes")
VERIFY_FLAGS = ("--insecure-ignore-tlog=true",)
FINGERPRINT_RE = re.compile(r"Fingerprint:\s+([0-9A-Fa-f]{40})")
TIMEOUT_S = 300
Progress = Callable[[str], None]


class SigningError(HpcImagesError):
    """A key, the password or a signing tool is missing or refuses: what to do is in the message."""


def keys_dir(root: Path, override: str | None = None) -> Path:
    """Where the keys live: ``--dir``, else ``$HPCIMAGES_KEYS``, else ``~/.config/hpcimages/keys``; never inside the
    repository (a key there is one ``git add`` away from being published)."""
    raw = override or os.environ.get(KEYS_VAR) or str(Path.home() / ".config" / "hpcimages" / "keys")
    folder = Path(raw).expanduser().resolve()
    if folder.is_relative_to(root.resolve()):
        raise SigningError(f"the keys folder {folder} lies inside the repository {root}: keep keys outside it "
                           f"(--dir or {KEYS_VAR})")
    return folder


def password() -> str:
    value = os.environ.get(PASSWORD_VAR, "")
    if not value:
        raise SigningError(f"{PASSWORD_VAR} is not set: it holds the password of the centre's private keys (it is "
                           "read from the environment only, never from a file of the repository)")
    return value


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class Keys:
    folder: Path

    @property
    def cosign_key(self) -> Path:
        return self.folder / COSIGN_KEY

    @property
    def cosign_pub(self) -> Path:
        return self.folder / COSIGN_PUB

    @property
    def ring(self) -> Path:
        return self.folder / APPTAINER_RING

    @property
    def apptainer_pub(self) -> Path:
        return self.folder / APPTAINER_PUB

    def missing(self) -> list[str]:
        wanted = [self.cosign_key, self.cosign_pub, self.ring / "pgp-secret", self.apptainer_pub]
        return [str(p) for p in wanted if not p.is_file() or p.stat().st_size == 0]

    @property
    def key_id(self) -> str:
        """The sha256 of the cosign public key: what the publish record names the key by."""
        return "sha256:" + sha256_file(self.cosign_pub)


# -------------------------------------------------------------------------------------------------------------------
# running cosign and apptainer


class Tools:
    """cosign and apptainer: the host's own on the PATH, else the tools image's, as the calling user, every path
    mounted at its own place (so a command names host paths either way)."""

    def __init__(self, client_factory: Callable[[], docker.DockerClient], root: Path,
                 progress: Progress = print) -> None:
        self.client_factory, self.root, self.progress = client_factory, root, progress
        self._image: str | None = None
        self._client: docker.DockerClient | None = None

    def _container(self) -> tuple[docker.DockerClient, str]:
        if self._client is None or self._image is None:
            try:
                self._client = self.client_factory()
            except HpcImagesError as exc:
                raise SigningError(f"cosign and apptainer are not on the PATH and no Docker engine runs the tools "
                                   f"image that has them ({exc})") from None
            self._image = tools_image.ensure_tools_image(self._client, self.root, self.progress)
        return self._client, self._image

    def run(self, argv: list[str], *, paths: Iterable[Path] = (), writable: Iterable[Path] = (),
            env: dict[str, str] | None = None, network: bool = False, stdin_secret: bool = False,
            tool: str = "", timeout: int = TIMEOUT_S) -> tuple[int, str]:
        """Run a cosign/apptainer command (``tool`` names it when ``argv`` is a shell around it).
        ``stdin_secret``: the password is piped to the command's prompt (from the environment, through a shell: it
        is never an argument)."""
        env = dict(env or {})
        binary = shutil.which(tool or argv[0])
        if stdin_secret:
            env[PASSWORD_VAR] = password()
            argv = ["sh", "-c", 'printf "%s\\n" "$' + PASSWORD_VAR + '" | "$0" "$@"', *argv]
        if binary is not None:
            try:
                proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **env},
                                      timeout=timeout, check=False)
            except subprocess.TimeoutExpired:
                return 124, f"{argv[0]} timed out after {timeout}s"
            return proc.returncode, proc.stdout + proc.stderr
        client, image = self._container()
        ro = {Path(p).resolve() for p in paths}
        rw = {Path(p).resolve() for p in writable}
        mounts = [Mount(p, str(p), read_only=False) for p in sorted(rw)]
        mounts += [Mount(p, str(p)) for p in sorted(ro - rw) if not any(p.is_relative_to(w) for w in rw)]
        config = docker_config()
        if network and config is not None:  # the engine's login store, for a registry that needs one
            mounts.append(Mount(config, "/run/hpcimages/docker-config"))
            env["DOCKER_CONFIG"] = "/run/hpcimages/docker-config"
        return engine.run(client, image, argv, timeout=timeout, entrypoint=["/usr/bin/env"],
                          user=f"{os.getuid()}:{os.getgid()}",
                          env={"HOME": "/tmp", **env}, mounts=mounts, network="host" if network else "none")


def docker_config() -> Path | None:
    from .remote import credential_file

    found = credential_file()
    return found.parent if found is not None and found.is_file() else None


def _failed(what: str, code: int, out: str) -> SigningError:
    text = out.replace(os.environ.get(PASSWORD_VAR, "\0") or "\0", "***")
    return SigningError(f"{what} failed (exit {code}): {output_tail(text, lines=3, limit=400)}")


# -------------------------------------------------------------------------------------------------------------------
# invoke keys


def create_keys(tools: Tools, folder: Path, name: str, email: str, force: bool = False,
                progress: Progress = print) -> Keys:
    keys = Keys(folder)
    secret = password()
    existing = [p for p in (keys.cosign_key, keys.cosign_pub, keys.ring, keys.apptainer_pub) if p.exists()]
    if existing and not force:
        raise SigningError(f"{folder} already holds keys ({', '.join(p.name for p in existing)}): keep them, or "
                           "give --force to replace them (images signed with the old keys no longer verify with the "
                           "new public keys)")
    if len(secret) < 8:
        raise SigningError(f"{PASSWORD_VAR} is shorter than 8 characters: use a real password")
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder.chmod(0o700)
    for path in existing:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    progress(f"keys: cosign key pair in {folder}")
    code, out = tools.run(["sh", "-c", 'cd "$0" && cosign generate-key-pair', str(folder)], writable=[folder],
                          env={PASSWORD_VAR: secret}, tool="cosign")
    if code != 0 or not keys.cosign_key.is_file() or not keys.cosign_pub.is_file():
        raise _failed("cosign generate-key-pair", code, out)
    progress(f"keys: Apptainer PGP key pair for {name} <{email}>")
    # apptainer asks for the passphrase twice on one reader and cannot take it from a pipe: --password, expanded
    # by the shell inside the command from the environment
    code, out = tools.run(["sh", "-c", 'apptainer key newpair --keysdir "$0" --name "$1" --email "$2" '
                                       '--comment "hpcimages image signing" --push=false --password="$' + PASSWORD_VAR
                           + '" >/dev/null && printf "0\\n" | apptainer key export --keysdir "$0" --armor "$3"',
                           str(keys.ring), name, email, str(keys.apptainer_pub)], writable=[folder],
                          env={PASSWORD_VAR: secret}, tool="apptainer")
    if code != 0 or keys.missing():
        raise _failed("apptainer key newpair", code, out)
    for path in (keys.cosign_key, keys.ring / "pgp-secret"):
        path.chmod(0o600)
    return keys


def fingerprint(tools: Tools, keys: Keys) -> str:
    code, out = tools.run(["apptainer", "key", "list", "--keysdir", str(keys.ring)], paths=[keys.folder])
    found = FINGERPRINT_RE.search(out)
    if code != 0 or not found:
        raise _failed("apptainer key list", code, out)
    return found.group(1).upper()


# -------------------------------------------------------------------------------------------------------------------
# signing


def cosign_ref_flags(insecure: bool) -> list[str]:
    return ["--allow-insecure-registry"] if insecure else []


class Signer:
    def __init__(self, tools: Tools, keys: Keys, insecure_registry: bool) -> None:
        self.tools, self.keys, self.insecure = tools, keys, insecure_registry

    def preflight(self) -> str:
        """Before anything is pushed: the keys exist, the password is set and opens the cosign key. Returns the
        Apptainer key's fingerprint."""
        missing = self.keys.missing()
        if missing:
            raise SigningError(f"signing is configured but the keys are missing ({', '.join(missing)}): run "
                               f"`invoke keys` (or point {KEYS_VAR} at the centre's keys folder)")
        secret = password()
        code, out = self.tools.run(["cosign", "public-key", "--key", str(self.keys.cosign_key)],
                                   paths=[self.keys.folder], env={PASSWORD_VAR: secret})
        public = out[out.find("-----BEGIN"):].strip() if "-----BEGIN" in out else ""
        if code != 0 or not public:
            raise SigningError(f"{PASSWORD_VAR} does not open {self.keys.cosign_key} (cosign: "
                               f"{output_tail(out.replace(secret, '***'), lines=1, limit=200)})")
        if public != self.keys.cosign_pub.read_text(encoding="utf-8").strip():
            raise SigningError(f"{self.keys.cosign_key} and {self.keys.cosign_pub} are not one key pair")
        return fingerprint(self.tools, self.keys)

    def sign_image(self, reference: str, attestations: list[tuple[str, Path]]) -> None:
        """Sign ``repository@digest`` and attest each (cosign predicate type, predicate file)."""
        flags = [*SIGN_FLAGS, *cosign_ref_flags(self.insecure)]
        key = ["--key", str(self.keys.cosign_key)]
        code, out = self.tools.run(["cosign", "sign", *key, *flags, reference], paths=[self.keys.folder],
                                   env={PASSWORD_VAR: password()}, network=True)
        if code != 0:
            raise _failed(f"cosign sign {reference}", code, out)
        for kind, predicate in attestations:
            code, out = self.tools.run(["cosign", "attest", *key, *flags, "--type", kind, "--predicate",
                                        str(predicate), reference], paths=[self.keys.folder, predicate.parent],
                                       env={PASSWORD_VAR: password()}, network=True)
            if code != 0:
                raise _failed(f"cosign attest --type {kind} {reference}", code, out)

    def is_signed(self, reference: str) -> bool:
        """The digest already carries a signature by this key (a re-run signs nothing again)."""
        code, _ = self.tools.run(["cosign", "verify", "--key", str(self.keys.cosign_pub), *VERIFY_FLAGS,
                                  *cosign_ref_flags(self.insecure), reference], paths=[self.keys.folder], network=True)
        return code == 0

    def sign_sif(self, source: Path, signed: Path, objects: list[tuple[Path, str]]) -> None:
        """A copy of ``source`` with ``objects`` (file, ``spdx-json`` / ``cyclonedx-json`` for an SBOM, ``json`` for
        the provenance) added to the SIF's first object group, signed with the Apptainer key."""
        signed.parent.mkdir(parents=True, exist_ok=True)
        part = signed.with_suffix(".part")
        shutil.copyfile(source, part)
        part.chmod(0o644)
        folders = {signed.parent, *(p.parent for p, _ in objects)}
        for path, kind in objects:
            datatype = ["--datatype", "6"] if kind == "json" else ["--datatype", "9", "--sbomformat", kind]
            code, out = self.tools.run(["apptainer", "sif", "add", *datatype, "--groupid", "1", "--filename",
                                        path.name, str(part), str(path)], paths=folders, writable=[signed.parent])
            if code != 0:
                part.unlink(missing_ok=True)
                raise _failed(f"apptainer sif add {path.name}", code, out)
        code, out = self.tools.run(["apptainer", "sign", str(part)], paths=[self.keys.folder],
                                   writable=[signed.parent], env={"APPTAINER_KEYSDIR": str(self.keys.ring)},
                                   stdin_secret=True, tool="apptainer")
        if code != 0:
            part.unlink(missing_ok=True)
            raise _failed(f"apptainer sign {signed.name}", code, out)
        part.replace(signed)
