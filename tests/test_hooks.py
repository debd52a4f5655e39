"""One test per hook: each kind of contribution reaches a run."""

import json

import pytest
import torch
from torch import nn

import tlcore
from tlcore import cli
from tlcore.callbacks import Callback
from tlcore.checkpoint import read_checkpoint
from tlcore.errors import PluginError
from tlcore.testing import tiny_backbone
from tlcore.train import fit


def test_backbones_hook(host):
    entry = host.catalog("backbones").resolve("tlcore.testing:tiny")
    assert entry.plugin == "tlcore.testing"
    assert entry.factory("tlcore.testing:tiny", tlcore.BackboneOptions()).feature_dim == 16


def test_datasets_hook(host):
    entry = host.catalog("datasets").resolve("tlcore.testing:shapes")
    data = entry.factory("tlcore.testing:shapes", tlcore.DatasetOptions())
    assert data.classes == ["top_left", "bottom_right"] and len(data.train) == 36


class ScaledHead(nn.Module):
    def __init__(self, in_features, num_classes):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x):
        return self.fc(x) * self.scale


class HeadPlugin:
    @tlcore.hookimpl
    def tlcore_register_heads(self, register):
        register("test:scaled", lambda in_features, num_classes, options: ScaledHead(in_features, num_classes))


def test_heads_hook(host, tiny_config):
    host.register(HeadPlugin(), "heads")
    result = fit(tiny_config(head="test:scaled", epochs=1), host)
    tensors, _ = read_checkpoint(result.output_dir / "last.safetensors")
    assert "head.scale" in tensors and tensors["head.fc.weight"].shape == (2, 16)


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_fit_start(self, run):
        self.events.append("fit_start")

    def on_epoch_start(self, run):
        self.events.append(f"epoch_start {run.epoch}")

    def on_train_batch_end(self, run):
        if run.epoch_step == run.steps_per_epoch:
            self.events.append(f"last_batch {run.epoch}")

    def on_epoch_end(self, run, metrics):
        self.events.append(f"epoch_end {metrics['epoch']}")

    def on_fit_end(self, run):
        self.events.append("fit_end")


def test_callbacks_hook_with_per_run_state_and_selection(host, tiny_config, tmp_path):
    made = []

    class CallbackPlugin:
        @tlcore.hookimpl
        def tlcore_register_callbacks(self, register):
            register("test:recorder", lambda config: made.append(Recorder()) or made[-1], default=False)

    host.register(CallbackPlugin(), "recorder")
    fit(tiny_config(epochs=2), host)
    assert made == []  # not a default: not used unless selected
    fit(tiny_config(epochs=2, callbacks=["+test:recorder"], output=str(tmp_path / "b")), host)
    fit(tiny_config(epochs=1, callbacks=["+test:recorder"], output=str(tmp_path / "c")), host)
    assert len(made) == 2  # a fresh instance per run
    assert made[0].events == [
        "fit_start",
        "epoch_start 0",
        "last_batch 0",
        "epoch_end 1",
        "epoch_start 1",
        "last_batch 1",
        "epoch_end 2",
        "fit_end",
    ]
    assert made[1].events[-2:] == ["epoch_end 1", "fit_end"]


def test_callback_that_raises_is_named(host, tiny_config):
    class Broken(Callback):
        def on_epoch_end(self, run, metrics):
            raise ValueError("bad value")

    class BrokenPlugin:
        @tlcore.hookimpl
        def tlcore_register_callbacks(self, register):
            register("test:broken", lambda config: Broken())

    host.register(BrokenPlugin(), "broken")
    with pytest.raises(PluginError, match="callback test:broken failed in on_epoch_end: ValueError: bad value"):
        fit(tiny_config(callbacks=["+test:broken"]), host)


def test_commands_hook(host, monkeypatch, capsys):
    class CommandPlugin:
        @tlcore.hookimpl
        def tlcore_register_commands(self, app):
            @app.command("hello")
            def hello(name: str = "world"):
                """Say hello."""
                print(f"hello {name}")

            @app.command("run")
            def clash():
                """Tries to take the core's run command."""

    host.register(CommandPlugin(), "greeter")
    before = list(cli.app.registered_commands)
    monkeypatch.setattr(cli, "_plugin_commands_added", False)
    try:
        cli.main(["hello", "--name", "tlcore"])
    except SystemExit as stop:
        assert stop.code in (0, None)
    finally:
        cli.app.registered_commands[:] = before
    captured = capsys.readouterr()
    assert "hello tlcore" in captured.out
    assert "plugin greeter tried to add command 'run', which belongs to tlcore; its command was not installed" in (
        captured.err
    )


def test_pretrained_weights_hook(host, tiny_config):
    offered_state = {
        k: torch.full_like(v, 0.25) if v.is_floating_point() else v for k, v in tiny_backbone().module.state_dict().items()
    }

    class WeightsPlugin:
        @tlcore.hookimpl
        def tlcore_pretrained_weights(self, backbone):
            if backbone != "tlcore.testing:tiny":
                return None
            return tlcore.PretrainedWeights(source="test weights v1", load=lambda: offered_state)

    host.register(WeightsPlugin(), "weights")
    result = fit(tiny_config(weights="pretrained", freeze="backbone", epochs=1), host)
    tensors, info = read_checkpoint(result.output_dir / "last.safetensors")
    assert info.weights == "test weights v1"
    assert json.loads((result.output_dir / "config.json").read_text())["resolved"]["weights"] == "test weights v1"
    assert torch.equal(tensors["backbone.0.0.weight"], offered_state["0.0.weight"])
