"""What a run knows while it trains: the object callbacks receive."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tlcore.backbone import Backbone
from tlcore.checkpoint import CheckpointInfo
from tlcore.config import RunConfig
from tlcore.distributed import Distributed
from tlcore.model import Classifier

# Validation outputs above this many logits (N images x C classes; 128 MiB as float32) are not kept at the epoch's end.
KEEP_VALIDATION_MAX = 2**25


@dataclass
class ValidationOutputs:
    """One validation pass's per-image outputs, kept so the end of a run need not score the split again.

    The viz report draws its figures from them; calibration (temperature
    scaling) fits on them. Moved to the CPU once, at the end of the epoch.
    """

    epoch: int  # 1-based epoch of the model that produced them (the ``epoch`` of metrics.jsonl and checkpoints)
    logits: torch.Tensor  # float32 [N, C] on the CPU; C = len(run.classes), columns in run.classes order
    labels: torch.Tensor  # int64 [N], the true class of each image; multilabel: float32 [N, C] multi-hot rows
    indices: torch.Tensor  # int64 [N], each image's position in the validation split (``run.splits.val``)


@dataclass
class RunState:
    """The live state of one run. Callbacks read it, and may set ``should_stop``."""

    config: RunConfig
    output_dir: Path
    model: Classifier
    backbone: Backbone
    classes: list[str]
    device: torch.device
    optimizer: torch.optim.Optimizer
    scheduler: Any
    image_size: int
    steps_per_epoch: int
    epoch: int = 0  # 0-based index of the current epoch
    step: int = 0  # optimizer steps since the run started
    epoch_step: int = 0  # steps into the current epoch
    epoch_images: int = 0  # training images seen this epoch
    train_loss_sum: torch.Tensor | None = None  # on the device: read it rarely, it synchronises
    history: list[dict] = field(default_factory=list)
    should_stop: bool = False
    stop_reason: str = ""
    unreadable: list[str] = field(default_factory=list)  # why each skipped image could not be read, first seen first
    nonfinite_batches: int = 0  # batches skipped for a NaN or infinite loss (--skip-nonfinite)
    place: Distributed = field(default_factory=Distributed)  # rank and world size in a torch.distributed run
    pipeline: str = "loader"  # where batches come from: "memory" (held on the device) or "loader" (DataLoader)
    threads: str = ""  # how compute threads and workers share the cores, in words (tlcore.threads), for the banner
    precision: str = ""  # "float32" or "bf16 autocast" (tlcore.device.precision_phrase), for the banner
    data_notes: list[str] = field(default_factory=list)  # said first: where validation came from, files skipped
    flip_invariant: bool | None = None  # the data allows horizontal flips (DatasetSplits); checkpoints record it for TTA
    splits: Any = None  # the run's DatasetSplits (raw images: ``splits.val[i]`` is the i-th validation image, label)
    # the latest epoch's validation outputs, and those of the epoch with the best val_acc (the first, on ties) seen by
    # this process; None when not kept (a distributed run, unreadable validation images, a split over
    # KEEP_VALIDATION_MAX logits, or the best epoch ran before a resume)
    last_validation: ValidationOutputs | None = None
    best_validation: ValidationOutputs | None = None
    # checkpoint file name -> the 1-based epoch of the model it holds, for files written by this process
    saved_epochs: dict[str, int] = field(default_factory=dict)
    # --ema: the moving average of ``model``'s weights (a Classifier like it), or None
    ema: Any = None

    def checkpoint_model(self, metrics: dict) -> torch.nn.Module:
        """The weights an epoch's checkpoint holds: the moving average when its metrics say it validated
        better (``checkpoint_weights`` "ema", under --ema), else the model."""
        if self.ema is not None and metrics.get("checkpoint_weights") == "ema":
            return self.ema
        return self.model
    # temperature scaling (tlcore.calibration), fitted by :meth:`calibrate` on each epoch's validation logits:
    # the 1-based epoch -> its temperature (1.0 where none was fitted), and the current epoch's details
    temperatures: dict[int, float] = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    # --task multilabel: the 1-based epoch -> its per-class thresholds (tlcore.multilabel.choose_thresholds)
    thresholds: dict[int, list[float]] = field(default_factory=dict)

    def calibrate(self) -> None:
        """Fit the temperature of the epoch just validated on its validation logits (``last_validation``).

        Called once per epoch before the checkpoints are written, so every
        checkpoint carries the temperature of its own model in the same atomic
        write. With --no-calibrate, or when the logits were not kept (a
        distributed run, unreadable validation images, a split over
        KEEP_VALIDATION_MAX logits), the temperature is 1.0 and
        ``calibration["reason"]`` says why.
        """
        from tlcore.calibration import temperature_fit

        epoch = self.epoch + 1
        kept = self.last_validation
        temperature, details = 1.0, {}
        if self.config.task == "multilabel":
            details = self._choose_thresholds(epoch)
        elif not self.config.calibrate:
            details = {"reason": "--no-calibrate"}
        elif kept is None or kept.epoch != epoch or kept.logits.numel() == 0:
            details = {"reason": "the validation logits of this epoch were not kept"}
        elif not bool(torch.isfinite(kept.logits).all()):
            details = {"reason": "the validation logits are not all finite"}
        else:
            fit = temperature_fit(kept.logits, kept.labels)
            temperature = fit.temperature
            details = {
                "method": "temperature scaling (LBFGS on the validation NLL)",
                "epoch": epoch,
                "images": fit.images,
                "nll_before": fit.nll_before,
                "nll_after": fit.nll_after,
                **({"reason": fit.reason} if fit.reason else {}),
            }
        self.temperatures[epoch] = temperature
        self.calibration = details

    def _choose_thresholds(self, epoch: int) -> dict:
        """A multilabel epoch's per-class thresholds, from its kept validation outputs (0.5 each where none).

        Returns what the checkpoint's ``calibration`` records: how the thresholds were chosen, or why not.
        """
        from tlcore.multilabel import DEFAULT_THRESHOLD, choose_thresholds, class_probabilities

        kept = self.last_validation
        reason = "multilabel: per-class thresholds chosen on validation instead of a temperature"
        if kept is None or kept.epoch != epoch or kept.logits.numel() == 0:
            self.thresholds[epoch] = [DEFAULT_THRESHOLD] * len(self.classes)
            return {"reason": f"{reason}; this epoch's validation outputs were not kept (unreadable images), so 0.5 each"}
        self.thresholds[epoch] = choose_thresholds(class_probabilities(kept.logits), kept.labels).tolist()
        return {"reason": reason, "thresholds": "maximum F1 per class on the validation split", "images": len(kept.labels)}

    def checkpoint_info(self, metrics: dict) -> CheckpointInfo:
        """What a checkpoint of the model at this point must carry to rebuild it alone."""
        return CheckpointInfo(
            backbone=self.config.backbone,
            classes=list(self.classes),
            head=self.config.head,
            head_options={"hidden": self.config.head_hidden, "dropout": self.config.head_dropout},
            preprocessing=self.backbone.preprocessing.to_dict(),
            image_size=self.image_size,
            epoch=self.epoch + 1,
            metrics=dict(metrics),
            weights=self.backbone.weights,
            data={
                **self.data_identity(),
                **({"flip_invariant": self.flip_invariant} if self.flip_invariant is not None else {}),
            },
            temperature=self.temperatures.get(self.epoch + 1, 1.0),
            calibration=dict(self.calibration) if self.temperatures.get(self.epoch + 1) is not None else {},
            task=self.config.task,
            thresholds=self.thresholds.get(self.epoch + 1) if self.config.task == "multilabel" else None,
        )

    def data_identity(self) -> dict:
        """What determines the images and the split: dataset, data_dir, seed, val_fraction (folds and fold in cv).

        Also ``options``: the options plugins declare (tlcore.plugin_options), where any are.
        """
        folds = {"folds": self.config.folds, "fold": self.config.fold} if self.config.folds is not None else {}
        return {
            "dataset": self.config.dataset,
            "data_dir": self.config.data_dir,
            "seed": self.config.seed,
            "val_fraction": self.config.val_fraction,
            **folds,
            **({"options": _without_secrets(self.config.plugin_options)} if self.config.plugin_options else {}),
        }

    def keep_validation(self, outputs: ValidationOutputs | None, val_acc: float) -> None:
        """Keep an epoch's validation outputs (None: not kept) as the latest, and as the best when it is.

        Call it before the epoch's metrics join ``history``. The epoch is the
        best when ``val_acc`` beats every earlier epoch's (the rule of the
        checkpoint callback: the first epoch with the highest val_acc; under
        --ema, of the weights held: pass ``tlcore.ema.held_val_acc(metrics)``).
        """
        from tlcore.ema import held_val_acc  # the selection score of the weights the checkpoints held

        self.last_validation = outputs
        epoch = self.epoch + 1
        if all(val_acc > held_val_acc(m) for m in self.history if m["epoch"] < epoch):
            self.best_validation = outputs

    def running_loss(self) -> float | None:
        """Mean training loss so far this epoch (synchronises with the device)."""
        if self.train_loss_sum is None or self.epoch_images == 0:
            return None
        return float(self.train_loss_sum) / self.epoch_images


def _without_secrets(options: dict) -> dict:
    """Plugin options as checkpoints record them: a tracker's URL password or a token never enters the file.

    Every declared option is recorded (eval rebuilds the data from them), trackers' too; the user:password
    of a URL and values of options named like a token, secret, password or API key become ``***``.
    """
    from tlcore.push import redact_record

    return redact_record(dict(options))
