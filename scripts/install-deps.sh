#!/bin/sh
# Install the Debian packages buildsys needs, when any is missing.
set -eu
# docker-registry and apache2-utils (htpasswd): the loopback registry the publish/cache tests start;
# zstd: registry base images whose layers are zstd-compressed; gnupg: the signing keys of the test apt repositories (tests/aptrepo.py);
# skopeo: a client no one here wrote, which pulls published images in the tests (Debian 12 builds it with sigstore
# verification patched out, so it finds buildsys's cosign signatures but cannot check them: docs/shipping.md);
# golang-docker-credential-helpers and pass: a real docker credential helper (docker-credential-pass) the registry
# client is tested with; docker-compose: Compose v1 (1.29, Debian 12 has no `docker compose` plugin), which `buildsys compose` files are tested with.
PKGS="docker.io mmdebstrap apt-utils gnupg debian-archive-keyring util-linux python3-venv ca-certificates docker-registry apache2-utils zstd skopeo golang-docker-credential-helpers pass openssh-server docker-compose"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing Debian packages:$missing" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
