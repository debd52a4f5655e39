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

Faults in a file (it is not UTF-8, its quoting is broken, a column is
missing, it has a header but no rows, an image or label cell is empty, a
relative path climbs out of ``root`` with ``..``, a label never seen in
training, one image given two labels) are errors naming the file, the line
and the column. Rows whose image is missing, not a readable file, or reached
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

import numpy as np

from tlcore import DataError, DatasetOptions, DatasetSplits
from tlcore_datasets.imagefolder import ImageFileDataset, _few
from tlcore_datasets.split import stratified_split

FILES = ("train.csv", "val.csv", "test.csv")
IMAGE_COLUMN, LABEL_COLUMN = "image", "label"  # the declared defaults of --image-column and --label-column
MAX_CSV_BYTES = 1 << 30  # a manifest of a billion bytes lists tens of millions of images: far above real use
MAX_FIELD = 1 << 16  # characters in one cell; paths and labels are far shorter
LAYOUT = "<root>/train.csv (columns image,label; paths relative to <root>), optional val.csv and test.csv"


@dataclass
class _Listing:
    """The usable rows of one CSV file and what was skipped, for the notes."""

    samples: list[tuple[str, str]] = field(default_factory=list)  # (path, label text)
    lines: list[int] = field(default_factory=list)  # the line of each sample, for messages
    skipped: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)


def load_csv(name: str, options: DatasetOptions) -> DatasetSplits:
    """Dataset factory for ``csv``: train.csv (and val.csv, test.csv) under ``options.data_dir``.

    ``options.extra`` may hold ``image_column`` and ``label_column`` (the
    plugin's declared options); DataError for every fault in the files, one
    line naming the file, line and column.
    """
    if options.data_dir is None:
        raise DataError(f"the {name} dataset needs --data-dir: a folder holding {LAYOUT}")
    root = Path(options.data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"the data folder {root} does not exist or is not a folder (expected {LAYOUT})")
    root = root.resolve()
    image_column = options.extra.get("image_column") or IMAGE_COLUMN
    label_column = options.extra.get("label_column") or LABEL_COLUMN
    train_file = root / "train.csv"
    if not train_file.is_file():
        raise DataError(f"{root} has no train.csv (expected {LAYOUT})")

    train = _read(train_file, root, image_column, label_column)
    classes = sorted({label for _, label in train.samples})
    if not classes:
        raise DataError(f"{train_file}: none of its {len(train.skipped)} images can be read ({_few(train.skipped)})")
    index = {label: i for i, label in enumerate(classes)}
    notes: list[str] = []
    train_samples = [(path, index[label]) for path, label in train.samples]

    val_file, test_file = root / "val.csv", root / "test.csv"
    others: dict[str, _Listing] = {}
    for file in (val_file, test_file):
        if file.is_file():
            listing = _read(file, root, image_column, label_column)
            _known_labels(file, listing, index, label_column)
            others[file.name] = listing

    if "val.csv" in others:
        val_samples = [(path, index[label]) for path, label in others["val.csv"].samples]
        if not val_samples:
            raise DataError(f"{val_file}: none of its images can be read ({_few(others['val.csv'].skipped)})")
        validation = f"val.csv ({len(val_samples):,} images)"
    else:
        labels = np.array([label for _, label in train_samples])
        train_idx, val_idx = stratified_split(labels, options.val_fraction, options.seed)
        if len(val_idx) == 0:
            raise DataError(f"{train_file} has too few images to hold out a validation split; add a val.csv")
        validation = (
            f"holding out {len(val_idx):,} of {len(labels):,} images of train.csv "
            f"(stratified, {options.val_fraction:g} of each class, seed {options.seed}); there is no val.csv"
        )
        val_samples = [train_samples[i] for i in val_idx]
        train_samples = [train_samples[i] for i in train_idx]

    test = None
    if "test.csv" in others:
        test_samples = [(path, index[label]) for path, label in others["test.csv"].samples]
        test = ImageFileDataset(test_samples, classes)
        notes.append(f"not used in training or validation: test.csv ({len(test):,} images), a test split "
                     "(tlcore eval --split test)")

    for file_name, listing in [("train.csv", train), *others.items()]:
        if listing.skipped:
            notes.insert(0, f"skipped {len(listing.skipped)} rows of {file_name}: {_few(listing.skipped)}")
        if listing.duplicates:
            notes.append(f"{file_name} lists {len(listing.duplicates)} images again (used once): "
                         f"{_few(listing.duplicates)}")
    _report_overlaps(notes, {"train.csv": train, **others})

    return DatasetSplits(
        classes=classes,
        train=ImageFileDataset(train_samples, classes),
        val=ImageFileDataset(val_samples, classes),
        flip_invariant=True,
        description=f"csv: {len(train_samples)} train and {len(val_samples)} val images in {len(classes)} classes "
        f"listed in {root}",
        validation=validation,
        notes=notes,
        test=test,
    )


def _read(file: Path, root: Path, image_column: str, label_column: str) -> _Listing:
    """The rows of one CSV file; DataError for a fault in the file, skipped rows noted in the listing."""
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
    listing = _Listing()
    seen: dict[str, tuple[int, str]] = {}
    for line, row in rows[1:]:
        if not any(cell.strip() for cell in row):
            continue  # a blank line, as spreadsheets write at the end
        if len(row) != len(header):
            raise DataError(f"{file}: line {line}: {len(row)} cells, but the header has {len(header)} columns")
        relative, label = row[image_at].strip(), row[label_at].strip()
        if not relative:
            raise DataError(f"{file}: line {line}, column {image_column!r}: the image path is empty")
        if not label:
            raise DataError(f"{file}: line {line}, column {label_column!r}: the label is empty")
        path = _image_path(file, line, image_column, root, relative)
        reason = _unusable(path, root, relative)
        if reason is not None:
            listing.skipped.append(f"line {line} {relative} ({reason})")
            continue
        key = os.path.normcase(str(path))
        if key in seen:
            first_line, first_label = seen[key]
            if first_label != label:
                raise DataError(
                    f"{file}: line {line}, column {label_column!r}: {relative} is labelled {label!r} here and "
                    f"{first_label!r} on line {first_line}; give each image one label"
                )
            listing.duplicates.append(f"{relative} (lines {first_line} and {line})")
            continue
        seen[key] = (line, label)
        listing.samples.append((str(path), label))
        listing.lines.append(line)
    return listing


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


def _known_labels(file: Path, listing: _Listing, index: dict[str, int], column: str) -> None:
    """DataError naming the first row of ``file`` whose label train.csv never has."""
    for (_, label), line in zip(listing.samples, listing.lines, strict=True):
        if label not in index:
            known = ", ".join(list(index)[:8]) + (" ..." if len(index) > 8 else "")
            raise DataError(
                f"{file}: line {line}, column {column!r}: label {label!r} never appears in train.csv "
                f"(its labels: {known})"
            )


def _report_overlaps(notes: list[str], listings: dict[str, _Listing]) -> None:
    """Note images listed in two files (a validation or test image also trained on inflates its scores)."""
    names = list(listings)
    for i, first in enumerate(names):
        paths = {path for path, _ in listings[first].samples}
        for second in names[i + 1 :]:
            shared = sorted(paths.intersection(path for path, _ in listings[second].samples))
            if shared:
                notes.append(f"{len(shared)} images are listed in both {first} and {second}: {_few(shared)}")
