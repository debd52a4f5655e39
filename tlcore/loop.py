"""One epoch of training, step by step, and what is done at its end.

An epoch is a run of optimizer steps; a step is up to ``--accumulate``
micro-batches whose gradients add up (:func:`optimizer_steps`, read lazily).
The loss, the correct count and the first non-finite step stay on the device
and are read once per epoch, so a GPU is never stalled by the host step by step.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator, Sized
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tlcore import distributed, ema
from tlcore.background import BackgroundWrite
from tlcore.callbacks.base import CallbackList
from tlcore.errors import DataError, TlcoreError
from tlcore.interrupt import RunInterrupted, StopRequest
from tlcore.memory import PeakMemory
from tlcore.multilabel import (
    choose_thresholds,
    class_probabilities,
    exact_matches,
    is_multi_hot,
    multilabel_metrics,
    summed_loss,
)
from tlcore.optim import Optimisation
from tlcore.resume import STATE_FILE, save_train_state
from tlcore.state import KEEP_VALIDATION_MAX, RunState, ValidationOutputs


class NonFiniteLoss(TlcoreError):
    """The loss became NaN or infinite."""


@dataclass
class EpochSums:
    """What one epoch's training adds up besides ``run.train_loss_sum`` (which callbacks read).

    The tensors stay on the device until the epoch ends.
    """

    correct: torch.Tensor  # int64: training images predicted right (the label of the larger share, when mixed)
    first_nonfinite: torch.Tensor  # int64: the epoch's 1-based step whose loss first was NaN or infinite; -1 if none
    started: float  # time.perf_counter() at the epoch's start
    train_seconds: float = 0.0  # the training part of the epoch, queued GPU work included
    grad_norm_sum: torch.Tensor | None = None  # float64 (--clip-grad): the steps' finite pre-clip total gradient norms
    grad_norm_steps: torch.Tensor | None = None  # int64 (--clip-grad): how many steps grad_norm_sum holds

    def running(self, loss_sum: torch.Tensor) -> dict[str, torch.Tensor]:
        """The sums so far, for a mid-epoch state (``loss_sum`` is ``run.train_loss_sum``)."""
        sums = {"loss_sum": loss_sum, "correct": self.correct}
        if self.grad_norm_sum is not None:
            sums.update(grad_norm_sum=self.grad_norm_sum, grad_norm_steps=self.grad_norm_steps)
        return sums


@torch.inference_mode()
def evaluate(
    model: nn.Module, batches, device: torch.device, amp_dtype, stop: StopRequest | None = None, *, kept: list | None = None
):
    """Summed plain cross-entropy, correct count and image count over a batch source; None if a stop came first.

    Multi-label batches (float multi-hot labels ``[N, C]``) sum the plain binary cross-entropy (the mean over
    classes per image) and count images whose every class is right at probability 0.5. Unreadable images are
    left out (:func:`noting_unreadable` counts them for a run). ``kept``, when
    given, receives each batch's ``(float32 logits, labels)``, left on the device: no synchronisation per
    step (:func:`validation_outputs` moves them once).
    """
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")  # plain: val_loss compares across runs whatever the training loss
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    for images, labels, _ in batches:
        if stop is not None and stop.requested:
            return None
        if labels.numel() == 0:
            continue
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
        if is_multi_hot(labels):
            loss_sum += summed_loss(logits.float(), labels)
            correct += exact_matches(logits, labels)
        else:
            loss_sum += criterion(logits.float(), labels)
            correct += (logits.argmax(dim=1) == labels).sum()
        seen += len(labels)  # images (multi-hot labels hold C entries each)
        if kept is not None:
            kept.append((logits.float(), labels))
    return loss_sum, correct, seen


def multilabel_scores(kept: list | None, classes: list[str]) -> dict[str, float]:
    """A multilabel epoch's ``val_map``, ``val_f1_micro`` and ``val_f1_macro`` from the kept validation logits.

    F1 is at the thresholds chosen on these same images (:func:`tlcore.multilabel.choose_thresholds`), the
    ones the epoch's checkpoint carries. Raises TlcoreError when nothing was kept (a distributed run, which
    multilabel does not support, or a validation split with no readable image).
    """
    if not kept:
        raise TlcoreError("a multilabel run needs the validation logits of every epoch, and none were kept")
    logits = torch.cat([batch_logits for batch_logits, _ in kept]).cpu()
    labels = torch.cat([batch_labels for _, batch_labels in kept]).cpu()
    scores = multilabel_metrics(logits, labels, choose_thresholds(class_probabilities(logits), labels), classes)
    return {"val_map": scores.map, "val_f1_micro": scores.f1_micro, "val_f1_macro": scores.f1_macro}


def keeps_validation(run: RunState) -> bool:
    """Whether this epoch's validation logits are kept (``run.last_validation``; the report and calibration use them).

    In one process, when the split is known and holds at most KEEP_VALIDATION_MAX logits; a distributed run
    scores a shard per process, and is left to score the split again. A multilabel run always keeps them: its
    mAP and thresholds are computed from them.
    """
    if run.place.enabled or run.splits is None:
        return False
    return run.config.task == "multilabel" or len(run.splits.val) * len(run.classes) <= KEEP_VALIDATION_MAX


def validation_outputs(run: RunState, kept: list | None, seen: int) -> ValidationOutputs | None:
    """The logits :func:`evaluate` kept, moved to the CPU at once, as this epoch's :class:`ValidationOutputs`.

    The validation sampler keeps the split's order, so image ``i`` is at position ``i``; when images were
    skipped (unreadable: fewer ``seen`` than the split holds) positions are unknown and None is returned.
    Outside inference mode: the tensors take part in autograd (a temperature fitted on them).
    """
    if not kept or run.splits is None or seen != len(run.splits.val):
        return None
    logits = torch.cat([batch_logits for batch_logits, _ in kept]).cpu()
    labels = torch.cat([batch_labels for _, batch_labels in kept]).cpu()
    labels = labels.float() if is_multi_hot(labels) else labels.to(torch.int64)
    if logits.shape[0] != seen:
        return None
    return ValidationOutputs(run.epoch + 1, logits, labels, torch.arange(seen, dtype=torch.int64))


def note_unreadable(run: RunState, reasons: list[str], *, strict: bool) -> None:
    """Remember images that could not be decoded; under --strict the first one stops the run (DataError)."""
    if reasons and strict:
        raise DataError(f"{reasons[0]}; stopped by --strict (without it, such images are skipped and counted)")
    for reason in reasons:
        if reason not in run.unreadable:
            run.unreadable.append(reason)


def noting_unreadable(batches: Iterable, run: RunState) -> Iterator:
    """``batches`` as they are, each batch's unreadable images noted in ``run`` first (DataError under --strict).

    Validation's unreadable images count as training's do.
    """
    for images, labels, unreadable in batches:
        note_unreadable(run, unreadable, strict=run.config.strict)
        yield images, labels, unreadable


def epoch_sums(saved: dict[str, torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The epoch's running loss sum (float64) and correct count (int64), on the device: zero, or as saved mid-epoch."""
    loss_sum = saved.get("loss_sum", torch.zeros((), dtype=torch.float64))
    correct = saved.get("correct", torch.zeros((), dtype=torch.int64))
    return loss_sum.to(device, torch.float64), correct.to(device, torch.int64)


def optimizer_steps(batches: Sized, accumulate: int) -> Iterator[tuple[int, Iterator]]:
    """The epoch's batches grouped into optimizer steps: ``(size, micro_batches)`` per step.

    Each step takes ``accumulate`` batches; the last may take fewer (``size``
    says how many: each micro-batch's loss counts ``1 / size``). It stays
    lazy: a step's batches are read one at a time as ``micro_batches`` is
    consumed, never held together on the device. ``len(batches)`` must be
    the number of batches the source yields.
    """
    source, remaining = iter(batches), len(batches)
    while remaining > 0:
        size = min(accumulate, remaining)
        remaining -= size
        yield size, itertools.islice(source, size)


def start_epoch_sums(run: RunState, running: dict[str, torch.Tensor], memory: PeakMemory) -> EpochSums:
    """Zero the epoch's sums (or take a resumed epoch's), start the clock and the memory window."""
    run.train_loss_sum, correct = epoch_sums(running, run.device)
    first_nonfinite = torch.full((), -1, device=run.device, dtype=torch.int64)
    memory.reset()
    sums = EpochSums(correct, first_nonfinite, time.perf_counter())
    if run.config.clip_grad is not None:
        zero = {"grad_norm_sum": torch.zeros((), dtype=torch.float64), "grad_norm_steps": torch.zeros((), dtype=torch.int64)}
        sums.grad_norm_sum = running.get("grad_norm_sum", zero["grad_norm_sum"]).to(run.device, torch.float64)
        sums.grad_norm_steps = running.get("grad_norm_steps", zero["grad_norm_steps"]).to(run.device, torch.int64)
    return sums


def train_epoch(
    run: RunState,
    forward: nn.Module,
    batches,
    optim: Optimisation,
    callbacks: CallbackList,
    stop: StopRequest,
    sums: EpochSums,
) -> None:
    """Train one epoch (the rest of it, when resumed mid-epoch) on ``batches``, adding to ``sums``.

    ``forward`` is the module the steps run (under DDP in a distributed run).
    Stops early at a step boundary when Ctrl-C or SIGTERM arrived (all
    processes agree). Raises NonFiniteLoss when a loss was NaN or infinite
    (without --skip-nonfinite), DataError for an unreadable image under
    --strict or a wholly unreadable batch in a distributed run.
    """
    config, world, device = run.config, run.place, run.device
    for size, micro_batches in optimizer_steps(batches, config.accumulate):
        backward = False  # a step whose micro-batches were all skipped has no gradients
        for position, (images, labels, unreadable) in enumerate(micro_batches):
            note_unreadable(run, unreadable, strict=config.strict)
            if labels.numel() == 0 and world.enabled:  # the other processes would wait for its gradients
                first = unreadable[0] if unreadable else "no reason given"
                raise DataError(
                    f"every image of a training batch on process {world.rank} was unreadable ({first}); "
                    "a distributed run cannot skip a whole batch: remove or replace the unreadable images, "
                    "or use a larger --batch-size"
                )
            if labels.numel() > 0:  # else every image of the batch was unreadable
                last = position == size - 1
                if forward_backward(run, forward, images, labels, optim, sums, share=size, position=position, last=last):
                    backward = True
        optimizer_step(optim, backward=backward, sums=sums)
        if backward:
            ema.update(optim.ema, run.model)
        run.step, run.epoch_step = run.step + 1, run.epoch_step + 1
        callbacks.on_train_batch_end(run)
        if distributed.stop_agreed(stop.requested, run.step, world, device):  # Ctrl-C or SIGTERM
            break
    if device.type == "cuda":  # the clock must include the steps still queued on the GPU
        torch.cuda.synchronize(device)
    sums.train_seconds = time.perf_counter() - sums.started
    if int(sums.first_nonfinite) >= 0:  # the weights are damaged from that step on: stop before saving them
        raise NonFiniteLoss(
            f"the training loss became NaN or infinite at epoch {run.epoch + 1}, step {int(sums.first_nonfinite)}; "
            "nothing after the last completed epoch was saved; lower --lr, or pass --skip-nonfinite"
        )
    distributed.sync_buffers(run.model, world)


def forward_backward(
    run: RunState,
    forward: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    optim: Optimisation,
    sums: EpochSums,
    *,
    share: int,
    position: int,
    last: bool,
) -> bool:
    """One micro-batch: loss, backward pass of ``loss / share``, sums. False when skipped (--skip-nonfinite).

    ``position``: the micro-batch's place in its step (from 0), which keys its mixing draw.
    ``last`` marks the step's last micro-batch: DDP exchanges the gradients only then.
    """
    config, world, device = run.config, run.place, run.device
    images, targets, scored = training_targets(optim, images, labels, run.epoch, run.epoch_step, position)
    with torch.autocast(device.type, dtype=optim.amp_dtype, enabled=optim.amp_dtype is not None):
        logits = forward(images)
        loss = optim.criterion(logits.float(), targets)
    # the one opt-in host sync per step; processes agree, so they skip the same steps
    if config.skip_nonfinite and distributed.any_across(not torch.isfinite(loss), world, device):
        run.nonfinite_batches += 1
        return False
    # no sync: the first non-finite step is remembered on the device, read at the epoch's end
    sums.first_nonfinite = torch.where(
        (sums.first_nonfinite < 0) & ~torch.isfinite(loss.detach()), run.epoch_step + 1, sums.first_nonfinite
    )
    # gradients add up over the step's micro-batches; DDP exchanges them once, at the last
    with distributed.no_sync(forward, world, skip=not last):
        optim.scaler.scale(loss / share).backward()
    # accumulate on the device: no host synchronisation per step
    run.train_loss_sum += loss.detach() * len(labels)
    if is_multi_hot(scored):
        sums.correct += exact_matches(logits.detach(), scored)
    else:
        sums.correct += (logits.detach().argmax(dim=1) == scored).sum()
    run.epoch_images += len(labels)
    return True


def training_targets(
    optim: Optimisation, images: torch.Tensor, labels: torch.Tensor, epoch: int, step: int, position: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(images, targets, scored)`` for one micro-batch: as they are, or mixed under --mixup/--cutmix.

    Mixed: the new images, soft targets [N, classes] and the labels of the
    larger share (training accuracy counts against them). ``step`` is the
    0-based optimizer step of ``epoch``, ``position`` the micro-batch's in it.
    """
    if optim.mixing is None:
        return images, labels, labels
    return optim.mixing(images, labels, epoch, step, position)


def clip_gradients(optim: Optimisation, sums: EpochSums | None) -> None:
    """Clip the summed gradients (--clip-grad), the true ones: unscaled first under fp16.

    Only parameters with a gradient take part (frozen ones have None). In a
    distributed run this is after DDP's exchange, so every process clips the
    same gradients. The pre-clip total norm is added to ``sums`` on the device
    (no host synchronisation); steps whose norm is not finite (fp16 overflow,
    which the scaler then skips) are left out of it.
    """
    if optim.clip is None:
        return
    mode, limit = optim.clip
    optim.scaler.unscale_(optim.optimizer)  # a no-op without fp16
    params = [p for group in optim.optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not params:
        return
    if mode == "norm":
        norm = torch.nn.utils.clip_grad_norm_(params, limit)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        torch.nn.utils.clip_grad_value_(params, limit)
    if sums is not None and sums.grad_norm_sum is not None:
        finite = torch.isfinite(norm)
        sums.grad_norm_sum += torch.where(finite, norm.double(), 0.0)
        sums.grad_norm_steps += finite.long()


def optimizer_step(optim: Optimisation, *, backward: bool, sums: EpochSums | None = None) -> None:
    """Apply the step's summed gradients (only after a backward pass: the fp16 scaler needs one), then reset them.

    Under --clip-grad the gradients are clipped first (:func:`clip_gradients`, adding to ``sums``).
    """
    if backward:
        clip_gradients(optim, sums)
        optim.scaler.step(optim.optimizer)  # parameters without a gradient (frozen) stay as they are
        optim.scaler.update()
    optim.optimizer.zero_grad(set_to_none=True)  # None, not zero: frozen parameters get no update at all
    optim.scheduler.step()


def epoch_metrics(
    run: RunState,
    sums: EpochSums,
    val: tuple,
    optim: Optimisation,
    memory: PeakMemory,
    trainable: list[str],
    ema_val: tuple = (),
    kept: list | None = None,
    kept_ema: list | None = None,
) -> dict[str, Any]:
    """The epoch's metrics, summed over every process (the keys docs/plugins.md lists for ``on_epoch_end``).

    ``ema_val``: the moving average's validation sums under --ema (adds ``ema_val_loss``, ``ema_val_acc`` and
    ``checkpoint_weights``); under --clip-grad ``grad_norm`` is the mean pre-clip total gradient norm.
    ``kept`` (``kept_ema``): the validation logits :func:`evaluate` kept; a multilabel run's
    ``val_map``, ``val_f1_micro`` and ``val_f1_macro`` (``ema_val_map``) come from them
    (:func:`multilabel_scores`), and the average is held when its mAP is higher.
    """
    world, device = run.place, run.device
    clipped = [sums.grad_norm_sum, sums.grad_norm_steps] if sums.grad_norm_sum is not None else []
    totals = distributed.sum_across(
        [run.train_loss_sum, sums.correct, run.epoch_images, *val, *ema_val, *clipped], world, device
    )
    extra: dict[str, Any] = {}
    if run.config.task == "multilabel":
        extra.update(multilabel_scores(kept, run.classes))
    if ema_val:
        extra["ema_val_loss"], extra["ema_val_acc"] = totals[6] / totals[8], totals[7] / totals[8]
        held, averaged = totals[4] / totals[5], extra["ema_val_acc"]
        if run.config.task == "multilabel":
            extra["ema_val_map"] = multilabel_scores(kept_ema, run.classes)["val_map"]
            held, averaged = extra["val_map"], extra["ema_val_map"]
        extra["checkpoint_weights"] = ema.checkpoint_weights(held, averaged)
    if clipped:
        norm_sum, norm_steps = totals[-2:]
        # the mean over processes' steps: each clipped the same synchronised gradients
        extra["grad_norm"] = norm_sum / norm_steps if norm_steps else None
    return {
        "epoch": run.epoch + 1,
        "train_loss": totals[0] / totals[2],
        "train_acc": totals[1] / totals[2],
        "val_loss": totals[3] / totals[5],
        "val_acc": totals[4] / totals[5],
        "lr": rate_of_step(optim.optimizer, optim.scheduler, run.step - 1),
        "trainable_groups": list(trainable),
        "images_per_second": totals[2] / max(sums.train_seconds, 1e-9),
        "unreadable_images": len(run.unreadable),
        "nonfinite_batches": run.nonfinite_batches,
        "seconds": time.perf_counter() - sums.started,
        **distributed.max_across(memory.read(), world, device),
        **extra,
    }


def end_epoch(
    run: RunState, metrics: dict[str, Any], callbacks: CallbackList, optim: Optimisation, writer: BackgroundWrite
) -> bool:
    """Record the epoch (history, callbacks, the resumable state written in the background); True to stop early."""
    run.history.append(metrics)
    run.calibrate()  # the epoch's temperature, before any checkpoint of this epoch's model is written
    writer.wait()  # files reach the disk in epoch order: the last state first
    callbacks.on_epoch_end(run, metrics)
    run.epoch_step, run.epoch_images = 0, 0
    if run.place.is_main:
        save_state(run, run.epoch + 1, optim, callbacks, {}, writer)  # written while the next epoch trains
    return distributed.broadcast_flag(run.should_stop, run.place, run.device)


def rate_of_step(optimizer: torch.optim.Optimizer, scheduler, step: int) -> float:
    """The head's learning rate at optimizer step ``step`` (the scheduler has already moved past it)."""
    return optimizer.param_groups[-1]["initial_lr"] * scheduler.lr_lambdas[-1](max(step, 0))


def save_state(
    run: RunState,
    epoch: int,
    optim: Optimisation,
    callbacks: CallbackList,
    running: dict,
    writer: BackgroundWrite | None = None,
) -> None:
    """Write the resumable state: ``epoch`` is the one to continue with, at ``run.epoch_step``."""
    save_train_state(
        run.output_dir / STATE_FILE,
        model=run.model,
        optimizer=run.optimizer,
        scheduler=run.scheduler,
        scaler=optim.scaler,
        callbacks=callbacks.callbacks,
        running=running,
        ema=optim.ema,
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


def save_and_interrupt(
    run: RunState, stop: StopRequest, optim: Optimisation, callbacks: CallbackList, sums: EpochSums
) -> RunInterrupted:
    """Save a mid-epoch state (rank 0) and build the error that says how to resume."""
    if run.place.is_main:
        save_state(run, run.epoch, optim, callbacks, sums.running(run.train_loss_sum))
    return RunInterrupted(
        f"interrupted by {stop.signal_name or 'a signal'} at epoch {run.epoch + 1}, step {run.epoch_step} of "
        f"{run.steps_per_epoch}; state saved; resume with: tlcore run --resume {run.output_dir}"
    )
