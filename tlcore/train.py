"""The training loop: one for every backbone, dataset, device and plugin.

Reads top to bottom: resolve the components, build the data and the model,
then train epoch by epoch. The loss and accuracy accumulate on the device and
are read once per epoch, so a GPU is never stalled by the host step by step.
After every epoch, and on Ctrl-C or SIGTERM at the next step, the whole
training state is saved so `tlcore run --resume RUN_DIR` continues exactly.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tlcore import distributed
from tlcore.background import BackgroundWrite
from tlcore.balance import balanced_weights, class_weights, dataset_labels
from tlcore.batches import MemoryBatches, storage_device
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
from tlcore.compiled import compile_failure_summary, compile_model, is_compile_failure
from tlcore.config import RunConfig, build_config
from tlcore.data import EpochSampler
from tlcore.device import autocast_dtype, pick_device
from tlcore.errors import ConfigError, DataError, ResourceError, TlcoreError
from tlcore.feature_cache import compute_features, fingerprint, remove_spill_files
from tlcore.freeze import Phase, apply_trainable, policy_phases
from tlcore.interrupt import RunInterrupted, StopRequest
from tlcore.memory import PeakMemory, is_out_of_memory, out_of_memory_message
from tlcore.model import Classifier
from tlcore.optim import make_optimizer, make_scheduler, parameter_groups
from tlcore.pipeline import build_pipeline
from tlcore.plugins import PluginHost, get_host
from tlcore.resume import STATE_FILE, load_train_state, restore_train_state, save_train_state
from tlcore.rundir import create_output_dir, write_run_config
from tlcore.state import RunState


@dataclass
class RunResult:
    """What a finished run returns: its folder, per-epoch metrics and the trained model."""

    output_dir: Path
    history: list[dict]
    config: RunConfig
    model: Classifier

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
def evaluate(model: nn.Module, batches, device: torch.device, amp_dtype, stop: StopRequest | None = None):
    """Summed plain cross-entropy, correct count and image count over a batch source; None if a stop came first."""
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")  # plain: val_loss compares across runs whatever the training loss
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    for images, labels, _ in batches:  # unreadable validation images were noted by the dataset and left out
        if stop is not None and stop.requested:
            return None
        if labels.numel() == 0:
            continue
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
        loss_sum += criterion(logits.float(), labels)
        correct += (logits.argmax(dim=1) == labels).sum()
        seen += labels.numel()
    return loss_sum, correct, seen


class NonFiniteLoss(TlcoreError):
    """The loss became NaN or infinite."""


def note_unreadable(run: RunState, reasons: list[str], strict: bool) -> None:
    """Remember images that could not be decoded; under --strict the first one stops the run."""
    if reasons and strict:
        raise DataError(f"{reasons[0]}; stopped by --strict (without it, such images are skipped and counted)")
    for reason in reasons:
        if reason not in run.unreadable:
            run.unreadable.append(reason)


def epoch_sums(saved: dict[str, torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The epoch's running loss sum and correct count, on the device: zero, or as saved mid-epoch."""
    loss_sum = saved.get("loss_sum", torch.zeros((), dtype=torch.float64))
    correct = saved.get("correct", torch.zeros((), dtype=torch.int64))
    return loss_sum.to(device, torch.float64), correct.to(device, torch.int64)


def check_free_space(output_dir: Path, model: nn.Module, optimizer: str) -> None:
    """Fail before training when the disk cannot hold the checkpoints and the training state."""
    model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    optimizer_copies = 2 if optimizer == "adamw" else 1  # AdamW keeps two moments per weight, SGD one momentum
    needed = int(model_bytes * (2 + 1 + optimizer_copies) * 1.2) + (16 << 20)  # best, last, state; 20% and 16 MB slack
    free = shutil.disk_usage(output_dir).free
    if free < needed:
        raise ConfigError(
            f"not enough free space in {output_dir}: checkpoints need about {needed >> 20} MB, {free >> 20} MB free"
        )


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


def resume(run_dir: Path, host: PluginHost | None = None) -> RunResult:
    """Continue an interrupted run from its folder, with the configuration it was started with."""
    state = load_train_state(Path(run_dir))
    return fit(build_config(overrides=state.config), host, resume_from=Path(run_dir))


def fit(config: RunConfig, host: PluginHost | None = None, resume_from: Path | None = None) -> RunResult:
    """Train one run as configured and return its results; writes the run folder (rank 0 only)."""
    host = host or get_host()
    state = load_train_state(resume_from) if resume_from is not None else None
    device = pick_device(config.device)
    place = distributed.setup(device)
    device = distributed.local_device(device, place)
    seed_everything(config.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # every training batch has one shape: autotune the convolutions once

    # -- components, by name, from the plugins ------------------------------
    data = build_dataset(config, host)
    weights_file = read_weights_option(config) if state is None else None  # --weights PATH; resuming has its own
    backbone = build_backbone(config, host, config.image_size or data.preferred_image_size, weights_file)
    image_size = resolve_image_size(config, backbone, data)
    head = build_head(config, host, backbone.feature_dim, len(data.classes))
    head_reused = reuse_checkpoint_head(config, head, data.classes, weights_file)
    policy = build_policy(config, host)
    group_names = [group.name for group in backbone.layer_groups]
    phases = policy_phases(policy, group_names, config.epochs)  # asked up front: bad options fail before any work
    if not any(p.requires_grad for p in head.parameters()):
        idle = [phase for phase in phases if not phase.trainable]
        if idle:
            raise ConfigError(
                f"nothing would train in epoch {idle[0].first_epoch + 1}: head {config.head!r} has no trainable "
                f"parameters and freeze policy {config.freeze!r} freezes every layer group then"
            )
    if config.cache_features:
        check_cache_features(config, phases)
    callbacks = CallbackList(build_callbacks(config, host) if place.is_main else [])
    model = Classifier(distributed.sync_batchnorm(backbone.module, config.sync_bn, place, device), head)

    # -- data: the backbone's preprocessing; order and augmentation follow the seed ----
    needs_labels = config.class_weights is not None or config.balanced_sampler
    train_labels = dataset_labels(data.train) if needs_labels else None
    draw_weights = balanced_weights(train_labels, len(data.classes)) if config.balanced_sampler else None
    train_sampler = EpochSampler(len(data.train), config.seed, True, draw_weights, place.rank, place.world_size)
    val_sampler = EpochSampler(len(data.val), config.seed, False, None, place.rank, place.world_size, even=False)
    pipeline = build_pipeline(config, data, backbone.preprocessing, image_size, device, train_sampler, val_sampler)
    memory_format = torch.channels_last if pipeline.channels_last else torch.preserve_format
    model = model.to(device, memory_format=memory_format)
    micro_batches = len(pipeline.train)  # batches of --batch-size; --accumulate of them make one optimizer step
    steps_per_epoch = math.ceil(micro_batches / config.accumulate)

    # -- optimisation: groups built once, whatever the policy unfreezes later -
    optimizer = make_optimizer(parameter_groups(backbone, head, config), config, device)
    scheduler = make_scheduler(optimizer, config, steps_per_epoch)
    weights = class_weights(config.class_weights, train_labels, data.classes).to(device) if config.class_weights else None
    criterion = nn.CrossEntropyLoss(weight=weights, label_smoothing=config.label_smoothing)
    amp_dtype = autocast_dtype(device, config.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)  # fp16 only: bf16 needs none

    # -- the run folder: created (by rank 0) only once everything above has worked ----
    if state is not None:
        output_dir = Path(resume_from)
    elif place.is_main:
        output_dir = create_output_dir(config)
        check_free_space(output_dir, model, config.optimizer)
        write_run_config(
            output_dir,
            config,
            host,
            device,
            backbone,
            data,
            image_size,
            phases,
            weights,
            head_reused,
            callbacks.names(),
            amp_dtype,
            {**pipeline.describe(), "effective_batch": config.batch_size * config.accumulate * place.world_size},
        )
    else:
        output_dir = Path(config.output or "")
    run = RunState(
        config,
        output_dir,
        model,
        backbone,
        data.classes,
        device,
        optimizer,
        scheduler,
        image_size,
        steps_per_epoch,
        place=place,
        pipeline=pipeline.kind,
    )
    memory = PeakMemory(device)
    state_writer = BackgroundWrite()
    phase = "feature caching" if config.cache_features else "training"  # what was running if memory runs out
    train_module, caches = model, []
    train_batches, val_batches = pipeline.train, pipeline.val

    try:
        # -- the frozen-backbone fast path: features once, then the head alone ----
        if config.cache_features:
            key = fingerprint(
                {
                    "backbone": config.backbone,
                    "weights": backbone.weights,
                    "image_size": image_size,
                    "preprocessing": backbone.preprocessing.to_dict(),
                    "data": run.data_identity(),
                    "sizes": [len(data.train), len(data.val)],
                }
            )
            spill_dir = output_dir / ".feature-cache"
            caches = [  # in dataset order, unaugmented
                compute_features(backbone.module, source, len(split), device, amp_dtype, key, spill_dir, name)
                for name, source, split in (
                    ("train", pipeline.unaugmented("train"), data.train),
                    ("val", pipeline.unaugmented("val"), data.val),
                )
            ]
            # the same samplers as the slow path: the same images in the same order, cut from memory
            bs, held_on = config.batch_size, storage_device([cache.features for cache in caches], device)
            train_batches = MemoryBatches(caches[0].features, caches[0].labels, train_sampler, bs, device, None, 0, held_on)
            val_batches = MemoryBatches(caches[1].features, caches[1].labels, val_sampler, bs, device, None, 0, held_on)
            train_module, pipeline = head, None  # the images are not needed again: free the memory they hold
        forward_model = compile_model(train_module) if config.compile else train_module

        # -- resuming: every tensor, generator and counter as it was saved ------
        start_epoch, start_step, running = 0, 0, {}
        if state is not None:
            running = restore_train_state(
                state, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, callbacks=callbacks.callbacks
            )
            run.history = list(state.record["history"])
            start_epoch, start_step, run.step = state.record["epoch"], state.record["epoch_step"], state.record["step"]

        callbacks.on_fit_start(run)
        trainable_now, step_model = None, forward_model
        with StopRequest() as stop:
            for epoch in range(start_epoch, config.epochs):
                resumed = state is not None and epoch == start_epoch and start_step > 0
                run.epoch, run.epoch_step = epoch, start_step if resumed else 0
                run.epoch_images = state.record["epoch_images"] if resumed else 0
                # the policy decides what trains this epoch; frozen layers stay in eval mode
                trainable = policy.trainable_groups(group_names, epoch)
                model.set_keep_in_eval(apply_trainable(model, backbone, trainable, config.bn_mode, policy))
                if trainable != trainable_now and place.enabled:  # DDP must see the new set of trainable parameters
                    step_model = distributed.wrap(train_module, place, device)
                    step_model = compile_model(step_model) if config.compile else step_model
                trainable_now = trainable
                step_model.train()
                model.train()
                run.train_loss_sum, correct = epoch_sums(running if resumed else {}, device)
                # resuming mid-epoch: skip the micro-batches of the optimizer steps already taken
                train_sampler.set_epoch(epoch, run.epoch_step * config.accumulate * config.batch_size)
                first_nonfinite = torch.full((), -1, device=device, dtype=torch.int64)
                remaining = len(train_batches)  # micro-batches left this epoch: the last step may take fewer
                gradients = False  # whether this optimizer step has had a backward pass yet
                phase = "training"
                memory.reset()
                started = time.perf_counter()
                callbacks.on_epoch_start(run)

                for micro, (images, labels, unreadable) in enumerate(train_batches):
                    note_unreadable(run, unreadable, config.strict)
                    if labels.numel() == 0 and place.enabled:  # the other processes would wait for its gradients
                        first = unreadable[0] if unreadable else "no reason given"
                        raise DataError(
                            f"every image of a training batch on process {place.rank} was unreadable ({first}); "
                            "a distributed run cannot skip a whole batch: remove or replace the unreadable images, "
                            "or use a larger --batch-size"
                        )
                    in_step = min(config.accumulate, remaining - micro // config.accumulate * config.accumulate)
                    last_of_step = (micro + 1) % config.accumulate == 0 or micro + 1 == remaining
                    if labels.numel() == 0 and not last_of_step:  # every image of the batch was unreadable
                        continue
                    if labels.numel() > 0:
                        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                            logits = step_model(images)
                            loss = criterion(logits.float(), labels)
                        # the one opt-in host sync per step; processes agree, so they skip the same steps
                        if config.skip_nonfinite and distributed.any_across(not torch.isfinite(loss), place, device):
                            run.nonfinite_batches += 1
                        else:
                            # no sync: the first non-finite step is remembered on the device, read at the epoch's end
                            first_nonfinite = torch.where(
                                (first_nonfinite < 0) & ~torch.isfinite(loss.detach()), run.epoch_step + 1, first_nonfinite
                            )
                            # gradients add up over the step's micro-batches; DDP exchanges them once, at the last
                            with distributed.no_sync(step_model, place, not last_of_step):
                                scaler.scale(loss / in_step).backward()
                            gradients = True
                            # accumulate on the device: no host synchronisation per step
                            run.train_loss_sum += loss.detach() * labels.numel()
                            correct += (logits.detach().argmax(dim=1) == labels).sum()
                            run.epoch_images += len(labels)
                    if not last_of_step:
                        continue
                    if gradients:  # a step whose micro-batches were all skipped has none: the fp16 scaler needs some
                        scaler.step(optimizer)  # parameters without a gradient (frozen) stay as they are
                        scaler.update()
                    gradients = False
                    optimizer.zero_grad(set_to_none=True)  # None, not zero: frozen parameters get no update at all
                    scheduler.step()
                    run.step, run.epoch_step = run.step + 1, run.epoch_step + 1
                    callbacks.on_train_batch_end(run)
                    if distributed.stop_agreed(stop.requested, run.step, place, device):  # Ctrl-C or SIGTERM
                        break

                if device.type == "cuda":  # the clock must include the steps still queued on the GPU
                    torch.cuda.synchronize(device)
                train_seconds = time.perf_counter() - started
                if int(first_nonfinite) >= 0:  # the weights are damaged from that step on: stop before saving them
                    raise NonFiniteLoss(
                        f"the training loss became NaN or infinite at epoch {epoch + 1}, step {int(first_nonfinite)}; "
                        "nothing after the last completed epoch was saved; lower --lr, or pass --skip-nonfinite"
                    )
                distributed.sync_buffers(model, place)
                phase = "validation"
                val = None if stop.requested else evaluate(forward_model, val_batches, device, amp_dtype, stop)
                if distributed.any_across(val is None, place, device):  # a signal reached any process
                    state_writer.wait()  # the last epoch's state lands before the mid-epoch one replaces it
                    raise _interrupt(run, stop, state_args=(scaler, callbacks, correct))
                totals = distributed.sum_across(
                    [run.train_loss_sum, correct, run.epoch_images, val[0], val[1], val[2]], place, device
                )
                metrics = {
                    "epoch": epoch + 1,
                    "train_loss": totals[0] / totals[2],
                    "train_acc": totals[1] / totals[2],
                    "val_loss": totals[3] / totals[5],
                    "val_acc": totals[4] / totals[5],
                    "lr": _rate_of_step(optimizer, scheduler, run.step - 1),
                    "trainable_groups": list(trainable),
                    "images_per_second": totals[2] / max(train_seconds, 1e-9),
                    "unreadable_images": len(run.unreadable),
                    "nonfinite_batches": run.nonfinite_batches,
                    "seconds": time.perf_counter() - started,
                    **distributed.max_across(memory.read(), place, device),
                }
                run.history.append(metrics)
                state_writer.wait()  # files reach the disk in epoch order: the last state first
                callbacks.on_epoch_end(run, metrics)
                run.epoch_step, run.epoch_images = 0, 0
                if place.is_main:
                    _save(run, epoch + 1, scaler, callbacks, {}, state_writer)  # written while the next epoch trains
                if distributed.broadcast_flag(run.should_stop, place, device):
                    break
    except Exception as error:
        if is_out_of_memory(error):
            message = out_of_memory_message(device, config.batch_size, config.accumulate, image_size, phase)
            raise ResourceError(message) from error
        if config.compile and is_compile_failure(error):
            raise ConfigError(f"--compile failed: {compile_failure_summary(error)}; run without --compile") from error
        raise
    finally:
        remove_spill_files(*caches)
        state_writer.wait()  # whatever ended the run, the last completed epoch's state is on disk

    callbacks.on_fit_end(run)
    distributed.teardown(place)
    return RunResult(output_dir, run.history, config, model)


def _rate_of_step(optimizer: torch.optim.Optimizer, scheduler, step: int) -> float:
    """The head's learning rate at optimizer step ``step`` (the scheduler has already moved past it)."""
    return optimizer.param_groups[-1]["initial_lr"] * scheduler.lr_lambdas[-1](max(step, 0))


def _save(
    run: RunState, epoch: int, scaler, callbacks: CallbackList, running: dict, writer: BackgroundWrite | None = None
) -> None:
    """Write the resumable state: ``epoch`` is the one to continue with, at ``run.epoch_step``."""
    save_train_state(
        run.output_dir / STATE_FILE,
        model=run.model,
        optimizer=run.optimizer,
        scheduler=run.scheduler,
        scaler=scaler,
        callbacks=callbacks.callbacks,
        running=running,
        record={
            "epoch": epoch,
            "epoch_step": run.epoch_step,
            "step": run.step,
            "epoch_images": run.epoch_images,
            "history": run.history,
            "config": run.config.to_dict(),
        },
        writer=writer,
    )


def _interrupt(run: RunState, stop: StopRequest, state_args) -> RunInterrupted:
    """Save a mid-epoch state and build the message that says how to resume."""
    scaler, callbacks, correct = state_args
    if run.place.is_main:
        _save(run, run.epoch, scaler, callbacks, {"loss_sum": run.train_loss_sum, "correct": correct})
    return RunInterrupted(
        f"interrupted by {stop.signal_name or 'a signal'} at epoch {run.epoch + 1}, step {run.epoch_step} of "
        f"{run.steps_per_epoch}; state saved; resume with: tlcore run --resume {run.output_dir}"
    )
