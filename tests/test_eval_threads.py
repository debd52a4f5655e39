"""`tlcore eval` on the CPU shares the cores by the thread budget of training, not up to 8 DataLoader workers."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from tlcore import evaluation, threads
from tlcore.dataset import DatasetSplits
from tlcore.evaluation import evaluate_checkpoint, loader_workers
from tlcore.hookspecs import hookimpl
from tlcore.testing import shapes_dataset


class PngFiles(torch.utils.data.Dataset):
    """A split written as PNG files, listed as (path, label) ``samples`` like an ImageFolder."""

    def __init__(self, root, images: torch.Tensor, labels: torch.Tensor):
        root.mkdir(parents=True, exist_ok=True)
        self.samples = []
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            path = root / f"{index:03d}.png"
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
            self.samples.append((str(path), int(label)))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        with Image.open(path) as image:
            return image.convert("RGB"), label


@pytest.fixture
def files_run(tmp_path, host, tiny_config):
    """A one-epoch tiny run, and a dataset ``test:shapes-files``: its images as PNG files."""
    from tlcore.train import fit

    data = shapes_dataset()

    class FilesPlugin:
        @hookimpl
        def tlcore_register_datasets(self, register):
            def files(name, options):
                train = PngFiles(tmp_path / "train", data.train.images[:4], data.train.labels[:4])
                return DatasetSplits(list(data.classes), train, PngFiles(tmp_path / "val", data.val.images, data.val.labels))

            register("test:shapes-files", files)

    host.register(FilesPlugin(), "files")
    return fit(tiny_config(epochs=1, callbacks="-progress"), host)


def test_eval_of_image_files_takes_its_workers_from_the_thread_budget(files_run, monkeypatch):
    chosen = []
    real = evaluation.make_loader

    def spy(dataset, batch_size, sampler, workers, **kwargs):
        chosen.append(workers)
        return real(dataset, batch_size, sampler, workers, **kwargs)

    monkeypatch.setattr(evaluation, "make_loader", spy)
    before = torch.get_num_threads()
    report = evaluate_checkpoint(files_run.output_dir, dataset="test:shapes-files", split="val", device="cpu")
    assert report.metrics.images == 12
    val = report.data
    expected = threads.plan_budget(val, 16, "cpu", before, None).workers
    # the process keeps its one thread (conftest), so the workers get the cores left: fewer than the old default
    # of min(8, cores) workers whatever the data and the threads
    assert chosen == [expected] and expected < min(8, threads.available_cores())
    assert torch.get_num_threads() == before  # a library call keeps the process's own thread count


def test_the_tlcore_command_sets_torchs_threads_to_what_the_workers_leave(tmp_path, monkeypatch):
    data = shapes_dataset()
    files = PngFiles(tmp_path, data.val.images, data.val.labels)
    before = torch.get_num_threads()
    monkeypatch.setitem(threads._owned, "process", True)  # as `tlcore eval` declares
    monkeypatch.setenv("OMP_NUM_THREADS", "")
    try:
        workers = loader_workers(files, 16, torch.device("cpu"), None)
        budget = threads.plan_budget(files, 16, "cpu")
        assert workers == budget.workers and torch.get_num_threads() == budget.threads
        assert loader_workers(files, 16, torch.device("cpu"), 1) == 1  # --workers is kept
        assert torch.get_num_threads() == max(1, threads.available_cores() - 1)
    finally:
        torch.set_num_threads(before)
