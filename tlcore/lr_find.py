"""The learning-rate range test (Smith 2017, "Cyclical Learning Rates"; fastai's ``Learner.lr_find``).

A fresh model trains for up to ``steps`` optimizer steps while the rate grows
exponentially from ``start_lr`` to ``end_lr`` (step ``i`` at
``start_lr * (end_lr / start_lr) ** (i / steps)``, fastai's ``SchedExp``),
through the same parts as ``tlcore run``: the dataset, pipeline and
augmentation, the freeze policy's first epoch, the parameter groups (each
group's rate keeps its ``lr_scale``: layer decay and --lr-mults), the loss
(label smoothing, class weights, mixing), mixed precision and clipping. The
loss is smoothed as fastai's Recorder does (an exponential moving average with
``beta`` 0.98, debiased by ``1 - beta ** count``); the test stops once the
smoothed loss exceeds 4x the best so far (fastai's ``stop_div``) or is not
finite.

The suggestion is fastai's ``minimum`` rule: a tenth of the rate at the lowest
smoothed loss, over the points fastai considers (the first tenth of the steps
and the last five left out, ``lrs[num_it//10:-5]``). fastai's default rule is
``valley`` (ESRI's longest-valley heuristic); ``minimum`` is chosen here
because it depends only on where the curve is lowest, not on the slope of a
curve measured on noisy single batches, and a tenth of the edge of divergence
is the rule Smith and fastai's course give for fine-tuning.

Nothing is written and nothing is restored: the model is built afresh for
the test and dropped after it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tlcore import heap
from tlcore.config import RunConfig
from tlcore.distributed import Distributed
from tlcore.errors import ConfigError, ResourceError
from tlcore.freeze import apply_trainable
from tlcore.loop import optimizer_step, optimizer_steps, training_targets
from tlcore.plugins import PluginHost

START_LR = 1e-7
END_LR = 10.0
STEPS = 100
BETA = 0.98  # fastai's Recorder smoothing
DIVERGED = 4.0  # stop once the smoothed loss exceeds this many times the best (fastai's stop_div)
MAX_STEPS = 10_000


@dataclass
class LrFinding:
    """The range test's curve and its suggestion."""

    rates: list[float] = field(default_factory=list)  # the head's rate at each step (groups scale it)
    losses: list[float] = field(default_factory=list)  # the smoothed training loss after each step
    suggestion: float | None = None  # a tenth of the rate at the lowest smoothed loss; None if no finite loss
    minimum_rate: float | None = None  # the rate at the lowest smoothed loss
    minimum_loss: float | None = None
    stopped: str = ""  # why the test ended before its last step ("" when it ran them all)

    def summary(self) -> dict:
        """What config.json records of the test (the curve thinned to at most 25 points)."""
        every = max(1, math.ceil(len(self.rates) / 25))
        return {
            "rule": "minimum/10 (fastai's 'minimum')",
            "suggestion": self.suggestion,
            "minimum_rate": self.minimum_rate,
            "minimum_loss": self.minimum_loss,
            "steps": len(self.rates),
            "stopped": self.stopped or None,
            "curve": [[self.rates[i], self.losses[i]] for i in range(0, len(self.rates), every)],
        }


def suggest(rates: list[float], losses: list[float]) -> tuple[float, float, float] | None:
    """fastai's ``minimum`` rule on a curve: ``(rate / 10, rate, loss)`` at its lowest finite loss, or None.

    The first tenth of the points and the last five are left out, as fastai
    does, when that leaves at least three; else all points count.
    """
    if len(rates) != len(losses):
        raise ValueError("rates and losses must have the same length")
    points = list(zip(rates, losses, strict=True))
    trimmed = points[len(points) // 10 : -5]
    points = trimmed if len(trimmed) >= 3 else points
    finite = [(rate, loss) for rate, loss in points if math.isfinite(loss)]
    if not finite:
        return None
    rate, loss = min(finite, key=lambda point: point[1])
    return rate / 10, rate, loss


def rate_at(step: int, steps: int, start_lr: float = START_LR, end_lr: float = END_LR) -> float:
    """The exponential ramp: ``start_lr`` at step 0, ``end_lr`` at step ``steps``."""
    return start_lr * (end_lr / start_lr) ** (step / steps)


def check_range(start_lr: float, end_lr: float, steps: int) -> None:
    """ConfigError unless 0 < start_lr < end_lr (finite) and 2 <= steps <= MAX_STEPS."""
    if not (math.isfinite(start_lr) and math.isfinite(end_lr) and 0 < start_lr < end_lr):
        raise ConfigError(f"lr-find needs 0 < --start-lr < --end-lr, got {start_lr:g} and {end_lr:g}")
    if not 2 <= steps <= MAX_STEPS:
        raise ConfigError(f"lr-find --steps must be in [2, {MAX_STEPS}], got {steps}")


def find_lr(
    config: RunConfig,
    host: PluginHost,
    world: Distributed,
    device: torch.device,
    *,
    start_lr: float = START_LR,
    end_lr: float = END_LR,
    steps: int = STEPS,
) -> LrFinding:
    """Run the range test as ``config`` would train (a fresh model; ``config.lr`` is not used).

    Call it inside :func:`tlcore.train.started_processes`. In a distributed
    run every process tests on its own shard and all stop at the same step.
    Raises what building the run's parts raises (ConfigError, DataError, ...),
    and ResourceError when the device runs out of memory.
    """
    try:
        return _find_lr(config, host, world, device, start_lr, end_lr, steps)
    except Exception as error:
        from tlcore.memory import is_out_of_memory, out_of_memory_message

        if not is_out_of_memory(error):
            raise
        size = config.image_size or 0
        message = out_of_memory_message(device, config.batch_size, config.accumulate, size, "the LR range test")
        raise ResourceError(message) from error


def _find_lr(config, host, world, device, start_lr: float, end_lr: float, steps: int) -> LrFinding:
    from tlcore.parts import build_parts
    from tlcore.train import build_optimisation

    check_range(start_lr, end_lr, steps)
    config = dataclasses.replace(config, lr=1.0, ema=None)  # each group's rate is then its lr_scale times the ramp
    parts = build_parts(config, host, world, device, resuming=False)
    optim = build_optimisation(config, parts, device, world)
    heap.started()  # the tlcore command's start-up is over (tlcore/heap.py)
    trainable = parts.policy.trainable_groups(parts.group_names, 0)  # the run's first epoch
    parts.model.set_keep_in_eval(apply_trainable(parts.model, parts.backbone, trainable, config.bn_mode, parts.policy))
    parts.model.train()
    finding, average, best = LrFinding(), 0.0, math.inf
    epoch = 0
    while len(finding.rates) < steps and not finding.stopped:
        parts.train_sampler.set_epoch(epoch, 0)
        for size, micro_batches in optimizer_steps(parts.pipeline.train, config.accumulate):
            step = len(finding.rates)
            rate = rate_at(step, steps, start_lr, end_lr)
            for group in optim.optimizer.param_groups:
                group["lr"] = rate * group["lr_scale"]
            loss = _step_loss(parts.model, micro_batches, size, optim, device, epoch, step)
            optimizer_step(optim, backward=loss is not None)
            # one host read per step: the test must see each loss to know when to stop
            value = float(loss) if loss is not None else math.nan
            average = BETA * average + (1 - BETA) * value
            smoothed = average / (1 - BETA ** (step + 1))
            finding.rates.append(rate)
            finding.losses.append(smoothed)
            best = min(best, smoothed) if math.isfinite(smoothed) else best
            stop = not math.isfinite(smoothed) or smoothed > DIVERGED * best
            if _agreed(stop, world, device):
                finding.stopped = f"the smoothed loss diverged at lr {rate:.2e}"
                break
            if len(finding.rates) >= steps:
                break
        epoch += 1
    found = suggest(finding.rates, finding.losses)
    if found is not None:
        finding.suggestion, finding.minimum_rate, finding.minimum_loss = found
    return finding


def _step_loss(model, micro_batches, size: int, optim, device: torch.device, epoch: int, step: int):
    """The step's mean training loss on the device (its gradients summed), or None when every image was unreadable."""
    total, seen = None, 0
    for position, (images, labels, _) in enumerate(micro_batches):
        if labels.numel() == 0:
            continue
        images, targets, _ = training_targets(optim, images, labels, epoch, step, position)
        with torch.autocast(device.type, dtype=optim.amp_dtype, enabled=optim.amp_dtype is not None):
            loss = optim.criterion(model(images).float(), targets)
        optim.scaler.scale(loss / size).backward()
        part = loss.detach() * len(labels)
        total, seen = (part if total is None else total + part), seen + len(labels)
    return None if total is None else total / seen


def _agreed(stop: bool, world: Distributed, device: torch.device) -> bool:
    from tlcore import distributed

    return distributed.any_across(stop, world, device)  # processes stop together (SyncBatchNorm waits for all)


def render_finding(finding: LrFinding) -> str:
    """The test's result in a few lines: the range covered, the minimum and the suggestion."""
    if not finding.rates:
        return "lr-find: no training step ran"
    lines = [
        f"lr-find: {len(finding.rates)} steps, lr {finding.rates[0]:.2e} to {finding.rates[-1]:.2e}"
        + (f"; stopped early: {finding.stopped}" if finding.stopped else "")
    ]
    if finding.suggestion is None:
        lines.append("no finite loss was measured: check the data and the options")
        return "\n".join(lines)
    lines.append(f"lowest smoothed loss {finding.minimum_loss:.4f} at lr {finding.minimum_rate:.2e}")
    lines.append(
        f"suggested lr {finding.suggestion:.2e} (a tenth of that: fastai's 'minimum' rule); "
        f"use --lr {finding.suggestion:.2e}"
    )
    return "\n".join(lines)


def plot_finding(finding: LrFinding, path: Path) -> None:
    """Draw the curve (log-scale rate against smoothed loss, the suggestion marked) to a PNG at ``path``.

    Drawing is tlcore-viz's part: ConfigError when it is not installed.
    matplotlib is imported only here, through its object API (no pyplot state).
    """
    check_plot(path)
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from tlcore.files import atomic_write_bytes

    figure = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    finite = [(r, loss) for r, loss in zip(finding.rates, finding.losses, strict=True) if math.isfinite(loss)]
    axes.plot([r for r, _ in finite], [loss for _, loss in finite])
    if finding.suggestion is not None:
        axes.axvline(finding.suggestion, color="tab:orange", linestyle="--", label=f"suggested {finding.suggestion:.1e}")
        axes.plot([finding.minimum_rate], [finding.minimum_loss], "o", color="tab:red", label="lowest loss")
        axes.legend(loc="best")
    axes.set_xscale("log")
    axes.set_xlabel("learning rate (head)")
    axes.set_ylabel("smoothed training loss")
    axes.set_title("LR range test")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(Path(path), buffer.getvalue())


def check_plot(path: Path) -> None:
    """ConfigError when --plot cannot be drawn: tlcore-viz (which brings matplotlib) missing, or no such folder."""
    import importlib.util

    if importlib.util.find_spec("tlcore_viz") is None or importlib.util.find_spec("matplotlib") is None:
        raise ConfigError("--plot draws with tlcore-viz, which is not installed: pip install tlcore-viz")
    if not Path(path).parent.is_dir():
        raise ConfigError(f"--plot {path}: folder {Path(path).parent} does not exist")
