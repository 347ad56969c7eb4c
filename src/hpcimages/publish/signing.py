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

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import docker

from .. import engine
from ..engine import Mount
from ..errors import HpcImagesError, output_tail
from ..images import wheelhouse
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
        return "sha256:" + wheelhouse.sha256_file(self.cosign_pub)


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
            tool: str = "", timeout: int = TIMEOUT_S, stdout_only: bool = False) -> tuple[int, str]:
        """Run a cosign/apptainer command (``tool`` names it when ``argv`` is a shell around it): its stdout, then
        its stderr (``stdout_only``: stdout alone, e.g. an object's bytes). ``stdin_secret``: the password is piped
        to the command's prompt (from the environment, through a shell: it is never an argument)."""
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
            return proc.returncode, proc.stdout if stdout_only else proc.stdout + proc.stderr
        client, image = self._container()
        ro = {Path(p).resolve() for p in paths}
        rw = {Path(p).resolve() for p in writable}
        mounts = [Mount(p, str(p), read_only=False) for p in sorted(rw)]
        mounts += [Mount(p, str(p)) for p in sorted(ro - rw) if not any(p.is_relative_to(w) for w in rw)]
        config = docker_config()
        if network and config is not None:  # the engine's login store, for a registry that needs one
            mounts.append(Mount(config, "/run/hpcimages/docker-config"))
            env["DOCKER_CONFIG"] = "/run/hpcimages/docker-config"
        # stdout whole, then stderr: cosign prints each DSSE envelope as one long JSON line on stdout, which the
        # engine's interleaved frames of both streams could cut
        code, out, err = engine.run_split(client, image, argv, timeout=timeout, entrypoint=["/usr/bin/env"],
                                          user=f"{os.getuid()}:{os.getgid()}", env={"HOME": "/tmp", **env},
                                          mounts=mounts, network="host" if network else "none")
        return code, out if stdout_only else out + ("\n" if out and not out.endswith("\n") else "") + err


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
    """Both key pairs, made in a new folder beside ``folder`` and moved into it only when both exist: a failure
    (no engine, a refused password) leaves the keys that were there as they were."""
    keys = Keys(folder)
    secret = password()
    existing = [p for p in (keys.cosign_key, keys.cosign_pub, keys.ring, keys.apptainer_pub) if p.exists()]
    if existing and not force:
        raise SigningError(f"{folder} already holds keys ({', '.join(p.name for p in existing)}): keep them, or "
                           "give --force to replace them (images signed with the old keys no longer verify with the "
                           "new public keys)")
    if len(secret) < 8:
        raise SigningError(f"{PASSWORD_VAR} is shorter than 8 characters: use a real password")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.new-", dir=folder.parent))
    except OSError as exc:
        raise SigningError(f"cannot make the keys folder {folder}: {exc.strerror}") from None
    try:
        made = Keys(work)
        progress(f"keys: cosign key pair for {folder}")
        code, out = tools.run(["sh", "-c", 'cd "$0" && cosign generate-key-pair', str(work)], writable=[work],
                              env={PASSWORD_VAR: secret}, tool="cosign")
        if code != 0 or not made.cosign_key.is_file() or not made.cosign_pub.is_file():
            raise _failed("cosign generate-key-pair", code, out)
        progress(f"keys: Apptainer PGP key pair for {name} <{email}>")
        # apptainer reads the passphrase twice from the terminal and cannot take both from a pipe: `script` gives it
        # a terminal, which delivers one line per read; the password stays in the environment and on a pipe, never
        # on a command line, and what the terminal echoes is thrown away
        code, out = tools.run(["sh", "-c", 'printf "%s\n%s\n" "$' + PASSWORD_VAR + '" "$' + PASSWORD_VAR + '" | '
                               'script -qec \'apptainer key newpair --keysdir "$KEY_RING" --name "$KEY_NAME" '
                               '--email "$KEY_EMAIL" --comment "hpcimages image signing" --push=false\' /dev/null '
                               '>/dev/null 2>&1 && printf "0\n" | apptainer key export --keysdir "$KEY_RING" --armor '
                               '"$KEY_PUB" >/dev/null'], writable=[work], tool="apptainer",
                              env={PASSWORD_VAR: secret, "KEY_RING": str(made.ring), "KEY_NAME": name,
                                   "KEY_EMAIL": email, "KEY_PUB": str(made.apptainer_pub)})
        if code != 0 or made.missing():
            raise _failed("apptainer key newpair", code, out)
        check_apptainer_key(tools, made)  # the password really opens it, and the exported key is its own
        for path in (made.cosign_key, made.ring / "pgp-secret"):
            path.chmod(0o600)
        if not folder.exists():
            folder.mkdir(mode=0o700)
        for path in existing:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        for path in (made.cosign_key, made.cosign_pub, made.ring, made.apptainer_pub):
            path.replace(folder / path.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return keys


def check_apptainer_key(tools: Tools, keys: Keys) -> str:
    """Sign a scratch SIF with the Apptainer key and the password, then verify it with the exported public key
    alone: both hold, or SigningError. Returns the fingerprint."""
    with tempfile.TemporaryDirectory(prefix="hpcimages-keycheck-") as tmp:
        work = Path(tmp)
        (work / "check.json").write_text("{}\n", encoding="utf-8")
        sif = work / "check.sif"
        code, out = tools.run(["sh", "-c", 'apptainer sif new "$0" && apptainer sif add --datatype 6 --groupid 1 '
                               '"$0" "$1"', str(sif), str(work / "check.json")], writable=[work], tool="apptainer")
        if code != 0:
            raise _failed("apptainer sif new", code, out)
        code, out = tools.run(["apptainer", "sign", str(sif)], paths=[keys.folder], writable=[work],
                              env={"APPTAINER_KEYSDIR": str(keys.ring)}, stdin_secret=True, tool="apptainer")
        if code != 0:
            raise SigningError(f"{PASSWORD_VAR} does not open the Apptainer key in {keys.ring} (apptainer sign: "
                               f"{output_tail(out.replace(password(), '***'), lines=1, limit=200)})")
        ok, found, detail = sif_signature(tools, sif, keys.apptainer_pub)
        if not ok:
            raise SigningError(f"{keys.apptainer_pub} is not the public key of {keys.ring}: {detail}")
        return found


SIF_INFO_RE = re.compile(r"^\s*(Data Type|ID|Group ID|Name|Format|Entity):\s*(.*?)\s*$", re.M)


def sif_objects(tools: Tools, sif: Path) -> list[dict[str, str]]:
    """Every object descriptor of a SIF (``apptainer sif list`` / ``sif info``): ID, Data Type, Name, Format."""
    code, out = tools.run(["apptainer", "sif", "list", str(sif)], paths=[sif.parent])
    if code != 0:
        raise SigningError(f"{sif} is no SIF file: {output_tail(out, lines=1, limit=200)}")
    objects = []
    for ident in re.findall(r"^(\d+)\s+\|", out, re.M):
        code, info = tools.run(["apptainer", "sif", "info", ident, str(sif)], paths=[sif.parent])
        objects.append(dict(SIF_INFO_RE.findall(info)) if code == 0 else {"ID": ident})
    return objects


def judge_sif_signature(objects: list[dict[str, str]], verify_output: str, verify_code: int,
                        expected: str) -> tuple[bool, str]:
    """Whether ``apptainer verify --json --all`` vouched for every data object of the SIF with the key whose
    fingerprint is ``expected``: as many good signers as data objects, each checked, none by another key."""
    start = verify_output.find("{")
    try:  # the JSON report, whatever Apptainer wrote before or after it
        report = json.JSONDecoder().raw_decode(verify_output[start:])[0] if start >= 0 else {}
    except ValueError:
        report = {}
    keys = report.get("SignerKeys") if isinstance(report, dict) else None
    signers = [k.get("Signer") for k in keys or [] if isinstance(k, dict) and isinstance(k.get("Signer"), dict)]
    good = [s for s in signers if str(s.get("Fingerprint", "")).lower() == expected.lower() and expected
            and s.get("DataCheck") is True and s.get("KeyCheck") is True]
    data = [o for o in objects if o.get("Data Type") != "Signature"]
    if verify_code == 0 and data and len(good) == len(signers) == len(data):
        return True, f"all {len(data)} objects signed by {expected.upper()[:16]}"
    seen = output_tail(verify_output, lines=1, limit=200) if verify_code != 0 else \
        f"{len(good)} of {len(data)} objects verified by that key"
    return False, seen


def sif_signature(tools: Tools, sif: Path, key: Path) -> tuple[bool, str, str]:
    """(every object of the SIF signed by the key, the key's fingerprint, a line saying what was seen), with a
    keyring that holds the given public key alone."""
    objects = sif_objects(tools, sif)
    with tempfile.TemporaryDirectory(prefix="hpcimages-keyring-") as tmp:
        ring = Path(tmp) / "ring"
        ring.mkdir(mode=0o700)
        code, out = tools.run(["apptainer", "key", "import", "--keysdir", str(ring), str(key)],
                              paths=[key.parent], writable=[ring])
        if code != 0:
            raise SigningError(f"{key} is no Apptainer public key: {output_tail(out, lines=1, limit=200)}")
        listed = tools.run(["apptainer", "key", "list", "--keysdir", str(ring)], paths=[ring])[1]
        found = FINGERPRINT_RE.search(listed)
        code, out = tools.run(["apptainer", "verify", "--local", "--all", "--json", str(sif)], paths=[sif.parent],
                              writable=[ring], env={"APPTAINER_KEYSDIR": str(ring)})
    expected = found.group(1).upper() if found else ""
    ok, detail = judge_sif_signature(objects, out, code, expected)
    return ok, expected, detail if ok else f"not every object of {sif.name} is signed by the key in {key.name}: " \
                                           f"{detail}"


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

    def preflight(self, sif: bool = False) -> str:
        """Before anything is pushed: the keys exist, the password is set and opens the cosign key (and, for
        ``.sif`` files, the Apptainer key, whose exported public key must be its own). Returns the Apptainer key's
        fingerprint."""
        missing = self.keys.missing()
        if missing:
            raise SigningError(f"signing is configured but the keys are missing ({', '.join(missing)}): run "
                               f"`invoke keys` (or point {KEYS_VAR} at the centre's keys folder)")
        secret = password()
        code, out = self.tools.run(["cosign", "public-key", "--key", str(self.keys.cosign_key)],
                                   paths=[self.keys.folder], env={PASSWORD_VAR: secret})
        found = re.search(r"-----BEGIN PUBLIC KEY-----.*?-----END PUBLIC KEY-----", out, re.S)
        public = found.group(0) if found else ""
        if code != 0 or not public:
            raise SigningError(f"{PASSWORD_VAR} does not open {self.keys.cosign_key} (cosign: "
                               f"{output_tail(out.replace(secret, '***'), lines=1, limit=200)})")
        if public != self.keys.cosign_pub.read_text(encoding="utf-8").strip():
            raise SigningError(f"{self.keys.cosign_key} and {self.keys.cosign_pub} are not one key pair")
        return check_apptainer_key(self.tools, self.keys) if sif else fingerprint(self.tools, self.keys)

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

    def is_attested(self, reference: str, kinds: Iterable[str]) -> bool:
        """The digest still carries a signature and an attestation of each kind by this key (a re-run signs
        nothing again; one whose attestations were stripped from the registry is signed again)."""
        checks = [["verify"], *(["verify-attestation", "--type", kind] for kind in kinds)]
        for check in checks:
            code, _ = self.tools.run(["cosign", *check, "--key", str(self.keys.cosign_pub), *VERIFY_FLAGS,
                                      *cosign_ref_flags(self.insecure), reference], paths=[self.keys.folder],
                                     network=True)
            if code != 0:
                return False
        return True

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
