"""The fastai side of benchmarks/speed.py: ``vision_learner`` + ``fit_one_cycle`` on an ImageFolder, as in fastai's docs.

    FASTAI_PYTHON benchmarks/fastai_loop.py --model resnet18 --data-dir DIR --image-size 64 --batch-size 64 \
        --epochs 2 --workers 0 --device cpu --seed 0

Run by an interpreter that has fastai (speed.py's ``--fastai-python``, or the
virtual environment ``--fastai-venv`` makes; fastai is not a tlcore
dependency). The data is ``DIR/train/<class>`` and ``DIR/val/<class>``, split
by folder (``GrandparentSplitter``); items are cropped by fastai's
RandomResizedCrop (scale 0.35-1 as the other sides; the centre on validation),
flipped and normalised with ImageNet statistics on the batch; the torchvision
model has no pretrained weights and gets fastai's head; one-cycle schedule with
peak rate ``--lr``; fastai's own defaults otherwise (Adam, mixed precision off).

The last line printed is one JSON object in the plain loop's format: train
images/s per epoch (images over the seconds of the training phase), val
accuracy, wall seconds.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # before the heavy imports: the user waits for them too

import argparse  # noqa: E402
import json  # noqa: E402

import torch  # noqa: E402
from fastai.vision.all import (  # noqa: E402
    Callback,
    Flip,
    ImageDataLoaders,
    Normalize,
    RandomResizedCrop,
    accuracy,
    imagenet_stats,
    set_seed,
    vision_learner,
)
from torchvision import models  # noqa: E402


class PhaseTimer(Callback):
    """Seconds and images of each epoch's training phase, and the seconds of the whole epoch."""

    order = 100

    def before_fit(self):
        self.epochs = []

    def before_epoch(self):
        self.epoch_started = time.perf_counter()

    def after_epoch(self):  # after validation: the epoch's whole seconds
        self.epochs[-1]["seconds"] = time.perf_counter() - self.epoch_started

    def before_train(self):
        self.images, self.started = 0, time.perf_counter()

    def after_batch(self):
        if self.training:
            self.images += len(self.yb[0])

    def after_train(self):
        if torch.cuda.is_available() and self.dls.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - self.started
        self.epochs.append({"epoch": len(self.epochs) + 1, "train_seconds": seconds, "images": self.images,
                            "images_per_second": self.images / seconds})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The settings shared with the other sides of the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18", help="a torchvision model name")
    parser.add_argument("--data-dir", required=True, help="holds train/ and val/ class folders")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3, help="fit_one_cycle's peak rate")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Train as configured and print the closing JSON line; return it."""
    args = parse_args(argv)
    set_seed(args.seed, reproducible=True)
    device = torch.device(args.device)
    dls = ImageDataLoaders.from_folder(
        args.data_dir, train="train", valid="val", seed=args.seed, bs=args.batch_size, num_workers=args.workers,
        item_tfms=RandomResizedCrop(args.image_size, min_scale=0.35),
        batch_tfms=[Flip(), Normalize.from_stats(*imagenet_stats)], device=device,
    )
    timer = PhaseTimer()
    learn = vision_learner(dls, getattr(models, args.model), pretrained=False, metrics=accuracy, cbs=[timer])
    with learn.no_bar():
        learn.fit_one_cycle(args.epochs, args.lr)
    values = learn.recorder.values  # per epoch: train loss, valid loss, accuracy
    per_epoch = [{**epoch, "val_acc": float(v[2])} for epoch, v in zip(timer.epochs, values, strict=True)]
    train_seconds = sum(e["train_seconds"] for e in per_epoch)
    result = {
        "side": "fastai", "model": args.model, "image_size": args.image_size, "batch_size": args.batch_size,
        "epochs": args.epochs, "workers": args.workers, "device": str(device), "seed": args.seed,
        "train_images": len(dls.train_ds), "val_images": len(dls.valid_ds), "train_seconds": train_seconds,
        "train_images_per_second": sum(e["images"] for e in per_epoch) / train_seconds,
        "val_acc": per_epoch[-1]["val_acc"], "per_epoch": per_epoch, "wall_seconds": time.perf_counter() - STARTED,
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
