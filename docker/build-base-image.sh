#!/bin/sh
# Build a minimal Debian base image without any image registry: debootstrap a root
# file system, then `docker import` it. The result can serve as BASE_IMAGE for
# docker/Dockerfile on machines that reach a Debian mirror but no registry.
#
# Usage: docker/build-base-image.sh [TAG]
#   TAG                 image tag to create (default genladder-base:bookworm)
# Environment:
#   DEBIAN_SUITE        Debian release to install (default bookworm, whose python3 is 3.11)
#   DEBIAN_MIRROR       mirror URL (default http://deb.debian.org/debian)
#   FORCE=1             rebuild even when TAG already exists
#
# Needs root, debootstrap and a running Docker engine. The image contains python3,
# python3-venv, python3-pip, ca-certificates and git, and sets no CMD or ENV.
set -eu

tag="${1:-genladder-base:bookworm}"
suite="${DEBIAN_SUITE:-bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$tag" >/dev/null 2>&1; then
    echo "build-base-image.sh: $tag exists; set FORCE=1 to rebuild it"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "build-base-image.sh: debootstrap needs root" >&2
    exit 1
fi
if ! command -v debootstrap >/dev/null 2>&1; then
    echo "build-base-image.sh: debootstrap not found; install it with: apt-get install -y debootstrap" >&2
    exit 1
fi

rootfs="$(mktemp -d /tmp/genladder-rootfs.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT

echo "build-base-image.sh: debootstrap $suite from $mirror into $rootfs"
debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,ca-certificates,git \
    "$suite" "$rootfs" "$mirror"

# Package lists and downloaded .deb files are not needed at run time.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*

echo "build-base-image.sh: importing $tag"
tar --numeric-owner -C "$rootfs" -c . | docker import \
    --message "debootstrap $suite from $mirror" - "$tag"
docker image inspect --format 'build-base-image.sh: {{.RepoTags}} {{.Size}} bytes' "$tag"
