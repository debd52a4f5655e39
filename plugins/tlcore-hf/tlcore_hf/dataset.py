"""The ``hf`` dataset: a Hugging Face dataset saved on disk, read with the ``datasets`` library.

``--data-dir`` is either

- a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``
  (read with ``datasets.load_from_disk``; a single Dataset is the training split), or
- a folder of parquet files named by split as the Hub lays them out
  (``train-00000-of-00001.parquet``, ``data/validation-*.parquet``, ``test/*.parquet``;
  read with ``datasets.load_dataset("parquet", data_dir=...)``, which finds the splits).

The training split is ``--hf-split`` (``train``); validation is
``--hf-val-split`` when given, else a split named validation, val or valid,
else a seeded stratified share (``--val-fraction``) of training; the test split
is ``--hf-test-split`` (``test``) where the dataset has it. The image column
(``--hf-image-column``) must be an ``Image`` feature; its files are decoded by
:func:`tlcore.open_image` (never by ``datasets``), so an undecodable image is a
DataError naming the split and row, skipped by the loop like any dataset's.
The label column (``--hf-label-column``) is a ``ClassLabel`` (its names are the
classes, in its order) or plain integers or text (the classes are the sorted
distinct values of the training split). Nothing is downloaded: only local
folders are read, with ``HF_DATASETS_OFFLINE`` left as the user set it.

Multi-label (``DatasetOptions.multilabel``, ``--task multilabel``): the label
column holds a list of labels per row: a ``Sequence`` (``List``) of
``ClassLabel`` (its names are the classes), of integers or of text (the
sorted distinct training values), or text cells naming several classes
separated by whitespace, ``;`` or ``|`` (:func:`tlcore.multilabel.split_labels`).
Each label is a float32 multi-hot row ``[C]``, ``targets`` is ``[N, C]``; a
row without any label is an error naming the split, row and column. Without a
validation split, a seeded share is held out by iterative stratification that
keeps every label in training. A single-label run refuses a column of lists.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tlcore import DataError, DatasetOptions, DatasetSplits, multi_hot, multilabel_split, open_image, split_labels

VAL_NAMES = ("validation", "val", "valid")
LAYOUT = "a folder written by save_to_disk, or parquet files named by split (train-*.parquet, validation-*.parquet)"


class HFImageDataset(Dataset):
    """``(PIL image, label)`` from rows of a ``datasets.Dataset`` whose image column is not decoded by datasets.

    ``labels[i]`` is the label of row ``rows[i]`` of ``table``: a class index,
    or for multi-label data row ``i`` of a float32 multi-hot tensor ``[N, C]``.
    Pickles into DataLoader workers as the Arrow dataset does (memory-mapped files).
    """

    def __init__(self, table: Any, image_column: str, rows: list[int], labels: list[int] | torch.Tensor, where: str):
        self.table = table
        self.image_column = image_column
        self.rows = rows
        self.labels = labels
        self.where = where  # "<data dir> split train", for messages

    @property
    def targets(self) -> list[int] | torch.Tensor:
        """The label of every item, without decoding images: ints, or float32 ``[N, C]`` multi-hot rows."""
        return self.labels if isinstance(self.labels, torch.Tensor) else list(self.labels)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        row = self.rows[index]
        name = f"{self.where} row {row}"
        cell = self.table[row][self.image_column]
        if not isinstance(cell, dict):
            raise DataError(f"{name}: column {self.image_column!r} holds {type(cell).__name__}, not an image")
        data, path = cell.get("bytes"), cell.get("path")
        if data is not None:
            return open_image(bytes(data), f"{name} ({path})" if path else name), self.labels[index]
        if path:
            return open_image(path, path), self.labels[index]
        raise DataError(f"{name}: the image has neither bytes nor a path")


def load_hf(name: str, options: DatasetOptions) -> DatasetSplits:
    """Dataset factory for ``hf``; see the module docstring. DataError for a missing folder, split or column."""
    import datasets

    if options.data_dir is None:
        raise DataError(f"the {name} dataset needs --data-dir: {LAYOUT}")
    root = Path(options.data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"the data folder {root} does not exist or is not a folder (expected {LAYOUT})")
    extra = options.extra
    image_column = extra.get("hf_image_column") or "image"
    label_column = extra.get("hf_label_column") or "label"
    train_name = extra.get("hf_split") or "train"
    val_name = extra.get("hf_val_split")
    test_name = extra.get("hf_test_split") or "test"

    splits = _open(root, datasets)
    if train_name not in splits:
        raise DataError(f"{root} has no split {train_name!r} (splits: {', '.join(splits)}); choose one with --hf-split")
    if val_name is not None and val_name not in splits:
        raise DataError(f"{root} has no split {val_name!r} (splits: {', '.join(splits)}); check --hf-val-split")
    if val_name == train_name:
        raise DataError(f"--hf-val-split {val_name!r} is the training split; choose another, or none for a seeded split")
    if val_name is None:
        val_name = next((n for n in VAL_NAMES if n in splits and n != train_name), None)

    multilabel = options.multilabel
    train_table = _prepared(splits[train_name], root, train_name, image_column, label_column, datasets, multilabel)
    if multilabel:
        classes, train_labels = _label_sets(train_table, label_column, None, root, train_name, datasets)
    else:
        classes, train_labels = _classes(train_table, label_column, root, train_name, datasets)
    index = {label: i for i, label in enumerate(classes)}
    where = f"{root} split {train_name}"
    train_rows = list(range(len(train_labels)))
    notes: list[str] = []
    if val_name is not None:
        val_table = _prepared(splits[val_name], root, val_name, image_column, label_column, datasets, multilabel)
        val_labels = _other_labels(val_table, label_column, index, root, val_name, datasets, multilabel)
        val = HFImageDataset(val_table, image_column, list(range(len(val_labels))), val_labels, f"{root} split {val_name}")
        validation = f"split {val_name} ({len(val):,} images)"
    else:
        if multilabel:
            train_idx, val_idx = multilabel_split(train_labels.numpy(), options.val_fraction, options.seed)
            how = (f"iterative stratification, about {options.val_fraction:g} of each label's images, every label "
                   f"kept in training, seed {options.seed}")
        else:
            train_idx, val_idx = _stratified(np.array(train_labels), options.val_fraction, options.seed)
            how = f"stratified, {options.val_fraction:g} of each class, seed {options.seed}"
        if len(val_idx) == 0:
            raise DataError(f"{where} has too few images to hold out a validation split; add a validation split")
        val = HFImageDataset(train_table, image_column, val_idx.tolist(), _take(train_labels, val_idx.tolist()), where)
        train_rows = train_idx.tolist()
        validation = (
            f"holding out {len(val_idx):,} of {len(train_labels):,} images of split {train_name} "
            f"({how}); the dataset has no validation split"
        )
    train = HFImageDataset(train_table, image_column, train_rows, _take(train_labels, train_rows), where)
    test = None
    if test_name in splits and test_name not in (train_name, val_name):
        test_table = _prepared(splits[test_name], root, test_name, image_column, label_column, datasets, multilabel)
        test_labels = _other_labels(test_table, label_column, index, root, test_name, datasets, multilabel)
        test = HFImageDataset(test_table, image_column, list(range(len(test_labels))), test_labels,
                              f"{root} split {test_name}")
        notes.append(f"not used in training or validation: split {test_name} ({len(test):,} images), a test split "
                     "(tlcore eval --split test)")
    unused = [n for n in splits if n not in (train_name, val_name, test_name)]
    if unused:
        notes.append(f"not used: splits {', '.join(unused)} of {root}")
    return DatasetSplits(
        classes=classes,
        train=train,
        val=val,
        description=f"hf: {len(train)} train and {len(val)} val images in {len(classes)} "
        f"{'multi-label ' if multilabel else ''}classes from {root}",
        validation=validation,
        notes=notes,
        test=test,
        multilabel=multilabel,
    )


def _take(labels: list[int] | torch.Tensor, rows: list[int]) -> list[int] | torch.Tensor:
    """The labels at ``rows``: a list of class indices, or the multi-hot rows ``[len(rows), C]``."""
    if isinstance(labels, torch.Tensor):
        return labels[torch.as_tensor(rows, dtype=torch.long)]
    return [labels[i] for i in rows]


def _open(root: Path, datasets: Any) -> dict[str, Any]:
    """The splits of the dataset in ``root``, by name; DataError when it holds neither layout."""
    try:
        if (root / "dataset_dict.json").is_file() or (root / "state.json").is_file():
            loaded = datasets.load_from_disk(str(root))
        elif any(root.rglob("*.parquet")):
            loaded = datasets.load_dataset("parquet", data_dir=str(root))
        else:
            raise DataError(f"{root} holds no Hugging Face dataset (expected {LAYOUT})")
    except DataError:
        raise
    except Exception as error:  # the library's errors for damaged files: named, on one line
        reason = " ".join(str(error).split())[:300]
        raise DataError(f"{root} cannot be read as a Hugging Face dataset: {type(error).__name__}: {reason}") from error
    if isinstance(loaded, datasets.Dataset):
        return {"train": loaded}
    return dict(loaded)


def _prepared(
    table: Any, root: Path, split: str, image_column: str, label_column: str, datasets: Any, multilabel: bool = False
) -> Any:
    """``table`` with both columns checked and its images left undecoded (tlcore decodes them).

    A single-label run refuses a label column of lists (multi-label data).
    """
    columns = list(table.column_names)
    for wanted, flag in ((image_column, "--hf-image-column"), (label_column, "--hf-label-column")):
        if wanted not in columns:
            raise DataError(
                f"{root} split {split}: no column {wanted!r} (columns: {', '.join(columns)}); name it with {flag}"
            )
    feature = table.features[image_column]
    if not isinstance(feature, datasets.Image):
        raise DataError(
            f"{root} split {split}: column {image_column!r} is {type(feature).__name__}, not an Image feature; "
            "choose the image column with --hf-image-column"
        )
    if len(table) == 0:
        raise DataError(f"{root} split {split} has no rows")
    if not multilabel and _inner(table.features[label_column], datasets) is not None:
        raise DataError(
            f"{root} split {split}, column {label_column!r}: {table.features[label_column]} holds a list of labels per "
            "row: the dataset is multi-label; train with `tlcore run --task multilabel`"
        )
    return table.cast_column(image_column, datasets.Image(decode=False))


def _classes(table: Any, column: str, root: Path, split: str, datasets: Any) -> tuple[list[str], list[int]]:
    """The class names and each row's class index, from the training split."""
    feature = table.features[column]
    values = list(table[column])
    if isinstance(feature, datasets.ClassLabel):
        classes = list(feature.names)
        bad = next((i for i, v in enumerate(values) if not isinstance(v, int) or not 0 <= v < len(classes)), None)
        if bad is not None:
            raise DataError(f"{root} split {split} row {bad}, column {column!r}: {values[bad]!r} is not a class index")
        return classes, values
    _check_plain(values, column, root, split)
    classes = [str(v) for v in sorted(set(values))]
    index = {str(v): i for i, v in enumerate(sorted(set(values)))}
    return classes, [index[str(v)] for v in values]


def _labels_of(table: Any, column: str, index: dict[str, int], root: Path, split: str, datasets: Any) -> list[int]:
    """Class indices of another split's rows, by the training split's classes; DataError for a label it lacks."""
    feature = table.features[column]
    values = list(table[column])
    if isinstance(feature, datasets.ClassLabel):
        names = list(feature.names)
        values = [names[v] if isinstance(v, int) and 0 <= v < len(names) else v for v in values]
    else:
        _check_plain(values, column, root, split)
    labels = []
    for row, value in enumerate(values):
        if str(value) not in index:
            raise DataError(
                f"{root} split {split} row {row}, column {column!r}: label {value!r} never appears in training"
            )
        labels.append(index[str(value)])
    return labels


def _check_plain(values: list, column: str, root: Path, split: str) -> None:
    """Labels that are not a ClassLabel must be integers or non-empty text, one kind throughout."""
    for row, value in enumerate(values):
        ok = (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, str) and value.strip())
        if not ok:
            raise DataError(f"{root} split {split} row {row}, column {column!r}: label {value!r} is not an integer "
                            "or non-empty text")
    if len({type(v) for v in values}) > 1:
        raise DataError(f"{root} split {split}, column {column!r}: labels mix integers and text")


def _stratified(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split holding out ``round(count * fraction)`` of each class (at least one of two or more, never all)."""
    rng = np.random.default_rng(int(seed) % 2**63)
    train, val = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = math.floor(len(members) * fraction + 0.5)
        n_val = min(max(n_val, 1), len(members) - 1) if len(members) >= 2 else 0
        val.append(members[:n_val])
        train.append(members[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _inner(feature: Any, datasets: Any) -> Any:
    """The item feature of a list-valued column (``Sequence``, ``List``, ``LargeList``, ``[feature]``), else None."""
    if isinstance(feature, list):
        return feature[0] if len(feature) == 1 else None
    kinds = tuple(k for k in (getattr(datasets, n, None) for n in ("Sequence", "List", "LargeList")) if isinstance(k, type))
    return getattr(feature, "feature", None) if kinds and isinstance(feature, kinds) else None


def _other_labels(
    table: Any, column: str, index: dict[str, int], root: Path, split: str, datasets: Any, multilabel: bool
) -> list[int] | torch.Tensor:
    """A validation or test split's labels by the training split's classes: class indices, or multi-hot rows."""
    if multilabel:
        return _label_sets(table, column, index, root, split, datasets)[1]
    return _labels_of(table, column, index, root, split, datasets)


def _label_sets(
    table: Any, column: str, index: dict[str, int] | None, root: Path, split: str, datasets: Any
) -> tuple[list[str], torch.Tensor]:
    """Multi-label: the classes and float32 multi-hot rows ``[N, C]`` of a split's label column.

    ``index`` None: the training split, whose classes are the ClassLabel's
    names or the sorted distinct values; else the training classes, and a
    label outside them is an error. DataError naming the split, row and column
    for a row without labels, a value that is no label, or a column holding one
    class per row (only text, split by :func:`split_labels`, is read so).
    """
    feature = table.features[column]
    inner = _inner(feature, datasets)
    values = list(table[column])

    def where(row: int) -> str:
        return f"{root} split {split} row {row}, column {column!r}"

    rows: list[list[Any]] = []
    names = inner.names if isinstance(inner, datasets.ClassLabel) else None
    if inner is None:
        if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
            raise DataError(
                f"{root} split {split}, column {column!r}: {feature} holds one class per row; --task multilabel needs "
                "a list of labels per row (a Sequence of ClassLabel, integers or text) or text naming the classes "
                "separated by whitespace, ';' or '|'"
            )
        rows = [split_labels(value) if isinstance(value, str) else [] for value in values]
    else:
        for row, value in enumerate(values):
            items = []
            for item in value or []:
                if names is not None:
                    if not isinstance(item, int) or isinstance(item, bool) or not 0 <= item < len(names):
                        raise DataError(f"{where(row)}: {item!r} is not an index of the ClassLabel {column!r}")
                    items.append(names[item])
                elif (isinstance(item, int) and not isinstance(item, bool)) or (isinstance(item, str) and item.strip()):
                    items.append(item.strip() if isinstance(item, str) else item)
                else:
                    raise DataError(f"{where(row)}: label {item!r} is not an integer or non-empty text")
            rows.append(items)
    empty = next((row for row, items in enumerate(rows) if not items), None)
    if empty is not None:
        raise DataError(f"{where(empty)}: the row has no label; give each image at least one label")
    if index is None:
        if names is not None:
            classes = list(names)
        else:
            distinct = {item for items in rows for item in items}
            if len({type(item) for item in distinct}) > 1:
                raise DataError(f"{root} split {split}, column {column!r}: labels mix integers and text")
            classes = [str(item) for item in sorted(distinct)]
        index = {name: i for i, name in enumerate(classes)}
    sets = []
    for row, items in enumerate(rows):
        unknown = next((item for item in items if str(item) not in index), None)
        if unknown is not None:
            raise DataError(f"{where(row)}: label {unknown!r} never appears in training")
        sets.append(sorted({index[str(item)] for item in items}))
    return list(index), multi_hot(sets, len(index))
