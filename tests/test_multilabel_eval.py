"""Multi-label checkpoints in eval, predict and export (issue 17, item 2).

The checkpoint is built here, without the training loop: the tiny backbone
and a linear head, a few BCE steps on a dataset registered in code, written
with save_checkpoint and ``task="multilabel"`` plus per-class thresholds.
Metrics are cross-checked against scikit-learn.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from sklearn.metrics import accuracy_score, average_precision_score, f1_score

from tlcore.checkpoint import CheckpointInfo, save_checkpoint
from tlcore.dataset import DatasetSplits, TensorImageDataset
from tlcore.errors import ConfigError, DataError, WeightsError
from tlcore.evaluation import EvalReport, evaluate_checkpoint, render_report
from tlcore.export import export_checkpoint
from tlcore.hookspecs import hookimpl
from tlcore.inference import Predictor, build_model, load_checkpoint
from tlcore.multilabel import choose_thresholds, multilabel_metrics
from tlcore.state import ValidationOutputs
from tlcore.testing import TINY_BACKBONE, tiny_backbone
from tlcore.tta import TTAViews

CLASSES = ["red", "green", "blue", "rare"]  # "rare" has positives in train only: no AP on val
THRESHOLDS = [0.35, 0.5, 0.65, 0.5]


def tag_data(seed: int = 0, train: int = 48, val: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 16, 16) uint8 and multi-hot labels (N, 4): class c brightens quadrant c."""
    generator = torch.Generator().manual_seed(seed)
    count = train + val
    labels = (torch.rand(count, 4, generator=generator) < 0.45).float()
    labels[:, 3] = 0.0
    labels[: train // 4, 3] = 1.0  # "rare" only among the training images
    empty = labels.sum(dim=1) == 0
    labels[empty, 0] = 1.0  # every image has a label
    images = torch.randint(0, 60, (count, 3, 16, 16), generator=generator, dtype=torch.uint8)
    top, bottom, left, right = slice(0, 8), slice(8, 16), slice(0, 8), slice(8, 16)
    quadrants = [(top, left), (top, right), (bottom, left), (bottom, right)]
    for column, (rows, cols) in enumerate(quadrants):
        images[labels[:, column] > 0, :, rows, cols] += 150
    return images, labels


def tag_splits(seed: int = 0, order: list[int] | None = None) -> DatasetSplits:
    """test:tags; ``order`` lists the columns (classes) in the order the dataset gives them."""
    images, labels = tag_data(seed)
    classes = CLASSES
    if order is not None:
        labels, classes = labels[:, order], [CLASSES[i] for i in order]
    return DatasetSplits(
        classes=list(classes),
        train=TensorImageDataset(images[:48], labels[:48]),
        val=TensorImageDataset(images[48:], labels[48:]),
        flip_invariant=False,
        multilabel=True,
    )


class TagPlugin:
    """test:tags (multi-label), the same with the classes in another order, and a single-label version."""

    @hookimpl
    def tlcore_register_datasets(self, register):
        register("test:tags", lambda name, options: tag_splits(options.seed))
        register("test:tags-reordered", lambda name, options: tag_splits(options.seed, order=[2, 0, 3, 1]))

        def single(name, options):
            images, labels = tag_data(options.seed)
            first = labels.argmax(dim=1)
            train, val = TensorImageDataset(images[:48], first[:48]), TensorImageDataset(images[48:], first[48:])
            return DatasetSplits(CLASSES, train, val)

        register("test:tags-single", single)


def checkpoint_info(thresholds=THRESHOLDS, task="multilabel") -> CheckpointInfo:
    return CheckpointInfo(
        backbone=TINY_BACKBONE,
        classes=list(CLASSES),
        head="linear",
        head_options={},
        preprocessing=tiny_backbone().preprocessing.to_dict(),
        image_size=16,
        epoch=3,
        metrics={},
        weights="none",
        data={"dataset": "test:tags", "seed": 0, "val_fraction": 0.2, "flip_invariant": False},
        task=task,
        thresholds=None if thresholds is None else list(thresholds),
    )


def write_checkpoint(path, host, thresholds=THRESHOLDS, task="multilabel", steps=30):
    """A tiny multilabel model after a few BCE steps on test:tags' training images, saved as a checkpoint."""
    info = checkpoint_info(thresholds, task)
    torch.manual_seed(0)
    model = build_model(info, host)
    images, labels = tag_data()
    x = (images[:48].float() / 255 - 0.5) / 0.5
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(x), labels[:48]).backward()
        optimizer.step()
    save_checkpoint(path, model.eval(), info)
    return path


@pytest.fixture
def tags(host, tlcore_register):
    tlcore_register(TagPlugin(), "tags")
    return host


@pytest.fixture
def ckpt(tags, tmp_path):
    return write_checkpoint(tmp_path / "best.safetensors", tags)


def val_logits(predictor: Predictor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's logits on test:tags' validation images, computed without tlcore.evaluation, and their labels."""
    images, labels = tag_data()
    batch = torch.stack([predictor.transform(image) for image in images[48:]])
    return predictor.logits(batch), labels[48:]


def test_eval_matches_scikit_learn(ckpt, tags):
    report = evaluate_checkpoint(ckpt, host=tags, device="cpu", workers=0)
    assert report.task == "multilabel" and report.metrics is None and report.multilabel is not None
    logits, labels = val_logits(load_checkpoint(ckpt, "cpu", tags))
    assert torch.allclose(report.outputs.logits, logits, atol=1e-5)
    assert torch.equal(report.outputs.labels, labels)
    m = report.multilabel
    y, scores = labels.numpy().astype(int), torch.sigmoid(logits.double()).numpy()
    predicted = (scores >= np.array(THRESHOLDS)).astype(int)
    assert predicted.sum() > 0 and 0 < m.f1_micro < 1  # a non-trivial case
    present = [c for c in range(4) if y[:, c].any()]
    assert present == [0, 1, 2] and m.ap[3] is None
    assert m.ap[:3] == pytest.approx([average_precision_score(y[:, c], scores[:, c]) for c in present], abs=1e-6)
    assert m.map == pytest.approx(np.mean([average_precision_score(y[:, c], scores[:, c]) for c in present]), abs=1e-6)
    assert m.f1_micro == pytest.approx(f1_score(y, predicted, average="micro", zero_division=0), abs=1e-9)
    assert m.f1_macro == pytest.approx(f1_score(y, predicted, average="macro", zero_division=0), abs=1e-9)
    assert m.subset_accuracy == pytest.approx(accuracy_score(y, predicted))
    expected_loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    assert m.loss == pytest.approx(float(expected_loss), abs=1e-5)
    assert m.thresholds == pytest.approx(THRESHOLDS) and report.thresholds == pytest.approx(THRESHOLDS)
    assert m.support == y.sum(axis=0).tolist() and m.predicted == predicted.sum(axis=0).tolist()
    assert report.outputs.correct.tolist() == (predicted == y).all(axis=1).tolist()
    assert report.calibration() is None and report.rejection() is None and report.images == 24


def test_eval_text_and_json_from_the_command_line(ckpt, tags, tlcore_cli):
    text = tlcore_cli("eval", "--checkpoint", ckpt, "--device", "cpu", "--workers", "0")
    assert text.code == 0, text.err
    for expected in ("multilabel", "mAP", "F1          micro", "subset acc", "threshold", "red", "rare", "macro avg"):
        assert expected in text.out
    assert "confusion" not in text.out and "top-5" not in text.out and "calibration" not in text.out
    rare = next(line for line in text.out.splitlines() if line.startswith("rare "))
    assert "n/a" in rare  # no positive validation image: no AP
    done = tlcore_cli("eval", "--checkpoint", ckpt, "--device", "cpu", "--workers", "0", "--json")
    assert done.code == 0, done.err
    record = json.loads(done.out)
    report = evaluate_checkpoint(ckpt, host=tags, device="cpu", workers=0)
    assert record["task"] == "multilabel" and record["classes"] == CLASSES
    assert record["map"] == pytest.approx(report.multilabel.map)
    assert [row["threshold"] for row in record["per_class"]] == pytest.approx(THRESHOLDS)
    assert record["per_class"][3]["ap"] is None
    assert "confusion" not in record and "accuracy" not in record


def test_reject_below_is_refused_for_multilabel(ckpt, tags, tlcore_cli, tmp_path):
    for command in (
        ["eval", "--checkpoint", ckpt, "--reject-below", "0.5"],
        ["predict", str(write_pictures(tmp_path)[0]), "--checkpoint", ckpt, "--reject-below", "0.5"],
    ):
        result = tlcore_cli(*command, "--device", "cpu")
        assert result.code == 2
        lines = result.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tlcore: error: --reject-below is for multiclass")
        assert "Traceback" not in result.err
    with pytest.raises(ConfigError, match="multilabel"):
        evaluate_checkpoint(ckpt, host=tags, device="cpu", workers=0, reject_below=0.5)


def test_eval_tta_averages_sigmoid_probabilities(ckpt, tags):
    report = evaluate_checkpoint(ckpt, host=tags, device="cpu", workers=0, tta=True)
    assert report.tta_multilabel is not None and report.tta_views and len(report.tta_views) == 5  # no flips recorded
    predictor = load_checkpoint(ckpt, "cpu", tags)
    views = TTAViews(predictor.preprocessing, 16, flip=False)
    images, labels = tag_data()
    for index in (0, 7):
        viewed = views(images[48 + index])
        mean = torch.sigmoid(predictor.logits(viewed).double()).mean(dim=0)
        assert torch.allclose(torch.sigmoid(report.tta_outputs.logits[index].double()), mean, atol=1e-5)
    expected = multilabel_metrics(report.tta_outputs.logits, labels[48:], THRESHOLDS, CLASSES)
    assert report.tta_multilabel.map == pytest.approx(expected.map)
    assert "with TTA    mAP" in render_report(report) and "mean sigmoid probability of 5 views" in render_report(report)
    assert report.to_dict()["tta"]["views"] == report.tta_views


def test_eval_on_data_with_the_classes_in_another_order(ckpt, tags):
    same = evaluate_checkpoint(ckpt, host=tags, device="cpu", workers=0)
    other = evaluate_checkpoint(ckpt, "test:tags-reordered", host=tags, device="cpu", workers=0, split="val")
    assert torch.equal(other.outputs.labels, same.outputs.labels)  # columns moved to the checkpoint's order
    assert other.multilabel.to_dict() == same.multilabel.to_dict()


def test_task_mismatch_is_one_line(ckpt, tags, tlcore_cli, tmp_path):
    result = tlcore_cli("eval", "--checkpoint", ckpt, "--dataset", "test:tags-single", "--device", "cpu")
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1, result.err
    assert "test:tags-single" in result.err and "one label per image" in result.err
    multiclass = write_multiclass(tmp_path / "mc.safetensors", tags)
    result = tlcore_cli("eval", "--checkpoint", multiclass, "--device", "cpu")
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1, result.err
    assert "several labels per image" in result.err


def write_multiclass(path, host):
    info = checkpoint_info(None, "multiclass")
    torch.manual_seed(0)
    save_checkpoint(path, build_model(info, host).eval(), info)
    return path


def test_from_validation_takes_float_labels(ckpt, tags):
    predictor = load_checkpoint(ckpt, "cpu", tags)
    logits, labels = val_logits(predictor)
    validation = ValidationOutputs(epoch=3, logits=logits, labels=labels, indices=torch.arange(len(labels)))
    splits = tag_splits()
    common = dict(checkpoint="best.safetensors", backbone=TINY_BACKBONE, dataset="test:tags", data_dir=None)
    chosen = choose_thresholds(torch.sigmoid(logits), labels).tolist()
    report = EvalReport.from_validation(validation, splits, **common)  # the thresholds the run chooses
    assert report.task == "multilabel" and report.metrics is None
    assert report.multilabel.to_dict() == multilabel_metrics(logits, labels, chosen, CLASSES).to_dict()
    given = EvalReport.from_validation(validation, splits, **common, thresholds=THRESHOLDS)
    evaluated = evaluate_checkpoint(ckpt, host=tags, device="cpu", workers=0)
    assert given.multilabel.f1_micro == pytest.approx(evaluated.multilabel.f1_micro)
    assert given.multilabel.map == pytest.approx(evaluated.multilabel.map, abs=1e-6)
    assert len(given.data) == 24 and "mAP" in render_report(given)
    wrong = ValidationOutputs(epoch=3, logits=logits, labels=labels[:, :3], indices=torch.arange(len(labels)))
    with pytest.raises(ValueError, match="labels"):
        EvalReport.from_validation(wrong, splits, **common)
    empty = ValidationOutputs(epoch=3, logits=logits[:0], labels=labels[:0], indices=torch.arange(0))
    with pytest.raises(DataError, match="no images"):
        EvalReport.from_validation(empty, splits, **common)


def write_pictures(folder, count: int = 4) -> list:
    images, _ = tag_data()
    paths = []
    for index in range(count):
        path = folder / f"pic{index}.png"
        Image.fromarray(images[48 + index].permute(1, 2, 0).numpy()).save(path)
        paths.append(path)
    return paths


def test_predict_gives_every_class_at_its_threshold(ckpt, tags, tmp_path):
    predictor = load_checkpoint(ckpt, "cpu", tags)
    assert predictor.task == "multilabel" and predictor.thresholds == pytest.approx(THRESHOLDS)
    paths = write_pictures(tmp_path)
    predictions = predictor.predict(paths)
    batch = torch.stack([predictor.preprocess(path) for path in paths])
    probabilities = torch.sigmoid(predictor.logits(batch).double())
    for prediction, row in zip(predictions, probabilities, strict=True):
        expected = [c for c in range(4) if row[c] >= THRESHOLDS[c]]
        expected.sort(key=lambda c: -float(row[c]))
        assert prediction.indices == expected and prediction.labels == [CLASSES[c] for c in expected]
        assert prediction.probabilities == pytest.approx([float(row[c]) for c in expected])
        assert prediction.thresholds == pytest.approx([THRESHOLDS[c] for c in expected])
        assert prediction.label == ";".join(prediction.labels) and prediction.top_labels is None
        record = prediction.to_dict()
        assert record["task"] == "multilabel" and [e["class"] for e in record["labels"]] == prediction.labels
        assert "top" not in record
    assert any(len(p.labels) > 1 for p in predictions)  # several labels for one image
    top = predictor.predict(paths, top_k=2)
    for prediction, row in zip(top, probabilities, strict=True):
        assert prediction.top_indices == row.topk(2).indices.tolist()
        assert prediction.top_probabilities == pytest.approx(row.topk(2).values.tolist())
        assert [e["class"] for e in prediction.to_dict()["top"]] == prediction.top_labels
    with pytest.raises(ConfigError, match="reject-below"):
        predictor.predict(paths, reject_below=0.5)


def test_predict_tta_is_the_mean_sigmoid_of_the_views(ckpt, tags, tmp_path):
    predictor = load_checkpoint(ckpt, "cpu", tags)
    path = write_pictures(tmp_path, 1)[0]
    prediction = predictor.predict(path, tta=True, top_k=4)[0]
    views = predictor.preprocess(path, tta=True)
    mean = torch.sigmoid(predictor.logits(views).double()).mean(dim=0)
    assert prediction.top_probabilities == pytest.approx(sorted(mean.tolist(), reverse=True), abs=1e-6)
    assert prediction.labels == [CLASSES[c] for c in mean.argsort(descending=True).tolist() if mean[c] >= THRESHOLDS[c]]
    assert prediction.tta_views == predictor.views.names


def test_predict_from_the_command_line(ckpt, tags, tlcore_cli, tmp_path):
    paths = write_pictures(tmp_path)
    predictor = load_checkpoint(ckpt, "cpu", tags)
    expected = predictor.predict(paths, top_k=3)
    text = tlcore_cli("predict", *paths, "--checkpoint", ckpt, "--device", "cpu")
    assert text.code == 0, text.err
    lines = text.out.strip().splitlines()
    assert lines[0].startswith("multilabel:") and len(lines) == 1 + len(paths)
    for line, prediction in zip(lines[1:], expected, strict=True):
        shown = "  ".join(f"{label} {p:.4f}" for label, p in zip(prediction.labels, prediction.probabilities, strict=True))
        assert line.startswith(str(prediction.source)) and line.endswith(shown or "(no class reaches its threshold)")
    with_top = tlcore_cli("predict", *paths, "--checkpoint", ckpt, "--device", "cpu", "--top-k", "3")
    assert all("| top 3: " in line for line in with_top.out.strip().splitlines()[1:])
    done = tlcore_cli("predict", *paths, "--checkpoint", ckpt, "--device", "cpu", "--json", "--top-k", "3")
    assert done.code == 0, done.err
    assert json.loads(done.out) == [p.to_dict() for p in expected]


def test_multiclass_prediction_output_is_unchanged(tags, tmp_path):
    predictor = load_checkpoint(write_multiclass(tmp_path / "mc.safetensors", tags), "cpu", tags)
    prediction = predictor.predict(write_pictures(tmp_path, 1))[0]
    assert prediction.task == "multiclass" and len(prediction.labels) == 4 and prediction.thresholds is None
    assert set(prediction.to_dict()) == {"image", "predictions"}
    assert prediction.label == prediction.labels[0]


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.load, used to read the artifact back
def test_export_carries_task_and_thresholds(ckpt, tags, tmp_path):
    result = export_checkpoint(ckpt, "torchscript", tmp_path / "model.torchscript.pt", host=tags)
    sidecar = json.loads(result.sidecar.read_text())
    assert sidecar["task"] == "multilabel" and sidecar["thresholds"] == pytest.approx(THRESHOLDS)
    assert "sigmoid" in sidecar["output"]["meaning"] and sidecar["temperature"] == 1.0
    extra = {"tlcore.json": ""}
    loaded = torch.jit.load(str(result.path), _extra_files=extra)  # the artifact alone carries them too
    assert json.loads(extra["tlcore.json"])["thresholds"] == pytest.approx(THRESHOLDS)
    predictor = load_checkpoint(ckpt, "cpu", tags)
    paths = write_pictures(tmp_path)
    batch = torch.stack([predictor.preprocess(path) for path in paths])
    probabilities = torch.sigmoid(loaded(batch).double())
    exported = [[CLASSES[c] for c in range(4) if row[c] >= sidecar["thresholds"][c]] for row in probabilities]
    assert exported == [sorted(p.labels, key=CLASSES.index) for p in predictor.predict(paths)]
    multiclass = export_checkpoint(write_multiclass(tmp_path / "mc.safetensors", tags), "torchscript", host=tags)
    record = json.loads(multiclass.sidecar.read_text())
    assert record["task"] == "multiclass" and record["thresholds"] is None and "softmax" in record["output"]["meaning"]


def damaged(path, host, **changes):
    """A multilabel checkpoint whose metadata record has ``changes`` (written in the on-disk format)."""
    write_checkpoint(path, host, steps=0)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        metadata = handle.metadata()
    record = json.loads(metadata["tlcore"])
    record.update(changes)
    save_file(tensors, str(path), metadata={**metadata, "tlcore": json.dumps(record)})
    return path


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"thresholds": [0.5, 0.5]}, "thresholds must hold one number per class: 4, got 2"),
        ({"thresholds": [0.5, 1.5, 0.5, 0.5]}, "thresholds[1] must be a number in [0, 1], got 1.5"),
        ({"thresholds": [0.5, 0.5, "x", 0.5]}, "thresholds[2] must be a number in [0, 1], got 'x'"),
        ({"thresholds": None}, "thresholds must be a list of 4"),
        ({"task": "multiclass"}, "thresholds are given but task is multiclass"),
        ({"temperature": 2.0}, "temperature must be 1 for a multilabel checkpoint"),
        ({"task": "segmentation"}, "task must be one of multiclass, multilabel"),
    ],
)
def test_damaged_thresholds_are_one_line(tags, tlcore_cli, tmp_path, changes, expected):
    path = damaged(tmp_path / "best.safetensors", tags, **changes)
    picture = write_pictures(tmp_path, 1)[0]
    for command in (
        ["eval", "--checkpoint", path, "--device", "cpu"],
        ["predict", picture, "--checkpoint", path, "--device", "cpu"],
        ["export", "--checkpoint", path, "--format", "torchscript"],
    ):
        result = tlcore_cli(*command)
        assert result.code == 2, result
        lines = result.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tlcore: error: ") and "damaged" in lines[0]
        assert expected in lines[0]
    assert not (tmp_path / "best.torchscript.pt").exists()


def test_a_predictor_made_in_python_checks_its_thresholds(tags):
    info = checkpoint_info([0.5, 0.5])
    with pytest.raises(WeightsError, match="one probability in \\[0, 1\\] for each of its 4 classes"):
        Predictor(build_model(checkpoint_info(), tags), info, torch.device("cpu"))


class _PixelLogits(torch.nn.Module):
    """A stand-in model: each image's logits are its first two channels' top-left pixels."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images[:, :2, 0, 0]


def test_multilabel_tta_is_the_logit_of_the_mean_sigmoid_even_when_saturated():
    from tlcore.inference import MultilabelTTAModel

    logits = torch.tensor([[[20.0, -30.0], [25.0, 5.0], [-3.0, 0.5]], [[100.0, -100.0], [100.0, -100.0], [100.0, -100.0]]])
    views = torch.zeros(2, 3, 3, 4, 4)
    views[:, :, :2, 0, 0] = logits
    out = MultilabelTTAModel(_PixelLogits())(views)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    expected = torch.logit(torch.sigmoid(logits[0].double()).mean(dim=0))
    assert torch.allclose(out[0].double(), expected, atol=1e-4)
    assert out[1].tolist() == pytest.approx([100.0, -100.0], abs=1e-3)  # identical views: the logit itself, not inf
