"""Images listed in CSV files: the ``csv`` dataset.

Layout under ``--data-dir`` (``root``)::

    root/train.csv      required: a header row, then one row per image
    root/val.csv        optional; without it a seeded stratified share (--val-fraction) of train.csv is held out
    root/test.csv       optional: a test split (``tlcore eval --split test``); training never reads it
    root/...            the images, anywhere

Each file is UTF-8 (a byte-order mark is accepted) with a header row naming
at least the image column (``--image-column``, default ``image``) and the
label column (``--label-column``, default ``label``); other columns are
ignored. An image is a path relative to ``root`` or an absolute path; a label
is any non-empty text (surrounding spaces are dropped). The classes are the
labels of train.csv, sorted; a label of val.csv or test.csv that train.csv
lacks is an error.

Multi-label (``DatasetOptions.multilabel``, ``--task multilabel``): a label
cell names one or more classes separated by whitespace, ``;`` or ``|``
(:func:`tlcore.multilabel.split_labels`); the classes are the sorted union of
the names in train.csv, each label is a float32 multi-hot row ``[C]`` and
``targets`` is ``[N, C]``. Without a val.csv the seeded split is iterative
stratification (:func:`tlcore.multilabel_split`). A
single-label run refuses a cell that looks multi-label: one holding ``;`` or
``|``, or one whose space-separated words are each a class of their own
(``cat dog`` beside ``cat`` and ``dog``); a class name with spaces
(``golden retriever``) stays one class.

Faults in a file (it is not UTF-8, its quoting is broken, a column is
missing, it has a header but no rows, an image or label cell is empty, a
relative path climbs out of ``root`` with ``..``, a label never seen in
training, one image given two different labels) are errors naming the file,
the line and the column. Rows whose image is missing, not a readable file, or reached
through a link that leads outside ``root`` are skipped and named in the run's
first lines (:attr:`DatasetSplits.notes`), like rows listed twice. Images are
decoded lazily by :func:`tlcore.open_image`; undecodable ones are skipped by
the loop like any dataset's.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tlcore import DataError, DatasetOptions, DatasetSplits, multi_hot, multilabel_split, split_labels
from tlcore_datasets.imagefolder import ImageFileDataset, _few
from tlcore_datasets.split import stratified_split

FILES = ("train.csv", "val.csv", "test.csv")
IMAGE_COLUMN, LABEL_COLUMN = "image", "label"  # the declared defaults of --image-column and --label-column
MAX_CSV_BYTES = 1 << 30  # a manifest of a billion bytes lists tens of millions of images: far above real use
MAX_FIELD = 1 << 16  # characters in one cell; paths and labels are far shorter
LAYOUT = "<root>/train.csv (columns image,label; paths relative to <root>), optional val.csv and test.csv"
SEPARATORS = "whitespace, ';' or '|'"  # between the labels of one cell (tlcore.multilabel.split_labels)


@dataclass
class Listing:
    """The usable rows of one CSV file and what was skipped, for the notes."""

    # (path, label names): one name for single-label data, the cell's names sorted for multi-label
    samples: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # the line of each sample, for messages
    written: list[str] = field(default_factory=list)  # each sample's image as the file writes it
    skipped: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)


def load_csv(name: str, options: DatasetOptions) -> DatasetSplits:
    """Dataset factory for ``csv``: train.csv (and val.csv, test.csv) under ``options.data_dir``.

    ``options.extra`` may hold ``image_column`` and ``label_column`` (the
    plugin's declared options); ``options.multilabel`` reads several labels
    per cell (see the module docstring). DataError for every fault in the
    files, one line naming the file, line and column.
    """
    if options.data_dir is None:
        raise DataError(f"the {name} dataset needs --data-dir: a folder holding {LAYOUT}")
    root = Path(options.data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"the data folder {root} does not exist or is not a folder (expected {LAYOUT})")
    root = root.resolve()
    image_column, label_column = columns_of(options)
    multilabel = options.multilabel
    train_file = root / "train.csv"
    if not train_file.is_file():
        raise DataError(f"{root} has no train.csv (expected {LAYOUT})")

    train = read_listing(train_file, root, image_column, label_column, multilabel=multilabel)
    if not multilabel:
        looks_multilabel(train_file, train, label_column)
    classes = classes_of(train)
    if not classes:
        raise DataError(f"{train_file}: none of its {len(train.skipped)} images can be read ({_few(train.skipped)})")
    index = {label: i for i, label in enumerate(classes)}
    notes: list[str] = []
    train_samples = labelled(train, index, multilabel)

    val_file, test_file = root / "val.csv", root / "test.csv"
    others: dict[str, Listing] = {}
    for file in (val_file, test_file):
        if file.is_file():
            listing = read_listing(file, root, image_column, label_column, multilabel=multilabel)
            known_labels(file, listing, index, label_column, "train.csv")
            others[file.name] = listing

    if "val.csv" in others:
        val_samples = labelled(others["val.csv"], index, multilabel)
        if not val_samples:
            raise DataError(f"{val_file}: none of its images can be read ({_few(others['val.csv'].skipped)})")
        validation = f"val.csv ({len(val_samples):,} images)"
    else:
        train_samples, val_samples, how = held_out(train_samples, len(classes), multilabel, options)
        if not val_samples:
            raise DataError(f"{train_file} has too few images to hold out a validation split; add a val.csv")
        total = len(train_samples) + len(val_samples)
        validation = f"holding out {len(val_samples):,} of {total:,} images of train.csv ({how}); there is no val.csv"

    test = None
    if "test.csv" in others:
        test = ImageFileDataset(labelled(others["test.csv"], index, multilabel), classes, multilabel=multilabel)
        notes.append(f"not used in training or validation: test.csv ({len(test):,} images), a test split "
                     "(tlcore eval --split test)")

    for file_name, listing in [("train.csv", train), *others.items()]:
        listing_notes(notes, file_name, listing)
    report_overlaps(notes, {"train.csv": train, **others})

    kind = "multi-label " if multilabel else ""
    return DatasetSplits(
        classes=classes,
        train=ImageFileDataset(train_samples, classes, multilabel=multilabel),
        val=ImageFileDataset(val_samples, classes, multilabel=multilabel),
        flip_invariant=True,
        description=f"csv: {len(train_samples)} train and {len(val_samples)} val images in {len(classes)} "
        f"{kind}classes listed in {root}",
        validation=validation,
        notes=notes,
        test=test,
        multilabel=multilabel,
    )


def columns_of(options: DatasetOptions) -> tuple[str, str]:
    """The image and label column names: ``--image-column`` and ``--label-column``, else ``image`` and ``label``."""
    return options.extra.get("image_column") or IMAGE_COLUMN, options.extra.get("label_column") or LABEL_COLUMN


def classes_of(listing: Listing) -> list[str]:
    """The class names of a training listing, sorted: every name of every row."""
    return sorted({name for _, names in listing.samples for name in names})


def labelled(listing: Listing, index: dict[str, int], multilabel: bool) -> list[tuple[str, Any]]:
    """``(path, label)`` of each row: the class index, or a float32 multi-hot row ``[C]`` for multi-label data.

    Every name must be in ``index`` (:func:`known_labels` checked it). The
    multi-hot rows are views of one ``[N, C]`` tensor.
    """
    if not multilabel:
        return [(path, index[names[0]]) for path, names in listing.samples]
    rows = multi_hot([[index[name] for name in names] for _, names in listing.samples], len(index))
    return [(path, rows[i]) for i, (path, _) in enumerate(listing.samples)]


def held_out(
    samples: list[tuple[str, Any]], num_classes: int, multilabel: bool, options: DatasetOptions
) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]], str]:
    """``(train, val, how)``: a seeded share of ``samples`` held out for validation, and how, for the first lines.

    Single-label: stratified by class (:func:`stratified_split`); multi-label:
    iterative stratification keeping each label in training (:func:`multilabel_split`).
    """
    if multilabel:
        targets = torch.stack([label for _, label in samples]).numpy() if samples else np.zeros((0, num_classes))
        train_idx, val_idx = multilabel_split(targets, options.val_fraction, options.seed)
        how = (f"iterative stratification, about {options.val_fraction:g} of each label's images, every label kept "
               f"in training, seed {options.seed}")
    else:
        train_idx, val_idx = stratified_split(np.array([label for _, label in samples]), options.val_fraction,
                                              options.seed)
        how = f"stratified, {options.val_fraction:g} of each class, seed {options.seed}"
    return [samples[i] for i in train_idx], [samples[i] for i in val_idx], how


def listing_notes(notes: list[str], file_name: str, listing: Listing) -> None:
    """Add what reading ``file_name`` skipped (first) and the rows it listed twice (last) to ``notes``."""
    if listing.skipped:
        notes.insert(0, f"skipped {len(listing.skipped)} rows of {file_name}: {_few(listing.skipped)}")
    if listing.duplicates:
        notes.append(f"{file_name} lists {len(listing.duplicates)} images again (used once): "
                     f"{_few(listing.duplicates)}")


def read_listing(
    file: Path, root: Path, image_column: str, label_column: str, *, multilabel: bool = False, strict: bool = False
) -> Listing:
    """The rows of one CSV file listing images and their labels: the csv dataset's files and imagefolder's labels.csv.

    Paths are relative to ``root`` (or absolute). Single-label: the label
    cell is one class name and a cell holding ``;`` or ``|`` is refused as
    multi-label; ``multilabel``: the cell's names (:func:`split_labels`), at
    least one. A row whose image cannot be used (missing, not a regular file,
    not readable, a link out of ``root``) is skipped and named in the listing,
    or, with ``strict``, a DataError. A row listing an image again with the
    same labels is noted as a duplicate; with other labels it is an error.
    DataError, one line naming the file, line and column, for every other fault.
    """
    rows, header_line = _rows(file)
    header = rows[0][1]
    columns: dict[str, int] = {}
    for position, name in enumerate(header):
        name = name.strip()
        if name in columns and name in (image_column, label_column):  # which of the two would be meant?
            raise DataError(f"{file}: line {header_line}: the header names column {name!r} twice")
        columns.setdefault(name, position)
    for wanted, flag in ((image_column, "--image-column"), (label_column, "--label-column")):
        if wanted not in columns:
            raise DataError(
                f"{file}: line {header_line}: no column {wanted!r} in the header (columns: "
                f"{', '.join(repr(c) for c in columns) or 'none'}); name it with {flag}"
            )
    if len(rows) == 1:
        raise DataError(f"{file}: it has a header (line {header_line}) but no rows; list one image per row")
    image_at, label_at = columns[image_column], columns[label_column]
    listing = Listing()
    seen: dict[str, tuple[int, tuple[str, ...]]] = {}
    for line, row in rows[1:]:
        if not any(cell.strip() for cell in row):
            continue  # a blank line, as spreadsheets write at the end
        if len(row) != len(header):
            raise DataError(f"{file}: line {line}: {len(row)} cells, but the header has {len(header)} columns")
        relative, label = row[image_at].strip(), row[label_at].strip()
        where = f"{file}: line {line}, column {label_column!r}"
        if not relative:
            raise DataError(f"{file}: line {line}, column {image_column!r}: the image path is empty")
        if not label:
            raise DataError(f"{where}: the label is empty" + ("; give each image at least one label" * multilabel))
        names = _names(where, label, multilabel)
        path = _image_path(file, line, image_column, root, relative)
        reason = _unusable(path, root, relative)
        if reason is not None:
            if strict:
                raise DataError(f"{file}: line {line}, column {image_column!r}: the image {relative} is {reason}; "
                                "every image listed must be a readable file inside the data folder")
            listing.skipped.append(f"line {line} {relative} ({reason})")
            continue
        key = os.path.normcase(str(path))
        if key in seen:
            first_line, first_names = seen[key]
            if first_names != names:
                advice = (f"list each image once, with all its labels in one cell (separated by {SEPARATORS})"
                          if multilabel else "give each image one label")
                raise DataError(
                    f"{where}: {relative} is labelled {' '.join(names)!r} here and {' '.join(first_names)!r} on "
                    f"line {first_line}; {advice}"
                )
            listing.duplicates.append(f"{relative} (lines {first_line} and {line})")
            continue
        seen[key] = (line, names)
        listing.samples.append((str(path), names))
        listing.lines.append(line)
        listing.written.append(relative)
    return listing


def _names(where: str, label: str, multilabel: bool) -> tuple[str, ...]:
    """The class names of one non-empty label cell: sorted and distinct when multi-label, else the cell itself."""
    if multilabel:
        names = split_labels(label)
        if not names:
            raise DataError(f"{where}: {label!r} names no class; separate class names by {SEPARATORS}")
        return tuple(sorted(names))
    if ";" in label or "|" in label:
        raise DataError(
            f"{where}: the label {label!r} holds ';' or '|', which separate the labels of a multi-label file: the "
            "file looks multi-label; train with `tlcore run --task multilabel` (a single-label class name cannot "
            "contain ';' or '|')"
        )
    return (label,)


def looks_multilabel(file: Path, listing: Listing, column: str) -> None:
    """DataError for a single-label file whose label is several classes of the same file written with spaces.

    ``cat dog`` beside rows labelled ``cat`` and ``dog`` is two labels, not a
    third class; ``golden retriever`` beside no ``golden`` stays one class.
    """
    single = {names[0] for _, names in listing.samples}
    for (_, names), line in zip(listing.samples, listing.lines, strict=True):
        words = split_labels(names[0])
        if len(words) > 1 and all(word in single for word in words):
            raise DataError(
                f"{file}: line {line}, column {column!r}: the label {names[0]!r} is the classes "
                f"{', '.join(repr(w) for w in words)} of other rows: the file looks multi-label; train with "
                "`tlcore run --task multilabel` (or rename the class)"
            )


def _rows(file: Path) -> tuple[list[tuple[int, list[str]]], int]:
    """``(line, cells)`` of every record of ``file`` (the header first) and the header's line; DataError naming faults."""
    try:
        size = file.stat().st_size
        if size > MAX_CSV_BYTES:
            raise DataError(f"{file}: {size:,} bytes; accepted: at most {MAX_CSV_BYTES:,}")
        data = file.read_bytes()
    except OSError as error:
        raise DataError(f"{file} cannot be read: {error.strerror or error}") from error
    try:
        text = data.decode("utf-8-sig")  # strict: a stray Latin-1 byte is an error, never a silently wrong path
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        start = data.rfind(b"\n", 0, error.start) + 1
        column = data.count(b",", start, error.start) + 1
        raise DataError(
            f"{file}: line {line}, column {column}: byte 0x{data[error.start]:02x} is not UTF-8; save the file as UTF-8"
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)  # newline="": quoted line breaks stay
    rows: list[tuple[int, list[str]]] = []
    limit = csv.field_size_limit()
    try:
        csv.field_size_limit(MAX_FIELD)
        for row in reader:
            if not rows and not any(cell.strip() for cell in row):
                continue  # blank lines before the header
            rows.append((reader.line_num, row))
    except csv.Error as error:
        raise DataError(f"{file}: line {reader.line_num}: not valid CSV: {error}") from None
    finally:
        csv.field_size_limit(limit)
    if not rows:
        raise DataError(f"{file} is empty; expected a header row (e.g. image,label) and one row per image")
    return rows, rows[0][0]


def _image_path(file: Path, line: int, column: str, root: Path, relative: str) -> Path:
    """The image's path: absolute as written, else under ``root``; DataError when ``..`` climbs out of ``root``."""
    if "\x00" in relative:
        raise DataError(f"{file}: line {line}, column {column!r}: the path contains a NUL character")
    written = Path(relative).expanduser()
    if written.is_absolute():
        return written
    joined = Path(os.path.normpath(root / written))
    if joined != root and root not in joined.parents:
        raise DataError(
            f"{file}: line {line}, column {column!r}: {relative} leads outside the data folder {root}; "
            "paths are relative to it (or absolute)"
        )
    return joined


def _unusable(path: Path, root: Path, relative: str) -> str | None:
    """Why the image at ``path`` cannot be used (missing, not a file, unreadable, a link out of root), or None."""
    try:
        if not path.exists():
            return "missing"
        if not path.is_file():
            return "not a regular file"
        if not Path(relative).is_absolute():
            real = path.resolve()
            if real != root and root not in real.parents:
                return f"a link to {real}, outside the data folder"
        if not os.access(path, os.R_OK):
            return "not readable"
    except OSError as error:
        return f"cannot be examined: {error.strerror or error}"
    return None


def known_labels(file: Path, listing: Listing, index: dict[str, int], column: str, training: str) -> None:
    """DataError naming the first row of ``file`` with a label the training listing (``training``) never has."""
    for (_, names), line in zip(listing.samples, listing.lines, strict=True):
        for name in names:
            if name not in index:
                known = ", ".join(list(index)[:8]) + (" ..." if len(index) > 8 else "")
                hint = ""
                if len(names) == 1 and len(split_labels(name)) > 1 and all(w in index for w in split_labels(name)):
                    hint = "; the file looks multi-label: train with `tlcore run --task multilabel`"
                raise DataError(
                    f"{file}: line {line}, column {column!r}: label {name!r} never appears in {training} "
                    f"(its labels: {known}){hint}"
                )


def report_overlaps(notes: list[str], listings: dict[str, Listing]) -> None:
    """Note images listed in two files (a validation or test image also trained on inflates its scores)."""
    names = list(listings)
    for i, first in enumerate(names):
        paths = {path for path, _ in listings[first].samples}
        for second in names[i + 1 :]:
            shared = sorted(paths.intersection(path for path, _ in listings[second].samples))
            if shared:
                notes.append(f"{len(shared)} images are listed in both {first} and {second}: {_few(shared)}")
