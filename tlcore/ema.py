"""An exponential moving average of the weights (``--ema DECAY``), validated beside the model each epoch.

torch's :class:`~torch.optim.swa_utils.AveragedModel` with
``get_ema_multi_avg_fn(decay)`` keeps the average: after the first optimizer
step it is a copy of the model, after each later one
``ema = decay * ema + (1 - decay) * weights`` (one fused ``lerp`` per dtype).
``use_buffers=True`` averages the buffers too, BatchNorm's running
statistics included, so the averaged weights are validated with statistics
averaged the same way rather than with the live model's latest ones, which
belong to other weights (timm's ModelEmaV3 does the same); no extra pass over
the data is needed to recompute them. Integer buffers (BatchNorm's
``num_batches_tracked``) are averaged and truncated, as torch does; they play
no part in the forward pass.

Its step counter stays on the host (AveragedModel's ``n_averaged`` is built
without a device), and :class:`ExponentialAverage` updates exactly as
AveragedModel does, minus the counter's copy to the device each step
(``n_averaged.to(device)``, which the EMA rule ignores, and which in PyTorch
is a copy that waits for the device's queue): an update queues device work
and never waits for it.
Each epoch the average is validated too; the checkpoint of that epoch holds
whichever of the two validated better (the model on ties), and its metrics
say which (``checkpoint_weights``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class ExponentialAverage(AveragedModel):
    """torch's AveragedModel for the EMA rule, its update free of host-device synchronisation."""

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        """As ``AveragedModel.update_parameters`` with ``use_buffers=True``: copy at the first call, then
        ``multi_avg_fn`` per (device, dtype) group of parameters and buffers."""
        averaged = [t.detach() for t in (*self.module.parameters(), *self.module.buffers())]
        current = [t.detach() for t in (*model.parameters(), *model.buffers())]
        if len(averaged) != len(current):
            raise ValueError("the model does not match its average")
        if int(self.n_averaged) == 0:  # on the host: reading it costs nothing
            for mine, theirs in zip(averaged, current, strict=True):
                mine.copy_(theirs)
        else:
            groups: dict[tuple, tuple[list, list]] = {}
            for mine, theirs in zip(averaged, current, strict=True):
                pair = groups.setdefault((mine.device, mine.dtype), ([], []))
                pair[0].append(mine)
                pair[1].append(theirs.to(mine.device))
            for mine, theirs in groups.values():
                self.multi_avg_fn(mine, theirs, None)  # the EMA rule takes no step count
        self.n_averaged += 1


def make_ema(model: nn.Module, decay: float) -> ExponentialAverage:
    """A moving average of ``model``'s parameters and buffers with ``decay`` in (0, 1); a copy on the same device."""
    return ExponentialAverage(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def ema_of(ema: AveragedModel, model: nn.Module, module: nn.Module) -> nn.Module:
    """The averaged copy of ``module``, which is ``model`` itself or one of its submodules (the head alone)."""
    if module is model:
        return ema.module
    for name, candidate in model.named_modules():
        if candidate is module:
            return ema.module.get_submodule(name)
    raise ValueError("module is not part of the averaged model")


def checkpoint_weights(val_acc: float, ema_val_acc: float) -> str:
    """Which weights an epoch's checkpoint holds: ``"ema"`` when the average validated better, else ``"model"``."""
    return "ema" if ema_val_acc > val_acc else "model"


def selection_metric(metrics: dict) -> str:
    """The metric that picks the best epoch: ``val_map`` for a multilabel run (its metrics have it), else ``val_acc``."""
    return "val_map" if "val_map" in metrics else "val_acc"


def held_val_acc(metrics: dict) -> float:
    """The selection score (:func:`selection_metric`) of the weights the epoch's checkpoint holds.

    ``val_acc`` (``val_map`` for multilabel); under --ema, the average's when the checkpoint holds it.
    """
    key = selection_metric(metrics)
    if metrics.get("checkpoint_weights") == "ema":
        return metrics[f"ema_{key}"]
    return metrics[key]


@torch.no_grad()
def update(ema: AveragedModel | None, model: nn.Module) -> None:
    """Fold ``model``'s current weights into the average (nothing without --ema)."""
    if ema is not None:
        ema.update_parameters(model)
