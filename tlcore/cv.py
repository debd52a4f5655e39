"""Cross-validation: K runs on stratified folds of the training data, and their summary.

Fold selection is a wrapper around any dataset's splits (:func:`fold_splits`):
the training split is dealt into K folds, class by class in a seeded random
order, so every fold holds each class in the same share; fold k's images
become the validation split and the other folds train. The dataset's own
validation split is not used. It is applied wherever a dataset is built
(:func:`tlcore.build.build_dataset`) when the configuration has ``folds`` and
``fold``, so ``tlcore run --folds 5 --fold 2`` trains one fold, checkpoints
record the fold (``tlcore eval`` scores that fold's held-out images), and no
dataset plugin needs to know about folds.

``tlcore cv --folds K`` (:func:`run_cv`) trains every fold as a normal run
folder, ``PARENT/fold-1`` to ``PARENT/fold-K``, records each finished fold in
``PARENT/cv.json`` (written atomically), and ends with the mean and standard
deviation over the folds of every metric of each fold's best epoch.
``tlcore cv --resume PARENT`` skips the finished folds and resumes the
interrupted one from its saved state.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from tlcore.config import RunConfig, build_config
from tlcore.dataset import DatasetSplits, TensorImageDataset
from tlcore.errors import ConfigError, DataError
from tlcore.files import atomic_write_json

CV_FILE = "cv.json"
FORMAT = "tlcore-cv"


def stratified_folds(labels: torch.Tensor, folds: int, seed: int) -> list[torch.Tensor]:
    """Deal the positions of ``labels`` [N] (int) into ``folds`` disjoint, stratified folds; sorted int64 positions each.

    Each class's images are shuffled with ``seed`` and dealt round-robin,
    continuing where the previous class stopped, so fold sizes differ by at
    most one and each class's count by at most one between folds. Every
    position is in exactly one fold. ValueError for fewer images than folds.
    """
    labels = torch.as_tensor(labels, dtype=torch.int64).flatten()
    if folds < 2 or len(labels) < folds:
        raise ValueError(f"cannot deal {len(labels)} images into {folds} folds")
    generator = torch.Generator().manual_seed(seed)
    members: list[list[int]] = [[] for _ in range(folds)]
    dealt = 0
    for value in torch.unique(labels).tolist():
        positions = torch.nonzero(labels == value).flatten()
        positions = positions[torch.randperm(len(positions), generator=generator)]
        for offset, position in enumerate(positions.tolist()):
            members[(dealt + offset) % folds].append(position)
        dealt += len(positions)
    return [torch.tensor(sorted(fold), dtype=torch.int64) for fold in members]


class FoldSubset(Dataset):
    """The images of ``base`` at ``indices``, in that order; ``targets`` (and ``samples``, where ``base`` lists them)."""

    def __init__(self, base: Dataset, indices: torch.Tensor, labels: torch.Tensor):
        self.base, self.indices, self.targets = base, indices.tolist(), labels[indices]
        samples = getattr(base, "samples", None)
        if samples is not None:  # files: --decode device reads them
            self.samples = [samples[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.base[self.indices[index]]


def _subset(base: Dataset, indices: torch.Tensor, labels: torch.Tensor) -> Dataset:
    """In-memory data stays in memory (the memory pipeline takes it); anything else is wrapped."""
    if isinstance(base, TensorImageDataset):
        return TensorImageDataset(base.images[indices], base.labels[indices])
    return FoldSubset(base, indices, labels)


def check_fold_options(config: RunConfig) -> None:
    """ConfigError unless ``folds`` and ``fold`` are both unset, or both set with 1 <= fold <= folds."""
    if config.fold is not None and config.folds is None:
        raise ConfigError(f"--fold {config.fold} needs --folds K (the number of folds it is one of)")
    if config.folds is not None and config.fold is None:
        raise ConfigError(
            f"--folds {config.folds} needs --fold N (1 to {config.folds}) to train one fold; `tlcore cv --folds "
            f"{config.folds}` trains them all"
        )
    if config.folds is not None and config.fold > config.folds:
        raise ConfigError(f"--fold must be in [1, {config.folds}] with --folds {config.folds}, got {config.fold}")


def fold_splits(data: DatasetSplits, folds: int, fold: int, seed: int) -> DatasetSplits:
    """``data`` with fold ``fold`` (1-based) of its training split as validation and the other folds as training.

    Stratified by the training labels (:func:`tlcore.balance.dataset_labels`:
    the dataset's ``targets``, else read item by item), seeded by ``seed``.
    The dataset's own validation split is not used; test, classes and
    everything else are kept. DataError when there are fewer training images than folds.
    """
    from tlcore.balance import dataset_labels

    labels = dataset_labels(data.train)
    if len(labels) < folds:
        raise DataError(f"cannot split {len(labels)} training images into {folds} folds; use fewer --folds")
    strata = rarest_label(labels) if labels.ndim == 2 else labels
    parts = stratified_folds(strata, folds, seed)
    held_out = parts[fold - 1]
    training = torch.cat([part for number, part in enumerate(parts, start=1) if number != fold]).sort().values
    counts = labels.sum(dim=0).long() if labels.ndim == 2 else torch.bincount(labels, minlength=len(data.classes))
    few = [data.classes[c] for c in range(len(data.classes)) if 0 < counts[c] < folds]
    notes = list(data.notes)
    if few:
        notes.append(f"classes with fewer training images than folds are missing from some folds: {', '.join(few[:8])}")
    return DatasetSplits(
        classes=list(data.classes),
        train=_subset(data.train, training, labels),
        val=_subset(data.train, held_out, labels),
        flip_invariant=data.flip_invariant,
        description=data.description,
        preferred_image_size=data.preferred_image_size,
        validation=(
            f"fold {fold} of {folds}: {len(held_out)} of the {len(labels)} training images held out (stratified, "
            f"seed {seed}), the other {len(training)} train; the dataset's own validation split is not used"
        ),
        notes=notes,
        test=data.test,
        multilabel=data.multilabel,
    )


def rarest_label(targets: torch.Tensor) -> torch.Tensor:
    """int64 ``[N]``: for multi-hot rows ``[N, C]``, each image's rarest class (the stratum of its fold).

    Stratifying multi-label data by each image's least frequent label keeps the
    rare classes spread over the folds (the first step of Sechidis et al.'s
    iterative stratification, 2011); an image without a label is its own stratum ``C``.
    """
    frequency = targets.sum(dim=0)
    # absent classes weigh more than any count, so argmin picks among the image's own labels
    weighted = torch.where(targets > 0.5, frequency, torch.full_like(frequency, float("inf")))
    rarest = weighted.argmin(dim=1)
    return torch.where(targets.sum(dim=1) > 0, rarest, torch.full_like(rarest, targets.shape[1]))


# -- the cv command ------------------------------------------------------------


def default_parent(config: RunConfig) -> Path:
    """runs/cv-<dataset>-<backbone>-<time>, with a numeric suffix if that exists already."""
    label = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{config.dataset}-{config.backbone}")
    base = Path("runs") / f"cv-{label}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, suffix = base, 2
    while path.exists():
        path, suffix = base.with_name(f"{base.name}-{suffix}"), suffix + 1
    return path


def read_cv(parent: Path) -> dict[str, Any]:
    """``parent/cv.json``, checked; ConfigError naming the file and the field when it is not one cv wrote."""
    path = Path(parent) / CV_FILE
    if not path.is_file():
        raise ConfigError(f"{parent} is not a cross-validation folder: it has no {CV_FILE}")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ConfigError(f"{path} cannot be read: {type(error).__name__}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a tlcore cross-validation record")
    if not isinstance(record.get("config"), dict) or not isinstance(record.get("completed"), dict):
        raise ConfigError(f"{path} is damaged: config and completed must be objects")
    for key, fold in record["completed"].items():
        if not key.isdigit() or not isinstance(fold, dict) or not isinstance(fold.get("history"), list):
            raise ConfigError(f"{path} is damaged: completed fold {key[:20]!r} has no history list")
        if not fold["history"] or not all(isinstance(m, dict) for m in fold["history"]):
            raise ConfigError(f"{path} is damaged: completed fold {key[:20]!r} has no epochs")
    return record


def _interrupted(stopped: Exception, parent: Path) -> Exception:
    """The fold's interruption, saying how to continue the whole cross-validation."""
    from tlcore.interrupt import RunInterrupted

    said = str(stopped).split("; resume with:")[0]
    return RunInterrupted(f"{said}; continue the cross-validation with: tlcore cv --resume {parent}")


def _set_aside(folder: Path) -> Path:
    """Rename a fold folder that never finished an epoch (no saved state) so the fold can start again; nothing is lost."""
    target, suffix = folder.with_name(f"{folder.name}.incomplete"), 2
    while target.exists():
        target, suffix = folder.with_name(f"{folder.name}.incomplete-{suffix}"), suffix + 1
    folder.rename(target)
    return target


def run_cv(config: RunConfig | None = None, host=None, *, resume: Path | None = None, stream=None) -> dict[str, Any]:
    """Train every fold (``config.folds`` of them) as a run under one parent folder; return the cv.json record.

    ``config.output`` is the parent folder (default ``runs/cv-<dataset>-<backbone>-<time>``; it must not hold
    files). With ``resume`` (a parent folder), the configuration is cv.json's, finished folds are skipped and
    the interrupted one continues from its saved state. Raises ConfigError for bad options or a folder cv did
    not write, RunInterrupted (saying how to continue) on Ctrl-C or SIGTERM.
    """
    from tlcore import train
    from tlcore.resume import STATE_FILE
    from tlcore.rundir import create_output_dir, lock_run_folder

    stream = stream or sys.stderr
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every process would create the folders and train every fold
        raise ConfigError(
            "tlcore cv runs in one process; under torchrun, train each fold with tlcore run --folds K --fold k"
        )
    if resume is not None:
        parent = lock_run_folder(Path(resume).expanduser())
        record = read_cv(parent)
        config = build_config(overrides=record["config"])
    else:
        if config.folds is None:
            raise ConfigError("tlcore cv needs --folds K (2 or more)")
        if config.fold is not None:
            raise ConfigError("tlcore cv trains every fold: give --folds only (tlcore run --folds K --fold N trains one)")
        parent = create_output_dir(dataclasses.replace(config, output=str(config.output or default_parent(config))))
        record = {"format": FORMAT, "folds": config.folds, "config": config.to_dict(), "completed": {}}
        atomic_write_json(parent / CV_FILE, record)
    if config.folds is None or config.folds < 2:
        raise ConfigError(f"{parent / CV_FILE} is damaged: config.folds must be 2 or more")
    for fold in range(1, config.folds + 1):
        folder = parent / f"fold-{fold}"
        if str(fold) in record["completed"]:
            print(f"tlcore: cv: fold {fold} of {config.folds} finished already ({folder})", file=stream, flush=True)
            continue
        print(f"tlcore: cv: fold {fold} of {config.folds}, run folder {folder}", file=stream, flush=True)
        try:
            if (folder / STATE_FILE).is_file():
                result = train.resume(folder, host)
            else:
                if folder.exists() and any(folder.iterdir()):  # started, but killed before its first epoch ended
                    moved = _set_aside(folder)
                    print(f"tlcore: cv: fold {fold} had not finished an epoch; set aside as {moved}", file=stream)
                fold_config = dataclasses.replace(config, fold=fold, output=str(folder))
                result = train.fit(fold_config, host)
        except Exception as error:
            from tlcore.interrupt import RunInterrupted

            if isinstance(error, RunInterrupted):
                raise _interrupted(error, parent) from error
            raise
        best = result.best
        record["completed"][str(fold)] = {"folder": folder.name, "best_epoch": best["epoch"], "history": result.history}
        atomic_write_json(parent / CV_FILE, record)  # a fold counts as done only once recorded here
    record["summary"] = summarize([record["completed"][str(fold)]["history"] for fold in range(1, config.folds + 1)])
    atomic_write_json(parent / CV_FILE, record)
    record["parent"] = str(parent)
    return record


def summarize(histories: list[list[dict]]) -> dict[str, dict[str, Any]]:
    """Per metric: mean, std (sample standard deviation, n - 1) and the per-fold values of each fold's best epoch.

    The best epoch is the first with the highest val_acc (multilabel: val_map; the one best.safetensors holds).
    Every numeric, finite metric present in every fold's best epoch is summarised; ``epoch`` too (where the best
    epoch fell).
    """
    from tlcore.ema import selection_metric

    bests = [max(history, key=lambda m: m[selection_metric(m)]) for history in histories]
    keys = [key for key, value in bests[0].items() if _number(value)]
    summary = {}
    for key in keys:
        values = [best.get(key) for best in bests]
        if not all(_number(value) for value in values):
            continue
        mean = sum(values) / len(values)
        variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
        summary[key] = {"mean": mean, "std": math.sqrt(variance), "folds": values}
    return summary


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def render_summary(record: dict[str, Any]) -> str:
    """The table `tlcore cv` prints: one row per metric, mean ± std, then each fold's value."""
    summary, folds = record["summary"], record["folds"]
    width = max(len("metric"), *(len(key) for key in summary))
    columns = "  ".join(f"{'fold ' + str(i):>10}" for i in range(1, folds + 1))
    header = f"{'metric':<{width}}  {'mean':>10}  {'std':>10}  {columns}"
    lines = [f"cross-validation, {folds} folds: each fold's best epoch (highest val_acc, or val_map for multilabel)", header]
    for key, row in summary.items():
        values = "  ".join(f"{value:>10.4g}" for value in row["folds"])
        lines.append(f"{key:<{width}}  {row['mean']:>10.4g}  {row['std']:>10.4g}  {values}")
    return "\n".join(lines)
