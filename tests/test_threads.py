"""The CPU thread budget (tlcore/threads.py) and CPU bf16 by architecture family (tlcore/device.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tlcore import device as device_module
from tlcore import threads
from tlcore.dataset import TensorImageDataset
from tlcore.train import fit


@pytest.fixture
def keep_threads(monkeypatch):
    """Each test may set torch's threads and claim the process; both are put back afterwards."""
    before = torch.get_num_threads()
    monkeypatch.setitem(threads._owned, "process", False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    yield
    torch.set_num_threads(before)


def jpeg_folder(root, size: tuple[int, int], per_class: int = 3):
    """train/<class>/*.jpg of one size, written as JPEG files (the format the budget reads headers of)."""
    for label in ("ants", "bees"):
        folder = root / "train" / label
        folder.mkdir(parents=True)
        for index in range(per_class):
            Image.new("RGB", size, (index * 40, 90, 200)).save(folder / f"{index}.jpg", quality=90)
    return root


def folder_dataset(root):
    from tlcore_datasets.imagefolder import load_imagefolder

    from tlcore.dataset import DatasetOptions

    return load_imagefolder("imagefolder", DatasetOptions(data_dir=root, seed=0, val_fraction=0.34)).train


# -- the model -------------------------------------------------------------------------------


def test_in_memory_data_gets_no_worker_and_every_core():
    data = TensorImageDataset(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.long))
    budget = threads.plan_budget(data, 64, "cpu", cores=4)
    assert (budget.threads, budget.workers, budget.cores) == (4, 0, 4)
    assert "in-memory" in budget.reason and budget.describe()["thread_budget"] == budget.reason


@pytest.mark.parametrize(
    "megapixels, size, cores, expected",
    [
        (0.004, 64, 2, 0),  # 64 px JPEGs: decoding is a few percent of the step
        (0.19, 224, 2, 0),  # ants/bees photos on 2 cores: a worker would take half the compute
        (12.0, 224, 2, 1),  # 12 MP camera files: decoding outweighs compute, one core decodes
        (0.19, 224, 16, 1),  # ants/bees photos on 16 cores: one worker keeps up with 15 threads
        (12.0, 224, 16, 9),  # large files on many cores: decoding (144 ms) and compute (122 ms) split them
    ],
)
def test_workers_follow_decoding_cost_image_size_and_cores(megapixels, size, cores, expected):
    workers = threads.best_workers(cores, threads.decode_ms(megapixels), threads.compute_ms(size))
    assert workers == expected
    assert 0 <= workers < cores


def test_budget_reads_image_headers_of_a_folder(tmp_path):
    train = folder_dataset(jpeg_folder(tmp_path, (500, 375)))
    assert threads.source_megapixels(train) == pytest.approx(0.1875)
    on_two = threads.plan_budget(train, 224, "cpu", cores=2)
    assert (on_two.threads, on_two.workers) == (2, 0) and "0.19 MP files at 224 px" in on_two.reason
    on_sixteen = threads.plan_budget(train, 224, "cpu", cores=16)
    assert (on_sixteen.threads, on_sixteen.workers) == (15, 1)


def test_any_dataset_is_measured_from_its_items_and_unknown_sizes_get_a_middle_guess(tmp_path):
    class Pictures(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, index):
            return Image.new("RGB", (1000, 1000)), 0

    assert threads.source_megapixels(Pictures()) == pytest.approx(1.0)
    assert threads._image_pixels(torch.zeros(3, 20, 30)) == threads._image_pixels(np.zeros((20, 30, 3))) == 600

    class Broken(Pictures):
        def __getitem__(self, index):
            raise OSError("unreadable")

    budget = threads.plan_budget(Broken(), 64, "cpu", cores=2)
    assert budget.workers == 0 and "image size unknown" in budget.reason


def test_subsets_are_followed_to_the_files(tmp_path):
    train = folder_dataset(jpeg_folder(tmp_path, (200, 100)))
    subset = torch.utils.data.Subset(torch.utils.data.Subset(train, [3, 1, 0]), [0, 2])
    assert threads.source_megapixels(subset) == pytest.approx(0.02)


def test_asked_threads_and_workers_take_their_share_first():
    data = TensorImageDataset(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.zeros(2, dtype=torch.long))
    assert (threads.plan_budget(data, 64, "cpu", workers=1, cores=4).threads) == 3
    assert (threads.plan_budget(data, 64, "cpu", workers=6, cores=4).threads) == 1  # never fewer than one
    assert threads.plan_budget(data, 64, "cpu", threads=3, cores=4).workers == 0
    both = threads.plan_budget(data, 64, "cpu", threads=5, workers=2, cores=4)
    assert (both.threads, both.workers) == (5, 2) and "--threads" in both.reason


def test_accelerators_keep_the_old_worker_choice_and_torchs_threads(tmp_path):
    from tlcore.data import default_workers

    train = folder_dataset(jpeg_folder(tmp_path, (64, 64)))
    budget = threads.plan_budget(train, 224, "cuda", cores=8)
    assert budget.threads is None and budget.workers == default_workers(train, None)
    assert "torch's default threads" in budget.banner()


def test_where_the_thread_count_comes_from(keep_threads, monkeypatch):
    torch.set_num_threads(1)
    assert threads.requested_threads(None) == (1, "this process's torch threads")  # a library keeps the caller's
    threads.own_process()
    assert threads.requested_threads(None) == (None, "")  # the tlcore command chooses
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.requested_threads(None) == (3, "OMP_NUM_THREADS")
    assert threads.requested_threads(2) == (2, "--threads")
    monkeypatch.setenv("OMP_NUM_THREADS", "lots")
    assert threads.requested_threads(None) == (None, "")


def test_a_busy_machine_gets_advice_but_the_same_choice(monkeypatch):
    assert threads.busy_advice(2, 0, 2, load=0.3) == ""
    assert threads.busy_advice(2, 0, 2, load=1.1) == (
        "the machine is busy (load 1.1 on 2 cores): --threads 1 may train faster")
    assert threads.busy_advice(1, 0, 2, load=1.1) == ""  # already fits beside the other process
    assert "--threads 1" in threads.busy_advice(2, 0, 2, load=7.0)  # never fewer than one thread
    data = TensorImageDataset(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.zeros(2, dtype=torch.long))
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (1.0, 1.0, 1.0))
    busy = threads.plan_budget(data, 64, "cpu", cores=2)
    assert (busy.threads, busy.workers) == (2, 0) and "--threads 1" in busy.banner()
    assert busy.describe()["thread_advice"] == busy.advice
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    assert threads.plan_budget(data, 64, "cpu", cores=2).describe()["thread_advice"] is None


@pytest.mark.parametrize("cpu_max, expected", [("150000 100000\n", 2), ("max 100000\n", None), ("garbage", None)])
def test_a_cgroup_cpu_quota_lowers_the_cores(tmp_path, monkeypatch, cpu_max, expected):
    limit = tmp_path / "cpu.max"
    limit.write_text(cpu_max)
    monkeypatch.setattr(threads, "CGROUP_CPU_MAX", limit)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(64)))
    assert threads.available_cores() == (expected or 64)


# -- in a run: applied, printed, recorded -----------------------------------------------------


def test_a_cpu_run_applies_prints_and_records_the_budget(host, tiny_config, keep_threads, capsys):
    threads.own_process()
    torch.set_num_threads(1)
    result = fit(tiny_config(epochs=1, threads=2, callbacks=["metrics", "+progress"]), host)
    assert torch.get_num_threads() == 2
    resolved = json.loads((result.output_dir / "config.json").read_text())["resolved"]
    assert (resolved["threads"], resolved["workers"]) == (2, 0)
    assert resolved["cores"] == threads.available_cores() and "--threads" in resolved["thread_budget"]
    assert resolved["amp_dtype"] is None
    err = capsys.readouterr().err
    assert "tlcore: float32" in err and "2 threads + 0 workers" in err


def test_a_run_inside_a_callers_process_keeps_its_thread_count(host, tiny_config, keep_threads):
    torch.set_num_threads(1)
    result = fit(tiny_config(epochs=1), host)
    assert torch.get_num_threads() == 1
    resolved = json.loads((result.output_dir / "config.json").read_text())["resolved"]
    assert resolved["threads"] == 1 and "this process's torch threads" in resolved["thread_budget"]


def test_threads_option_is_validated():
    from tlcore.config import build_config
    from tlcore.errors import ConfigError

    assert build_config(overrides={"threads": 3}).threads == 3
    with pytest.raises(ConfigError, match="threads"):
        build_config(overrides={"threads": 0})


# -- CPU bf16 by family ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, arch",
    [("timm:resnet50.a1_in1k", "resnet50"), ("torchvision:resnet18", "resnet18"), ("convnext_atto", "convnext_atto")],
)
def test_architecture_names(name, arch):
    assert device_module.architecture(name) == arch


def test_cpu_bf16_only_for_listed_families_and_never_under_no_amp(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(device_module, "CPU_BF16_FAMILIES", {"resnet*": "measured"})
    monkeypatch.setattr(device_module, "cpu_has_fast_bf16", lambda: True)
    assert device_module.autocast_dtype(cpu, True, "torchvision:resnet18") == torch.bfloat16
    assert device_module.autocast_dtype(cpu, True, "timm:resnet50.a1_in1k") == torch.bfloat16
    assert device_module.autocast_dtype(cpu, True, "timm:tf_efficientnet_lite0") is None
    assert device_module.autocast_dtype(cpu, False, "torchvision:resnet18") is None
    assert device_module.autocast_dtype(cpu, True) is None
    assert device_module.precision_phrase(cpu, torch.bfloat16) == "bfloat16 autocast"
    assert "not measured faster" in device_module.precision_phrase(cpu, None, "timm:tf_efficientnet_lite0")
    monkeypatch.setattr(device_module, "cpu_has_fast_bf16", lambda: False)  # emulated bf16 is slower than fp32
    assert device_module.autocast_dtype(cpu, True, "torchvision:resnet18") is None


def test_a_cpu_run_of_a_listed_family_trains_in_bf16(host, tiny_config, monkeypatch, keep_threads):
    monkeypatch.setattr(device_module, "CPU_BF16_FAMILIES", {"tiny": "test"})
    monkeypatch.setattr(device_module, "cpu_has_fast_bf16", lambda: True)
    result = fit(tiny_config(epochs=1), host)
    assert json.loads((result.output_dir / "config.json").read_text())["resolved"]["amp_dtype"] == "bfloat16"
    assert 0.0 <= result.history[0]["val_acc"] <= 1.0


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_a_bf16_cpu_run_validates_as_eval_scores_it(host, tiny_config, monkeypatch, keep_threads, task):
    """bf16 trains; validation runs in float32 on the CPU, so `tlcore eval` reproduces every validation figure."""
    from tlcore.evaluation import evaluate_checkpoint
    from tlcore.testing import TINY_MULTILABEL_DATASET

    monkeypatch.setattr(device_module, "CPU_BF16_FAMILIES", {"tiny": "test"})
    monkeypatch.setattr(device_module, "cpu_has_fast_bf16", lambda: True)
    data = {"dataset": TINY_MULTILABEL_DATASET} if task == "multilabel" else {}
    result = fit(tiny_config(epochs=2, task=task, **data), host)
    last = result.history[-1]
    report = evaluate_checkpoint(result.output_dir / "last.safetensors", host=host, workers=0)
    if task == "multilabel":
        assert report.multilabel.map == pytest.approx(last["val_map"], abs=1e-9)
        assert report.multilabel.f1_micro == pytest.approx(last["val_f1_micro"], abs=1e-9)
        # (val_acc is subset accuracy at 0.5, eval's at the thresholds: not the same figure)
        assert report.multilabel.loss == pytest.approx(last["val_loss"], rel=1e-5)
    else:
        assert report.metrics.accuracy == pytest.approx(last["val_acc"], abs=1e-9)
        assert report.metrics.loss == pytest.approx(last["val_loss"], rel=1e-5)
