"""The training loop: one for every backbone, dataset, device and plugin.

:func:`fit` reads top to bottom as the run goes: start the processes, build
the parts and the optimisation, open the run folder, take the cached-feature
path when asked, restore a resumed position, then epoch by epoch: begin the
epoch, train it (:mod:`tlcore.loop`), evaluate, record. After every epoch, and
on Ctrl-C or SIGTERM at the next step, the whole training state is saved so
`tlcore run --resume RUN_DIR` continues exactly. However the run ends, the
callbacks hear of it (``on_exception``, ``on_fit_end``) and the process group
is left.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tlcore import distributed, heap
from tlcore.background import BackgroundWrite
from tlcore.balance import class_weights
from tlcore.batches import MemoryBatches, storage_device
from tlcore.callbacks.base import CallbackList
from tlcore.compiled import compile_failure_summary, compile_model, is_compile_failure
from tlcore.config import RunConfig, build_config
from tlcore.device import autocast_dtype, pick_device, precision_phrase, validation_dtype
from tlcore.distributed import Distributed
from tlcore.ema import ema_of, held_val_acc, make_ema, selection_metric
from tlcore.errors import ConfigError, ResourceError, TlcoreError
from tlcore.feature_cache import CachedFeatures, compute_features, fingerprint, remove_spill_files
from tlcore.freeze import apply_trainable
from tlcore.interrupt import StopRequest
from tlcore.loop import (
    NonFiniteLoss,
    end_epoch,
    epoch_metrics,
    evaluate,
    keeps_validation,
    noting_unreadable,
    save_and_interrupt,
    start_epoch_sums,
    train_epoch,
    validation_outputs,
)
from tlcore.lr_find import LrFinding
from tlcore.memory import PeakMemory, is_out_of_memory, out_of_memory_message
from tlcore.mixing import Mixing
from tlcore.model import Classifier
from tlcore.multilabel import MultilabelLoss
from tlcore.optim import Optimisation, make_optimizer, make_scheduler, parameter_groups
from tlcore.parts import Parts, build_parts
from tlcore.pipeline import Batches
from tlcore.plugins import PluginHost, get_host
from tlcore.resume import TrainState, load_train_state, restore_train_state
from tlcore.rundir import create_output_dir, lock_run_folder, release_run_folder, write_run_config
from tlcore.state import RunState

__all__ = ["NonFiniteLoss", "RunResult", "evaluate", "fit", "resume", "seed_everything"]


@dataclass
class RunResult:
    """What a finished run returns: its folder, per-epoch metrics and the trained model."""

    output_dir: Path
    history: list[dict]
    config: RunConfig
    model: Classifier

    @property
    def best(self) -> dict:
        """The epoch with the highest val_acc (multilabel: val_map; the first, on ties)."""
        return max(self.history, key=lambda m: m[selection_metric(m)])


def resume(run_dir: Path, host: PluginHost | None = None) -> RunResult:
    """Continue an interrupted run from its folder, with the configuration it was started with."""
    saved = load_train_state(Path(run_dir))
    return fit(build_config(overrides=saved.config), host, resume_from=Path(run_dir))


def fit(config: RunConfig, host: PluginHost | None = None, resume_from: Path | None = None) -> RunResult:
    """Train one run as configured and return its results; writes the run folder (rank 0 only).

    ``resume_from``: a run folder whose saved state to continue from (see :func:`resume`).
    Raises a TlcoreError subclass for anything a user can fix (RunInterrupted on Ctrl-C or SIGTERM,
    NonFiniteLoss, ResourceError when memory runs out, ConfigError when --compile fails).
    """
    host = host or get_host()
    saved = load_train_state(resume_from) if resume_from is not None else None
    with started_processes(config) as (world, device):
        config, lr_finding = settle_lr(config, host, world, device)
        parts = build_parts(config, host, world, device, resuming=saved is not None)
        optim = build_optimisation(config, parts, device, world)
        run = open_run(config, host, world, device, parts, optim, resume_from=resume_from, lr_finding=lr_finding)
        heap.started()  # start-up built everything: full garbage collections from here on (tlcore/heap.py)
        writer, memory = BackgroundWrite(), PeakMemory(device)
        with finishing(run, parts.callbacks, writer) as end:
            source = cached_feature_batches(run, parts, optim, end) if config.cache_features else image_batches(run, parts)
            start = restore_position(saved, run, optim, parts.callbacks)
            parts.callbacks.on_fit_start(run)
            end.started = True
            with StopRequest() as stop:
                for epoch in range(start.epoch, config.epochs):
                    trainable, forward = begin_epoch(run, parts, source, epoch, start)
                    end.stage = "training"
                    sums = start_epoch_sums(run, start.running if begins_mid_epoch(start, epoch) else {}, memory)
                    parts.callbacks.on_epoch_start(run)
                    train_epoch(run, forward, source.train, optim, parts.callbacks, stop, sums)
                    end.stage = "validation"
                    val_batches = noting_unreadable(source.val, run)  # unreadable validation images count too
                    kept = [] if keeps_validation(run) else None  # the logits, for the report and calibration
                    kept_ema = [] if kept is not None and optim.ema is not None else None
                    amp = validation_dtype(device, optim.amp_dtype)  # the CPU validates in float32, as eval does
                    val = None if stop.requested else evaluate(source.forward, val_batches, device, amp, stop, kept=kept)
                    ema_val = None if val is None else evaluate_ema(run, parts, source, optim, stop, kept_ema)
                    if distributed.any_across(ema_val is None, world, device):  # a signal reached any process (either pass)
                        writer.wait()  # the last epoch's state lands before the mid-epoch one replaces it
                        raise save_and_interrupt(run, stop, optim, parts.callbacks, sums)
                    metrics = epoch_metrics(run, sums, val, optim, memory, trainable, ema_val, kept, kept_ema)
                    ema_saved = metrics.get("checkpoint_weights") == "ema"  # the checkpoint holds the average's weights
                    held = validation_outputs(run, kept_ema if ema_saved else kept, (ema_val if ema_saved else val)[2])
                    run.keep_validation(held, held_val_acc(metrics))  # judged as best.safetensors is
                    if end_epoch(run, metrics, parts.callbacks, optim, writer):
                        break
    return RunResult(run.output_dir, run.history, config, parts.model)


def seed_everything(seed: int) -> None:
    """Seed every generator a run draws from (Python, NumPy, torch on all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def started_processes(config: RunConfig) -> Iterator[tuple[Distributed, torch.device]]:
    """Pick the device, join the process group (under torchrun), seed; leave the group however the run ends.

    Yields this process's place in the run and its device.
    """
    device = pick_device(config.device)
    world = distributed.setup(device)
    try:
        device = distributed.local_device(device, world)
        seed_everything(config.seed)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # every training batch has one shape: autotune the convolutions once
        yield world, device
    finally:
        release_run_folder()  # the run folder is free for a --resume as soon as the run ends
        distributed.teardown(world)


def build_optimisation(
    config: RunConfig, parts: Parts, device: torch.device, world: Distributed | None = None
) -> Optimisation:
    """Optimizer, schedule, loss, autocast dtype, gradient scaler, mixing, weight average and clipping.

    The groups are built once, whatever unfreezes. Under --task multilabel the
    loss is binary cross-entropy per class (tlcore.multilabel.MultilabelLoss). Under --mixup/--cutmix the
    loss is the cross-entropy against the mixed, already smoothed soft
    targets (tlcore.mixing), class weights scaling each class's term (the mean
    is then over images, PyTorch's rule for probability targets).
    """
    optimizer = make_optimizer(parameter_groups(parts.backbone, parts.head, config), config, device)
    scheduler = make_scheduler(optimizer, config, parts.steps_per_epoch)
    loss_weights = None
    if config.class_weights:
        loss_weights = class_weights(config.class_weights, parts.train_labels, parts.data.classes).to(device)
    mixing = make_mixing(config, len(parts.data.classes), world.rank if world is not None else 0)
    smoothing = 0.0 if mixing is not None else config.label_smoothing  # mixing smooths its targets itself
    if config.task == "multilabel":  # a sigmoid per class; the class weights are BCE's pos_weight
        criterion: nn.Module = MultilabelLoss(pos_weight=loss_weights, smoothing=smoothing)
    else:
        criterion = nn.CrossEntropyLoss(weight=loss_weights, label_smoothing=smoothing)
    amp_dtype = autocast_dtype(device, config.amp, config.backbone)  # on the CPU: bf16 only for families measured faster
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)  # fp16 only: bf16 needs none
    average = make_ema(parts.model, config.ema) if config.ema is not None else None
    clip = (config.clip_mode, config.clip_grad) if config.clip_grad is not None else None
    return Optimisation(optimizer, scheduler, criterion, amp_dtype, scaler, loss_weights, mixing, average, clip)


def make_mixing(config: RunConfig, num_classes: int, rank: int) -> Mixing | None:
    """The batch mixing --mixup/--cutmix ask for (draws keyed by seed and rank), or None when both are 0."""
    if not (config.mixup > 0 or config.cutmix > 0):
        return None
    return Mixing(
        mixup=config.mixup,
        cutmix=config.cutmix,
        mix_prob=config.mix_prob,
        switch_prob=config.mix_switch_prob,
        smoothing=config.label_smoothing,
        num_classes=num_classes,
        seed=config.seed,
        rank=rank,
    )


def settle_lr(
    config: RunConfig, host: PluginHost, world: Distributed, device: torch.device
) -> tuple[RunConfig, LrFinding | None]:
    """``--lr auto``: run the range test (tlcore.lr_find, on a fresh model) and train at its suggestion.

    Returns the configuration with the rate to use and the test (None when
    the rate was given). Every process uses rank 0's suggestion; the
    generators are seeded again after the test, so the run draws what it
    would at that rate given outright. ConfigError when no finite loss was
    measured.
    """
    if config.lr != "auto":
        return config, None
    from tlcore.lr_find import find_lr, render_finding

    finding = find_lr(config, host, world, device)
    if finding.suggestion is None:
        raise ConfigError(f"--lr auto: the LR range test measured no finite loss ({finding.stopped}); give --lr")
    suggestion = distributed.sum_across([finding.suggestion if world.is_main else 0.0], world, device)[0]
    if world.is_main:
        print(render_finding(finding), file=sys.stderr, flush=True)
    seed_everything(config.seed)
    return dataclasses.replace(config, lr=suggestion), finding


def evaluate_ema(
    run: RunState, parts: Parts, source: Source, optim: Optimisation, stop: StopRequest, kept: list | None = None
) -> tuple | None:
    """Validate the weights' moving average (--ema) as the model was: its sums, () without --ema, None on a stop.

    ``kept``: as :func:`tlcore.loop.evaluate`'s, for the average's logits.
    """
    if optim.ema is None:
        return ()
    distributed.sync_buffers(optim.ema.module, run.place)  # every process validates rank 0's averaged statistics
    averaged = ema_of(optim.ema, parts.model, source.module)  # the head alone on the cached-feature path
    return evaluate(averaged, source.val, run.device, validation_dtype(run.device, optim.amp_dtype), stop, kept=kept)


def check_free_space(output_dir: Path, model: nn.Module, optimizer: str, averaged: bool = False) -> None:
    """Fail before training when the disk cannot hold the checkpoints and the training state.

    ``averaged``: the state also holds the weights' moving average (--ema).
    """
    model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    optimizer_copies = 2 if optimizer == "adamw" else 1  # AdamW keeps two moments per weight, SGD one momentum
    optimizer_copies += 1 if averaged else 0
    needed = int(model_bytes * (2 + 1 + optimizer_copies) * 1.2) + (16 << 20)  # best, last, state; 20% and 16 MB slack
    free = shutil.disk_usage(output_dir).free
    if free < needed:
        raise ConfigError(
            f"not enough free space in {output_dir}: checkpoints need about {needed >> 20} MB, {free >> 20} MB free"
        )


def open_run(
    config: RunConfig,
    host: PluginHost,
    world: Distributed,
    device: torch.device,
    parts: Parts,
    optim: Optimisation,
    *,
    resume_from: Path | None,
    lr_finding: LrFinding | None = None,
) -> RunState:
    """The run folder (created by rank 0, with config.json, only once everything above has worked) and the RunState.

    ``resume_from``: the folder of the run being resumed, used as it is. ``lr_finding``: the range test
    behind --lr auto, recorded in config.json.
    """
    if resume_from is not None:  # one process per folder: rank 0 holds the lock (the CLI took it at once already)
        output_dir = lock_run_folder(Path(resume_from)) if world.is_main else Path(resume_from)
    elif world.is_main:
        output_dir = create_output_dir(config)
        check_free_space(output_dir, parts.model, config.optimizer, averaged=optim.ema is not None)
        effective_batch = config.batch_size * config.accumulate * world.world_size
        write_run_config(
            output_dir,
            config,
            host,
            device=device,
            backbone=parts.backbone,
            data=parts.data,
            image_size=parts.image_size,
            phases=parts.phases,
            class_weights=optim.loss_weights,
            head_reused=parts.head_reused,
            head_classes=parts.head_reuse.to_dict() if parts.head_reuse is not None else None,
            callback_names=parts.callbacks.names(),
            amp_dtype=optim.amp_dtype,
            data_path={**parts.pipeline.describe(), "effective_batch": effective_batch},
            lr_find=lr_finding.summary() if lr_finding is not None else None,
        )
    else:
        output_dir = Path(config.output or "")
    return RunState(
        config=config,
        output_dir=output_dir,
        model=parts.model,
        backbone=parts.backbone,
        classes=parts.data.classes,
        device=device,
        optimizer=optim.optimizer,
        scheduler=optim.scheduler,
        image_size=parts.image_size,
        steps_per_epoch=parts.steps_per_epoch,
        place=world,
        pipeline=parts.pipeline.kind,
        threads=parts.pipeline.budget.banner() if parts.pipeline.budget is not None else "",
        precision=precision_phrase(device, optim.amp_dtype, config.backbone),
        data_notes=parts.data.run_notes() + (parts.head_reuse.notes() if parts.head_reuse is not None else []),
        flip_invariant=parts.data.flip_invariant,
        splits=parts.data,
        ema=optim.ema.module if optim.ema is not None else None,
    )


@dataclass
class Source:
    """Where the epochs' batches come from, and the modules they go through."""

    module: nn.Module  # what trains: the model, or the head alone on the cached-feature path
    forward: nn.Module  # ``module``, compiled under --compile; validation runs it
    train: Batches
    val: Batches
    step_forward: nn.Module  # what the training steps run: ``forward``, or DDP over ``module`` when distributed
    wrapped_for: list[str] | None = None  # the trainable groups ``step_forward`` was built for


def image_batches(run: RunState, parts: Parts) -> Source:
    """The usual path: the pipeline's image batches through the whole model."""
    return _source(run.config, parts.model, parts.pipeline.train, parts.pipeline.val)


def cached_feature_batches(run: RunState, parts: Parts, optim: Optimisation, end: RunEnd) -> Source:
    """The frozen-backbone fast path: the backbone's features computed once, then the head alone trains on them.

    The features are of unaugmented images in dataset order; the batches are
    cut from them by the same samplers as the image path, so they hold the
    same images in the same order.
    """
    config, backbone, data = run.config, parts.backbone, parts.data
    key = fingerprint(
        {
            "backbone": config.backbone,
            "weights": backbone.weights,
            "image_size": parts.image_size,
            "preprocessing": backbone.preprocessing.to_dict(),
            "data": run.data_identity(),
            "sizes": [len(data.train), len(data.val)],
        }
    )
    spill_dir = run.output_dir / ".feature-cache"
    for name, images, split in (
        ("train", parts.pipeline.unaugmented("train"), data.train),
        ("val", parts.pipeline.unaugmented("val"), data.val),
    ):
        amp = validation_dtype(run.device, optim.amp_dtype)  # features as eval computes them (float32 on the CPU)
        cache = compute_features(backbone.module, images, len(split), run.device, amp, key, spill_dir, name)
        end.caches.append(cache)  # registered at once: its spill file is deleted however the run ends
    train, val = end.caches
    for cache in end.caches:
        cache.check(key)  # batches are cut only from features of this run's backbone, weights, size and data
    held_on = storage_device([train.features, val.features], run.device)
    cut = {"batch_size": config.batch_size, "device": run.device, "transform": None, "held_on": held_on}
    train_batches = MemoryBatches(train.features, train.labels, parts.train_sampler, **cut)
    val_batches = MemoryBatches(val.features, val.labels, parts.val_sampler, **cut)
    parts.pipeline = None  # the images are not needed again: free the memory they hold
    return _source(config, parts.head, train_batches, val_batches)


def _source(config: RunConfig, module: nn.Module, train: Batches, val: Batches) -> Source:
    forward = _compiled(module, config)
    return Source(module, forward, train, val, step_forward=forward)


def _compiled(module: nn.Module, config: RunConfig) -> nn.Module:
    """``module`` through torch.compile under --compile, else itself."""
    return compile_model(module) if config.compile else module


@dataclass
class Start:
    """Where training starts: epoch 0, or a resumed run's saved position."""

    epoch: int = 0
    epoch_step: int = 0  # optimizer steps of that epoch already taken
    epoch_images: int = 0  # training images of that epoch already seen
    running: dict[str, torch.Tensor] = field(default_factory=dict)  # that epoch's sums so far: loss_sum, correct


def restore_position(saved: TrainState | None, run: RunState, optim: Optimisation, callbacks: CallbackList) -> Start:
    """Put every tensor, generator and counter back as it was saved; a new run (``saved`` None) starts at epoch 0."""
    if saved is None:
        return Start()
    running = restore_train_state(
        saved,
        model=run.model,
        optimizer=optim.optimizer,
        scheduler=optim.scheduler,
        scaler=optim.scaler,
        callbacks=callbacks.callbacks,
        ema=optim.ema,
    )
    record = saved.record
    run.history = list(record["history"])
    run.step = record["step"]
    epoch_images = record["epoch_images"] if record["epoch_step"] > 0 else 0
    return Start(record["epoch"], record["epoch_step"], epoch_images, running)


def begins_mid_epoch(start: Start, epoch: int) -> bool:
    """Whether ``epoch`` is a resumed epoch that already has steps behind it."""
    return epoch == start.epoch and start.epoch_step > 0


def begin_epoch(run: RunState, parts: Parts, source: Source, epoch: int, start: Start) -> tuple[list[str], nn.Module]:
    """Set the position, what trains this epoch and the sampler; returns the trainable groups and the step module."""
    config, world = run.config, run.place
    resumed = begins_mid_epoch(start, epoch)
    run.epoch, run.epoch_step = epoch, start.epoch_step if resumed else 0
    run.epoch_images = start.epoch_images if resumed else 0
    # the policy decides what trains this epoch; frozen layers stay in eval mode
    trainable = parts.policy.trainable_groups(parts.group_names, epoch)
    parts.model.set_keep_in_eval(apply_trainable(parts.model, parts.backbone, trainable, config.bn_mode, parts.policy))
    if trainable != source.wrapped_for and world.enabled:  # DDP must see the new set of trainable parameters
        source.step_forward = _compiled(distributed.wrap(source.module, world, run.device), config)
    source.wrapped_for = trainable
    source.step_forward.train()
    parts.model.train()
    # resuming mid-epoch: skip the micro-batches of the optimizer steps already taken
    parts.train_sampler.set_epoch(epoch, run.epoch_step * config.accumulate * config.batch_size)
    return trainable, source.step_forward


@dataclass
class RunEnd:
    """What the end of a run needs to know, kept up to date while it trains."""

    stage: str  # what was running, for an out-of-memory message: feature caching, training or validation
    caches: list[CachedFeatures] = field(default_factory=list)  # whose spill files to delete
    started: bool = False  # whether the callbacks have had on_fit_start (and so are owed on_fit_end)


@contextlib.contextmanager
def finishing(run: RunState, callbacks: CallbackList, writer: BackgroundWrite) -> Iterator[RunEnd]:
    """Around the training: failures become one clear line, and every way out closes the run.

    Out of memory becomes ResourceError, a --compile failure ConfigError.
    Whatever ended the run, the feature cache's spill files are deleted and
    the state write in flight lands. Callbacks that had ``on_fit_start`` get
    ``on_exception`` when an error or an interruption ends the run, then
    ``on_fit_end``; a callback that fails then is reported as a warning, so
    that the run's own error is the one raised.
    """
    end = RunEnd("feature caching" if run.config.cache_features else "training")
    try:
        try:
            yield end
        except Exception as error:
            translated = _translated(error, run, end.stage)
            if translated is None:
                raise
            raise translated from error
        finally:
            remove_spill_files(*end.caches)
            writer.wait()  # whatever ended the run, the last completed epoch's state is on disk
    except GeneratorExit:
        raise
    except BaseException as error:  # Ctrl-C a second time (KeyboardInterrupt) too: callbacks close their files
        if end.started:
            for warning in callbacks.notify_all("on_exception", run, error) + callbacks.notify_all("on_fit_end", run):
                print(f"tlcore: warning: {warning}", file=sys.stderr, flush=True)
        raise
    if end.started:
        callbacks.on_fit_end(run)


def _translated(error: Exception, run: RunState, stage: str) -> TlcoreError | None:
    """The one-line error for running out of memory or a failed --compile; None for anything else."""
    config = run.config
    if is_out_of_memory(error):
        message = out_of_memory_message(run.device, config.batch_size, config.accumulate, run.image_size, stage)
        return ResourceError(message)
    if config.compile and is_compile_failure(error):
        return ConfigError(f"--compile failed: {compile_failure_summary(error)}; run without --compile")
    return None
