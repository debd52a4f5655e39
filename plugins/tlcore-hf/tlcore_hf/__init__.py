"""tlcore-hf: train tlcore on a Hugging Face dataset saved on disk.

Installed, it is found through the ``tlcore`` entry-point group as ``hf``. It
registers one dataset, ``hf``, and its options (through
``tlcore_register_options``): ``--hf-image-column``, ``--hf-label-column``,
``--hf-split``, ``--hf-val-split`` and ``--hf-test-split``. Nothing is
downloaded: ``--data-dir`` is a folder written by ``save_to_disk`` or a folder
of parquet files (see :mod:`tlcore_hf.dataset`).
"""

from __future__ import annotations

from tlcore import Register, hookimpl

__version__ = "0.1.0"
TLCORE_API = ">=1.1,<2"  # 1.1 added tlcore_register_options

__all__ = ["load_hf", "tlcore_register_datasets", "tlcore_register_options"]


def load_hf(name, options):
    """Dataset factory for ``hf`` (imports ``datasets`` only when a run builds the dataset)."""
    from tlcore_hf.dataset import load_hf as load

    return load(name, options)


@hookimpl
def tlcore_register_datasets(register: Register) -> None:
    """Register the ``hf`` dataset."""
    register(
        "hf",
        load_hf,
        description="a Hugging Face dataset on disk in --data-dir (save_to_disk folder or parquet files); "
        "columns --hf-image-column, --hf-label-column",
    )


@hookimpl
def tlcore_register_options(register) -> None:
    """The hf dataset's options: which columns hold the images and labels, and which splits to use."""
    register("hf_image_column", default="image", help="hf dataset: the column holding the images")
    register("hf_label_column", default="label", help="hf dataset: the column holding the labels")
    register("hf_split", default="train", help="hf dataset: the split to train on")
    register(
        "hf_val_split",
        kind=str,
        help="hf dataset: the validation split (default: validation, val or valid where the dataset has one, "
        "else a seeded stratified share of the training split)",
    )
    register("hf_test_split", default="test", help="hf dataset: the test split, used where the dataset has it")
