"""The ``imagefolder`` dataset for multi-label data (``--task multilabel``): image folders and a labels.csv.

Layout under ``--data-dir`` (``root``)::

    root/train/...        required: the training images, in any sub-folders
    root/val/...          optional ("valid" or "validation" also work)
    root/test/...         optional: validates when there is no val folder, else a test split
    root/labels.csv       required: columns image,label, one row per image

labels.csv is read by the csv dataset's reader
(:func:`tlcore_datasets.csvdata.read_listing`), with the same rules and
messages: UTF-8, a header naming the image and label columns (``image`` and
``label``, or ``--image-column`` and ``--label-column``), one or more class
names per label cell separated by whitespace, ``;`` or ``|``; a missing
column, an empty label, a path climbing out of ``root``, a header without rows
or an image listed twice with different labels is a DataError naming the file,
the line and the column. An image is a path relative to ``root`` (or
absolute, inside ``root``); its top folder (train, val, test) says its split.
Every listed image must be a readable file (an error otherwise); an image in
the split folders that labels.csv does not list is skipped and named in the
run's first lines. The classes are the sorted names of the training rows; a
validation or test label never seen in training is an error. Without
validation images, a seeded share of train is held out by iterative
stratification (:func:`tlcore.multilabel_split`).
"""

from __future__ import annotations

import os
from pathlib import Path

from tlcore import DataError, DatasetOptions, DatasetSplits
from tlcore_datasets.csvdata import (
    Listing,
    classes_of,
    columns_of,
    held_out,
    known_labels,
    labelled,
    listing_notes,
    read_listing,
)
from tlcore_datasets.imagefolder import VAL_NAMES, ImageFileDataset, _few, _visible_dirs, _walk

LABELS = "labels.csv"
LAYOUT = (
    "<root>/train/<images, any sub-folders>, optional <root>/val/ and <root>/test/, and <root>/labels.csv with columns "
    "image,label (paths relative to <root> such as train/a.jpg; labels separated by spaces, ';' or '|')"
)


def load_labelled_folder(name: str, options: DatasetOptions) -> DatasetSplits:
    """Dataset factory for ``imagefolder`` with ``options.multilabel``: see the module docstring.

    Labels are float32 multi-hot rows ``[C]`` (``targets`` ``[N, C]``);
    DataError, one line, for a missing folder or labels.csv and every fault in labels.csv.
    """
    if options.data_dir is None:
        raise DataError(f"the {name} dataset needs --data-dir: a folder laid out as {LAYOUT}")
    root = Path(options.data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"the data folder {root} does not exist or is not a folder (expected {LAYOUT})")
    root = root.resolve()
    folders = {p.name.lower(): p for p in _visible_dirs(root)}
    val_dirs = [folders[n] for n in VAL_NAMES if n in folders]
    if len(val_dirs) > 1:
        raise DataError(f"{root} has several validation folders ({', '.join(p.name for p in val_dirs)}); keep one")
    if "train" not in folders:
        raise DataError(f"{root} has no train folder (expected {LAYOUT})")
    labels_file = root / LABELS
    if not labels_file.is_file():
        raise DataError(f"{root} has no {LABELS}; multi-label images are listed with their labels in it "
                        f"(expected {LAYOUT})")
    image_column, label_column = columns_of(options)
    listing = read_listing(labels_file, root, image_column, label_column, multilabel=True, strict=True)
    by_split = _by_split(labels_file, root, image_column, listing)
    train = by_split["train"]
    classes = classes_of(train)
    if not classes:
        raise DataError(f"{labels_file} lists no image in {folders['train']} (expected {LAYOUT})")
    index = {label: i for i, label in enumerate(classes)}
    for split in ("val", "test"):
        known_labels(labels_file, by_split[split], index, label_column, f"the {folders['train'].name}/ rows")
    train_samples = labelled(train, index, True)

    notes: list[str] = []
    val_split = "val" if by_split["val"].samples else "test" if by_split["test"].samples else None
    if val_split is not None:
        val_samples = labelled(by_split[val_split], index, True)
        folder = _folder_of(by_split[val_split])
        validation = f"{folder}/ ({len(val_samples):,} images listed in {LABELS})" + (
            f"; there are no {'/'.join(VAL_NAMES)} images" if val_split == "test" else ""
        )
    else:
        train_samples, val_samples, how = held_out(train_samples, len(classes), True, options)
        if not val_samples:
            raise DataError(f"too few images in {folders['train']} to hold out a validation split; add a val folder "
                            f"listed in {LABELS}")
        total = len(train_samples) + len(val_samples)
        validation = f"holding out {len(val_samples):,} of {total:,} train images ({how}); there is no val folder"
    test = None
    if val_split == "val" and by_split["test"].samples:
        test = ImageFileDataset(labelled(by_split["test"], index, True), classes, multilabel=True)
        notes.append(f"not used in training or validation: {_folder_of(by_split['test'])}/ ({len(test):,} images), "
                     "a test split (tlcore eval --split test)")

    listing_notes(notes, LABELS, listing)
    used = {"train", "test", *VAL_NAMES}
    unused = [p.name for p in folders.values() if p.name.lower() not in used]
    if unused:
        notes.append(f"not used: folders {', '.join(sorted(unused))} in {root} (only train, val and test are read)")
    _unlisted(notes, listing, [p for key, p in sorted(folders.items()) if key in used])

    return DatasetSplits(
        classes=classes,
        train=ImageFileDataset(train_samples, classes, multilabel=True),
        val=ImageFileDataset(val_samples, classes, multilabel=True),
        flip_invariant=True,
        description=f"image folder: {len(train_samples)} train and {len(val_samples)} val images in {len(classes)} "
        f"multi-label classes listed in {labels_file}",
        validation=validation,
        notes=notes,
        test=test,
        multilabel=True,
    )


def _by_split(file: Path, root: Path, column: str, listing: Listing) -> dict[str, Listing]:
    """The rows of ``listing`` by the split their image's top folder names; DataError for an image outside them."""
    splits = {"train": Listing(), "val": Listing(), "test": Listing()}
    for (path, names), line, written in zip(listing.samples, listing.lines, listing.written, strict=True):
        parts = Path(os.path.normpath(path)).parts
        inside = len(parts) > len(root.parts) + 1 and Path(*parts[: len(root.parts)]) == root
        top = parts[len(root.parts)].lower() if inside else ""
        split = "val" if top in VAL_NAMES else top
        if split not in splits:
            raise DataError(
                f"{file}: line {line}, column {column!r}: {written} is not in the train, val or test folder of {root}; "
                "an image's top folder names its split (e.g. train/a.jpg)"
            )
        part = splits[split]
        part.samples.append((path, names))
        part.lines.append(line)
        part.written.append(written)
    return splits


def _folder_of(listing: Listing) -> str:
    """The split folder's name as the rows write it (val, valid, ...), from the first row."""
    return Path(os.path.normpath(listing.written[0])).parts[0] if listing.written else ""


def _unlisted(notes: list[str], listing: Listing, split_dirs: list[Path]) -> None:
    """Note the images in ``split_dirs`` that labels.csv does not list (not used), and entries that are not files."""
    listed = {os.path.normcase(os.path.normpath(path)) for path, _ in listing.samples}
    found: list[tuple[str, int]] = []
    skipped: list[str] = []
    other_files: list[str] = []
    for folder in split_dirs:
        _walk(str(folder), 0, set(), found, skipped, other_files)
    unlisted = [path for path, _ in found if os.path.normcase(os.path.normpath(path)) not in listed]
    if unlisted:
        notes.append(f"not used: {len(unlisted)} images that {LABELS} does not list ({_few(unlisted)})")
    if skipped:
        notes.insert(0, f"skipped {len(skipped)} entries that are not readable files: {_few(skipped)}")
    if other_files:
        notes.append(f"not used: {len(other_files)} files that are not images by their extension ({_few(other_files)})")
