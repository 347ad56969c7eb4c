#!/usr/bin/env bash
# The one set-up command (see README): everything `invoke build` and `nox -s tests` need on this machine.
#   1. Debian packages, when missing: a Docker engine (docker.io), debootstrap, and for `invoke publish` the
#      distribution registry (docker-registry) and skopeo, and for the catalogue site's browser test Chromium and
#      its WebDriver (chromium, chromium-driver)
#   2. a running Docker engine, started when none answers
#   3. .venv with the project's pinned Python dependencies
#   4. the offline base images (invoke bases), bootstrapped from the configured Debian mirror
#   5. the tools image (invoke tools): Apptainer, Slurm and munge for .sif conversion and the test cluster
#   6. the project's registry on 127.0.0.1:5000 (invoke registry), where `invoke publish --profile ci` pushes
# Safe to run again: every step does nothing when its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else die "need root for: $* (run this script as root, or install sudo)"; fi
}

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v docker-registry >/dev/null || missing+=(docker-registry)
command -v skopeo >/dev/null || missing+=(skopeo)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]} (apt)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # the package enables a system service with Debian's config; the project starts its own (`invoke registry`)
    if [[ " ${missing[*]} " == *" docker-registry "* ]] && command -v systemctl >/dev/null; then
        as_root systemctl disable --now docker-registry >/dev/null 2>&1 || true
    fi
fi

engine_up() { timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }
if ! engine_up && pgrep -x dockerd >/dev/null; then
    # an engine that is starting, or still shutting down: a second one would refuse to start beside it
    log "waiting for the running dockerd to answer or exit"
    for _ in $(seq 1 60); do engine_up && break; pgrep -x dockerd >/dev/null || break; sleep 1; done
fi
if ! engine_up; then
    log "starting the Docker engine (log: /var/log/hpcimages-dockerd.log)"
    as_root sh -c 'setsid dockerd >>/var/log/hpcimages-dockerd.log 2>&1 < /dev/null &'
    for _ in $(seq 1 60); do engine_up && break; sleep 1; done
    engine_up || die "the Docker engine did not start; see the end of /var/log/hpcimages-dockerd.log"
fi
log "Docker engine $(docker version --format '{{.Server.Version}}') is running"

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "Python 3.11 or newer is needed as python3"
if [ ! -x .venv/bin/python ]; then
    log "creating .venv"
    python3 -m venv .venv
fi
stamp=".venv/.hpcimages-deps-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -e "$stamp" ]; then
    log "installing the pinned Python dependencies into .venv"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test,bench]'
    rm -f .venv/.hpcimages-deps-*
    touch "$stamp"
fi

log "offline base images"
as_root .venv/bin/invoke bases --profile offline
log "tools image (Apptainer, Slurm, munge)"
as_root .venv/bin/invoke tools
log "the project's registry for invoke publish (invoke registry)"
as_root .venv/bin/invoke registry || log "warning: the registry did not start (see above); invoke publish needs one"
log "ready: .venv/bin/invoke build --all --profile ci   |   .venv/bin/nox -s tests"
