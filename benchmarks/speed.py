"""tlcore against the plain tutorial loop (benchmarks/plain_loop.py): same model, data and settings, one command.

    python benchmarks/speed.py --config cpu [--repeats 3] [--json results.json]
    python benchmarks/speed.py --config gpu            # every GPU configuration (skipped without CUDA)
    python benchmarks/speed.py --config gpu-resnet50-224 --tlcore-extra="--compile"
    python benchmarks/speed.py --config all --dry-run  # print the command lines only
    python benchmarks/speed.py --config cpu-jobs --repeats 3            # the three CPU jobs of issue 15
    python benchmarks/speed.py --config cpu-jobs --fastai-venv ~/fastai  # with a fastai side on the folder jobs

Each side runs as its own process (``python -m tlcore run ...`` and ``python
benchmarks/plain_loop.py ...``), so the wall time is the whole process: imports,
data loading, model building, training, validation each epoch and checkpoints.
Each side first runs once for one epoch, untimed (``--warmup``), which fills
a Python bytecode cache that both sides share (where PYTHONDONTWRITEBYTECODE is
set, every process would otherwise compile its imports from source; see
``child_environment``). The sides then alternate, in an order that rotates
from one repeat to the next so that neither always runs first, and every number
reported is the median over the repeats. Training images/s is what each side measures over its training
phases: tlcore's ``images_per_second`` in metrics.jsonl, the plain loop's
images over the seconds of its training phase, averaged over the epochs after
the first (the first includes warm-up) or taken from the only epoch.

Shared on both sides: model (``--weights none``: no download), data, image
size, batch size, epochs, seed, SGD lr 0.001 momentum 0.9 without weight
decay, StepLR(7, 0.1), augmentation (RandomResizedCrop scale (0.35, 1), plus a
horizontal flip where the data allows it), a validation pass each epoch. tlcore
keeps its defaults otherwise (``--amp``: bf16 on CUDA); the plain loop is fp32.
Generated data (CIFAR-format batch files, a JPEG ImageFolder, photo-sized
JPEGs of varying shape) is written into ``--work-dir`` (a temporary folder by
default) and read by every side.

A fastai side (``benchmarks/fastai_loop.py``: ``vision_learner`` and
``fit_one_cycle``, fastai's own recipe rather than the shared settings) joins
the ImageFolder configurations when ``--fastai-python`` names an interpreter
that has fastai, or ``--fastai-venv PATH`` names a virtual environment to use
(made there on first use: fastai from PyPI over this interpreter's torch and
torchvision, so that every side runs the same kernels; tlcore's own
environment never gets fastai).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import pickle
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field, replace
from multiprocessing import Pool
from pathlib import Path

import numpy as np

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
if str(BENCHMARKS) not in sys.path:  # imported rather than run (tests): plain_loop lies beside this file
    sys.path.append(str(BENCHMARKS))

from plain_loop import CIFAR_CLASSES, CIFAR_FOLDER, synthetic_arrays  # noqa: E402

PLAIN_SCRIPT = "benchmarks/plain_loop.py"  # relative to REPO, where every command runs
FASTAI_SCRIPT = "benchmarks/fastai_loop.py"
PHOTO_CLASSES = ["ants", "bees"]
# The tutorial's optimiser, as tlcore flags; the plain loop has these as its defaults and gets them explicitly too.
TLCORE_OPTIMIZER = ["--optimizer", "sgd", "--lr", "0.001", "--momentum", "0.9", "--schedule", "step", "--step-size", "7",
                    "--gamma", "0.1", "--weight-decay", "0", "--warmup-epochs", "0"]
PLAIN_OPTIMIZER = ["--lr", "0.001", "--momentum", "0.9", "--step-size", "7", "--gamma", "0.1"]
DATA_SEED = 1234  # generated data does not change with --seed: only the runs' randomness does


# -- configurations --------------------------------------------------------------


@dataclass(frozen=True)
class Data:
    """What a configuration trains on: ``digits`` (embedded), ``cifar`` (generated CIFAR-10 batch files), ``jpeg``
    (square JPEGs of ``size`` px, 10 classes) or ``photos`` (2 classes of photo-sized JPEGs ``size`` px wide, of
    varying height around 3:4, compressed like camera pictures: the ants/bees data set's shape)."""

    kind: str
    train: int = 0  # generated images (cifar, jpeg, photos)
    val: int = 0
    size: int = 32  # side (width for photos) of the generated images in pixels (cifar files are always 32)

    @property
    def title(self) -> str:
        """An honest one-line description for the report."""
        if self.kind == "digits":
            return "scikit-learn digits (1,797 8x8 grey images, 20% held out for val, in memory)"
        if self.kind == "cifar":
            return f"synthetic CIFAR-10-format files ({self.train:,} train / {self.val:,} val, 32x32, held in memory)"
        if self.kind == "photos":
            return (f"synthetic photo-sized JPEG ImageFolder, 2 classes ({self.train:,} train / {self.val:,} val, "
                    f"{self.size} px wide, {photo_heights(self.size)[0]}-{photo_heights(self.size)[-1]} px high)")
        return f"synthetic JPEG ImageFolder ({self.train:,} train / {self.val:,} val, {self.size}x{self.size})"

    def folder_name(self) -> str:
        """Where in the work folder this data is generated (the name encodes every size, so it can be reused)."""
        return f"{self.kind}-{self.train}-{self.val}-{self.size}-seed{DATA_SEED}"


@dataclass(frozen=True)
class Config:
    """One benchmark configuration: shared settings and what each side adds to them."""

    name: str
    model: str
    data: Data
    image_size: int
    batch_size: int
    epochs: int
    device: str  # cpu | cuda
    plain_workers: int
    tlcore_workers: int | None  # None: tlcore's own choice (0 for in-memory data)
    tlcore_sides: tuple[tuple[str, tuple[str, ...]], ...] = (("tlcore", ()),)  # (label, extra flags)
    plain_extra: tuple[str, ...] = ()
    note: str = ""
    # more plain-loop sides besides the first (label, workers): the tutorial with another worker count
    plain_variants: tuple[tuple[str, int], ...] = ()
    fastai: bool = False  # a fastai side joins when an interpreter with fastai is given (ImageFolder data only)


def gpu_workers() -> int:
    """DataLoader workers on the GPU machine: as many as the cores, up to 16."""
    return min(16, os.cpu_count() or 1)


def build_configs(args: argparse.Namespace) -> dict[str, Config]:
    """Every configuration, with the sizes chosen on the command line (tiny ones under --smoke)."""
    workers = gpu_workers()
    synthetic = Data("cifar", args.synthetic_images, args.synthetic_images // 5)
    jpeg = Data("jpeg", args.imagefolder_images, args.imagefolder_images // 10, args.imagefolder_size)
    cifar = Data("cifar", 50_000, 10_000)
    small_cifar, folder_64, photos = Data("cifar", 600, 120), Data("jpeg", 320, 80, 64), Data("photos", 245, 153, 500)
    if args.smoke:
        synthetic, cifar = Data("cifar", 512, 128), Data("cifar", 512, 128)
        jpeg = Data("jpeg", 512, 128, 64)
        small_cifar, folder_64, photos = Data("cifar", 64, 20), Data("jpeg", 40, 20, 32), Data("photos", 24, 12, 160)
    memory = ("--pipeline", "memory")
    imagefolder_sides = [("tlcore", ("--pipeline", "loader"))]
    if args.decode_device:
        imagefolder_sides.append(("tlcore --decode device", ("--pipeline", "loader", "--decode", "device")))
    configs = [
        Config("cpu", "resnet18", Data("digits"), 16 if args.smoke else 64, 64, 1 if args.smoke else 2, "cpu", 0, None,
               note="CI-sized; both sides fp32 on the CPU, no DataLoader workers"),
        # the three CPU jobs of issue 15 (--config cpu-jobs); tlcore chooses its own workers and threads
        Config("cpu-cifar-resnet18", "resnet18", small_cifar, 32, 64, 2, "cpu", 0, None,
               note="CIFAR-format python pickle batches; the plain loop holds them in memory, as torchvision's CIFAR10"),
        Config("cpu-imagefolder-resnet18", "resnet18", folder_64, 64, 64, 2, "cpu", 0, None, fastai=True,
               note="400 JPEG files of 64x64; the plain loop with 0 workers"),
        Config("cpu-antsbees-resnet18", "resnet18", photos, 224, 32, 2, "cpu", 4, None,
               plain_variants=(("plain loop (0 workers)", 0),), fastai=True,
               note="ants/bees-sized: 245 train / 153 val photo-sized JPEGs; the tutorial with 4 workers and with 0"),
        Config("gpu-resnet50-224", "resnet50", synthetic, 224, 256, 3, "cuda", workers, None,
               (("tlcore", (*memory, "--channels-last", "on")),),
               note="32 px images upsampled to 224 px by each side's transforms"),
        Config("gpu-resnet18-224", "resnet18", synthetic, 224, 256, 3, "cuda", workers, None,
               (("tlcore", (*memory, "--channels-last", "on")),),
               note="32 px images upsampled to 224 px by each side's transforms"),
        Config("gpu-cifar10-resnet18", "resnet18", cifar, 32, 256, 3, "cuda", workers, None, (("tlcore", memory),)),
        Config("gpu-imagefolder-resnet50", "resnet50", jpeg, 224, 256, 3, "cuda", workers, workers,
               tuple(imagefolder_sides)),
        Config("gpu-frozen-resnet50", "resnet50", jpeg, 224, 256, 4, "cuda", workers, workers,
               (("tlcore", ("--pipeline", "loader", "--freeze", "backbone")),
                ("tlcore --cache-features", ("--pipeline", "loader", "--freeze", "backbone", "--cache-features"))),
               plain_extra=("--freeze-backbone",),
               note="frozen backbone; tlcore --cache-features trains the head on features of unaugmented images, "
                    "and its img/s counts that head training only: compare it by wall time"),
    ]
    if args.smoke:
        configs = [replace(c, epochs=1, image_size=min(c.image_size, 64)) if c.device == "cuda" else c for c in configs]
        # fastai drops the last incomplete training batch: a smoke batch must fit the tiny data several times
        configs = [replace(c, epochs=1, image_size=min(c.image_size, 64), batch_size=8) if c.name in CPU_JOBS else c
                   for c in configs]
    return {c.name: c for c in configs}


CPU_JOBS = ("cpu-cifar-resnet18", "cpu-imagefolder-resnet18", "cpu-antsbees-resnet18")


def select(name: str, configs: dict[str, Config]) -> list[Config]:
    """``cpu``, ``cpu-jobs`` (issue 15's three), ``gpu`` (every CUDA configuration), ``all``, or one by name."""
    if name == "all":
        return list(configs.values())
    if name == "gpu":
        return [c for c in configs.values() if c.device == "cuda"]
    if name == "cpu-jobs":
        return [configs[n] for n in CPU_JOBS]
    if name not in configs:
        raise SystemExit(f"unknown --config {name!r}; choose cpu, cpu-jobs, gpu, all or one of: {', '.join(configs)}")
    return [configs[name]]


# -- commands --------------------------------------------------------------------


@dataclass
class Side:
    """One side of a configuration: its label, its command line and, for tlcore, the run folder it writes."""

    label: str
    kind: str  # tlcore | plain | fastai
    argv: list[str]
    run_dir: Path | None = None
    runs: list[dict] = field(default_factory=list)


def tlcore_command(config: Config, data_dir: Path | None, run_dir: Path, seed: int, extra: list[str]) -> list[str]:
    """``python -m tlcore run`` with the configuration's shared settings (run_dir is --output)."""
    dataset = {"digits": ["--dataset", "digits", "--val-fraction", "0.2"],
               "cifar": ["--dataset", "cifar10", "--data-dir", str(data_dir), "--no-download"],
               "jpeg": ["--dataset", "imagefolder", "--data-dir", str(data_dir)],
               "photos": ["--dataset", "imagefolder", "--data-dir", str(data_dir)]}[config.data.kind]
    argv = [sys.executable, "-m", "tlcore", "run", "--backbone", f"torchvision:{config.model}", "--weights", "none",
            *dataset, "--image-size", str(config.image_size), "--batch-size", str(config.batch_size),
            "--epochs", str(config.epochs), *TLCORE_OPTIMIZER, "--augment", "standard", "--seed", str(seed),
            "--device", config.device, "--amp", "--callbacks", "metrics,checkpoint", "--output", str(run_dir)]
    if config.tlcore_workers is not None:
        argv += ["--workers", str(config.tlcore_workers)]
    return argv + extra


def plain_command(config: Config, data_dir: Path | None, seed: int, workers: int | None = None) -> list[str]:
    """``python benchmarks/plain_loop.py`` with the configuration's shared settings (``workers``: another count)."""
    dataset = {"digits": ["--data", "digits", "--val-fraction", "0.2"],
               "cifar": ["--data", "cifar10", "--data-dir", str(data_dir)],
               "jpeg": ["--data", "imagefolder", "--data-dir", str(data_dir)],
               "photos": ["--data", "imagefolder", "--data-dir", str(data_dir)]}[config.data.kind]
    workers = config.plain_workers if workers is None else workers
    return [sys.executable, PLAIN_SCRIPT, "--model", config.model, *dataset, "--image-size", str(config.image_size),
            "--batch-size", str(config.batch_size), "--epochs", str(config.epochs), *PLAIN_OPTIMIZER,
            "--workers", str(workers), "--device", config.device, "--seed", str(seed), *config.plain_extra]


def fastai_command(config: Config, data_dir: Path, seed: int, python: str, workers: int) -> list[str]:
    """``FASTAI_PYTHON benchmarks/fastai_loop.py``: same model, data, size, batch, epochs, seed and device."""
    return [python, FASTAI_SCRIPT, "--model", config.model, "--data-dir", str(data_dir),
            "--image-size", str(config.image_size), "--batch-size", str(config.batch_size),
            "--epochs", str(config.epochs), "--workers", str(workers), "--device", config.device, "--seed", str(seed)]


def build_sides(config: Config, work_dir: Path, seed: int = 0, tlcore_extra: str = "",
                fastai_python: str | None = None) -> list[Side]:
    """The command lines of every side of ``config``: tlcore's (one per variant), fastai's (with an interpreter
    that has it, on ImageFolder data), then the plain loop's (the first is the one ratios compare against)."""
    data_dir = None if config.data.kind == "digits" else work_dir / "data" / config.data.folder_name()
    sides = []
    for index, (label, flags) in enumerate(config.tlcore_sides):
        run_dir = work_dir / "runs" / f"{config.name}-tlcore{index}"
        argv = tlcore_command(config, data_dir, run_dir, seed, [*flags, *shlex.split(tlcore_extra)])
        sides.append(Side(label, "tlcore", argv, run_dir))
    if config.fastai and fastai_python and data_dir is not None:
        sides.append(Side("fastai", "fastai", fastai_command(config, data_dir, seed, fastai_python, config.plain_workers)))
    plain_label = f"plain loop ({config.plain_workers} workers)" if config.plain_variants else "plain loop"
    sides.append(Side(plain_label, "plain", plain_command(config, data_dir, seed)))
    for label, workers in config.plain_variants:
        sides.append(Side(label, "plain", plain_command(config, data_dir, seed, workers)))
    return sides


# -- generated data ------------------------------------------------------------------


def write_cifar(folder: Path, data: Data) -> None:
    """CIFAR-10's python-version files (data_batch_1..5, test_batch, batches.meta) of synthetic 32x32 images."""
    folder.mkdir(parents=True, exist_ok=True)
    train = synthetic_arrays(data.train, 32, 10, DATA_SEED, stream=0)
    val = synthetic_arrays(data.val, 32, 10, DATA_SEED, stream=1)
    batches = list(zip(np.array_split(train[0], 5), np.array_split(train[1], 5), strict=True))
    named = [(f"data_batch_{i + 1}", b) for i, b in enumerate(batches)] + [("test_batch", val)]
    for name, (images, labels) in named:
        rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # 1024 red, 1024 green, 1024 blue bytes a row
        entry = {"batch_label": name, "labels": [int(x) for x in labels], "data": np.ascontiguousarray(rows),
                 "filenames": [f"{name}_{i}.png" for i in range(len(rows))]}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        meta = {"label_names": CIFAR_CLASSES, "num_cases_per_batch": len(batches[0][0]), "num_vis": 3072}
        pickle.dump(meta, f, protocol=2)


def _write_jpegs(task: tuple[str, int, int, int, int]) -> None:
    """Worker: one chunk of JPEG files (generated in chunks so that no process holds them all)."""
    from PIL import Image

    root, stream, start, count, size = task
    images, labels = synthetic_arrays(count, size, 10, DATA_SEED, stream=stream)
    for offset, (image, label) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(image).save(Path(root) / CIFAR_CLASSES[label] / f"{start + offset:06d}.jpg", quality=90)


def write_jpeg_folder(folder: Path, data: Data) -> None:
    """An ImageFolder of JPEG files: train/<class>/*.jpg and val/<class>/*.jpg, written by as many processes as cores."""
    tasks = []
    for split, count, first_stream in (("train", data.train, 100), ("val", data.val, 1_000_000)):
        for label in CIFAR_CLASSES:
            (folder / split / label).mkdir(parents=True, exist_ok=True)
        for chunk, start in enumerate(range(0, count, 500)):
            tasks.append((str(folder / split), first_stream + chunk, start, min(500, count - start), data.size))
    with Pool(os.cpu_count() or 1) as pool:
        pool.map(_write_jpegs, tasks)


PHOTO_ASPECTS = (0.5625, 0.666, 0.75, 0.75, 0.75, 0.8)  # height/width of the generated photos (3:4 most often)


def photo_heights(width: int) -> list[int]:
    """The heights the generated photos of this width take, smallest first."""
    return sorted({max(1, round(width * aspect)) for aspect in PHOTO_ASPECTS})


def _write_photos(task: tuple[str, int, int, int, int]) -> None:
    """Worker: one chunk of photo-like JPEGs, smooth class-coloured scenes with texture, of varying height."""
    from PIL import Image

    root, stream, start, count, width = task
    patterns = np.random.default_rng(DATA_SEED).integers(30, 226, size=(len(PHOTO_CLASSES), 3, 4, 3)).astype(np.uint8)
    rng = np.random.default_rng([DATA_SEED, stream])
    labels = rng.permutation(np.arange(count) % len(PHOTO_CLASSES))
    for offset, label in enumerate(labels):
        height = max(1, round(width * PHOTO_ASPECTS[(start + offset) % len(PHOTO_ASPECTS)]))
        scene = Image.fromarray(patterns[label]).resize((width, height), Image.Resampling.BICUBIC)
        blobs = rng.integers(0, 256, size=(max(2, height // 4), max(2, width // 4), 3), dtype=np.uint8)
        texture = np.asarray(Image.fromarray(blobs).resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
        grain = rng.integers(-20, 21, size=(height, width, 3), dtype=np.int16)
        pixels = (np.asarray(scene, dtype=np.int16) * 3 // 4 + (texture - 128) // 3 + grain + 32).clip(0, 255)
        path = Path(root) / PHOTO_CLASSES[label] / f"{start + offset:06d}.jpg"
        Image.fromarray(pixels.astype(np.uint8)).save(path, quality=90)  # about 60-100 KB at 500x375, as photos


def write_photo_folder(folder: Path, data: Data) -> None:
    """train/{ants,bees}/*.jpg and val/{ants,bees}/*.jpg: photo-sized JPEGs, written by as many processes as cores."""
    tasks = []
    for split, count, first_stream in (("train", data.train, 200), ("val", data.val, 2_000_000)):
        for label in PHOTO_CLASSES:
            (folder / split / label).mkdir(parents=True, exist_ok=True)
        for chunk, start in enumerate(range(0, count, 100)):
            tasks.append((str(folder / split), first_stream + chunk, start, min(100, count - start), data.size))
    with Pool(os.cpu_count() or 1) as pool:
        pool.map(_write_photos, tasks)


def prepare_data(config: Config, work_dir: Path) -> None:
    """Generate the configuration's data in the work folder unless an earlier call (or run) left it complete."""
    if config.data.kind == "digits":
        return
    folder = work_dir / "data" / config.data.folder_name()
    done = folder / ".complete"
    if done.is_file():
        return
    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    if config.data.kind == "cifar":
        write_cifar(folder / CIFAR_FOLDER, config.data)
    elif config.data.kind == "photos":
        write_photo_folder(folder, config.data)
    else:
        write_jpeg_folder(folder, config.data)
    done.write_text("")
    print(f"generated {config.data.title} in {folder} ({time.perf_counter() - started:.0f} s)", flush=True)


# -- running -------------------------------------------------------------------------


def throughput(per_epoch: list[float]) -> float:
    """Mean training images/s over the epochs after the first (warm-up), or the only epoch's."""
    values = per_epoch[1:] if len(per_epoch) > 1 else per_epoch
    return sum(values) / len(values)


def read_tlcore_result(run_dir: Path) -> dict:
    """Per-epoch images/s and the final val_acc from tlcore's metrics.jsonl."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"per_epoch_images_per_second": [m["images_per_second"] for m in lines], "val_acc": lines[-1]["val_acc"],
            "epoch_seconds": [m["seconds"] for m in lines]}


def read_plain_result(output: str) -> dict:
    """Per-epoch images/s and the final val_acc from the plain loop's last JSON line."""
    result = json.loads([line for line in output.splitlines() if line.startswith("{")][-1])
    return {"per_epoch_images_per_second": [e["images_per_second"] for e in result["per_epoch"]],
            "val_acc": result["val_acc"], "epoch_seconds": [e["seconds"] for e in result["per_epoch"]]}


class SideFailed(RuntimeError):
    """A side's process exited with an error."""


def run_side(side: Side, log: Path, env: dict[str, str]) -> dict:
    """Run one side as its own process; return its whole-process seconds, images/s and val_acc."""
    if side.run_dir is not None:
        shutil.rmtree(side.run_dir, ignore_errors=True)  # tlcore refuses an output folder that holds files
        side.run_dir.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.run(side.argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - started
    output = log.read_text(errors="replace")
    if code != 0:
        tail = "\n    ".join(output.strip().splitlines()[-12:])
        raise SideFailed(f"{side.label} exited with {code}; last lines of {log}:\n    {tail}")
    result = read_tlcore_result(side.run_dir) if side.kind == "tlcore" else read_plain_result(output)  # fastai: as plain
    if side.run_dir is not None:
        shutil.rmtree(side.run_dir)  # checkpoints of ResNet-50 are large; only the metrics were needed
    return {"wall_seconds": seconds, "images_per_second": throughput(result["per_epoch_images_per_second"]), **result}


def with_epochs(argv: list[str], epochs: int) -> list[str]:
    """The same command line with ``--epochs`` replaced (both sides take it)."""
    index = argv.index("--epochs")
    return [*argv[: index + 1], str(epochs), *argv[index + 2 :]]


def warm_up(config: Config, sides: list[Side], runs: int, logs: Path, env: dict[str, str]) -> None:
    """Untimed one-epoch runs of every side: fill the bytecode cache (and the OS file cache) before timing."""
    for number in range(runs):
        for index, side in enumerate(sides):
            started = time.perf_counter()
            warm = Side(side.label, side.kind, with_epochs(side.argv, 1), side.run_dir)
            run_side(warm, logs / f"{config.name}-{side.kind}-{index}-warmup{number + 1}.log", env)
            print(f"  {config.name} warm-up {side.label}: {time.perf_counter() - started:.1f} s (1 epoch, not counted; "
                  "the first process also compiles the bytecode both sides share)", flush=True)


def run_config(config: Config, sides: list[Side], repeats: int, work_dir: Path, env: dict[str, str],
               warmups: int = 0) -> None:
    """Warm up, then alternate the sides ``repeats`` times, rotating which goes first; results go into ``side.runs``."""
    logs = work_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    warm_up(config, sides, warmups, logs, env)
    for repeat in range(repeats):
        shift = repeat % len(sides)
        for side in sides[shift:] + sides[:shift]:
            run = run_side(side, logs / f"{config.name}-{side.kind}-{sides.index(side)}-{repeat + 1}.log", env)
            side.runs.append(run)
            print(f"  {config.name} repeat {repeat + 1}/{repeats} {side.label}: {run['wall_seconds']:.1f} s whole process, "
                  f"{run['images_per_second']:.1f} train img/s, val_acc {run['val_acc']:.4f}", flush=True)


def ratio(ours: float, theirs: float) -> float:
    """ours / theirs, NaN when theirs is 0 (a side that trained no batch)."""
    return ours / theirs if theirs else float("nan")


def summarise(sides: list[Side]) -> list[dict]:
    """Medians per side; for every other side, ratios to the first plain-loop side (``wall_ratio``,
    ``images_per_second_ratio``) and to each plain-loop side by label (``ratios``); tlcore's to fastai's too."""
    rows = []
    for side in sides:
        rows.append({"side": side.label, "kind": side.kind,
                     "wall_seconds": statistics.median(r["wall_seconds"] for r in side.runs),
                     "images_per_second": statistics.median(r["images_per_second"] for r in side.runs),
                     "val_acc": statistics.median(r["val_acc"] for r in side.runs)})
    plains = [row for row in rows if row["kind"] == "plain"]
    references = plains + [row for row in rows if row["kind"] == "fastai"]
    for row in rows:
        if row["kind"] == "plain":
            continue
        row["images_per_second_ratio"] = ratio(row["images_per_second"], plains[0]["images_per_second"])
        row["wall_ratio"] = ratio(row["wall_seconds"], plains[0]["wall_seconds"])
        row["ratios"] = {ref["side"]: {"wall": ratio(row["wall_seconds"], ref["wall_seconds"]),
                                      "images_per_second": ratio(row["images_per_second"], ref["images_per_second"])}
                         for ref in references if ref is not row and not (row["kind"] == "fastai" == ref["kind"])}
    return rows


# -- reporting -------------------------------------------------------------------------


def version(package: str) -> str:
    """An installed distribution's version, without importing it (timm takes seconds to import)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def git_state() -> str:
    """The commit benchmarked, and whether the working tree differs from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                               text=True).stdout
    except OSError:
        return "unknown"
    return f"{commit.strip() or 'unknown'}{' with uncommitted changes' if dirty.strip() else ''}"


def environment() -> dict:
    """Device and library versions, as the child processes will see them (same interpreter and environment)."""
    import torch

    if torch.cuda.is_available():
        device = f"cuda: {torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} visible)"
    else:
        device = "cpu"
    return {"device": device, "cpu": platform.processor() or platform.machine(), "cpu_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "cuda_available": torch.cuda.is_available(),
            "python": platform.python_version(), "torch": torch.__version__, "torchvision": version("torchvision"),
            "timm": version("timm"), "numpy": version("numpy"), "pillow": version("pillow"), "tlcore": version("tlcore"),
            "tlcore_commit": git_state(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset")}


def print_environment(env: dict) -> None:
    """The header: device, versions and how the processes start."""
    print(f"device: {env['device']}; {env['cpu_cores']} CPU cores, torch threads {env['torch_threads']} "
          f"(OMP_NUM_THREADS {env['OMP_NUM_THREADS']})")
    print(f"processes: Python bytecode {env['bytecode']}; {env['warmup']} untimed 1-epoch warm-up run(s) per side "
          "before the timed ones")
    print(f"python {env['python']}, torch {env['torch']}, torchvision {env['torchvision']}, timm {env['timm']}, "
          f"numpy {env['numpy']}, pillow {env['pillow']}, tlcore {env['tlcore']} at {env['tlcore_commit']}", flush=True)


def print_config(config: Config, sides: list[Side], repeats: int) -> None:
    """What a configuration runs, with every exact command line."""
    print(f"\n== {config.name}: torchvision {config.model} on {config.data.title}, {config.image_size} px, "
          f"batch {config.batch_size}, {config.epochs} epoch(s), {config.device}, {repeats} repeat(s)")
    if config.note:
        print(f"   ({config.note})")
    for side in sides:
        print(f"   {side.label}: {shlex.join(side.argv)}")
    print(flush=True)


def table(results: list[dict]) -> str:
    """The closing Markdown table: medians per side, ratios to the first plain loop, then to the other references."""
    lines = ["| config | side | whole process s | train img/s | final val_acc | img/s side/plain | wall side/plain |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for result in results:
        for row in result.get("summary", []):
            ratios = (f"{row['images_per_second_ratio']:.2f}x | {row['wall_ratio']:.2f}x" if "wall_ratio" in row
                      else "- | -")
            lines.append(f"| {result['config']} | {row['side']} | {row['wall_seconds']:.1f} | "
                         f"{row['images_per_second']:.1f} | {row['val_acc']:.4f} | {ratios} |")
            for other, ratio in list(row.get("ratios", {}).items())[1:]:  # the first is the columns' reference
                lines.append(f"| {result['config']} | {row['side']} / {other} | | | | "
                             f"{ratio['images_per_second']:.2f}x | {ratio['wall']:.2f}x |")
        if "skipped" in result or "error" in result:
            why = result.get("skipped") or "failed: " + result["error"].splitlines()[0]
            lines.append(f"| {result['config']} | - | {why} | | | | |")
    return "\n".join(lines)


def child_environment(args: argparse.Namespace, work_dir: Path) -> dict[str, str]:
    """The environment of both sides' processes.

    Unless --no-bytecode-cache: Python may write .pyc files, into a cache of its
    own in the work folder. Where PYTHONDONTWRITEBYTECODE is set (as in some
    sandboxes and CI images) every process would otherwise compile thousands of
    modules from source, seconds that an installed tlcore or a user's script
    does not pay.
    """
    env = dict(os.environ)
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        os.environ.update(OMP_NUM_THREADS=str(args.threads))  # so the header reports what the children get
        import torch

        torch.set_num_threads(args.threads)
    if not args.no_bytecode_cache:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(work_dir / "pycache")
    return env


# -- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="cpu", help="cpu | gpu (every GPU configuration) | all | a configuration's name")
    parser.add_argument("--repeats", type=int, default=3, help="runs per side, alternating (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write every raw number here")
    parser.add_argument("--work-dir", type=Path, help="generated data, run folders and logs (default: a temporary folder)")
    parser.add_argument("--keep-work-dir", action="store_true", help="keep the temporary work folder (logs, data)")
    parser.add_argument("--tlcore-extra", default="", help='flags for every tlcore command: --tlcore-extra="--compile"')
    parser.add_argument("--threads", type=int, help="set OMP_NUM_THREADS for both sides (default: torch's own choice)")
    parser.add_argument("--warmup", type=int, help="untimed 1-epoch runs per side before timing (default 1, 0 with --smoke)")
    parser.add_argument("--no-bytecode-cache", action="store_true", help="leave PYTHONDONTWRITEBYTECODE as it is")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that everything runs, measures nothing")
    parser.add_argument("--dry-run", action="store_true", help="print the command lines, generate and run nothing")
    parser.add_argument("--on-cpu", action="store_true", help="run the chosen configurations on the CPU (with --smoke: "
                        "check the GPU configurations on a machine without one; their figures mean nothing there)")
    parser.add_argument("--synthetic-images", type=int, default=10_000, help="gpu-resnet*-224: training images (val: 1/5)")
    parser.add_argument("--imagefolder-images", type=int, default=20_000, help="JPEG ImageFolder: train images (val 1/10)")
    parser.add_argument("--imagefolder-size", type=int, default=256, help="JPEG ImageFolder: image side in pixels")
    parser.add_argument("--decode-device", action="store_true", help="gpu-imagefolder-resnet50: add tlcore --decode device")
    parser.add_argument("--fastai-python", help="an interpreter that has fastai: adds a fastai side to ImageFolder configs")
    parser.add_argument("--fastai-venv", type=Path, help="a virtual environment for the fastai side, made there on first "
                        "use (fastai from PyPI over this interpreter's torch); never this environment")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.fastai_python and args.fastai_venv:
        parser.error("give --fastai-python or --fastai-venv, not both")
    if args.warmup is None:
        args.warmup = 0 if args.smoke else 1
    return args


def has_fastai(python: str) -> bool:
    """Whether ``python`` can import fastai's vision API."""
    try:
        done = subprocess.run([python, "-c", "import fastai.vision.all"], capture_output=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def ensure_fastai_venv(path: Path) -> str:
    """The interpreter of a virtual environment at ``path`` that has fastai; made (or completed) there if needed.

    The environment sees this interpreter's packages through a ``.pth`` file,
    so fastai runs on the same torch and torchvision as the other sides and pip
    downloads only what fastai adds. Raises SystemExit with pip's last lines
    when the install fails.
    """
    python = path.resolve() / "bin" / "python"
    if python.is_file() and has_fastai(str(python)):
        return str(python)
    if sys.prefix == str(path.resolve()):
        raise SystemExit(f"--fastai-venv {path} is the environment running this benchmark; give another folder")
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "tlcore_benchmark_base.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    print(f"installing fastai into {path} (over {sysconfig.get_paths()['purelib']})", flush=True)
    done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "fastai"], capture_output=True, text=True)
    if done.returncode != 0 or not has_fastai(str(python)):
        tail = "\n    ".join((done.stdout + done.stderr).strip().splitlines()[-8:])
        raise SystemExit(f"could not install fastai into {path}:\n    {tail}")
    return str(python)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen configurations, print the report and the table; 1 if a side failed, else 0."""
    args = parse_args(argv)
    configs = select(args.config, build_configs(args))
    if args.on_cpu:  # the GPU configurations' commands, data and both sides, checked where there is no GPU
        configs = [replace(c, device="cpu") for c in configs]
    fastai_python = args.fastai_python
    if args.fastai_venv is not None and not args.dry_run:
        fastai_python = ensure_fastai_venv(args.fastai_venv)
    elif args.fastai_venv is not None:
        fastai_python = str(args.fastai_venv / "bin" / "python")
    if fastai_python and not args.dry_run and not has_fastai(fastai_python):
        raise SystemExit(f"--fastai-python {fastai_python} cannot import fastai.vision.all")
    temporary = args.work_dir is None
    work_dir = Path(tempfile.mkdtemp(prefix="tlcore-speed-")) if temporary else args.work_dir.resolve()
    child_env = child_environment(args, work_dir)
    env = environment()
    env["bytecode"] = ("as the environment has it" if args.no_bytecode_cache
                       else f"a shared .pyc cache in {child_env['PYTHONPYCACHEPREFIX']}")
    env["warmup"] = args.warmup
    print_environment(env)
    started = time.perf_counter()
    results, failed = [], False
    try:
        for config in configs:
            sides = build_sides(config, work_dir, args.seed, args.tlcore_extra, fastai_python)
            print_config(config, sides, args.repeats)
            result = {"config": config.name, "settings": {"model": config.model, "data": config.data.title,
                      "image_size": config.image_size, "batch_size": config.batch_size, "epochs": config.epochs,
                      "device": config.device, "note": config.note}, "commands": {s.label: s.argv for s in sides}}
            results.append(result)
            if args.dry_run:
                continue
            if config.device == "cuda" and not env["cuda_available"]:
                result["skipped"] = "skipped: needs CUDA (torch.cuda.is_available() is False)"
                print(f"   {result['skipped']}", flush=True)
                continue
            try:
                prepare_data(config, work_dir)
                run_config(config, sides, args.repeats, work_dir, child_env, args.warmup)
            except SideFailed as error:
                failed, result["error"] = True, str(error)
                print(f"   FAILED: {error}", flush=True)
            result["sides"] = [{"side": s.label, "command": s.argv, "runs": s.runs} for s in sides]
            if "error" not in result:
                result["summary"] = summarise(sides)
    finally:
        if temporary and not args.keep_work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)
        elif not args.dry_run:
            print(f"\nwork folder (data, logs): {work_dir}")
    if args.dry_run:
        return 0
    seconds = time.perf_counter() - started
    print(f"\nmedians of {args.repeats} run(s) per side; train img/s: mean over epochs after the first "
          f"(the only epoch when there is one); ratios > 1 for img/s and < 1 for wall time favour tlcore; "
          f"benchmark took {seconds:.0f} s\n")
    print(table(results), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "repeats": args.repeats, "seconds": seconds,
                                         "results": results}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
