"""The backbone contract: one shape for every model zoo.

A provider plugin turns a name such as ``torchvision:resnet18`` into a
:class:`Backbone`. The core never looks inside the module: it puts its own head
on ``feature_dim`` pooled features, and freezes or scales learning rates by the
ordered ``layer_groups``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from tlcore.errors import PluginError

INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


@dataclass(frozen=True)
class Preprocessing:
    """How images must be prepared for a backbone's weights."""

    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    input_size: int = 224  # the square size the weights were trained at
    interpolation: str = "bilinear"  # one of INTERPOLATIONS
    crop_pct: float = 0.875  # evaluation: resize to input_size / crop_pct, then centre-crop
    min_size: int = 32  # the smallest square input the architecture accepts
    fixed_size: bool = False  # True when it accepts input_size only (a ViT built for one size)

    def resize_for(self, size: int) -> int:
        """The evaluation resize (pixels, shorter side) before a centre crop of ``size``: ``size / crop_pct``.

        Every evaluation path (per-image, in-memory, GPU-decoded) and the export sidecar use this one formula.
        """
        return max(size, int(round(size / self.crop_pct)))

    def to_dict(self) -> dict:
        """Return a JSON-ready dict (tuples become lists)."""
        return {
            "mean": list(self.mean),
            "std": list(self.std),
            "input_size": self.input_size,
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
            "min_size": self.min_size,
            "fixed_size": self.fixed_size,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        """Inverse of :meth:`to_dict`."""
        return cls(
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
            input_size=int(data["input_size"]),
            interpolation=str(data.get("interpolation", "bilinear")),
            crop_pct=float(data.get("crop_pct", 0.875)),
            min_size=int(data.get("min_size", 32)),
            fixed_size=bool(data.get("fixed_size", False)),
        )


@dataclass(frozen=True)
class LayerGroup:
    """A named, contiguous part of a backbone, from input (stem) to output.

    ``prefixes`` are qualified names inside ``Backbone.module``: the group owns
    every parameter, buffer and submodule whose name equals a prefix or starts
    with ``prefix + "."``.
    """

    name: str
    prefixes: tuple[str, ...]

    def owns(self, qualified_name: str) -> bool:
        """True if the parameter or module called ``qualified_name`` is in this group."""
        return any(qualified_name == p or qualified_name.startswith(p + ".") for p in self.prefixes)


@dataclass(frozen=True)
class BackboneOptions:
    """What the core asks of a backbone factory besides the name."""

    pretrained: bool = False  # load the provider's own pretrained weights (hub cache or download)
    image_size: int | None = None  # the training image size, for architectures that must know it


@dataclass
class Backbone:
    """A pretrained feature extractor, as every provider must deliver it.

    ``module`` maps a normalised float image batch ``(N, 3, H, W)`` to pooled
    features ``(N, feature_dim)``. Its state-dict keys are the provider's own
    (the original model's keys without its classifier), so weight files made
    for the original model load into it.
    """

    name: str
    module: nn.Module
    feature_dim: int
    preprocessing: Preprocessing
    layer_groups: list[LayerGroup]
    weights: str = "none"  # where the current weights came from, for config.json
    extra: dict = field(default_factory=dict)  # provider facts worth showing in `tlcore info`

    def group_of(self, qualified_name: str) -> str:
        """Name of the layer group that owns a parameter or module."""
        for group in self.layer_groups:
            if group.owns(qualified_name):
                return group.name
        raise PluginError(f"backbone {self.name}: parameter {qualified_name!r} is in no layer group")

    def validate(self, *, plugin: str | None = None, forward: bool = True) -> None:
        """Check the contract; a provider that breaks it is named in the error.

        ``plugin``: the plugin that built the backbone, named in the error when given.
        ``forward``: also run :meth:`check_features` (one forward pass of a tiny input).
        Raises PluginError.
        """
        try:
            self._check_fields()
            if forward:
                self.check_features()
        except PluginError as error:
            if plugin is None:
                raise
            raise PluginError(f"plugin {plugin}: {error}") from error

    def check_features(self) -> None:
        """One forward pass of a batch of 2 zero images at the smallest accepted size must give ``(2, feature_dim)``.

        Runs under ``torch.no_grad`` in eval mode, on the module's own device and
        dtype; every submodule's train/eval mode is put back afterwards, so the
        check changes nothing (BatchNorm statistics included). Raises PluginError.
        """
        pre = self.preprocessing
        size = pre.input_size if pre.fixed_size else pre.min_size
        first = next(self.module.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
        dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
        modes = [(module, module.training) for module in self.module.modules()]
        self.module.eval()
        try:
            with torch.no_grad():
                features = self.module(torch.zeros(2, 3, size, size, device=device, dtype=dtype))
        except Exception as error:  # the provider's module, not the caller, is at fault
            raise PluginError(
                f"backbone {self.name}: its module fails on a (2, 3, {size}, {size}) input, the smallest size its "
                f"preprocessing accepts: {type(error).__name__}: {error}"
            ) from error
        finally:
            for module, training in modes:
                module.training = training
        shape = tuple(getattr(features, "shape", ()))
        if not isinstance(features, torch.Tensor) or shape != (2, self.feature_dim):
            got = f"shape {shape}" if isinstance(features, torch.Tensor) else f"a {type(features).__name__}"
            raise PluginError(
                f"backbone {self.name}: feature_dim is {self.feature_dim}, but its module returns {got} for a "
                f"(2, 3, {size}, {size}) input; it must return pooled features (N, feature_dim)"
            )

    def _check_fields(self) -> None:
        if not isinstance(self.module, nn.Module):
            raise PluginError(f"backbone {self.name}: module is {type(self.module).__name__}, not a torch.nn.Module")
        if not isinstance(self.feature_dim, int) or self.feature_dim <= 0:
            raise PluginError(f"backbone {self.name}: feature_dim must be a positive int, got {self.feature_dim!r}")
        if self.preprocessing.interpolation not in INTERPOLATIONS:
            raise PluginError(
                f"backbone {self.name}: interpolation {self.preprocessing.interpolation!r} "
                f"is not one of {', '.join(INTERPOLATIONS)}"
            )
        names = [g.name for g in self.layer_groups]
        if not names or len(set(names)) != len(names):
            raise PluginError(f"backbone {self.name}: layer groups must be non-empty with unique names, got {names}")
        for param_name, _ in self.module.named_parameters():
            owners = [g.name for g in self.layer_groups if g.owns(param_name)]
            if len(owners) != 1:
                where = "no layer group" if not owners else f"several layer groups ({', '.join(owners)})"
                raise PluginError(f"backbone {self.name}: parameter {param_name!r} is in {where}")
