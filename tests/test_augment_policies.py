"""--augment randaugment | trivialaugment | augmix: torchvision's policies after the crop, in every pipeline.

The loader path runs torchvision's transform per image; the memory pipeline
(and --decode device) applies the same policy on the device, batched by
operation, each image seeded by its own (seed, epoch, index): the pixels do
not depend on the batch an image falls in, and a resumed epoch sees the same.
"""

from __future__ import annotations

import os
import signal

import pytest
import torch
from tlcore_datasets.imagefolder import load_imagefolder
from torchvision.transforms import v2

import tlcore
from tlcore import cli
from tlcore.backbone import Preprocessing
from tlcore.batch_augment import POLICIES, apply_policy, make_policy, random_crop_boxes, random_resized_crop
from tlcore.batches import MemoryBatches, MemoryTransform, Normalise
from tlcore.callbacks import Callback
from tlcore.checkpoint import read_checkpoint
from tlcore.config import AUGMENTS, build_config
from tlcore.data import TRAIN_CROP_SCALE, EpochSampler, build_image_transform, sample_seed
from tlcore.dataset import DatasetOptions
from tlcore.interrupt import RunInterrupted
from tlcore.pipeline import build_pipeline
from tlcore.testing import shapes_dataset, write_image_folder
from tlcore.train import fit, resume

PRE = Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3, input_size=16, min_size=8)


def test_every_policy_is_an_accepted_choice():
    assert set(POLICIES) | {"standard", "none"} == set(AUGMENTS)


@pytest.mark.parametrize("name", POLICIES)
def test_loader_policy_runs_after_the_standard_crop_and_changes_pixels(name):
    image = torch.randint(0, 256, (3, 20, 20), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    standard = build_image_transform(PRE, 16, train=True, augment="standard", flip=True)
    with_policy = build_image_transform(PRE, 16, train=True, augment=name, flip=True)
    changed = 0
    for seed in range(6):
        torch.manual_seed(seed)
        expected = make_policy(name)(standard(image))  # the same crop and flip, then the policy, one stream
        torch.manual_seed(seed)
        got = with_policy(image)
        assert torch.equal(got, expected)
        torch.manual_seed(seed)
        changed += not torch.equal(got, standard(image))
    assert changed >= 4  # RandAugment and TrivialAugment may draw Identity now and then; AugMix always mixes


@pytest.mark.parametrize("channels", [1, 3], ids=["grey", "rgb"])  # in-memory digits stay grey until normalised
@pytest.mark.parametrize("name", POLICIES)
def test_device_policy_gives_each_image_what_torchvision_gives_it(name, channels):
    generator = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (12, channels, 16, 16), generator=generator, dtype=torch.uint8)
    seeds = [sample_seed(0, 3, index) for index in range(12)]
    policy = make_policy(name)
    out = apply_policy(policy, images, seeds)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    for image, seed, got in zip(images, seeds, out, strict=True):
        torch.manual_seed(seed)
        assert torch.equal(policy(image), got)
    assert (out != images).flatten(1).any(dim=1).sum() >= 8


@pytest.mark.parametrize("name", POLICIES)
def test_device_policy_does_not_depend_on_batch_composition_or_order(name):
    images = torch.randint(0, 256, (10, 3, 12, 12), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    seeds = [sample_seed(7, 1, index) for index in range(10)]
    policy = make_policy(name)
    whole = apply_policy(policy, images, seeds)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(5))
    shuffled = apply_policy(policy, images[order], [seeds[i] for i in order.tolist()])
    assert torch.equal(shuffled, whole[order])
    assert torch.equal(apply_policy(policy, images[3:5], seeds[3:5]), whole[3:5])  # another batch, same images
    assert not torch.equal(apply_policy(policy, images, [s + 1 for s in seeds]), whole)  # the seed does decide


def test_device_policy_needs_one_seed_per_image():
    with pytest.raises(ValueError, match="one seed per image"):
        apply_policy(make_policy("randaugment"), torch.zeros(3, 3, 8, 8, dtype=torch.uint8), [1, 2])


def memory_source(name: str, flip: bool, seed: int = 0, batch_size: int = 4):
    data = shapes_dataset(num_per_class=8, size=12)
    normalise = Normalise(PRE, torch.device("cpu"), channels_last=False)
    transform = MemoryTransform(PRE, 10, train=True, augment=name, flip=flip, normalise=normalise)
    sampler = EpochSampler(len(data.train), seed)
    source = MemoryBatches(data.train.images, data.train.labels, sampler, batch_size, torch.device("cpu"), transform, seed)
    return source, data


def epoch_images(source, epoch: int, start: int = 0) -> torch.Tensor:
    source.sampler.set_epoch(epoch, start)
    return torch.cat([images for images, _, _ in source])


@pytest.mark.parametrize("name", POLICIES)
def test_memory_pipeline_policy_resumes_exactly_and_changes_pixels(name):
    source, _ = memory_source(name, flip=True)
    whole = epoch_images(source, 2)
    assert torch.equal(epoch_images(source, 2), whole)  # same (seed, epoch, index): same image
    assert torch.equal(epoch_images(source, 2, start=4), whole[4:])  # resumed mid-epoch: the rest, pixel for pixel
    assert not torch.equal(epoch_images(source, 3), whole)
    standard, _ = memory_source("standard", flip=True)
    assert not torch.equal(epoch_images(standard, 2), whole)


@pytest.mark.parametrize("name", POLICIES)
def test_memory_pipeline_policy_follows_the_crop_without_a_flip_where_flips_are_forbidden(name):
    source, data = memory_source(name, flip=False, seed=3)
    got = epoch_images(source, 1)
    order = source.sampler.order()
    expected = []
    for start in range(0, len(order), 4):  # the batch's crops unflipped, then the policy seeded per image, by hand
        picked = order[start : start + 4]
        images = data.train.images[picked]
        generator = torch.Generator().manual_seed(sample_seed(3, 1, start))
        boxes, _ = random_crop_boxes(len(picked), 12, 12, TRAIN_CROP_SCALE, generator)
        crops = random_resized_crop(images, 10, boxes, None, PRE.interpolation).round().clamp(0, 255).to(torch.uint8)
        expected.append(apply_policy(make_policy(name), crops, [sample_seed(3, 1, i) for i in picked]))
    assert torch.equal(got, Normalise(PRE, torch.device("cpu"), channels_last=False)(torch.cat(expected)))


@pytest.mark.parametrize("name", POLICIES)
def test_loader_never_flips_where_the_dataset_forbids_it(name):
    steps = build_image_transform(PRE, 16, train=True, augment=name, flip=False).transforms
    assert not any(isinstance(step, v2.RandomHorizontalFlip) for step in steps)
    assert isinstance(steps[-1], type(make_policy(name)))


def test_device_decoding_applies_the_policy_per_image(tmp_path):
    data = load_imagefolder("imagefolder", DatasetOptions(data_dir=write_image_folder(tmp_path / "f", size=20)))

    def train_images(augment: str) -> torch.Tensor:
        config = build_config(overrides={"decode": "device", "batch_size": 5, "workers": 0, "augment": augment})
        samplers = EpochSampler(len(data.train), 0), EpochSampler(len(data.val), 0, shuffle=False)
        pipeline = build_pipeline(config, data, PRE, 16, torch.device("cpu"), *samplers)
        pipeline.train.sampler.set_epoch(1)
        return torch.cat([images for images, _, _ in pipeline.train])

    policy = train_images("trivialaugment")
    assert torch.equal(policy, train_images("trivialaugment"))
    assert not torch.equal(policy, train_images("standard"))


def test_bad_augment_is_one_line(host, capsys):
    try:
        cli.main(["run", "--augment", "heavy"])
        code = 0
    except SystemExit as stop:
        code = stop.code
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("tlcore: error: "), lines
    assert "augment 'heavy'" in lines[0] and "randaugment" in lines[0]


class _StopAt(Callback):
    """Sends SIGINT to this process after a given step of a given epoch (a Ctrl-C mid-epoch)."""

    def __init__(self, epoch, step):
        self.epoch, self.step = epoch, step

    def on_train_batch_end(self, run):
        if (run.epoch, run.epoch_step) == (self.epoch, self.step):
            os.kill(os.getpid(), signal.SIGINT)


def _stop_plugin(epoch, step):
    class StopPlugin:
        @tlcore.hookimpl
        def tlcore_register_callbacks(self, register):
            register("test:stop", lambda config: _StopAt(epoch, step))

    return StopPlugin()


@pytest.mark.parametrize("pipeline, name", [("memory", "randaugment"), ("memory", "augmix"), ("loader", "trivialaugment")])
def test_a_run_with_a_policy_resumes_bit_identically_mid_epoch(host, tiny_config, tmp_path, pipeline, name):
    settings = dict(epochs=2, augment=name, pipeline=pipeline, workers=0, batch_size=8, callbacks=["-progress"])
    whole = fit(tiny_config(output=str(tmp_path / "whole"), **settings), host)
    standard = fit(tiny_config(output=str(tmp_path / "standard"), **{**settings, "augment": "standard"}), host)
    host.register(_stop_plugin(1, 2), "stop")
    with pytest.raises(RunInterrupted):
        fit(tiny_config(output=str(tmp_path / "cut"), **{**settings, "callbacks": ["-progress", "+test:stop"]}), host)
    host.unregister("stop")
    host.register(_stop_plugin(-1, -1), "stop")  # the resumed run asks for the same callbacks
    resumed = resume(tmp_path / "cut", host)
    a, _ = read_checkpoint(whole.output_dir / "last.safetensors")
    b, _ = read_checkpoint(resumed.output_dir / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    c, _ = read_checkpoint(standard.output_dir / "last.safetensors")
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the policy did change what the model saw
