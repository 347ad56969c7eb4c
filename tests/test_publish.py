"""Tag rules, registry references and the push stream's verdicts (no engine, no registry)."""

from __future__ import annotations

import http.server
import socket
import threading
from pathlib import Path

import pytest

from hpcimages.define import load_matrix
from hpcimages.define.tags import alias_tags, release_tag, render
from hpcimages.publish import push as push_mod
from hpcimages.publish import remote
from hpcimages.publish.remote import RegistryError, Target

ROOT = Path(__file__).resolve().parent.parent


def test_alias_rules_drop_empty_placeholders_with_their_dash():
    m = load_matrix(ROOT / "matrix.toml")
    cells = {c.ref: c for c in m.cells("ci")}
    rules = ("{python}-{mpi_minor}-{cuda}", "{python}-{cuda}", "{tag}")
    assert alias_tags(cells["mpi4py:py3.11-mpich4.3.2"], rules) == ["py3.11-mpich4.3", "py3.11"]
    assert alias_tags(cells["cuda-python:py3.11-mpich4.3.2-cuda12.8"], rules) == \
        ["py3.11-mpich4.3-cuda12.8", "py3.11-cuda12.8"]
    assert render("{cuda}-{python}", {"cuda": "", "python": "py3.13"}) == "py3.13"


def test_the_ci_profile_publishes_latest_once_per_family():
    ci = load_matrix(ROOT / "matrix.toml").profile("ci")
    families = [ref.split(":")[0] for ref in ci.publish.latest]
    assert len(families) == len(set(families)) and ci.publish.registry


@pytest.mark.parametrize(("labels", "expected"), [
    ({"org.opencontainers.image.revision": "3e7b7ac7350a74e2e89423802fca1ab205fe3660",
      "org.opencontainers.image.created": "2026-11-24T18:13:23Z"}, "py3.11-mpich4.3.2-3e7b7ac"),
    ({"org.opencontainers.image.revision": "3e7b7ac7350a74e2e89423802fca1ab205fe3660-dirty"},
     "py3.11-mpich4.3.2-3e7b7ac-dirty"),
    ({}, None),  # not built by this tool: no release tag, the cell is refused
])
def test_release_tags_come_from_the_image_labels(labels, expected):
    assert release_tag("{tag}-{revision}", "py3.11-mpich4.3.2", labels) == expected


def test_release_tags_by_date():
    labels = {"org.opencontainers.image.created": "2026-11-24T18:13:23Z"}
    assert release_tag("{tag}-{date}", "py3.13-mpich4.3.2", labels) == "py3.13-mpich4.3.2-20261124"


@pytest.mark.parametrize("value", ["hpc", "http://127.0.0.1:5000/hpc", "127.0.0.1:5000/HPC", "127.0.0.1:5000/hpc:tag",
                                   "127.0.0.1:5000/hpc\nx", "registry.example.org/hpc;rm -rf /", ""])
def test_a_target_that_is_no_registry_reference_is_refused(value):
    with pytest.raises(RegistryError, match="registry reference HOST"):
        Target.parse(value)


def test_targets_on_the_loopback_use_plain_http():
    assert Target.parse("127.0.0.1:5000/hpc").api == "http://127.0.0.1:5000/v2/"
    assert Target.parse("localhost:5000").repository("mpi4py") == "localhost:5000/mpi4py"
    remote = Target.parse("registry.example.org/centre/hpc")
    assert remote.api.startswith("https://") and remote.sif_repository("mpi4py") == \
        "registry.example.org/centre/hpc/sif/mpi4py"


class FakeStreamAPI:
    """The engine's push stream as docker-py hands it over: an error reported in-band after HTTP 200 (docker-py
    issues 3161/3277) cannot be produced on demand by a healthy registry, so it is replayed here."""

    def __init__(self, streams):
        self.streams = list(streams)
        self.calls = 0

    def push(self, repository, tag, stream, decode):
        self.calls += 1
        return iter(self.streams.pop(0))


class FakeClient:
    def __init__(self, streams):
        self.api = FakeStreamAPI(streams)


OK_STREAM = [{"status": "Pushed", "id": "abc"}, {"aux": {"Tag": "t", "Digest": "sha256:" + "1" * 64, "Size": 9}}]


def test_an_in_band_error_fails_the_push_even_after_http_200():
    client = FakeClient([[{"status": "Preparing", "id": "abc"}, {"errorDetail": {"message": "blob upload unknown"},
                                                                 "error": "blob upload unknown"}]])
    with pytest.raises(push_mod.PushError, match="blob upload unknown"):
        push_mod.push(client, "127.0.0.1:5000/hpc/x", "t", attempts=3, progress=lambda _: None, sleep=lambda _: None)
    assert client.api.calls == 1  # not a transient failure: no retry


def test_transient_failures_are_retried_with_backoff_then_succeed():
    refused = [{"error": "dial tcp 127.0.0.1:5000: connect: connection refused"}]
    client = FakeClient([refused, refused, OK_STREAM])
    waits: list[float] = []
    pushed = push_mod.push(client, "r/x", "t", attempts=3, progress=lambda _: None, sleep=waits.append)
    assert pushed.attempts == 3 and pushed.digest.endswith("1" * 64) and waits == [1.0, 2.0]


def test_a_refused_login_is_not_retried_and_names_docker_login():
    client = FakeClient([[{"error": "unauthorized: authentication required"}]] * 3)
    with pytest.raises(push_mod.PushError, match="docker login") as info:
        push_mod.push(client, "r/x", "t", attempts=3, progress=lambda _: None, sleep=lambda _: None)
    assert not info.value.transient and client.api.calls == 1


RETRYING = {"status": "Retrying in 5 seconds", "progressDetail": {}, "id": "abc"}


def test_a_registry_gone_mid_push_stops_the_push_at_the_engine_s_first_retry():
    client = FakeClient([[{"status": "Pushing", "id": "abc"}, RETRYING, *OK_STREAM]] * 2)
    asked: list[int] = []
    with pytest.raises(push_mod.PushError, match=r"after 2 attempts: the registry stopped answering .*Retrying in 5"):
        push_mod.push(client, "r/x", "t", attempts=2, progress=lambda _: None, sleep=lambda _: None,
                      answers=lambda: asked.append(1) or False)
    assert client.api.calls == 2 and len(asked) == 2  # each attempt stopped at its first retry, then tried again


def test_a_registry_that_still_answers_is_left_to_the_engine_s_own_retries():
    client = FakeClient([[{"status": "Pushing", "id": "abc"}, RETRYING, RETRYING, *OK_STREAM]])
    pushed = push_mod.push(client, "r/x", "t", attempts=2, progress=lambda _: None, sleep=lambda _: None,
                           answers=lambda: True)
    assert pushed.attempts == 1 and pushed.digest.endswith("1" * 64)


def test_a_registry_answers_with_any_status_and_not_when_nothing_listens():
    class Challenge(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="r"')
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Challenge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert remote.answers(remote.Target(f"127.0.0.1:{server.server_port}", "hpc"))  # a login challenge answers
    finally:
        server.shutdown()
        server.server_close()
    with socket.socket() as probe:  # a port nothing listens on: bound, closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert not remote.answers(remote.Target(f"127.0.0.1:{port}", "hpc"), timeout=2)


def test_a_stream_without_a_digest_is_no_success():
    client = FakeClient([[{"status": "Pushed", "id": "abc"}]] * 2)
    with pytest.raises(push_mod.PushError, match=r"after 2 attempts.*without reporting a digest"):
        push_mod.push(client, "r/x", "t", attempts=2, progress=lambda _: None, sleep=lambda _: None)
