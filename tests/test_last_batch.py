"""A last batch of one image joins the one before it, the same way in every pipeline, resumed or not."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from tlcore.batches import MemoryBatches
from tlcore.data import EpochSampler, batch_bounds, batch_count, collate_skipping, make_loader


@pytest.mark.parametrize(
    ("count", "size", "bounds"),
    [
        (9, 8, [(0, 9)]),
        (17, 8, [(0, 8), (8, 17)]),
        (10, 8, [(0, 8), (8, 10)]),
        (16, 8, [(0, 8), (8, 16)]),
        (1, 8, [(0, 1)]),  # one image in all: nothing to join
        (0, 8, []),
        (3, 1, [(0, 1), (1, 2), (2, 3)]),  # batches of one were asked for
    ],
)
def test_batch_bounds(count, size, bounds):
    assert batch_bounds(count, size) == bounds
    assert batch_count(count, size) == len(bounds)


def test_batch_count_agrees_with_the_bounds_everywhere():
    for count in range(0, 70):
        for size in range(1, 12):
            assert batch_count(count, size) == len(batch_bounds(count, size)), (count, size)


class Numbers(Dataset):
    def __len__(self):
        return 17

    def __getitem__(self, key):
        index = key[1] if isinstance(key, tuple) else key
        return torch.full((3, 2, 2), index, dtype=torch.uint8), index


def loader_batches(sampler):
    return [
        labels.tolist()
        for _, labels, _ in make_loader(Numbers(), 8, sampler, 0, pin_memory=False, collate_fn=collate_skipping)
    ]


def memory_batches(sampler):
    images = torch.arange(17, dtype=torch.uint8).view(17, 1, 1, 1).expand(17, 3, 2, 2).contiguous()
    source = MemoryBatches(images, torch.arange(17), sampler, 8, torch.device("cpu"), None)
    batches = [labels.tolist() for _, labels, _ in source]
    assert len(source) == len(batches)
    return batches


@pytest.mark.parametrize("cut", [loader_batches, memory_batches])
def test_both_pipelines_cut_the_same_and_resume_exactly(cut):
    sampler = EpochSampler(17, seed=3)
    sampler.set_epoch(2)
    whole = cut(sampler)
    assert [len(batch) for batch in whole] == [8, 9]  # 17 = 8 + 9, not 8 + 8 + 1
    assert sorted(sum(whole, [])) == list(range(17))  # every image once
    sampler.set_epoch(2, start=8)  # resumed after the first step
    assert cut(sampler) == whole[1:]
    assert cut(None) == [list(range(8)), list(range(8, 17))]  # dataset order


def test_the_loader_reports_its_sampler_and_length():
    from tlcore.batches import LoaderBatches, Normalise
    from tlcore.testing import tiny_backbone

    sampler = EpochSampler(17, seed=0)
    loader = make_loader(Numbers(), 8, sampler, 0, pin_memory=False, collate_fn=collate_skipping)
    source = LoaderBatches(
        loader, Normalise(tiny_backbone().preprocessing, torch.device("cpu"), channels_last=False), torch.device("cpu")
    )
    assert source.sampler is sampler and len(source) == 2
