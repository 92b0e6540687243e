#!/bin/sh
# Start a Docker engine on this machine, for the tests marked `docker`.
#
# Installs Debian's docker.io and debootstrap with apt-get when they are missing,
# then starts dockerd in the background unless an engine is already reachable, and
# waits until `docker info` succeeds. Running it again changes nothing. Needs root on
# Debian 12 (CI runs it before the tests).
#
# Environment:
#   DOCKERD_LOG      dockerd's log file (default /var/log/dockerd.log)
#   DOCKERD_TIMEOUT  seconds to wait for the engine (default 60)
set -eu

log_file="${DOCKERD_LOG:-/var/log/dockerd.log}"
timeout="${DOCKERD_TIMEOUT:-60}"

engine_reachable() {
    docker info >/dev/null 2>&1
}

missing=""
command -v dockerd >/dev/null 2>&1 || missing="$missing docker.io"
command -v docker >/dev/null 2>&1 || missing="$missing docker.io"
command -v debootstrap >/dev/null 2>&1 || missing="$missing debootstrap"
if [ -n "$missing" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "docker-engine.sh: missing packages:$missing; run this script as root to install them" >&2
        exit 1
    fi
    echo "docker-engine.sh: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086 # one word per package
    apt-get install -y -qq --no-install-recommends $(echo $missing | tr ' ' '\n' | sort -u) >/dev/null
fi

if engine_reachable; then
    echo "docker-engine.sh: engine already reachable"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "docker-engine.sh: no Docker engine is reachable and starting dockerd needs root" >&2
    exit 1
fi

# A stale pid file from a dockerd that died keeps a new one from starting.
pid_file=/var/run/docker.pid
if [ -f "$pid_file" ] && ! kill -0 "$(cat "$pid_file")" 2>/dev/null; then
    rm -f "$pid_file"
fi

if [ ! -f "$pid_file" ]; then
    echo "docker-engine.sh: starting dockerd, log in $log_file"
    # setsid detaches dockerd from this shell, so it outlives the CI step.
    setsid dockerd >>"$log_file" 2>&1 </dev/null &
fi

waited=0
until engine_reachable; do
    if [ "$waited" -ge "$timeout" ]; then
        echo "docker-engine.sh: dockerd not reachable after ${timeout}s; last lines of $log_file:" >&2
        tail -n 20 "$log_file" >&2 || true
        exit 1
    fi
    sleep 1
    waited=$((waited + 1))
done
echo "docker-engine.sh: engine reachable after ${waited}s"
