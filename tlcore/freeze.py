"""Freeze policies: which layer groups train in each epoch, and what that does to the model.

Three controls stay apart: whether a parameter trains (``requires_grad``), its
optimizer group (built once for the whole run, see tlcore.optim), and the
BatchNorm mode of frozen layers. A frozen layer is kept in eval mode after
every ``model.train()`` (PyTorch's ``train()`` on a parent undoes ``eval()`` on
its children), so its running statistics never move.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from tlcore.errors import ConfigError
from tlcore.hookspecs import hookimpl
from tlcore.registry import Register

if TYPE_CHECKING:  # torch is imported on first use: the plugin host loads this module for every command
    from torch import nn

    from tlcore.backbone import Backbone


@cache
def norm_types() -> tuple[type, ...]:
    """The layer classes whose parameters the `norm` policy trains (BatchNorm and InstanceNorm, GroupNorm, ...)."""
    from torch import nn

    return (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def __getattr__(name: str):
    if name == "NORM_TYPES":  # the old module-level tuple, built when first asked for
        return norm_types()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class FreezeOptions:
    """What the core passes to every freeze-policy factory."""

    bn_mode: str = "frozen"  # "frozen": frozen layers stay in eval mode; "train": their norm statistics still update
    freeze_to: str | None = None  # partial: a layer-group name, or how many groups from the input
    unfreeze_start: int = 1  # gradual: epochs of head-only training before the first group unfreezes
    unfreeze_every: int = 1  # gradual: epochs between unfreezing one more group, from the top


class FreezePolicy:
    """Says which backbone layer groups train in a given epoch; the head always trains.

    Subclasses override :meth:`trainable_groups`. It is called at the start of
    every epoch, so a policy can unfreeze over time without touching the
    optimizer. A policy that trains only some parameters of a group also
    overrides :meth:`trains_parameter`.
    """

    def trainable_groups(self, groups: list[str], epoch: int) -> list[str]:
        """Names from ``groups`` (ordered input to output) that train in ``epoch`` (0-based)."""
        raise NotImplementedError

    def trains_parameter(self, name: str, owner: nn.Module) -> bool:
        """Within a trainable group, whether the parameter ``name`` of module ``owner`` trains (default: all)."""
        return True

    def describe(self) -> str:
        """One line for logs and `tlcore plan`."""
        return type(self).__doc__.strip().splitlines()[0] if type(self).__doc__ else type(self).__name__


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


class FreezeFirst(FreezePolicy):
    """The first layer groups stay frozen (up to a named group, or a count); the rest train."""

    def __init__(self, freeze_to: str | None):
        if freeze_to is None:
            raise ConfigError("freeze policy 'partial' needs --freeze-to: a layer-group name or a number of groups")
        self.freeze_to = freeze_to

    def frozen_count(self, groups: list[str]) -> int:
        """How many groups, from the input, are frozen."""
        if self.freeze_to.isdigit():
            count = int(self.freeze_to)
            if not 1 <= count <= len(groups):
                raise ConfigError(
                    f"--freeze-to {count} is out of range: this backbone has {len(groups)} layer groups "
                    f"({', '.join(groups)}); accepted: 1 to {len(groups)}"
                )
            return count
        if self.freeze_to not in groups:
            raise ConfigError(
                f"--freeze-to {self.freeze_to!r} is not a layer group of this backbone; it has: {', '.join(groups)}"
            )
        return groups.index(self.freeze_to) + 1

    def trainable_groups(self, groups: list[str], epoch: int) -> list[str]:
        """The groups after the frozen ones, every epoch."""
        return list(groups[self.frozen_count(groups) :])


class GradualUnfreeze(FreezePolicy):
    """Head only for a few epochs, then one more group unfreezes at a time, from the top (ULMFiT)."""

    def __init__(self, start: int, every: int):
        if start < 0 or every < 1:
            raise ConfigError(
                f"gradual unfreezing needs --unfreeze-start >= 0 and --unfreeze-every >= 1, got {start}, {every}"
            )
        self.start, self.every = start, every

    def trainable_groups(self, groups: list[str], epoch: int) -> list[str]:
        """None before ``start``; then 1 + (epoch - start) // every groups, counted from the output end."""
        if epoch < self.start:
            return []
        count = min(len(groups), 1 + (epoch - self.start) // self.every)
        return list(groups[len(groups) - count :])


class TrainNormsOnly(FreezePolicy):
    """Only normalisation layers (BatchNorm, LayerNorm, GroupNorm) and the head train."""

    def trainable_groups(self, groups: list[str], epoch: int) -> list[str]:
        """Every group takes part, through its norm layers only."""
        return list(groups)

    def trains_parameter(self, name: str, owner: nn.Module) -> bool:
        """Norm layers' weights and biases."""
        return isinstance(owner, norm_types())


def apply_trainable(
    model: nn.Module, backbone: Backbone, trainable: list[str], bn_mode: str, policy: FreezePolicy | None = None
) -> list[nn.Module]:
    """Set ``requires_grad`` from the trainable groups and return the modules to keep in eval mode.

    With every group frozen, the whole backbone is kept in eval mode (dropout
    and stochastic depth off too), so its features are exactly those of
    inference. Otherwise each module owned by a frozen group is kept in eval
    mode when ``bn_mode`` is "frozen".
    """
    trainable_set = set(trainable)
    owners = {name: module for name, module in backbone.module.named_modules()}
    for name, param in backbone.module.named_parameters():
        trains = backbone.group_of(name) in trainable_set
        if trains and policy is not None:
            trains = policy.trains_parameter(name, owners[name.rpartition(".")[0]])
        param.requires_grad_(trains)
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
    register(
        "partial",
        lambda options: FreezeFirst(options.freeze_to),
        description="freeze the first groups up to --freeze-to (a group name or a count); train the rest",
    )
    register(
        "gradual",
        lambda options: GradualUnfreeze(options.unfreeze_start, options.unfreeze_every),
        description="head only for --unfreeze-start epochs, then one more group every --unfreeze-every epochs",
    )
    register("norm", lambda options: TrainNormsOnly(), description="train only the norm layers and the head")


@dataclass(frozen=True)
class Phase:
    """A run of consecutive epochs with the same trainable groups."""

    first_epoch: int  # 0-based, inclusive
    last_epoch: int  # 0-based, inclusive
    trainable: tuple[str, ...]


def policy_phases(policy: FreezePolicy, groups: list[str], epochs: int) -> list[Phase]:
    """The policy's whole schedule, asked of it before training so bad options fail before anything runs."""
    phases: list[Phase] = []
    for epoch in range(epochs):
        trainable = tuple(policy.trainable_groups(list(groups), epoch))
        unknown = [name for name in trainable if name not in groups]
        if unknown:
            raise ConfigError(
                f"freeze policy returned unknown layer groups {', '.join(unknown)}; groups: {', '.join(groups)}"
            )
        if phases and phases[-1].trainable == trainable:
            phases[-1] = Phase(phases[-1].first_epoch, epoch, trainable)
        else:
            phases.append(Phase(epoch, epoch, trainable))
    return phases
