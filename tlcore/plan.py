"""`tlcore plan`: what a run would train, phase by phase, without training.

The dataset is opened only for its class count (the head's size); when it cannot
be opened, the plan says so and shows the head for two classes.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from tlcore.build import build_backbone, build_dataset, build_head, build_policy, read_weights_option
from tlcore.config import RunConfig
from tlcore.errors import TlcoreError
from tlcore.freeze import Phase, apply_trainable, policy_phases
from tlcore.model import Classifier
from tlcore.optim import lr_scales
from tlcore.plugins import PluginHost

PLAN_CLASSES = 2  # the head's size when the dataset cannot be opened


@dataclass
class GroupPlan:
    """One layer group (or the head) in one phase."""

    name: str
    parameters: int
    training: int  # parameters that train in this phase
    lr: float  # peak rate
    weight_decay: float
    norm_mode: str  # "train" or "eval" (frozen statistics)


@dataclass
class Plan:
    """The whole schedule of a run."""

    config: RunConfig
    weights: str
    phases: list[tuple[Phase, list[GroupPlan]]]
    num_classes: int = PLAN_CLASSES
    classes_note: str = ""  # why the head is shown for PLAN_CLASSES classes, when the dataset could not be opened


def make_plan(config: RunConfig, host: PluginHost) -> Plan:
    """Build the backbone and policy as a run would, and apply each phase to read off what trains.

    The head is sized for the dataset's classes (``config.dataset`` is opened for
    them); a dataset that cannot be opened leaves ``PLAN_CLASSES`` and a note.
    Raises what the builders raise for the backbone, head and policy.
    """
    try:
        num_classes, note = len(build_dataset(config, host).classes), ""
    except TlcoreError as error:  # a plan of the model is still useful without the data
        num_classes, note = PLAN_CLASSES, f"dataset {config.dataset} could not be opened: {error}"
    backbone = build_backbone(config, host, config.image_size, read_weights_option(config))
    head = build_head(config, host, backbone.feature_dim, num_classes)
    model = Classifier(backbone.module, head)
    policy = build_policy(config, host)
    names = [group.name for group in backbone.layer_groups]
    scales = lr_scales(backbone, config)
    phases = []
    for phase in policy_phases(policy, names, config.epochs):
        model.set_keep_in_eval(apply_trainable(model, backbone, list(phase.trainable), config.bn_mode, policy))
        model.train()
        in_eval = {id(m) for m in model.modules() if not m.training}
        rows = []
        for group in backbone.layer_groups:
            params = [p for n, p in backbone.module.named_parameters() if group.owns(n)]
            modules = [m for n, m in backbone.module.named_modules() if n and group.owns(n)]
            norms = [m for m in modules if isinstance(m, nn.modules.batchnorm._BatchNorm)]
            mode = "-" if not norms else ("eval" if all(id(m) in in_eval for m in norms) else "train")
            rows.append(_row(group.name, params, config, scales[group.name], mode))
        rows.append(_row("head", list(head.parameters()), config, scales["head"], "-"))
        phases.append((phase, rows))
    return Plan(config, backbone.weights, phases, num_classes, note)


def _row(name: str, params: list[nn.Parameter], config: RunConfig, scale: float, mode: str) -> GroupPlan:
    return GroupPlan(
        name=name,
        parameters=sum(p.numel() for p in params),
        training=sum(p.numel() for p in params if p.requires_grad),
        lr=scale if config.lr == "auto" else config.lr * scale,  # --lr auto: the multiple of the rate lr-find picks
        weight_decay=config.weight_decay,
        norm_mode=mode,
    )


def _rate(lr: float | str) -> str:
    if lr == "auto":
        return "auto (found by tlcore lr-find before training; the lr column shows multiples of it)"
    return f"{lr:g}"


def render_plan(plan: Plan) -> str:
    """A readable table per phase."""
    config = plan.config
    lines = [
        f"plan: {config.backbone} ({plan.weights}), freeze {config.freeze}, bn-mode {config.bn_mode}, "
        f"{config.optimizer} lr {_rate(config.lr)} {config.schedule}, {config.epochs} epochs",
        f"(head parameters shown for {plan.num_classes} classes"
        + (f": {plan.classes_note}" if plan.classes_note else f" of dataset {config.dataset}")
        + "; weight decay applies to weights, not biases or norms)",
    ]
    width = max(len(row.name) for _, rows in plan.phases for row in rows)
    for phase, rows in plan.phases:
        span = (
            f"epoch {phase.first_epoch + 1}"
            if phase.first_epoch == phase.last_epoch
            else (f"epochs {phase.first_epoch + 1}-{phase.last_epoch + 1}")
        )
        lines.append("")
        lines.append(f"{span}:")
        lines.append(f"  {'group':<{width}} {'params':>12} {'training':>12} {'trains':>6} {'lr':>9} {'wd':>7} {'norms':>5}")
        for row in rows:
            trains = "yes" if row.training == row.parameters and row.parameters else ("part" if row.training else "no")
            lines.append(
                f"  {row.name:<{width}} {row.parameters:>12,} {row.training:>12,} {trains:>6} {row.lr:>9.2e} "
                f"{row.weight_decay:>7.3g} {row.norm_mode:>5}"
            )
    return "\n".join(lines)
