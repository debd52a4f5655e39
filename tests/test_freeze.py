"""Freezing: frozen layers keep their weights and BatchNorm statistics bit for bit."""

import torch
from safetensors.torch import save_file
from torch import nn

import tlcore
from tlcore.checkpoint import read_checkpoint
from tlcore.freeze import FreezePolicy, apply_trainable
from tlcore.model import Classifier
from tlcore.testing import tiny_backbone
from tlcore.train import fit


def loaded_weights_file(tmp_path):
    """A weights file for the tiny backbone whose BatchNorm statistics are far from their defaults."""
    module = tiny_backbone().module
    for layer in module.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.running_mean.uniform_(-1, 1)
            layer.running_var.uniform_(0.5, 2)
            layer.num_batches_tracked.fill_(123)
    path = tmp_path / "start.safetensors"
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
    return path


def test_frozen_backbone_is_bit_identical_after_training(host, tiny_config, tmp_path):
    start = loaded_weights_file(tmp_path)
    result = fit(tiny_config(weights=str(start), freeze="backbone", epochs=2, lr=0.1), host)
    tensors, info = read_checkpoint(result.output_dir / "last.safetensors")
    from safetensors.torch import load_file

    loaded = load_file(str(start))
    for key, value in loaded.items():
        assert torch.equal(tensors[f"backbone.{key}"], value), key
    assert info.weights == str(start)
    head_before = read_checkpoint(result.output_dir / "last.safetensors")[0]["head.0.weight"]
    assert head_before.abs().sum() > 0  # the head did train


def test_full_fine_tuning_does_change_the_backbone(host, tiny_config, tmp_path):
    start = loaded_weights_file(tmp_path)
    result = fit(tiny_config(weights=str(start), freeze="none", epochs=1), host)
    tensors, _ = read_checkpoint(result.output_dir / "last.safetensors")
    from safetensors.torch import load_file

    loaded = load_file(str(start))
    assert not torch.equal(tensors["backbone.0.1.running_mean"], loaded["0.1.running_mean"])
    assert not torch.equal(tensors["backbone.0.0.weight"], loaded["0.0.weight"])


def test_frozen_norm_layers_stay_in_eval_after_every_train_call():
    backbone = tiny_backbone()
    model = Classifier(backbone.module, nn.Linear(16, 2))
    model.set_keep_in_eval(apply_trainable(model, backbone, ["stage2"], "frozen"))
    for _ in range(2):
        model.train()
        assert not backbone.module[0][1].training and not backbone.module[1][1].training  # frozen stem, stage1
        assert backbone.module[2][1].training and model.head.training  # trainable stage2 and head
    assert not backbone.module[0][0].weight.requires_grad and backbone.module[2][0].weight.requires_grad


def test_bn_mode_train_lets_frozen_statistics_update():
    backbone = tiny_backbone()
    model = Classifier(backbone.module, nn.Linear(16, 2))
    model.set_keep_in_eval(apply_trainable(model, backbone, [], "train"))
    model.train()
    assert backbone.module[0][1].training and not backbone.module[0][0].weight.requires_grad


class TrainLastGroupOnly(FreezePolicy):
    def trainable_groups(self, groups, epoch):
        return groups[-1:]


class PartialPlugin:
    @tlcore.hookimpl
    def tlcore_register_freeze_policies(self, register):
        register("test:last-only", lambda options: TrainLastGroupOnly())


def test_freeze_policy_from_a_plugin_freezes_its_groups(host, tiny_config, tmp_path):
    host.register(PartialPlugin(), "partial")
    start = loaded_weights_file(tmp_path)
    result = fit(tiny_config(weights=str(start), freeze="test:last-only", epochs=2), host)
    tensors, _ = read_checkpoint(result.output_dir / "last.safetensors")
    from safetensors.torch import load_file

    loaded = load_file(str(start))
    assert all(torch.equal(tensors[f"backbone.{k}"], v) for k, v in loaded.items() if k.startswith(("0.", "1.")))
    assert not torch.equal(tensors["backbone.2.0.weight"], loaded["2.0.weight"])
    assert result.history[0]["trainable_groups"] == ["stage2"]
