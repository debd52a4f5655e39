"""tlcore-datasets: CIFAR-10, CIFAR-100, image folders, CSV manifests and scikit-learn's digits for tlcore.

Installed, it is found through the ``tlcore`` entry-point group; its hooks are
:func:`tlcore_register_datasets` and :func:`tlcore_register_options` (the csv dataset's column options).
"""

from __future__ import annotations

import importlib

from tlcore import Register, hookimpl

__version__ = "0.1.0"

# Public names and the module that defines them: imported on first use (PEP 562), because those modules import
# torch, numpy and PIL, which loading the plugin (every tlcore command, --help included) must not pay for.
_LAZY = {
    "default_data_dir": "tlcore_datasets.cifar",
    "load_cifar10": "tlcore_datasets.cifar",
    "load_cifar100": "tlcore_datasets.cifar",
    "load_digits_dataset": "tlcore_datasets.digits",
    "ImageFileDataset": "tlcore_datasets.imagefolder",
    "load_imagefolder": "tlcore_datasets.imagefolder",
    "load_csv": "tlcore_datasets.csvdata",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tlcore_datasets' has no attribute {name!r}")


def _loader(name: str):
    """A dataset factory that imports ``name``'s module when the dataset is built, not when it is registered."""

    def load(*args, **kwargs):
        return __getattr__(name)(*args, **kwargs)

    load.__name__ = load.__qualname__ = name
    load.__doc__ = f"Imports {_LAZY[name]} and calls its {name}."
    return load

__all__ = [
    "ImageFileDataset",
    "default_data_dir",
    "load_cifar10",
    "load_cifar100",
    "load_digits_dataset",
    "load_csv",
    "load_imagefolder",
    "tlcore_register_datasets",
    "tlcore_register_options",
]


@hookimpl
def tlcore_register_datasets(register: Register) -> None:
    """Register cifar10, cifar100, imagefolder, csv and digits."""
    register(
        "cifar10",
        _loader("load_cifar10"),
        description="CIFAR-10: 32x32 colour images, 10 classes, 50k train / 10k test "
        "(python-version files in --data-dir, downloaded if missing)",
    )
    register(
        "cifar100",
        _loader("load_cifar100"),
        description="CIFAR-100: 32x32 colour images, 100 fine classes, 50k train / 10k test "
        "(python-version files in --data-dir, downloaded if missing)",
    )
    register(
        "imagefolder",
        _loader("load_imagefolder"),
        description="your images in --data-dir: train/<class>/*, optional val/<class>/* (else a seeded split); "
        "--task multilabel: train/, val/ images listed in labels.csv (image,label)",
    )
    register(
        "csv",
        _loader("load_csv"),
        description="images listed in --data-dir/train.csv (columns image,label; see --image-column, "
        "--label-column), optional val.csv (else a seeded split) and test.csv; --task multilabel: several "
        "labels per cell",
    )
    register(
        "digits",
        _loader("load_digits_dataset"),
        description="scikit-learn's handwritten digits: 1,797 8x8 grey images, 10 classes, no download",
    )


@hookimpl
def tlcore_register_options(register) -> None:
    """The csv dataset's column names: ``--image-column`` and ``--label-column``."""
    register(
        "image_column", default="image", help="csv dataset (and imagefolder's labels.csv): the column holding image paths"
    )
    register("label_column", default="label", help="csv dataset (and imagefolder's labels.csv): the column holding labels")
