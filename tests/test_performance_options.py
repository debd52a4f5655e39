"""The speed options on a CPU: channels-last, --compile, fused optimizers, --sync-bn, peak memory, out of memory."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch import nn

from tlcore import train
from tlcore.config import build_config
from tlcore.distributed import Distributed, sync_batchnorm
from tlcore.errors import ConfigError, ResourceError
from tlcore.optim import make_optimizer
from tlcore.testing import tiny_module
from tlcore.train import fit


def test_channels_last_on_cpu_trains_close_to_the_default_layout(host, tiny_config, tmp_path):
    plain = fit(tiny_config(output=str(tmp_path / "plain"), augment="none", channels_last="off"), host)
    last = fit(tiny_config(output=str(tmp_path / "last"), augment="none", channels_last="on"), host)
    conv = last.model.backbone[0][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert plain.model.backbone[0][0].weight.is_contiguous()
    resolved = json.loads((last.output_dir / "config.json").read_text())["resolved"]
    assert resolved["channels_last"] is True and resolved["pipeline"] == "memory"
    # the same arithmetic in another memory order: equal up to float rounding
    for key, value in plain.model.state_dict().items():
        assert torch.allclose(value.float(), last.model.state_dict()[key].float(), atol=1e-4), key


@pytest.mark.parametrize("onednn, expected", [(True, True), (False, False)])
def test_channels_last_auto_follows_onednn_on_the_cpu(host, tiny_config, monkeypatch, onednn, expected):
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: onednn)
    result = fit(tiny_config(epochs=1), host)
    assert json.loads((result.output_dir / "config.json").read_text())["resolved"]["channels_last"] is expected


def test_compile_option_runs_the_model_through_torch_compile(host, tiny_config, monkeypatch):
    compiled = []

    def eager_compile(module):  # dynamo traces for real; the eager backend skips C++ code generation (slow on CPU)
        compiled.append(module)
        return torch.compile(module, backend="eager")

    monkeypatch.setattr(train, "compile_model", eager_compile)
    result = fit(tiny_config(epochs=1, compile=True), host)
    assert compiled and compiled[0] is result.model
    assert result.history[0]["val_acc"] >= 0
    assert not any(key.startswith("_orig_mod") for key in result.model.state_dict())  # checkpoints keep plain keys


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None, reason="torch.compile's CPU backend needs a C compiler")
def test_compile_with_inductor_on_cpu(host, tiny_config):
    result = fit(tiny_config(epochs=1, compile=True), host)
    assert 0 <= result.history[0]["val_acc"] <= 1


def test_a_compile_failure_is_one_clear_line(host, tiny_config, monkeypatch):
    from torch._dynamo.exc import TorchDynamoException

    class Failing(nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, images):
            raise TorchDynamoException("backend 'inductor' raised:\nCompilationError: no C compiler\nlong advice")

    monkeypatch.setattr(train, "compile_model", Failing)
    with pytest.raises(ConfigError, match=r"^--compile failed: backend 'inductor' raised:; run without --compile$"):
        fit(tiny_config(epochs=1, compile=True), host)


def test_out_of_memory_says_what_to_do_and_keeps_the_finished_epochs(host, tiny_config, monkeypatch):
    config = tiny_config(epochs=3, batch_size=8)
    original = train.evaluate

    def run_out_in_second_validation(model, batches, device, amp_dtype, stop=None, kept=None):
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        calls.append(1)
        return original(model, batches, device, amp_dtype, stop, kept=kept)

    calls = []
    monkeypatch.setattr(train, "evaluate", run_out_in_second_validation)
    with pytest.raises(ResourceError) as raised:
        fit(config, host)
    message = str(raised.value)
    assert "\n" not in message
    assert "ran out of memory" in message and "during validation" in message
    assert "--batch-size 4 --accumulate 2" in message
    lines = (tmp_output(config) / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and (tmp_output(config) / "last.safetensors").exists()  # epoch 1 is kept whole


def tmp_output(config):
    from pathlib import Path

    return Path(config.output)


def test_out_of_memory_reaches_the_cli_as_one_line(tlcore_cli, monkeypatch):
    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory.")

    monkeypatch.setattr(train, "compute_features", no_memory)
    result = tlcore_cli(
        "run", "--backbone", "tlcore.testing:tiny", "--dataset", "tlcore.testing:shapes", "--weights", "none",
        "--epochs", "1", "--freeze", "backbone", "--cache-features", "--batch-size", "16",
    )  # fmt: skip
    assert result.code == 2
    assert "Traceback" not in result.err
    assert "during feature caching at batch size 16" in result.err and "--accumulate 2" in result.err


def test_peak_memory_is_reported_per_epoch(host, tiny_config):
    result = fit(tiny_config(epochs=2), host)
    for metrics in result.history:
        assert metrics["peak_host_mb"] > 50  # at least the interpreter and torch
        assert metrics["peak_gpu_mb"] is None and metrics["peak_gpu_reserved_mb"] is None  # no CUDA here
    lines = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert all("peak_host_mb" in line for line in lines)


def test_optimizers_use_fused_kernels_on_cuda_and_let_torch_choose_on_cpu():
    params = [nn.Parameter(torch.zeros(3, 3))]
    for name in ("sgd", "adamw"):
        config = build_config(overrides={"optimizer": name})
        on_gpu = make_optimizer([{"params": params}], config, torch.device("cuda"))
        on_cpu = make_optimizer([{"params": params}], config, torch.device("cpu"))
        assert on_gpu.defaults["fused"] is True
        assert not on_cpu.defaults.get("fused") and on_cpu.defaults["foreach"] is None


def test_sync_bn_converts_batchnorm_and_keeps_parameters():
    module = tiny_module()
    before = {name: param for name, param in module.named_parameters()}
    keys = list(module.state_dict())
    converted = sync_batchnorm(module, Distributed(0, 2, 0), torch.device("cuda"), enabled=True)
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in converted.modules()) == 3
    assert not any(type(m) is nn.BatchNorm2d for m in converted.modules())
    assert list(converted.state_dict()) == keys
    assert all(param is before[name] for name, param in converted.named_parameters())  # optimizer groups unchanged


def test_sync_bn_is_a_no_op_alone_and_refused_without_cuda():
    module = tiny_module()
    assert sync_batchnorm(module, Distributed(), torch.device("cpu"), enabled=True) is module
    with pytest.raises(ConfigError, match="--sync-bn needs CUDA devices; this run uses cpu"):
        sync_batchnorm(module, Distributed(0, 2, 0), torch.device("cpu"), enabled=True)
