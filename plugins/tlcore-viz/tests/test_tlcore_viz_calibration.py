"""The report's calibration figures (reliability diagram, coverage-accuracy curve) and the cv per-fold curves."""

import json

from PIL import Image
from tlcore_viz.report import COVERAGE, FOLDS, RELIABILITY, build_report, write_folds_figure

from tlcore.config import build_config
from tlcore.cv import run_cv
from tlcore.testing import TINY_BACKBONE, TINY_DATASET


def is_png(path):
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.format == "PNG" and image.size[0] >= 300


def test_the_report_draws_the_reliability_diagram_and_the_coverage_curve(finished_run, viz_host):
    folder = finished_run.output_dir
    result = build_report(folder, device="cpu", host=viz_host)  # as `tlcore report` does: the checkpoint evaluated
    assert is_png(folder / RELIABILITY) and is_png(folder / COVERAGE)
    page = (folder / "report.html").read_text(encoding="utf-8")
    assert "Reliability diagram" in page and "Coverage and accuracy" in page
    calibration = result.evaluation.calibration()
    assert f"ECE ({calibration['bins']} bins) {calibration['ece_before']:.4f} before" in page


def test_a_cv_draws_the_per_fold_curves(viz_host, tmp_path, viz_cli, capsys):
    config = build_config(
        overrides=dict(
            backbone=TINY_BACKBONE, dataset=TINY_DATASET, weights="none", epochs=1, batch_size=8, folds=2,
            output=str(tmp_path / "cv"), callbacks="-progress",
        )
    )
    run_cv(config, viz_host)
    parent = tmp_path / "cv"
    assert is_png(parent / FOLDS)  # drawn by the last fold's report callback
    (parent / FOLDS).unlink()
    code, out, err = viz_cli(["report", str(parent)], capsys)
    assert code == 0, err
    assert is_png(parent / FOLDS) and str(parent / FOLDS) in out
    record = json.loads((parent / "cv.json").read_text())
    record["completed"]["1"]["history"][0]["val_acc"] = "high"
    (parent / "cv.json").write_text(json.dumps(record))
    code, _, err = viz_cli(["report", str(parent)], capsys)
    assert code == 2 and "damaged" in err and "Traceback" not in err
    assert write_folds_figure(tmp_path / "nothing") is None
