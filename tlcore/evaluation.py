"""Evaluating a checkpoint on a dataset: accuracy, per-class precision/recall/F1, confusion matrix.

The data defaults to what the checkpoint records (dataset, data folder, seed,
validation share), so evaluating on the split a run validated on reproduces
that run's val_acc. Metrics are computed with torch alone.

A multi-label checkpoint (``task`` multilabel, :mod:`tlcore.multilabel`) is
scored on the same data read as multi-label, each class through its sigmoid
at the checkpoint's threshold: mAP, micro and macro F1, subset accuracy,
binary cross-entropy and per-class AP/precision/recall/F1
(:class:`tlcore.multilabel.MultilabelMetrics`, in :attr:`EvalReport.multilabel`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.nn import functional as F
from torch.utils.data import ConcatDataset, Dataset, Subset

from tlcore.build import build_dataset
from tlcore.calibration import ECE_BINS, check_reject_below, reliability_bins, selective
from tlcore.config import RunConfig, build_config, check_option
from tlcore.data import TransformedDataset, collate_indexed, make_loader
from tlcore.dataset import DatasetSplits
from tlcore.errors import ConfigError, DataError
from tlcore.inference import MultilabelTTAModel, Predictor, load_checkpoint
from tlcore.messages import shorten
from tlcore.multilabel import (
    MultilabelMetrics,
    choose_thresholds,
    class_probabilities,
    is_multi_hot,
    multilabel_metrics,
    predicted_classes,
)
from tlcore.plugins import PluginHost, get_host
from tlcore.threads import apply_budget, plan_budget, requested_threads
from tlcore.tta import TTAModel, TTAViews, flips_allowed

if TYPE_CHECKING:
    from tlcore.state import ValidationOutputs

SPLITS = ("val", "train", "test", "all")
TOP_K = 5  # top-5 accuracy is reported when there are more classes than this
CONFUSION_TABLE_MAX = 20  # larger confusion matrices are left to --json


@dataclass
class Outputs:
    """Per-image results of a model over a dataset, in dataset order (CPU tensors).

    Multiclass (``logits`` None): as the comments below say. Multilabel
    (``logits`` set, :func:`multilabel_outputs`): ``labels`` float32 ``(N, C)``
    multi-hot, ``predictions`` bool ``(N, C)`` (sigmoid probability at or above
    the class's threshold), ``confidence`` ``(N,)`` the highest class
    probability, ``losses`` ``(N,)`` the binary cross-entropy averaged over the
    classes, ``top_k_correct`` and the calibrated fields None.
    """

    labels: torch.Tensor  # (N,) int64, the true class
    predictions: torch.Tensor  # (N,) int64, the arg-max class
    confidence: torch.Tensor  # (N,) float, the probability of the predicted class
    losses: torch.Tensor  # (N,) float, cross-entropy of each image
    top_k_correct: torch.Tensor | None  # (N,) bool, true class among the TOP_K most probable; None with <= TOP_K classes
    indices: torch.Tensor | None = None  # (N,) int64, each image's position in the dataset (unreadable ones skipped)
    # with the checkpoint's temperature (tlcore.calibration): the top probability of softmax(logits / T) and the
    # cross-entropy of that softmax; None where unknown (equal to confidence and losses when T is 1)
    calibrated_confidence: torch.Tensor | None = None
    calibrated_losses: torch.Tensor | None = None
    # multilabel only: float32 (N, C) logits, sigmoid gives each class's probability (with TTA: the logit of the
    # views' mean probability); None for multiclass
    logits: torch.Tensor | None = None

    @property
    def multilabel(self) -> bool:
        """Whether these are a multi-label model's outputs (``logits`` kept, labels multi-hot)."""
        return self.logits is not None

    @property
    def correct(self) -> torch.Tensor:
        """(N,) bool: the arg-max class is the true one (multilabel: the predicted label set is the true one)."""
        if self.multilabel:
            return (self.predictions == (self.labels > 0.5)).all(dim=1)
        return self.predictions == self.labels


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
    """A checkpoint's metrics on one split of a dataset, with the per-image outputs behind them.

    ``task`` says which metrics it holds. ``"multiclass"``: ``metrics`` (and
    ``tta_metrics``) as :class:`Metrics`; ``multilabel`` None. ``"multilabel"``:
    ``metrics`` and ``tta_metrics`` are None; ``multilabel`` (and
    ``tta_multilabel`` with TTA) hold :class:`tlcore.multilabel.MultilabelMetrics`
    (mAP, F1 micro/macro, subset accuracy, loss, per-class AP/precision/recall/F1/
    support/threshold), ``thresholds`` the per-class thresholds used, and
    ``outputs`` the multi-label form of :class:`Outputs`. No calibration,
    rejection, top-5 or confusion matrix exists for multilabel. :attr:`images`
    counts the scored images for both.
    """

    checkpoint: str
    epoch: int
    backbone: str
    dataset: str
    data_dir: str | None
    split: str
    metrics: Metrics | None  # multiclass; None for multilabel (see ``multilabel``)
    outputs: Outputs = field(repr=False)
    data: Dataset = field(repr=False)  # the scored images, raw, in the order of ``outputs`` (labels: checkpoint's)
    unreadable: list[str] = field(default_factory=list)  # why each image left out could not be read
    split_sizes: dict[str, int] = field(default_factory=dict)  # images per split of the dataset: train, val, test
    tta_metrics: Metrics | None = None  # with test-time augmentation (tlcore.tta), beside the plain ``metrics``
    tta_outputs: Outputs | None = field(default=None, repr=False)
    tta_views: list[str] = field(default_factory=list)  # the views averaged, in order
    temperature: float = 1.0  # the checkpoint's (tlcore.calibration); 1.0: uncalibrated
    reject_below: float | None = None  # a rejection threshold to report coverage and accuracy at (--reject-below)
    task: str = "multiclass"  # the checkpoint's: multiclass or multilabel (tlcore.multilabel.TASKS)
    multilabel: MultilabelMetrics | None = None  # multilabel: the metrics at ``thresholds``; None for multiclass
    tta_multilabel: MultilabelMetrics | None = None  # multilabel with TTA: the same of the views' mean probabilities
    thresholds: list[float] | None = None  # multilabel: the probability each class is predicted at, classes order

    @property
    def images(self) -> int:
        """How many images were scored (unreadable ones are left out)."""
        return len(self.outputs.losses)

    @property
    def classes(self) -> list[str]:
        """The checkpoint's classes, in its order."""
        return list(self.metrics.classes if self.metrics is not None else self.multilabel.classes)  # type: ignore[union-attr]

    def calibration(self) -> dict[str, Any] | None:
        """Expected calibration error (15 bins, top label) and NLL before and after temperature scaling.

        Keys: temperature, bins, ece_before, ece_after, nll_before, nll_after,
        reliability_before, reliability_after (:class:`tlcore.calibration.ReliabilityBins` as dicts).
        None when the outputs lack calibrated probabilities.
        """
        out = self.outputs
        if out.multilabel or out.calibrated_confidence is None or out.calibrated_losses is None:
            return None
        before = reliability_bins(out.confidence, out.correct, ECE_BINS)
        after = reliability_bins(out.calibrated_confidence, out.correct, ECE_BINS)
        return {
            "temperature": self.temperature,
            "bins": ECE_BINS,
            "ece_before": before.ece,
            "ece_after": after.ece,
            "nll_before": float(out.losses.double().mean()),
            "nll_after": float(out.calibrated_losses.double().mean()),
            "reliability_before": before.to_dict(),
            "reliability_after": after.to_dict(),
        }

    def rejection(self) -> dict[str, Any] | None:
        """Coverage and accuracy on the answered images at ``reject_below`` (calibrated top probability); None unasked."""
        if self.reject_below is None or self.outputs.multilabel:
            return None
        out = self.outputs
        confidence = out.calibrated_confidence if out.calibrated_confidence is not None else out.confidence
        return selective(confidence, out.correct, self.reject_below).to_dict()

    @classmethod
    def from_validation(
        cls,
        validation: ValidationOutputs,
        splits: DatasetSplits,
        *,
        checkpoint: str,
        backbone: str,
        dataset: str,
        data_dir: str | None,
        temperature: float = 1.0,
        thresholds: torch.Tensor | list[float] | None = None,
    ) -> EvalReport:
        """The report of a run's own validation pass (``RunState.last_validation`` or ``best_validation``).

        No image is scored again: the figures are those of the pass, i.e. the
        val_acc and val_loss metrics.jsonl records for ``validation.epoch``.
        ``splits`` are the run's (``RunState.splits``), ``checkpoint`` the file
        holding that epoch's model (or "the model in memory"), ``temperature`` its
        calibration (``RunState.temperatures``). Validation labels that are float
        multi-hot ``[N, C]`` give a multilabel report (``task`` "multilabel"):
        ``thresholds`` (``[C]`` probabilities) are the epoch's per-class
        thresholds; None chooses them on these outputs as the run does
        (:func:`tlcore.multilabel.choose_thresholds`), which reproduces the
        epoch's val_f1_micro/val_f1_macro; ``temperature`` is then unused. Raises ValueError
        when the outputs do not fit the validation split.
        """
        classes = list(splits.classes)
        if validation.logits.ndim != 2 or validation.logits.shape[1] != len(classes):
            raise ValueError(f"validation logits {tuple(validation.logits.shape)} do not fit {len(classes)} classes")
        positions = validation.indices.tolist()
        if positions and not 0 <= min(positions) <= max(positions) < len(splits.val):
            raise ValueError(f"validation indices run outside the validation split of {len(splits.val)} images")
        whole = positions == list(range(len(splits.val)))
        common = dict(
            checkpoint=checkpoint,
            epoch=validation.epoch,
            backbone=backbone,
            dataset=dataset,
            data_dir=data_dir,
            split="val",
            data=splits.val if whole else Subset(splits.val, positions),
            split_sizes=split_sizes(splits),
        )
        if is_multi_hot(validation.labels):
            logits, labels = validation.logits.float(), validation.labels.float()
            if labels.shape != logits.shape:
                raise ValueError(f"validation labels {tuple(labels.shape)} do not fit logits {tuple(logits.shape)}")
            if len(labels) == 0:
                raise DataError("there are no images to evaluate")
            if thresholds is None:
                thresholds = choose_thresholds(class_probabilities(logits), labels)
            outputs = multilabel_outputs(logits, labels, thresholds, validation.indices)  # type: ignore[arg-type]
            chosen = torch.as_tensor(thresholds, dtype=torch.float32).tolist()
            return cls(
                **common,  # type: ignore[arg-type]
                metrics=None,
                outputs=outputs,
                task="multilabel",
                multilabel=multilabel_metrics(outputs.logits, labels, chosen, classes),  # type: ignore[arg-type]
                thresholds=chosen,
            )
        outputs = outputs_from_logits(validation.logits, validation.labels, validation.indices, temperature)
        return cls(
            **common,  # type: ignore[arg-type]
            metrics=compute_metrics(outputs, classes),
            outputs=outputs,
            temperature=temperature,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as `tlcore eval --json` prints it (``tta``: the TTA metrics and views, when asked).

        Multilabel: ``task`` "multilabel", ``classes``, ``images`` and the keys of
        :meth:`tlcore.multilabel.MultilabelMetrics.to_dict` (map, f1_micro, f1_macro,
        precision_macro, recall_macro, subset_accuracy, loss, per_class) in place of the multiclass metrics.
        """
        head = {key: getattr(self, key) for key in ("checkpoint", "epoch", "backbone", "dataset", "data_dir", "split")}
        skipped = {"unreadable_images": len(self.unreadable), "unreadable": list(self.unreadable)}
        if self.multilabel is not None:
            record = {
                **head,
                "task": self.task,
                "split_sizes": dict(self.split_sizes),
                "classes": list(self.multilabel.classes),
                **self.multilabel.to_dict(),
                **skipped,
            }
            if self.tta_multilabel is not None:
                record["tta"] = {"views": list(self.tta_views), **self.tta_multilabel.to_dict()}
            return record
        assert self.metrics is not None  # multiclass
        record = {**head, "task": self.task, "split_sizes": dict(self.split_sizes), **self.metrics.to_dict(), **skipped}
        if self.tta_metrics is not None:
            record["tta"] = {"views": list(self.tta_views), **self.tta_metrics.to_dict()}
        calibration, rejection = self.calibration(), self.rejection()
        if calibration is not None:
            record["calibration"] = calibration
        if rejection is not None:
            record["rejection"] = rejection
        return record


@torch.inference_mode()
def collect_outputs(
    model: torch.nn.Module,
    loader,
    device: torch.device,
    skipped: list[str] | None = None,
    temperature: float = 1.0,
    thresholds: list[float] | torch.Tensor | None = None,
) -> Outputs:
    """Run the model over a loader of normalised images; per-image outputs, read from the device once.

    The loader yields ``(images, labels)``, optionally followed by the reasons
    of the batch's unreadable images and the dataset positions of its readable
    ones (:func:`tlcore.data.collate_indexed`). Unreadable images are appended
    to ``skipped`` and left out; with ``skipped`` None the first one is a
    DataError (strict). ``temperature`` gives the calibrated confidence and losses (:func:`per_image`).
    With ``thresholds`` (``[C]`` probabilities) the model is a multi-label one: labels are multi-hot
    ``[B, C]`` and the outputs are :func:`multilabel_outputs` at those thresholds (``temperature`` unused).
    """
    if thresholds is not None:
        return _collect_multilabel(model, loader, device, skipped, thresholds)
    model.eval()
    keys = ("labels", "predictions", "confidence", "losses", "top", "calibrated_confidence", "calibrated_losses")
    parts: dict[str, list[torch.Tensor]] = {key: [] for key in keys}
    positions: list[torch.Tensor] = []
    for images, labels in _batches(loader, skipped, positions):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        for key, value in per_image(model(images).float(), labels, temperature).items():
            parts[key].append(value)
    if not parts["labels"]:
        reason = f": none could be read ({skipped[0]})" if skipped else ""
        raise DataError(f"there are no images to evaluate{reason}")
    joined = {key: torch.cat(values).cpu() for key, values in parts.items() if values}
    indices = torch.cat(positions).to(torch.int64) if positions else None
    top = joined.get("top")
    return Outputs(
        joined["labels"],
        joined["predictions"],
        joined["confidence"],
        joined["losses"],
        top,
        indices,
        joined["calibrated_confidence"],
        joined["calibrated_losses"],
    )


def _batches(loader, skipped: list[str] | None, positions: list[torch.Tensor]):
    """The loader's readable ``(images, labels)`` batches; unreadable images handled as :func:`collect_outputs` says."""
    for images, labels, *rest in loader:
        unreadable = rest[0] if rest else []
        if unreadable and skipped is None:
            raise DataError(f"{unreadable[0]}; stopped by --strict (without it, such images are skipped and counted)")
        if skipped is not None:
            skipped.extend(unreadable)
        if len(rest) > 1:
            positions.append(rest[1])
        if labels.numel() == 0:  # every image of the batch was unreadable
            continue
        yield images, labels


def _collect_multilabel(
    model: torch.nn.Module, loader, device: torch.device, skipped: list[str] | None, thresholds
) -> Outputs:
    """:func:`collect_outputs` of a multi-label model: its logits and multi-hot labels kept whole, then scored."""
    model.eval()
    logits: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    positions: list[torch.Tensor] = []
    for images, batch_labels in _batches(loader, skipped, positions):
        out = model(images.to(device, non_blocking=True)).float()
        if not is_multi_hot(batch_labels) or batch_labels.shape != out.shape:
            raise DataError(
                f"a multilabel model needs multi-hot labels [images, {out.shape[1]}]; the data gives "
                f"{batch_labels.dtype} {tuple(batch_labels.shape)} for a batch of {len(out)} images"
            )
        logits.append(out)
        labels.append(batch_labels)
    if not logits:
        reason = f": none could be read ({skipped[0]})" if skipped else ""
        raise DataError(f"there are no images to evaluate{reason}")
    indices = torch.cat(positions).to(torch.int64) if positions else None
    return multilabel_outputs(torch.cat(logits).cpu(), torch.cat(labels).float(), thresholds, indices)


def multilabel_outputs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    thresholds: list[float] | torch.Tensor,
    indices: torch.Tensor | None = None,
) -> Outputs:
    """Multi-label :class:`Outputs` from logits ``[N, C]``, multi-hot labels ``[N, C]`` and thresholds ``[C]``.

    A class is predicted when ``sigmoid(logit) >= threshold``
    (:func:`tlcore.multilabel.predicted_classes`, the rule predict and training use). Raises
    DataError for no images, ValueError for shapes that do not match.
    """
    threshold = torch.as_tensor(thresholds, dtype=torch.float64).cpu()
    if logits.ndim != 2 or labels.shape != logits.shape or threshold.shape != (logits.shape[1],):
        raise ValueError(
            f"logits must be [N, C], labels [N, C] and thresholds [C]; got {tuple(logits.shape)}, "
            f"{tuple(labels.shape)} and {tuple(threshold.shape)}"
        )
    if indices is not None and indices.shape != (len(labels),):
        raise ValueError(f"indices must be [N]; got {tuple(indices.shape)} for {len(labels)} labels")
    if len(labels) == 0:
        raise DataError("there are no images to evaluate")
    logits, targets = logits.float().cpu(), (labels > 0.5).float().cpu()
    probabilities = class_probabilities(logits)
    losses = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(dim=1)
    return Outputs(
        labels=targets,
        predictions=predicted_classes(logits, threshold),
        confidence=probabilities.max(dim=1).values.float(),
        losses=losses,
        top_k_correct=None,
        indices=None if indices is None else indices.cpu().to(torch.int64),
        logits=logits,
    )


def per_image(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> dict[str, torch.Tensor]:
    """Per-image results of float32 logits ``[N, C]`` against int64 labels ``[N]``, on their device.

    Keys: labels, predictions (arg-max), confidence (its softmax probability),
    losses (plain cross-entropy) and, with more than TOP_K classes, top (the
    true class among the TOP_K highest logits), calibrated_confidence and
    calibrated_losses (the same of ``softmax(logits / temperature)``; the arg-max is the same).
    """
    confidence, predictions = logits.softmax(dim=1).max(dim=1)
    scaled = logits / temperature
    parts = {
        "labels": labels,
        "predictions": predictions,
        "confidence": confidence,
        "losses": F.cross_entropy(logits, labels, reduction="none"),
        "calibrated_confidence": scaled.softmax(dim=1).max(dim=1).values,
        "calibrated_losses": F.cross_entropy(scaled, labels, reduction="none"),
    }
    if logits.shape[1] > TOP_K:
        parts["top"] = (logits.topk(TOP_K, dim=1).indices == labels[:, None]).any(dim=1)
    return parts


def outputs_from_logits(
    logits: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None, temperature: float = 1.0
) -> Outputs:
    """:class:`Outputs` from a whole split's logits ``[N, C]`` and labels ``[N]`` (and dataset positions ``[N]``).

    The same numbers :func:`collect_outputs` gives for those logits; a split
    already scored (a run's last validation pass) need not be scored again.
    Raises DataError for an empty split, ValueError for shapes that do not match.
    """
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"logits must be [N, C] and labels [N]; got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if indices is not None and indices.shape != labels.shape:
        raise ValueError(f"indices must be [N] like labels; got {tuple(indices.shape)} for {labels.shape[0]} labels")
    if labels.numel() == 0:
        raise DataError("there are no images to evaluate")
    parts = {key: value.cpu() for key, value in per_image(logits.float(), labels.long(), temperature).items()}
    positions = None if indices is None else indices.cpu().to(torch.int64)
    return Outputs(
        parts["labels"],
        parts["predictions"],
        parts["confidence"],
        parts["losses"],
        parts.get("top"),
        positions,
        parts["calibrated_confidence"],
        parts["calibrated_losses"],
    )


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
    split: str | None = None,
    batch_size: int = 64,
    device: str = "auto",
    workers: int | None = None,
    *,
    host: PluginHost | None = None,
    strict: bool = False,
    tta: bool = False,
    reject_below: float | None = None,
    options: dict[str, Any] | None = None,
) -> EvalReport:
    """Evaluate a checkpoint (a path, or a loaded :class:`Predictor`) on a split of a dataset.

    The dataset, its folder, the seed and the validation share default to the
    ones the checkpoint was trained with; the data folder is only carried over
    when the dataset is the recorded one, and only when that folder still
    exists (a recorded location never makes eval create folders or download).
    ``split`` is val, train, test or all (train, val and test together);
    None means val on the data the model was trained on and all on any
    other data, so a new folder is scored whole. Images get the transform training
    validation used. Images that cannot be read are skipped and listed in
    :attr:`EvalReport.unreadable`, as training skips them (with ``strict``,
    the first one is a DataError). With ``tta`` the images are scored a second
    time with test-time augmentation (:mod:`tlcore.tta`: the mean softmax of 5
    crops, and of their mirrors where both the checkpoint's data and this data
    allow flips), reported in :attr:`EvalReport.tta_metrics` beside the plain figures.
    The checkpoint's temperature gives the calibrated probabilities (the ECE
    before and after: :meth:`EvalReport.calibration`; TTA averages calibrated
    probabilities); ``reject_below`` (in [0, 1]) reports coverage and accuracy
    on the images whose top calibrated probability reaches it (:meth:`EvalReport.rejection`).
    ``options`` are values of options plugins declare (``--image-column``: see
    :mod:`tlcore.plugin_options`); the ones the checkpoint recorded fill in the rest
    for its own dataset.

    A multilabel checkpoint (``Predictor.task``) has the dataset read as multi-label
    (``DatasetOptions.multilabel``) and is reported in :attr:`EvalReport.multilabel` at its
    thresholds; with ``tta`` the views' sigmoid probabilities are averaged per class
    (:class:`tlcore.inference.MultilabelTTAModel`), in :attr:`EvalReport.tta_multilabel`.
    ``reject_below`` means nothing there (no single top probability): ConfigError. ConfigError
    too when the data read is single-label for a multilabel checkpoint, or the reverse (:func:`tlcore.build.check_task`).
    """
    reject_below = check_reject_below(reject_below)
    if split is not None and split not in SPLITS:
        raise ConfigError(f"split {split!r} is not accepted; accepted: {', '.join(SPLITS)}")
    check_option("batch_size", batch_size)  # the bounds `tlcore run` has, before anything loads
    check_option("workers", workers)
    host = host or get_host()
    predictor = checkpoint if isinstance(checkpoint, Predictor) else load_checkpoint(checkpoint, device, host)
    multilabel = predictor.multilabel
    predictor.check_options(None, reject_below)  # what the checkpoint's task accepts: no rejection for multilabel
    config, other_folder = eval_data_config(predictor, dataset, data_dir, options, host)
    name, data_dir = config.dataset, config.data_dir
    splits = build_dataset(config, host)  # checks the data is of the checkpoint's task (tlcore.build.check_task)
    split = split or ("all" if other_folder else "val")
    raw = align_classes(pick_split(splits, split, name), splits.classes, predictor.classes, name)
    sizes = split_sizes(splits)
    # dataset order, each image with its position; unreadable images come back to this process as reasons
    dataset = TransformedDataset(raw, predictor.transform, tolerant=True, with_index=True)
    pin = predictor.device.type == "cuda"
    workers = loader_workers(raw, predictor.image_size, predictor.device, workers)
    loader = make_loader(dataset, batch_size, None, workers, pin_memory=pin, collate_fn=collate_indexed)
    unreadable: list[str] = []
    skipped = None if strict else unreadable
    thresholds = predictor.thresholds if multilabel else None
    outputs = collect_outputs(predictor.model, loader, predictor.device, skipped, predictor.temperature, thresholds)
    tta_outputs, tta_views = None, []
    if tta:
        views = TTAViews(predictor.preprocessing, predictor.image_size, flip=_tta_flips(predictor, splits, name))
        viewed = TransformedDataset(raw, views, tolerant=True, with_index=True)
        loader = make_loader(viewed, batch_size, None, workers, pin_memory=pin, collate_fn=collate_indexed)
        # the mean of the views' calibrated probabilities (multilabel: sigmoid per class), as `predict --tta` gives
        model = MultilabelTTAModel(predictor.model) if multilabel else TTAModel(predictor.calibrated)
        tta_outputs = collect_outputs(model, loader, predictor.device, None if strict else [], thresholds=thresholds)
        tta_views = views.names
    if unreadable and outputs.indices is not None:  # the report's images must line up with the outputs
        raw = Subset(raw, outputs.indices.tolist())
    classes = predictor.classes
    if multilabel:
        scores = {
            "metrics": None,
            "tta_metrics": None,
            "multilabel": multilabel_metrics(outputs.logits, outputs.labels, thresholds, classes),  # type: ignore[arg-type]
            "tta_multilabel": None
            if tta_outputs is None
            else multilabel_metrics(tta_outputs.logits, tta_outputs.labels, thresholds, classes),  # type: ignore[arg-type]
            "thresholds": list(thresholds),  # type: ignore[arg-type]
        }
    else:
        scores = {
            "metrics": compute_metrics(outputs, classes),
            "tta_metrics": compute_metrics(tta_outputs, classes) if tta_outputs is not None else None,
        }
    return EvalReport(
        checkpoint=_checkpoint_name(predictor),
        epoch=predictor.info.epoch,
        backbone=predictor.info.backbone,
        dataset=name,
        data_dir=data_dir,
        split=split,
        outputs=outputs,
        data=raw,
        unreadable=unreadable,
        split_sizes=sizes,
        tta_outputs=tta_outputs,
        tta_views=tta_views,
        temperature=predictor.temperature,
        reject_below=reject_below,
        task=predictor.task,
        **scores,  # type: ignore[arg-type]
    )


def _checkpoint_name(predictor: Predictor) -> str:
    return str(predictor.path) if predictor.path is not None else "the model in memory"


def loader_workers(dataset: Dataset, image_size: int, device: torch.device, workers: int | None) -> int:
    """DataLoader workers for scoring ``dataset`` at ``image_size`` px; on the CPU, sets torch's threads to match.

    The thread budget of training (:mod:`tlcore.threads`): on the CPU, workers
    and compute threads share the cores instead of up to 8 workers competing
    with one thread per core. ``workers`` (``--workers``) and ``OMP_NUM_THREADS``
    are kept when given; outside the tlcore command the process keeps its
    thread count. Elsewhere, :func:`tlcore.data.default_workers`.
    """
    threads, threads_from = requested_threads(None)
    budget = plan_budget(dataset, image_size, device.type, threads, workers, threads_from=threads_from)
    if device.type == "cpu":
        apply_budget(budget)
    return budget.workers


def _tta_flips(predictor: Predictor, splits: DatasetSplits, name: str) -> bool:
    """Whether TTA may mirror: the evaluated data allows flips, and so did the checkpoint's.

    A checkpoint written before it recorded ``flip_invariant`` is taken at its dataset's word when that is the
    dataset evaluated; otherwise it is not mirrored.
    """
    recorded = predictor.info.data or {}
    if "flip_invariant" not in recorded:
        return splits.flip_invariant and name == recorded.get("dataset")
    return splits.flip_invariant and flips_allowed(recorded)


def eval_data_config(
    predictor: Predictor,
    dataset: str | None,
    data_dir: str | None,
    options: dict[str, Any] | None = None,
    host: PluginHost | None = None,
) -> tuple[RunConfig, bool]:
    """The data to evaluate on, as a RunConfig, and whether it is a folder the checkpoint was not trained on.

    The recorded dataset, folder, seed and validation share fill in what the
    user did not pass. The recorded folder is used only when the user passed
    no folder for the recorded dataset, and only if it still exists (DataError
    when it is gone); data named only by the checkpoint is never downloaded.
    """
    user_named = dataset is not None or data_dir is not None
    recorded = predictor.info.data or {}
    name = dataset or recorded.get("dataset")
    if not name:
        raise ConfigError(f"checkpoint {predictor.path} does not record the dataset it was trained on; pass --dataset")
    same_dataset = name == recorded.get("dataset")
    recorded_dir = recorded.get("data_dir")
    if data_dir is None and same_dataset and recorded_dir:
        if not Path(recorded_dir).expanduser().is_dir():
            raise DataError(
                f"the data folder checkpoint {predictor.path} was trained on, {recorded_dir}, does not exist "
                "(nothing was created or downloaded); pass --data-dir"
            )
        data_dir = recorded_dir
    other_folder = data_dir is not None and not (same_dataset and _same_folder(data_dir, recorded_dir))
    overrides = {
        "dataset": name,
        "data_dir": data_dir,
        "seed": recorded.get("seed"),
        "val_fraction": recorded.get("val_fraction"),
        # a multilabel checkpoint has its data read as multi-label (DatasetOptions.multilabel)
        "task": predictor.task,
        # the plugins' options: the ones given here over the recorded ones (for the recorded dataset only)
        "plugin_options": recorded.get("options") if same_dataset else None,
        **(options or {}),
        # a cross-validation fold's checkpoint: its held-out fold is the "val" split (only on the recorded data)
        **({"folds": recorded.get("folds"), "fold": recorded.get("fold")} if same_dataset and not other_folder else {}),
        # only data the user named may be fetched: a checkpoint's record never starts a download
        "download": user_named,
    }
    return build_config(overrides={k: v for k, v in overrides.items() if v is not None}, host=host), other_folder


def _same_folder(given: str | None, recorded: str | None) -> bool:
    if given is None or recorded is None:
        return given == recorded
    return Path(given).expanduser().resolve() == Path(recorded).expanduser().resolve()


def pick_split(splits: DatasetSplits, split: str, name: str) -> Dataset:
    """The images of one split, or of all of them (train, val, then test) for ``all``; ConfigError without a test split."""
    if split == "test" and splits.test is None:
        accepted = ", ".join(s for s in SPLITS if s != "test")
        raise ConfigError(f"split 'test' is not accepted: dataset {name!r} has no test split; accepted: {accepted}")
    if split == "all":
        return ConcatDataset([part for part in _distinct_parts(splits).values() if part is not None])
    return {"train": splits.train, "val": splits.val, "test": splits.test}[split]


def _distinct_parts(splits: DatasetSplits) -> dict[str, Dataset | None]:
    """train, val and test, without a test split that is the validation split itself (CIFAR's test batch)."""
    test = splits.test if splits.test is not splits.val else None
    return {"train": splits.train, "val": splits.val, "test": test}


def split_sizes(splits: DatasetSplits) -> dict[str, int]:
    """Images per split (train, val, and test where the dataset has one apart from its validation split)."""
    parts = _distinct_parts(splits)
    return {key: len(part) for key, part in parts.items() if part is not None}  # type: ignore[arg-type]


class _Relabelled(Dataset):
    """A dataset whose labels are mapped to another class order.

    ``mapping[i]`` is the new index of the dataset's class ``i``: a class index
    label becomes ``mapping[label]``, a multi-hot row ``[C]`` has its column ``i`` moved to ``mapping[i]``.
    """

    def __init__(self, base: Dataset, mapping: list[int]):
        self.base, self.mapping = base, mapping
        self.columns = torch.tensor(mapping, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        image, label = self.base[index]
        if isinstance(label, torch.Tensor) and label.ndim == 1:  # multi-hot
            if label.shape != self.columns.shape:
                columns = len(self.columns)
                raise DataError(f"image {index} has a multi-hot label of {len(label)} columns for {columns} classes")
            moved = torch.zeros_like(label)
            moved[self.columns] = label
            return image, moved
        return image, self.mapping[int(label)]


def align_classes(data: Dataset, data_classes: list[str], model_classes: list[str], name: str) -> Dataset:
    """The dataset with labels in the model's class order; DataError naming the classes when the sets differ.

    Class index labels are renumbered; multi-hot labels ``[C]`` have their columns reordered.
    """
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


def _skipped_lines(unreadable: list[str]) -> list[str]:
    """The report's line on images left out because they could not be read (none when every image was read)."""
    if not unreadable:
        return []
    return [f"skipped     {len(unreadable)} unreadable images, not scored: {shorten(unreadable, 3, '; ')}"]


def _scored(report: EvalReport) -> str:
    """Which images were scored and how many, saying so whenever they are a subset of the dataset."""
    sizes, images = report.split_sizes, report.images
    parts = ", ".join(f"{key} {count}" for key, count in sizes.items())
    if report.split == "all" or not sizes:
        return f"{report.split} splits, {images} images" + (f" ({parts})" if parts else "")
    return (
        f"{report.split} split, {images} images (a subset: {sizes.get(report.split, images)} of the dataset's "
        f"{sum(sizes.values())}: {parts}; --split all scores every one)"
    )


def _score_row(name: str, width: int, scores: dict, support: int) -> str:
    return f"{name:<{width}}  {scores['precision']:>9.4f}  {scores['recall']:>6.4f}  {scores['f1']:>6.4f}  {support:>7}"


def _tta_lines(report: EvalReport) -> list[str]:
    """The report's line on test-time augmentation, when it was asked for."""
    t = report.tta_metrics
    if t is None:
        return []
    top5 = f", top-5 {t.top5_accuracy:.4f}" if t.top5_accuracy is not None else ""
    mirrored = " and their mirrors" if len(report.tta_views) > 5 else " (not mirrored: flips may change the class)"
    return [
        f"with TTA    {t.accuracy:.4f} ({t.correct}/{t.images}){top5}, loss {t.loss:.4f}: mean softmax of "
        f"{len(report.tta_views)} views, centre and corner crops{mirrored}"
    ]


def _calibration_lines(report: EvalReport) -> list[str]:
    """The report's lines on calibration (ECE before and after temperature scaling) and on rejection, if asked."""
    lines = []
    calibration = report.calibration()
    if calibration is not None:
        c = calibration
        if c["temperature"] == 1.0:  # nothing to compare: the checkpoint has no fitted temperature
            lines.append(f"calibration ECE ({c['bins']} bins) {c['ece_before']:.4f}; the checkpoint has no temperature")
        else:
            lines.append(
                f"calibrated  temperature {c['temperature']:.4f}: ECE ({c['bins']} bins) {c['ece_before']:.4f} -> "
                f"{c['ece_after']:.4f}, NLL {c['nll_before']:.4f} -> {c['nll_after']:.4f}"
            )
    rejection = report.rejection()
    if rejection is not None:
        r = rejection
        accuracy = f"{r['accuracy']:.4f} ({r['correct']}/{r['answered']})" if r["accuracy"] is not None else "n/a"
        label = f"reject <{r['threshold']:g}"
        lines.append(
            f"{label:<11} coverage {r['coverage']:.4f} ({r['answered']}/{r['total']} answered, "
            f"{r['rejected']} unknown), accuracy on the answered {accuracy}"
        )
    return lines


def _number(value: float | None) -> str:
    """A metric to 4 decimals; n/a where undefined (None or NaN: no positive image)."""
    return "n/a" if value is None or value != value else f"{value:.4f}"


def _multilabel_summary(m: MultilabelMetrics) -> str:
    return (
        f"mAP {_number(m.map)}, F1 micro {_number(m.f1_micro)} macro {_number(m.f1_macro)}, "
        f"subset accuracy {_number(m.subset_accuracy)}, loss {_number(m.loss)}"
    )


def render_multilabel(report: EvalReport) -> str:
    """The readable table `tlcore eval` prints for a multilabel checkpoint: summary, then one row per class."""
    m = report.multilabel
    assert m is not None
    where = f"{report.dataset}" + (f" ({report.data_dir})" if report.data_dir else "")
    with_positives = sum(1 for ap in m.ap if ap is not None)
    exact = int(report.outputs.correct.sum())
    lines = [
        f"checkpoint  {report.checkpoint} (epoch {report.epoch}, {report.backbone}), multilabel",
        f"data        {where}, {_scored(report)}",
        *_skipped_lines(report.unreadable),
        f"mAP         {_number(m.map)} (mean average precision over the {with_positives} of {len(m.classes)} classes "
        "with a positive image)",
        f"F1          micro {_number(m.f1_micro)}, macro {_number(m.f1_macro)} "
        f"(precision {_number(m.precision_macro)}, recall {_number(m.recall_macro)}, macro) at the checkpoint's thresholds",
        f"subset acc  {_number(m.subset_accuracy)} ({exact}/{m.images} images with exactly the true labels at these "
        "thresholds; the run's val_acc counts them at 0.5)",
    ]
    t = report.tta_multilabel
    if t is not None:
        mirrored = " and their mirrors" if len(report.tta_views) > 5 else " (not mirrored: flips may change the labels)"
        lines.append(
            f"with TTA    {_multilabel_summary(t)}: mean sigmoid probability of {len(report.tta_views)} views, "
            f"centre and corner crops{mirrored}"
        )
    lines += [f"loss        {_number(m.loss)} (binary cross-entropy, mean over images and classes)", ""]
    width = max(9, *(len(c) for c in m.classes))
    lines.append(f"{'class':<{width}}  threshold      AP  precision  recall     f1  support  predicted")
    for row in m.per_class():
        lines.append(
            f"{row['class']:<{width}}  {row['threshold']:>9.4f}  {_number(row['ap']):>6}  {row['precision']:>9.4f}  "
            f"{row['recall']:>6.4f}  {row['f1']:>6.4f}  {row['support']:>7}  {row['predicted']:>9}"
        )
    lines.append(
        f"{'macro avg':<{width}}  {'':>9}  {_number(m.map):>6}  {m.precision_macro:>9.4f}  {m.recall_macro:>6.4f}  "
        f"{m.f1_macro:>6.4f}  {sum(m.support):>7}  {sum(m.predicted):>9}"
    )
    return "\n".join(lines)


def render_report(report: EvalReport) -> str:
    """The readable table `tlcore eval` prints (:func:`render_multilabel` for a multilabel checkpoint)."""
    if report.multilabel is not None:
        return render_multilabel(report)
    m = report.metrics
    assert m is not None
    where = f"{report.dataset}" + (f" ({report.data_dir})" if report.data_dir else "")
    lines = [
        f"checkpoint  {report.checkpoint} (epoch {report.epoch}, {report.backbone})",
        f"data        {where}, {_scored(report)}",
        *_skipped_lines(report.unreadable),
        f"accuracy    {m.accuracy:.4f} ({m.correct}/{m.images})",
        *_tta_lines(report),
        f"top-5       {m.top5_accuracy:.4f}"
        if m.top5_accuracy is not None
        else f"top-5       n/a ({len(m.classes)} classes)",
        f"loss        {m.loss:.4f}",
        *_calibration_lines(report),
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
