"""Faults in data and numbers: undecodable images, --strict, non-finite losses, a full disk."""

import json
from collections import namedtuple

import pytest
import torch
from torch import nn

import tlcore
from tlcore import plugins
from tlcore.errors import ConfigError, DataError
from tlcore.testing import TinyPlugin, write_image_folder
from tlcore.train import NonFiniteLoss, fit

pytest.importorskip("tlcore_datasets")


@pytest.fixture
def folder_host():
    """Installed plugins (for imagefolder) plus the tiny backbone."""
    host = plugins.reset_host()
    host.register(TinyPlugin(), "tiny")
    yield host
    plugins.reset_host(load_installed=False)


def damaged_image_folder(root):
    write_image_folder(root, per_class=6, size=20)
    (root / "train" / "ants" / "ants_0.jpg").write_bytes(b"not a jpeg at all")
    good = (root / "train" / "bees" / "bees_0.jpg").read_bytes()
    (root / "train" / "bees" / "bees_1.jpg").write_bytes(good[: len(good) // 3])  # truncated
    (root / "train" / "bees" / "notes.txt").write_text("ignored: not an image")
    return root


def test_undecodable_images_are_named_skipped_and_counted(folder_host, tiny_config, tmp_path, capsys):
    data = damaged_image_folder(tmp_path / "images")
    result = fit(
        tiny_config(dataset="imagefolder", data_dir=str(data), image_size=16, epochs=2, callbacks=["progress", "metrics"]),
        folder_host,
    )
    assert result.history[-1]["unreadable_images"] == 2
    err = capsys.readouterr().err
    assert "skipped 2 unreadable images" in err and "ants_0.jpg" in err and "bees_1.jpg" in err
    config = json.loads((result.output_dir / "config.json").read_text())
    assert config["resolved"]["train_images"] == 12  # notes.txt is not an image


def test_strict_stops_at_the_first_undecodable_image(folder_host, tiny_config, tmp_path):
    data = damaged_image_folder(tmp_path / "images")
    with pytest.raises(DataError, match=r"cannot read image .*\.jpg.*stopped by --strict"):
        fit(
            tiny_config(dataset="imagefolder", data_dir=str(data), image_size=16, strict=True, callbacks=["metrics"]),
            folder_host,
        )


class NanAfter(nn.Module):
    """A linear head whose logits become NaN from its ``after``-th training forward on."""

    def __init__(self, in_features, num_classes, after):
        super().__init__()
        self.fc, self.after, self.calls = nn.Linear(in_features, num_classes), after, 0

    def forward(self, x):
        self.calls += self.training
        logits = self.fc(x)
        return logits * float("nan") if self.training and self.calls >= self.after else logits


class NanPlugin:
    @tlcore.hookimpl
    def tlcore_register_heads(self, register):
        register("test:nan", lambda in_features, num_classes, options: NanAfter(in_features, num_classes, after=8))


def test_nonfinite_loss_stops_naming_epoch_and_step(host, tiny_config, tmp_path):
    host.register(NanPlugin(), "nan")
    with pytest.raises(NonFiniteLoss, match=r"NaN or infinite at epoch 2, step 3; nothing after the last completed"):
        fit(tiny_config(head="test:nan", epochs=3), host)  # 5 steps per epoch: the 8th forward is epoch 2, step 3
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1  # the damaged epoch was not recorded or checkpointed


def test_skip_nonfinite_skips_and_counts(host, tiny_config):
    host.register(NanPlugin(), "nan")
    result = fit(tiny_config(head="test:nan", epochs=2, skip_nonfinite=True), host)
    assert result.history[-1]["nonfinite_batches"] == 3  # forwards 8, 9, 10: the rest of epoch 2
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


def test_too_little_free_space_is_reported_before_training(host, tiny_config, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("tlcore.train.shutil.disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(ConfigError, match=r"not enough free space in .*run: checkpoints need about \d+ MB, 0 MB free"):
        fit(tiny_config(), host)


def test_unwritable_output_folder_is_reported(host, tiny_config, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    with pytest.raises(ConfigError, match="cannot be written|already exists"):
        fit(tiny_config(output=str(blocker / "run")), host)


def test_eval_skips_and_counts_an_undecodable_image(folder_host, tiny_config, tmp_path):
    from tlcore.evaluation import evaluate_checkpoint, render_report

    data = write_image_folder(tmp_path / "images", per_class=6, size=20)
    result = fit(
        tiny_config(dataset="imagefolder", data_dir=str(data), image_size=16, epochs=1, callbacks=["checkpoint"]),
        folder_host,
    )
    (data / "val" / "bees" / "bees_2.jpg").write_bytes(b"\xff\xd8 broken")
    report = evaluate_checkpoint(result.output_dir / "best.safetensors", workers=2)
    assert report.metrics.images == 11 and len(report.unreadable) == 1 and "bees_2.jpg" in report.unreadable[0]
    assert report.to_dict()["unreadable_images"] == 1
    assert "skipped     1 unreadable images" in render_report(report)
    # the scored images line up with the outputs: bees_2 (position 8 of 12) is not among them
    assert report.outputs.indices.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11] and len(report.data) == 11
    with pytest.raises(DataError, match=r"^cannot read image \S*bees_2\.jpg.*stopped by --strict") as caught:
        evaluate_checkpoint(result.output_dir / "best.safetensors", workers=2, strict=True)
    assert "\n" not in str(caught.value)  # not a worker's traceback


def test_steps_without_any_gradient_pass_under_the_fp16_scaler(host, tiny_config, monkeypatch):
    # fp16 (CUDA GPUs without bf16) adds a gradient scaler, which fails when asked to step without any gradient
    monkeypatch.setattr("tlcore.train.autocast_dtype", lambda device, enabled, backbone=None: torch.float16)
    host.register(NanPlugin(), "nan")
    result = fit(tiny_config(head="test:nan", epochs=2, skip_nonfinite=True), host)
    assert result.history[-1]["nonfinite_batches"] == 3
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
