"""The installed tool, as a user runs it: real entry points, real plugins, subprocesses."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tlcore.checkpoint import read_checkpoint
from tlcore.testing import write_cifar10, write_fake_distribution, write_image_folder

pytest.importorskip("tlcore_torchvision")
pytest.importorskip("tlcore_datasets")


def tlcore(*args, env=None, timeout=300):
    """Run ``python -m tlcore ARGS`` as a user would; returns the CompletedProcess."""
    # the viz plugin's report costs seconds per run and has its own tests
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "TLCORE_DISABLE_PLUGINS": "viz", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "tlcore", *map(str, args)], capture_output=True, text=True, timeout=timeout, env=full_env
    )


def one_line_error(done):
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("tlcore: warning")]
    assert len(lines) == 1 and lines[0].startswith("tlcore: error: "), done.stderr
    return lines[0]


def test_resnet18_on_cifar10_writes_the_run_folder(tmp_path):
    data = write_cifar10(tmp_path / "data", train_per_batch=8, test_images=16)
    out = tmp_path / "run"
    done = tlcore(
        "run",
        "--backbone",
        "torchvision:resnet18",
        "--weights",
        "none",
        "--dataset",
        "cifar10",
        "--data-dir",
        data,
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--image-size",
        "32",
        "--output",
        out,
    )
    assert done.returncode == 0, done.stderr
    assert {"best.safetensors", "config.json", "last.safetensors", "metrics.jsonl", "train_state.safetensors"} <= {
        p.name for p in out.iterdir()
    }
    config = json.loads((out / "config.json").read_text())
    assert config["resolved"]["train_images"] == 40 and config["resolved"]["val_images"] == 16
    assert "datasets" in config["plugins"] and "torchvision" in config["plugins"]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    _, info = read_checkpoint(out / "best.safetensors")
    assert info.backbone == "torchvision:resnet18" and len(info.classes) == 10


def test_frozen_resnet_batchnorm_is_bit_identical(tmp_path):
    from tlcore.backbone import BackboneOptions
    from tlcore.plugins import reset_host

    host = reset_host()
    backbone = host.catalog("backbones").resolve("torchvision:resnet18").factory("torchvision:resnet18", BackboneOptions())
    for module in backbone.module.modules():  # statistics far from a fresh model's, as in pretrained weights
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    torch.save(backbone.module.state_dict(), tmp_path / "start.pth")
    data = write_image_folder(tmp_path / "images", per_class=8, size=40)
    out = tmp_path / "run"
    done = tlcore(
        "run",
        "--backbone",
        "torchvision:resnet18",
        "--weights",
        tmp_path / "start.pth",
        "--freeze",
        "backbone",
        "--dataset",
        "imagefolder",
        "--data-dir",
        data,
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--image-size",
        "32",
        "--lr",
        "0.1",
        "--output",
        out,
    )
    assert done.returncode == 0, done.stderr
    saved, _ = read_checkpoint(out / "last.safetensors")
    loaded = torch.load(tmp_path / "start.pth", weights_only=True)
    assert all(torch.equal(saved[f"backbone.{key}"], value) for key, value in loaded.items())


def test_missing_and_empty_data_folders(tmp_path):
    line = one_line_error(
        tlcore(
            "run",
            "--backbone",
            "torchvision:resnet18",
            "--weights",
            "none",
            "--dataset",
            "imagefolder",
            "--data-dir",
            tmp_path / "nowhere",
        )
    )
    assert "nowhere" in line
    (tmp_path / "empty").mkdir()
    line = one_line_error(
        tlcore(
            "run",
            "--backbone",
            "torchvision:resnet18",
            "--weights",
            "none",
            "--dataset",
            "imagefolder",
            "--data-dir",
            tmp_path / "empty",
        )
    )
    assert "empty" in line
    line = one_line_error(tlcore("run", "--backbone", "torchvision:resnet19", "--weights", "none"))
    assert "unknown backbone 'torchvision:resnet19'" in line and "torchvision:resnet18" in line
    line = one_line_error(tlcore("run", "--dataset", "cifar11"))
    assert "unknown dataset 'cifar11'" in line and "cifar10" in line


def test_broken_installed_plugin_is_reported_and_everything_else_works(tmp_path):
    site = write_fake_distribution(tmp_path / "site", "tlcore-broken-example", {"broken_example": "tlcore_broken_example"})
    (site / "tlcore_broken_example.py").write_text("raise ImportError('needs a library that is not installed')\n")
    env = {"PYTHONPATH": str(site)}
    done = tlcore("plugins", "--json", env=env)
    assert done.returncode == 0, done.stderr
    records = {r["name"]: r for r in json.loads(done.stdout)}
    assert records["broken_example"]["distribution"] == "tlcore-broken-example"
    assert "needs a library that is not installed" in records["broken_example"]["error"]
    assert records["torchvision"]["error"] is None
    done = tlcore("list", "datasets", env=env)
    assert done.returncode == 0 and "digits" in done.stdout
    done = tlcore("list", "datasets", env={**env, "TLCORE_DISABLE_PLUGINS": "datasets"})
    assert done.returncode == 0 and "digits" not in done.stdout
