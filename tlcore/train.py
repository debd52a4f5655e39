"""The training loop: one for every backbone, dataset, device and plugin.

Reads top to bottom: resolve the components, build the data and the model,
then train epoch by epoch. The loss and accuracy accumulate on the device and
are read once per epoch, so a GPU is never stalled by the host step by step.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tlcore.balance import balanced_sampler, class_weights, dataset_labels
from tlcore.build import (
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
from tlcore.data import TransformedDataset, build_transform, default_workers, make_loader
from tlcore.device import autocast_dtype, pick_device
from tlcore.errors import ConfigError
from tlcore.feature_cache import compute_features, fingerprint, remove_spill_files
from tlcore.files import atomic_write_json
from tlcore.freeze import Phase, apply_trainable, policy_phases
from tlcore.model import Classifier
from tlcore.optim import make_optimizer, make_scheduler, parameter_groups
from tlcore.plugins import PluginHost, get_host
from tlcore.rundir import create_output_dir, versions
from tlcore.state import RunState


@dataclass
class RunResult:
    """What a finished run returns: its folder and per-epoch metrics."""

    output_dir: Path
    history: list[dict]
    config: RunConfig

    @property
    def best(self) -> dict:
        """The epoch with the highest val_acc (the first, on ties)."""
        return max(self.history, key=lambda m: m["val_acc"])


def seed_everything(seed: int) -> None:
    """Seed every generator a run draws from (Python, NumPy, torch on all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@torch.inference_mode()
def evaluate(model: nn.Module, loader, criterion: nn.Module, device: torch.device, amp_dtype) -> tuple[float, float]:
    """Mean loss and accuracy over a loader, read from the device once at the end."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
        loss_sum += criterion(logits.float(), labels) * labels.numel()
        correct += (logits.argmax(dim=1) == labels).sum()
        seen += labels.numel()
    return float(loss_sum) / seen, int(correct) / seen


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


def fit(config: RunConfig, host: PluginHost | None = None) -> RunResult:
    """Train one run as configured and return its metrics; writes the run folder."""
    host = host or get_host()
    device = pick_device(config.device)
    seed_everything(config.seed)

    # -- components, by name, from the plugins ------------------------------
    data = build_dataset(config, host)
    weights_file = read_weights_option(config)  # --weights PATH: a file, folder or earlier run
    backbone = build_backbone(config, host, config.image_size or data.preferred_image_size, weights_file)
    image_size = resolve_image_size(config, backbone, data)
    head = build_head(config, host, backbone.feature_dim, len(data.classes))
    head_reused = reuse_checkpoint_head(config, head, data.classes, weights_file)
    policy = build_policy(config, host)
    group_names = [group.name for group in backbone.layer_groups]
    phases = policy_phases(policy, group_names, config.epochs)  # asked up front: bad options fail before any work
    if config.cache_features:
        check_cache_features(config, phases)
    callbacks = CallbackList(build_callbacks(config, host))
    model = Classifier(backbone.module, head).to(device)

    # -- data: transforms follow the backbone's preprocessing ---------------
    pre, flip = backbone.preprocessing, data.flip_invariant
    augment = "none" if config.cache_features else config.augment  # cached features are of unaugmented images
    train_set = TransformedDataset(data.train, build_transform(pre, image_size, True, augment, flip))
    val_set = TransformedDataset(data.val, build_transform(pre, image_size, False, augment, flip))
    needs_labels = config.class_weights is not None or config.balanced_sampler
    train_labels = dataset_labels(data.train) if needs_labels else None
    sampler = balanced_sampler(train_labels, len(data.classes), config.seed) if config.balanced_sampler else None
    workers = default_workers(data.train, config.workers)
    pin = device.type == "cuda"
    train_loader = make_loader(train_set, config.batch_size, True, workers, config.seed, pin, sampler)
    val_loader = make_loader(val_set, config.batch_size, False, workers, config.seed, pin)
    steps_per_epoch = len(train_loader)

    # -- optimisation: groups built once, whatever the policy unfreezes later -
    optimizer = make_optimizer(parameter_groups(backbone, head, config), config, device)
    scheduler = make_scheduler(optimizer, config, steps_per_epoch)
    weights = class_weights(config.class_weights, train_labels, data.classes).to(device) if config.class_weights else None
    criterion = nn.CrossEntropyLoss(weight=weights, label_smoothing=config.label_smoothing)
    val_criterion = nn.CrossEntropyLoss()  # plain, so val_loss compares across runs whatever the training loss
    amp_dtype = autocast_dtype(device, config.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)  # fp16 only: bf16 needs none

    # -- the run folder: created only once everything above has worked -------
    output_dir = create_output_dir(config)
    atomic_write_json(
        output_dir / "config.json",
        {
            "config": config.to_dict(),
            "resolved": {
                "device": str(device),
                "image_size": image_size,
                "weights": backbone.weights,
                "head_from_checkpoint": head_reused,
                "preprocessing": pre.to_dict(),
                "feature_dim": backbone.feature_dim,
                "layer_groups": group_names,
                "phases": [phase.__dict__ for phase in phases],
                "classes": data.classes,
                "train_images": len(data.train),
                "val_images": len(data.val),
                "class_weights": weights.tolist() if weights is not None else None,
                "callbacks": callbacks.names(),
                "amp_dtype": str(amp_dtype).replace("torch.", "") if amp_dtype else None,
            },
            "versions": versions(),
            "plugins": host.plugin_versions(),
        },
    )
    run = RunState(
        config, output_dir, model, backbone, data.classes, device, optimizer, scheduler, image_size, steps_per_epoch
    )

    # -- the frozen-backbone fast path: features once, then the head alone ----
    step_model, caches = model, []
    if config.cache_features:
        key = fingerprint(
            {
                "backbone": config.backbone,
                "weights": backbone.weights,
                "image_size": image_size,
                "preprocessing": pre.to_dict(),
                "data": run.checkpoint_info({}).data,
                "sizes": [len(data.train), len(data.val)],
            }
        )
        plain_train = make_loader(train_set, config.batch_size, False, workers, config.seed, pin)
        caches = [
            compute_features(backbone.module, loader, device, amp_dtype, key, output_dir / ".feature-cache", name)
            for name, loader in (("train", plain_train), ("val", val_loader))
        ]
        # same seed, sampler and batch size as the slow path: the same order of images
        train_loader = make_loader(caches[0], config.batch_size, True, 0, config.seed, False, sampler)
        val_loader = make_loader(caches[1], config.batch_size, False, 0, config.seed, False)
        step_model = head

    callbacks.on_fit_start(run)
    try:
        for epoch in range(config.epochs):
            run.epoch, run.epoch_step, run.epoch_images = epoch, 0, 0
            # the policy decides what trains this epoch; frozen layers stay in eval mode
            trainable = policy.trainable_groups(group_names, epoch)
            model.set_keep_in_eval(apply_trainable(model, backbone, trainable, config.bn_mode, policy))
            model.train()
            run.train_loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.int64)
            started = time.perf_counter()
            callbacks.on_epoch_start(run)

            for images, labels in train_loader:
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    logits = step_model(images)
                    loss = criterion(logits.float(), labels)
                optimizer.zero_grad(set_to_none=True)  # None, not zero: frozen parameters must get no update at all
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                lr = optimizer.param_groups[-1]["lr"]  # the rate this step used (the head's)
                scheduler.step()
                # accumulate on the device: no host synchronisation per step
                run.train_loss_sum += loss.detach() * labels.numel()
                correct += (logits.detach().argmax(dim=1) == labels).sum()
                run.step, run.epoch_step = run.step + 1, run.epoch_step + 1
                run.epoch_images += len(labels)
                callbacks.on_train_batch_end(run)

            train_loss, train_acc = float(run.train_loss_sum) / run.epoch_images, int(correct) / run.epoch_images
            train_seconds = time.perf_counter() - started
            for cache in caches:
                cache.check(key)
            val_loss, val_acc = evaluate(step_model, val_loader, val_criterion, device, amp_dtype)
            metrics = {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "train_acc": train_acc,
                "val_loss": val_loss,
                "val_acc": val_acc,
                "lr": lr,
                "trainable_groups": list(trainable),
                "images_per_second": run.epoch_images / train_seconds,
                "seconds": time.perf_counter() - started,
            }
            run.history.append(metrics)
            callbacks.on_epoch_end(run, metrics)
            if run.should_stop:
                break
    finally:
        remove_spill_files(*caches)

    callbacks.on_fit_end(run)
    return RunResult(output_dir, run.history, config)
