"""The pieces the training loop is made of, and the small helpers that exist once."""

from __future__ import annotations

import inspect
import os

import pytest
import torch

from tlcore import batches, data, device_decode, distributed, evaluation, feature_cache, plugins, registry, rundir, testing
from tlcore.backbone import Preprocessing
from tlcore.files import FILE_MODE, atomic_file
from tlcore.loop import optimizer_steps
from tlcore.messages import first_line, shorten
from tlcore.train import fit
from tlcore.weights import strip_prefix


class CountedBatches:
    """``count`` batches that record how many were read."""

    def __init__(self, count):
        self.count, self.read = count, 0

    def __len__(self):
        return self.count

    def __iter__(self):
        for index in range(self.count):
            self.read += 1
            yield index


def test_optimizer_steps_group_lazily_with_a_shorter_last_step():
    source = CountedBatches(5)
    steps = optimizer_steps(source, 2)
    size, micro = next(steps)
    assert size == 2 and source.read == 0  # nothing read before the step asks for it
    assert next(micro) == 0 and source.read == 1  # one micro-batch at a time: never a whole step held at once
    assert list(micro) == [1] and source.read == 2
    assert [(size, list(micro)) for size, micro in steps] == [(2, [2, 3]), (1, [4])]
    assert [size for size, micro in optimizer_steps(CountedBatches(4), 4)] == [4]
    assert list(optimizer_steps(CountedBatches(0), 3)) == []


@pytest.mark.parametrize(
    "function, names",
    [
        (data.EpochSampler.__init__, ["shuffle", "even"]),
        (data.build_image_transform, ["train", "flip"]),
        (data.build_transform, ["train", "flip"]),
        (data.TransformedDataset.__init__, ["tolerant", "with_index"]),
        (data.make_loader, ["pin_memory"]),
        (batches.Normalise.__init__, ["channels_last"]),
        (batches.MemoryTransform.__init__, ["train", "flip"]),
        (device_decode.decoded_batches, ["train", "flip"]),
        (device_decode.DecodedBatches.__init__, ["augmented", "flip"]),
        (distributed.sync_batchnorm, ["enabled"]),
        (distributed.no_sync, ["skip"]),
        (evaluation.evaluate_checkpoint, ["strict"]),
        (testing.write_image_folder, ["val"]),
        (registry.Catalog.listing, ["with_info"]),
        (plugins.PluginHost.__init__, ["load_installed"]),
        (plugins.reset_host, ["load_installed"]),
        (rundir.write_run_config, ["head_reused"]),
    ],
)
def test_boolean_options_are_keyword_only(function, names):
    parameters = inspect.signature(function).parameters
    assert all(parameters[name].kind is inspect.Parameter.KEYWORD_ONLY for name in names)


def test_first_line_of_an_error():
    assert first_line(RuntimeError("\n  backend failed:  \nlong advice\n")) == "backend failed:"
    assert first_line(ValueError("")) == "ValueError"
    assert first_line(ValueError("  "), default="") == ""


def test_shorten_lists_the_first_items():
    assert shorten(["a", "b", "c"], 3) == "a, b, c"
    assert shorten(["a", "b", "c", "d"], 3) == "a, b, c …"
    assert shorten(["x", "y"], 1, "; ") == "x …"


def test_strip_prefix_keeps_only_the_prefixed_tensors():
    tensors = {"head.0.weight": torch.ones(1), "head.0.bias": torch.zeros(1), "backbone.head.x": torch.ones(2)}
    assert set(strip_prefix(tensors, "head.")) == {"0.weight", "0.bias"}


@pytest.mark.parametrize("size, crop_pct, expected", [(224, 0.875, 256), (16, 1.0, 16), (10, 0.95, 11), (8, 2.0, 8)])
def test_the_evaluation_resize_is_one_formula_used_by_every_path(size, crop_pct, expected):
    pre = Preprocessing(crop_pct=crop_pct)
    assert pre.resize_for(size) == expected
    per_image = data.build_image_transform(pre, size, train=False, augment="none", flip=False)
    assert per_image.transforms[0].size == [expected]
    normalise = batches.Normalise(pre, torch.device("cpu"), channels_last=False)
    in_memory = batches.MemoryTransform(pre, size, train=False, augment="none", flip=False, normalise=normalise)
    assert in_memory.resize == expected


def test_atomic_file_replaces_whole_or_leaves_the_old_file(tmp_path):
    target = tmp_path / "state.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["state.bin"]
    with atomic_file(target, suffix=".pt2") as tmp:
        assert tmp.name.startswith(".state.bin.") and tmp.name.endswith(".tmp.pt2")
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and sorted(os.listdir(tmp_path)) == ["state.bin"]
    assert target.stat().st_mode & 0o777 == FILE_MODE


def test_cached_features_are_checked_against_the_runs_fingerprint(host, tiny_config, monkeypatch):
    checked = []
    original = feature_cache.CachedFeatures.check

    def check(self, key):
        checked.append((self.key, key))
        return original(self, key)

    monkeypatch.setattr(feature_cache.CachedFeatures, "check", check)
    fit(tiny_config(epochs=1, cache_features=True, freeze="backbone"), host)
    assert len(checked) == 2 and all(own == key and len(key) == 64 for own, key in checked)
