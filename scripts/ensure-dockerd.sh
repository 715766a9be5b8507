#!/bin/sh
# Start dockerd in the background when no engine answers, then wait until it does.
# Used by `make dockerd`, `make demo`, `make test` and .ci/run.
set -eu
if docker info >/dev/null 2>&1; then
    exit 0
fi
if [ -n "${DOCKER_HOST:-}" ]; then
    echo "DOCKER_HOST=$DOCKER_HOST does not answer; not starting a local dockerd" >&2
    exit 4
fi
command -v dockerd >/dev/null 2>&1 || { echo "dockerd is not installed: run \`make install\` (Debian package docker.io)" >&2; exit 4; }
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
log=${DOCKERD_LOG:-/tmp/buildsys-dockerd.log}
echo "starting dockerd in the background (log: $log)" >&2
# setsid: the daemon must outlive this script and the make that ran it.
$SUDO setsid dockerd >"$log" 2>&1 </dev/null &
i=0
until docker info >/dev/null 2>&1; do
    i=$((i + 1))
    if [ "$i" -ge 60 ]; then
        echo "dockerd did not answer within 60 s; last lines of $log:" >&2
        tail -n 20 "$log" >&2 || true
        exit 4
    fi
    sleep 1
done
echo "dockerd is up: $(docker version --format '{{.Server.Version}}')" >&2
