"""--decode device: files read by workers, decoded and cropped on the run's device (here the CPU)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from tlcore_datasets.imagefolder import load_imagefolder
from torch.utils.data import Dataset

from tlcore.backbone import Preprocessing
from tlcore.config import build_config
from tlcore.data import EpochSampler
from tlcore.dataset import DatasetOptions, DatasetSplits
from tlcore.errors import ConfigError, DataError
from tlcore.pipeline import build_pipeline
from tlcore.testing import TinyPlugin, write_image_folder
from tlcore.train import fit

PRE = Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3, input_size=16, min_size=8)


def pipelines(data: DatasetSplits, **options):
    """The device-decoding and the worker-decoding pipelines over the same files."""
    built = []
    for decode in ("device", "cpu"):
        config = build_config(overrides={"decode": decode, "batch_size": 5, "workers": 0, **options})
        samplers = EpochSampler(len(data.train), 0), EpochSampler(len(data.val), 0, shuffle=False)
        built.append(build_pipeline(config, data, PRE, 16, torch.device("cpu"), *samplers))
    return built


def collect(source, epoch=0):
    if source.sampler is not None:
        source.sampler.set_epoch(epoch)
    batches = list(source)
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]), [r for b in batches for r in b[2]]


def test_device_decoding_gives_the_workers_pixels(tmp_path):
    data = load_imagefolder("imagefolder", DatasetOptions(data_dir=write_image_folder(tmp_path / "f", size=24)))
    on_device, in_workers = pipelines(data)
    images, labels, unreadable = collect(on_device.val)
    expected, expected_labels, _ = collect(in_workers.val)
    assert torch.equal(labels, expected_labels) and not unreadable
    # two JPEG decoders (torchvision's libjpeg-turbo, Pillow's) may round a few pixels differently
    assert (images - expected).abs().mean() < 0.01 and (images - expected).abs().max() < 0.1


def test_device_decoding_crops_are_seeded_per_image_and_epoch(tmp_path):
    data = load_imagefolder("imagefolder", DatasetOptions(data_dir=write_image_folder(tmp_path / "f", size=24)))
    on_device, _ = pipelines(data)
    first = collect(on_device.train, epoch=1)[0]
    assert torch.equal(first, collect(on_device.train, epoch=1)[0])
    assert not torch.equal(first, collect(on_device.train, epoch=2)[0])
    assert first.shape == (len(data.train), 3, 16, 16)


def test_png_files_and_broken_files_in_a_jpeg_folder(tmp_path, tlcore_installed, tiny_config):
    host = tlcore_installed("datasets")
    host.register(TinyPlugin(), "tiny")
    root = write_image_folder(tmp_path / "f", size=24)
    Image.new("L", (20, 30), 200).save(root / "train" / "ants" / "grey.png")
    (root / "train" / "bees" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    data = load_imagefolder("imagefolder", DatasetOptions(data_dir=root))
    on_device, _ = pipelines(data, augment="none")
    images, labels, unreadable = collect(on_device.train)
    assert len(labels) == len(data.train) - 1
    assert len(unreadable) == 1 and "broken.jpg" in unreadable[0]
    settings = dict(backbone="tlcore.testing:tiny", dataset="imagefolder", data_dir=str(root), decode="device", epochs=1)
    result = fit(tiny_config(**settings), host)
    assert result.history[0]["unreadable_images"] == 1
    with pytest.raises(DataError, match=r"broken\.jpg.*stopped by --strict"):
        fit(tiny_config(strict=True, output=str(tmp_path / "strict"), **settings), host)


class NoFiles(Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        return torch.zeros(3, 8, 8, dtype=torch.uint8), index


def test_device_decoding_needs_a_dataset_of_files():
    data = DatasetSplits(["a", "b"], NoFiles(), NoFiles())
    with pytest.raises(ConfigError, match="--decode device needs a dataset of image files"):
        pipelines(data)


def test_running_out_of_memory_while_decoding_is_not_taken_for_a_bad_file(tmp_path, monkeypatch):
    from tlcore import device_decode

    data = write_image_folder(tmp_path / "images", per_class=2, size=20)
    raw = [torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8) for path in sorted(data.rglob("*.jpg"))]

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(device_decode, "decode_jpeg", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        device_decode.decode_on(torch.device("cpu"), raw, [str(i) for i in range(len(raw))])
