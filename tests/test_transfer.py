"""Pretrain on one dataset, transfer to another: an earlier run is a starting point."""

import json

import torch

import tlcore
from tlcore.checkpoint import read_checkpoint
from tlcore.testing import shapes_dataset
from tlcore.train import fit


class ThreeClassPlugin:
    @tlcore.hookimpl
    def tlcore_register_datasets(self, register):
        def three(name, options):
            data = shapes_dataset(seed=options.seed + 1)
            data.classes = ["a", "b", "c"]  # a different label set: the head must be replaced
            return data

        register("test:three", three)


def test_run_folder_as_weights_for_another_dataset(host, tiny_config, tmp_path):
    host.register(ThreeClassPlugin(), "three")
    first = fit(tiny_config(output=str(tmp_path / "a"), epochs=2), host)
    second = fit(
        tiny_config(
            output=str(tmp_path / "b"), dataset="test:three", weights=str(first.output_dir), freeze="backbone", epochs=1
        ),
        host,
    )
    resolved = json.loads((second.output_dir / "config.json").read_text())["resolved"]
    assert resolved["weights"] == str(first.output_dir / "best.safetensors")
    assert resolved["head_from_checkpoint"] is False
    before, _ = read_checkpoint(first.output_dir / "best.safetensors")
    after, info = read_checkpoint(second.output_dir / "last.safetensors")
    assert info.classes == ["a", "b", "c"] and after["head.0.weight"].shape[0] == 3
    assert all(torch.equal(after[k], v) for k, v in before.items() if k.startswith("backbone."))


def test_same_classes_keep_the_trained_head(host, tiny_config, tmp_path):
    first = fit(tiny_config(output=str(tmp_path / "a"), epochs=2), host)
    second = fit(
        tiny_config(
            output=str(tmp_path / "b"),
            weights=str(first.output_dir / "last.safetensors"),
            freeze="backbone",
            epochs=1,
            lr=1e-12,
            warmup_epochs=0,
        ),
        host,
    )
    assert json.loads((second.output_dir / "config.json").read_text())["resolved"]["head_from_checkpoint"] is True
    before, _ = read_checkpoint(first.output_dir / "last.safetensors")
    after, _ = read_checkpoint(second.output_dir / "last.safetensors")
    assert torch.allclose(after["head.0.weight"], before["head.0.weight"], atol=1e-6)
    assert second.history[0]["val_acc"] == first.history[-1]["val_acc"]
