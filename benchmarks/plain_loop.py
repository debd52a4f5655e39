"""The baseline for benchmarks/speed.py: the fine-tuning loop users write by hand, after the PyTorch tutorial.

    python benchmarks/plain_loop.py --model resnet18 --data digits --image-size 64 --batch-size 64 --epochs 2 \
        --workers 0 --device cpu --seed 0

It follows the transfer-learning tutorial on purpose and is not tuned: a
torchvision model with its classifier replaced, a DataLoader of PIL images with
torchvision.transforms, fp32 (``.to(device)`` and nothing else on CUDA),
``loss.item()`` and ``torch.sum(preds == labels.data)`` at every step, SGD with
momentum and StepLR, a validation pass each epoch and the best weights kept by
``copy.deepcopy(model.state_dict())``. ``--freeze-backbone`` is the tutorial's
"ConvNet as fixed feature extractor": ``requires_grad = False`` on everything
but the new classifier.

Data (``--data``): ``digits`` (scikit-learn's, split exactly as tlcore's
``digits`` dataset splits it), ``imagefolder`` (``--data-dir`` with ``train/``
and ``val/`` class folders), ``cifar10`` (the python-version batch files in
``--data-dir``, held in memory as torchvision's CIFAR10 holds them) and
``synthetic`` (class-patterned random images made in memory from ``--seed``).

The last line printed is one JSON object: train images/s (images trained over
seconds spent in the training phases), val accuracy, wall seconds, per epoch too.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # before the heavy imports: wall_seconds counts them, as the user waits for them

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import pickle  # noqa: E402
import random  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.optim as optim  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset, Subset  # noqa: E402
from torchvision import datasets, models, transforms  # noqa: E402

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # the tutorial's ImageNet statistics
CROP_SCALE = (0.35, 1.0)  # tlcore's standard RandomResizedCrop scale, so both sides augment alike
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# -- data ----------------------------------------------------------------------


class ArrayImages(Dataset):
    """Images held in memory as a uint8 array (N, H, W[, C]), returned as PIL images, like torchvision's CIFAR10."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform=None, mode: str | None = None):
        self.images, self.labels, self.transform, self.mode = images, labels, transform, mode

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index], self.mode)
        if image.mode != "RGB":  # digits are grey: three identical channels, as tlcore converts them
            image = image.convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


def digits_arrays(val_fraction: float, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's digits as 8x8 uint8 images (0..16 scaled to 0..255), split as tlcore splits them."""
    from sklearn.datasets import load_digits
    from tlcore_datasets.split import stratified_split  # the same split function tlcore's digits dataset uses

    bunch = load_digits()
    images = np.rint(bunch.data * (255.0 / 16.0)).clip(0, 255).astype(np.uint8).reshape(-1, 8, 8)
    labels = bunch.target.astype(np.int64)
    train_idx, val_idx = stratified_split(labels, val_fraction, seed)
    return {"train": (images[train_idx], labels[train_idx]), "val": (images[val_idx], labels[val_idx])}


def synthetic_arrays(count: int, size: int, classes: int, seed: int, stream: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` random RGB images (count, size, size, 3) uint8 whose class shows as a coarse colour pattern.

    The class patterns depend on ``seed`` only; labels and noise on ``seed`` and
    ``stream``, so train, val and chunks generated apart share one set of
    classes. The pattern makes the data learnable (val accuracy shows that
    training works); the noise keeps the images distinct.
    """
    patterns = np.random.default_rng(seed % 2**63).integers(0, 256, size=(classes, 4, 4, 3)).astype(np.int16)
    rng = np.random.default_rng([seed % 2**63, stream])
    labels = rng.permutation(np.arange(count) % classes).astype(np.int64)
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    cell = -(-size // 4)
    for start in range(0, count, 4096):  # in chunks: the int16 intermediates of 50,000 images would be large
        chunk = labels[start : start + 4096]
        coarse = patterns[chunk].repeat(cell, axis=1).repeat(cell, axis=2)[:, :size, :size]
        noise = rng.integers(-64, 65, size=coarse.shape, dtype=np.int16)
        images[start : start + len(chunk)] = (coarse + noise).clip(0, 255).astype(np.uint8)
    return images, labels


def read_cifar_folder(root: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The python-version CIFAR-10 files, read the way torchvision.datasets.CIFAR10 reads them (HWC arrays).

    torchvision's class itself is not used because it checks the md5 of the
    official files, and the benchmark generates its own files of that format.
    """
    folder = os.path.join(root, CIFAR_FOLDER) if os.path.isdir(os.path.join(root, CIFAR_FOLDER)) else root
    splits = {}
    for split, names in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("val", ["test_batch"])):
        data, targets = [], []
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                entry = pickle.load(f, encoding="latin1")
            data.append(entry["data"])
            targets.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
        images = np.vstack(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))  # convert to HWC
        splits[split] = (np.ascontiguousarray(images), np.asarray(targets, dtype=np.int64))
    return splits


def build_transforms(image_size: int, flip: bool) -> dict[str, transforms.Compose]:
    """The tutorial's transforms: random crop (and flip) to train, resize and centre crop to validate."""
    train = [transforms.RandomResizedCrop(image_size, scale=CROP_SCALE)]
    if flip:
        train.append(transforms.RandomHorizontalFlip())
    resize = int(round(image_size * 256 / 224))  # the tutorial's Resize(256) + CenterCrop(224), at any size
    return {
        "train": transforms.Compose(train + [transforms.ToTensor(), transforms.Normalize(MEAN, STD)]),
        "val": transforms.Compose(
            [transforms.Resize(resize), transforms.CenterCrop(image_size), transforms.ToTensor(),
             transforms.Normalize(MEAN, STD)]
        ),
    }


def limited(arrays: tuple[np.ndarray, np.ndarray], limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``limit`` images of a split (all of them when limit is None)."""
    images, labels = arrays
    return (images[:limit], labels[:limit]) if limit else (images, labels)


def build_datasets(args) -> tuple[dict[str, Dataset], int]:
    """Train and val datasets of PIL images with their transforms, and the number of classes."""
    flip = args.data != "digits"  # a mirrored digit is another digit; tlcore does not flip them either
    data_transforms = build_transforms(args.image_size, flip)
    if args.data == "imagefolder":
        image_datasets = {x: datasets.ImageFolder(os.path.join(args.data_dir, x), data_transforms[x])
                          for x in ["train", "val"]}
        num_classes = len(image_datasets["train"].classes)
        if args.limit:  # the first images of each split
            image_datasets = {x: Subset(d, range(min(args.limit, len(d)))) for x, d in image_datasets.items()}
        return image_datasets, num_classes
    if args.data == "digits":
        arrays, mode, classes = digits_arrays(args.val_fraction, args.seed), "L", 10
    elif args.data == "cifar10":
        arrays, mode, classes = read_cifar_folder(args.data_dir), "RGB", 10
    else:  # synthetic
        arrays = {
            "train": synthetic_arrays(args.synthetic_train, args.synthetic_size, args.classes, args.seed, stream=0),
            "val": synthetic_arrays(args.synthetic_val, args.synthetic_size, args.classes, args.seed, stream=1),
        }
        mode, classes = "RGB", args.classes
    image_datasets = {x: ArrayImages(*limited(arrays[x], args.limit), data_transforms[x], mode) for x in ["train", "val"]}
    return image_datasets, classes


# -- model ---------------------------------------------------------------------


def replace_classifier(model: nn.Module, num_classes: int) -> nn.Module:
    """The tutorial's ``model.fc = nn.Linear(model.fc.in_features, n)``, for any torchvision classifier.

    ResNets have ``fc``; other families keep their last Linear elsewhere
    (``classifier[-1]``, ``heads.head``): the last Linear with 1000 outputs is replaced.
    """
    if isinstance(getattr(model, "fc", None), nn.Linear):
        model.fc = nn.Linear(model.fc.in_features, num_classes)
        return model.fc
    path = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == 1000][-1]
    parent_name, _, attribute = path.rpartition(".")
    parent = model.get_submodule(parent_name)
    new = nn.Linear(getattr(parent, attribute).in_features, num_classes)
    setattr(parent, attribute, new)
    return new


def build_model(name: str, num_classes: int, freeze_backbone: bool) -> tuple[nn.Module, list[nn.Parameter]]:
    """A torchvision model without pretrained weights, its classifier replaced; and the parameters to optimise."""
    model = models.get_model(name, weights=None)
    if freeze_backbone:  # "ConvNet as fixed feature extractor": only the new classifier trains
        for param in model.parameters():
            param.requires_grad = False
    classifier = replace_classifier(model, num_classes)  # new parameters have requires_grad=True by default
    return model, list(classifier.parameters()) if freeze_backbone else list(model.parameters())


# -- training --------------------------------------------------------------------


def train_model(model, criterion, optimizer, scheduler, dataloaders, dataset_sizes, device, num_epochs):
    """The tutorial's train_model, timing the training phase of every epoch; returns the best model and epochs."""
    best_model_wts = copy.deepcopy(model.state_dict())
    best_acc = 0.0
    history = []

    for epoch in range(num_epochs):
        epoch_started = time.perf_counter()
        record = {"epoch": epoch + 1}
        # Each epoch has a training and validation phase
        for phase in ["train", "val"]:
            if phase == "train":
                model.train()  # Set model to training mode
            else:
                model.eval()  # Set model to evaluate mode
            phase_started = time.perf_counter()

            running_loss = 0.0
            running_corrects = 0

            # Iterate over data.
            for inputs, labels in dataloaders[phase]:
                inputs = inputs.to(device)
                labels = labels.to(device)

                # zero the parameter gradients
                optimizer.zero_grad()

                # forward; track history if only in train
                with torch.set_grad_enabled(phase == "train"):
                    outputs = model(inputs)
                    _, preds = torch.max(outputs, 1)
                    loss = criterion(outputs, labels)

                    # backward + optimize only if in training phase
                    if phase == "train":
                        loss.backward()
                        optimizer.step()

                # statistics
                running_loss += loss.item() * inputs.size(0)
                running_corrects += torch.sum(preds == labels.data)

            if phase == "train":
                scheduler.step()
                if device.type == "cuda":
                    torch.cuda.synchronize()  # .item() has synchronised already; this only makes the timing exact
                record["train_seconds"] = time.perf_counter() - phase_started
                record["images_per_second"] = dataset_sizes["train"] / record["train_seconds"]

            epoch_loss = running_loss / dataset_sizes[phase]
            epoch_acc = running_corrects.double().item() / dataset_sizes[phase]
            record[f"{phase}_loss"], record[f"{phase}_acc"] = epoch_loss, epoch_acc
            print(f"epoch {epoch + 1}/{num_epochs} {phase} Loss: {epoch_loss:.4f} Acc: {epoch_acc:.4f}", flush=True)

            # deep copy the model
            if phase == "val" and epoch_acc > best_acc:
                best_acc = epoch_acc
                best_model_wts = copy.deepcopy(model.state_dict())

        record["seconds"] = time.perf_counter() - epoch_started
        history.append(record)

    # load best model weights
    model.load_state_dict(best_model_wts)
    return model, history


def pick_device(name: str) -> torch.device:
    """``auto`` is the tutorial's choice: the first GPU if there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The settings shared with the tlcore side of the benchmark, plus where the data is."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18", help="any torchvision classification model name")
    parser.add_argument("--data", choices=["digits", "imagefolder", "cifar10", "synthetic"], default="digits")
    parser.add_argument("--data-dir", help="imagefolder: holds train/ and val/; cifar10: holds cifar-10-batches-py/")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--step-size", type=int, default=7, help="StepLR: epochs between decays")
    parser.add_argument("--gamma", type=float, default=0.1, help="StepLR: decay factor")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="digits: share held out, as tlcore's default")
    parser.add_argument("--freeze-backbone", action="store_true", help="train only the new classifier")
    parser.add_argument("--limit", type=int, help="use at most this many images of each split (for tests)")
    parser.add_argument("--synthetic-train", type=int, default=10_000, help="synthetic: training images")
    parser.add_argument("--synthetic-val", type=int, default=2_000, help="synthetic: validation images")
    parser.add_argument("--synthetic-size", type=int, default=32, help="synthetic: stored image side in pixels")
    parser.add_argument("--classes", type=int, default=10, help="synthetic: number of classes")
    args = parser.parse_args(argv)
    if args.data in ("imagefolder", "cifar10") and not args.data_dir:
        parser.error(f"--data {args.data} needs --data-dir")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Train as configured, print the per-epoch lines and the final JSON line; return that result."""
    args = parse_args(argv)
    random.seed(args.seed)
    np.random.seed(args.seed % 2**32)
    torch.manual_seed(args.seed)
    device = pick_device(args.device)

    image_datasets, num_classes = build_datasets(args)
    dataloaders = {
        x: DataLoader(image_datasets[x], batch_size=args.batch_size, shuffle=(x == "train"), num_workers=args.workers)
        for x in ["train", "val"]
    }
    dataset_sizes = {x: len(image_datasets[x]) for x in ["train", "val"]}

    model, params = build_model(args.model, num_classes, args.freeze_backbone)
    model = model.to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(params, lr=args.lr, momentum=args.momentum)
    # Decay LR by a factor of gamma every step_size epochs
    scheduler = optim.lr_scheduler.StepLR(optimizer, step_size=args.step_size, gamma=args.gamma)

    model, history = train_model(model, criterion, optimizer, scheduler, dataloaders, dataset_sizes, device, args.epochs)

    train_seconds = sum(r["train_seconds"] for r in history)
    result = {
        "side": "plain",
        "model": args.model,
        "data": args.data,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "workers": args.workers,
        "device": str(device),
        "seed": args.seed,
        "train_images": dataset_sizes["train"],
        "val_images": dataset_sizes["val"],
        "train_seconds": train_seconds,
        "train_images_per_second": dataset_sizes["train"] * args.epochs / train_seconds,
        "val_acc": history[-1]["val_acc"],
        "best_val_acc": max(r["val_acc"] for r in history),
        "per_epoch": history,
        "wall_seconds": time.perf_counter() - STARTED,
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
