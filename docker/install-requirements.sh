#!/bin/sh
# Install the host's pinned environment (requirements.lock) into the virtual
# environment /opt/venv of an image. Both Dockerfiles run it.
#
# Usage: install-requirements.sh cpu|cuda CONTEXT
#   CONTEXT holds requirements.lock, pyproject.toml and docker/ (with certs/ if any).
# Environment:
#   WHEELHOUSE_URL   a --find-links page of wheels (docker/wheelhouse served over HTTP);
#                    when set it is the only package source (--no-index)
#   EXTRA_INDEX_URL  a second package index for online builds (the CPU image uses
#                    PyTorch's CPU index, whose torch wheels need no nvidia-* wheels)
#
# Every package is installed with --no-deps at the version the lock pins, so the
# image holds the host's versions.
set -eu

flavor="$1"
context="$2"
venv=/opt/venv

# 1. Extra CA certificates, for proxies that intercept TLS: into the system trust store.
mkdir -p /usr/local/share/ca-certificates
if ls "$context"/docker/certs/*.crt >/dev/null 2>&1; then
    cp "$context"/docker/certs/*.crt /usr/local/share/ca-certificates/
    update-ca-certificates
fi
if [ ! -f /etc/ssl/certs/ca-certificates.crt ]; then
    echo "install-requirements.sh: /etc/ssl/certs/ca-certificates.crt is missing; use a base image with Debian's ca-certificates package" >&2
    exit 1
fi

# 2. Package sources: the wheelhouse alone, or the index (plus EXTRA_INDEX_URL).
if [ -n "${WHEELHOUSE_URL:-}" ]; then
    echo "install-requirements.sh: installing offline from $WHEELHOUSE_URL"
    set -- --no-index --find-links "$WHEELHOUSE_URL"
elif [ -n "${EXTRA_INDEX_URL:-}" ]; then
    set -- --extra-index-url "$EXTRA_INDEX_URL"
else
    set --
fi

# The CUDA image's venv includes the base image's packages, so a base that already
# contains the pinned torch (an official PyTorch image) gets no second copy of it.
if [ "$flavor" = cuda ]; then
    python3 -m venv --system-site-packages "$venv"
else
    python3 -m venv "$venv"
fi
# Bytecode is compiled once at the end, on every core, instead of file by file.
pip_install="$venv/bin/python -m pip --no-cache-dir --disable-pip-version-check --no-input install --no-deps --no-compile"

# 3. The pins. The CPU image first leaves out the CUDA libraries (nvidia-*, cuda-*)
# and triton, and adds the CUDA libraries back only when the torch wheel it found
# is a CUDA build, because such a torch cannot be imported without them.
lock="$context/requirements.lock"
cuda_pins=/tmp/cuda-pins.txt
grep -E '^(nvidia-|cuda-)' "$lock" >"$cuda_pins" || true
if [ "$flavor" = cpu ]; then
    grep -v -E '^(nvidia-|cuda-|triton==)' "$lock" >/tmp/pins.txt
else
    cp "$lock" /tmp/pins.txt
fi
$pip_install "$@" -r /tmp/pins.txt

torch_needs_cuda=$("$venv/bin/python" -c '
import importlib.metadata as md
print(int(any(r.startswith(("nvidia-", "cuda-")) for r in md.requires("torch") or [])))
')
if [ "$flavor" = cpu ] && [ "$torch_needs_cuda" = 1 ] && [ -s "$cuda_pins" ]; then
    echo "install-requirements.sh: this torch wheel is a CUDA build; installing its CUDA libraries too"
    $pip_install "$@" -r "$cuda_pins"
fi

# compileall exits 1 because torch ships a test helper written for Python 3.12
# (torch/testing/_internal/py312_intrinsics.py), which pip skips the same way.
"$venv/bin/python" -m compileall -q -j 0 "$venv" >/dev/null || true

# 4. Checks: pyproject.toml's dependencies are met by the pins, and torch computes.
"$venv/bin/python" - "$context/pyproject.toml" <<'PY'
import importlib.metadata as md
import sys
import tomllib

from packaging.requirements import Requirement

with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)["project"]
problems = []
for spec in project["dependencies"]:
    req = Requirement(spec)
    try:
        version = md.version(req.name)
    except md.PackageNotFoundError:
        problems.append(f"{req.name} is not installed (pyproject.toml requires {spec})")
        continue
    if not req.specifier.contains(version, prereleases=True):
        problems.append(f"{req.name} {version} does not satisfy {spec}")
if problems:
    sys.exit("requirements.lock does not satisfy pyproject.toml:\n  " + "\n  ".join(problems))
PY
"$venv/bin/python" -c '
import torch
x = torch.arange(6.0).reshape(2, 3)
assert (x @ x.T).tolist() == [[5.0, 14.0], [14.0, 50.0]]
print("install-requirements.sh: torch", torch.__version__, "CUDA build" if torch.version.cuda else "CPU build")
'
