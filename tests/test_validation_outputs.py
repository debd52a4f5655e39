"""What the loop keeps of a validation pass (RunState.last_validation), and when it keeps nothing."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from tlcore.distributed import Distributed
from tlcore.loop import evaluate, keeps_validation, validation_outputs
from tlcore.state import KEEP_VALIDATION_MAX
from tlcore.testing import shapes_dataset


def fake_run(world_size: int = 1, epoch: int = 2) -> SimpleNamespace:
    splits = shapes_dataset()
    place = Distributed(rank=0, world_size=world_size)
    config = SimpleNamespace(task="multiclass")
    return SimpleNamespace(splits=splits, classes=splits.classes, place=place, epoch=epoch, config=config)


def batches(images: torch.Tensor, labels: torch.Tensor, size: int = 5):
    return [(images[i : i + size], labels[i : i + size], []) for i in range(0, len(labels), size)]


def test_the_kept_logits_are_the_passes_in_split_order():
    run = fake_run()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 2))
    images, labels = run.splits.val.images.float() / 255, run.splits.val.labels
    kept: list = []
    loss_sum, correct, seen = evaluate(model, batches(images, labels), torch.device("cpu"), None, kept=kept)
    held = validation_outputs(run, kept, seen)
    with torch.no_grad():
        expected = model(images)
    assert held.epoch == 3 and held.indices.tolist() == list(range(12)) and held.labels.tolist() == labels.tolist()
    assert held.logits.dtype == torch.float32 and torch.allclose(held.logits, expected, atol=1e-6)
    assert int(correct) == int((expected.argmax(1) == labels).sum())
    assert not held.logits.is_inference()  # usable in autograd: a temperature is fitted on them


def test_nothing_is_kept_where_positions_or_the_whole_split_are_unknown():
    run = fake_run()
    kept = [(torch.zeros(5, 2), torch.zeros(5, dtype=torch.int64))]
    assert validation_outputs(run, kept, 5) is None  # 7 of the 12 images were unreadable: positions unknown
    assert validation_outputs(run, [], 0) is None and validation_outputs(run, None, 12) is None
    assert keeps_validation(run)
    assert not keeps_validation(fake_run(world_size=2))  # each process scores a shard
    big = fake_run()
    big.classes = ["c"] * (KEEP_VALIDATION_MAX // 12 + 1)  # over the cap: not kept
    assert not keeps_validation(big)
