"""Using a trained model: rebuild it from a checkpoint file alone and classify images.

>>> predictor = tlcore.load_checkpoint("runs/my-run/best.safetensors")
>>> predictor.predict(["cat.jpg", pil_image, uint8_tensor], top_k=3)[0].label

The checkpoint's metadata names the backbone, head and preprocessing; the
backbone is built through the plugin catalog without pretrained weights, and
every tensor of the file is then loaded strictly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from tlcore.backbone import Backbone, BackboneOptions, Preprocessing
from tlcore.build import call_factory
from tlcore.checkpoint import CheckpointInfo, read_checkpoint
from tlcore.data import build_transform, to_rgb
from tlcore.device import pick_device
from tlcore.errors import ConfigError, DataError, PluginError, WeightsError
from tlcore.heads import HeadOptions
from tlcore.model import Classifier
from tlcore.plugins import PluginHost, get_host
from tlcore.weights import find_weights_file

# What --predict looks for inside folders (case-insensitive); files named on the command line are always tried.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

ImageInput = str | Path | Image.Image | torch.Tensor


@dataclass
class Prediction:
    """The top classes for one image, most probable first."""

    source: str  # the file name, or "#i" for an in-memory image
    labels: list[str]
    probabilities: list[float]
    indices: list[int]

    @property
    def label(self) -> str:
        """The most probable class."""
        return self.labels[0]

    @property
    def probability(self) -> float:
        """The probability of the most probable class."""
        return self.probabilities[0]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as `tlcore predict --json` prints it."""
        return {
            "image": self.source,
            "predictions": [
                {"class": label, "index": index, "probability": probability}
                for label, index, probability in zip(self.labels, self.indices, self.probabilities, strict=True)
            ],
        }


class Predictor:
    """A trained classifier ready for inference: model in eval mode, its classes and preprocessing."""

    def __init__(self, model: Classifier, info: CheckpointInfo, device: torch.device, path: Path | None = None):
        self.model = model.to(device).eval()
        self.info = info
        self.device = device
        self.path = path
        self.classes: list[str] = list(info.classes)
        self.image_size: int = info.image_size
        self.preprocessing = Preprocessing.from_dict(info.preprocessing)
        # exactly the transform validation used during training: resize, centre-crop, normalise
        self.transform = build_transform(self.preprocessing, self.image_size, train=False, augment="none", flip=False)

    def preprocess(self, image: ImageInput) -> torch.Tensor:
        """One image (path, PIL image, uint8 tensor, or float tensor in [0, 1]) to a normalised ``(3, S, S)`` tensor."""
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
        return self.transform(to_rgb(image))

    @torch.inference_mode()
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, classes)`` on the CPU for a normalised batch ``(N, 3, S, S)``."""
        return self.model(batch.to(self.device)).float().cpu()

    def predict(self, images: ImageInput | Iterable[ImageInput], top_k: int = 5, batch_size: int = 64) -> list[Prediction]:
        """Top-``top_k`` classes with probabilities for each image, in batches of ``batch_size``.

        ``images`` is one image or a sequence of them: paths, PIL images of any
        mode and size, uint8 tensors ``(C, H, W)`` or ``(H, W)``, float tensors
        in [0, 1], or a batch tensor ``(N, C, H, W)``. An unreadable file raises
        DataError naming it.
        """
        if top_k < 1:
            raise ConfigError(f"top_k must be at least 1, got {top_k}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        items = _as_list(images)
        results: list[Prediction] = []
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            batch = torch.stack([self.preprocess(item) for item in chunk])
            names = [_source_name(item, start + i) for i, item in enumerate(chunk)]
            results.extend(self.top_k(self.logits(batch), names, top_k))
        return results

    def top_k(self, logits: torch.Tensor, names: Sequence[str], top_k: int) -> list[Prediction]:
        """Turn logits into :class:`Prediction` objects (``top_k`` is capped at the number of classes)."""
        probabilities = logits.softmax(dim=1)
        values, indices = probabilities.topk(min(top_k, len(self.classes)), dim=1)
        return [
            Prediction(name, [self.classes[i] for i in row_indices], row_values, row_indices)
            for name, row_values, row_indices in zip(names, values.tolist(), indices.tolist(), strict=True)
        ]


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
    return Predictor(model, info, pick_device(device), path)


def build_model(info: CheckpointInfo, host: PluginHost) -> Classifier:
    """An untrained :class:`Classifier` of the architecture a checkpoint records."""
    entry = host.catalog("backbones").resolve(info.backbone)
    options = BackboneOptions(pretrained=False, image_size=info.image_size)
    backbone = call_factory(entry, "backbones", info.backbone, options)
    if not isinstance(backbone, Backbone):
        raise PluginError(f"plugin {entry.plugin}: backbone {info.backbone!r} returned {type(backbone).__name__}")
    head_entry = host.catalog("heads").resolve(info.head)
    # only the options HeadOptions knows: a newer tlcore may record more
    known = {f.name for f in dataclasses.fields(HeadOptions)}
    head_options = HeadOptions(**{k: v for k, v in (info.head_options or {}).items() if k in known})
    head = call_factory(head_entry, "heads", backbone.feature_dim, len(info.classes), head_options)
    if not isinstance(head, torch.nn.Module):
        raise PluginError(f"plugin {head_entry.plugin}: head {info.head!r} returned {type(head).__name__}, not a Module")
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
                details.append(f"{label}: {', '.join(keys[:3])}{' …' if len(keys) > 3 else ''}")
        raise WeightsError(f"{path} does not fit the model its metadata describes; {'; '.join(details)}")
    model.load_state_dict(tensors, strict=True)


def open_image(path: Path) -> Image.Image:
    """Open and fully decode an image file; DataError naming the file when it cannot be read."""
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file fails here, not in the middle of a batch
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise DataError(f"cannot read image {path}: {reason}") from error
    return image


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
        if path.is_file():
            found.append(path)
            continue
        for candidate in sorted(path.rglob("*")):
            hidden = any(part.startswith(".") for part in candidate.relative_to(path).parts)
            if candidate.is_file() and not hidden and candidate.suffix.lower() in IMAGE_EXTENSIONS:
                found.append(candidate)
    if not found:
        where = ", ".join(str(p) for p in paths)
        raise DataError(f"no images found in {where} (looked for {', '.join(IMAGE_EXTENSIONS)} files)")
    return found


def predict_files(
    predictor: Predictor,
    files: Sequence[Path],
    top_k: int = 5,
    batch_size: int = 64,
    warn: Callable[[str], None] | None = None,
) -> Iterator[Prediction]:
    """Predict image files batch by batch, yielding as each batch is done.

    A file that cannot be decoded is passed to ``warn`` (one message naming
    it) and skipped; DataError at the end when no file at all could be read.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    read = 0
    for start in range(0, len(files), batch_size):
        images, names = [], []
        for path in files[start : start + batch_size]:
            try:
                images.append(open_image(path))
                names.append(str(path))
            except DataError as error:
                if warn is not None:
                    warn(str(error))
        if images:
            read += len(images)
            batch = torch.stack([predictor.preprocess(image) for image in images])
            yield from predictor.top_k(predictor.logits(batch), names, top_k)
    if read == 0:
        raise DataError(
            "the image could not be read" if len(files) == 1 else f"none of the {len(files)} images could be read"
        )


def render_prediction(prediction: Prediction, width: int) -> str:
    """One line of `tlcore predict`: the file, then each class with its probability."""
    classes = "  ".join(
        f"{label} {probability:.4f}" for label, probability in zip(prediction.labels, prediction.probabilities, strict=True)
    )
    return f"{prediction.source:<{width}}  {classes}"


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
