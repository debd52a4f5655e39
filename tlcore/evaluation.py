"""Evaluating a checkpoint on a dataset: accuracy, per-class precision/recall/F1, confusion matrix.

The data defaults to what the checkpoint records (dataset, data folder, seed,
validation share), so evaluating on the split a run validated on reproduces
that run's val_acc. Metrics are computed with torch alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F
from torch.utils.data import Dataset

from tlcore.build import build_dataset
from tlcore.config import build_config
from tlcore.data import TransformedDataset, collate_skipping, default_workers, make_loader
from tlcore.errors import ConfigError, DataError
from tlcore.inference import Predictor, load_checkpoint
from tlcore.plugins import PluginHost, get_host

SPLITS = ("val", "train")
TOP_K = 5  # top-5 accuracy is reported when there are more classes than this
CONFUSION_TABLE_MAX = 20  # larger confusion matrices are left to --json


@dataclass
class Outputs:
    """Per-image results of a model over a dataset, in dataset order (CPU tensors)."""

    labels: torch.Tensor  # (N,) int64, the true class
    predictions: torch.Tensor  # (N,) int64, the arg-max class
    confidence: torch.Tensor  # (N,) float, the probability of the predicted class
    losses: torch.Tensor  # (N,) float, cross-entropy of each image
    top_k_correct: torch.Tensor | None  # (N,) bool, true class among the TOP_K most probable; None with <= TOP_K classes


@dataclass
class Metrics:
    """Summary numbers for one evaluation."""

    classes: list[str]
    images: int
    correct: int
    accuracy: float
    top5_accuracy: float | None  # None when there are TOP_K classes or fewer
    loss: float  # mean cross-entropy, without label smoothing
    per_class: list[dict[str, Any]]  # class, precision, recall, f1, support
    macro: dict[str, float]  # precision, recall, f1 averaged over the classes present in labels or predictions
    confusion: list[list[int]]  # rows: true class, columns: predicted class

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dict(self.__dict__)


@dataclass
class EvalReport:
    """A checkpoint's metrics on one split of a dataset, with the per-image outputs behind them."""

    checkpoint: str
    epoch: int
    backbone: str
    dataset: str
    data_dir: str | None
    split: str
    metrics: Metrics
    outputs: Outputs = field(repr=False)
    data: Dataset = field(repr=False)  # the split's raw images (label indices follow the checkpoint's classes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as `tlcore eval --json` prints it."""
        head = {key: getattr(self, key) for key in ("checkpoint", "epoch", "backbone", "dataset", "data_dir", "split")}
        return {**head, **self.metrics.to_dict()}


@torch.inference_mode()
def collect_outputs(model: torch.nn.Module, loader, device: torch.device) -> Outputs:
    """Run the model over a loader of normalised images; per-image outputs, read from the device once."""
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {"labels": [], "predictions": [], "confidence": [], "losses": [], "top": []}
    for images, labels, *unreadable in loader:
        if unreadable and unreadable[0]:  # outputs must cover every image, in order
            raise DataError(f"{unreadable[0][0]}; remove or fix it to evaluate this data")
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        logits = model(images).float()
        probabilities = logits.softmax(dim=1)
        confidence, predictions = probabilities.max(dim=1)
        parts["labels"].append(labels)
        parts["predictions"].append(predictions)
        parts["confidence"].append(confidence)
        parts["losses"].append(F.cross_entropy(logits, labels, reduction="none"))
        if logits.shape[1] > TOP_K:
            parts["top"].append((logits.topk(TOP_K, dim=1).indices == labels[:, None]).any(dim=1))
    if not parts["labels"]:
        raise DataError("there are no images to evaluate")
    joined = {key: torch.cat(values).cpu() for key, values in parts.items() if values}
    return Outputs(joined["labels"], joined["predictions"], joined["confidence"], joined["losses"], joined.get("top"))


def compute_metrics(outputs: Outputs, classes: list[str]) -> Metrics:
    """Accuracy, top-5 accuracy, per-class precision/recall/F1/support, macro averages and the confusion matrix.

    A class never predicted has precision 0; a class absent from the labels
    has recall 0. Macro averages cover the classes present in the labels or
    the predictions (as scikit-learn does by default).
    """
    count = len(classes)
    labels, predictions = outputs.labels.long(), outputs.predictions.long()
    confusion = torch.bincount(labels * count + predictions, minlength=count * count).reshape(count, count)
    true_positive = confusion.diag().double()
    predicted, support = confusion.sum(dim=0).double(), confusion.sum(dim=1).double()
    precision = torch.where(predicted > 0, true_positive / predicted.clamp(min=1), 0.0)
    recall = torch.where(support > 0, true_positive / support.clamp(min=1), 0.0)
    total = precision + recall
    f1 = torch.where(total > 0, 2 * precision * recall / total.clamp(min=1e-12), 0.0)
    present = (predicted > 0) | (support > 0)
    per_class = [
        {"class": name, "precision": p, "recall": r, "f1": f, "support": int(s)}
        for name, p, r, f, s in zip(classes, precision.tolist(), recall.tolist(), f1.tolist(), support.tolist(), strict=True)
    ]
    correct = int(true_positive.sum())
    images = len(labels)
    return Metrics(
        classes=list(classes),
        images=images,
        correct=correct,
        accuracy=correct / images,
        top5_accuracy=None if outputs.top_k_correct is None else int(outputs.top_k_correct.sum()) / images,
        loss=float(outputs.losses.double().mean()),
        per_class=per_class,
        macro={
            "precision": float(precision[present].mean()),
            "recall": float(recall[present].mean()),
            "f1": float(f1[present].mean()),
        },
        confusion=confusion.tolist(),
    )


def evaluate_checkpoint(
    checkpoint: str | Path | Predictor,
    dataset: str | None = None,
    data_dir: str | None = None,
    split: str = "val",
    batch_size: int = 64,
    device: str = "auto",
    workers: int | None = None,
    host: PluginHost | None = None,
) -> EvalReport:
    """Evaluate a checkpoint (a path, or a loaded :class:`Predictor`) on a split of a dataset.

    The dataset, its folder, the seed and the validation share default to the
    ones the checkpoint was trained with; the data folder is only carried over
    when the dataset is the recorded one. Images get the transform training
    validation used.
    """
    if split not in SPLITS:
        raise ConfigError(f"split {split!r} is not accepted; accepted: {', '.join(SPLITS)}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size}")
    host = host or get_host()
    predictor = checkpoint if isinstance(checkpoint, Predictor) else load_checkpoint(checkpoint, device, host)
    recorded = predictor.info.data or {}
    name = dataset or recorded.get("dataset")
    if not name:
        raise ConfigError(f"checkpoint {predictor.path} does not record the dataset it was trained on; pass --dataset")
    if data_dir is None and name == recorded.get("dataset"):
        data_dir = recorded.get("data_dir")
    overrides = {
        "dataset": name,
        "data_dir": data_dir,
        "seed": recorded.get("seed"),
        "val_fraction": recorded.get("val_fraction"),
    }
    config = build_config(overrides={k: v for k, v in overrides.items() if v is not None})
    splits = build_dataset(config, host)
    raw = align_classes(splits.train if split == "train" else splits.val, splits.classes, predictor.classes, name)
    # dataset order, so per-image outputs line up with ``raw``; unreadable images come back to this process
    dataset = TransformedDataset(raw, predictor.transform, tolerant=True)
    pin = predictor.device.type == "cuda"
    loader = make_loader(dataset, batch_size, None, default_workers(raw, workers), pin, collate_skipping)
    outputs = collect_outputs(predictor.model, loader, predictor.device)
    return EvalReport(
        checkpoint=str(predictor.path) if predictor.path is not None else "the model in memory",
        epoch=predictor.info.epoch,
        backbone=predictor.info.backbone,
        dataset=name,
        data_dir=data_dir,
        split=split,
        metrics=compute_metrics(outputs, predictor.classes),
        outputs=outputs,
        data=raw,
    )


class _Relabelled(Dataset):
    """A dataset whose label indices are mapped to another class order."""

    def __init__(self, base: Dataset, mapping: list[int]):
        self.base, self.mapping = base, mapping

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        image, label = self.base[index]
        return image, self.mapping[int(label)]


def align_classes(data: Dataset, data_classes: list[str], model_classes: list[str], name: str) -> Dataset:
    """The dataset with labels in the model's class order; DataError naming the classes when the sets differ."""
    if data_classes == model_classes:
        return data
    if sorted(data_classes) != sorted(model_classes):
        only_data = [c for c in data_classes if c not in model_classes]
        only_model = [c for c in model_classes if c not in data_classes]
        parts = [
            f"only in the dataset: {_names(only_data)}" if only_data else "",
            f"only in the checkpoint: {_names(only_model)}" if only_model else "",
        ]
        raise DataError(f"dataset {name!r} has other classes than the checkpoint; {'; '.join(p for p in parts if p)}")
    return _Relabelled(data, [model_classes.index(c) for c in data_classes])  # same classes, another order


def _names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _score_row(name: str, width: int, scores: dict, support: int) -> str:
    return f"{name:<{width}}  {scores['precision']:>9.4f}  {scores['recall']:>6.4f}  {scores['f1']:>6.4f}  {support:>7}"


def render_report(report: EvalReport) -> str:
    """The readable table `tlcore eval` prints."""
    m = report.metrics
    where = f"{report.dataset}" + (f" ({report.data_dir})" if report.data_dir else "")
    lines = [
        f"checkpoint  {report.checkpoint} (epoch {report.epoch}, {report.backbone})",
        f"data        {where}, {report.split} split, {m.images} images",
        f"accuracy    {m.accuracy:.4f} ({m.correct}/{m.images})",
        f"top-5       {m.top5_accuracy:.4f}"
        if m.top5_accuracy is not None
        else f"top-5       n/a ({len(m.classes)} classes)",
        f"loss        {m.loss:.4f}",
        "",
    ]
    width = max(9, *(len(c) for c in m.classes))
    lines.append(f"{'class':<{width}}  precision  recall     f1  support")
    for row in m.per_class:
        lines.append(_score_row(row["class"], width, row, row["support"]))
    lines.append(_score_row("macro avg", width, m.macro, m.images))
    lines.append("")
    if len(m.classes) > CONFUSION_TABLE_MAX:
        lines.append(f"confusion matrix: {len(m.classes)} classes, see --json")
        return "\n".join(lines)
    lines.append("confusion matrix (rows: true class, columns: predicted class by number)")
    cell = max(3, len(str(max(max(row) for row in m.confusion))), len(str(len(m.classes) - 1)))
    label_width = width + 5  # "NN  name "
    lines.append(" " * label_width + " ".join(f"{i:>{cell}}" for i in range(len(m.classes))))
    for index, (name, row) in enumerate(zip(m.classes, m.confusion, strict=True)):
        lines.append(f"{index:>2}  {name:<{width}} " + " ".join(f"{v:>{cell}}" for v in row))
    return "\n".join(lines)
