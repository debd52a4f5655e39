"""Helpers for testing tlcore and tlcore plugins: a tiny backbone and a tiny dataset.

Both are real (they train, they have BatchNorm and layer groups) and small
enough to run a whole fit in a second on one CPU core.
"""

from __future__ import annotations

import torch
from torch import nn

from tlcore.backbone import Backbone, BackboneOptions, LayerGroup, Preprocessing
from tlcore.dataset import DatasetOptions, DatasetSplits, TensorImageDataset
from tlcore.hookspecs import hookimpl
from tlcore.registry import Register

# The test plugin's names take the reserved ``tlcore.`` prefix, which no installable plugin can have
# (`tlcore new-plugin` accepts lowercase words only), so a plugin's own tests never collide with them.
TINY_PLUGIN = "tlcore.testing"
TINY_BACKBONE = f"{TINY_PLUGIN}:tiny"
TINY_DATASET = f"{TINY_PLUGIN}:shapes"
TINY_MULTILABEL_DATASET = f"{TINY_PLUGIN}:tagged"
# Metrics that measure the machine (time, memory): they differ between identical runs.
MEASURED_METRICS = ("seconds", "images_per_second", "peak_host_mb", "peak_gpu_mb", "peak_gpu_reserved_mb")


def without_measurements(history: list[dict]) -> list[dict]:
    """Per-epoch metrics without the time and memory figures, for comparing runs that must be identical."""
    return [{key: value for key, value in metrics.items() if key not in MEASURED_METRICS} for metrics in history]


def tiny_module(width: int = 8) -> nn.Sequential:
    """Conv-BN stem and two conv-BN stages, globally pooled: (N, 3, H, W) to (N, 2 * width)."""

    def block(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    return nn.Sequential(
        block(3, width, 2),
        block(width, width, 2),
        block(width, 2 * width, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


def tiny_backbone(name: str = TINY_BACKBONE, options: BackboneOptions | None = None, width: int = 8) -> Backbone:
    """A :class:`Backbone` around :func:`tiny_module`, with groups stem, stage1, stage2."""
    return Backbone(
        name=name,
        module=tiny_module(width),
        feature_dim=2 * width,
        preprocessing=Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=16, min_size=8),
        layer_groups=[LayerGroup("stem", ("0",)), LayerGroup("stage1", ("1",)), LayerGroup("stage2", ("2",))],
    )


def shapes_dataset(num_per_class: int = 24, size: int = 16, seed: int = 0) -> DatasetSplits:
    """Two easy classes of uint8 images (bright square at top-left vs bottom-right), 3/4 train, 1/4 val."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 60, (2 * num_per_class, 3, size, size), generator=generator, dtype=torch.uint8)
    labels = torch.arange(2).repeat_interleave(num_per_class)
    half = size // 2
    images[:num_per_class, :, :half, :half] += 180
    images[num_per_class:, :, half:, half:] += 180
    order = torch.randperm(len(labels), generator=generator)
    images, labels = images[order], labels[order]
    cut = len(labels) * 3 // 4
    return DatasetSplits(
        classes=["top_left", "bottom_right"],
        train=TensorImageDataset(images[:cut], labels[:cut]),
        val=TensorImageDataset(images[cut:], labels[cut:]),
        flip_invariant=False,
    )


def tagged_shapes_dataset(count: int = 64, size: int = 16, seed: int = 0) -> DatasetSplits:
    """Multi-label data: each image shows a non-empty subset of three bright squares (top-left, top-right,
    bottom-right), its labels those squares; float32 multi-hot labels ``[N, 3]``, 3/4 train, 1/4 val."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 60, (count, 3, size, size), generator=generator, dtype=torch.uint8)
    labels = torch.randint(0, 2, (count, 3), generator=generator).float()
    empty = labels.sum(dim=1) == 0
    labels[empty, torch.randint(0, 3, (int(empty.sum()),), generator=generator)] = 1.0  # every image has a label
    half = size // 2
    corners = [(slice(0, half), slice(0, half)), (slice(0, half), slice(half, size)), (slice(half, size), slice(half, size))]
    for column, (rows, cols) in enumerate(corners):
        shown = labels[:, column] > 0
        images[shown, :, rows, cols] += 180
    cut = count * 3 // 4
    return DatasetSplits(
        classes=["top_left", "top_right", "bottom_right"],
        train=TensorImageDataset(images[:cut], labels[:cut]),
        val=TensorImageDataset(images[cut:], labels[cut:]),
        flip_invariant=False,
        multilabel=True,
    )


class TinyPlugin:
    """A plugin object registering :data:`TINY_BACKBONE` and :data:`TINY_DATASET`."""

    @hookimpl
    def tlcore_register_backbones(self, register: Register) -> None:
        """Register the tiny backbone."""
        register(TINY_BACKBONE, lambda name, options: tiny_backbone(name, options), description="tiny test convnet")

    @hookimpl
    def tlcore_register_datasets(self, register: Register) -> None:
        """Register the tiny dataset."""
        register(TINY_DATASET, _shapes_factory, description="two synthetic classes, 16x16")
        register(
            TINY_MULTILABEL_DATASET,
            lambda name, options: tagged_shapes_dataset(seed=options.seed),
            description="three synthetic labels per image (multi-label, --task multilabel), 16x16",
        )


def _shapes_factory(name: str, options: DatasetOptions) -> DatasetSplits:
    return shapes_dataset(seed=options.seed)


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10(root, train_per_batch: int = 4, test_images: int = 10, seed: int = 0):
    """Write CIFAR-10 in the official on-disk layout (cifar-10-batches-py, pickles with bytes keys).

    Images are random; each class gets a distinct mean colour so a model can
    learn something. Returns the folder to pass as --data-dir.
    """
    import pickle
    from pathlib import Path

    import numpy as np

    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def batch(count: int, label: bytes) -> dict:
        labels = [int(v) for v in rng.integers(0, 10, count)]
        data = rng.integers(0, 64, (count, 3072), dtype=np.uint8)
        data += np.array(labels, dtype=np.uint8)[:, None] * 19  # class-dependent brightness
        names = [f"img_{i}.png".encode() for i in range(count)]
        return {b"batch_label": label, b"labels": labels, b"data": data, b"filenames": names}

    for index in range(1, 6):
        with open(folder / f"data_batch_{index}", "wb") as handle:
            pickle.dump(batch(train_per_batch, f"training batch {index} of 5".encode()), handle, protocol=2)
    with open(folder / "test_batch", "wb") as handle:
        pickle.dump(batch(test_images, b"testing batch 1 of 1"), handle, protocol=2)
    meta = {b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_cases_per_batch": 10000, b"num_vis": 3072}
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump(meta, handle, protocol=2)
    return Path(root)


def write_image_folder(root, classes=("ants", "bees"), per_class: int = 6, size: int = 24, *, val: bool = True):
    """Write a JPEG tree root/train/<class>/*.jpg (and root/val/... when ``val``). Returns ``root``."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    splits = ["train", "val"] if val else ["train"]
    for split in splits:
        for index, name in enumerate(classes):
            folder = Path(root) / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for item in range(per_class):
                pixels = rng.integers(0, 80, (size, size, 3), dtype=np.uint8) + np.uint8(index * 150 // len(classes))
                Image.fromarray(pixels).save(folder / f"{name}_{item}.jpg", quality=90)
    return Path(root)


# An instance, so the tiny plugin can be named in an entry point: tlcore.testing:tiny_plugin
tiny_plugin = TinyPlugin()

SIGNAL_CALLBACK = "tlcore.testing:signal"  # the callback name signal_plugin registers (add it with "+" to callbacks)


def signal_plugin(epoch: int, step: int, signals=None):
    """A plugin registering callback :data:`SIGNAL_CALLBACK`, which sends ``signals`` (default: SIGINT) to this
    process after optimizer step ``step`` of 0-based ``epoch``: an interruption at a chosen point, for resume tests."""
    import os
    import signal

    from tlcore.callbacks.base import Callback

    chosen = tuple(signals) if signals is not None else (signal.SIGINT,)

    class SendSignal(Callback):
        def on_train_batch_end(self, run) -> None:
            if (run.epoch, run.epoch_step) == (epoch, step):
                for number in chosen:
                    os.kill(os.getpid(), number)

    class SignalPlugin:
        @hookimpl
        def tlcore_register_callbacks(self, register) -> None:
            register(SIGNAL_CALLBACK, lambda config: SendSignal())

    return SignalPlugin()


def check_resumes_exactly(host, make_config, folder, stop_at: tuple[int, int], signals=None, **settings):
    """Train ``settings`` twice under ``folder``: whole, and interrupted then resumed; both must end the same.

    ``make_config(**options)`` builds the RunConfig (a test's ``tiny_config``); the second run gets the signals
    (default SIGINT) after optimizer step ``stop_at[1]`` of 0-based epoch ``stop_at[0]`` (:func:`signal_plugin`),
    must raise RunInterrupted, and is resumed with ``tlcore.train.resume``. Asserts equal histories (time and
    memory figures aside) and bit-identical ``last.safetensors`` tensors; returns ``(whole, resumed)``
    (:class:`tlcore.RunResult`) for further checks. Registers and removes a plugin named ``signal`` on ``host``.
    """
    from pathlib import Path

    from tlcore.checkpoint import read_checkpoint
    from tlcore.interrupt import RunInterrupted
    from tlcore.train import fit, resume

    folder = Path(folder)
    whole = fit(make_config(output=str(folder / "whole"), **settings), host)
    host.register(signal_plugin(*stop_at, signals=signals), "signal")
    try:
        fit(make_config(output=str(folder / "cut"), callbacks=["+" + SIGNAL_CALLBACK], **settings), host)
    except RunInterrupted:
        pass
    else:
        raise AssertionError(f"the run was not interrupted at epoch {stop_at[0]}, step {stop_at[1]}")
    finally:
        host.unregister("signal")
    host.register(signal_plugin(-1, -1), "signal")  # the resumed run asks for the same callbacks
    try:
        resumed = resume(folder / "cut", host)
    finally:
        host.unregister("signal")
    assert without_measurements(resumed.history) == without_measurements(whole.history)
    a, _ = read_checkpoint(whole.output_dir / "last.safetensors")
    b, _ = read_checkpoint(resumed.output_dir / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return whole, resumed


def write_fake_distribution(site, distribution: str, entry_points: dict[str, str], version: str = "1.0"):
    """Make ``site`` look like an installed distribution declaring ``tlcore`` entry points (name -> "module:attr").

    Put ``site`` on PYTHONPATH of a subprocess and the plugin is discovered as if pip had installed it.
    Returns ``site``.
    """
    from pathlib import Path

    site = Path(site)
    dist_info = site / f"{distribution.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir(parents=True, exist_ok=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (dist_info / "entry_points.txt").write_text(f"[tlcore]\n{lines}")
    return site
