"""The report and the evaluate outputs it reads, from a tiny hand-made run."""

from __future__ import annotations

import json
import logging
import runpy
from pathlib import Path

import pytest
from PIL import Image

from conftest import dvc
from genladder.metrics.definitions import METRICS, Estimate
from genladder.metrics.run import Results, quality_rows, summary, write_outputs
from genladder.report.plots import plot_quality_vs_nfe
from genladder.report.render import format_estimate, load_evaluation, write_report

REPO = Path(__file__).resolve().parents[1]

SAMPLERS = {
    "regression": ({"variant": "regression", "method": "regression"}, "regression", 1),
    "raster_greedy": ({"variant": "ar", "method": "ar", "order": "raster", "group": 1, "greedy": True, "temperature": None}, "ar raster greedy", 256),
    "raster_t1": ({"variant": "ar", "method": "ar", "order": "raster", "group": 1, "greedy": False, "temperature": 1.0}, "ar raster", 256),
    "patch4": ({"variant": "ar", "method": "ar", "order": "patch", "group": 4, "greedy": False, "temperature": 1.0}, "ar patch", 16),
    "spread4": ({"variant": "ar", "method": "ar", "order": "spread", "group": 4, "greedy": False, "temperature": 1.0}, "ar spread", 16),
    "ddim10": ({"variant": "diffusion", "method": "ddim", "steps": 10, "guidance": 0.0, "eta": 0.0}, "ddim", 10),
}
FD = {"regression": 50.0, "raster_greedy": 20.0, "raster_t1": 2.0, "patch4": 12.0, "spread4": 5.0, "ddim10": 1.0}


def metric_row(name: str, kind: str, family: str, settings: dict, nfe: int | None, fd: float) -> dict:
    collapsed = name in ("regression", "raster_greedy", "class_means")
    values = {
        "frechet_distance": Estimate(fd, 0.9 * fd, 1.1 * fd),
        "kid": Estimate(fd / 100, fd / 120, fd / 80),
        "precision": Estimate(0.8, 0.75, 0.85),
        "recall": Estimate(0.1 if collapsed else 0.7, 0.05 if collapsed else 0.65, 0.15 if collapsed else 0.75),
        "class_consistency": Estimate(0.95, 0.93, 0.97),
        "diversity": Estimate.exact(0.0) if collapsed else Estimate(0.95, 0.9, 1.0),
        "duplicate_share": Estimate.exact(1.0) if collapsed else Estimate.exact(0.0),
        "sharpness": Estimate.exact(0.6) if name in ("regression", "class_means") else Estimate(1.0, 0.97, 1.03),
        "memorization": Estimate(0.04, 0.03, 0.05),
    }
    return {
        "name": name, "kind": kind, "family": family, "settings": settings, "num_samples": 40, "nfe": nfe,
        "seconds_per_image": None if nfe is None else nfe * 0.001, "images_per_second": None,
        "metrics": {key: values[key].to_dict() for key in METRICS},
    }


def tiny_results() -> Results:
    results = Results()
    for name, (settings, family, nfe) in SAMPLERS.items():
        results.samplers[name] = metric_row(name, "sampler", family, settings, nfe, FD[name])
    results.references["real_train"] = metric_row("real_train", "reference", "real", {"source": "training images"}, None, 0.5)
    results.references["class_means"] = metric_row("class_means", "reference", "class means", {"source": "means"}, None, 50.0)
    results.nll = {"ar": {"images": 20, "pixels_per_step": 1, "raster": Estimate(1.2, 1.1, 1.3).to_dict(), "random": Estimate(1.4, 1.3, 1.5).to_dict()}}
    results.context = {
        "evaluator_test_accuracy": 0.98, "memorization_threshold": 0.8, "real_gradient_magnitude": 0.16,
        "real_within_class_distance": 3.5, "test_images": 40, "train_images": 100, "bootstrap": 10, "knn_k": 3,
        "param_count": {"regression": 1000, "ar": 1100, "diffusion": 1000},
    }
    return results


def write_tiny_run(root: Path) -> Results:
    """Write the metrics, plot and per-sampler pictures a real evaluate and sample run would leave."""
    results = tiny_results()
    paths = write_outputs(results, root)
    plot_quality_vs_nfe(quality_rows(results), paths["png"], floor=0.5)
    for name in results.samplers:
        folder = root / "samples" / name
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8), 200).save(folder / "grid.png")
        frames = [Image.new("L", (8, 8), value) for value in (0, 128, 255)]
        frames[0].save(folder / "process.gif", save_all=True, append_images=frames[1:], duration=100)
    return results


def test_write_outputs_layout(tmp_path):
    results = write_tiny_run(tmp_path)
    assert sorted(p.stem for p in (tmp_path / "metrics" / "samplers").glob("*.json")) == sorted(SAMPLERS)
    assert sorted(p.stem for p in (tmp_path / "metrics" / "reference").glob("*.json")) == ["class_means", "real_train"]
    data = json.loads((tmp_path / "metrics" / "summary.json").read_text())
    assert data == json.loads(json.dumps(summary(results)))
    assert data["samplers"]["ddim10"]["frechet_distance"] == 1.0
    assert data["nll_bits_per_dim"]["ar"] == {"raster": 1.2, "random": 1.4}

    lines = (tmp_path / "plots" / "quality_vs_nfe.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["sampler", "family", "nfe", "frechet_distance", "precision"]
    assert len(lines) == 1 + len(SAMPLERS)
    assert "ddim10\tddim\t10\t1\t0.8" in lines
    assert (tmp_path / "plots" / "quality_vs_nfe.png").stat().st_size > 1000


def test_write_outputs_removes_stale_sampler_files(tmp_path):
    stale = tmp_path / "metrics" / "samplers" / "old_sampler.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    write_outputs(tiny_results(), tmp_path)
    assert not stale.exists()


def test_report_renders_every_section(tmp_path):
    write_tiny_run(tmp_path)
    evaluation = load_evaluation(tmp_path, order=list(SAMPLERS))
    paths = write_report(tmp_path, tmp_path / "report", evaluation)

    markdown = paths["markdown"].read_text()
    page = paths["html"].read_text()
    for heading in ("Claims", "Metrics", "Quality against network evaluations", "Likelihood", "Model size", "Samples", "Generation process"):
        assert f"## {heading}" in markdown
        assert f"<h2>{heading}</h2>" in page
    for number in range(1, 6):
        assert f"### Claim {number}:" in markdown
    assert [c.verdict.value for c in evaluation.claims] == ["holds"] * 5
    assert "class=\"verdict-holds\"" in page
    assert "2.000 [1.800, 2.200]" in markdown  # raster_t1's Fréchet distance with its interval
    assert "1,100" in markdown  # the ar parameter count
    for name in SAMPLERS:
        for asset in (f"assets/{name}_grid.png", f"assets/{name}_process.gif"):
            assert asset in markdown
            assert asset in page
            assert (tmp_path / "report" / asset).is_file()
    assert (tmp_path / "report" / "assets" / "quality_vs_nfe.png").is_file()


def test_report_replaces_old_folder(tmp_path):
    write_tiny_run(tmp_path)
    leftover = tmp_path / "report" / "assets" / "removed_sampler_grid.png"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"old")
    write_report(tmp_path, tmp_path / "report", load_evaluation(tmp_path))
    assert not leftover.exists()
    assert (tmp_path / "report" / "index.html").is_file()
    assert not any(p.name.startswith(".report") for p in tmp_path.iterdir())


def test_report_marks_missing_claims_not_measured(tmp_path):
    results = tiny_results()
    for name in ("raster_greedy", "ddim10"):
        del results.samplers[name]
    write_outputs(results, tmp_path)
    evaluation = load_evaluation(tmp_path)
    verdicts = {c.number: c.verdict.value for c in evaluation.claims}
    assert verdicts[2] == "not measured"
    assert verdicts[5] == "not measured"
    markdown = write_report(tmp_path, tmp_path / "report", evaluation)["markdown"].read_text()
    assert "not measured" in markdown


@pytest.mark.parametrize(
    "estimate, text",
    [
        (Estimate(1.23456, 1.2, 1.3), "1.235 [1.200, 1.300]"),
        (Estimate.exact(0.0), "0.000 [exact]"),
        (Estimate(123.4, 120.0, 130.0), "123.4 [120.0, 130.0]"),
        (Estimate(float("nan"), 0.0, 1.0), "n/a"),
        (Estimate(0.5, float("nan"), float("nan")), "0.500"),
    ],
)
def test_format_estimate(estimate, text):
    assert format_estimate(estimate) == text


def run_stage(script: str, root: Path, monkeypatch) -> None:
    """Run a stage script in this process from `root`, as `python stages/SCRIPT` would."""
    monkeypatch.chdir(root)
    monkeypatch.setenv("DVC_ROOT", str(root))
    runpy.run_path(str(REPO / "stages" / script), run_name="__main__")


def test_report_stage_end_to_end(tmp_path, monkeypatch, caplog):
    write_tiny_run(tmp_path)
    (tmp_path / "params.yaml").write_text("samplers: {}\ntracking: {enabled: false}\n")
    caplog.set_level(logging.INFO)
    run_stage("report.py", tmp_path, monkeypatch)
    assert "claim 5 (Diffusion reaches the best quality per NFE): holds" in caplog.text
    assert (tmp_path / "report" / "index.html").is_file()


def test_report_stage_without_metrics_names_evaluate(tmp_path, monkeypatch, caplog):
    (tmp_path / "params.yaml").write_text("tracking: {enabled: false}\n")
    with pytest.raises(SystemExit) as exit_info:
        run_stage("report.py", tmp_path, monkeypatch)
    assert exit_info.value.code == 2
    assert "dvc repro evaluate" in caplog.text


def test_dvc_reads_summary_and_quality_plot(pipeline_repo):
    write_tiny_run(pipeline_repo)

    metrics = json.loads(dvc(["metrics", "show", "--json", "metrics/summary.json"], pipeline_repo).stdout)
    workspace = metrics[""]["data"]  # DVC 3.67 keys the workspace with an empty revision name
    assert workspace["metrics/summary.json"]["data"]["samplers"]["ddim10"]["frechet_distance"] == 1.0

    plots = json.loads(dvc(["plots", "show", "--json", "plots/quality_vs_nfe.tsv"], pipeline_repo).stdout)
    spec = plots["data"]["plots/quality_vs_nfe.tsv"][0]["content"]
    points = spec["data"]["values"]
    assert {p["family"] for p in points} == {family for _, family, _ in SAMPLERS.values()}
    assert spec["encoding"]["color"]["field"] == "family"
    assert spec["encoding"]["x"]["field"] == "nfe"
    assert spec["encoding"]["y"]["field"] == "frechet_distance"
