"""Unit tests of the supply-chain parts that need no engine: the public source URL (label and provenance), the
matrix keys that configure signing, the SBOM writers and their validators, the provenance check against the git
history, the reading of cosign's output and of image references, the key folder rules."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import subprocess
from pathlib import Path

import pytest

from hpcimages.define import load_matrix
from hpcimages.errors import MatrixError
from hpcimages.images import wheelhouse
from hpcimages.images.build import INPUT_LABEL, provenance_labels
from hpcimages.images.reports import ReportError
from hpcimages.paths import normalised_remote, public_url_problem, without_credentials
from hpcimages.publish import provenance, record, sbom, signing, verify

ROOT = Path(__file__).resolve().parent.parent


# -- the public source URL -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("remote, public", [
    ("git@github.com:centre/hpcimages.git", "https://github.com/centre/hpcimages"),
    ("ssh://git@gitlab.example.org:2222/centre/hpc.git", "https://gitlab.example.org/centre/hpc"),
    ("https://maintainer:ghp_token@github.com/centre/hpcimages.git", "https://github.com/centre/hpcimages"),
    ("https://github.com/centre/hpcimages", "https://github.com/centre/hpcimages"),
    ("/work/main", ""),  # a clone from disk: a path of the build machine is no source
    ("file:///srv/git/hpcimages.git", ""),
    ("../hpcimages", ""),
    ("", ""),
    ("https://git.example.org:8443/a/b.git", "https://git.example.org:8443/a/b"),  # a web port is the address's
    ("http://git.example.org/a/b", ""),  # plain http is no public https source, and is not upgraded silently
    ("ssh://git@[::1/x", ""),  # malformed: nothing, not a traceback in the build
])
def test_a_remote_becomes_a_public_https_url_or_nothing(remote, public):
    assert normalised_remote(remote) == public
    assert "@" not in normalised_remote(remote) and "token" not in normalised_remote(remote)


@pytest.mark.parametrize("value, words", [
    ("https://user:pw@github.com/c/h", "credentials"),
    ("http://github.com/c/h", "https://HOST/PATH"),
    ("https://github.com/c/h?x=1", "no query"),
    ("https://github.com", "https://HOST/PATH"),
    (42, "an https URL"),
])
def test_a_configured_source_that_is_no_public_url_is_refused(value, words):
    assert words in str(public_url_problem(value))


@pytest.mark.parametrize("url, public", [
    ("https://ci-bot:s3cr3t-token@pypi.internal.example/simple", "https://pypi.internal.example/simple"),
    ("https://pypi.org/simple", "https://pypi.org/simple"),
    ("http://user@deb.example.org/debian/pool/x.tar.gz", "http://deb.example.org/debian/pool/x.tar.gz"),
])
def test_urls_in_published_documents_carry_no_credentials(url, public):
    assert without_credentials(url) == public


def test_an_index_with_a_token_leaves_it_out_of_the_sbom(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "https://ci-bot:s3cr3t-token@pypi.internal.example/simple")
    m = load_matrix(ROOT / "matrix.toml")
    cell = m.cell("mpi4py:py3.11-mpich4.3.2")
    inventory = {"python": "3.11.2", "debian": {}, "pip": {"mpi4py": "4.1.2"}}
    stamp = wheelhouse.wheelhouse_dir(tmp_path) / ".done" / wheelhouse.stamp_name(ROOT / str(cell.lock), "3.11")
    stamp.parent.mkdir(parents=True)
    sha = sorted(wheelhouse.pinned_hashes(ROOT, "mpi4py", "4.1.2"))[0]
    stamp.write_text(json.dumps({"mpi4py-4.1.2-cp311-cp311-manylinux1_x86_64.whl": sha}))
    parts = sbom.contents(m, m.profile("ci"), cell, inventory, base_id="sha256:" + "a" * 64, base_digests=[],
                          base_labels={}, cache=tmp_path)
    mpi4py = next(p for p in parts if p.name == "mpi4py")
    assert mpi4py.sha256 == sha and mpi4py.download == "https://pypi.internal.example/simple/mpi4py/"
    assert not [p for p in parts if "s3cr3t" in p.download or "s3cr3t" in p.purl]


def git_repo(path: Path, remote: str) -> Path:
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    if remote:
        subprocess.run(["git", "-C", str(path), "remote", "add", "origin", remote], check=True)
    return path


def test_the_source_label_is_the_configured_url_the_normalised_remote_or_absent(repo_copy):
    matrix_file = repo_copy / "matrix.toml"
    git_repo(repo_copy, "/some/local/clone")
    m = load_matrix(matrix_file)
    profile = m.profile("ci")
    assert "org.opencontainers.image.source" not in provenance_labels(m, profile, "x")
    subprocess.run(["git", "-C", str(repo_copy), "remote", "set-url", "origin", "git@git.example.org:hpc/images.git"],
                   check=True)
    assert provenance_labels(m, profile, "x")["org.opencontainers.image.source"] == \
        "https://git.example.org/hpc/images"
    matrix_file.write_text('[project]\nsource = "https://github.com/centre/hpcimages"\n\n' + matrix_file.read_text())
    m = load_matrix(matrix_file)
    assert provenance_labels(m, profile, "x")["org.opencontainers.image.source"] == \
        "https://github.com/centre/hpcimages"


@pytest.mark.parametrize("table, key", [
    ('[project]\nsource = "git@github.com:c/h.git"\n', "project.source"),
    ('[project]\nhomepage = "https://x.org/a"\n', "project.homepage"),
    ('project = 3\n', "project"),
])
def test_a_broken_project_table_names_its_key(repo_copy, table, key):
    path = repo_copy / "matrix.toml"
    path.write_text(table + "\n" + path.read_text())
    with pytest.raises(MatrixError) as caught:
        load_matrix(path)
    assert key in str(caught.value)


def test_sign_must_be_a_boolean(repo_copy):
    path = repo_copy / "matrix.toml"
    path.write_text(path.read_text().replace("sign = true", 'sign = "yes"'))
    with pytest.raises(MatrixError) as caught:
        load_matrix(path)
    assert "profiles.ci.publish.sign" in str(caught.value) and "true or false" in str(caught.value)


# -- SBOMs ---------------------------------------------------------------------------------------------------------


def subject() -> sbom.Subject:
    return sbom.Subject("127.0.0.1:5000/hpc/mpi4py", "sha256:" + "ab" * 32, ("py3.11-mpich4.3.2", "latest"),
                        "mpi4py:py3.11-mpich4.3.2", "sha256:" + "cd" * 32)


PARTS = [
    sbom.Part("hpcimages-base/python:3.11-bookworm", "3.11-bookworm", "base",
              "pkg:oci/python@sha256%3A" + "ef" * 32, "ef" * 32, origin="bootstrapped"),
    sbom.Part("cpython", "3.11.2", "interpreter", "pkg:generic/cpython@3.11.2", origin="Debian's python3.11"),
    sbom.Part("hdf5", "1.14.5", "source", "pkg:generic/hdf5@1.14.5", "12" * 32,
              "http://deb.example.org/debian/pool/main/h/hdf5/hdf5_1.14.5+repack.orig.tar.gz",
              "hdf5_1.14.5+repack.orig.tar.gz", "compiled from its release tarball"),
    sbom.Part("libc6", "2.36-9+deb12u13", "debian", "pkg:deb/debian/libc6@2.36-9%2Bdeb12u13?arch=amd64"),
    sbom.Part("mpi4py", "4.1.2", "pypi", "pkg:pypi/mpi4py@4.1.2", "34" * 32, "https://pypi.org/simple/mpi4py/",
              "mpi4py-4.1.2.tar.gz", "compiled from its sdist"),
    sbom.Part("mpich", "4.3.2", "pypi", "pkg:pypi/mpich@4.3.2"),
]


def test_both_sboms_are_written_by_their_libraries_and_validate(tmp_path):
    written = sbom.write(tmp_path, "py3.11-mpich4.3.2", subject(), PARTS)
    assert sbom.validate_spdx_file(written.spdx) == []
    assert sbom.validate_cyclonedx_text(written.cyclonedx.read_text()) == []
    spdx = json.loads(written.spdx.read_text())
    assert spdx["spdxVersion"] == "SPDX-2.3" and len(spdx["packages"]) == len(PARTS) + 1
    cdx = json.loads(written.cyclonedx.read_text())
    assert cdx["specVersion"] == "1.6" and len(cdx["components"]) == len(PARTS)
    assert cdx["metadata"]["component"]["hashes"][0]["content"] == "ab" * 32
    assert written.stack == {"Python": "3.11.2", "HDF5": "1.14.5 (tarball)", "mpi4py": "4.1.2 (sdist)",
                             "MPICH": "4.3.2 (PyPI)"}
    assert sbom.summary(written.spdx)["by_type"] == {"deb": 1, "generic": 2, "oci": 1, "pypi": 2}


def test_a_broken_sbom_is_named_by_the_validators(tmp_path):
    written = sbom.write(tmp_path, "x", subject(), PARTS)
    data = json.loads(written.spdx.read_text())
    data["packages"][1]["SPDXID"] = "not an id"
    written.spdx.write_text(json.dumps(data))
    assert sbom.validate_spdx_file(written.spdx)
    cdx = json.loads(written.cyclonedx.read_text())
    cdx["components"][0]["type"] = "spaceship"
    assert sbom.validate_cyclonedx_text(json.dumps(cdx))
    written.spdx.write_text("{not json")
    assert "does not parse" in sbom.validate_spdx_file(written.spdx)[0]


def test_an_sdist_the_build_compiled_must_be_the_pinned_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCIMAGES_CACHE", str(tmp_path))
    m = load_matrix(ROOT / "matrix.toml")
    cell = m.cell("h5py-mpi:py3.11-mpich4.3.2")
    missing = re.escape("h5py-3.16.0.tar.gz, which h5py-mpi:py3.11-mpich4.3.2 compiled, is not")
    with pytest.raises(sbom.SbomError, match=missing):
        sbom.compiled_sdists(m, sbom.chain(m, cell), tmp_path)
    (wheelhouse.wheelhouse_dir(tmp_path)).mkdir()
    (wheelhouse.wheelhouse_dir(tmp_path) / "h5py-3.16.0.tar.gz").write_bytes(b"not the sdist")
    with pytest.raises(sbom.SbomError, match=re.escape("is none the locks pin for h5py==3.16.0")):
        sbom.compiled_sdists(m, sbom.chain(m, cell), tmp_path)


# -- provenance ----------------------------------------------------------------------------------------------------


def head() -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


def committed(rel: str) -> bool:
    """The working tree's file is the one HEAD holds (a provenance made now names HEAD's files)."""
    return subprocess.run(["git", "-C", str(ROOT), "diff", "--quiet", "HEAD", "--", rel], check=False).returncode == 0


@pytest.fixture
def statement(tmp_path):
    m = load_matrix(ROOT / "matrix.toml")
    cell = m.cell("mpi4py:py3.11-mpich4.3.2")
    profile = m.profile("ci")
    if not all(committed(p) for p in ("dockerfiles", "pip-requirements")):  # CI's fresh clone always has them
        pytest.skip("the Dockerfiles or locks differ from HEAD: a provenance of them names no revision")
    labels = {INPUT_LABEL: "f" * 64, provenance.REVISION_LABEL: head(), "io.hpcimages.family": "mpi4py",
              "org.opencontainers.image.version": "py3.11-mpich4.3.2",
              "org.opencontainers.image.created": "2026-12-06T03:16:11Z"}
    facts = provenance.BuildFacts("hpcimages-base/python:3.11-bookworm", "sha256:" + "a" * 64, "f" * 64, "20.10")
    predicate = provenance.statement_predicate(m, profile, cell, labels, "sha256:" + "b" * 64, facts,
                                               "https://github.com/centre/hpcimages", tmp_path)
    return predicate, labels


def test_a_provenance_names_the_cell_its_files_and_holds_against_its_revision(statement):
    predicate, labels = statement
    names = [d["name"] for d in predicate["buildDefinition"]["resolvedDependencies"]]
    assert "dockerfiles/generated/mpi4py/py3.11-mpich4.3.2/Dockerfile" in names
    assert "pip-requirements/mpi4py/requirements-py3.11.txt" in names and "hpcimages-base/python:3.11-bookworm" in names
    assert len(names) == len(set(names))
    assert provenance.check(predicate, labels, ROOT) == ("mpi4py:py3.11-mpich4.3.2", [])


def test_a_provenance_that_does_not_match_is_refused_with_its_reasons(statement):
    predicate, labels = statement
    broken = json.loads(json.dumps(predicate))
    lock = next(d for d in broken["buildDefinition"]["resolvedDependencies"] if d["name"].endswith("py3.11.txt"))
    lock["digest"]["sha256"] = "0" * 64
    _, reasons = provenance.check(broken, labels, ROOT)
    assert any(r.startswith(f"material {lock['name']}: sha256 000000000000") for r in reasons), reasons
    _, reasons = provenance.check(predicate, {**labels, INPUT_LABEL: "e" * 64, "io.hpcimages.family": "hpc-python"},
                                  ROOT)
    assert any("input hash" in r for r in reasons) and any("the image's labels hpc-python:" in r for r in reasons)
    unknown = json.loads(json.dumps(predicate))
    unknown["buildDefinition"]["externalParameters"]["source"]["revision"] = "0" * 40
    _, reasons = provenance.check(unknown, {**labels, provenance.REVISION_LABEL: "0" * 40}, ROOT)
    assert any("is not in this checkout" in r for r in reasons), reasons
    other = json.loads(json.dumps(predicate))
    other["buildDefinition"]["externalParameters"]["cell"] = "mpi4py:py3.11-mpich9.9.9"
    _, reasons = provenance.check(other, {**labels, "org.opencontainers.image.version": "py3.11-mpich9.9.9"}, ROOT)
    assert any("is no cell of profile 'ci'" in r for r in reasons), reasons
    escape = json.loads(json.dumps(predicate))
    escape["buildDefinition"]["resolvedDependencies"][1]["name"] = "../../etc/passwd"
    _, reasons = provenance.check(escape, labels, ROOT)
    assert any("no file of the repository" in r for r in reasons), reasons
    assert "no SLSA v1 predicate" in provenance.check({"buildDefinition": {"bogus": 1}}, labels, ROOT)[1][0]


@pytest.mark.parametrize("change, words", [
    (lambda p: p["buildDefinition"]["externalParameters"].update(source="x"), "names no git commit"),
    (lambda p: p["buildDefinition"]["externalParameters"].update(source=[1]), "names no git commit"),
    (lambda p: p["buildDefinition"]["externalParameters"]["source"].update(revision="HEAD"), "names no git commit"),
    (lambda p: p["buildDefinition"]["externalParameters"]["source"].update(revision="a\0b"), "names no git commit"),
    (lambda p: p["buildDefinition"]["externalParameters"]["source"].update(revision="--output=/tmp/x"),
     "names no git commit"),
    (lambda p: p["buildDefinition"].update(resolvedDependencies=[]), "leaves out the cell's own inputs"),
    (lambda p: p["buildDefinition"]["externalParameters"].update(cell="../../x:y"), "names no cell of a profile"),
])
def test_a_hostile_provenance_is_refused_with_a_reason_not_a_traceback(statement, change, words):
    predicate, labels = statement
    hostile = json.loads(json.dumps(predicate))
    change(hostile)
    _, reasons = provenance.check(hostile, labels, ROOT)
    assert any(words in r for r in reasons), reasons


def test_a_malformed_sbom_is_a_failed_check_not_a_traceback():
    outcome = verify.Outcome("x")
    verify.check_contents(outcome, {"packages": 5}, {"python": "3.11.2"}, "the image")
    verify.check_spdx(outcome, {"packages": "no"})
    assert [ok for _, ok, _ in outcome.checks] == [False, False]
    outcome = verify.Outcome("x")
    outcome.add("provenance", True, "fine\nok   signature: forged\x1b[2K")
    assert outcome.lines() == ["ok   provenance: fine ok   signature: forged [2K"]


def test_a_tag_the_signed_sbom_does_not_name_is_refused():
    cdx = {"metadata": {"component": {"properties": [{"name": "hpcimages:tag", "value": "py3.11-mpich4.3.2"},
                                                     {"name": "hpcimages:tag", "value": "latest"}]}}}
    labels = {"io.hpcimages.family": "mpi4py"}
    outcome = verify.Outcome("x")
    verify.check_reference(outcome, "r.example.org/hpc/mpi4py", "latest", labels, [cdx])
    verify.check_reference(outcome, "r.example.org/hpc/mpi4py", "py3.11-mpich4.2", labels, [cdx])
    verify.check_reference(outcome, "r.example.org/hpc/hpc-python", "sha256:" + "a" * 64, labels, [cdx])
    verify.check_reference(outcome, "r.example.org/hpc/mpi4py", "latest", labels, [{"metadata": 3}])
    assert [ok for _, ok, _ in outcome.checks] == [True, False, False, False]


@pytest.mark.parametrize("signers, code, ok", [
    ([("AB" * 20, True, True)] * 3, 0, True),
    ([("AB" * 20, True, True)] * 2, 0, False),  # an object nobody signed
    ([("AB" * 20, True, True), ("CD" * 20, True, True), ("AB" * 20, True, True)], 0, False),  # another key
    ([("AB" * 20, False, True)] * 3, 0, False),  # data changed
    ([("AB" * 20, True, True)] * 3, 255, False),  # apptainer itself said no
    ([], 0, False),
])
def test_a_sif_is_signed_only_when_every_data_object_is_signed_by_the_key(signers, code, ok):
    objects = [{"ID": "1", "Data Type": "Def.FILE"}, {"ID": "2", "Data Type": "FS"},
               {"ID": "3", "Data Type": "SBOM"}, {"ID": "4", "Data Type": "Signature"}]
    report = json.dumps({"Signatures": 1, "SignerKeys": [
        {"Signer": {"Fingerprint": f.lower(), "DataCheck": data, "KeyCheck": key}} for f, data, key in signers]})
    text = "INFO: Verifying\n" + report + "\nINFO: Verified signature(s)\n"  # stdout's report amid stderr's lines
    assert signing.judge_sif_signature(objects, text, code, "AB" * 20)[0] is ok


def test_inputs_other_than_the_images_are_never_attested(tmp_path):
    m = load_matrix(ROOT / "matrix.toml")
    facts = provenance.BuildFacts("x", "sha256:" + "a" * 64, "1" * 64, "20.10")
    with pytest.raises(provenance.ProvenanceError, match="not the ones the image was built from"):
        provenance.statement_predicate(m, m.profile("ci"), m.cell("mpi4py:py3.11-mpich4.3.2"),
                                       {INPUT_LABEL: "2" * 64}, "sha256:" + "b" * 64, facts, "", tmp_path)


# -- reading cosign, references, keys, records -----------------------------------------------------------------------


def test_cosign_envelopes_are_read_and_other_lines_ignored():
    statement = {"_type": "https://in-toto.io/Statement/v0.1", "predicateType": "https://spdx.dev/Document",
                 "subject": [{"digest": {"sha256": "ab" * 32}}], "predicate": {"spdxVersion": "SPDX-2.3"}}
    line = json.dumps({"payload": base64.b64encode(json.dumps(statement).encode()).decode(),
                       "payloadType": "application/vnd.in-toto+json", "signatures": [{"sig": "x"}]})
    text = "\n".join(["Verification for x --", line, '{"payload": "@@not base64"}', "{broken", ""])
    assert verify.envelopes(text) == [statement]


@pytest.mark.parametrize("reference, words", [
    ("mpi4py:py3.11", "name the registry"),
    ("hpc/mpi4py:py3.11", "name the registry"),
    ("127.0.0.1:99999/hpc/mpi4py:x", "not a TCP port"),
    ("127.0.0.1:5000/hpc/mpi4py:bad tag", "no image reference"),
])
def test_a_reference_that_names_no_registry_image_is_refused(reference, words):
    with pytest.raises(verify.VerifyError, match=words):
        verify.split_reference(reference)


def test_references_are_split_into_registry_repository_and_pointer():
    target, repo, pointer = verify.split_reference("127.0.0.1:5000/hpc/mpi4py:py3.11-mpich4.3.2")
    assert (str(target), repo, pointer) == ("127.0.0.1:5000/hpc", "127.0.0.1:5000/hpc/mpi4py", "py3.11-mpich4.3.2")
    digest = "sha256:" + "a" * 64
    assert verify.split_reference(f"registry.example.org/hpc/mpi4py@{digest}")[2] == digest
    assert verify.split_reference("127.0.0.1:5000/hpc/mpi4py")[2] == "latest"


def test_the_keys_folder_is_never_inside_the_repository(monkeypatch, tmp_path):
    with pytest.raises(signing.SigningError, match="inside the repository"):
        signing.keys_dir(ROOT, str(ROOT / "keys"))
    monkeypatch.setenv(signing.KEYS_VAR, str(tmp_path / "k"))
    assert signing.keys_dir(ROOT) == (tmp_path / "k").resolve()
    monkeypatch.delenv(signing.PASSWORD_VAR, raising=False)
    with pytest.raises(signing.SigningError, match="COSIGN_PASSWORD is not set"):
        signing.password()


def test_a_publish_record_with_a_broken_signature_entry_is_refused(tmp_path):
    published = record.Published(
        profile="ci", ref="mpi4py:py3.11-mpich4.3.2", image_id="sha256:" + "a" * 64,
        repository="127.0.0.1:5000/hpc/mpi4py", tags=["py3.11-mpich4.3.2"], digest="sha256:" + "b" * 64,
        size_bytes=1, compressed_bytes=1, published_at="2026-12-06T00:00:00Z", revision="x", image_revision="x",
        hello="ok", signed=record.SignRecord("sha256:" + "c" * 64, "d" * 64, "e" * 64, "f" * 64,
                                             dt.datetime.now(dt.UTC).isoformat()))
    report = record.PublishReport(tmp_path / record.PUBLISH_REPORT)
    report.put("127.0.0.1:5000/hpc", published)
    report.save()
    assert record.load(tmp_path).get("127.0.0.1:5000/hpc", published.ref).signed.key == "sha256:" + "c" * 64
    data = json.loads(report.path.read_text())
    data["targets"]["127.0.0.1:5000/hpc"][published.ref]["signed"]["key"] = "the centre's key"
    report.path.write_text(json.dumps(data))
    with pytest.raises(ReportError, match=re.escape("signed: key: \"the centre's key\" is not a sha256")):
        record.load(tmp_path)


@pytest.mark.parametrize("name, email", [("", "hpc@example.org"), ("Centre\nUser-ID: forged", "hpc@example.org"),
                                         ("Centre", "not-an-address"), ("Centre", "a@b.org\n")])
def test_keys_want_a_plain_name_and_address(name, email, capsys):
    from hpcimages.cli import exit_code
    from hpcimages.publish import commands

    assert exit_code(commands.keys, matrix=str(ROOT / "matrix.toml"), name=name, email=email) == 2
    assert "give --name" in capsys.readouterr().err


@pytest.mark.parametrize("reference, words", [("tests/", "is a directory"), ("missing.sif", "no such .sif file"),
                                              ("./nowhere/x.sif", "no such .sif file")])
def test_verify_names_a_file_that_is_not_one(reference, words, capsys, monkeypatch, tmp_path):
    from hpcimages.cli import exit_code
    from hpcimages.publish import commands

    key = tmp_path / "apptainer.pub.asc"
    key.write_text("x")
    monkeypatch.chdir(ROOT)
    assert exit_code(commands.verify, matrix=str(ROOT / "matrix.toml"), reference=reference, key=str(key)) == 2
    assert words in capsys.readouterr().err


def test_a_provenance_names_the_image_an_hdf5_is_compiled_in(tmp_path):
    m = load_matrix(ROOT / "matrix.toml")
    cell = m.cell("h5py-mpi:py3.13-openmpi5.0.11")
    assert cell is not None
    if not all(committed(p) for p in ("dockerfiles", "pip-requirements")):
        pytest.skip("the Dockerfiles or locks differ from HEAD: a provenance of them names no revision")
    labels = {INPUT_LABEL: "f" * 64, provenance.REVISION_LABEL: head(), "io.hpcimages.family": "h5py-mpi",
              "org.opencontainers.image.version": "py3.13-openmpi5.0.11",
              "org.opencontainers.image.created": "2026-12-06T03:16:11Z"}
    facts = provenance.BuildFacts("hpcimages/mpi4py:py3.13-openmpi5.0.11", "sha256:" + "a" * 64, "f" * 64, "20.10",
                                  hdf5_builder=("hpcimages/mpi4py:py3.11-openmpi5.0.11", "sha256:" + "c" * 64))
    predicate = provenance.statement_predicate(m, m.profile("ci"), cell, labels, "sha256:" + "b" * 64, facts,
                                               "https://github.com/centre/hpcimages", tmp_path)
    deps = {d["name"]: d for d in predicate["buildDefinition"]["resolvedDependencies"]}
    builder = deps["hpcimages/mpi4py:py3.11-openmpi5.0.11"]
    assert builder["digest"] == {"sha256": "c" * 64}
    assert builder["annotations"]["role"] == "the image the HDF5 tarball is compiled in"
    assert predicate["buildDefinition"]["internalParameters"]["buildArgs"]["HDF5_BUILD_IMAGE"] == \
        "hpcimages/mpi4py:py3.11-openmpi5.0.11"
    assert provenance.check(predicate, labels, ROOT) == (cell.ref, [])


def test_an_image_of_a_release_older_than_today_s_template_checks_still_verifies(statement):
    """The tree of an older revision is read as it was: its h5py-mpi template predates the HDF5_BUILD_IMAGE arg
    that today's build passes, which must not make its matrix unreadable (every image of that release would fail)."""
    predicate, labels = statement
    found = subprocess.run(["git", "-C", str(ROOT), "log", "--format=%H", "-S", "HDF5_BUILD_IMAGE", "--",
                            "dockerfiles/h5py-mpi.Dockerfile.j2"], capture_output=True, text=True, check=False)
    introduced = found.stdout.split()
    if not introduced:
        pytest.skip("no history here (a shallow clone): the revision before the arg is not known")
    older = subprocess.run(["git", "-C", str(ROOT), "rev-parse", f"{introduced[-1]}^"], capture_output=True,
                           text=True, check=False).stdout.strip()
    if len(older) != 40:
        pytest.skip("the revision before the arg is not in this clone")
    old = json.loads(json.dumps(predicate))
    old["buildDefinition"]["externalParameters"]["source"]["revision"] = older
    _, reasons = provenance.check(old, {**labels, provenance.REVISION_LABEL: older}, ROOT)
    assert not any("has no profile" in r for r in reasons), reasons
