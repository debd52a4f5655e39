"""The model card: README.md in every run folder, written by the built-in ``model_card`` callback.

It says what a person needs before using the weights: the backbone and where
its starting weights came from, the data and how it was split, the classes in
output order, the exact preprocessing, the results with a confusion summary,
the command that trained it, the versions, and the intended use. A multi-label
run's card (``--task multilabel``) states the task, selects on val_map, and
gives the per-class thresholds, the rule that turns logits into labels, and
per-class AP, precision, recall and F1 instead of the confusion summary. It is
written (atomically) after every epoch, so a run stopped at any point has a
card matching its checkpoints, and once more when the run ends, saying how
it ended. The front matter is the Hugging Face Hub's model-card metadata, so
``tlcore push`` uploads it as the repository's card. ``tlcore export`` copies it
beside the exported file (:func:`copy_card_for_export`).

Names coming from the data (class names, paths) are written inside Markdown
tables and code spans with their special characters escaped, so a folder
name cannot change the card's structure.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlcore.callbacks.base import Callback
from tlcore.files import atomic_write_bytes

if TYPE_CHECKING:
    from tlcore.state import RunState, ValidationOutputs

CARD_NAME = "README.md"
MARKER = "<!-- tlcore model card -->"  # how export and push tell a card tlcore wrote from any other README.md
MAX_CARD_BYTES = 4 * 2**20  # a card read back from disk (export, push) larger than this is not ours
MAX_CLASSES_LISTED = 200  # more classes are named in config.json and the checkpoint, not listed in the card
MAX_CLASS_ROWS = 30  # per-class rows of the confusion summary; beyond, the worst-recalled classes only
MAX_EPOCH_ROWS = 20  # rows of the per-epoch table (the last ones)
MAX_RESUMES = 100  # resume commands kept (the latest)
TOP_CONFUSIONS = 5
# a multilabel card's front-matter tag; copy_card_for_export reads it back to describe the exported outputs
MULTILABEL_TAG = "- multi-label-classification"


class ModelCard(Callback):
    """The ``model_card`` callback: writes ``README.md`` in the run folder after each epoch and at the end.

    Runs after the checkpoint callback (``order``), so the card names the
    checkpoint files of the epoch it describes.
    """

    name = "model_card"
    order = 10

    def __init__(self, argv: Sequence[str] | None = None):
        self.argv = list(sys.argv if argv is None else argv)  # the command that started the run
        self.resumed: list[list[str]] = []  # the commands that resumed it, in order
        self.error: BaseException | None = None

    def state_dict(self) -> dict:
        """The commands so far (secrets redacted), so the card of a resumed run still shows the one that started it."""
        return {"argv": redact(self.argv), "resumed": [redact(args) for args in self.resumed]}

    def load_state_dict(self, state: dict) -> None:
        """A resumed run: the saved commands come first, this process's command is a resume (checked: read from disk)."""
        saved, resumed = state.get("argv"), state.get("resumed", [])
        if _is_command(saved) and isinstance(resumed, list) and all(map(_is_command, resumed)):
            self.resumed = [*resumed, self.argv][-MAX_RESUMES:]
            self.argv = list(saved)

    def on_epoch_end(self, run: RunState, metrics: dict[str, Any]) -> None:
        """The card of the run so far."""
        write_card(run, self.argv, ending=None, resumed=self.resumed)

    def on_exception(self, run: RunState, error: BaseException) -> None:
        """Remember why the run ends, for the card written by :meth:`on_fit_end`."""
        self.error = error

    def on_fit_end(self, run: RunState) -> None:
        """The final card, saying how the run ended (only once an epoch finished: before, there is nothing to describe)."""
        if not run.history:
            return
        error = self.error
        if error is None:
            ending = f"stopped early: {run.stop_reason}" if run.stop_reason else "finished"
        else:
            ending = f"ended before its last epoch ({type(error).__name__}); the files describe epoch {len(run.history)}"
        write_card(run, self.argv, ending=ending, resumed=self.resumed)


def _is_command(value: Any) -> bool:
    return (
        isinstance(value, list) and len(value) <= 4096 and all(isinstance(a, str) and len(a) <= 65536 for a in value)
    )


def write_card(
    run: RunState, argv: Sequence[str], ending: str | None, resumed: Sequence[Sequence[str]] = ()
) -> Path:
    """Render the card of ``run`` and write it to ``run.output_dir / README.md`` atomically; returns its path."""
    path = Path(run.output_dir) / CARD_NAME
    atomic_write_bytes(path, render_card(run, argv, ending, resumed).encode("utf-8"))
    return path


_SECRET_FLAG = re.compile(r"^--?[\w-]*(token|secret|password|passwd|api[-_]?key)[\w-]*$", re.IGNORECASE)
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def redact(args: Sequence[str]) -> list[str]:
    """``args`` with secrets replaced by ``***``: the value of a flag named like a token, secret, password or API
    key (``--x VALUE`` or ``--x=VALUE``), and the user:password of any URL (``http://user:pw@host``)."""
    shown: list[str] = []
    hide_next = False
    for arg in args:
        if hide_next:
            shown.append("***")
            hide_next = False
            continue
        flag, sep, _ = arg.partition("=")
        if _SECRET_FLAG.match(flag):
            shown.append(f"{flag}=***" if sep else arg)
            hide_next = not sep
            continue
        shown.append(_USERINFO.sub("***@", arg))
    return shown


def command_line(argv: Sequence[str]) -> str:
    """``argv`` as one shell-quoted line (secrets redacted: :func:`redact`); the ``tlcore`` script and
    ``python -m tlcore`` both shown as ``tlcore``. The card is meant to be shared (``tlcore push``)."""
    args = redact(list(argv))
    if not args:
        return "tlcore"
    program = Path(args[0]).name
    if program in ("tlcore", "__main__.py") or args[0].endswith(os.path.join("tlcore", "__main__.py")):
        return shlex.join(["tlcore", *args[1:]])
    return shlex.join(["python", *args])  # a script calling tlcore.fit


def render_card(
    run: RunState, argv: Sequence[str], ending: str | None = None, resumed: Sequence[Sequence[str]] = ()
) -> str:
    """The card's Markdown text for ``run`` (its config, backbone, classes, history and kept validation outputs).

    ``argv``: the command that started the run; ``resumed``: those that resumed it (``--resume``), in order.
    """
    config = run.config
    multilabel = config.task == "multilabel"
    best = _best_record(run)
    last = run.history[-1] if run.history else None
    pre = run.backbone.preprocessing
    size = run.image_size
    lines = [
        "---",
        "library_name: tlcore",
        "pipeline_tag: image-classification",
        "tags:",
        "- image-classification",
        MULTILABEL_TAG if multilabel else None,
        "- transfer-learning",
        "- tlcore",
        "---",
        MARKER,
        "",
        f"# {_text(config.dataset)} classifier: {_text(config.backbone)}",
        "",
        f"A {len(run.classes)}-class {'multi-label ' if multilabel else ''}image classifier: the backbone "
        f"`{_code(config.backbone)}` with a `{_code(config.head)}` head, fine-tuned with tlcore on "
        f"`{_code(config.dataset)}`." + (" An image may carry any number of the classes." if multilabel else ""),
        "",
        f"Status: {ending or f'in progress (written after epoch {len(run.history)} of {config.epochs})'}.",
        "",
        "## Model",
        "",
        f"- Backbone: `{_code(config.backbone)}` (provider `{_code(config.backbone.split(':')[0])}`)",
        f"- Starting weights: {_text(str(run.backbone.weights))} (`--weights {_code(config.weights)}`)",
        f"- Head: `{_code(config.head)}`"
        + (f" (hidden {config.head_hidden}, dropout {config.head_dropout})" if config.head == "mlp" else ""),
        f"- Freezing: `{_code(config.freeze)}`"
        + (f" up to `{_code(str(config.freeze_to))}`" if config.freeze_to is not None else ""),
        "- Task: multi-label (`--task multilabel`): one sigmoid per class, binary cross-entropy loss; the best epoch "
        "is the one with the highest val_map (mean average precision over the classes)" if multilabel else None,
        f"- Files: {_files(run, best)}",
        "",
        "## Data",
        "",
        f"- Dataset: `{_code(config.dataset)}`" + (f" from `{_code(config.data_dir)}`" if config.data_dir else ""),
        f"- Split: {_split(run)}",
        "",
        f"## Classes ({len(run.classes)}, in output order)",
        "",
        *_classes(run.classes),
        "",
        "## Preprocessing a user must apply",
        "",
        "1. Decode the image as RGB (8 bits per channel; grey and palette images converted, alpha dropped).",
        f"2. Resize the shorter side to {pre.resize_for(size)} px ({pre.interpolation} interpolation, antialiased).",
        f"3. Centre-crop {size} x {size} px.",
        "4. Scale to float in [0, 1] (divide by 255).",
        f"5. Normalise each channel: mean {_floats(pre.mean)}, std {_floats(pre.std)}.",
        f"6. Feed as NCHW float32, shape (N, 3, {size}, {size}).",
        "",
        "The checkpoint's metadata holds the same recipe, and `tlcore predict --checkpoint RUN IMAGE` applies it. "
        + (
            _multilabel_prediction_rule(run, best)
            if multilabel
            else "Probabilities are calibrated: divide the logits by the checkpoint's temperature "
            f"({_temperature(run, best)}) before the softmax (`tlcore predict` and `tlcore export` do)."
        ),
        "",
        "## Results",
        "",
        *(_multilabel_results(run, best, last) if multilabel else _results(run, best, last)),
        "",
        "## Training",
        "",
        "The exact command:",
        "",
        "```bash",
        command_line(argv),
        *[f"{command_line(args)}  # resumed" for args in resumed],
        "```",
        "",
        f"Resolved configuration: `config.json` in the run folder. Epochs {len(run.history)} of {config.epochs}, "
        f"batch {config.batch_size}" + (f" x {config.accumulate}" if config.accumulate > 1 else "")
        + f", optimizer {config.optimizer}, learning rate {config.lr}, schedule {config.schedule}, "
        f"augmentation {config.augment}, seed {config.seed}, device {run.device}.",
        "",
        "## Versions",
        "",
        *[f"- {name} {version}" for name, version in _versions().items()],
        "",
        "## Intended use and limitations",
        "",
        _multilabel_use(config.dataset, len(run.classes))
        if multilabel
        else f"Classifying images like those of `{_code(config.dataset)}` into the {len(run.classes)} classes above. "
        "It always answers one of these classes: an image of anything else still gets one, so use a rejection "
        "threshold (`tlcore predict --reject-below P`) where other images can occur. The accuracy above is measured "
        "on the validation split described under Data; expect it to hold only for images from the same source, "
        "and check it on your own data (`tlcore eval`) before relying on it. Biases of the starting weights' "
        "training data and of this dataset carry over.",
        "",
    ]
    return "\n".join(line for line in lines if line is not None) + "\n"


def _best_record(run: RunState) -> dict | None:
    """The metrics of the epoch best.safetensors holds (the checkpoint callback's choice, which under --ema
    weighs the averaged weights), else of the epoch with the highest val_acc (multilabel: val_map; the first, on
    ties; a NaN mAP, no class with a positive image, ranks lowest)."""
    saved = run.saved_epochs.get("best.safetensors")
    held = next((m for m in run.history if m.get("epoch") == saved), None)
    key = _selection_key(run)
    return held if held is not None else max(run.history, key=lambda m: _score(m.get(key)), default=None)


def _selection_key(run: RunState) -> str:
    """The metric the best epoch is chosen on: val_map for a multilabel run, val_acc otherwise."""
    return "val_map" if run.config.task == "multilabel" else "val_acc"


def _score(value: Any) -> float:
    """A metric as a number to rank epochs by; missing or NaN ranks below every number."""
    return float(value) if isinstance(value, (int, float)) and value == value else float("-inf")


def _files(run: RunState, best: dict | None) -> str:
    saved = run.saved_epochs
    parts = []
    if "best.safetensors" in saved:
        parts.append(f"`best.safetensors` (epoch {saved['best.safetensors']}, the highest {_selection_key(run)})")
    elif best is not None:
        parts.append(f"`best.safetensors` (epoch {best['epoch']})")
    if "last.safetensors" in saved:
        parts.append(f"`last.safetensors` (epoch {saved['last.safetensors']})")
    return ", ".join(parts) or "none written yet"


def _split(run: RunState) -> str:
    config = run.config
    splits = run.splits
    sizes = _split_sizes(run)
    counts = f"{sizes[0]} training and {sizes[1]} validation images; " if sizes is not None else ""
    if config.folds is not None:
        how = f"fold {config.fold} of {config.folds} (stratified, seed {config.seed}) held out for validation"
    else:
        described = getattr(splits, "validation", "") if splits is not None else ""
        if not described:  # the banner's "validation: ..." note says the same
            notes = getattr(run, "data_notes", None) or []
            noted = [note for note in notes if isinstance(note, str) and note.startswith("validation: ")]
            described = noted[0][len("validation: "):] if noted else ""
        how = described or (
            f"the dataset's validation split, or {config.val_fraction:.0%} of the training images held out "
            f"(seed {config.seed})"
        )
    return counts + _text(how)


def _split_sizes(run: RunState) -> tuple[int, int] | None:
    """(training, validation) image counts: from the run's splits, else from config.json's record, else None."""
    try:
        return len(run.splits.train), len(run.splits.val)
    except (AttributeError, TypeError):  # no splits kept on the state
        pass
    try:  # written by this run at its start; still checked, as anything read from disk
        with open(Path(run.output_dir) / "config.json", encoding="utf-8") as handle:
            resolved = json.load(handle).get("resolved", {})
        train, val = resolved.get("train_images"), resolved.get("val_images")
    except (OSError, ValueError, AttributeError):
        return None
    if all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (train, val)):
        return train, val
    return None


def _classes(classes: list[str]) -> list[str]:
    shown = [f"{index}. {_text(name)}" for index, name in enumerate(classes[:MAX_CLASSES_LISTED])]
    if len(classes) > MAX_CLASSES_LISTED:
        shown.append(f"... and {len(classes) - MAX_CLASSES_LISTED} more: all are named in config.json and the checkpoint.")
    # numbered from 0 (the output index); Markdown would renumber an ordered list, so write them as items
    return [f"- {line}" for line in shown]


def _temperature(run: RunState, best: dict | None) -> str:
    if best is None:
        return "1.0"
    return f"{run.temperatures.get(best['epoch'], 1.0):.4g} for best.safetensors"


def _results(run: RunState, best: dict | None, last: dict | None) -> list[str]:
    if best is None or last is None:
        return ["No epoch has finished yet."]
    lines = [
        f"Best epoch {best['epoch']}: val_acc **{best['val_acc']:.4f}**, val_loss {best['val_loss']:.4f} "
        f"(train_acc {best['train_acc']:.4f}, train_loss {best['train_loss']:.4f}).",
        "",
    ]
    keys = [key for key in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "ema_val_acc", "lr") if key in last]
    lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for record in run.history[-MAX_EPOCH_ROWS:]:
        lines.append("| " + " | ".join(_number(record.get(key)) for key in keys) + " |")
    lines.append("")
    outputs = _validation_for(run, best)
    if outputs is None:
        lines.append(
            "Confusion summary: the validation predictions were not kept for this run (a distributed run, unreadable "
            "validation images or a very large split); `tlcore eval --checkpoint RUN` computes it."
        )
        return lines
    lines += _confusion_summary(outputs, run.classes)
    return lines


def _validation_for(run: RunState, best: dict) -> ValidationOutputs | None:
    """The kept validation outputs of the best epoch, else of the last epoch (said in the summary), else None."""
    for outputs in (run.best_validation, run.last_validation):
        if outputs is not None and outputs.logits.ndim == 2 and outputs.logits.shape[0] == outputs.labels.shape[0]:
            return outputs
    return None


def confusion_matrix(predicted: Any, labels: Any, classes: int) -> Any:
    """``[true, predicted]`` counts (an int64 tensor [classes, classes]) of two int tensors of shape [N];
    pairs with a value outside [0, classes) are ignored."""
    import torch

    valid = (labels >= 0) & (labels < classes) & (predicted >= 0) & (predicted < classes)
    flat = torch.bincount(labels[valid] * classes + predicted[valid], minlength=classes * classes)
    return flat.reshape(classes, classes)


def _confusion_summary(outputs: ValidationOutputs, classes: list[str]) -> list[str]:
    """Per-class images, recall and precision, and the most frequent confusions, in tensor operations: the card
    is rendered after every epoch, and a split may have a thousand classes."""
    import torch

    count = len(classes)
    matrix = confusion_matrix(outputs.logits.argmax(dim=1), outputs.labels, count)
    hits, support, predicted = matrix.diagonal(), matrix.sum(dim=1), matrix.sum(dim=0)
    lines = [
        f"Confusion summary (validation predictions of epoch {outputs.epoch}, {int(support.sum())} images, "
        f"{int(hits.sum())} correct):",
        "",
    ]
    recall = torch.where(support > 0, hits / support.clamp(min=1), torch.full_like(hits, 2, dtype=torch.float64))
    order = torch.arange(count)
    if count > MAX_CLASS_ROWS:
        lines += [f"The {MAX_CLASS_ROWS} classes with the lowest recall:", ""]
        order = torch.argsort(recall, stable=True)[:MAX_CLASS_ROWS]  # classes without images (2) come last
    lines += ["| class | images | recall | precision |", "|---|---|---|---|"]
    for i in order.tolist():
        shown_recall = int(hits[i]) / int(support[i]) if int(support[i]) else None
        shown_precision = int(hits[i]) / int(predicted[i]) if int(predicted[i]) else None
        lines.append(f"| {_text(classes[i])} | {int(support[i])} | {_number(shown_recall)} | {_number(shown_precision)} |")
    off = matrix.clone()
    off.fill_diagonal_(0)
    counts, where = off.flatten().topk(min(TOP_CONFUSIONS, count * count))
    pairs = [(n, i // count, i % count) for n, i in zip(counts.tolist(), where.tolist(), strict=True) if n > 0]
    pairs.sort(key=lambda item: (-item[0], item[1], item[2]))
    lines.append("")
    if pairs:
        lines += ["Most frequent confusions (true -> predicted):", ""]
        lines += [f"- {_text(classes[i])} -> {_text(classes[j])}: {n}" for n, i, j in pairs]
    else:
        lines.append("No validation image was misclassified.")
    return lines


# -- multi-label (--task multilabel) ---------------------------------------------------------------------------------

MULTILABEL_EPOCH_KEYS = (
    "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_map", "val_f1_micro", "val_f1_macro",
    "ema_val_map", "lr",
)


def _multilabel_prediction_rule(run: RunState, best: dict | None) -> str:
    """How a multi-label checkpoint's outputs become labels: a sigmoid per class against that class's threshold."""
    held = f"; those of best.safetensors (epoch {best['epoch']}) are under Results" if best is not None else ""
    return (
        "Predictions: apply a sigmoid to each logit on its own (no softmax, no temperature); class c is predicted "
        "when sigmoid(logit_c) >= threshold_c. The thresholds, one per class in output order, are stored in the "
        f"checkpoint as `thresholds`{held}. Each is the probability that maximised the class's F1 on the validation "
        "split, 0.5 for a class without a positive validation image. An image may get no class, one or several; "
        "`tlcore predict` applies the thresholds."
    )


def _multilabel_results(run: RunState, best: dict | None, last: dict | None) -> list[str]:
    """Results of a multilabel run: the best epoch's mAP and F1, every epoch, the thresholds and per-class scores."""
    if best is None or last is None:
        return ["No epoch has finished yet."]
    lines = [
        f"Best epoch {best['epoch']} (the highest val_map): val_map **{_number(best.get('val_map'))}** (mean average "
        f"precision over the classes with a positive validation image), val_f1_micro {_number(best.get('val_f1_micro'))}"
        f" and val_f1_macro {_number(best.get('val_f1_macro'))} at the epoch's thresholds; val_acc "
        f"{_number(best.get('val_acc'))} (subset accuracy: every class right at probability 0.5), val_loss "
        f"{_number(best.get('val_loss'))} (binary cross-entropy, mean over classes) (train_acc "
        f"{_number(best.get('train_acc'))}, train_loss {_number(best.get('train_loss'))}).",
        "",
    ]
    keys = [key for key in MULTILABEL_EPOCH_KEYS if key in last]
    lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for record in run.history[-MAX_EPOCH_ROWS:]:
        lines.append("| " + " | ".join(_number(record.get(key)) for key in keys) + " |")
    lines.append("")
    outputs = _validation_for(run, best)
    if outputs is None or not _fits_multilabel(outputs, len(run.classes)):
        thresholds = run.thresholds.get(best["epoch"])
        lines.append(
            "Per-class scores: the validation predictions were not kept for this run (unreadable validation "
            "images); `tlcore eval --checkpoint RUN` computes them."
        )
        if thresholds is not None and len(thresholds) == len(run.classes):
            lines += ["", *_threshold_lines(run.classes, thresholds, best["epoch"])]
        return lines
    return lines + _multilabel_summary(run, outputs)


def _fits_multilabel(outputs: ValidationOutputs, classes: int) -> bool:
    """Kept outputs a multilabel summary can read: logits and multi-hot labels, both [N, classes]."""
    return outputs.logits.shape == outputs.labels.shape and outputs.logits.ndim == 2 and outputs.logits.shape[1] == classes


def _threshold_lines(classes: list[str], thresholds: list[float], epoch: int) -> list[str]:
    """The thresholds of an epoch: a table with few classes, else their range (all are in the checkpoint)."""
    if len(classes) <= MAX_CLASS_ROWS:
        lines = [f"Thresholds of epoch {epoch}:", "", "| class | threshold |", "|---|---|"]
        return lines + [f"| {_text(name)} | {value:.4f} |" for name, value in zip(classes, thresholds, strict=True)]
    return [_threshold_summary(thresholds, epoch)]


def _threshold_summary(thresholds: list[float], epoch: int, defaults: int | None = None) -> str:
    """One line on many classes' thresholds: lowest, median, highest, and how many kept 0.5 for want of a positive."""
    ordered = sorted(thresholds)
    median = ordered[(len(ordered) - 1) // 2]
    kept = ""
    if defaults:
        kept = (
            "; 1 class without a positive validation image (its threshold is the default 0.5)"
            if defaults == 1
            else f"; {defaults} classes without a positive validation image (their threshold is the default 0.5)"
        )
    return (
        f"Thresholds of epoch {epoch} ({len(thresholds)} classes, each in the checkpoint): lowest {ordered[0]:.4f}, "
        f"median {median:.4f}, highest {ordered[-1]:.4f}{kept}."
    )


def _multilabel_summary(run: RunState, outputs: ValidationOutputs) -> list[str]:
    """Per-class threshold, positives, predictions, AP, precision, recall and F1 of the kept validation outputs.

    The thresholds are those the run chose for that epoch (``RunState.thresholds``, the checkpoint's), so the
    numbers are the epoch's val_map and F1. With more than MAX_CLASS_ROWS classes: the thresholds' range and the
    classes with the lowest AP (those without a positive image last).
    """

    from tlcore.multilabel import choose_thresholds, class_probabilities, multilabel_metrics

    classes = run.classes
    thresholds = run.thresholds.get(outputs.epoch)
    if thresholds is None or len(thresholds) != len(classes):  # not recorded for that epoch: chosen the run's way
        thresholds = choose_thresholds(class_probabilities(outputs.logits), outputs.labels).tolist()
    scores = multilabel_metrics(outputs.logits, outputs.labels, thresholds, classes)
    lines = [
        f"Per class (validation predictions of epoch {outputs.epoch}, {scores.images} images; a class is predicted "
        f"at its threshold): mAP {_number(scores.map)}, F1 micro {_number(scores.f1_micro)}, F1 macro "
        f"{_number(scores.f1_macro)}, subset accuracy {_number(scores.subset_accuracy)}.",
        "",
    ]
    rows = scores.per_class()
    if len(classes) > MAX_CLASS_ROWS:
        defaults = sum(1 for row in rows if row["support"] == 0)
        lines += [_threshold_summary(thresholds, outputs.epoch, defaults), ""]
        lines += [f"The {MAX_CLASS_ROWS} classes with the lowest AP:", ""]
        # stable sort: ties keep class order; a class without a positive image (AP undefined) after every AP
        rows = sorted(rows, key=lambda row: float("inf") if row["ap"] is None else row["ap"])[:MAX_CLASS_ROWS]
    lines += ["| class | threshold | images | predicted | AP | precision | recall | F1 |", "|---" * 8 + "|"]
    for row in rows:
        lines.append(
            f"| {_text(row['class'])} | {row['threshold']:.4f} | {row['support']} | {row['predicted']} | "
            f"{_number(row['ap'])} | {_number(row['precision'])} | {_number(row['recall'])} | {_number(row['f1'])} |"
        )
    return lines


def _multilabel_use(dataset: str, classes: int) -> str:
    """The intended-use paragraph of a multilabel card."""
    return (
        f"Tagging images like those of `{_code(dataset)}` with any of the {classes} classes above. Each class is "
        "answered on its own: an image may get none, one or several, and an image of anything else may still get "
        "some. The thresholds were chosen on the same validation split the F1 figures above are measured on, so "
        "those figures are optimistic; mAP does not depend on them. Expect the figures to hold only for images "
        "from the same source, and check them on your own data (`tlcore eval`) before relying on them; raise a "
        "class's threshold for fewer false positives, lower it for fewer misses. Biases of the starting weights' "
        "training data and of this dataset carry over."
    )


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in ("tlcore", "torch", "torchvision", "timm"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 and value else f"{value:.4f}"
    return str(value)


def _floats(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{float(v):.4f}" for v in values) + ")"


def _text(value: str) -> str:
    """Text from the data made inert in Markdown: one line, Markdown and HTML punctuation escaped."""
    flat = " ".join(str(value).split())
    escaped = "".join("\\" + char if char in "\\`*_[]<>|~" else char for char in flat)
    return "\\" + escaped if escaped[:1] in ("#", "-", "+", "=") else escaped  # no heading or list item either


def _code(value: str) -> str:
    """Text inside a code span: one line, backticks replaced (a span cannot escape them)."""
    return " ".join(str(value).split()).replace("`", "'")


# -- after training: export and push --------------------------------------------------------------------------------


def read_card(folder: Path) -> str | None:
    """The model card tlcore wrote in ``folder`` (its text), or None when there is none or README.md is not ours.

    Read from disk, so untrusted: at most MAX_CARD_BYTES, UTF-8, and carrying
    the card's marker (a README.md a person wrote is never taken for a card).
    """
    path = Path(folder) / CARD_NAME
    try:
        if not path.is_file() or path.stat().st_size > MAX_CARD_BYTES:
            return None
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    # the marker right after the front matter, where render_card puts it: not merely quoted somewhere in a text
    return text if text.startswith("---\n") and f"\n---\n{MARKER}\n" in text[:4096] else None


def copy_card_for_export(checkpoint: Path, target: Path, fmt: str) -> Path | None:
    """Write the run's card beside an exported file as ``<target>.md`` (never over a README.md); None without a card.

    The copy gains a section naming the exported file and its input and
    output, since the card itself describes the checkpoint.
    """
    text = read_card(Path(checkpoint).parent)
    if text is None:
        return None
    card = Path(target).with_name(Path(target).name + ".md")
    head = text[: text.index(MARKER)]  # the front matter: a multilabel card's tag is there
    outputs = (
        "one logit per class (multi-label: apply a sigmoid to each; class c is predicted when it reaches the "
        "checkpoint's threshold c, as described under Preprocessing)"
        if f"\n{MULTILABEL_TAG}\n" in head
        else "calibrated logits (already divided by the temperature)"
    )
    note = (
        f"\n## This export\n\n`{_code(Path(target).name)}` ({fmt}) was exported from `{_code(Path(checkpoint).name)}`. "
        f"It takes the normalised float NCHW input described under Preprocessing and returns {outputs}; "
        f"classes and preprocessing are also in `{_code(Path(target).name)}.json`.\n"
    )
    atomic_write_bytes(card, (text.rstrip("\n") + "\n" + note).encode("utf-8"))
    return card
