"""The peer sides of benchmarks/recipes.py: fastai's and timm's default fine-tuning recipes on an ImageFolder.

    PEER_PYTHON benchmarks/peer_recipes.py --tool fastai|timm --data-dir DIR --weights FILE \
        --epochs 10 --image-size 64 --seed 0

Run by the interpreter of the environment ``recipes.py --setup-peers`` makes
(fastai and timm are not tlcore dependencies; nothing here imports tlcore).
The data is ``DIR/train/<class>`` and ``DIR/val/<class>``. Both tools build
``timm``'s ``tf_efficientnet_lite0`` with ImageNet weights read from
``--weights``, a ``.pth`` state dict keyed like timm's 1000-class model (which
recipes.py writes with tlcore's own loader, so every side starts from the same
tensors), through timm's ``pretrained_cfg_overlay=dict(file=...)``: the way
timm's train.py ``--pretrained-path`` and fastai's ``vision_learner(arch_name,
**kwargs)`` load a local file. The pretrained classifier is dropped by timm
because the class count differs.

fastai: ``ImageDataLoaders.from_folder(item_tfms=Resize(size),
batch_tfms=aug_transforms())``, ``vision_learner(dls, 'tf_efficientnet_lite0',
metrics=accuracy)`` (normalised with the model's statistics, fastai's head),
then ``fine_tune(epochs - 1, base_lr=2e-3)``: fastai's default base rate, and
one frozen epoch plus ``epochs - 1`` unfrozen ones, so the number of passes
equals the other sides' ``epochs``. Batch size 64 (fastai's default).

Both tools drop the last partial training batch, so a batch larger than the
training set would never train (timm's 128 at 10 images per class); for both,
the default batch is halved while an epoch would have fewer than two steps
(fastai 32 and timm 32 at 100 images; the defaults elsewhere).

timm: the recipe of timm's train.py at its defaults with ``--opt adamw --lr
2e-3 --pretrained-path FILE --img-size SIZE --epochs E`` (train.py itself is
not in timm's wheel; this script calls the same library functions with the
same values, read from train.py's argument defaults): ``create_loader`` with
``is_training=True`` (RandomResizedCrop scale 0.08-1, flip 0.5, colour jitter
0.4, random interpolation, no auto-augment, no random erasing, last partial
batch dropped), batch size 128, ``create_optimizer_v2('adamw', lr=2e-3,
weight_decay=2e-5)``, ``create_scheduler_v2`` cosine stepped per epoch with
train.py's 5 warm-up epochs from 1e-5 and min_lr 0, and
``LabelSmoothingCrossEntropy(0.1)``; validation through ``create_loader(
is_training=False)`` (the model's crop_pct and interpolation). Where the
training set has fewer images than the batch, a dropped last batch would leave
no step at all, so the batch is halved until an epoch has at least two steps.

The last line printed is one JSON object: ``val_acc`` after the last epoch,
``best_val_acc``, ``history`` (per epoch) and ``wall_seconds``.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

ARCH = "tf_efficientnet_lite0"
FASTAI_BASE_LR = 2e-3  # Learner.fine_tune's default base_lr
FASTAI_BATCH = 64  # ImageDataLoaders' default bs
TIMM_LR = 2e-3
TIMM_BATCH = 128  # train.py --batch-size default
TIMM_WEIGHT_DECAY = 2e-5  # train.py --weight-decay default
TIMM_WARMUP_EPOCHS = 5  # train.py --warmup-epochs default
TIMM_WARMUP_LR = 1e-5  # train.py --warmup-lr default
TIMM_SMOOTHING = 0.1  # train.py --smoothing default


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Settings shared with recipes.py's tlcore side."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tool", required=True, choices=["fastai", "timm"])
    parser.add_argument("--data-dir", required=True, type=Path, help="holds train/ and val/ class folders")
    parser.add_argument("--weights", required=True, type=Path, help="Lite0 ImageNet state dict keyed like timm's")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch compute threads (default: torch's)")
    return parser.parse_args(argv)


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def overlay(weights: Path) -> dict:
    """timm's way to load pretrained weights from a local file (train.py's --pretrained-path)."""
    return {"file": str(weights)}


def fit_batch(default: int, images: int) -> int:
    """The tool's default batch, halved while an epoch would have fewer than two steps (both drop the last
    partial batch, so a batch over the training set's size would never train)."""
    batch = default
    while batch > 1 and images // batch < 2:
        batch //= 2
    return batch


def run_fastai(args: argparse.Namespace) -> dict:
    """vision_learner + fine_tune at fastai's defaults; per-epoch val accuracy from the recorder of both fits."""
    from fastai.vision.all import (
        Callback,
        ImageDataLoaders,
        Resize,
        accuracy,
        aug_transforms,
        get_image_files,
        set_seed,
        vision_learner,
    )

    class KeepHistory(Callback):
        """fine_tune calls fit twice and the recorder restarts with each; keep every epoch's row."""

        order = 60  # after the Recorder (50) has written the epoch's values

        def __init__(self):
            self.rows = []

        def after_epoch(self):
            self.rows.append([float(v) for v in self.learn.final_record[:3]])  # train_loss, valid_loss, accuracy

    set_seed(args.seed, reproducible=True)
    batch = fit_batch(FASTAI_BATCH, len(get_image_files(args.data_dir / "train")))
    dls = ImageDataLoaders.from_folder(args.data_dir, train="train", valid="val", item_tfms=Resize(args.image_size),
                                       batch_tfms=aug_transforms(), bs=batch, num_workers=0, device="cpu")
    learn = vision_learner(dls, ARCH, metrics=accuracy, pretrained=True, pretrained_cfg_overlay=overlay(args.weights))
    keep = KeepHistory()
    learn.add_cb(keep)
    learn.fine_tune(args.epochs - 1, base_lr=FASTAI_BASE_LR, freeze_epochs=1)
    history = [{"epoch": i + 1, "val_loss": row[1], "val_acc": row[2]} for i, row in enumerate(keep.rows)]
    return {"history": history, "batch_size": batch}


def run_timm(args: argparse.Namespace) -> dict:
    """train.py's default recipe with --opt adamw --lr 2e-3, through timm's own factories."""
    import timm
    from timm.data import create_dataset, create_loader, resolve_data_config
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    seed_everything(args.seed)
    classes = sum(1 for path in (args.data_dir / "train").iterdir() if path.is_dir())  # train.py's --num-classes
    model = timm.create_model(ARCH, pretrained=True, num_classes=classes, pretrained_cfg_overlay=overlay(args.weights))
    train_set = create_dataset("", root=str(args.data_dir), split="train", is_training=True)
    val_set = create_dataset("", root=str(args.data_dir), split="val")
    data_config = resolve_data_config({"img_size": args.image_size}, model=model)
    batch = fit_batch(TIMM_BATCH, len(train_set))
    common = dict(input_size=data_config["input_size"], mean=data_config["mean"], std=data_config["std"],
                  use_prefetcher=False, num_workers=0, device=torch.device("cpu"))
    train_loader = create_loader(train_set, batch_size=batch, is_training=True, scale=[0.08, 1.0], hflip=0.5,
                                 color_jitter=0.4, auto_augment=None, re_prob=0.0, interpolation="random", **common)
    val_loader = create_loader(val_set, batch_size=batch, is_training=False, interpolation=data_config["interpolation"],
                               crop_pct=data_config["crop_pct"], **common)
    optimizer = create_optimizer_v2(model, "adamw", lr=TIMM_LR, weight_decay=TIMM_WEIGHT_DECAY, momentum=0.9)
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=args.epochs, warmup_epochs=TIMM_WARMUP_EPOCHS,
                                       warmup_lr=TIMM_WARMUP_LR, min_lr=0.0, cooldown_epochs=0, step_on_epochs=True)
    loss_fn = LabelSmoothingCrossEntropy(smoothing=TIMM_SMOOTHING)
    history = []
    for epoch in range(args.epochs):
        model.train()
        for images, targets in train_loader:
            loss = loss_fn(model(images), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for images, targets in val_loader:
                correct += (model(images).argmax(1) == targets).sum().item()
                total += len(targets)
        history.append({"epoch": epoch + 1, "val_acc": correct / total, "lr": optimizer.param_groups[0]["lr"]})
        scheduler.step(epoch + 1)  # as train.py: after the epoch, with the next epoch's index
    return {"history": history, "batch_size": batch}


def main(argv: list[str] | None = None) -> dict:
    """Run one tool's recipe and print its JSON result line."""
    args = parse_args(argv)
    if args.epochs < 1 or args.image_size < 16:
        raise SystemExit("peer_recipes: error: --epochs must be >= 1 and --image-size >= 16")
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run_fastai(args) if args.tool == "fastai" else run_timm(args)
    history = result["history"]
    result.update(tool=args.tool, val_acc=history[-1]["val_acc"], best_val_acc=max(h["val_acc"] for h in history),
                  wall_seconds=time.perf_counter() - STARTED)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
