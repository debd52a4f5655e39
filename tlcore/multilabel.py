"""Multi-label classification (``--task multilabel``): labels, thresholds and metrics.

An image may carry any number of the classes. Labels are multi-hot rows:
float32 ``[C]`` per image (``[N, C]`` for a batch), 1.0 where the class is
present, columns in ``classes`` order. The head's ``C`` logits go through a
sigmoid each; the loss is binary cross-entropy (``BCEWithLogitsLoss``, with
``pos_weight`` under ``--class-weights``).

A class is predicted when its probability reaches that class's threshold
(:func:`predicted_classes`: float32 sigmoid, the one rule training, eval,
predict and export share). Thresholds are chosen on the validation split, per
class, as the one that maximises the class's F1 (ties: the highest), placed
halfway between the last probability taken and the next lower one, so that a
rescoring that moves a probability by a rounding error decides the same; a
class without a positive validation image keeps 0.5. They are stored in the
checkpoint.

Metrics follow scikit-learn's definitions (the tests cross-check them):

* average precision per class (``average_precision_score``, the step-wise
  area under the precision-recall curve, no interpolation); mAP is its mean
  over the classes that have at least one positive image (macro);
* precision, recall and F1 per class at the thresholds, and F1 micro
  (over every image-class decision) and macro (the mean over classes);
  an undefined ratio (0 / 0) counts 0, scikit-learn's ``zero_division=0``;
* subset accuracy (exact match): the share of images whose predicted label
  set equals the true one (``accuracy_score`` on multi-label input).

Everything here is torch on whatever device the tensors are on, in float64
where sums are taken.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tlcore.errors import ConfigError

TASKS = ("multiclass", "multilabel")
DEFAULT_THRESHOLD = 0.5  # where a class has no positive validation image to choose one on
# labels of one image, in one CSV cell or one labels.csv entry: separated by whitespace, ';' or '|'
LABEL_SEPARATORS = re.compile(r"[\s;|]+")


def split_labels(text: str) -> list[str]:
    """The label names in one cell: ``"cat dog"``, ``"cat;dog"``, ``"cat | dog"`` all give ``["cat", "dog"]``.

    Empty parts are dropped and the order kept; a name given twice is kept once.
    An empty or blank cell gives ``[]`` (the caller decides whether that is allowed).
    """
    names: list[str] = []
    for name in LABEL_SEPARATORS.split(text.strip()):
        if name and name not in names:
            names.append(name)
    return names


def multilabel_split(targets: Any, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split the rows of multi-hot ``targets`` ``[N, C]`` into ``(train, val)`` index arrays, sorted.

    Multi-label data cannot be stratified by one class per image; this is
    iterative stratification (Sechidis, Tsoumakas and Vlahavas, 2011): the
    label with the fewest images still unplaced goes first, and each of its
    images joins the side (validation or training) that still wants most of
    that label's images, ties broken by the side that wants most images, then
    by the seeded stream. Validation thus gets about ``val_fraction`` of the
    images and of each label's images. Afterwards every label keeps at least
    one training image: where a label ended with all its images in validation,
    one of them (the one with fewest labels) moves back to training. The result
    depends only on ``targets``, the fraction and the seed (numpy's PCG64
    stream). ConfigError for a fraction outside (0, 1).
    """
    if not isinstance(val_fraction, (int, float)) or not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction!r}")
    present = np.asarray(targets) > 0.5
    if present.ndim != 2:
        raise ValueError(f"targets must be [N, C] multi-hot rows, got shape {present.shape}")
    n, num_classes = present.shape
    rng = np.random.default_rng(int(seed) % 2**63)
    order = rng.permutation(n)  # the images in a seeded order: ties between images follow it
    present = present[order]
    # wanted[side]: images each side still wants (0 val, 1 train); wanted_label[side, c]: images of label c
    val_share = np.array([val_fraction, 1.0 - val_fraction])
    wanted = n * val_share
    wanted_label = np.outer(val_share, present.sum(axis=0).astype(np.float64))
    side = np.full(n, -1)
    remaining = present.copy()
    while True:
        counts = remaining.sum(axis=0)
        if not counts.any():
            break
        label = int(np.flatnonzero(counts == counts[counts > 0].min())[0])  # the rarest label still unplaced
        for row in np.flatnonzero(remaining[:, label]):
            want = wanted_label[:, label]
            if want[0] != want[1]:
                chosen = int(np.argmax(want))
            elif wanted[0] != wanted[1]:
                chosen = int(np.argmax(wanted))
            else:
                chosen = int(rng.integers(2))
            side[row] = chosen
            wanted[chosen] -= 1
            wanted_label[chosen] -= present[row]
            remaining[row] = False
    for row in np.flatnonzero(side < 0):  # images without any label: by the sides' remaining wants
        chosen = int(np.argmax(wanted)) if wanted[0] != wanted[1] else int(rng.integers(2))
        side[row] = chosen
        wanted[chosen] -= 1
    for label in range(num_classes):  # every label keeps a training image
        members = np.flatnonzero(present[:, label])
        if len(members) and not (side[members] == 1).any():
            fewest = members[np.argmin(present[members].sum(axis=1))]  # the first of the fewest labels
            side[fewest] = 1
    val = np.sort(order[side == 0]).astype(np.int64)
    train = np.sort(order[side == 1]).astype(np.int64)
    return train, val


def multi_hot(label_sets: list[list[int]], num_classes: int) -> torch.Tensor:
    """float32 ``[N, num_classes]``: row ``i`` is 1.0 at the class indices in ``label_sets[i]``, else 0.0.

    Raises ValueError for an index outside ``[0, num_classes)``.
    """
    rows = torch.zeros(len(label_sets), num_classes, dtype=torch.float32)
    for row, indices in enumerate(label_sets):
        for index in indices:
            if not 0 <= index < num_classes:
                raise ValueError(f"class index {index} outside [0, {num_classes})")
            rows[row, index] = 1.0
    return rows


def is_multi_hot(labels: torch.Tensor) -> bool:
    """Whether ``labels`` is a batch of multi-label rows (2-D floating point), not class indices."""
    return labels.ndim == 2 and labels.is_floating_point()


def positive_weights(targets: torch.Tensor) -> torch.Tensor:
    """``pos_weight`` for BCE from the training labels ``[N, C]``: negatives / positives per class (``auto``).

    The weight that makes a class's positive and negative images count
    equally in its loss (PyTorch's ``BCEWithLogitsLoss`` documentation gives
    this ratio). Raises ValueError naming the column of a class with no
    positive training image (its weight would be infinite).
    """
    positives = targets.double().sum(dim=0)
    missing = (positives == 0).nonzero().flatten().tolist()
    if missing:
        raise ValueError(f"no positive training image for class column(s) {missing}")
    return ((len(targets) - positives) / positives).float()


def _cuts(scores: torch.Tensor, hits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One class's ranking: ``(cut scores, true positives, images taken)`` at each distinct score, highest first.

    ``scores`` float64 ``[N]``, ``hits`` float64 ``[N]`` (1.0 for a positive). Predicting ``score >= cut`` takes
    the whole run of tied scores, so there is one cut per distinct score (the last position of each run).
    """
    order = torch.argsort(scores, descending=True, stable=True)
    ranked, true_pos = scores[order], torch.cumsum(hits[order], 0)
    last = torch.ones(len(ranked), dtype=torch.bool, device=scores.device)
    last[:-1] = ranked[1:] != ranked[:-1]
    taken = torch.arange(1, len(ranked) + 1, dtype=torch.float64, device=scores.device)
    return ranked[last], true_pos[last], taken[last]


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Average precision per class: float64 ``[C]``, NaN for a class with no positive image.

    ``scores``: ``[N, C]`` (probabilities or logits: only their order per
    class matters); ``targets``: ``[N, C]`` multi-hot. AP is
    ``sum_k (R_k - R_{k-1}) * P_k`` over the distinct score thresholds in
    decreasing order (scikit-learn's ``average_precision_score``; tied scores
    form one threshold).
    """
    scores, targets = scores.double(), (targets > 0.5).double()
    n, c = scores.shape
    result = torch.full((c,), float("nan"), dtype=torch.float64, device=scores.device)
    for column in range(c):
        positives = targets[:, column].sum()
        if positives == 0 or n == 0:
            continue
        _, tp, taken = _cuts(scores[:, column], targets[:, column])
        precision, recall = tp / taken, tp / positives
        previous = torch.cat([recall.new_zeros(1), recall[:-1]])
        result[column] = ((recall - previous) * precision).sum()
    return result


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """float32 ``[N, C]``: each class's probability, ``sigmoid(logit)`` computed in float32."""
    return torch.sigmoid(logits.float())


def predicted_classes(logits: torch.Tensor, thresholds: torch.Tensor | list[float]) -> torch.Tensor:
    """bool ``[N, C]``: class c is predicted where ``sigmoid(logit_c) >= thresholds[c]`` (float32 throughout)."""
    probabilities = class_probabilities(logits)
    return probabilities >= torch.as_tensor(thresholds, dtype=torch.float32, device=probabilities.device)


def choose_thresholds(probabilities: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-class thresholds float32 ``[C]`` that maximise each class's F1 on these (validation) images.

    ``probabilities``: ``[N, C]`` sigmoid outputs; ``targets``: ``[N, C]``
    multi-hot. The candidates take the k most probable images (predicting
    ``p >= t``); on a tie of F1 the fewest images win (fewer false positives).
    The threshold lies halfway between the k-th probability and the next lower
    distinct one (half the k-th when it is the lowest), so these images are
    decided the same after a rounding-sized change. A class without a positive
    image keeps DEFAULT_THRESHOLD.
    """
    probabilities, targets = probabilities.float().double(), (targets > 0.5).double()
    n, c = probabilities.shape
    thresholds = torch.full((c,), DEFAULT_THRESHOLD, dtype=torch.float64)
    for column in range(c):
        positives = targets[:, column].sum()
        if positives == 0 or n == 0:
            continue
        cuts, true_pos, taken = _cuts(probabilities[:, column].cpu(), targets[:, column].cpu())
        f1 = 2 * true_pos / (taken + positives)
        best = int(torch.nonzero(f1 == f1.max()).flatten()[0])  # the first maximum: the highest threshold
        below = cuts[best + 1] if best + 1 < len(cuts) else torch.zeros((), dtype=cuts.dtype)
        middle = ((cuts[best] + below) / 2).float()
        # between two neighbouring float32 values there is no middle: the k-th probability itself then
        thresholds[column] = middle if middle > below.float() else cuts[best]
    return thresholds.float().cpu()


@dataclass
class MultilabelMetrics:
    """A multi-label model's metrics on one set of images (:func:`multilabel_metrics`).

    Per-class lists are in ``classes`` order. ``ap`` holds None for a class
    with no positive image (it is left out of ``map``).
    """

    classes: list[str]
    images: int
    map: float  # mean average precision over the classes with a positive image; NaN when none has one
    f1_micro: float
    f1_macro: float
    precision_macro: float
    recall_macro: float
    subset_accuracy: float  # exact match: predicted label set == true label set
    loss: float  # mean binary cross-entropy per image and class (no pos_weight)
    ap: list[float | None]
    precision: list[float]
    recall: list[float]
    f1: list[float]
    support: list[int]  # positive images per class
    predicted: list[int]  # images predicted positive per class
    thresholds: list[float]

    def per_class(self) -> list[dict[str, Any]]:
        """One record per class: class, threshold, ap, precision, recall, f1, support, predicted."""
        return [
            {
                "class": name,
                "threshold": self.thresholds[i],
                "ap": self.ap[i],
                "precision": self.precision[i],
                "recall": self.recall[i],
                "f1": self.f1[i],
                "support": self.support[i],
                "predicted": self.predicted[i],
            }
            for i, name in enumerate(self.classes)
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: the summary numbers (NaN as None) and ``per_class``."""
        summary = {
            key: (None if isinstance(value, float) and value != value else value)
            for key, value in self.__dict__.items()
            if key not in ("ap", "precision", "recall", "f1", "support", "predicted", "thresholds", "classes")
        }
        return {**summary, "per_class": self.per_class()}


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator, 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1e-300), torch.zeros_like(numerator))


def multilabel_metrics(
    logits: torch.Tensor, targets: torch.Tensor, thresholds: torch.Tensor | list[float], classes: list[str]
) -> MultilabelMetrics:
    """Every multi-label metric of ``logits`` float ``[N, C]`` against ``targets`` multi-hot ``[N, C]``.

    ``thresholds``: ``[C]`` probabilities; a class is predicted when
    ``sigmoid(logit) >= threshold``. Raises ValueError when the shapes disagree.
    """
    thresholds = torch.as_tensor(thresholds, dtype=torch.float64).cpu()
    logits, targets = logits.double().cpu(), (targets > 0.5).double().cpu()
    if logits.shape != targets.shape or logits.ndim != 2 or thresholds.shape != (logits.shape[1],):
        raise ValueError(
            f"logits {tuple(logits.shape)}, targets {tuple(targets.shape)} and thresholds {tuple(thresholds.shape)} "
            "must be [N, C], [N, C] and [C]"
        )
    predicted = predicted_classes(logits, thresholds).double()
    true_pos = (predicted * targets).sum(0)
    predicted_pos, actual_pos = predicted.sum(0), targets.sum(0)
    precision, recall = _ratio(true_pos, predicted_pos), _ratio(true_pos, actual_pos)
    f1 = _ratio(2 * true_pos, predicted_pos + actual_pos)
    micro = _ratio(2 * true_pos.sum(), predicted_pos.sum() + actual_pos.sum())
    ap = average_precision(logits, targets)
    present = ap[~ap.isnan()]
    n = logits.shape[0]
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets) if n else torch.tensor(float("nan"))
    return MultilabelMetrics(
        classes=list(classes),
        images=n,
        map=float(present.mean()) if present.numel() else float("nan"),
        f1_micro=float(micro),
        f1_macro=float(f1.mean()) if len(f1) else float("nan"),
        precision_macro=float(precision.mean()) if len(precision) else float("nan"),
        recall_macro=float(recall.mean()) if len(recall) else float("nan"),
        subset_accuracy=float((predicted == targets).all(dim=1).double().mean()) if n else float("nan"),
        loss=float(loss),
        ap=[None if value != value else float(value) for value in ap.tolist()],
        precision=precision.tolist(),
        recall=recall.tolist(),
        f1=f1.tolist(),
        support=[int(v) for v in actual_pos.tolist()],
        predicted=[int(v) for v in predicted_pos.tolist()],
        thresholds=thresholds.float().tolist(),
    )


class MultilabelLoss(torch.nn.Module):
    """Binary cross-entropy on the logits, a sigmoid per class: the training loss of ``--task multilabel``.

    ``pos_weight`` float ``[C]`` scales each class's positive term
    (``--class-weights``; PyTorch's ``BCEWithLogitsLoss``); ``smoothing`` in
    [0, 1) moves the targets towards 1/2: ``y (1 - s) + s / 2`` (label
    smoothing for binary targets). The loss is the mean over images and
    classes. Called with ``(logits [N, C], targets [N, C])``.
    """

    def __init__(self, pos_weight: torch.Tensor | None = None, smoothing: float = 0.0):
        super().__init__()
        self.criterion = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        self.smoothing = smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The mean BCE of ``logits`` against the (smoothed) multi-hot ``targets``."""
        targets = targets.to(logits.dtype)
        if self.smoothing:
            targets = targets * (1 - self.smoothing) + self.smoothing / 2
        return self.criterion(logits, targets)


def exact_matches(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """int64 scalar on the logits' device: images whose every class is right at probability 0.5 (logit 0).

    The per-epoch ``train_acc`` and ``val_acc`` of a multilabel run (subset accuracy); no host synchronisation.
    """
    return ((logits > 0) == (targets > 0.5)).all(dim=1).sum()


def summed_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Plain BCE (no weights, no smoothing) averaged over classes and summed over images: ``val_loss`` times N."""
    per_element = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")
    return per_element.mean(dim=1).sum()
