"""The data pipelines: in-memory batches on the device against the DataLoader path, batch augmentation, normalising."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms import v2

from tlcore.backbone import Preprocessing
from tlcore.batch_augment import random_crop_boxes, random_resized_crop, resize_center_crop, to_three_channels
from tlcore.batches import MemoryBatches, MemoryTransform, Normalise, storage_device
from tlcore.config import build_config
from tlcore.data import EpochSampler, to_rgb
from tlcore.dataset import DatasetSplits, TensorImageDataset
from tlcore.errors import ConfigError
from tlcore.pipeline import build_pipeline, choose_pipeline
from tlcore.testing import shapes_dataset, write_image_folder
from tlcore.train import fit

PRE = Preprocessing(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), input_size=16, min_size=8)


def grey_dataset(count: int = 20, size: int = 8) -> DatasetSplits:
    """One-channel uint8 images, as the digits dataset holds them."""
    generator = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (count, 1, size, size), generator=generator, dtype=torch.uint8)
    labels = torch.arange(count) % 2
    half = count // 2
    return DatasetSplits(
        ["a", "b"], TensorImageDataset(images[:half], labels[:half]), TensorImageDataset(images[half:], labels[half:])
    )


def all_batches(source, epoch: int = 0, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Every batch of a source for one epoch, concatenated."""
    if source.sampler is not None:
        source.sampler.set_epoch(epoch, start)
    images, labels = zip(*[(images, labels) for images, labels, _ in source], strict=True)
    return torch.cat(images), torch.cat(labels)


def pipelines(data: DatasetSplits, image_size: int, **options):
    """The memory and the loader pipeline over the same data and samplers."""
    built = {}
    for kind in ("memory", "loader"):
        config = build_config(overrides={"pipeline": kind, "batch_size": 4, "workers": 0, **options})
        train = EpochSampler(len(data.train), config.seed)
        val = EpochSampler(len(data.val), config.seed, shuffle=False)
        built[kind] = build_pipeline(config, data, PRE, image_size, torch.device("cpu"), train, val)
    return built["memory"], built["loader"]


@pytest.mark.parametrize("make_data, image_size", [(grey_dataset, 24), (shapes_dataset, 16), (shapes_dataset, 11)])
def test_memory_validation_batches_equal_the_loaders(make_data, image_size):
    # validation numbers must not depend on the pipeline: same resize, crop and normalising, pixel for pixel
    memory, loader = pipelines(make_data(), image_size)
    memory_images, memory_labels = all_batches(memory.val)
    loader_images, loader_labels = all_batches(loader.val)
    assert memory_images.shape == (len(memory_labels), 3, image_size, image_size)
    assert torch.equal(memory_labels, loader_labels)
    assert torch.equal(memory_images, loader_images)


def test_unaugmented_training_is_the_same_in_both_pipelines():
    memory, loader = pipelines(shapes_dataset(), 16, augment="none")
    assert torch.equal(all_batches(memory.train, epoch=1)[0], all_batches(loader.train, epoch=1)[0])
    assert torch.equal(all_batches(memory.unaugmented("val"))[0], all_batches(loader.unaugmented("val"))[0])


def test_memory_training_batches_depend_on_seed_epoch_and_position_only():
    memory, _ = pipelines(shapes_dataset(), 16)
    first, labels = all_batches(memory.train, epoch=2)
    again, _ = all_batches(memory.train, epoch=2)
    assert torch.equal(first, again)
    # resuming after two steps of four images gives exactly the rest of the epoch
    rest, rest_labels = all_batches(memory.train, epoch=2, start=8)
    assert torch.equal(rest, first[8:]) and torch.equal(rest_labels, labels[8:])
    other, _ = all_batches(memory.train, epoch=3)
    assert not torch.equal(first, other)


def test_memory_pipeline_trains_like_the_loader_pipeline(tlcore_host, tiny_config, tmp_path):
    # unaugmented, both pipelines feed the model the same numbers in the same order: the same weights come out
    results = [
        fit(tiny_config(pipeline=kind, augment="none", output=str(tmp_path / kind)), tlcore_host)
        for kind in ("memory", "loader")
    ]
    assert results[0].history[-1]["val_acc"] == results[1].history[-1]["val_acc"]
    for (name, a), (_, b) in zip(results[0].model.state_dict().items(), results[1].model.state_dict().items(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name


def test_auto_picks_memory_for_tensors_and_the_loader_for_files(tmp_path):
    folder = write_image_folder(tmp_path / "images")
    from tlcore_datasets.imagefolder import load_imagefolder

    from tlcore.dataset import DatasetOptions

    files = load_imagefolder("imagefolder", DatasetOptions(data_dir=folder))
    assert choose_pipeline(build_config(), shapes_dataset()) == "memory"
    assert choose_pipeline(build_config(), files) == "loader"
    assert choose_pipeline(build_config(overrides={"pipeline": "loader"}), shapes_dataset()) == "loader"
    with pytest.raises(ConfigError, match="--pipeline memory needs a dataset held in memory"):
        choose_pipeline(build_config(overrides={"pipeline": "memory", "dataset": "imagefolder"}), files)
    with pytest.raises(ConfigError, match="--decode device decodes image files"):
        choose_pipeline(build_config(overrides={"decode": "device"}), shapes_dataset())


def test_bad_pipeline_option_is_one_line(tlcore_cli):
    result = tlcore_cli("run", "--pipeline", "gpu")
    assert result.code == 2
    assert "pipeline 'gpu' is not accepted; accepted: auto, memory, loader" in result.err


def test_normalise_equals_torchvisions_steps():
    images = torch.randint(0, 256, (5, 3, 9, 7), dtype=torch.uint8)
    reference = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(PRE.mean), list(PRE.std))])
    expected = torch.stack([reference(image) for image in images])
    for channels_last in (False, True):
        out = Normalise(PRE, torch.device("cpu"), channels_last=channels_last)(images)
        assert torch.equal(out, expected)
        assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    grey = torch.randint(0, 256, (2, 1, 4, 4), dtype=torch.uint8)
    normalised = Normalise(PRE, torch.device("cpu"), channels_last=False)(to_three_channels(grey))
    assert torch.equal(normalised, expected_for(grey, reference))


def expected_for(grey: torch.Tensor, reference) -> torch.Tensor:
    """The per-image path's result for grey images: RGB conversion, then the reference transform."""
    return torch.stack([reference(to_rgb(image)) for image in grey])


def test_crop_boxes_follow_random_resized_crop():
    generator = torch.Generator().manual_seed(0)
    boxes, flips = random_crop_boxes(4000, 30, 40, (0.35, 1.0), generator)
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= 40).all() and (boxes[:, 3] <= 30).all()
    area = width * height / (30 * 40)
    assert area.min() >= 0.33 and area.max() <= 1.0  # rounding to whole pixels moves the area slightly
    ratio = width / height
    assert ratio.min() >= 3 / 4 * 0.9 and ratio.max() <= 4 / 3 * 1.1
    assert 0.45 < flips.float().mean() < 0.55
    assert boxes[:, 0].std() > 1 and boxes[:, 1].std() > 1  # offsets vary


def test_crop_boxes_fall_back_to_a_centred_crop_for_extreme_shapes():
    # a 4x100 strip: no box with ratio in [3/4, 4/3] and 35% of the area fits, as in torchvision's fallback
    boxes, _ = random_crop_boxes(50, 4, 100, (0.35, 1.0), torch.Generator().manual_seed(1))
    expected_width = round(4 * 4 / 3)
    left = math.floor((100 - expected_width) / 2)
    assert torch.equal(boxes, torch.tensor([[left, 0.0, left + expected_width, 4.0]]).expand(50, 4))


def test_resized_crop_of_the_whole_image_is_the_image_and_flips():
    images = torch.randint(0, 256, (3, 3, 12, 12), dtype=torch.uint8)
    whole = torch.tensor([[0.0, 0.0, 12.0, 12.0]]).expand(3, 4)
    assert torch.equal(random_resized_crop(images, 12, whole, None), images.float())
    flipped = random_resized_crop(images, 12, whole, torch.tensor([True, False, True]))
    assert torch.equal(flipped[0], images[0].float().flip(-1)) and torch.equal(flipped[1], images[1].float())


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize("height, width, size", [(8, 8, 64), (32, 32, 32), (24, 30, 96), (64, 64, 16), (90, 60, 24)])
def test_batched_crops_equal_torchvisions_crop_then_resize(interpolation, height, width, size):
    # the batch sees what the per-image path would: its box only, with the backbone's interpolation (up to rounding)
    images = torch.randint(0, 256, (24, 3, height, width), dtype=torch.uint8)
    boxes, _ = random_crop_boxes(24, height, width, (0.35, 1.0), torch.Generator().manual_seed(4))
    batched = random_resized_crop(images, size, boxes, None, interpolation)
    mode = v2.InterpolationMode(interpolation)
    per_image = torch.stack(
        [
            v2.functional.resized_crop(image, int(top), int(left), int(bottom - top), int(right - left), [size, size],
                                       interpolation=mode, antialias=True)
            for image, (left, top, right, bottom) in zip(images, boxes.tolist(), strict=True)
        ]
    ).float()  # fmt: skip
    assert (batched - per_image).abs().max() <= 2 and (batched - per_image).abs().mean() < 0.4


def test_resize_center_crop_matches_the_per_image_transform():
    images = torch.randint(0, 256, (4, 3, 20, 30), dtype=torch.uint8)
    per_image = v2.Compose([v2.Resize(18, antialias=True), v2.CenterCrop(16)])
    assert torch.equal(resize_center_crop(images, 16, 18, "bilinear"), torch.stack([per_image(i) for i in images]))


def test_memory_batches_cut_in_sampler_order_without_a_loader():
    data = torch.arange(10, dtype=torch.float32)[:, None]
    labels = torch.arange(10)
    sampler = EpochSampler(10, seed=5)
    source = MemoryBatches(data, labels, sampler, 4, torch.device("cpu"), None)
    sampler.set_epoch(1)
    got = [labels for _, labels, _ in source]
    assert [len(b) for b in got] == [4, 4, 2] and len(source) == 3
    assert torch.cat(got).tolist() == sampler.order()
    assert torch.equal(torch.cat([b for b, _, _ in source])[:, 0].long(), torch.cat(got))


def test_memory_transform_grey_images_become_rgb():
    normalise = Normalise(PRE, torch.device("cpu"), channels_last=False)
    transform = MemoryTransform(PRE, 16, train=True, augment="standard", flip=False, normalise=normalise)
    out = transform(torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8), seed=1)
    assert out.shape == (3, 3, 16, 16)
    raw = out * torch.tensor(PRE.std).view(1, 3, 1, 1) + torch.tensor(PRE.mean).view(1, 3, 1, 1)
    assert torch.allclose(raw[:, 0], raw[:, 1], atol=1e-5) and torch.allclose(raw[:, 1], raw[:, 2], atol=1e-5)


def test_splits_are_weighed_together_for_the_gpu(monkeypatch):
    # 100 bytes free: half may hold data; train and val of 30 bytes each fit alone, not together
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (100, 1000))
    cuda = torch.device("cuda", 0)
    thirty, twenty = torch.zeros(30, dtype=torch.uint8), torch.zeros(20, dtype=torch.uint8)
    assert storage_device([thirty], cuda) == cuda
    assert storage_device([thirty, thirty], cuda) == torch.device("cpu")
    assert storage_device([twenty, twenty], cuda) == cuda
    assert storage_device([thirty, thirty], torch.device("cpu")) == torch.device("cpu")
