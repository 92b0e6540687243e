"""Stages in the Docker image: the launcher, its error paths, and host/container equality.

Tests marked `docker` need a running engine and skip, with the reason, when none is
reachable (`sudo sh .ci/docker-engine.sh` starts one). They build a local Debian base image with
debootstrap (root, once; cached by tag) and the project image from it with the
wheelhouse, which takes minutes the first time.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import BIN, REPO, dvc, make_pipeline_copy, pipeline_env, run

from genladder import container
from genladder.config import ParamsError, validate_params
from genladder.container import ContainerError, Flavor

BASE_IMAGE = "genladder-base:bookworm"
WHEELHOUSE = REPO / "docker" / "wheelhouse"
VARIANT = "diffusion"

# Settings small enough for seconds per stage: 8x8 digits, a narrow backbone, 3 steps.
TINY_PARAMS = {
    "data": {"source": "digits", "image_size": 8, "levels": 16, "max_per_class": 30},
    "backbone": {"width": 8, "channel_mult": [1, 2], "num_res_blocks": 1},
    "train": {"steps": 3, "batch_size": 16, "warmup_steps": 1, "checkpoint_every": 3, "log_every": 1},
    "variants": {VARIANT: {"paradigm": "diffusion", "timesteps": 20, "schedule": "cosine", "prediction": "eps"}},
    "samplers": {"ddim5": {"variant": VARIANT, "method": "ddim", "steps": 5}},
}


def write_params(repo: Path, **runtime) -> None:
    """Write the repository's params.yaml merged with TINY_PARAMS and the given runtime keys."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in TINY_PARAMS.items():
        if section in ("variants", "samplers"):
            params[section] = values
        else:
            params[section].update(values)
    params["runtime"].update(runtime)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


# ---------------------------------------------------------------------------
# Without an engine
# ---------------------------------------------------------------------------


def test_tag_is_content_hash(tmp_path):
    repo = tmp_path / "recipe"
    for name in ("docker/Dockerfile", "docker/Dockerfile.cuda", *container.RECIPE_FILES):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, repo / name)

    cpu = container.image_tag(repo, Flavor.cpu)
    assert cpu == container.image_tag(REPO, Flavor.cpu)
    assert cpu.startswith("genladder:cpu-")
    assert len(cpu.split("-")[-1]) == 12
    cuda = container.image_tag(repo, Flavor.cuda)
    assert cuda.startswith("genladder:cuda-")
    assert cuda.split("-")[-1] != cpu.split("-")[-1]

    # Each recipe file changes the CPU tag; the CUDA Dockerfile changes only the CUDA tag.
    for name in ("docker/Dockerfile", *container.RECIPE_FILES):
        original = (repo / name).read_bytes()
        (repo / name).write_bytes(original + b"\n")
        assert container.image_tag(repo, Flavor.cpu) != cpu, name
        (repo / name).write_bytes(original)
    assert container.image_tag(repo, Flavor.cpu) == cpu
    (repo / "docker/Dockerfile.cuda").write_bytes(b"FROM scratch\n")
    assert container.image_tag(repo, Flavor.cpu) == cpu
    assert container.image_tag(repo, Flavor.cuda) != cuda


def test_tag_needs_every_recipe_file(tmp_path):
    with pytest.raises(ContainerError, match="docker/Dockerfile not found"):
        container.image_tag(tmp_path, Flavor.cpu)


@pytest.mark.parametrize(
    ("gpus", "count", "device_ids"),
    [("all", -1, None), ("0", None, ["0"]), ("0,1", None, ["0", "1"]), ("1, 3", None, ["1", "3"])],
)
def test_gpus_become_device_requests(gpus, count, device_ids):
    (request,) = container.device_requests(gpus)
    assert request["Capabilities"] == [["gpu"]]
    if count is not None:
        assert request["Count"] == count
    if device_ids is not None:
        assert request["DeviceIDs"] == device_ids
    assert container.flavor_for(gpus) is Flavor.cuda


def test_no_gpus_means_cpu_image():
    assert container.device_requests(None) == []
    assert container.flavor_for(None) is Flavor.cpu


@pytest.mark.parametrize("gpus", ["all", "0", "0,1", "2,3,10", None])
def test_runtime_gpus_accepts(gpus):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["runtime"]["gpus"] = gpus
    assert validate_params(raw).runtime.gpus == gpus


@pytest.mark.parametrize("gpus", ["ALL", "gpu0", "0,", ",1", "0;1", "", "-1"])
def test_runtime_gpus_rejects(gpus):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["runtime"]["gpus"] = gpus
    with pytest.raises(ParamsError) as info:
        validate_params(raw)
    assert "runtime.gpus" in str(info.value)
    assert repr(gpus) in str(info.value)
    assert "'0,1'" in str(info.value)
    with pytest.raises(ContainerError, match="invalid GPU list"):
        container.device_requests(gpus or "x")


def test_environment_forwards_mlflow_and_dvc(tmp_path):
    host = {
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
        "MLFLOW_TRACKING_TOKEN": "t",
        "DVC_ROOT": "/r",
        "DVC_EXP_NAME": "exp-1",
        "OMP_NUM_THREADS": "2",
        "HOME": "/root",
        "PATH": "/usr/bin",
        "PYTHONPATH": "/elsewhere",
        "AWS_SECRET_ACCESS_KEY": "s",
    }
    env = container.container_environment(tmp_path, host)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN", "DVC_ROOT", "DVC_EXP_NAME", "OMP_NUM_THREADS"):
        assert env[name] == host[name], name
    for name in ("PATH", "AWS_SECRET_ACCESS_KEY"):
        assert name not in env, name
    assert env["HOME"] == container.CONTAINER_HOME
    assert env["PYTHONPATH"] == str(tmp_path / "src")
    assert env["GENLADDER_IN_CONTAINER"] == "1"


def test_mounts_repository_and_outside_workdir(tmp_path):
    repo = tmp_path / "repo"
    inside = container.bind_mounts(repo, repo / "sub")
    assert inside == {str(repo): {"bind": str(repo), "mode": "rw"}}
    outside = container.bind_mounts(repo, tmp_path / "other")
    assert set(outside) == {str(repo), str(tmp_path / "other")}
    assert all(spec["bind"] == path for path, spec in outside.items())


def test_unknown_stage_lists_known(tmp_path):
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "prepare.py").write_text("")
    with pytest.raises(ContainerError) as info:
        container.stage_command(tmp_path, "trian", ["ar"])
    assert "'trian'" in str(info.value)
    assert "['prepare']" in str(info.value)
    assert container.stage_command(tmp_path, "prepare", []) == ["python", "stages/prepare.py"]


@pytest.fixture
def tiny_stage_repo(tmp_path: Path) -> Path:
    """A folder with params.yaml and one stage script that writes a marker file."""
    repo = tmp_path / "repo"
    (repo / "stages").mkdir(parents=True)
    (repo / "dvc.yaml").write_text("stages: {}\n")
    (repo / "stages" / "marker.py").write_text(
        "from pathlib import Path\n"
        "from genladder.runtime import stage_entry\n\n"
        "@stage_entry\n"
        "def main():\n"
        "    Path('ran-on-host').write_text('yes')\n\n"
        "main()\n"
    )
    write_params(repo, container=True)
    return repo


def engine_unreachable_env(tmp_path: Path, kind: str) -> dict:
    """Environment whose DOCKER_HOST is a unix socket in tmp_path with no engine behind it."""
    path = tmp_path / "docker.sock"
    if kind == "stale socket":
        # A socket file that nothing listens on, as a crashed daemon leaves behind.
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(path))
    env = pipeline_env(tmp_path)
    env["DOCKER_HOST"] = f"unix://{path}"
    return env


@pytest.mark.parametrize("kind", ["missing socket", "stale socket"])
def test_stage_without_engine_exits_2(tiny_stage_repo, tmp_path, kind):
    env = engine_unreachable_env(tmp_path, kind)
    result = run([sys.executable, "stages/marker.py"], tiny_stage_repo, env, check=False)
    assert result.returncode == 2, result.stderr
    assert f"cannot connect to the Docker engine at unix://{tmp_path}/docker.sock" in result.stderr
    assert "dockerd" in result.stderr
    assert not (tiny_stage_repo / "ran-on-host").exists()


def test_launcher_without_engine_exits_2(tiny_stage_repo, tmp_path):
    env = engine_unreachable_env(tmp_path, "missing socket")
    result = run([sys.executable, "-m", "genladder.container", "run", "marker"], tiny_stage_repo, env, check=False)
    assert result.returncode == 2, result.stderr
    assert "cannot connect to the Docker engine" in result.stderr
    assert ".ci/docker-engine.sh" in result.stderr


def test_inside_container_runs_in_place(tiny_stage_repo, tmp_path):
    # With the marker variable set, runtime.container: true must not start another container.
    env = engine_unreachable_env(tmp_path, "missing socket")
    env["GENLADDER_IN_CONTAINER"] = "1"
    run([sys.executable, "stages/marker.py"], tiny_stage_repo, env)
    assert (tiny_stage_repo / "ran-on-host").read_text() == "yes"


# ---------------------------------------------------------------------------
# With an engine
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine():
    try:
        return container.connect()
    except ContainerError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def base_image(engine) -> str:
    """Return the debootstrap base image, building it when the engine lacks it (needs root)."""
    from docker.errors import ImageNotFound

    try:
        engine.images.get(BASE_IMAGE)
    except ImageNotFound:
        result = subprocess.run(
            ["sh", str(REPO / "docker" / "build-base-image.sh"), BASE_IMAGE], capture_output=True, text=True
        )
        assert result.returncode == 0, f"build-base-image.sh failed:\n{result.stdout}\n{result.stderr}"
    return BASE_IMAGE


def fill_wheelhouse() -> None:
    """Fill docker/wheelhouse from requirements.lock with the README's command, if it is empty."""
    if WHEELHOUSE.is_dir() and any(WHEELHOUSE.glob("*.whl")):
        return
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-r", str(REPO / "requirements.lock"), "-w"]
    result = subprocess.run([*command, str(WHEELHOUSE)], capture_output=True, text=True)
    assert result.returncode == 0, f"filling {WHEELHOUSE} failed:\n{result.stderr[-3000:]}"


def link_wheelhouse(repo: Path) -> None:
    """Give the copy the repository's wheelhouse as hard links (copies across file systems)."""
    target = repo / "docker" / "wheelhouse"
    target.mkdir(parents=True, exist_ok=True)
    for wheel in WHEELHOUSE.glob("*.whl"):
        try:
            os.link(wheel, target / wheel.name)
        except OSError:
            shutil.copy2(wheel, target / wheel.name)


@pytest.fixture(scope="module")
def image_repo(engine, base_image, tmp_path_factory) -> tuple[Path, str]:
    """A git + DVC copy of the repository whose CPU image is built (or reused) from the base image."""
    fill_wheelhouse()
    repo = make_pipeline_copy(tmp_path_factory.mktemp("container") / "repo")
    shutil.copy2(REPO / ".dockerignore", repo / ".dockerignore")
    write_params(repo)
    link_wheelhouse(repo)
    env = pipeline_env(repo)
    build = run([sys.executable, "-m", "genladder.container", "build", "--base-image", base_image], repo, env)
    tag = container.image_tag(repo, Flavor.cpu)
    assert tag in build.stderr
    return repo, tag


@pytest.mark.docker
def test_build_writes_stable_tag_file(image_repo, engine):
    repo, tag = image_repo
    tag_file = repo / "docker" / "image-cpu.tag"
    assert tag_file.read_text() == tag + "\n"
    image = engine.images.get(tag)
    assert image.labels["org.genladder.base-image"] == BASE_IMAGE

    # Building the same recipe again reuses the image and leaves the file's bytes alone.
    first = tag_file.read_bytes()
    run([sys.executable, "-m", "genladder.container", "build", "--base-image", BASE_IMAGE], repo, pipeline_env(repo))
    assert tag_file.read_bytes() == first
    assert engine.images.get(tag).id == image.id


@pytest.mark.docker
def test_container_sees_pins_and_caller(image_repo):
    repo, _ = image_repo
    probe = repo / "stages" / "probe.py"
    probe.write_text(
        "import os, sys, importlib.metadata as md, torch\n"
        "print('uid', os.getuid(), os.getgid())\n"
        "print('home', os.environ['HOME'], os.access(os.environ['HOME'], os.W_OK))\n"
        "print('cwd', os.getcwd())\n"
        "print('torch', md.version('torch'))\n"
        "print('mlflow', os.environ.get('MLFLOW_TRACKING_URI'))\n"
        "print('args', sys.argv[1:])\n"
        "print('triton', md.packages_distributions().get('triton'))\n"
        "sys.exit(int(sys.argv[1]))\n"
    )
    env = pipeline_env(repo)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{repo}/other.db"
    try:
        result = run([sys.executable, "-m", "genladder.container", "run", "probe", "3"], repo, env, check=False)
    finally:
        probe.unlink()
    assert result.returncode == 3, result.stderr
    lines = result.stdout.splitlines()
    assert f"uid {os.getuid()} {os.getgid()}" in lines
    assert f"home {container.CONTAINER_HOME} True" in lines
    assert f"cwd {repo}" in lines
    assert f"torch {torch_version()}" in lines
    assert f"mlflow sqlite:///{repo}/other.db" in lines
    assert "args ['3']" in lines
    # The CPU image leaves out triton, which only compiles GPU kernels.
    assert "triton None" in lines


def torch_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("torch")


@pytest.mark.docker
def test_missing_image_exits_2(image_repo):
    repo, _ = image_repo
    env = pipeline_env(repo)
    explicit = run(
        [sys.executable, "-m", "genladder.container", "run", "--image", "genladder:no-such-tag", "prepare"],
        repo, env, check=False,
    )
    assert explicit.returncode == 2, explicit.stderr
    assert "image genladder:no-such-tag" in explicit.stderr
    assert "not found" in explicit.stderr

    # A changed recipe has a new tag that no build has made yet.
    lock = repo / "requirements.lock"
    original = lock.read_bytes()
    lock.write_bytes(original + b"# changed\n")
    try:
        stale = run([sys.executable, "-m", "genladder.container", "run", "prepare"], repo, env, check=False)
        missing_tag = container.image_tag(repo, Flavor.cpu)
    finally:
        lock.write_bytes(original)
    assert stale.returncode == 2, stale.stderr
    assert f"image {missing_tag} not found" in stale.stderr
    assert "python -m genladder.container build" in stale.stderr


def output_files(repo: Path) -> list[Path]:
    prepared = repo / "data" / "prepared"
    return [prepared / f"{split}.npz" for split in ("train", "val", "test")] + [
        repo / "models" / VARIANT / "model.pt"
    ]


def output_hashes(repo: Path) -> dict[str, str]:
    """Return the MD5 that dvc.lock records for each compared output."""
    compared = {str(path.relative_to(repo)) for path in output_files(repo)}
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    hashes = {
        out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])
        if out["path"] in compared
    }
    assert set(hashes) == compared
    return hashes


@pytest.mark.docker
def test_container_and_host_outputs_identical(image_repo, tmp_path):
    repo, _ = image_repo
    target = f"train@{VARIANT}"

    # 1. In the container, through runtime.container and plain `dvc repro`.
    write_params(repo, container=True)
    in_container = dvc(["repro", target], repo)
    assert "in genladder:cpu-" in in_container.stderr, in_container.stderr
    saved = tmp_path / "container-outputs"
    saved.mkdir()
    for path in output_files(repo):
        stat = path.stat()
        assert (stat.st_uid, stat.st_gid) == (os.getuid(), os.getgid()), path
        shutil.copy2(path, saved / path.name)
    hashes_after_container = output_hashes(repo)

    # 2. Switching the container off changes no stage.
    write_params(repo, container=False)
    status = dvc(["status", target], repo)
    assert "up to date" in status.stdout, status.stdout

    # 3. On the host, forced, then byte for byte the same files and DVC hashes.
    on_host = dvc(["repro", "--force", target], repo)
    assert "in genladder:cpu-" not in on_host.stderr
    for path in output_files(repo):
        assert filecmp.cmp(path, saved / path.name, shallow=False), f"{path} differs between container and host"
    assert output_hashes(repo) == hashes_after_container


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_health(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:  # refused, reset or timed out while the server starts
            pass
        assert time.monotonic() < deadline, f"MLflow server at {url} not healthy after {seconds:.0f}s"
        time.sleep(0.5)


@pytest.mark.docker
def test_stage_logs_to_team_server(image_repo, engine):
    """The compose file's server, run from the project image, receives a container stage's run."""
    from mlflow.tracking import MlflowClient

    repo, tag = image_repo
    compose = yaml.safe_load((REPO / "docker" / "compose.mlflow.yaml").read_text())
    service = compose["services"]["mlflow"]
    mounts = {}
    for spec in service["volumes"]:
        name, target = spec.split(":")
        assert name in compose["volumes"], name
        mounts[f"genladder-test-{name}-{uuid.uuid4().hex[:8]}"] = {"bind": target, "mode": "rw"}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = engine.containers.run(
        tag, command=service["command"], detach=True, ports={"5000/tcp": ("127.0.0.1", port)}, volumes=mounts
    )
    try:
        wait_for_health(url, 90)
        env = pipeline_env(repo)
        env["MLFLOW_TRACKING_URI"] = url
        run([sys.executable, "-m", "genladder.container", "run", "prepare"], repo, env)

        client = MlflowClient(url)
        experiment = client.get_experiment_by_name("genladder")
        assert experiment is not None
        (logged,) = client.search_runs([experiment.experiment_id])
        assert logged.data.tags["dvc.stage"] == "prepare"
        assert logged.data.params["data.source"] == "digits"
        assert {"preview.png", "stats.json"} <= {a.path for a in client.list_artifacts(logged.info.run_id)}
    finally:
        server.remove(force=True)
        for name in mounts:
            engine.volumes.get(name).remove(force=True)
