"""Run pipeline stages in the project's Docker image, through the Docker SDK for Python.

Commands (run from the repository root)::

    python -m genladder.container build [--cuda] [--base-image IMAGE]
    python -m genladder.container run [--gpus all|0,1] [--image TAG] [--build] STAGE [ARGS...]
    python -m genladder.container tag [--cuda]

``run train ar`` runs ``python stages/train.py ar`` in a container. Setting
``runtime.container: true`` in params.yaml does the same for every stage that DVC runs:
:func:`genladder.runtime.stage_entry` calls :func:`reexec_in_container`.

A container run is meant to be indistinguishable from a host run, for DVC and for the
files it writes:

* the repository is bind-mounted at the same path and is the working directory, and
  its ``src/`` comes first on PYTHONPATH, so the container runs the working tree's code
  (the image holds only the dependencies, at requirements.lock's pins);
* the process runs as the caller's uid:gid, so outputs belong to the caller, with HOME
  on a writable tmpfs;
* MLFLOW_* and DVC_* variables are forwarded, and the network and IPC namespaces are
  the host's, so a tracking URI such as http://127.0.0.1:5000 means the same server.

Images are tagged ``genladder:<flavor>-<12 hex>``, a hash of the files they are built
from (the Dockerfile and :data:`RECIPE_FILES`). ``build`` writes that tag to
``docker/image-<flavor>.tag``, a file DVC stages may depend on. An identical rebuild
leaves its bytes unchanged, and a changed recipe changes them.
"""

from __future__ import annotations

import argparse
import enum
import functools
import hashlib
import http.server
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from genladder.runtime import INSIDE_CONTAINER_ENV, repo_root, setup_logging, write_text

log = logging.getLogger(__name__)

IMAGE_REPOSITORY = "genladder"
# HOME inside the container: a tmpfs anyone may write, because the caller's uid has no
# home folder (and often no passwd entry) in the image.
CONTAINER_HOME = "/home/genladder"
FORWARDED_PREFIXES = ("MLFLOW_", "DVC_")
# Thread counts and cuBLAS workspace settings change floating-point results, so a
# container run must see the host's values.
FORWARDED_NAMES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUBLAS_WORKSPACE_CONFIG")
ENGINE_FIX = (
    "start the engine (`sudo dockerd`, `sudo systemctl start docker` or `sudo sh .ci/docker-engine.sh`) "
    "or point DOCKER_HOST at a running one"
)


class Flavor(str, enum.Enum):
    cpu = "cpu"
    cuda = "cuda"

    @property
    def dockerfile(self) -> str:
        return "docker/Dockerfile" if self is Flavor.cpu else "docker/Dockerfile.cuda"


# Repository files that determine an image's contents, hashed into its tag.
# The base image, docker/certs/ and docker/wheelhouse/ are not hashed.
RECIPE_FILES = ("docker/install-requirements.sh", "requirements.lock", "pyproject.toml")
# Wheels for offline builds, e.g. from `pip wheel --no-deps -r requirements.lock -w docker/wheelhouse`.
WHEELHOUSE = "docker/wheelhouse"


class ContainerError(RuntimeError):
    """A container could not be built or started; the message names the fix."""

    def __init__(self, message: str, exit_status: int = 2):
        super().__init__(message)
        self.exit_status = exit_status


def flavor_for(gpus: str | None) -> Flavor:
    """Return the CUDA flavor when GPUs are requested, else the CPU one."""
    return Flavor.cuda if gpus else Flavor.cpu


# ---------------------------------------------------------------------------
# Tags
# ---------------------------------------------------------------------------


def content_hash(root: Path, flavor: Flavor) -> str:
    """Return 12 hex digits of SHA-256 over the flavor's Dockerfile and the recipe files."""
    digest = hashlib.sha256()
    for name in (flavor.dockerfile, *RECIPE_FILES):
        path = root / name
        if not path.is_file():
            raise ContainerError(f"{path} not found; the image recipe is incomplete in {root}")
        digest.update(name.encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def image_tag(root: Path, flavor: Flavor) -> str:
    return f"{IMAGE_REPOSITORY}:{flavor.value}-{content_hash(root, flavor)}"


def tag_file(root: Path, flavor: Flavor) -> Path:
    """Return the file that records the last built tag of a flavor, for DVC stage deps."""
    return root / "docker" / f"image-{flavor.value}.tag"


# ---------------------------------------------------------------------------
# Engine
# ---------------------------------------------------------------------------


def connect():
    """Return a docker.DockerClient whose engine responded to a ping, or raise ContainerError."""
    import docker
    from docker.errors import DockerException

    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        client = docker.from_env()
        client.ping()
    except DockerException as exc:
        raise ContainerError(f"cannot connect to the Docker engine at {where} ({exc}); {ENGINE_FIX}") from None
    return client


def find_image(client, tag: str, flavor: Flavor, explicit: bool):
    """Return the image `tag`, or raise ContainerError naming the command that makes it."""
    from docker.errors import ImageNotFound

    try:
        return client.images.get(tag)
    except ImageNotFound:
        pass
    if explicit:
        raise ContainerError(
            f"image {tag} (runtime.image or --image) not found in the Docker engine; build or load it, "
            "or unset it to use the image that `python -m genladder.container build` makes"
        )
    cuda = " --cuda" if flavor is Flavor.cuda else ""
    raise ContainerError(
        f"image {tag} not found: no image was built from the current {flavor.dockerfile}, "
        f"requirements.lock and pyproject.toml; build it with `python -m genladder.container build{cuda}` "
        "(add --base-image IMAGE where no registry is reachable, see docker/build-base-image.sh)"
    )


def build_image(
    client,
    root: Path,
    flavor: Flavor,
    base_image: str | None = None,
    force: bool = False,
) -> str:
    """Build the flavor's image from `root`, tag it by content hash and write the tag file.

    An image that already has the tag was built from the same recipe and is reused
    unless `force` is true. Build output is logged line by line. Raises ContainerError
    (exit status 1) when the build fails, with the engine's last message.
    """
    from docker.errors import ImageNotFound

    tag = image_tag(root, flavor)
    if not force:
        try:
            client.images.get(tag)
        except ImageNotFound:
            pass
        else:
            log.info("image %s exists, reusing it (--force rebuilds it)", tag)
            write_text(tag_file(root, flavor), tag + "\n")
            return tag

    build_args = {}
    if base_image:
        build_args["BASE_IMAGE"] = base_image
    wheelhouse = root / WHEELHOUSE
    with serve_wheelhouse(wheelhouse) as url:
        if url:
            build_args["WHEELHOUSE_URL"] = url
            log.info("serving %s to the build at %s", wheelhouse.relative_to(root), url)
        log.info("building %s from %s (BASE_IMAGE %s)", tag, flavor.dockerfile, base_image or "default")
        _stream_build(client, root, flavor, tag, build_args)

    write_text(tag_file(root, flavor), tag + "\n")
    log.info("built %s; tag written to %s", tag, tag_file(root, flavor).relative_to(root))
    return tag


def _stream_build(client, root: Path, flavor: Flavor, tag: str, build_args: dict[str, str]) -> None:
    """Run the engine's build and log its output; raise ContainerError (status 1) on failure."""
    from docker.errors import APIError

    # The legacy builder's API streams JSON lines: "stream" contains build output and
    # "error" the reason of a failure. Host networking lets RUN steps reach the
    # wheelhouse server and any proxy on the host's loopback.
    try:
        chunks = client.api.build(
            path=str(root),
            dockerfile=flavor.dockerfile,
            tag=tag,
            buildargs=build_args,
            rm=True,
            forcerm=True,
            network_mode="host",
            decode=True,
        )
        for chunk in chunks:
            if "error" in chunk:
                raise ContainerError(_build_failure(chunk["error"], build_args.get("BASE_IMAGE")), exit_status=1)
            for line in chunk.get("stream", "").splitlines():
                if line.strip():
                    log.info("build: %s", line.rstrip())
    except APIError as exc:
        raise ContainerError(_build_failure(str(exc), build_args.get("BASE_IMAGE")), exit_status=1) from None


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class names it so
        log.debug("wheelhouse server: " + format, *args)


@contextmanager
def serve_wheelhouse(folder: Path) -> Iterator[str | None]:
    """Serve `folder` on a free loopback port while the block runs; yield its URL, or None when it contains no wheels."""
    if not any(folder.glob("*.whl")):
        yield None
        return
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="wheelhouse-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _build_failure(reason: str, base_image: str | None) -> str:
    message = f"image build failed: {reason.strip()}"
    if not base_image:
        message += (
            "; if no image registry is reachable, build a local base image with "
            "`sudo sh docker/build-base-image.sh` and pass --base-image genladder-base:bookworm"
        )
    return message


# ---------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------


def device_requests(gpus: str | None) -> list:
    """Translate runtime.gpus ("all" or "0,1") into Docker DeviceRequests."""
    from docker.types import DeviceRequest

    if not gpus:
        return []
    if gpus == "all":
        return [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    ids = [part.strip() for part in gpus.split(",")]
    if not all(re.fullmatch(r"\d+", i) for i in ids):
        raise ContainerError(f"invalid GPU list {gpus!r}; use 'all' or comma-separated indices such as '0,1'")
    return [DeviceRequest(device_ids=ids, capabilities=[["gpu"]])]


def container_environment(root: Path, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Return the variables a container run gets: forwarded ones plus the launcher's own."""
    environ = dict(os.environ if environ is None else environ)
    env = {
        name: value
        for name, value in environ.items()
        if name.startswith(FORWARDED_PREFIXES) or name in FORWARDED_NAMES
    }
    env.update(
        {
            INSIDE_CONTAINER_ENV: "1",
            "HOME": CONTAINER_HOME,
            "PYTHONPATH": str(root / "src"),
        }
    )
    return env


def bind_mounts(root: Path, workdir: Path) -> dict[str, dict[str, str]]:
    """Mount the repository, and the working directory when it lies outside it, at their host paths."""
    folders = [root]
    if not workdir.is_relative_to(root):
        folders.append(workdir)
    return {str(folder): {"bind": str(folder), "mode": "rw"} for folder in folders}


def run_command(
    command: Sequence[str],
    *,
    root: Path,
    workdir: Path | None = None,
    gpus: str | None = None,
    image: str | None = None,
    build: bool = False,
    base_image: str | None = None,
    stdout: IO[bytes] | None = None,
    stderr: IO[bytes] | None = None,
) -> int:
    """Run `command` in a container and return its exit status, streaming its output.

    `image` names a tag to use as is. Without it, the run uses the content-hashed tag of
    the flavor that `gpus` selects, built first if it is missing and `build` is true.
    """
    root = root.resolve()
    workdir = (workdir or root).resolve()
    flavor = flavor_for(gpus)
    requests = device_requests(gpus)
    client = connect()

    tag = image or image_tag(root, flavor)
    try:
        find_image(client, tag, flavor, explicit=image is not None)
    except ContainerError:
        if image is not None or not build:
            raise
        build_image(client, root, flavor, base_image)

    log.info(
        "running `%s` in %s as %d:%d, GPUs %s", " ".join(command), tag, os.getuid(), os.getgid(), gpus or "none"
    )
    from docker.errors import APIError

    try:
        container = client.containers.create(
            tag,
            command=list(command),
            working_dir=str(workdir),
            user=f"{os.getuid()}:{os.getgid()}",
            environment=container_environment(root),
            volumes=bind_mounts(root, workdir),
            tmpfs={CONTAINER_HOME: "mode=1777"},
            ipc_mode="host",
            network_mode="host",
            device_requests=requests,
            # docker-init as PID 1 passes SIGTERM and SIGINT on to the stage.
            init=True,
            labels={"org.genladder.command": " ".join(command)},
        )
        return _run_to_completion(container, stdout or sys.stdout.buffer, stderr or sys.stderr.buffer)
    except APIError as exc:
        message = f"starting a container from {tag} failed: {exc.explanation or exc}"
        if requests:
            message += "; GPUs need the NVIDIA Container Toolkit on the host (check `docker run --gpus all ...`)"
        raise ContainerError(message) from None


def _run_to_completion(container, stdout: IO[bytes], stderr: IO[bytes]) -> int:
    """Start `container`, copy its output until it exits, remove it and return its status."""
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is threading.main_thread():
        # DVC and CI stop a stage with SIGTERM; turn it into an exception so that the
        # container is stopped too instead of running on unattended.
        signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        container.start()
        pumps = [
            threading.Thread(
                target=_copy_stream, args=(container.logs(stream=True, follow=True, stderr=False), stdout), daemon=True
            ),
            threading.Thread(
                target=_copy_stream, args=(container.logs(stream=True, follow=True, stdout=False), stderr), daemon=True
            ),
        ]
        for pump in pumps:
            pump.start()
        status = container.wait(timeout=None)
        for pump in pumps:
            pump.join()
        code = int(status.get("StatusCode", 1))
        if status.get("Error"):
            log.error("container %s: %s", container.short_id, status["Error"])
        return code
    except KeyboardInterrupt:
        log.warning("interrupted; stopping container %s", container.short_id)
        container.stop(timeout=10)
        return 130
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)
        container.remove(force=True)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _copy_stream(chunks: Iterable[bytes], sink: IO[bytes]) -> None:
    for chunk in chunks:
        sink.write(chunk)
        sink.flush()


def stage_command(root: Path, stage: str, args: Sequence[str]) -> list[str]:
    """Return the command of a stage script (``train ar`` -> ``python stages/train.py ar``)."""
    script = root / "stages" / f"{stage}.py"
    if not script.is_file():
        known = sorted(p.stem for p in (root / "stages").glob("*.py"))
        raise ContainerError(f"stage {stage!r} not found: {script} does not exist (known stages: {known})")
    return ["python", f"stages/{stage}.py", *args]


def reexec_in_container(runtime_config, argv: Sequence[str] | None = None) -> int:
    """Run the current stage command again in a container and return its exit status.

    Called by stage_entry when runtime.container is true outside a container. Errors
    are logged and give exit status 2 (or 1 for a failed build).
    """
    argv = list(sys.orig_argv[1:] if argv is None else argv)
    try:
        return run_command(
            ["python", *argv],
            root=repo_root(),
            workdir=Path.cwd(),
            gpus=runtime_config.gpus,
            image=runtime_config.image,
        )
    except ContainerError as exc:
        log.error("%s", exc)
        return exc.exit_status


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m genladder.container", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", help="build the image and write its tag to docker/image-<flavor>.tag")
    build.add_argument("--cuda", action="store_true", help="build docker/Dockerfile.cuda instead of docker/Dockerfile")
    build.add_argument("--base-image", help="BASE_IMAGE build argument (default: the Dockerfile's)")
    build.add_argument("--force", action="store_true", help="rebuild even when the tag exists, e.g. after a base image update")

    run = commands.add_parser("run", help="run a stage script in a container, e.g. `run train ar`")
    run.add_argument("--gpus", help="'all' or device indices such as '0,1'; selects the CUDA image")
    run.add_argument("--image", help="image tag to run instead of the content-hashed one")
    run.add_argument("--build", action="store_true", help="build the image first when it is missing")
    run.add_argument("--base-image", help="BASE_IMAGE build argument, used with --build")
    run.add_argument("stage", help="a script name in stages/, e.g. prepare, train, sample")
    run.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the stage script")

    tag = commands.add_parser("tag", help="print the content-hashed tag of the current recipe")
    tag.add_argument("--cuda", action="store_true", help="the tag of the CUDA image")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    options = _parser().parse_args(argv)
    root = repo_root()
    try:
        if options.command == "tag":
            sys.stdout.write(image_tag(root, Flavor.cuda if options.cuda else Flavor.cpu) + "\n")
            return 0
        if options.command == "build":
            flavor = Flavor.cuda if options.cuda else Flavor.cpu
            build_image(connect(), root, flavor, options.base_image, force=options.force)
            return 0
        return run_command(
            stage_command(root, options.stage, options.args),
            root=root,
            gpus=options.gpus,
            image=options.image,
            build=options.build,
            base_image=options.base_image,
        )
    except ContainerError as exc:
        log.error("%s", exc)
        return exc.exit_status


if __name__ == "__main__":
    sys.exit(main())
