"""The TensorBoard callback: default only where tensorboard is installed; logs per-epoch scalars."""

import pytest
import tlcore_viz
from tlcore_viz import tensorboard

from tlcore.errors import ConfigError
from tlcore.train import fit


class FakeWriter:
    """Records what a SummaryWriter would have been asked to write."""

    made = []

    def __init__(self, log_dir):
        self.log_dir, self.scalars, self.texts, self.flushes, self.closed = log_dir, [], [], 0, False
        FakeWriter.made.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def add_text(self, tag, text, step):
        self.texts.append((tag, text))

    def flush(self):
        self.flushes += 1

    def close(self):
        self.closed = True


def catalog_row(host):
    return next(row for row in host.catalog("callbacks").listing("tensorboard"))


def test_default_only_when_tensorboard_is_installed(viz_host, monkeypatch):
    monkeypatch.setattr(tensorboard, "available", lambda: False)
    viz_host.unregister("viz")
    viz_host.register(tlcore_viz, "viz")  # registration happens again with the patched check
    row = catalog_row(viz_host)
    assert row.info["default"] is False and "pip install tensorboard" in row.description
    monkeypatch.setattr(tensorboard, "available", lambda: True)
    viz_host.unregister("viz")
    viz_host.register(tlcore_viz, "viz")
    assert catalog_row(viz_host).info["default"] is True


def test_asked_for_without_tensorboard_says_what_to_install(viz_host, tiny_run_config, monkeypatch):
    monkeypatch.setattr(tensorboard, "available", lambda: False)
    with pytest.raises(ConfigError, match="needs the tensorboard package; install it with: pip install tensorboard"):
        fit(tiny_run_config(callbacks="tensorboard"), viz_host)


def test_logs_every_epoch_to_the_run_folder(viz_host, tiny_run_config, monkeypatch):
    monkeypatch.setattr(tensorboard, "available", lambda: True)
    monkeypatch.setattr(tensorboard, "summary_writer_class", lambda: FakeWriter)
    FakeWriter.made.clear()
    result = fit(tiny_run_config(callbacks="tensorboard"), viz_host)
    (writer,) = FakeWriter.made
    assert writer.log_dir == str(result.output_dir / "tensorboard") and writer.closed and writer.flushes == 2
    assert writer.texts[0][0] == "config" and '"backbone": "tlcore.testing:tiny"' in writer.texts[0][1]
    logged = {(tag, step): value for tag, value, step in writer.scalars}
    for metrics in result.history:
        assert logged[("accuracy/val_acc", metrics["epoch"])] == metrics["val_acc"]
        assert logged[("loss/train_loss", metrics["epoch"])] == metrics["train_loss"]
        assert logged[("train/lr", metrics["epoch"])] == metrics["lr"]
    assert len(writer.scalars) == 6 * len(result.history)
