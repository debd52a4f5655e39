"""The training loop end to end on the tiny backbone: run folder, checkpoints, reproducibility, callbacks."""

import json

import pytest
import torch
from safetensors import safe_open

from tlcore.checkpoint import read_checkpoint
from tlcore.errors import ConfigError, UnknownNameError
from tlcore.testing import without_measurements
from tlcore.train import fit

REQUIRED_METRICS = {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"}


def test_run_writes_config_metrics_and_checkpoints(host, tiny_config):
    result = fit(tiny_config(epochs=3), host)
    folder = result.output_dir
    config = json.loads((folder / "config.json").read_text())
    assert config["config"]["backbone"] == "tlcore.testing:tiny" and config["config"]["epochs"] == 3
    assert config["resolved"]["weights"] == "none"
    assert config["resolved"]["classes"] == ["top_left", "bottom_right"]
    assert config["plugins"]["tlcore.testing"] is None and "tlcore.heads" in config["plugins"]
    assert set(config["versions"]) >= {"tlcore", "torch", "torchvision"}
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3]
    assert all(REQUIRED_METRICS <= set(m) for m in lines)
    assert result.best["val_acc"] == max(m["val_acc"] for m in lines)
    for name in ("best.safetensors", "last.safetensors"):
        tensors, info = read_checkpoint(folder / name)
        assert info.backbone == "tlcore.testing:tiny" and info.classes == ["top_left", "bottom_right"]
        assert info.head == "linear" and info.preprocessing["mean"] == [0.5, 0.5, 0.5]
        assert any(k.startswith("backbone.") for k in tensors) and any(k.startswith("head.") for k in tensors)
    assert read_checkpoint(folder / "last.safetensors")[1].epoch == 3


def test_training_learns_the_easy_task(host, tiny_config):
    result = fit(tiny_config(epochs=4, lr=0.05), host)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.best["val_acc"] >= 0.9


def test_same_seed_same_weights_and_metrics_on_cpu(host, tiny_config, tmp_path):
    first = fit(tiny_config(output=str(tmp_path / "a"), seed=3), host)
    second = fit(tiny_config(output=str(tmp_path / "b"), seed=3), host)
    drop_time = without_measurements
    assert drop_time(first.history) == drop_time(second.history)
    a, _ = read_checkpoint(first.output_dir / "last.safetensors")
    b, _ = read_checkpoint(second.output_dir / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    third = fit(tiny_config(output=str(tmp_path / "c"), seed=4), host)
    c, _ = read_checkpoint(third.output_dir / "last.safetensors")
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_existing_run_folder_is_never_overwritten(host, tiny_config, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "best.safetensors").write_bytes(b"precious")
    with pytest.raises(ConfigError, match="already exists and is not empty"):
        fit(tiny_config(), host)
    assert (folder / "best.safetensors").read_bytes() == b"precious"


def test_failed_setup_creates_no_run_folder(host, tiny_config, tmp_path):
    with pytest.raises(UnknownNameError):
        fit(tiny_config(head="nope"), host)
    assert not (tmp_path / "run").exists()


def test_sgd_step_schedule_mlp_head_and_options(host, tiny_config):
    result = fit(
        tiny_config(
            optimizer="sgd",
            schedule="step",
            step_size=1,
            gamma=0.5,
            head="mlp",
            head_hidden=16,
            head_dropout=0.1,
            label_smoothing=0.1,
            augment="none",
            epochs=2,
        ),
        host,
    )
    assert result.history[1]["lr"] == pytest.approx(0.01 * 0.5)
    tensors, info = read_checkpoint(result.output_dir / "last.safetensors")
    assert info.head == "mlp" and info.head_options == {"hidden": 16, "dropout": 0.1}
    assert tensors["head.1.weight"].shape == (16, 16)


def test_cosine_schedule_warms_up_then_decays(host, tiny_config):
    result = fit(tiny_config(epochs=3, warmup_epochs=1), host)
    rates = [m["lr"] for m in result.history]
    assert rates[0] == pytest.approx(0.01) and rates[0] > rates[1] > rates[2]


def test_early_stopping_stops_and_says_why(host, tiny_config, capsys):
    result = fit(tiny_config(epochs=8, early_stopping_patience=1, lr=1e-7, freeze="backbone"), host)
    assert len(result.history) < 8
    assert "stopped early: val_acc has not improved for 1 epochs" in capsys.readouterr().err


def test_callbacks_can_be_deselected(host, tiny_config):
    result = fit(tiny_config(callbacks=["-checkpoint"]), host)
    assert not (result.output_dir / "last.safetensors").exists()
    assert (result.output_dir / "metrics.jsonl").exists()
    result = fit(tiny_config(callbacks=["metrics"], output=str(result.output_dir.parent / "only-metrics")), host)
    assert sorted(p.name for p in result.output_dir.iterdir()) == ["config.json", "metrics.jsonl", "train_state.safetensors"]


def test_checkpoint_metadata_alone_describes_the_model(host, tiny_config):
    result = fit(tiny_config(epochs=1), host)
    with safe_open(str(result.output_dir / "best.safetensors"), "pt") as handle:
        meta = json.loads(handle.metadata()["tlcore"])
    assert meta["format"] == "tlcore-checkpoint" and meta["backbone"] == "tlcore.testing:tiny"
    assert meta["image_size"] == 16 and meta["classes"] == ["top_left", "bottom_right"]
