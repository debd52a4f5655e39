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
import cpu_bf16  # noqa: E402
import plain_loop  # noqa: E402
import speed  # noqa: E402
import startup  # noqa: E402

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
        plains = [side for side in sides if side.kind == "plain"]
        plain = plains[0]
        assert plain.argv[:2] == [sys.executable, speed.PLAIN_SCRIPT]
        assert (REPO / speed.PLAIN_SCRIPT).is_file()
        for variant, (label, workers) in zip(plains[1:], config.plain_variants, strict=True):  # only workers differ
            assert variant.label == label and flag(variant.argv, "--workers") == str(workers)
            assert [a for a in variant.argv if a != str(workers)] == [a for a in plain.argv if a != plain.argv[
                plain.argv.index("--workers") + 1]]
        tlcore_sides = [side for side in sides if side.kind == "tlcore"]
        assert len(tlcore_sides) + len(plains) == len(sides)  # no fastai side unless an interpreter is given
        for side in tlcore_sides:
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
        assert len({s.run_dir for s in tlcore_sides}) == len(tlcore_sides)  # one run folder per tlcore side


def test_cpu_configuration_uses_only_existing_tlcore_flags(tmp_path):
    (config,) = speed.select("cpu", speed.build_configs(speed.parse_args([])))
    tl, plain = (side.argv for side in speed.build_sides(config, tmp_path))
    assert config.device == "cpu" and flag(plain, "--workers") == "0" and flag(tl, "--workers") is None
    for new in ("--pipeline", "--decode", "--channels-last", "--compile", "--accumulate"):
        assert new not in tl
    assert (flag(tl, "--image-size"), flag(tl, "--batch-size"), flag(tl, "--epochs")) == ("64", "64", "2")


def test_configuration_selection():
    configs = speed.build_configs(speed.parse_args([]))
    assert {c.name for c in speed.select("gpu", configs)} == {n for n in configs if n.startswith("gpu-")}
    assert [c.name for c in speed.select("cpu-jobs", configs)] == list(speed.CPU_JOBS)
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
    assert out.count(" -m tlcore run ") == 10 and out.count(speed.PLAIN_SCRIPT) == 10  # ants/bees: two plain loops
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


# -- speed.py: the three CPU jobs of issue 15 --------------------------------------------------


def test_cpu_jobs_are_the_issues_three():
    configs = speed.build_configs(speed.parse_args([]))
    cifar, folder, photos = (configs[name] for name in speed.CPU_JOBS)
    assert (cifar.data.kind, cifar.data.train, cifar.image_size, cifar.epochs) == ("cifar", 600, 32, 2)
    assert (folder.data.kind, folder.data.train + folder.data.val, folder.data.size, folder.image_size) == (
        "jpeg", 400, 64, 64)
    assert (photos.data.kind, photos.data.train, photos.data.val, photos.data.size, photos.image_size) == (
        "photos", 245, 153, 500, 224)
    assert all(c.model == "resnet18" and c.device == "cpu" and c.epochs == 2 for c in (cifar, folder, photos))
    assert photos.plain_workers == 4 and photos.plain_variants == (("plain loop (0 workers)", 0),)
    assert folder.fastai and photos.fastai and not cifar.fastai


def test_generated_photos_are_an_imagefolder_of_photo_sized_jpegs(tmp_path):
    data = speed.Data("photos", 7, 4, 120)
    speed.write_photo_folder(tmp_path, data)
    train = plain_loop.datasets.ImageFolder(str(tmp_path / "train"))
    val = plain_loop.datasets.ImageFolder(str(tmp_path / "val"))
    assert (len(train), len(val), train.classes) == (7, 4, speed.PHOTO_CLASSES)
    sizes = {plain_loop.Image.open(path).size for path, _ in train.samples + val.samples}
    assert {width for width, _ in sizes} == {120} and {h for _, h in sizes} <= set(speed.photo_heights(120))
    assert len({h for _, h in sizes}) > 1  # shapes vary, as photos do
    assert all(plain_loop.Image.open(path).format == "JPEG" for path, _ in train.samples)
    assert {label for _, label in train.samples} == {0, 1}
    assert speed.photo_heights(500) == [281, 333, 375, 400]


def test_fastai_side_gets_the_same_model_data_and_sizes(tmp_path):
    configs = speed.build_configs(speed.parse_args([]))
    sides = speed.build_sides(configs["cpu-antsbees-resnet18"], tmp_path, seed=3, fastai_python="/opt/fa/python")
    assert [side.kind for side in sides] == ["tlcore", "fastai", "plain", "plain"]
    tl, fa, plain = sides[0].argv, sides[1].argv, sides[2].argv
    assert fa[:2] == ["/opt/fa/python", speed.FASTAI_SCRIPT] and (REPO / speed.FASTAI_SCRIPT).is_file()
    for name in ("--image-size", "--batch-size", "--epochs", "--seed", "--device", "--data-dir", "--workers"):
        assert flag(fa, name) == flag(plain, name) is not None, name
    assert flag(fa, "--model") == flag(plain, "--model") and flag(fa, "--data-dir") == flag(tl, "--data-dir")
    cifar = speed.build_sides(configs["cpu-cifar-resnet18"], tmp_path, fastai_python="/opt/fa/python")
    assert "fastai" not in [side.kind for side in cifar]  # fastai reads folders only


def test_ratios_compare_with_every_plain_loop_and_with_fastai():
    def side(label, kind, wall, speed_):
        return speed.Side(label, kind, [], runs=[{"wall_seconds": wall, "images_per_second": speed_, "val_acc": 0.5}])

    rows = speed.summarise([side("tlcore", "tlcore", 8.0, 100.0), side("fastai", "fastai", 10.0, 50.0),
                            side("plain 4", "plain", 16.0, 40.0), side("plain 0", "plain", 10.0, 0.0)])
    tl, fa = rows[0], rows[1]
    assert (tl["wall_ratio"], tl["images_per_second_ratio"]) == (0.5, 2.5)
    assert tl["ratios"]["plain 0"]["wall"] == 0.8 and tl["ratios"]["fastai"]["wall"] == 0.8
    assert tl["ratios"]["plain 0"]["images_per_second"] != tl["ratios"]["plain 0"]["images_per_second"]  # NaN
    assert "fastai" not in fa["ratios"] and fa["wall_ratio"] == 10.0 / 16.0
    text = speed.table([{"config": "job", "summary": rows}])
    assert "| job | tlcore / plain 0 | | | | nanx | 0.80x |" in text and "| job | tlcore / fastai |" in text


def test_a_fastai_interpreter_without_fastai_is_refused(tmp_path):
    assert not speed.has_fastai(sys.executable)  # tlcore's environment never gets fastai
    with pytest.raises(SystemExit, match="cannot import fastai"):
        speed.main(["--config", "cpu-imagefolder-resnet18", "--fastai-python", sys.executable,
                    "--work-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="this benchmark"):
        speed.ensure_fastai_venv(Path(sys.prefix))


@pytest.mark.slow
def test_speed_cpu_jobs_smoke_runs_every_side(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    report = tmp_path / "speed.json"
    done = subprocess.run([sys.executable, "benchmarks/speed.py", "--config", "cpu-jobs", "--repeats", "1", "--smoke",
                           "--json", str(report)], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    results = {r["config"]: r for r in json.loads(report.read_text())["results"]}
    assert set(results) == set(speed.CPU_JOBS)
    sides = [row["side"] for row in results["cpu-antsbees-resnet18"]["summary"]]
    assert sides == ["tlcore", "plain loop (4 workers)", "plain loop (0 workers)"]
    assert all(row["images_per_second"] > 0 for r in results.values() for row in r["summary"])


# -- benchmarks/startup.py ----------------------------------------------------------------


IMPORTTIME = """import time: self [us] | cumulative | imported package
import time:       100 |        100 |   _io
import time:      2000 |    1500000 |   torch._C
import time:      5000 |    2000000 | torch
import time:       300 |    2100000 | tlcore
import time:       400 |      90000 | typer
"""


def test_startup_reads_importtime_reports():
    # only modules imported at the top level count: torch._C is inside torch's time
    assert startup.heaviest_imports(IMPORTTIME, 3) == [("tlcore", 2.1), ("torch", 2.0), ("typer", 0.09)]


def test_startup_table_marks_the_issues_targets():
    rows = [{"command": "tlcore --help", "median": 1.2, "min": 1.1, "seconds": [1.2, 1.1, 1.3]},
            {"command": "tlcore predict (1 image)", "median": 3.4, "min": 3.1, "seconds": [3.4]}]
    text = startup.table(rows)
    assert "| `tlcore --help` | 1.20 | 1.10 | 3 | < 1.5 s: met |" in text
    assert "| `tlcore predict (1 image)` | 3.40 | 3.10 | 1 | < 3.0 s: NOT met |" in text


def test_startup_times_chosen_commands_as_processes(tmp_path, capsys):
    report = tmp_path / "startup.json"
    assert startup.main(["--only", "python -c pass,tlcore --help", "--repeats", "2", "--json", str(report),
                         "--work-dir", str(tmp_path / "work")]) == 0
    rows = json.loads(report.read_text())["rows"]
    assert [row["command"] for row in rows] == ["python -c pass", "tlcore --help"]
    assert all(len(row["seconds"]) == 2 and row["median"] > 0 for row in rows)
    assert not (tmp_path / "work" / "run").exists()  # no predict asked: no checkpoint trained
    assert "| `tlcore --help` |" in capsys.readouterr().out
    assert startup.main(["--only", "nothing-like-this", "--work-dir", str(tmp_path / "work")]) == 2


@pytest.mark.slow
def test_startup_smoke_runs_every_command(tmp_path):
    done = subprocess.run([sys.executable, "benchmarks/startup.py", "--smoke", "--json", str(tmp_path / "s.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads((tmp_path / "s.json").read_text())["rows"]
    assert {"tlcore --help", "tlcore predict (1 image)", "tlcore plan", "tlcore plugins"} <= {r["command"] for r in rows}


# -- benchmarks/cpu_bf16.py ------------------------------------------------------------------


def test_cpu_bf16_benchmark_measures_both_precisions(capsys, one_thread):
    assert cpu_bf16.main(["--models", "torchvision:resnet18", "--smoke", "--accuracy-seeds", ""]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| torchvision:resnet18 |")]
    assert len(rows) == 1
    fp32, bf16, ratio = (cell.strip() for cell in rows[0].strip("|").split("|")[1:4])
    assert float(fp32) > 0 and float(bf16) > 0
    assert float(ratio[:-1]) == pytest.approx(float(bf16) / float(fp32), rel=0.05)


def test_cpu_bf16_accuracy_runs_put_the_family_in_the_table_for_bf16_only(monkeypatch, tmp_path):
    from tlcore import device

    seen = []

    class Result:
        def __init__(self, output_dir):
            self.output_dir, self.history = output_dir, [{"val_acc": 0.5}]

    def fake_fit(config):  # records what tlcore would train in; the real fit is covered by tests/test_threads.py
        dtype = device.autocast_dtype(torch.device("cpu"), config.amp, config.backbone)
        seen.append((config.seed, str(dtype)) if config.dataset == "digits" else (config.dataset, config.data_dir))
        out = Path(config.output)
        out.mkdir(parents=True)
        (out / "config.json").write_text(json.dumps({"resolved": {"amp_dtype": "bfloat16" if dtype else None}}))
        return Result(out)

    monkeypatch.setattr("tlcore.train.fit", fake_fit)
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(device, "CPU_BF16_FAMILIES", {"convnext*": "measured"})
    args = cpu_bf16.parse_args(["--accuracy-seeds", "0,1", "--epochs", "1"])
    acc = cpu_bf16.accuracy("torchvision:resnet18", args, tmp_path)
    assert acc == {"float32": [0.5, 0.5], "bf16": [0.5, 0.5]}
    assert seen == [(0, "None"), (0, "torch.bfloat16"), (1, "None"), (1, "torch.bfloat16")]
    assert device.CPU_BF16_FAMILIES == {"convnext*": "measured"}  # restored after each run
    seen.clear()
    args.cifar_images = 30
    assert cpu_bf16.accuracy("torchvision:resnet18", args, tmp_path, "cifar")["bf16"] == [0.5, 0.5]
    ((dataset, data_dir),) = set(seen)
    from tlcore_datasets.cifar import load_cifar10

    from tlcore.dataset import DatasetOptions

    splits = load_cifar10("cifar10", DatasetOptions(data_dir=Path(data_dir), download=False))  # the real format
    assert dataset == "cifar10" and (len(splits.train), len(splits.val)) == (30, 10)
    with pytest.raises(SystemExit):
        cpu_bf16.parse_args(["--accuracy-data", "imagenet"])


# -- benchmarks/loaded.py ---------------------------------------------------------------------


def test_loaded_benchmark_measures_each_load_and_thread_count(capsys, one_thread):
    import loaded

    argv = ["--load", "0,1", "--threads", "1", "--image-size", "16", "--batch-size", "2", "--steps", "1", "--repeats", "1"]
    assert loaded.main(argv) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split("|")[1:3] for row in rows] == [[" 0 ", " 1 "], [" 1 ", " 1 "]]
    assert all(float(row.split("|")[3]) > 0 for row in rows)


# -- benchmarks/recipes.py and benchmarks/peer_recipes.py ----------------------------------


def test_recipes_rows_share_one_val_set_and_nest_their_training_images(tmp_path):
    import recipes
    from PIL import Image

    folders = recipes.write_data(tmp_path, [(2, 1), (3, 1)], val_per_class=2)
    assert sorted(folders) == ["k2", "k3"]

    def files(row: str, split: str) -> dict[str, bytes]:
        return {str(p.relative_to(folders[row] / split)): p.read_bytes() for p in (folders[row] / split).glob("*/*.png")}

    assert files("k2", "val") == files("k3", "val") and len(files("k2", "val")) == 20  # the same val images, byte for byte
    small, large = files("k2", "train"), files("k3", "train")
    assert len(small) == 20 and len(large) == 30 and small.items() <= large.items()  # nested subsets
    assert {Path(name).name for name in large}.isdisjoint(Path(name).name for name in files("k2", "val"))
    with Image.open(next((folders["k2"] / "train" / "7").glob("*.png"))) as image:
        assert image.size == (64, 64) and image.mode == "L"
    (folders["k2"] / "train" / "7" / "marker.png").write_bytes(b"kept")  # a complete folder is not rewritten
    recipes.write_data(tmp_path, [(2, 1)], val_per_class=2)
    assert (folders["k2"] / "train" / "7" / "marker.png").read_bytes() == b"kept"


def test_recipes_tlcore_variants_are_extra_arguments_and_peers_join_only_with_their_environment():
    import recipes

    chosen = recipes.sides(["--mixup 0.2", "--augment 'randaugment'"], peers=False, common="--weights none")
    assert [(s.label, s.kind, s.extra) for s in chosen] == [
        ("tlcore default", "tlcore", ["--weights", "none"]),
        ("tlcore --mixup 0.2", "tlcore", ["--weights", "none", "--mixup", "0.2"]),
        ("tlcore --augment 'randaugment'", "tlcore", ["--weights", "none", "--augment", "randaugment"]),
    ]
    assert [s.kind for s in recipes.sides([], peers=True)] == ["tlcore", "fastai", "timm"]
    with pytest.raises(ValueError):
        recipes.sides(["--mixup '0.2"], peers=False)
    assert recipes.parse_args([]).tlcore_variant == recipes.DEFAULT_VARIANTS
    assert recipes.parse_args(["--tlcore-variant", "--ema 0.999"]).tlcore_variant == ["--ema 0.999"]
    with pytest.raises(SystemExit):
        recipes.parse_args(["--seeds", "a,b"])


def test_recipes_table_gives_the_mean_and_each_seed():
    import recipes

    report = {"sides": [{"label": "tlcore default", "kind": "tlcore"}, {"label": "timm train.py recipe", "kind": "timm"}],
              "rows": [{"name": "k10", "per_class": 10, "epochs": 10, "train_images": 100}],
              "results": [{"row": "k10", "side": "tlcore default",
                           "seeds": [{"val_acc": 0.5, "tta_val_acc": 0.7}, {"val_acc": 0.6, "tta_val_acc": 0.8}]},
                          {"row": "k10", "side": "timm train.py recipe", "seeds": [{"val_acc": 0.25}]}]}
    lines = recipes.tables(report).splitlines()
    assert lines[2] == "| 10 (100 images), 10 epochs | 0.550 (0.500, 0.600) | 0.250 |"
    assert lines[-1] == "| 10 (100 images), 10 epochs | 0.550 (0.500, 0.600) | 0.750 (0.700, 0.800) |"


def test_peer_batch_is_the_default_unless_an_epoch_would_have_fewer_than_two_steps():
    import peer_recipes

    assert peer_recipes.fit_batch(128, 1437) == 128 and peer_recipes.fit_batch(128, 500) == 128
    assert peer_recipes.fit_batch(128, 100) == 32 and peer_recipes.fit_batch(64, 100) == 32
    assert peer_recipes.fit_batch(64, 1) == 1


def test_recipes_smoke_runs_tlcore_and_its_tta_on_the_written_folders(tmp_path, monkeypatch):
    import recipes

    from tlcore.testing import write_fake_distribution

    site = write_fake_distribution(tmp_path / "site", "tlcore-tiny-recipes", {"tiny": "tlcore.testing:tiny_plugin"})
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setenv("TLCORE_PLUGINS", "tiny,datasets")
    out = tmp_path / "report.json"
    argv = ["--smoke", "--work", str(tmp_path / "work"), "--backbone", "tlcore.testing:tiny",
            "--tlcore-args", "--weights none --workers 0", "--json", str(out)]
    assert recipes.main(argv) == 0  # no --peers: tlcore's side only
    report = json.loads(out.read_text())
    assert [s["label"] for s in report["sides"]] == ["tlcore default"] and report["failures"] == []
    ((row,), (result,)) = report["rows"], report["results"]
    assert (row["name"], row["train_images"], row["val_images"], row["epochs"]) == ("k2", 20, 20, 1)
    (run,) = result["seeds"]
    assert 0.0 <= run["val_acc"] <= 1.0 and 0.0 <= run["tta_val_acc"] <= 1.0
    assert run["eval_val_acc"] == pytest.approx(run["val_acc"])  # the checkpoint evaluated on the same val folder
    assert flag(run["command"].split(), "--image-size") == "64" and flag(run["command"].split(), "--epochs") == "1"
    assert flag(run["command"].split(), "--data-dir") == row["data_dir"]


# -- benchmarks/multilabel.py --------------------------------------------------------------


def test_multilabel_mosaics_are_a_csv_dataset_labelled_with_the_digits_shown(tmp_path):
    import multilabel
    from PIL import Image
    from tlcore_datasets.csvdata import load_csv

    from tlcore.dataset import DatasetOptions

    rng = np.random.default_rng(0)
    pool_labels = np.array([3, 1, 4, 1, 5, 9, 2, 6])
    tiles, label_sets = multilabel.mosaic_labels(rng, pool_labels, 50)
    for shown, labels in zip(tiles, label_sets, strict=True):
        assert (shown >= 0).any() and labels == sorted({int(pool_labels[t]) for t in shown if t >= 0})
    assert len({len(labels) for labels in label_sets}) > 1  # label sets of several sizes

    summary = multilabel.write_data(tmp_path, {"train": 12, "val": 6, "test": 6}, image_size=16)
    rows = (tmp_path / "test.csv").read_text().splitlines()
    assert rows[0] == "image,label" and len(rows) == 7
    first_image, first_labels = rows[1].split(",")
    assert Image.open(tmp_path / first_image).size == (16, 16) and first_labels.split() == sorted(first_labels.split())
    splits = load_csv("csv", DatasetOptions(data_dir=str(tmp_path), multilabel=True))  # tlcore's own reader
    assert splits.multilabel and (len(splits.train), len(splits.val), len(splits.test)) == (12, 6, 6)
    assert set(splits.classes) <= {str(d) for d in range(10)} and summary["splits"]["val"]["images"] == 6
    pools = [summary["splits"][s]["digit_images_in_pool"] for s in ("train", "val", "test")]
    assert sum(pools) == 1797  # disjoint pools of scikit-learn's digits: no test digit is trained on
    assert multilabel.write_data(tmp_path, {"train": 12, "val": 6, "test": 6}, image_size=16) == summary  # reused


def test_multilabel_table_gives_each_variant_at_both_thresholds():
    import multilabel

    figures = {"map": 0.5, "f1_micro": 0.4, "f1_macro": 0.3, "subset_accuracy": 0.1}
    runs = [{"variant": "none", "test_at_thresholds": figures, "test_at_0.5": {**figures, "f1_micro": f1}}
            for f1 in (0.2, 0.4)]
    lines = multilabel.table({"variants": ["none"], "runs": runs}).splitlines()
    assert lines[2] == "| none | per class (chosen on val) | 0.500 ± 0.000 (0.500, 0.500) | 0.400 ± 0.000 (0.400, 0.400) " \
                       "| 0.300 ± 0.000 (0.300, 0.300) | 0.100 ± 0.000 (0.100, 0.100) |"
    assert lines[3].split(" | ")[3] == "0.300 ± 0.141 (0.200, 0.400)"
    with pytest.raises(SystemExit):
        multilabel.parse_args(["--class-weights", "balanced"])


def test_multilabel_smoke_trains_evaluates_test_and_scores_both_thresholds(tmp_path, one_thread):
    import multilabel

    out = tmp_path / "report.json"
    argv = ["--smoke", "--work", str(tmp_path / "work"), "--class-weights", "auto", "--json", str(out),
            "--tlcore-args", "--workers 0 --device cpu", "--device", "cpu"]
    assert multilabel.main(argv) == 0
    report = json.loads(out.read_text())
    (run,) = report["runs"]
    assert report["failures"] == [] and run["test_images"] == 12 and len(run["thresholds"]) == 10
    for key in ("test_at_thresholds", "test_at_0.5"):
        assert all(0.0 <= run[key][m] <= 1.0 for m in multilabel.METRICS), key
    assert run["test_at_thresholds"]["map"] == pytest.approx(run["test_at_0.5"]["map"])  # mAP has no threshold
    train, evaluate = (command.split() for command in run["commands"])
    assert flag(train, "--task") == "multilabel" and flag(train, "--dataset") == "csv"
    assert flag(train, "--class-weights") == "auto" and flag(evaluate, "--split") == "test"
