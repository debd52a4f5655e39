"""Test-time augmentation: `tlcore eval --tta`, `tlcore predict --tta`, Predictor.predict(tta=True).

The views are five crops of the evaluation resize, plus their mirrors only
where the checkpoint's data allows flips; a prediction is the mean of its
views' softmax, reported beside the plain figure.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_bad_options import run_cli
from tlcore.checkpoint import read_checkpoint, save_checkpoint
from tlcore.data import to_rgb
from tlcore.errors import WeightsError
from tlcore.evaluation import evaluate_checkpoint, render_report
from tlcore.inference import load_checkpoint
from tlcore.train import fit
from tlcore.tta import CENTRE, TTAViews, flips_allowed, view_names


@pytest.fixture
def run(host, tiny_config):
    return fit(tiny_config(epochs=1, callbacks="-progress"), host)


def with_flips(run, tmp_path, allowed) -> str:
    """The run's best checkpoint rewritten (in the on-disk format) as if its data did (or did not say it did) allow flips."""
    tensors, info = read_checkpoint(run.output_dir / "best.safetensors")
    data = {key: value for key, value in info.data.items() if key != "flip_invariant"}
    if allowed is not None:
        data["flip_invariant"] = allowed
    path = tmp_path / f"flip-{allowed}.safetensors"
    save_checkpoint(path, _Flat(tensors), dataclasses.replace(info, data=data))
    return str(path)


class _Flat(torch.nn.Module):
    """A module whose state_dict is exactly the given tensors (names with dots included)."""

    def __init__(self, tensors):
        super().__init__()
        self.tensors = tensors

    def state_dict(self, *args, **kwargs):
        return dict(self.tensors)


def picture(size=(20, 26)) -> np.ndarray:
    pixels = np.random.default_rng(3).integers(0, 60, (*size, 3), dtype=np.uint8)
    pixels[: size[0] // 2, : size[1] // 2] += 180
    return pixels


def test_checkpoints_record_whether_the_data_allows_flips(run):
    _, info = read_checkpoint(run.output_dir / "best.safetensors")
    assert info.data["flip_invariant"] is False  # the tiny dataset, like digits, forbids mirroring


def test_a_damaged_flip_record_is_refused(run, tmp_path):
    path = with_flips(run, tmp_path, "yes")
    with pytest.raises(WeightsError, match="data.flip_invariant must be true or false"):
        read_checkpoint(path)


def test_views_are_the_crops_of_the_eval_resize_and_mirrors_only_when_allowed(run, host):
    predictor = load_checkpoint(run.output_dir, device="cpu", host=host)
    image = to_rgb(Image.fromarray(picture()))
    plain = TTAViews(predictor.preprocessing, 16, flip=False)(image)
    mirrored = TTAViews(predictor.preprocessing, 16, flip=True)(image)
    assert plain.shape == (5, 3, 16, 16) and mirrored.shape == (10, 3, 16, 16)
    assert torch.equal(plain[CENTRE], predictor.transform(image))  # the centre view is what plain eval scores
    assert torch.equal(mirrored[:5], plain)
    names = view_names(True)
    for i, name in enumerate(names[5:9], start=5):  # each mirrored corner is the mirror of the other side's corner
        other = name.removeprefix("flipped ").replace("left", "@").replace("right", "left").replace("@", "right")
        assert torch.equal(mirrored[i], plain[names.index(other)].flip(-1))
    mirrored_image = TTAViews(predictor.preprocessing, 16, flip=False)(image.flip(-1))
    assert torch.equal(mirrored[5 + CENTRE], mirrored_image[CENTRE])  # the centre crop of the mirrored image
    assert not any(torch.equal(view, plain[CENTRE].flip(-1)) for view in plain)


@pytest.mark.parametrize("allowed, count", [(False, 5), (None, 5), (True, 10)])
def test_flips_follow_the_checkpoint_record(run, host, tmp_path, allowed, count):
    predictor = load_checkpoint(with_flips(run, tmp_path, allowed), device="cpu", host=host)
    assert len(predictor.views.names) == count and flips_allowed(predictor.info.data) is (allowed is True)
    assert all("flipped" not in name for name in predictor.views.names) or allowed is True


@pytest.mark.parametrize("allowed", [False, True])
def test_tta_prediction_is_the_mean_of_its_views_softmax(run, host, tmp_path, allowed):
    predictor = load_checkpoint(with_flips(run, tmp_path, allowed), device="cpu", host=host)
    pixels = picture()
    tta = predictor.predict(Image.fromarray(pixels), top_k=2, tta=True)[0]
    plain = predictor.predict(Image.fromarray(pixels), top_k=2)[0]
    views = predictor.views(to_rgb(Image.fromarray(pixels)))
    with torch.no_grad():
        by_hand = torch.stack([predictor.model(view[None]).softmax(1)[0] for view in views]).mean(0)
    assert tta.indices == by_hand.argsort(descending=True).tolist()
    assert tta.probabilities == pytest.approx(by_hand[tta.indices].tolist(), abs=1e-6)
    assert tta.tta_views == predictor.views.names and plain.tta_views is None
    assert tta.to_dict()["tta_views"] == tta.tta_views and "tta_views" not in plain.to_dict()
    assert tta.probabilities != pytest.approx(plain.probabilities, abs=1e-6)  # the views did change the figure


def test_eval_reports_tta_beside_the_plain_figure(run, host):
    plain = evaluate_checkpoint(run.output_dir, device="cpu", host=host)
    report = evaluate_checkpoint(run.output_dir, device="cpu", host=host, tta=True)
    assert report.metrics == plain.metrics and plain.tta_metrics is None
    assert report.tta_views == view_names(False)  # the tiny dataset forbids flips
    # the TTA figures from the per-image mean of the views' softmax, by hand
    predictor = load_checkpoint(run.output_dir, device="cpu", host=host)
    images = [report.data[i][0] for i in range(len(report.data))]
    with torch.no_grad():
        mean = torch.stack([predictor.model(predictor.views(to_rgb(image))).softmax(1).mean(0) for image in images])
    assert torch.equal(report.tta_outputs.predictions, mean.argmax(1))
    assert report.tta_metrics.accuracy == pytest.approx(float((mean.argmax(1) == report.outputs.labels).float().mean()))
    assert report.tta_metrics.loss == pytest.approx(float(-mean[range(len(images)), report.outputs.labels].log().mean()))
    text = render_report(report)
    assert f"accuracy    {report.metrics.accuracy:.4f}" in text and f"with TTA    {report.tta_metrics.accuracy:.4f}" in text
    record = report.to_dict()
    assert record["accuracy"] == plain.metrics.accuracy and record["tta"]["accuracy"] == report.tta_metrics.accuracy
    assert record["tta"]["views"] == view_names(False)


def test_cli_eval_and_predict_with_tta(run, host, tmp_path, capsys):
    code, out, _ = run_cli(["eval", "--checkpoint", run.output_dir, "--device", "cpu", "--tta", "--json"], capsys)
    record = json.loads(out)
    assert code == 0 and record["tta"]["views"] == view_names(False) and "accuracy" in record
    code, out, _ = run_cli(["eval", "--checkpoint", run.output_dir, "--device", "cpu", "--tta"], capsys)
    assert code == 0 and "accuracy    " in out and "with TTA    " in out and "5 views" in out
    Image.fromarray(picture()).save(tmp_path / "a.png")
    code, out, _ = run_cli(
        ["predict", tmp_path / "a.png", "--checkpoint", run.output_dir, "--device", "cpu", "--tta"], capsys
    )
    assert code == 0 and out.startswith("test-time augmentation: probabilities are the mean softmax of 5 views")
    code, out, _ = run_cli(
        ["predict", tmp_path / "a.png", "--checkpoint", run.output_dir, "--device", "cpu", "--tta", "--json"], capsys
    )
    assert code == 0 and json.loads(out)[0]["tta_views"] == view_names(False)


def test_tta_takes_no_value(run, capsys):
    code, _, err = run_cli(["eval", "--checkpoint", run.output_dir, "--tta=maybe"], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("tlcore: error: ") and "--tta" in lines[0]


@pytest.mark.parametrize(
    "recorded, data_allows, count", [(True, True, 10), (True, False, 5), (False, True, 5), (None, True, 10)]
)
def test_eval_mirrors_only_where_checkpoint_and_data_both_allow_it(
    run, host, tmp_path, monkeypatch, recorded, data_allows, count
):
    from tlcore import evaluation
    from tlcore.testing import shapes_dataset

    def data(config, host):  # the tiny dataset, declaring flips allowed or not
        return dataclasses.replace(shapes_dataset(seed=config.seed), flip_invariant=data_allows)

    monkeypatch.setattr(evaluation, "build_dataset", data)
    report = evaluate_checkpoint(with_flips(run, tmp_path, recorded), device="cpu", host=host, tta=True)
    assert report.tta_views == view_names(count == 10)  # no record (an older checkpoint): the recorded data's word
