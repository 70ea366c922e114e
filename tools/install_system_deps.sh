#!/bin/sh
# The Debian packages the test suite runs besides Python: haproxy, the load balancer that
# tests/scaleout puts in front of two `ovms-graph serve` replicas (deploy/haproxy/).
#
# Idempotent: does nothing when every program is already on PATH (or in /usr/sbin). Otherwise it needs
# apt-get and root (or sudo), and runs `apt-get update` first only when apt knows no candidate yet.
set -eu

PACKAGES="haproxy"

missing=""
for package in $PACKAGES; do
    if ! command -v "$package" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$package" ]; then
        missing="$missing $package"
    fi
done
[ -z "$missing" ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: apt-get not found; install these packages with your system's package manager:$missing" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
for package in $missing; do
    if ! apt-cache show "$package" >/dev/null 2>&1; then
        $sudo apt-get update -q
        break
    fi
done
# shellcheck disable=SC2086  # one word per package
$sudo apt-get install -y -q --no-install-recommends $missing
