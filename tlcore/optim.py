"""Optimizer parameter groups and learning-rate schedules.

The groups are built once for the whole run: one per layer group and the
head, each split into decayed weights and undecayed biases/norms. Frozen
parameters are in their group from the start and simply have no gradient, so
unfreezing never adds parameters to the optimizer and never disturbs the
schedule, its state, or a resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from tlcore.backbone import Backbone
from tlcore.config import RunConfig
from tlcore.errors import ConfigError
from tlcore.mixing import Mixing

ONECYCLE_WARMUP = 0.3  # share of the run spent rising, as torch's OneCycleLR pct_start
ONECYCLE_START = 1 / 25  # rise from lr/25 (div_factor), fall to lr/25e4 (final_div_factor)
ONECYCLE_END = 1 / 25e4


def parse_lr_mults(text: str | None, names: list[str]) -> dict[str, float]:
    """``"stem=0.1,layer4=0.5"`` to a dict; names must be layer groups of the backbone or ``head``."""
    if not text:
        return {}
    mults = {}
    for item in text.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep:
            raise ConfigError(f"lr_mults item {item.strip()!r} is not NAME=FACTOR; example: stem=0.1,layer4=0.5")
        if name not in names:
            raise ConfigError(
                f"lr_mults names {name!r}, which is not a layer group of this backbone; it has: {', '.join(names)}"
            )
        try:
            mults[name] = float(value)
        except ValueError:
            raise ConfigError(f"lr_mults factor for {name} must be a number, got {value!r}") from None
        if mults[name] < 0:
            raise ConfigError(f"lr_mults factor for {name} must not be negative, got {value}")
    return mults


def lr_scales(backbone: Backbone, config: RunConfig) -> dict[str, float]:
    """Each layer group's and the head's learning-rate multiplier.

    With ``layer_decay`` d, the last group gets d, the one before d^2, and so
    on down to the stem (the head keeps 1); ``lr_mults`` then sets any group
    explicitly.
    """
    names = [group.name for group in backbone.layer_groups]
    scales = {name: 1.0 for name in names}
    scales["head"] = 1.0
    if config.layer_decay is not None:
        for depth, name in enumerate(reversed(names), start=1):
            scales[name] = config.layer_decay**depth
    scales.update(parse_lr_mults(config.lr_mults, names + ["head"]))
    return scales


def parameter_groups(backbone: Backbone, head: nn.Module, config: RunConfig) -> list[dict]:
    """One optimizer group per (layer group or head) x (decay, no decay), in order from input to head."""
    scales = lr_scales(backbone, config)
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for group in backbone.layer_groups:
        buckets[(group.name, True)] = []
        buckets[(group.name, False)] = []
    for name, param in backbone.module.named_parameters():
        buckets[(backbone.group_of(name), param.ndim > 1)].append(param)
    buckets[("head", True)] = [p for p in head.parameters() if p.ndim > 1]
    buckets[("head", False)] = [p for p in head.parameters() if p.ndim <= 1]
    groups = []
    for (name, decays), params in buckets.items():
        if params:
            groups.append(
                {
                    "params": params,
                    "name": name,
                    "lr": config.lr * scales[name],
                    "lr_scale": scales[name],  # discriminative learning rates
                    "weight_decay": config.weight_decay if decays else 0.0,
                }
            )
    return groups


def make_optimizer(groups: list[dict], config: RunConfig, device: torch.device) -> torch.optim.Optimizer:
    """SGD with momentum or AdamW over the fixed groups: fused kernels on CUDA, foreach elsewhere.

    Fused, each optimizer step is a few kernel launches for all parameters
    instead of several per tensor; on CPU, PyTorch picks its own default.
    """
    kernels = {"fused": True} if device.type == "cuda" else {"foreach": device.type != "cpu" or None}
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, **kernels)
    return torch.optim.AdamW(groups, lr=config.lr, **kernels)


def lr_multiplier(config: RunConfig, steps_per_epoch: int):
    """The schedule as a function of the optimizer step, multiplying each group's base rate."""
    total = max(1, config.epochs * steps_per_epoch)
    warmup = int(config.warmup_epochs * steps_per_epoch)

    def multiplier(step: int) -> float:
        if config.schedule == "step":
            return config.gamma ** ((step // steps_per_epoch) // config.step_size)
        if config.schedule == "onecycle":
            rise = max(1, int(ONECYCLE_WARMUP * total))
            if step < rise:
                return ONECYCLE_START + (1 - ONECYCLE_START) * 0.5 * (1 - math.cos(math.pi * step / rise))
            progress = min(1.0, (step - rise) / max(1, total - rise))
            return ONECYCLE_END + (1 - ONECYCLE_END) * 0.5 * (1 + math.cos(math.pi * progress))
        if step < warmup:
            return (step + 1) / warmup
        if config.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return multiplier


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: RunConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR; each group's rate is ``lr * lr_scale * multiplier(step)``.

    The groups' initial rates already include ``lr_scale``, and LambdaLR
    multiplies each group's initial rate, so one multiplier serves all.
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(config, steps_per_epoch))


@dataclass
class Optimisation:
    """What the training steps use besides the model, built once per run."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR  # stepped once per optimizer step
    criterion: nn.Module  # the training loss (class weights, label smoothing)
    amp_dtype: torch.dtype | None  # autocast's dtype; None: full precision
    scaler: torch.amp.GradScaler  # enabled for float16 only: bfloat16 needs no loss scaling
    loss_weights: torch.Tensor | None  # per-class loss weights (--class-weights), on the device
    mixing: Mixing | None = None  # --mixup/--cutmix: the criterion then takes soft targets
    ema: AveragedModel | None = None  # --ema: the moving average of the model's weights, updated each step
    clip: tuple[str, float] | None = None  # --clip-mode and --clip-grad: ("norm" or "value", limit)
