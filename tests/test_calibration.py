"""Temperature scaling: fitted on validation logits, stored in checkpoints, used by predict, eval and export."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open

from tlcore.calibration import (
    ECE_BINS,
    TemperatureScaled,
    expected_calibration_error,
    fit_temperature,
    nll,
    reliability_bins,
)
from tlcore.checkpoint import CheckpointInfo, read_checkpoint, save_checkpoint
from tlcore.errors import WeightsError
from tlcore.evaluation import evaluate_checkpoint
from tlcore.export import export_checkpoint
from tlcore.heads import HeadOptions, linear_head
from tlcore.inference import load_checkpoint
from tlcore.model import Classifier
from tlcore.testing import TINY_BACKBONE, TINY_DATASET, shapes_dataset, tiny_backbone


def overconfident(n: int = 4000, classes: int = 5, scale: float = 4.0, seed: int = 0):
    """Labels drawn from softmax(z): z is a calibrated model's logits, ``scale * z`` an over-confident one's."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(n, classes, generator=generator) * 2
    labels = torch.multinomial(z.softmax(dim=1), 1, generator=generator).squeeze(1)
    return z * scale, labels


def test_temperature_scaling_lowers_the_nll_of_an_overconfident_model():
    logits, labels = overconfident(scale=4.0)
    temperature = fit_temperature(logits, labels)
    assert 3.3 < temperature < 4.7  # the scale the logits were inflated by comes back
    assert nll(logits, labels, temperature) < 0.8 * nll(logits, labels)
    calibrated = (logits / temperature).softmax(dim=1).max(dim=1)
    raw = logits.softmax(dim=1).max(dim=1)
    correct = calibrated.indices == labels
    assert torch.equal(calibrated.indices, raw.indices)  # accuracy is unchanged
    before = expected_calibration_error(raw.values, correct)
    after = expected_calibration_error(calibrated.values, correct)
    assert after < before / 3


def test_an_underconfident_model_gets_a_temperature_below_one():
    logits, labels = overconfident(scale=0.25, seed=1)
    temperature = fit_temperature(logits, labels)
    assert 0.2 < temperature < 0.3


def test_fit_temperature_refuses_what_it_cannot_fit():
    for logits, labels in [
        (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)),
        (torch.tensor([[float("nan"), 0.0]]), torch.tensor([0])),
        (torch.zeros(2, 3), torch.tensor([0, 3])),
    ]:
        with pytest.raises(ValueError):
            fit_temperature(logits, labels)


def test_ece_matches_a_hand_computation():
    # 15 bins ((m-1)/15, m/15]; by hand: bin 1 holds 0.05 (wrong) and 1/15 exactly (right: the bin is right-closed),
    # bin 15 holds 0.95, 0.97 (right) and 1.0 (wrong), bin 8 holds 0.5 (right)
    confidence = torch.tensor([0.05, 1 / 15, 0.95, 0.97, 1.0, 0.5], dtype=torch.float64)
    correct = torch.tensor([False, True, True, True, False, True])
    first = abs(1 / 2 - (0.05 + 1 / 15) / 2) * 2
    last = abs(2 / 3 - (0.95 + 0.97 + 1.0) / 3) * 3
    middle = abs(1 - 0.5) * 1
    expected = (first + last + middle) / 6
    assert expected_calibration_error(confidence, correct) == pytest.approx(expected, abs=1e-12)
    bins = reliability_bins(confidence, correct)
    assert len(bins.counts) == ECE_BINS and bins.counts[0] == 2 and bins.counts[7] == 1 and bins.counts[14] == 3
    assert sum(bins.counts) == 6 and bins.edges[0] == 0 and bins.edges[-1] == 1


def tiny_checkpoint(path, temperature=None, classes=("top_left", "bottom_right"), seed=0):
    """A checkpoint of a (randomly initialised) tiny model, in the format runs write; temperature as given."""
    torch.manual_seed(seed)
    backbone = tiny_backbone()
    head = linear_head(backbone.feature_dim, len(classes), HeadOptions())
    with torch.no_grad():
        head[-1].weight.mul_(20)  # confident logits, so that the temperature matters
    model = Classifier(backbone.module, head).eval()
    info = CheckpointInfo(
        backbone=TINY_BACKBONE,
        classes=list(classes),
        head="linear",
        head_options={"hidden": 512, "dropout": 0.0},
        preprocessing=backbone.preprocessing.to_dict(),
        image_size=16,
        epoch=1,
        metrics={},
        weights="none",
        data={"dataset": TINY_DATASET, "data_dir": None, "seed": 0, "val_fraction": 0.2, "flip_invariant": False},
    )
    if temperature is not None:
        info.temperature = temperature
    save_checkpoint(path, model, info)
    return path


def rewrite_metadata(path, change):
    """The same checkpoint with its tlcore metadata record changed by ``change(record)``."""
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    record = json.loads(metadata["tlcore"])
    change(record)
    save_file(load_file(str(path)), str(path), metadata={**metadata, "tlcore": json.dumps(record)})


def test_checkpoints_store_a_validated_temperature(tmp_path):
    path = tiny_checkpoint(tmp_path / "best.safetensors", temperature=2.5)
    assert read_checkpoint(path)[1].temperature == 2.5
    rewrite_metadata(path, lambda record: record.pop("temperature"))  # written before calibration existed
    assert read_checkpoint(path)[1].temperature == 1.0
    for bad in (float("nan"), -1.0, 0.0, "2", True, 1e300):
        rewrite_metadata(path, lambda record, bad=bad: record.update(temperature=bad))
        with pytest.raises(WeightsError, match="temperature must be a finite number"):
            read_checkpoint(path)


def test_predict_and_export_use_the_temperature(tmp_path, host):
    path = tiny_checkpoint(tmp_path / "best.safetensors", temperature=3.0)
    predictor = load_checkpoint(path, device="cpu", host=host)
    assert predictor.temperature == 3.0
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    predicted = predictor.predict(images, top_k=2)
    batch = torch.stack([predictor.preprocess(image) for image in images])
    with torch.no_grad():
        expected = (predictor.model(batch) / 3.0).softmax(dim=1)
        uncalibrated = predictor.model(batch).softmax(dim=1)
    for row, prediction in enumerate(predicted):
        assert prediction.probabilities == pytest.approx(expected[row, prediction.indices].tolist(), abs=1e-6)
    assert not torch.allclose(expected, uncalibrated, atol=1e-3)  # the temperature changed something to check
    result = export_checkpoint(path, "torchscript", host=host)
    sidecar = json.loads(result.sidecar.read_text())
    assert sidecar["temperature"] == 3.0 and "calibrated" in sidecar["output"]["meaning"]
    exported = torch.jit.load(str(result.path))
    with torch.no_grad():
        probabilities = exported(batch).softmax(dim=1)
    for row, prediction in enumerate(predicted):
        assert probabilities[row, prediction.indices].tolist() == pytest.approx(prediction.probabilities, abs=1e-5)


def test_the_export_parity_check_covers_the_temperature(tmp_path, host, monkeypatch):
    """An exporter that dropped the division by the temperature fails the check and writes nothing."""
    import tlcore.export as export

    path = tiny_checkpoint(tmp_path / "best.safetensors", temperature=3.0)
    exporter, loader = export.EXPORTERS["torchscript"]

    def without_temperature(model, sample, target, metadata):
        assert isinstance(model, TemperatureScaled)
        exporter(model.model, sample, target, metadata)

    monkeypatch.setitem(export.EXPORTERS, "torchscript", (without_temperature, loader))
    with pytest.raises(Exception, match="does not reproduce"):
        export_checkpoint(path, "torchscript", host=host)
    assert not (tmp_path / "best.torchscript.pt").exists()


def test_eval_reports_the_ece_before_and_after(tmp_path, host):
    path = tiny_checkpoint(tmp_path / "best.safetensors", temperature=4.0)
    report = evaluate_checkpoint(path, device="cpu", host=host, workers=0)
    calibration = report.to_dict()["calibration"]
    assert calibration["temperature"] == 4.0 and calibration["bins"] == 15
    out = report.outputs
    assert calibration["ece_before"] == pytest.approx(expected_calibration_error(out.confidence, out.correct))
    assert calibration["ece_after"] == pytest.approx(expected_calibration_error(out.calibrated_confidence, out.correct))
    assert calibration["ece_before"] != calibration["ece_after"]
    assert math.isclose(calibration["nll_before"], report.metrics.loss, rel_tol=1e-6)


def test_a_run_stores_the_temperature_fitted_on_its_validation_logits(host, tiny_config):
    from tlcore.train import fit

    result = fit(tiny_config(epochs=2, callbacks="-progress"), host)
    for name in ("last.safetensors", "best.safetensors"):  # written with the weights, in the same atomic write
        with safe_open(str(result.output_dir / name), "pt") as handle:
            record = json.loads(handle.metadata()["tlcore"])
        assert isinstance(record["temperature"], float) and record["temperature"] > 0
    _, info = read_checkpoint(result.output_dir / "last.safetensors")
    assert info.calibration.get("images") == 12, info.calibration  # the 12 validation images of the tiny data
    # the temperature a fit on the saved model's own validation logits gives
    predictor = load_checkpoint(result.output_dir / "last.safetensors", "cpu", host)
    val = shapes_dataset(seed=0).val
    batch = torch.stack([predictor.preprocess(val[i][0]) for i in range(len(val))])
    labels = torch.tensor([val[i][1] for i in range(len(val))])
    assert info.temperature == pytest.approx(fit_temperature(predictor.logits(batch), labels), rel=1e-3)
    assert info.calibration["nll_after"] <= info.calibration["nll_before"] + 1e-9
    assert info.calibration["epoch"] == 2 and info.temperature > 0
    _, best = read_checkpoint(result.output_dir / "best.safetensors")
    assert best.temperature > 0 and best.calibration["epoch"] == best.epoch
    _, plain = read_checkpoint(
        fit(tiny_config(epochs=1, calibrate=False, output=str(result.output_dir) + "-plain"), host).output_dir
        / "last.safetensors"
    )
    assert plain.temperature == 1.0 and plain.calibration == {"reason": "--no-calibrate"}


def test_each_epoch_is_calibrated_on_its_own_validation_logits():
    from types import SimpleNamespace

    from tlcore.state import RunState, ValidationOutputs

    logits, labels = overconfident(n=600, scale=3.0, seed=2)
    kept = ValidationOutputs(epoch=2, logits=logits, labels=labels, indices=torch.arange(600))
    run = SimpleNamespace(
        config=SimpleNamespace(calibrate=True, task="multiclass"), epoch=1, last_validation=kept, temperatures={},
        calibration={},
    )
    RunState.calibrate(run)
    assert 2.3 < run.temperatures[2] < 3.7
    assert run.calibration["images"] == 600 and run.calibration["nll_after"] < run.calibration["nll_before"]
    run.epoch = 2  # epoch 3 validated nothing this process kept: no temperature is guessed from epoch 2's logits
    RunState.calibrate(run)
    assert run.temperatures[3] == 1.0 and "not kept" in run.calibration["reason"]
    run.config.calibrate, run.epoch, kept.epoch = False, 3, 4
    RunState.calibrate(run)
    assert run.temperatures[4] == 1.0 and run.calibration == {"reason": "--no-calibrate"}


def test_a_perfectly_separated_split_has_no_temperature_to_fit():
    from tlcore.calibration import temperature_fit

    labels = torch.arange(40) % 4
    noise = torch.rand(40, 4, generator=torch.Generator().manual_seed(0))
    logits = torch.nn.functional.one_hot(labels, 4).float() * 5 + noise
    fit = temperature_fit(logits, labels)
    assert fit.temperature == 1.0 and "no finite optimum" in fit.reason and fit.nll_after == fit.nll_before
    wrong = labels.clone()
    wrong[:3] = (wrong[:3] + 1) % 4  # a few mistakes: now the NLL has a minimum
    fit = temperature_fit(logits, wrong)
    assert fit.temperature != 1.0 and fit.reason == "" and fit.nll_after < fit.nll_before
