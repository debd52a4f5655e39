"""None of the above: --reject-below answers "unknown" below a calibrated probability, and eval reports coverage."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_calibration import tiny_checkpoint
from tests.test_cli import assert_one_line_error, run_cli
from tlcore.calibration import UNKNOWN, coverage_curve, selective
from tlcore.errors import ConfigError
from tlcore.evaluation import evaluate_checkpoint
from tlcore.inference import load_checkpoint


def test_rejection_counts_match_the_threshold(tmp_path, host):
    predictor = load_checkpoint(tiny_checkpoint(tmp_path / "best.safetensors", temperature=6.0), "cpu", host)
    images = torch.rand(40, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    plain = predictor.predict(images)
    tops = [p.probability for p in plain]
    threshold = sorted(tops)[len(tops) // 2]  # a probability that really splits them
    answered = predictor.predict(images, reject_below=threshold)
    rejected = [p for p in answered if p.rejected]
    assert len(rejected) == sum(top < threshold for top in tops) and 0 < len(rejected) < len(tops)
    assert all(p.label == UNKNOWN and p.labels[0] != UNKNOWN for p in rejected)
    assert all(p.label == q.label for p, q in zip(answered, plain, strict=True) if not p.rejected)
    assert all(p.probability < threshold for p in rejected)
    record = rejected[0].to_dict()
    assert record["label"] == UNKNOWN and record["unknown"] is True and record["reject_below"] == threshold
    assert not any(p.rejected for p in predictor.predict(images, reject_below=0.0))
    assert all(p.rejected for p in predictor.predict(images, reject_below=1.0)) or max(tops) == 1.0
    for bad in (-0.1, 1.5, float("nan"), True):
        with pytest.raises(ConfigError, match=r"reject_below must be a probability in \[0, 1\]"):
            predictor.predict(images, reject_below=bad)


def test_selective_and_the_coverage_curve():
    confidence = torch.tensor([0.9, 0.8, 0.6, 0.4, 0.3])
    correct = torch.tensor([True, True, False, True, False])
    at = selective(confidence, correct, 0.5)
    assert (at.answered, at.correct, at.total) == (3, 2, 5) and at.coverage == 0.6 and at.accuracy == pytest.approx(2 / 3)
    assert selective(confidence, correct, 0.95).accuracy is None
    curve = coverage_curve(confidence, correct, points=11)
    assert curve[0].coverage == 1.0 and curve[-1].answered == 0
    assert [c.answered for c in curve] == sorted((c.answered for c in curve), reverse=True)


def test_eval_reports_coverage_and_accuracy_on_the_answered(tmp_path, host):
    path = tiny_checkpoint(tmp_path / "best.safetensors", temperature=2.0)
    report = evaluate_checkpoint(path, device="cpu", host=host, workers=0, reject_below=0.7)
    rejection = report.to_dict()["rejection"]
    calibrated = report.outputs.calibrated_confidence
    answered = calibrated >= 0.7
    assert rejection["answered"] == int(answered.sum()) and rejection["total"] == len(calibrated)
    assert rejection["correct"] == int((answered & report.outputs.correct).sum())


def test_bad_thresholds_are_one_line_errors(tmp_path, host, capsys):
    path = tiny_checkpoint(tmp_path / "best.safetensors")
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(image)
    for bad in ("1.5", "nan", "-0.1"):
        code, _, err = run_cli(["predict", "--checkpoint", str(path), "--reject-below", bad, str(image)], capsys)
        assert_one_line_error(code, err, "--reject-below must be a probability in [0, 1]")
        code, _, err = run_cli(["eval", "--checkpoint", str(path), "--reject-below", bad], capsys)
        assert_one_line_error(code, err, "--reject-below must be a probability in [0, 1]")
    code, out, err = run_cli(
        ["predict", "--checkpoint", str(path), "--reject-below", "1", "--json", "--device", "cpu", str(image)], capsys
    )
    assert code == 0, err
    assert json.loads(out)[0]["label"] == UNKNOWN
