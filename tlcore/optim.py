"""Optimizer parameter groups and learning-rate schedules.

The groups are built once for the whole run: one per layer group and the
head, each split into decayed weights and undecayed biases/norms. Frozen
parameters are in their group from the start and simply have no gradient, so
unfreezing never adds parameters to the optimizer and never disturbs the
schedule, its state, or a resume.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tlcore.backbone import Backbone
from tlcore.config import RunConfig


def parameter_groups(backbone: Backbone, head: nn.Module, config: RunConfig) -> list[dict]:
    """One optimizer group per (layer group or head) x (decay, no decay), in order from input to head."""
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
                    "lr": config.lr,
                    "lr_scale": 1.0,  # per-group multiplier kept for discriminative learning rates
                    "weight_decay": config.weight_decay if decays else 0.0,
                }
            )
    return groups


def make_optimizer(groups: list[dict], config: RunConfig, device: torch.device) -> torch.optim.Optimizer:
    """SGD with momentum or AdamW over the fixed groups; foreach kernels on accelerators."""
    foreach = device.type != "cpu" or None  # None lets PyTorch choose on CPU
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, foreach=foreach)
    return torch.optim.AdamW(groups, lr=config.lr, foreach=foreach)


def lr_multiplier(config: RunConfig, steps_per_epoch: int):
    """The schedule as a function of the optimizer step, multiplying each group's base rate."""
    total = max(1, config.epochs * steps_per_epoch)
    warmup = int(config.warmup_epochs * steps_per_epoch)

    def multiplier(step: int) -> float:
        if config.schedule == "step":
            return config.gamma ** ((step // steps_per_epoch) // config.step_size)
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
    """A per-step LambdaLR; each group's rate is ``lr * lr_scale * multiplier(step)``."""
    multiplier = lr_multiplier(config, steps_per_epoch)
    lambdas = [lambda step, scale=group["lr_scale"]: scale * multiplier(step) for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
