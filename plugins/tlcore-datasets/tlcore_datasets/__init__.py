"""tlcore-datasets: CIFAR-10, CIFAR-100, image folders and scikit-learn's digits for tlcore.

Installed, it is found through the ``tlcore`` entry-point group; the only hook
is :func:`tlcore_register_datasets`.
"""

from __future__ import annotations

from tlcore.hookspecs import hookimpl
from tlcore.registry import Register
from tlcore_datasets.cifar import default_data_dir, load_cifar10, load_cifar100
from tlcore_datasets.digits import load_digits_dataset
from tlcore_datasets.imagefolder import ImageFileDataset, load_imagefolder

__version__ = "0.1.0"

__all__ = [
    "ImageFileDataset",
    "default_data_dir",
    "load_cifar10",
    "load_cifar100",
    "load_digits_dataset",
    "load_imagefolder",
    "tlcore_register_datasets",
]


@hookimpl
def tlcore_register_datasets(register: Register) -> None:
    """Register cifar10, cifar100, imagefolder and digits."""
    register(
        "cifar10",
        load_cifar10,
        description="CIFAR-10: 32x32 colour images, 10 classes, 50k train / 10k test "
        "(python-version files in --data-dir, downloaded if missing)",
    )
    register(
        "cifar100",
        load_cifar100,
        description="CIFAR-100: 32x32 colour images, 100 fine classes, 50k train / 10k test "
        "(python-version files in --data-dir, downloaded if missing)",
    )
    register(
        "imagefolder",
        load_imagefolder,
        description="your images in --data-dir: train/<class>/*, optional val/<class>/* (else a seeded split)",
    )
    register(
        "digits",
        load_digits_dataset,
        description="scikit-learn's handwritten digits: 1,797 8x8 grey images, 10 classes, no download",
    )
