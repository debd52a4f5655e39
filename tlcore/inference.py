"""Using a trained model: rebuild it from a checkpoint file alone and classify images.

>>> predictor = tlcore.load_checkpoint("runs/my-run/best.safetensors")
>>> predictor.predict(["cat.jpg", pil_image, uint8_tensor], top_k=3)[0].label

The checkpoint's metadata names the backbone, head and preprocessing; the
backbone is built through the plugin catalog without pretrained weights, and
every tensor of the file is then loaded strictly.

A multilabel checkpoint (``task`` multilabel, :mod:`tlcore.multilabel`)
predicts, for each image, every class whose sigmoid probability reaches that
class's threshold (recorded in the checkpoint):

>>> predictor.predict("photo.jpg")[0].labels  # e.g. ["cat", "sofa"], most probable first
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from tlcore import heap, images
from tlcore.backbone import BackboneOptions, Preprocessing
from tlcore.build import make_backbone, make_head
from tlcore.calibration import UNKNOWN, TemperatureScaled, check_reject_below
from tlcore.checkpoint import CheckpointInfo, read_checkpoint
from tlcore.data import build_transform, to_rgb
from tlcore.device import pick_device
from tlcore.errors import ConfigError, DataError, WeightsError
from tlcore.heads import HeadOptions
from tlcore.messages import short_repr, shorten
from tlcore.model import Classifier
from tlcore.plugins import PluginHost, get_host
from tlcore.tta import TTAModel, TTAViews, flips_allowed
from tlcore.weights import find_weights_file

# What --predict looks for inside folders (case-insensitive); files named on the command line are always tried.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

ImageInput = str | Path | Image.Image | torch.Tensor


@dataclass
class Prediction:
    """What a model says about one image.

    ``task`` "multiclass": ``labels`` are the ``top_k`` most probable classes,
    most probable first, with their (calibrated softmax) ``probabilities`` and
    class ``indices``; ``label`` is the first, or "unknown" when rejected.

    ``task`` "multilabel": ``labels`` are the image's predicted classes, every
    class whose sigmoid probability is at or above its ``thresholds`` entry
    (possibly none), most probable first, with ``probabilities``, ``indices``
    and ``thresholds`` in the same order. With ``top_k`` asked, ``top_labels``,
    ``top_probabilities`` and ``top_indices`` hold the ``top_k`` most probable
    classes whatever their thresholds. Rejection does not apply.
    """

    source: str  # the file name, or "#i" for an in-memory image
    labels: list[str]
    probabilities: list[float]
    indices: list[int]
    tta_views: list[str] | None = None  # the views whose softmax (multilabel: sigmoid) was averaged; None: one view
    reject_below: float | None = None  # the rejection threshold asked for; None: every image is answered
    rejected: bool = False  # the top probability is below ``reject_below``: the answer is "unknown"
    task: str = "multiclass"  # multiclass or multilabel (tlcore.multilabel.TASKS)
    thresholds: list[float] | None = None  # multilabel: the threshold of each class in ``labels``
    top_labels: list[str] | None = None  # multilabel with top_k: the top_k most probable classes, most probable first
    top_probabilities: list[float] | None = None
    top_indices: list[int] | None = None

    @property
    def label(self) -> str:
        """The most probable class, or ``"unknown"`` when the prediction was rejected (see ``rejected``).

        Multilabel: the predicted classes joined by ``;`` (a label cell the CSV dataset reads back), ``""`` for none.
        """
        if self.task == "multilabel":
            return ";".join(self.labels)
        return UNKNOWN if self.rejected else self.labels[0]

    @property
    def probability(self) -> float:
        """The probability of the most probable class (multilabel: of the first predicted one; NaN when none is)."""
        return self.probabilities[0] if self.probabilities else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as `tlcore predict --json` prints it.

        Multilabel: ``{"image", "task": "multilabel", "labels": [{"class", "index", "probability", "threshold"}],
        "top": [{"class", "index", "probability"}] (with top_k), "tta_views" (with TTA)}``.
        """
        if self.task == "multilabel":
            return self._multilabel_dict()
        record = {
            "image": self.source,
            "predictions": [
                {"class": label, "index": index, "probability": probability}
                for label, index, probability in zip(self.labels, self.indices, self.probabilities, strict=True)
            ],
        }
        if self.reject_below is not None:  # "label" is the answer: a class, or "unknown"; "unknown" says which
            record = {**record, "label": self.label, "unknown": self.rejected, "reject_below": self.reject_below}
        return record if self.tta_views is None else {**record, "tta_views": list(self.tta_views)}

    def _multilabel_dict(self) -> dict[str, Any]:
        labels = zip(self.labels, self.indices, self.probabilities, self.thresholds or [], strict=True)
        record: dict[str, Any] = {
            "image": self.source,
            "task": self.task,
            "labels": [
                {"class": label, "index": index, "probability": probability, "threshold": threshold}
                for label, index, probability, threshold in labels
            ],
        }
        if self.top_labels is not None:
            top = zip(self.top_labels, self.top_indices or [], self.top_probabilities or [], strict=True)
            record["top"] = [{"class": label, "index": index, "probability": value} for label, index, value in top]
        if self.tta_views is not None:
            record["tta_views"] = list(self.tta_views)
        return record


class MultilabelTTAModel(torch.nn.Module):
    """Wraps a multi-label classifier: views ``(N, V, 3, S, S)`` in, the logit of the views' mean sigmoid out ``(N, C)``.

    Each class's probability is the mean of its sigmoid over the views (as
    multiclass TTA averages the softmax, :class:`tlcore.tta.TTAModel`); the output
    is its logit, so whatever applies a sigmoid gets that mean back. Computed as
    ``logsumexp(logsigmoid(x)) - logsumexp(logsigmoid(-x))`` over the views, which
    is that logit exactly, finite and in float32 (any device) even where a probability rounds to 0 or 1.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        count, per_image = views.shape[:2]
        logits = self.model(views.flatten(0, 1)).float().view(count, per_image, -1)
        # log(mean p) - log(mean (1 - p)): the 1/V of both means cancels
        positive = torch.nn.functional.logsigmoid(logits).logsumexp(dim=1)
        return positive - torch.nn.functional.logsigmoid(-logits).logsumexp(dim=1)


class Predictor:
    """A trained classifier ready for inference: model in eval mode, its classes, preprocessing and temperature.

    Probabilities are calibrated: ``softmax(logits / temperature)`` with the
    checkpoint's fitted temperature (1.0 for a checkpoint without one).
    ``model`` gives the raw logits; ``calibrated`` the logits divided by the temperature.

    ``task`` is the checkpoint's: "multiclass" or "multilabel". A multilabel
    predictor's probabilities are ``sigmoid(logits)`` per class (no
    temperature) and ``thresholds`` (one probability per class, classes order)
    decide which classes an image has; multiclass: ``thresholds`` None.
    Raises WeightsError when a multilabel ``info`` lacks one threshold in [0, 1] per class.
    """

    def __init__(self, model: Classifier, info: CheckpointInfo, device: torch.device, path: Path | None = None):
        self.model = model.to(device).eval()
        self.info = info
        self.task: str = getattr(info, "task", "multiclass")
        self.multilabel = self.task == "multilabel"
        self.thresholds: list[float] | None = _checked_thresholds(info, path) if self.multilabel else None
        # multilabel has no temperature (tlcore.multilabel: a sigmoid per class, thresholds chosen on the raw logits)
        self.temperature: float = 1.0 if self.multilabel else float(getattr(info, "temperature", 1.0))
        self.calibrated = TemperatureScaled(self.model, self.temperature).to(device).eval()
        self.device = device
        self.path = path
        self.classes: list[str] = list(info.classes)
        self.image_size: int = info.image_size
        self.preprocessing = Preprocessing.from_dict(info.preprocessing)
        # exactly the transform validation used during training: resize, centre-crop, normalise
        self.transform = build_transform(self.preprocessing, self.image_size, train=False, augment="none", flip=False)
        # test-time views (tlcore.tta): mirrored ones only where the checkpoint's data allowed flips
        self.views = TTAViews(self.preprocessing, self.image_size, flip=flips_allowed(info.data))

    def preprocess(self, image: ImageInput, *, tta: bool = False) -> torch.Tensor:
        """One image (path, PIL image, uint8 tensor, or float tensor in [0, 1]) to a normalised ``(3, S, S)`` tensor.

        With ``tta``, its test-time views ``(V, 3, S, S)`` instead (:class:`tlcore.tta.TTAViews`, named in
        ``self.views.names``).
        """
        if isinstance(image, (str, Path)):
            image = open_image(Path(image))
        if isinstance(image, torch.Tensor):
            if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[0] not in (1, 3, 4)):
                raise DataError(f"an image tensor must be (H, W) or (C, H, W) with C in 1, 3, 4; got {tuple(image.shape)}")
            if image.is_floating_point():
                image = image.float()  # float images are taken as RGB in [0, 1], like torchvision's to_tensor
            elif image.dtype != torch.uint8:
                raise DataError(f"an image tensor must be uint8 (0-255) or float (0-1), got {image.dtype}")
        elif not isinstance(image, Image.Image):
            raise DataError(f"cannot classify a {type(image).__name__}; pass a path, a PIL image or an image tensor")
        return (self.views if tta else self.transform)(to_rgb(image))

    @torch.inference_mode()
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, classes)`` on the CPU for a normalised batch ``(N, 3, S, S)``."""
        return self.model(batch.to(self.device)).float().cpu()

    @torch.inference_mode()
    def calibrated_logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits divided by the temperature ``(N, classes)`` on the CPU: their softmax is the calibrated probability."""
        return self.calibrated(batch.to(self.device)).float().cpu()

    @torch.inference_mode()
    def tta_log_probabilities(self, views: torch.Tensor) -> torch.Tensor:
        """Log of the mean calibrated softmax over each image's views ``(N, V, 3, S, S)``: ``(N, classes)`` on the CPU."""
        return TTAModel(self.calibrated)(views.to(self.device)).cpu()

    @torch.inference_mode()
    def tta_multilabel_logits(self, views: torch.Tensor) -> torch.Tensor:
        """Multilabel: the logit of each class's mean sigmoid over the views ``(N, V, 3, S, S)``: ``(N, classes)``, CPU."""
        return MultilabelTTAModel(self.model)(views.to(self.device)).cpu()

    def check_options(self, top_k: int | None, reject_below: float | None) -> tuple[int | None, float | None]:
        """``top_k`` and ``reject_below`` checked for this checkpoint; ConfigError for a bad value.

        ``top_k`` None means 5 for multiclass and no top list for multilabel (its
        predicted labels are shown either way). ``reject_below`` is for multiclass only.
        """
        check_top_k(top_k)
        reject_below = check_reject_below(reject_below)
        if not self.multilabel:
            return (DEFAULT_TOP_K if top_k is None else top_k), reject_below
        if reject_below is not None:
            where = self.path if self.path is not None else "the model"
            raise ConfigError(
                f"--reject-below is for multiclass checkpoints (it rejects a low top softmax probability); "
                f"{where} is multilabel, where each class has its own threshold: leave it out"
            )
        return top_k, None

    def predict(
        self,
        images: ImageInput | Iterable[ImageInput],
        top_k: int | None = None,
        batch_size: int = 64,
        *,
        tta: bool = False,
        reject_below: float | None = None,
    ) -> list[Prediction]:
        """Top-``top_k`` classes with calibrated probabilities for each image, in batches of ``batch_size``.

        ``top_k`` None: 5. A multilabel checkpoint gives each image's predicted
        classes instead (every class whose sigmoid probability reaches its threshold;
        :class:`Prediction`), plus the ``top_k`` most probable ones when ``top_k`` is given;
        ``tta`` then averages the views' sigmoid probabilities; ``reject_below`` is a ConfigError.

        ``images`` is one image or a sequence of them: paths, PIL images of any
        mode and size, uint8 tensors ``(C, H, W)`` or ``(H, W)``, float tensors
        in [0, 1], or a batch tensor ``(N, C, H, W)``. An unreadable file raises
        DataError naming it. With ``tta`` the probabilities are the mean of the
        softmax over each image's test-time views (:mod:`tlcore.tta`; 5 crops,
        10 with flips where the checkpoint's data allowed them), and each
        prediction names its views in ``tta_views``. With ``reject_below`` (a
        probability in [0, 1]) an image whose top probability is below it is
        answered ``"unknown"`` (``rejected`` True; the classes are still listed).
        ConfigError for a bad ``top_k``, ``batch_size`` or ``reject_below``.
        """
        top_k, reject_below = self.check_options(top_k, reject_below)
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        items = _as_list(images)
        results: list[Prediction] = []
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            names = [_source_name(item, start + i) for i, item in enumerate(chunk)]
            prepared = [self.preprocess(item, tta=tta) for item in chunk]
            results.extend(self.classify(prepared, names, top_k, tta=tta, reject_below=reject_below))
        return results

    def classify(
        self,
        prepared: list[torch.Tensor],
        names: Sequence[str],
        top_k: int | None,
        *,
        tta: bool,
        reject_below: float | None = None,
    ) -> list[Prediction]:
        """Predictions for images already through :meth:`preprocess` (with the same ``tta``), calibrated.

        ``top_k`` and ``reject_below`` as :meth:`check_options` returns them.
        """
        batch = torch.stack(prepared)
        if self.multilabel:
            logits = self.tta_multilabel_logits(batch) if tta else self.calibrated_logits(batch)  # T is 1
            predictions = self.label_sets(logits, names, top_k)
            for prediction in predictions:
                prediction.tta_views = list(self.views.names) if tta else None
            return predictions
        top_k = DEFAULT_TOP_K if top_k is None else top_k
        if not tta:
            return self.top_k(self.calibrated_logits(batch), names, top_k, reject_below)
        # softmax of log p gives p back
        predictions = self.top_k(self.tta_log_probabilities(batch), names, top_k, reject_below)
        for prediction in predictions:
            prediction.tta_views = list(self.views.names)
        return predictions

    def top_k(
        self, logits: torch.Tensor, names: Sequence[str], top_k: int, reject_below: float | None = None
    ) -> list[Prediction]:
        """Turn logits (already calibrated) into :class:`Prediction` objects (``top_k`` is capped at the class count).

        An image whose top probability is below ``reject_below`` is marked ``rejected`` (answered "unknown").
        """
        probabilities = logits.softmax(dim=1)
        values, indices = probabilities.topk(min(top_k, len(self.classes)), dim=1)
        return [
            Prediction(
                name,
                [self.classes[i] for i in row_indices],
                row_values,
                row_indices,
                reject_below=reject_below,
                rejected=reject_below is not None and row_values[0] < reject_below,
            )
            for name, row_values, row_indices in zip(names, values.tolist(), indices.tolist(), strict=True)
        ]

    def label_sets(self, logits: torch.Tensor, names: Sequence[str], top_k: int | None = None) -> list[Prediction]:
        """Multilabel: logits ``(N, classes)`` to :class:`Prediction` objects, each with every class at its threshold.

        A class is in ``labels`` when ``sigmoid(logit) >= threshold``
        (:func:`tlcore.multilabel.predicted_classes`, the rule eval and training use); with ``top_k``
        (capped at the class count) the most probable classes are listed too.
        """
        from tlcore.multilabel import class_probabilities, predicted_classes

        if self.thresholds is None:
            raise ConfigError("label_sets is for multilabel checkpoints; this one is multiclass")
        logits = logits.cpu()
        probabilities, predicted = class_probabilities(logits), predicted_classes(logits, self.thresholds)
        results = []
        for name, row, row_predicted in zip(names, probabilities, predicted, strict=True):
            chosen = row_predicted.nonzero().flatten()
            chosen = chosen[torch.argsort(row[chosen], descending=True, stable=True)].tolist()
            prediction = Prediction(
                name,
                [self.classes[i] for i in chosen],
                [float(row[i]) for i in chosen],
                chosen,
                task="multilabel",
                thresholds=[self.thresholds[i] for i in chosen],
            )
            if top_k is not None:
                values, indices = row.topk(min(top_k, len(self.classes)))
                prediction.top_labels = [self.classes[i] for i in indices.tolist()]
                prediction.top_probabilities = values.tolist()
                prediction.top_indices = indices.tolist()
            results.append(prediction)
        return results


def _checked_thresholds(info: CheckpointInfo, path: Path | None) -> list[float]:
    """A multilabel checkpoint's thresholds, one probability in [0, 1] per class; WeightsError naming it otherwise.

    :func:`tlcore.checkpoint.read_checkpoint` validates them already; this covers a CheckpointInfo made in Python.
    """
    thresholds = info.thresholds
    ok = (
        isinstance(thresholds, (list, tuple))
        and len(thresholds) == len(info.classes)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in thresholds)
    )
    if not ok:
        where = path if path is not None else "the checkpoint info"
        raise WeightsError(
            f"{where}: a multilabel checkpoint needs thresholds, one probability in [0, 1] for each of its "
            f"{len(info.classes)} classes; got {short_repr(thresholds)}"
        )
    return [float(v) for v in thresholds]  # type: ignore[union-attr]


MAX_TOP_K = 10**6  # classes a checkpoint may have (tlcore.checkpoint.MAX_CLASSES); more is never meant
DEFAULT_TOP_K = 5  # classes a multiclass prediction lists when top_k is not given


def check_top_k(top_k: int | None) -> None:
    """ConfigError unless ``top_k`` (classes shown per image) is None (the default) or an integer from 1.

    It is capped at the class count.
    """
    if top_k is None:
        return
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
        raise ConfigError(f"top_k must be an integer from 1 to {MAX_TOP_K} (classes shown per image), got {top_k}")


def load_checkpoint(path: str | Path, device: str = "auto", host: PluginHost | None = None) -> Predictor:
    """Rebuild the model a tlcore checkpoint (or a run folder) describes, ready for inference.

    The backbone is resolved by name through the installed plugins and built
    without pretrained weights; the head is rebuilt from the recorded head and
    options; then every tensor of the file is loaded strictly.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise WeightsError(f"checkpoint {path} does not exist; pass a .safetensors file a run wrote, or its run folder")
    path = find_weights_file(path)  # a run folder gives its best.safetensors
    tensors, info = read_checkpoint(path)
    model = build_model(info, host or get_host())
    load_strict(model, tensors, path)
    heap.started()  # the tlcore command's start-up ends with the model built (tlcore/heap.py)
    return Predictor(model, info, pick_device(device), path)


def build_model(info: CheckpointInfo, host: PluginHost) -> Classifier:
    """An untrained :class:`Classifier` of the architecture a checkpoint records."""
    backbone = make_backbone(info.backbone, host, BackboneOptions(pretrained=False, image_size=info.image_size))
    # only the options HeadOptions knows: a newer tlcore may record more
    known = {f.name for f in dataclasses.fields(HeadOptions)}
    head_options = HeadOptions(**{k: v for k, v in (info.head_options or {}).items() if k in known})
    head = make_head(info.head, host, backbone.feature_dim, len(info.classes), head_options)
    return Classifier(backbone.module, head)


def load_strict(model: Classifier, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Load every tensor of the checkpoint; any missing, extra or misshapen tensor is a WeightsError."""
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    shapes = [
        f"{k} {tuple(tensors[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in tensors and tensors[k].shape != own[k].shape
    ]
    if missing or extra or shapes:
        details = []
        for label, keys in (("missing", missing), ("unexpected", extra), ("wrong shapes", shapes)):
            if keys:
                details.append(f"{label}: {shorten(keys, 3)}")
        raise WeightsError(f"{path} does not fit the model its metadata describes; {'; '.join(details)}")
    model.load_state_dict(tensors, strict=True)


def open_image(path: Path) -> Image.Image:
    """Open and fully decode an image file; DataError naming the file when it cannot be read.

    The one decoding function of training and eval (:func:`tlcore.images.open_image`): regular files only,
    the decompression-bomb limit, every decoder failure caught.
    """
    return images.open_image(path)


def find_images(paths: Iterable[str | Path]) -> list[Path]:
    """Files named directly, plus every image file (by extension) found recursively in folders, in order.

    Hidden files and folders are skipped. DataError when a path does not
    exist or nothing at all is found.
    """
    found: list[Path] = []
    paths = [Path(p).expanduser() for p in paths]
    for path in paths:
        if not path.exists():
            raise DataError(f"{path} does not exist")
        if not path.is_dir():  # a pipe or device named here is refused by open_image, never opened
            found.append(path)
            continue
        for candidate in sorted(path.rglob("*")):
            hidden = any(part.startswith(".") for part in candidate.relative_to(path).parts)
            # not only regular files: a pipe or broken link named like an image is reported when read, not dropped
            if not candidate.is_dir() and not hidden and candidate.suffix.lower() in IMAGE_EXTENSIONS:
                found.append(candidate)
    if not found:
        where = ", ".join(str(p) for p in paths)
        raise DataError(f"no images found in {where} (looked for {', '.join(IMAGE_EXTENSIONS)} files)")
    return found


def predict_files(
    predictor: Predictor,
    files: Sequence[Path],
    top_k: int | None = None,
    batch_size: int = 64,
    warn: Callable[[str], None] | None = None,
    *,
    tta: bool = False,
    reject_below: float | None = None,
) -> Iterator[Prediction]:
    """Predict image files batch by batch, yielding as each batch is done.

    A file that cannot be decoded is passed to ``warn`` (one message naming
    it) and skipped; DataError at the end when no file at all could be read.
    ``tta`` averages test-time views and ``reject_below`` answers "unknown", and ``top_k`` None means
    the default, as :meth:`Predictor.predict` does (multilabel: the predicted classes, see :class:`Prediction`).
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    top_k, reject_below = predictor.check_options(top_k, reject_below)
    read, first_error = 0, ""
    for start in range(0, len(files), batch_size):
        images, names = [], []
        for path in files[start : start + batch_size]:
            try:
                images.append(open_image(path))
                names.append(str(path))
            except DataError as error:
                first_error = first_error or str(error)
                if warn is not None and len(files) > 1:  # one file: the error below names it, once
                    warn(str(error))
        if images:
            read += len(images)
            prepared = [predictor.preprocess(image, tta=tta) for image in images]
            yield from predictor.classify(prepared, names, top_k, tta=tta, reject_below=reject_below)
    if read == 0:
        raise DataError(first_error if len(files) == 1 else f"none of the {len(files)} images could be read ({first_error})")


def render_prediction(prediction: Prediction, width: int) -> str:
    """One line of `tlcore predict`: the file, then each class with its probability ("unknown" first when rejected).

    Multilabel: the file, its predicted classes with their probabilities (or a note that none reaches its
    threshold), then ``| top K:`` and the most probable classes when they were asked for.
    """
    if prediction.task == "multilabel":
        return _render_label_set(prediction, width)
    classes = "  ".join(
        f"{label} {probability:.4f}" for label, probability in zip(prediction.labels, prediction.probabilities, strict=True)
    )
    if prediction.rejected:
        classes = f"{UNKNOWN} (top probability below {prediction.reject_below:g}):  {classes}"
    return f"{prediction.source:<{width}}  {classes}"


def _render_label_set(prediction: Prediction, width: int) -> str:
    shown = "  ".join(f"{label} {p:.4f}" for label, p in zip(prediction.labels, prediction.probabilities, strict=True))
    line = f"{prediction.source:<{width}}  {shown or '(no class reaches its threshold)'}"
    if prediction.top_labels is not None:
        top = zip(prediction.top_labels, prediction.top_probabilities or [], strict=True)
        line += f"  | top {len(prediction.top_labels)}: " + "  ".join(f"{label} {p:.4f}" for label, p in top)
    return line


def _as_list(images: ImageInput | Iterable[ImageInput]) -> list[ImageInput]:
    """One image, a sequence of images, or a 4-D batch tensor, as a list of single images."""
    if isinstance(images, torch.Tensor):
        return list(images.unbind(0)) if images.ndim == 4 else [images]
    if isinstance(images, (str, Path, Image.Image)):
        return [images]
    return list(images)


def _source_name(item: ImageInput, index: int) -> str:
    if isinstance(item, (str, Path)):
        return str(item)
    filename = getattr(item, "filename", "")  # PIL images opened from a file remember it
    return filename or f"#{index}"
