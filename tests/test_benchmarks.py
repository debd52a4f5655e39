"""benchmarks/speed.py and its baseline benchmarks/plain_loop.py: they run, and both sides get the same settings.

No timing is asserted: these tests check that the comparison is like for like.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO / "benchmarks"))  # appended: benchmarks/feature_cache.py must not shadow anything

import channels_last  # noqa: E402
import plain_loop  # noqa: E402
import speed  # noqa: E402

# Flags whose values must be equal on both sides, as (tlcore flag, plain loop flag).
SHARED = [("--image-size", "--image-size"), ("--batch-size", "--batch-size"), ("--epochs", "--epochs"), ("--seed", "--seed"),
          ("--device", "--device"), ("--lr", "--lr"), ("--momentum", "--momentum"), ("--step-size", "--step-size"),
          ("--gamma", "--gamma")]


@pytest.fixture
def one_thread():
    """Two OpenMP threads thrash when another process shares the two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def flag(argv: list[str], name: str) -> str | None:
    """The value after ``name`` in a command line (the last one, as argparse and typer take it); None if absent."""
    values = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == name]
    return values[-1] if values else None


def last_json_line(text: str) -> dict:
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


# -- the plain loop ------------------------------------------------------------------


def test_plain_loop_trains_end_to_end(capsys, one_thread):
    result = plain_loop.main(["--model", "resnet18", "--data", "digits", "--image-size", "16", "--batch-size", "64",
                              "--epochs", "1", "--limit", "256", "--device", "cpu", "--seed", "3"])
    printed = last_json_line(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(result))
    assert 0.0 <= printed["val_acc"] <= 1.0
    assert printed["train_images"] == 256 and printed["train_images_per_second"] > 0
    assert printed["wall_seconds"] > 0 and len(printed["per_epoch"]) == 1


def test_plain_loop_reads_synthetic_data_and_freezes_the_backbone(capsys, one_thread):
    result = plain_loop.main(["--model", "resnet18", "--data", "synthetic", "--synthetic-train", "64",
                              "--synthetic-val", "32", "--image-size", "32", "--batch-size", "32", "--epochs", "1",
                              "--freeze-backbone", "--device", "cpu"])
    assert result["train_images"] == 64 and result["val_images"] == 32
    model, params = plain_loop.build_model("resnet18", 10, freeze_backbone=True)
    assert [p.shape for p in params] == [torch.Size([10, 512]), torch.Size([10])]
    assert sum(p.requires_grad for p in model.parameters()) == 2


@pytest.mark.parametrize("seed, fraction", [(0, 0.2), (7, 0.2), (3, 0.35)])
def test_plain_loop_digits_split_is_tlcores(seed, fraction):
    from tlcore_datasets.digits import load_digits_dataset

    from tlcore.dataset import DatasetOptions

    splits = load_digits_dataset("digits", DatasetOptions(seed=seed, val_fraction=fraction))
    ours = plain_loop.digits_arrays(fraction, seed)
    for name, theirs in (("train", splits.train), ("val", splits.val)):
        images, labels = ours[name]
        assert np.array_equal(images, theirs.images[:, 0].numpy())  # tlcore holds (N, 1, 8, 8)
        assert np.array_equal(labels, theirs.labels.numpy())


def test_plain_loop_digits_are_grey_rgb_and_not_flipped():
    args = plain_loop.parse_args(["--data", "digits", "--image-size", "16", "--limit", "4"])
    datasets, classes = plain_loop.build_datasets(args)
    assert classes == 10 and len(datasets["train"]) == 4
    assert not any(isinstance(t, plain_loop.transforms.RandomHorizontalFlip) for t in datasets["train"].transform.transforms)
    image, _ = plain_loop.ArrayImages(datasets["val"].images, datasets["val"].labels, None, "L")[0]
    assert image.mode == "RGB"
    red, green, blue = image.split()
    assert red.tobytes() == green.tobytes() == blue.tobytes()
    assert datasets["val"][0][0].shape == (3, 16, 16)


# -- generated data: both sides read the same pixels ---------------------------------------


def test_generated_cifar_files_read_the_same_in_tlcore_and_the_plain_loop(tmp_path):
    from tlcore_datasets.cifar import load_cifar10

    from tlcore.dataset import DatasetOptions

    data = speed.Data("cifar", 25, 10)
    speed.write_cifar(tmp_path / plain_loop.CIFAR_FOLDER, data)
    theirs = load_cifar10("cifar10", DatasetOptions(data_dir=tmp_path, download=False))
    ours = plain_loop.read_cifar_folder(str(tmp_path))
    for name, split in (("train", theirs.train), ("val", theirs.val)):
        images, labels = ours[name]
        assert np.array_equal(images.transpose(0, 3, 1, 2), split.images.numpy())
        assert np.array_equal(labels, split.labels.numpy())
    assert theirs.classes == plain_loop.CIFAR_CLASSES and len(ours["train"][0]) == 25


def test_generated_jpeg_folder_has_every_image(tmp_path):
    speed.write_jpeg_folder(tmp_path, speed.Data("jpeg", 30, 10, 24))
    train = plain_loop.datasets.ImageFolder(str(tmp_path / "train"))
    val = plain_loop.datasets.ImageFolder(str(tmp_path / "val"))
    assert len(train) == 30 and len(val) == 10 and train.classes == sorted(plain_loop.CIFAR_CLASSES)
    assert train[0][0].size == (24, 24)


# -- speed.py: command lines --------------------------------------------------------------


@pytest.mark.parametrize("smoke", [False, True])
def test_every_configuration_gives_both_sides_the_same_settings(tmp_path, smoke):
    argv = ["--smoke"] if smoke else []
    configs = speed.build_configs(speed.parse_args([*argv, "--tlcore-extra", "--compile --accumulate 2"]))
    assert {"cpu", "gpu-resnet50-224", "gpu-resnet18-224", "gpu-cifar10-resnet18", "gpu-imagefolder-resnet50",
            "gpu-frozen-resnet50"} <= set(configs)
    for config in configs.values():
        sides = speed.build_sides(config, tmp_path, seed=5, tlcore_extra="--compile --accumulate 2")
        plain = sides[-1]
        assert plain.kind == "plain" and plain.argv[:2] == [sys.executable, speed.PLAIN_SCRIPT]
        assert (REPO / speed.PLAIN_SCRIPT).is_file()
        for side in sides[:-1]:
            tl = side.argv
            assert side.kind == "tlcore" and tl[:4] == [sys.executable, "-m", "tlcore", "run"]
            assert flag(tl, "--backbone") == f"torchvision:{flag(plain.argv, '--model')}" == f"torchvision:{config.model}"
            for ours, theirs in SHARED:
                assert flag(tl, ours) == flag(plain.argv, theirs) is not None, (config.name, ours)
            assert flag(tl, "--seed") == "5"
            assert flag(tl, "--data-dir") == flag(plain.argv, "--data-dir")
            assert flag(tl, "--val-fraction") == flag(plain.argv, "--val-fraction")
            assert {"--dataset": flag(tl, "--dataset"), "--data": flag(plain.argv, "--data")} in (
                {"--dataset": "digits", "--data": "digits"}, {"--dataset": "cifar10", "--data": "cifar10"},
                {"--dataset": "imagefolder", "--data": "imagefolder"})
            assert (flag(tl, "--weights"), flag(tl, "--augment"), flag(tl, "--optimizer"), flag(tl, "--schedule")) == (
                "none", "standard", "sgd", "step")
            assert (flag(tl, "--weight-decay"), flag(tl, "--warmup-epochs"), flag(tl, "--callbacks")) == (
                "0", "0", "metrics,checkpoint")
            assert flag(tl, "--output") == str(side.run_dir) and side.run_dir.parent == tmp_path / "runs"
            assert (flag(tl, "--freeze") == "backbone") == ("--freeze-backbone" in plain.argv)
            assert tl[-3:] == ["--compile", "--accumulate", "2"]
            if config.tlcore_workers is not None:
                assert flag(tl, "--workers") == flag(plain.argv, "--workers")
        assert len({s.run_dir for s in sides[:-1]}) == len(sides) - 1  # one run folder per tlcore side


def test_cpu_configuration_uses_only_existing_tlcore_flags(tmp_path):
    (config,) = speed.select("cpu", speed.build_configs(speed.parse_args([])))
    tl, plain = (side.argv for side in speed.build_sides(config, tmp_path))
    assert config.device == "cpu" and flag(plain, "--workers") == "0" and flag(tl, "--workers") is None
    for new in ("--pipeline", "--decode", "--channels-last", "--compile", "--accumulate"):
        assert new not in tl
    assert (flag(tl, "--image-size"), flag(tl, "--batch-size"), flag(tl, "--epochs")) == ("64", "64", "2")


def test_configuration_selection():
    configs = speed.build_configs(speed.parse_args([]))
    assert {c.name for c in speed.select("gpu", configs)} == {n for n in configs if n != "cpu"}
    assert [c.name for c in speed.select("gpu-frozen-resnet50", configs)] == ["gpu-frozen-resnet50"]
    assert len(speed.select("all", configs)) == len(configs)
    with pytest.raises(SystemExit, match="unknown --config"):
        speed.select("tpu", configs)
    frozen = configs["gpu-frozen-resnet50"]
    assert [label for label, _ in frozen.tlcore_sides] == ["tlcore", "tlcore --cache-features"]
    with_decode = speed.build_configs(speed.parse_args(["--decode-device"]))["gpu-imagefolder-resnet50"]
    assert ["--decode", "device"] == list(with_decode.tlcore_sides[-1][1][-2:])


def test_warm_up_runs_one_epoch_and_children_may_cache_bytecode(tmp_path, monkeypatch):
    (config,) = speed.select("cpu", speed.build_configs(speed.parse_args([])))
    for side in speed.build_sides(config, tmp_path):
        short, at = speed.with_epochs(side.argv, 1), side.argv.index("--epochs") + 1
        assert short[at] == "1" and short[:at] == side.argv[:at] and short[at + 1 :] == side.argv[at + 1 :]
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    env = speed.child_environment(speed.parse_args([]), tmp_path)
    assert "PYTHONDONTWRITEBYTECODE" not in env and env["PYTHONPYCACHEPREFIX"] == str(tmp_path / "pycache")
    assert speed.child_environment(speed.parse_args(["--no-bytecode-cache"]), tmp_path)["PYTHONDONTWRITEBYTECODE"] == "1"
    assert speed.parse_args([]).warmup == 1 and speed.parse_args(["--smoke"]).warmup == 0


def test_throughput_skips_the_first_epoch_when_there_are_more():
    assert speed.throughput([10.0, 20.0, 30.0]) == 25.0
    assert speed.throughput([12.0]) == 12.0


def test_dry_run_prints_every_command_and_runs_nothing(capsys, tmp_path):
    assert speed.main(["--config", "all", "--dry-run", "--work-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "device:" in out and "torchvision" in out and "timm" in out
    assert out.count(" -m tlcore run ") == 7 and out.count(speed.PLAIN_SCRIPT) == 6
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without CUDA")
def test_gpu_configuration_is_skipped_clearly_without_cuda(capsys, tmp_path):
    assert speed.main(["--config", "gpu-resnet18-224", "--repeats", "1", "--work-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "skipped: needs CUDA" in out and not (tmp_path / "data").exists()


@pytest.mark.slow
def test_speed_cpu_smoke_runs_both_sides_and_prints_the_table(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    report = tmp_path / "speed.json"
    done = subprocess.run([sys.executable, "benchmarks/speed.py", "--config", "cpu", "--repeats", "1", "--smoke",
                           "--json", str(report)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| cpu | tlcore |" in done.stdout and "| cpu | plain loop |" in done.stdout
    results = json.loads(report.read_text())["results"]
    (cpu,) = results
    assert [row["side"] for row in cpu["summary"]] == ["tlcore", "plain loop"]
    assert all(0.0 <= row["val_acc"] <= 1.0 and row["images_per_second"] > 0 for row in cpu["summary"])
    assert cpu["summary"][0]["wall_ratio"] > 0


# -- benchmarks/channels_last.py --------------------------------------------------------


def test_channels_last_benchmark_measures_both_layouts(capsys, one_thread):
    argv = ["--models", "resnet18", "--image-size", "16", "--batch-size", "2", "--steps", "1", "--warmup", "0"]
    assert channels_last.main([*argv, "--repeats", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| resnet18 |")]
    assert len(rows) == 1
    plain, last, ratio = (cell.strip() for cell in rows[0].strip("|").split("|")[1:])
    assert float(plain) > 0 and float(last) > 0 and ratio.endswith("x")
    assert float(ratio[:-1]) == pytest.approx(float(last) / float(plain), rel=0.05)  # the cells are rounded


def test_channels_last_benchmark_names_an_unknown_model(capsys):
    with pytest.raises(SystemExit):
        channels_last.main(["--models", "resnet18,vgg99"])
    assert "unknown model 'vgg99'; accepted: resnet18, resnet50, tf_efficientnet_lite0" in capsys.readouterr().err
