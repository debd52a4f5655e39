"""--ema: the average after known steps by hand, validation, which weights the checkpoints hold, exact resume."""

import json
import signal

import pytest
import torch
from torch import nn

import tlcore
from tests.test_cli import TINY, assert_one_line_error, run_cli
from tlcore.callbacks import Callback
from tlcore.checkpoint import read_checkpoint
from tlcore.ema import make_ema
from tlcore.interrupt import RunInterrupted
from tlcore.testing import SIGNAL_CALLBACK, check_resumes_exactly, signal_plugin
from tlcore.train import fit, resume


def test_the_average_after_known_steps_equals_the_hand_computation():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    average = make_ema(model, 0.9)
    snapshots = []
    for step in range(3):
        with torch.no_grad():
            model[0].weight.fill_(float(step + 1))
            model[1].running_mean.fill_(10.0 * (step + 1))
        snapshots.append((model[0].weight.clone(), model[1].running_mean.clone()))
        average.update_parameters(model)
    (w1, m1), (w2, m2), (w3, m3) = snapshots
    # the first update copies; each later one is ema = 0.9 * ema + 0.1 * weights
    expected_w = 0.9 * (0.9 * w1 + 0.1 * w2) + 0.1 * w3
    expected_m = 0.9 * (0.9 * m1 + 0.1 * m2) + 0.1 * m3  # BatchNorm statistics are averaged too (use_buffers)
    assert torch.allclose(average.module[0].weight, expected_w)
    assert torch.allclose(average.module[1].running_mean, expected_m)
    assert average.n_averaged.device.type == "cpu"  # the step counter never needs the device


def test_the_update_is_torchs_averaged_model_update_bit_for_bit():
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 2))
    ours = make_ema(model, 0.8)
    torchs = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.8), use_buffers=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(4):
        model(torch.randn(5, 3, 6, 6)).sum().backward()  # BatchNorm statistics move too
        optimizer.step()
        optimizer.zero_grad()
        ours.update_parameters(model)
        torchs.update_parameters(model)
    a, b = ours.state_dict(), torchs.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class KeepAverage(Callback):
    """Copies the moving average's tensors at each epoch's end."""

    kept: list = []

    def on_epoch_end(self, run, metrics):
        KeepAverage.kept.append({k: v.detach().clone() for k, v in run.ema.state_dict().items()})


class KeepAveragePlugin:
    @tlcore.hookimpl
    def tlcore_register_callbacks(self, register):
        register("test:keep-average", lambda config: KeepAverage())


@pytest.mark.parametrize("winner", ["ema", "model"])
def test_the_checkpoints_hold_the_weights_that_validated_better(host, tiny_config, monkeypatch, winner):
    monkeypatch.setattr("tlcore.ema.checkpoint_weights", lambda val_acc, ema_val_acc: winner)
    KeepAverage.kept = []
    host.register(KeepAveragePlugin(), "keep")
    result = fit(tiny_config(epochs=2, ema=0.5, callbacks=["+test:keep-average"]), host)
    for metrics in result.history:
        assert 0 <= metrics["ema_val_acc"] <= 1 and metrics["ema_val_loss"] > 0
        assert metrics["checkpoint_weights"] == winner
    tensors, info = read_checkpoint(result.output_dir / "last.safetensors")
    assert info.metrics["checkpoint_weights"] == winner
    held = KeepAverage.kept[-1] if winner == "ema" else result.model.state_dict()
    assert all(torch.equal(tensors[k], held[k]) for k in tensors)
    other = result.model.state_dict() if winner == "ema" else KeepAverage.kept[-1]
    assert not all(torch.equal(tensors[k], other[k]) for k in tensors if k in other)


def test_the_rule_picks_the_average_only_when_it_validates_better(host, tiny_config):
    from tlcore.ema import checkpoint_weights, held_val_acc

    assert checkpoint_weights(0.5, 0.6) == "ema" and checkpoint_weights(0.5, 0.5) == "model"
    assert held_val_acc({"val_acc": 0.5, "ema_val_acc": 0.6, "checkpoint_weights": "ema"}) == 0.6
    assert held_val_acc({"val_acc": 0.5}) == 0.5
    result = fit(tiny_config(epochs=1, ema=0.9), host)
    metrics = result.history[0]
    assert metrics["checkpoint_weights"] == ("ema" if metrics["ema_val_acc"] > metrics["val_acc"] else "model")
    saved = json.loads((result.output_dir / "config.json").read_text())["config"]
    assert saved["ema"] == 0.9


def test_ema_resumes_bit_identically_mid_epoch(host, tiny_config, tmp_path, monkeypatch):
    monkeypatch.setattr("tlcore.ema.checkpoint_weights", lambda val_acc, ema_val_acc: "ema")  # last holds the average
    settings = dict(epochs=2, ema=0.7, head="mlp", head_hidden=8, freeze="gradual", unfreeze_start=1)
    check_resumes_exactly(host, tiny_config, tmp_path, (1, 2), (signal.SIGTERM,), **settings)


def test_a_state_without_the_average_cannot_be_resumed_with_it(host, tiny_config, tmp_path):
    from safetensors.torch import load_file, save_file

    host.register(signal_plugin(0, 2), "signal")
    with pytest.raises(RunInterrupted):
        fit(tiny_config(output=str(tmp_path / "cut"), callbacks=["+" + SIGNAL_CALLBACK], ema=0.9), host)
    path = tmp_path / "cut" / "train_state.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = {k: v for k, v in load_file(str(path)).items() if not k.startswith("ema.")}
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(tlcore.errors.ConfigError, match="the training state does not fit this run"):
        resume(tmp_path / "cut", host)


@pytest.mark.parametrize("value", ["1", "0", "-0.5", "1.5"])
def test_bad_ema_decay_fails_with_one_line(host, tmp_path, capsys, value):
    code, _, err = run_cli(["run", *TINY, "--ema", value, "--output", str(tmp_path / "r")], capsys)
    assert_one_line_error(code, err, f"ema must be in (0, 1), got {float(value)}")


def test_on_the_cached_feature_path_the_averaged_head_is_validated(host, tiny_config, monkeypatch):
    monkeypatch.setattr("tlcore.ema.checkpoint_weights", lambda val_acc, ema_val_acc: "ema")
    KeepAverage.kept = []
    host.register(KeepAveragePlugin(), "keep")
    config = tiny_config(epochs=2, ema=0.5, cache_features=True, freeze="backbone", callbacks=["+test:keep-average"])
    result = fit(config, host)
    assert all(0 <= m["ema_val_acc"] <= 1 for m in result.history)
    tensors, _ = read_checkpoint(result.output_dir / "last.safetensors")
    assert all(torch.equal(tensors[k], KeepAverage.kept[-1][k]) for k in tensors)
    live = result.model.state_dict()
    head = [k for k in tensors if k.startswith("head.") and k.endswith("weight")]
    assert head and not all(torch.equal(tensors[k], live[k]) for k in head)  # the head is the averaged one


def test_the_kept_best_validation_is_judged_as_best_safetensors_is():
    from tlcore.state import RunState

    run = RunState(*[None] * 10)
    run.history = [{"epoch": 1, "val_acc": 0.5, "ema_val_acc": 0.8, "checkpoint_weights": "ema"}]
    run.epoch = 1
    run.keep_validation("epoch 2 outputs", 0.7)  # beats epoch 1's model, not the average epoch 1 saved
    assert run.last_validation == "epoch 2 outputs" and run.best_validation is None
    run.keep_validation("epoch 2 outputs", 0.9)
    assert run.best_validation == "epoch 2 outputs"
