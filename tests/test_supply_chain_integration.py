"""Signed images with SBOMs and provenance, against a real registry (Debian's docker-registry), real cosign and real
Apptainer (the tools image's): `invoke publish` signs and attests, `invoke verify` is what a site runs, and each
tamper case of issue 30 is refused with its reason — a tag re-pushed with an unsigned image, a signature by another
key, an SBOM attestation replaced, a provenance whose materials do not match the image's labels, a `.sif` changed
after it was signed. Signing that is configured without its key or password pushes nothing, and the password and the
private keys appear in no report, log, layer, catalogue page or output."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
import urllib.request
from pathlib import Path

import pytest

from conftest import registry_server
from hpcimages.cli import exit_code
from hpcimages.define import load_matrix
from hpcimages.engine import connect
from hpcimages.images import check as check_mod
from hpcimages.images import wheelhouse
from hpcimages.images.aptsources import resolve_debian_url
from hpcimages.images.build import build
from hpcimages.paths import build_dir
from hpcimages.publish import attest, record, sbom, signing
from hpcimages.publish import commands as publish
from hpcimages.sif import apptainer as ap
from hpcimages.sif import convert as cv

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
MATRIX = str(ROOT / "matrix.toml")
ROOT_CELL = "mpi4py:py3.11-mpich4.3.2"
H5PY_CELL = "h5py-mpi:py3.11-mpich4.3.2"  # an HDF5 tarball and h5py's sdist: what no package manager knows
VICTIM = "mpi4py:py3.11-mpich4.2.3"  # no child in the ci profile: the destructive tamper cases happen to it
OTHER = "hpcimages/mpi4py:py3.13-mpich4.3.2"  # an image nobody signed


def run(capsys, fn, **kwargs) -> tuple[int, str]:
    code = exit_code(fn, matrix=MATRIX, **kwargs)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.fixture(scope="module")
def outputs() -> list[str]:
    """Everything the module's commands printed: searched for the password at the end."""
    return []


@pytest.fixture(scope="module")
def registry(shared_registry):
    """The session's registry: this module publishes under hpc/ (the publish tests each under a namespace of their
    own), so layers the publish tests pushed are mounted, not uploaded again."""
    return shared_registry


@pytest.fixture(scope="module")
def published(client, centre_keys, registry, outputs):
    """Three cells checked and published with signatures to the module's registry, one of them with its .sif."""
    m = load_matrix(MATRIX)
    prof = m.profile("ci")
    cells = [c for c in m.cells(prof) if c.ref in (ROOT_CELL, H5PY_CELL, VICTIM)]
    assert build(client, m, prof, only=[c.ref for c in cells], progress=lambda _: None).ok
    results = check_mod.check_cells(client, m, prof, cells, progress=lambda _: None, with_host_mpi=False, jobs=2)
    assert all(r.passed for r in results), check_mod.table(results)
    runtime = ap.choose_runtime("container", lambda: client, ROOT, progress=lambda _: None)
    for converted in cv.convert(client, runtime, [f"hpcimages/{ROOT_CELL}"], cv.sif_dir(ROOT),
                                progress=lambda _: None):
        assert converted.status in ("converted", "up to date"), converted.reason
    target = f"{registry.address}/hpc"
    for only, sif in (([H5PY_CELL, VICTIM], False), ([ROOT_CELL], True)):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            code = exit_code(publish.publish, matrix=MATRIX, profile="ci", only=only, registry=target, sif=sif)
        outputs.append(printed.getvalue())
        assert code == 0, printed.getvalue()
    return target


def entry(target: str, ref: str) -> record.Published:
    found = record.load(build_dir(ROOT)).get(target, ref)
    assert found is not None and found.signed is not None, ref
    return found


def verify(capsys, outputs, reference: str, key: Path) -> tuple[int, str]:
    code, out = run(capsys, publish.verify, reference=reference, key=str(key))
    outputs.append(out)
    sys.__stdout__.write(out)  # beside capsys, into pytest's own capture: `pytest -rP` shows what verify said
    return code, out


def lines_of(out: str, check: str) -> list[str]:
    return [line for line in out.splitlines() if line[5:].startswith(check)]


def referrers(address: str, repository: str, digest: str) -> list[dict]:
    """The cosign tag-scheme fallback of a registry without the referrers API: an index under sha256-<hex>."""
    request = urllib.request.Request(f"http://{address}/v2/{repository}/manifests/{digest.replace(':', '-')}",
                                     headers={"Accept": "application/vnd.oci.image.index.v1+json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        index = json.load(response)
    found = []
    for item in index["manifests"]:
        request = urllib.request.Request(f"http://{address}/v2/{repository}/manifests/{item['digest']}",
                                         headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            found.append({**item, "manifest": json.load(response)})
    return found


def predicate_types(address: str, repository: str, digest: str) -> list[str]:
    return sorted(r["manifest"].get("annotations", {}).get("dev.sigstore.bundle.predicateType", "")
                  for r in referrers(address, repository, digest))


@pytest.fixture(scope="module")
def other_key(client, tmp_path_factory) -> Path:
    """Someone else's cosign key pair (same password variable, another key)."""
    folder = tmp_path_factory.mktemp("other-key")
    tools = signing.Tools(connect, ROOT, progress=lambda _: None)
    code, out = tools.run(["sh", "-c", 'cd "$0" && cosign generate-key-pair', str(folder)], writable=[folder],
                          env={signing.PASSWORD_VAR: "someone-else"}, tool="cosign")
    assert code == 0, out
    return folder


def cosign_as(key_folder: Path, password: str, *args: str, files: tuple[Path, ...] = ()) -> tuple[int, str]:
    tools = signing.Tools(connect, ROOT, progress=lambda _: None)
    return tools.run(["cosign", *args], paths=[key_folder, *(f.parent for f in files)],
                     env={signing.PASSWORD_VAR: password}, network=True)


OFFLINE = ("--use-signing-config=false", "--tlog-upload=false", "--yes", "--allow-insecure-registry")


# -- the good path ---------------------------------------------------------------------------------------------------


def test_a_published_image_is_signed_attested_and_verified_by_a_site(published, centre_keys, registry, capsys,
                                                                      outputs):
    published_h5py = entry(published, H5PY_CELL)
    repository = published_h5py.repository.split("/", 1)[1]
    # cosign's fallback on a registry without the referrers API: one index under sha256-<hex>, four referrers
    assert predicate_types(registry.address, repository, published_h5py.digest) == sorted([
        "https://sigstore.dev/cosign/sign/v1", "https://spdx.dev/Document", "https://cyclonedx.org/bom",
        "https://slsa.dev/provenance/v1"])
    code, out = verify(capsys, outputs, f"{published}/h5py-mpi:py3.11-mpich4.3.2", centre_keys.folder / "cosign.pub")
    assert code == 0, out
    checks = [line for line in out.splitlines() if line.startswith(("ok  ", "FAIL"))]
    assert len(checks) == 9 and all(line.startswith("ok  ") for line in checks), out
    assert "h5py-mpi:py3.11-mpich4.3.2 of the matrix at" in out
    assert "reports Python 3.11" in out and "mpi4py 4.1.2" in out and "MPI 4.3.2, as the SBOM says" in out


def test_the_sboms_validate_and_name_what_no_package_manager_knows(published, client):
    m = load_matrix(MATRIX)
    prof = m.profile("ci")
    docs = attest.documents(ROOT, publish.target_of(prof, published), H5PY_CELL)
    assert sbom.validate_spdx_file(docs.spdx) == []
    assert sbom.validate_cyclonedx_text(docs.cyclonedx.read_text()) == []
    spdx = json.loads(docs.spdx.read_text())
    packages = {p["name"]: p for p in spdx["packages"]}
    hdf5_source = prof.sources["hdf5-1.14.5"]
    hdf5 = packages["hdf5"]
    assert hdf5["versionInfo"] == "1.14.5" and hdf5["checksums"] == [{"algorithm": "SHA256",
                                                                       "checksumValue": hdf5_source.sha256}]
    assert hdf5["downloadLocation"] == resolve_debian_url(hdf5_source.url)
    h5py = packages["h5py"]
    assert h5py["packageFileName"] == "h5py-3.16.0.tar.gz" and "sdist" in h5py["comment"]
    assert h5py["checksums"][0]["checksumValue"] in wheelhouse.pinned_hashes(ROOT, "h5py", "3.16.0")
    base = packages[prof.bases["3.11"].image]
    assert base["checksums"][0]["checksumValue"] == client.images.get(prof.bases["3.11"].image).id[7:]
    assert packages["cpython"]["versionInfo"].startswith("3.11.")
    purls = [r["referenceLocator"] for p in spdx["packages"] for r in p.get("externalRefs", [])]
    assert any(p.startswith("pkg:deb/debian/libc6@") and "distro=debian-bookworm" in p for p in purls)
    page = (docs.spdx.parent / "py3.11-mpich4.3.2.md").read_text()
    assert "## Signature, SBOM and provenance" in page and "[SBOM (SPDX 2.3)](py3.11-mpich4.3.2.spdx.json)" in page
    assert f"invoke verify {entry(published, H5PY_CELL).repository}@{entry(published, H5PY_CELL).digest}" in page


def test_the_sif_is_signed_before_the_push_and_verified_after_the_pull_back(published, centre_keys, capsys,
                                                                              outputs, tmp_path):
    published_root = entry(published, ROOT_CELL)
    assert published_root.sif is not None and len(published_root.sif.signed_by) == 40
    signed = cv.sif_dir(ROOT) / "signed" / cv.sif_name(f"hpcimages/{ROOT_CELL}")
    assert wheelhouse.sha256_file(signed) == published_root.sif.sha256  # what was pushed is the signed copy
    code, out = verify(capsys, outputs, str(signed), centre_keys.folder / "apptainer.pub.asc")
    assert code == 0, out
    assert lines_of(out, "signature")[0].startswith("ok   signature: all 7 objects signed by")
    # changed after it was signed: one byte of the squashfs image
    changed = tmp_path / "changed.sif"
    shutil.copyfile(signed, changed)
    with changed.open("r+b") as handle:
        handle.seek(signed.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0xFF]))
    code, out = verify(capsys, outputs, str(changed), centre_keys.folder / "apptainer.pub.asc")
    assert code == 1 and lines_of(out, "signature")[0].startswith("FAIL signature: not every object"), out
    assert lines_of(out, "contents")[0].startswith("FAIL contents: not checked"), out  # a changed file is not run
    # an object added after the signature (a second, forged SBOM): the signed ones still verify, the file does not
    added = tmp_path / "added.sif"
    shutil.copyfile(signed, added)
    forged = tmp_path / "forged.spdx.json"
    forged.write_text(json.dumps({"spdxVersion": "SPDX-2.3", "packages": []}))
    tools = signing.Tools(connect, ROOT, progress=lambda _: None)
    code, out = tools.run(["apptainer", "sif", "add", "--datatype", "9", "--sbomformat", "spdx-json", "--groupid",
                           "1", str(added), str(forged)], writable=[tmp_path])
    assert code == 0, out
    code, out = verify(capsys, outputs, str(added), centre_keys.folder / "apptainer.pub.asc")
    assert code == 1 and lines_of(out, "signature")[0].startswith("FAIL signature: not every object"), out


# -- tampering -------------------------------------------------------------------------------------------------------


def test_a_tag_re_pushed_with_an_unsigned_image_is_refused(published, centre_keys, client, capsys, outputs):
    alias = f"{published}/mpi4py:py3.11-mpich4.3"  # the alias of ROOT_CELL: someone pushes another image under it
    repository, tag = alias.rsplit(":", 1)
    client.api.tag(OTHER, repository, tag)
    for line in client.api.push(repository, tag, stream=True, decode=True):
        assert "error" not in line, line
    code, out = verify(capsys, outputs, alias, centre_keys.folder / "cosign.pub")
    assert code == 1, out
    assert lines_of(out, "signature")[0].startswith("FAIL signature: no signature of"), out
    assert all(line.startswith("FAIL") for line in lines_of(out, "attestation")), out
    assert "NOT verified" in out


def test_a_centre_signed_image_of_another_cell_under_a_tag_is_refused(published, centre_keys, client, capsys,
                                                                      outputs):
    """Someone points the 4.2.3 cell's alias at the centre's own, signed 4.3.2 image: every signature holds, the
    name does not."""
    published_root = entry(published, ROOT_CELL)
    alias = f"{published}/mpi4py:py3.11-mpich4.2"
    repository, tag = alias.rsplit(":", 1)
    client.api.tag(published_root.image_id, repository, tag)
    for line in client.api.push(repository, tag, stream=True, decode=True):
        assert "error" not in line, line
    code, out = verify(capsys, outputs, alias, centre_keys.folder / "cosign.pub")
    assert code == 1 and lines_of(out, "signature")[0].startswith("ok   signature"), out
    assert lines_of(out, "reference")[0].startswith("FAIL reference: the tag py3.11-mpich4.2 is not one the centre "
                                                    "published this image under"), out


def test_a_signature_made_with_another_key_is_refused(published, centre_keys, other_key, client, capsys, outputs):
    forged = f"{published}/mpi4py:forged"
    repository, tag = forged.rsplit(":", 1)
    client.api.tag(OTHER, repository, tag)
    for line in client.api.push(repository, tag, stream=True, decode=True):
        assert "error" not in line, line
    digest = next(d.split("@", 1)[1] for d in client.images.get(OTHER).attrs["RepoDigests"]
                  if d.startswith(repository + "@"))
    code, out = cosign_as(other_key, "someone-else", "sign", "--key", str(other_key / "cosign.key"), *OFFLINE,
                          f"{repository}@{digest}")
    assert code == 0, out
    code, out = verify(capsys, outputs, forged, centre_keys.folder / "cosign.pub")
    assert code == 1 and lines_of(out, "signature")[0].startswith("FAIL signature"), out
    # the signature is real: with its own key it verifies (the check is not vacuous)
    code, out = verify(capsys, outputs, forged, other_key / "cosign.pub")
    assert lines_of(out, "signature")[0].startswith("ok   signature"), out


def test_a_replaced_sbom_attestation_is_refused(published, centre_keys, other_key, registry, capsys, outputs,
                                                tmp_path):
    victim = entry(published, VICTIM)
    reference = f"{victim.repository}@{victim.digest}"
    repository = victim.repository.split("/", 1)[1]
    before = referrers(registry.address, repository, victim.digest)
    # someone with push rights attests a forged SBOM (a package left out) with their key ...
    docs = attest.documents(ROOT, publish.target_of(load_matrix(MATRIX).profile("ci"), published), VICTIM)
    forged = json.loads(docs.spdx.read_text())
    forged["packages"] = [p for p in forged["packages"] if p["name"] != "mpich"]
    (tmp_path / "forged.spdx.json").write_text(json.dumps(forged))
    code, out = cosign_as(other_key, "someone-else", "attest", "--key", str(other_key / "cosign.key"), *OFFLINE,
                          "--type", "spdxjson", "--predicate", str(tmp_path / "forged.spdx.json"), reference,
                          files=(tmp_path / "forged.spdx.json",))
    assert code == 0, out
    # ... and removes the centre's from the referrers index (the tag-scheme fallback is a tag anyone may push)
    after = referrers(registry.address, repository, victim.digest)
    kept = [r for r in after if not (r in before and r["manifest"].get("annotations", {}).get(
        "dev.sigstore.bundle.predicateType") == "https://spdx.dev/Document")]
    assert len(kept) == len(after) - 1
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{k: v for k, v in r.items() if k != "manifest"} for r in kept]}
    request = urllib.request.Request(
        f"http://{registry.address}/v2/{repository}/manifests/{victim.digest.replace(':', '-')}",
        data=json.dumps(index).encode(), method="PUT",
        headers={"Content-Type": "application/vnd.oci.image.index.v1+json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201
    code, out = verify(capsys, outputs, reference, centre_keys.folder / "cosign.pub")
    assert code == 1, out
    assert lines_of(out, "signature")[0].startswith("ok   signature"), out  # the image itself is still the centre's
    assert lines_of(out, "attestation spdxjson")[0].startswith("FAIL attestation spdxjson: no spdxjson attestation "
                                                                "signed by cosign.pub"), out
    assert lines_of(out, "contents")[0].startswith("FAIL contents: not checked"), out


def test_a_provenance_whose_materials_do_not_match_the_image_is_refused(published, centre_keys, capsys, outputs,
                                                                        tmp_path):
    """Signed by the centre's own key (a publishing mistake, or an insider): the signature holds, the provenance
    does not."""
    image = entry(published, H5PY_CELL)  # its SBOMs untouched: what is judged here is the provenance alone
    reference = f"{image.repository}@{image.digest}"
    target = publish.target_of(load_matrix(MATRIX).profile("ci"), published)
    # a material changed: the Dockerfile's hash is not the one the revision holds
    statement = json.loads(attest.documents(ROOT, target, H5PY_CELL).provenance.read_text())
    dockerfile = next(d for d in statement["buildDefinition"]["resolvedDependencies"]
                      if d["name"].endswith("/Dockerfile"))
    dockerfile["digest"]["sha256"] = "0" * 64
    changed = tmp_path / "changed.provenance.json"
    changed.write_text(json.dumps(statement))
    # another cell's statement on this image
    elsewhere = attest.documents(ROOT, target, VICTIM).provenance
    for predicate in (changed, elsewhere):
        code, out = cosign_as(centre_keys.folder, centre_keys.password, "attest", "--key",
                              str(centre_keys.folder / "cosign.key"), *OFFLINE, "--type", "slsaprovenance1",
                              "--predicate", str(predicate), reference, files=(predicate,))
        assert code == 0, out
    code, out = verify(capsys, outputs, reference, centre_keys.folder / "cosign.pub")
    assert code == 1, out
    provenance_lines = lines_of(out, "provenance")
    assert len(provenance_lines) == 3, out  # the one publish made still holds; the two added do not
    assert sum(line.startswith("ok   provenance") for line in provenance_lines) == 1, out
    assert any(f"material {dockerfile['name']}: sha256 000000000000 in the provenance" in line
               for line in provenance_lines), out
    assert any(f"names the cell '{VICTIM}', the image's labels {H5PY_CELL}" in line
               and "input hash" in line for line in provenance_lines), out
    assert lines_of(out, "contents")[0].startswith("FAIL contents: not checked"), out  # nothing doubtful is run


# -- refusals before anything is pushed, and secrets ------------------------------------------------------------------


@pytest.fixture
def empty_registry(client, tmp_path):
    with registry_server(client, tmp_path / "registry") as server:
        yield server


def catalog(address: str) -> list[str]:
    with urllib.request.urlopen(f"http://{address}/v2/_catalog", timeout=10) as response:
        return json.load(response)["repositories"]


def test_signing_without_its_key_or_password_pushes_nothing(published, centre_keys, empty_registry, monkeypatch,
                                                            capsys, tmp_path, outputs):
    target = f"{empty_registry.address}/hpc"
    cases = [({signing.PASSWORD_VAR: ""}, "COSIGN_PASSWORD is not set"),
             ({signing.PASSWORD_VAR: "not-the-password"}, "COSIGN_PASSWORD does not open"),
             ({signing.KEYS_VAR: str(tmp_path / "no-keys")}, "the keys are missing")]
    # an Apptainer key under another password beside the right cosign key: refused before a push, with --sif
    mixed = tmp_path / "mixed"
    shutil.copytree(centre_keys.folder, mixed)
    with monkeypatch.context() as mp:
        mp.setenv(signing.PASSWORD_VAR, "another-password")
        other = signing.create_keys(signing.Tools(connect, ROOT, progress=lambda _: None), tmp_path / "other",
                                    "someone else", "else@example.org", progress=lambda _: None)
    for name in ("apptainer", "apptainer.pub.asc"):
        shutil.rmtree(mixed / name) if (mixed / name).is_dir() else (mixed / name).unlink()
        shutil.move(other.folder / name, mixed / name)
    cases.append(({signing.KEYS_VAR: str(mixed), "SIF": "yes"}, "does not open the Apptainer key"))
    for env, words in cases:
        with monkeypatch.context() as mp:
            for name, value in env.items():
                if name != "SIF":
                    mp.setenv(name, value)
            code, out = run(capsys, publish.publish, profile="ci", only=[VICTIM], registry=target,
                            sif="SIF" in env)
        outputs.append(out)
        assert code == 2 and "nothing was pushed" in out and words in out, out
        assert "invoke keys" in out or "COSIGN_PASSWORD" in out
        assert catalog(empty_registry.address) == [], "something was pushed"


def test_the_password_and_the_private_keys_appear_nowhere(published, centre_keys, registry, outputs):
    password = centre_keys.password.encode()
    private = [(centre_keys.folder / "cosign.key").read_bytes().split(b"\n")[1],
               (centre_keys.folder / "apptainer" / "pgp-secret").read_bytes()[-64:]]
    places = [p for p in build_dir(ROOT).rglob("*") if p.is_file() and p.stat().st_size < 400 * 1024 * 1024]
    places += [p for p in registry.folder.rglob("*") if p.is_file()]  # layers, manifests, signatures, attestations
    assert places
    leaks = [str(p) for p in places if password in p.read_bytes() or any(k in p.read_bytes() for k in private)]
    assert not leaks, leaks
    assert outputs and not [o for o in outputs if centre_keys.password in o]


def test_keys_are_refused_inside_the_repository_and_never_replaced_silently(centre_keys, capsys):
    code, out = run(capsys, publish.keys, folder=str(ROOT / "build" / "keys"), name="x", email="x@example.org")
    assert code == 2 and "inside the repository" in out, out
    code, out = run(capsys, publish.keys, folder=str(centre_keys.folder), name="x", email="x@example.org")
    assert code == 2 and "already holds keys" in out and "--force" in out, out
    assert (centre_keys.folder / "cosign.key").is_file()  # the refusal left the keys as they were
