"""Runs over image folders with damaged, special and linked files: everything is used, skipped and named, or stops.

Each test writes its folder in the exact on-disk layout a user has and runs
``fit`` (the whole loop, DataLoader workers included where a worker matters).
"""

from __future__ import annotations

import json
import os
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from tlcore.errors import DataError
from tlcore.testing import TINY_BACKBONE, TINY_PLUGIN, TinyPlugin, write_cifar10, write_image_folder
from tlcore.train import fit

pytest.importorskip("tlcore_datasets")


@pytest.fixture
def folder_host(tlcore_installed):
    """The installed datasets plugin (imagefolder, cifar10) and the tiny backbone."""
    host = tlcore_installed("datasets")
    host.register(TinyPlugin(), TINY_PLUGIN)
    return host


def folder_run(tiny_config, data, **options):
    settings = dict(backbone=TINY_BACKBONE, dataset="imagefolder", data_dir=str(data), image_size=16, epochs=1)
    return tiny_config(**{**settings, **options})


def halve_idat(path) -> None:
    """Change the big-endian length of a PNG's IDAT chunk (bytes 33-36) to half its value: Pillow raises SyntaxError."""
    data = bytearray(path.read_bytes())
    (length,) = struct.unpack(">I", data[33:37])
    data[33:37] = struct.pack(">I", length // 2)
    path.write_bytes(bytes(data))


def test_a_corrupt_png_chunk_in_a_worker_is_a_counted_skip(folder_host, tiny_config, tmp_path, capsys):
    data = write_image_folder(tmp_path / "images", per_class=6, size=20)
    broken = data / "train" / "bees" / "chunk.png"
    Image.fromarray(np.full((20, 20, 3), 90, np.uint8)).save(broken)
    halve_idat(broken)
    result = fit(folder_run(tiny_config, data, workers=2, callbacks=["progress"]), folder_host)
    assert result.history[-1]["unreadable_images"] == 1
    err = capsys.readouterr().err
    assert "skipped 1 unreadable images: cannot read image" in err and "chunk.png: broken PNG file" in err
    assert "Traceback" not in err


def test_an_empty_validation_image_is_skipped_counted_and_reported(tlcore_installed, tiny_config, tmp_path, capsys):
    host = tlcore_installed("datasets", "viz")
    host.register(TinyPlugin(), TINY_PLUGIN)
    data = write_image_folder(tmp_path / "images", per_class=4, size=20)
    (data / "val" / "ants" / "empty.jpg").write_bytes(b"")
    result = fit(folder_run(tiny_config, data), host)  # the default callbacks: the report is built at the end
    assert result.history[-1]["unreadable_images"] == 1
    err = capsys.readouterr().err
    assert "skipped 1 unreadable images: cannot read image" in err and "empty.jpg" in err
    assert (result.output_dir / "report.html").is_file()
    with pytest.raises(DataError, match=r"empty\.jpg.*stopped by --strict"):
        fit(folder_run(tiny_config, data, strict=True, output=str(tmp_path / "strict")), host)


def test_special_files_in_class_folders_are_named_and_the_run_goes_on(folder_host, tiny_config, tmp_path, capsys):
    data = write_image_folder(tmp_path / "images", per_class=4, size=20)
    os.mkfifo(data / "train" / "ants" / "pipe.jpg")
    os.symlink("/dev/zero", data / "val" / "bees" / "zero.jpg")
    result = fit(folder_run(tiny_config, data, workers=2, callbacks=["progress"]), folder_host)
    assert result.history[-1]["unreadable_images"] == 0  # never handed to a reader
    err = capsys.readouterr().err
    assert "tlcore: skipped 2 entries that are not readable files: " in err
    assert "pipe.jpg (a named pipe)" in err and "zero.jpg (a device file)" in err


def test_the_first_lines_say_where_validation_came_from(folder_host, tiny_config, tmp_path, capsys):
    data = write_image_folder(tmp_path / "held", per_class=10, size=20, val=False)
    fit(folder_run(tiny_config, data, callbacks=["progress"]), folder_host)
    lines = capsys.readouterr().err.splitlines()
    assert "tlcore: validation: holding out 4 of 20 train images, seed 0" in lines[:4]  # among the first lines

    with_test = write_image_folder(tmp_path / "with_test", per_class=4, size=20, val=False)
    write_image_folder(tmp_path / "tmp", per_class=3, size=20, val=False)
    (tmp_path / "tmp" / "train").rename(with_test / "test")
    result = fit(folder_run(tiny_config, with_test, callbacks=["progress"], output=str(tmp_path / "r2")), folder_host)
    lines = capsys.readouterr().err.splitlines()
    assert "tlcore: validation: test/ (6 images); there is no val/ folder" in lines[:4]
    config = json.loads((result.output_dir / "config.json").read_text())
    assert config["resolved"]["train_images"] == 8  # all of train: nothing held out


def test_the_first_lines_say_where_validation_came_from_for_in_memory_data(folder_host, tiny_config, tmp_path, capsys):
    root = write_cifar10(tmp_path / "cifar", train_per_batch=2, test_images=4)
    fit(
        tiny_config(backbone=TINY_BACKBONE, dataset="cifar10", data_dir=str(root), epochs=1, callbacks=["progress"]),
        folder_host,
    )
    assert "tlcore: validation: the official test split (test_batch, 4 images)" in capsys.readouterr().err.splitlines()[:4]


# -- a last training batch of one image ----------------------------------------------------------------


@pytest.mark.parametrize("decode", ["cpu", "device"])
def test_nine_images_in_batches_of_eight_train(folder_host, tiny_config, tmp_path, decode):
    # at 8 px the tiny backbone's last BatchNorm sees 1x1 maps: one image alone is "1 value per channel"
    data = write_image_folder(tmp_path / "images", per_class=4, size=20)
    Image.fromarray(np.full((20, 20, 3), 60, np.uint8)).save(data / "train" / "ants" / "extra.jpg")
    options = dict(image_size=8, batch_size=8, epochs=2, workers=0, decode=decode, callbacks=["metrics"])
    result = fit(folder_run(tiny_config, data, **options), folder_host)
    assert [m["epoch"] for m in result.history] == [1, 2]
    assert all(np.isfinite(m["train_loss"]) for m in result.history)


def test_resnet18_at_32px_with_nine_images_in_batches_of_eight(tlcore_installed, tiny_config, tmp_path):
    host = tlcore_installed("datasets", "torchvision")
    data = write_image_folder(tmp_path / "images", per_class=4, size=32)
    Image.fromarray(np.full((32, 32, 3), 60, np.uint8)).save(data / "train" / "ants" / "extra.jpg")
    config = tiny_config(
        backbone="torchvision:resnet18",
        weights="none",
        dataset="imagefolder",
        data_dir=str(data),
        image_size=32,
        batch_size=8,
        epochs=1,
        workers=0,
        callbacks=["metrics"],
    )
    assert len(fit(config, host).history) == 1


def write_cifar_batch(path, count: int) -> None:
    rng = np.random.default_rng(count)
    batch = {
        b"batch_label": b"training batch",
        b"labels": [int(v) for v in rng.integers(0, 10, count)],
        b"data": rng.integers(0, 255, (count, 3072), dtype=np.uint8),
        b"filenames": [f"{i}.png".encode() for i in range(count)],
    }
    with open(path, "wb") as handle:
        pickle.dump(batch, handle, protocol=2)


def test_a_cifar_folder_of_nine_training_images(folder_host, tiny_config, tmp_path):
    root = write_cifar10(tmp_path / "cifar", train_per_batch=2, test_images=4)
    write_cifar_batch(root / "cifar-10-batches-py" / "data_batch_5", 1)  # 2 + 2 + 2 + 2 + 1 = 9
    config = tiny_config(
        backbone=TINY_BACKBONE, dataset="cifar10", data_dir=str(root), image_size=8, batch_size=8, callbacks=["metrics"]
    )
    result = fit(config, folder_host)
    assert len(result.history) == 2 and all(np.isfinite(m["train_loss"]) for m in result.history)
