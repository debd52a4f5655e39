"""Freeze policies: which layer groups train in each epoch, and what that does to the model.

Three controls stay apart: whether a parameter trains (``requires_grad``), its
optimizer group (built once for the whole run, see tlcore.optim), and the
BatchNorm mode of frozen layers. A frozen layer is kept in eval mode after
every ``model.train()`` (PyTorch's ``train()`` on a parent undoes ``eval()`` on
its children), so its running statistics never move.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from tlcore.backbone import Backbone
from tlcore.hookspecs import hookimpl
from tlcore.registry import Register


@dataclass(frozen=True)
class FreezeOptions:
    """What the core passes to every freeze-policy factory."""

    bn_mode: str = "frozen"  # "frozen": frozen layers stay in eval mode; "train": their norm statistics still update


class FreezePolicy:
    """Says which backbone layer groups train in a given epoch; the head always trains.

    Subclasses override :meth:`trainable_groups`. It is called at the start of
    every epoch, so a policy can unfreeze over time without touching the
    optimizer.
    """

    def trainable_groups(self, groups: list[str], epoch: int) -> list[str]:
        """Names from ``groups`` (ordered input to output) that train in ``epoch`` (0-based)."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line for `tlcore list freeze` and logs."""
        return type(self).__name__


class TrainEverything(FreezePolicy):
    """Every layer group trains: full fine-tuning."""

    def trainable_groups(self, groups: list[str], epoch: int) -> list[str]:
        """All groups, every epoch."""
        return list(groups)


class FreezeBackbone(FreezePolicy):
    """No layer group trains: only the head learns (a linear probe with the linear head)."""

    def trainable_groups(self, groups: list[str], epoch: int) -> list[str]:
        """No group, every epoch."""
        return []


def apply_trainable(model: nn.Module, backbone: Backbone, trainable: list[str], bn_mode: str) -> list[nn.Module]:
    """Set ``requires_grad`` from the trainable groups and return the modules to keep in eval mode.

    With every group frozen, the whole backbone is kept in eval mode (dropout
    and stochastic depth off too), so its features are exactly those of
    inference. Otherwise each module owned by a frozen group is kept in eval
    mode when ``bn_mode`` is "frozen".
    """
    trainable_set = set(trainable)
    for name, param in backbone.module.named_parameters():
        param.requires_grad_(backbone.group_of(name) in trainable_set)
    if bn_mode != "frozen":
        return []
    if not trainable_set:
        return [backbone.module]
    frozen_groups = [g for g in backbone.layer_groups if g.name not in trainable_set]
    return [
        module
        for name, module in backbone.module.named_modules()
        if name and any(group.owns(name) for group in frozen_groups)
    ]


@hookimpl
def tlcore_register_freeze_policies(register: Register) -> None:
    """Register the built-in freeze policies."""
    register("none", lambda options: TrainEverything(), description="train every layer (full fine-tuning)")
    register("backbone", lambda options: FreezeBackbone(), description="freeze the backbone, train the head only")
