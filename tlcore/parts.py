"""The parts of one run, built from its configuration: components from the plugins, the model, the data path.

Everything here fails on bad options before any run folder exists: the freeze
policy's whole schedule is asked for up front, and so is whether anything
would train.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from tlcore import distributed
from tlcore.backbone import Backbone
from tlcore.balance import balanced_weights, dataset_labels
from tlcore.build import (
    HeadReuse,
    build_backbone,
    build_callbacks,
    build_dataset,
    build_head,
    build_policy,
    read_weights_option,
    resolve_image_size,
    reuse_checkpoint_head,
)
from tlcore.callbacks.base import CallbackList
from tlcore.config import RunConfig
from tlcore.data import EpochSampler
from tlcore.dataset import DatasetSplits
from tlcore.distributed import Distributed
from tlcore.errors import ConfigError
from tlcore.freeze import FreezePolicy, Phase, policy_phases
from tlcore.model import Classifier
from tlcore.pipeline import Pipeline, build_pipeline
from tlcore.plugins import PluginHost


@dataclass
class Parts:
    """What a run is made of before it trains."""

    data: DatasetSplits
    backbone: Backbone
    head: nn.Module
    head_reused: bool  # the head starts (wholly or class by class) from an earlier run's (--weights RUN, same head)
    policy: FreezePolicy
    group_names: list[str]  # the backbone's layer groups, in order
    phases: list[Phase]  # the policy's schedule for the whole run
    callbacks: CallbackList  # empty on every process but rank 0
    model: Classifier  # on the device, in the pipeline's memory format
    train_labels: torch.Tensor | None  # read only when class weights or balanced sampling need them
    train_sampler: EpochSampler
    val_sampler: EpochSampler
    pipeline: Pipeline | None  # None once the cached-feature path no longer needs the images
    image_size: int  # pixels, square
    steps_per_epoch: int  # optimizer steps: ceil(micro-batches / --accumulate)
    head_reuse: HeadReuse | None = None  # which classes' head rows came from the earlier run, which are new


def build_parts(config: RunConfig, host: PluginHost, world: Distributed, device: torch.device, *, resuming: bool) -> Parts:
    """Components by name from the plugins, the model on ``device``, samplers and the batch pipeline.

    ``resuming``: the weights come from the saved state, so ``--weights PATH`` is not read.
    Raises ConfigError, DataError or PluginError for what cannot work.
    """
    data = build_dataset(config, host)
    if config.task == "multilabel":
        check_multilabel_options(config, world)
    weights_file = read_weights_option(config) if not resuming else None  # --weights PATH; resuming has its own
    backbone = build_backbone(config, host, config.image_size or data.preferred_image_size, weights_file)
    image_size = resolve_image_size(config, backbone, data)
    head = build_head(config, host, backbone.feature_dim, len(data.classes))
    head_reuse = reuse_checkpoint_head(config, head, data.classes, weights_file)
    policy = build_policy(config, host)
    group_names = [group.name for group in backbone.layer_groups]
    phases = policy_phases(policy, group_names, config.epochs)  # asked up front: bad options fail before any work
    check_something_trains(config, head, phases)
    if config.cache_features:
        check_cache_features(config, phases)
    callbacks = CallbackList(build_callbacks(config, host) if world.is_main else [])
    model = Classifier(distributed.sync_batchnorm(backbone.module, world, device, enabled=config.sync_bn), head)

    # the data: the backbone's preprocessing; order and augmentation follow the seed
    needs_labels = config.class_weights is not None or config.balanced_sampler
    train_labels = dataset_labels(data.train) if needs_labels else None
    draw_weights = balanced_weights(train_labels, len(data.classes)) if config.balanced_sampler else None
    ranks = {"rank": world.rank, "world_size": world.world_size}
    train_sampler = EpochSampler(len(data.train), config.seed, shuffle=True, weights=draw_weights, **ranks)
    val_sampler = EpochSampler(len(data.val), config.seed, shuffle=False, **ranks, even=False)
    pipeline = build_pipeline(config, data, backbone.preprocessing, image_size, device, train_sampler, val_sampler)
    memory_format = torch.channels_last if pipeline.channels_last else torch.preserve_format
    model = model.to(device, memory_format=memory_format)
    # batches of --batch-size; --accumulate of them make one optimizer step
    steps_per_epoch = math.ceil(len(pipeline.train) / config.accumulate)
    return Parts(
        data=data,
        backbone=backbone,
        head=head,
        head_reused=head_reuse.reused,
        policy=policy,
        group_names=group_names,
        phases=phases,
        callbacks=callbacks,
        model=model,
        train_labels=train_labels,
        train_sampler=train_sampler,
        val_sampler=val_sampler,
        pipeline=pipeline,
        image_size=image_size,
        steps_per_epoch=steps_per_epoch,
        head_reuse=head_reuse,
    )


def check_something_trains(config: RunConfig, head: nn.Module, phases: list[Phase]) -> None:
    """ConfigError when some epoch would train nothing: a head without parameters and every group frozen."""
    if any(p.requires_grad for p in head.parameters()):
        return
    idle = [phase for phase in phases if not phase.trainable]
    if idle:
        raise ConfigError(
            f"nothing would train in epoch {idle[0].first_epoch + 1}: head {config.head!r} has no trainable "
            f"parameters and freeze policy {config.freeze!r} freezes every layer group then"
        )


def check_multilabel_options(config: RunConfig, world: Distributed) -> None:
    """ConfigError for what --task multilabel does not support: balanced sampling, mixing, several processes.

    Balancing draws by class, and mixing makes soft single-label targets; neither has one meaning when an
    image carries several classes. mAP and the thresholds need every validation logit in one process.
    """
    unsupported = [
        name
        for name, used in (
            ("--balanced-sampler", config.balanced_sampler),
            ("--mixup", config.mixup > 0),
            ("--cutmix", config.cutmix > 0),
            ("a distributed run (torchrun)", world.enabled),
        )
        if used
    ]
    if unsupported:
        hint = "; for class imbalance use --class-weights auto (BCE pos_weight per class)" if config.balanced_sampler else ""
        raise ConfigError(f"--task multilabel does not support {', '.join(unsupported)}{hint}")


def check_cache_features(config: RunConfig, phases: list[Phase]) -> None:
    """The fast path is exact only when nothing in the backbone changes: every group frozen, statistics too."""
    training = [phase for phase in phases if phase.trainable]
    if training:
        phase = training[0]
        raise ConfigError(
            f"--cache-features needs a backbone frozen for the whole run, but freeze policy {config.freeze!r} trains "
            f"{', '.join(phase.trainable)} from epoch {phase.first_epoch + 1}; use --freeze backbone"
        )
    if config.bn_mode != "frozen":
        raise ConfigError("--cache-features needs --bn-mode frozen: with 'train' the backbone's statistics change")
    if config.mixup > 0 or config.cutmix > 0:  # mixing features is not mixing images: a different regulariser
        raise ConfigError(
            "--cache-features trains the head on features of unaugmented images; --mixup and --cutmix mix images: "
            "use one or the other"
        )
