"""--accumulate N: N micro-batches per optimizer step train as one batch N times larger."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from torch import nn

import tlcore
from tlcore.backbone import Backbone, LayerGroup, Preprocessing
from tlcore.callbacks import Callback
from tlcore.checkpoint import read_checkpoint
from tlcore.errors import ConfigError
from tlcore.interrupt import RunInterrupted
from tlcore.testing import without_measurements
from tlcore.train import fit, resume

NO_NORM = "test:nonorm"


def no_norm_backbone(name, options) -> Backbone:
    """A convnet without BatchNorm: each image's gradient is independent of the rest of its batch."""
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    return Backbone(
        name=name,
        module=module,
        feature_dim=16,
        preprocessing=Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3, input_size=16, min_size=8),
        layer_groups=[LayerGroup("stem", ("0",)), LayerGroup("body", ("2",))],
    )


class NoNormPlugin:
    @tlcore.hookimpl
    def tlcore_register_backbones(self, register):
        register(NO_NORM, no_norm_backbone)


class StepCounter(Callback):
    """Counts optimizer steps and records the learning rate at each."""

    def __init__(self):
        self.steps = []

    def on_train_batch_end(self, run):
        self.steps.append((run.epoch, run.epoch_step, run.optimizer.param_groups[-1]["lr"]))


@pytest.fixture
def no_norm_host(host):
    host.register(NoNormPlugin(), "nonorm")
    return host


def test_two_micro_batches_of_six_equal_one_batch_of_twelve(no_norm_host, tiny_config, tmp_path):
    # 36 training images: 3 steps of 12, or 3 steps of two micro-batches of 6; the same mean gradient each step
    common = dict(backbone=NO_NORM, epochs=2, augment="none", optimizer="sgd", lr=0.05, schedule="cosine")
    whole = fit(tiny_config(batch_size=12, output=str(tmp_path / "whole"), **common), no_norm_host)
    split = fit(tiny_config(batch_size=6, accumulate=2, output=str(tmp_path / "split"), **common), no_norm_host)
    for key, value in whole.model.state_dict().items():
        assert torch.allclose(value, split.model.state_dict()[key], atol=1e-6), key
    for a, b in zip(whole.history, split.history, strict=True):
        assert a["val_acc"] == b["val_acc"] and a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["lr"] == b["lr"]


def test_a_short_last_step_averages_over_its_own_micro_batches(no_norm_host, tiny_config, tmp_path):
    # 36 images in batches of 8: 5 micro-batches; with --accumulate 2 the last step has one micro-batch of 4 images
    common = dict(backbone=NO_NORM, epochs=1, augment="none", optimizer="sgd", lr=0.05, schedule="constant")
    common["warmup_epochs"] = 0
    whole = fit(tiny_config(batch_size=16, output=str(tmp_path / "whole"), **common), no_norm_host)
    split = fit(tiny_config(batch_size=8, accumulate=2, output=str(tmp_path / "split"), **common), no_norm_host)
    for key, value in whole.model.state_dict().items():
        assert torch.allclose(value, split.model.state_dict()[key], atol=1e-6), key


def test_steps_and_schedule_count_optimizer_steps(host, tiny_config, tmp_path):
    counter = StepCounter()

    class CounterPlugin:
        @tlcore.hookimpl
        def tlcore_register_callbacks(self, register):
            register("test:count", lambda config: counter)

    host.register(CounterPlugin(), "counter")
    result = fit(tiny_config(batch_size=4, accumulate=3, epochs=2, callbacks=["+test:count"]), host)
    # 36 images, batches of 4: 9 micro-batches, 3 optimizer steps per epoch
    assert [(epoch, step) for epoch, step, _ in counter.steps] == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3)]
    config = (result.output_dir / "config.json").read_text()
    assert '"effective_batch": 12' in config


class StopAt(Callback):
    def __init__(self, epoch, step):
        self.epoch, self.step = epoch, step

    def on_train_batch_end(self, run):
        if (run.epoch, run.epoch_step) == (self.epoch, self.step):
            os.kill(os.getpid(), signal.SIGINT)


def test_resume_mid_epoch_with_accumulation_matches_the_whole_run(host, tiny_config, tmp_path):
    settings = dict(batch_size=4, accumulate=2, epochs=2, augment="standard", head="mlp", head_hidden=8, head_dropout=0.2)
    whole = fit(tiny_config(output=str(tmp_path / "whole"), **settings), host)

    class StopPlugin:
        @tlcore.hookimpl
        def tlcore_register_callbacks(self, register):
            register("test:stop", lambda config: StopAt(1, 2))

    host.register(StopPlugin(), "stop")
    with pytest.raises(RunInterrupted, match="at epoch 2, step 2 of 5"):
        fit(tiny_config(output=str(tmp_path / "cut"), callbacks=["+test:stop"], **settings), host)
    resumed = resume(tmp_path / "cut", host)
    assert without_measurements(resumed.history) == without_measurements(whole.history)
    a, _ = read_checkpoint(whole.output_dir / "last.safetensors")
    b, _ = read_checkpoint(resumed.output_dir / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("value", [0, -2])
def test_accumulate_must_be_positive(tiny_config, value):
    with pytest.raises(ConfigError, match=f"accumulate must be a positive integer, got {value}"):
        tiny_config(accumulate=value)
