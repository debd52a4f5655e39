"""Every torchvision classification model as a tlcore backbone, found by rule rather than by table.

A name ``torchvision:NAME`` resolves when ``NAME`` is in
``torchvision.models.list_models(module=torchvision.models)``. The factory
builds the model, cuts off its ImageNet classifier (the last Linear or Conv2d
with 1000 outputs), and derives preprocessing, the smallest accepted input size
and the layer groups from the model itself.
"""

from __future__ import annotations

import functools
import inspect
import socket
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision.models import get_model_builder, get_model_weights, list_models

from tlcore import (
    INTERPOLATIONS,
    Backbone,
    BackboneOptions,
    ConfigError,
    LayerGroup,
    PluginError,
    Preprocessing,
    WeightsError,
)

PREFIX = "torchvision:"
IMAGENET_CLASSES = 1000
DOWNLOAD_TIMEOUT_S = 30.0
MIN_GROUPS = 4
# Constructor parameters by which an architecture fixes its input size (ViT, MaxViT).
SIZE_PARAMETERS = ("image_size", "input_size")
# How long an error message may spend looking for accepted sizes near a rejected one.
SIZE_SEARCH_BUDGET_S = 2.0


# -- names -------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def model_names() -> tuple[str, ...]:
    """Names of every torchvision classification model, without the ``torchvision:`` prefix."""
    return tuple(sorted(list_models(module=torchvision.models)))


def backbone_names() -> list[str]:
    """Every backbone name this plugin answers for (``torchvision:NAME``)."""
    return [PREFIX + name for name in model_names()]


def resolve(name: str):
    """Return the factory for a known ``torchvision:NAME``, else None (the core then suggests close names)."""
    if name.startswith(PREFIX) and name[len(PREFIX) :] in model_names():
        return factory
    return None


def default_weights(model_name: str):
    """The model's DEFAULT weights enum member, or None when torchvision has no pretrained weights for it."""
    try:
        return getattr(get_model_weights(model_name), "DEFAULT", None)
    except (ValueError, KeyError, AttributeError):  # torchvision raises these for a builder without weights
        return None


def cache_file(weights) -> Path:
    """Where torch.hub keeps (or would keep) the weights file: ``<hub dir>/checkpoints/<file name of the URL>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name


def info(name: str) -> dict:
    """Listing columns: whether DEFAULT weights exist and whether their file is already in the hub cache."""
    weights = default_weights(name[len(PREFIX) :]) if name.startswith(PREFIX) else None
    return {"pretrained": weights is not None, "offline": weights is not None and cache_file(weights).is_file()}


# -- the factory -------------------------------------------------------------


def factory(name: str, options: BackboneOptions) -> Backbone:
    """Build ``torchvision:NAME`` as a feature extractor that maps ``(N, 3, H, W)`` to ``(N, feature_dim)``.

    Raises WeightsError when pretrained weights are asked for and cannot be
    had, and ConfigError when an architecture that fixes its input size cannot
    take ``options.image_size``.
    """
    model_name = name[len(PREFIX) :] if name.startswith(PREFIX) else name
    if model_name not in model_names():
        raise PluginError(f"torchvision has no classification model {model_name!r}")
    builder = get_model_builder(model_name)
    weights = default_weights(model_name)
    if options.pretrained and weights is None:
        raise WeightsError(
            f"torchvision:{model_name} has no pretrained weights in torchvision {torchvision.__version__}; "
            "pass --weights none, or --weights PATH to a local .pth/.safetensors file"
        )
    size_parameter = _size_parameter(model_name)
    kwargs = _size_kwargs(model_name, size_parameter, weights, options)
    if options.pretrained:
        model = _build_pretrained(model_name, builder, weights, kwargs)
    else:
        model = _build(builder, None, kwargs)

    _drop_aux_heads(model)
    classifier, feature_dim = _remove_classifier(model, model_name)
    if size_parameter is not None:  # it accepts exactly the size it was built for
        min_size = input_size = options.image_size or _weights_size(weights)
    else:
        min_size = _smallest_input(model, weights, model_name)
        input_size = None
    backbone = Backbone(
        name=PREFIX + model_name,
        module=model,
        feature_dim=feature_dim,
        preprocessing=_preprocessing(weights, min_size, input_size, fixed=size_parameter is not None),
        layer_groups=layer_groups(model),
        weights=f"torchvision:{weights} (DEFAULT)" if options.pretrained else "none",
        extra={
            "family": builder.__module__.rsplit(".", 1)[-1],
            "architecture": type(model).__name__,
            "classifier": classifier,
        },
    )
    backbone.validate()
    return backbone


def _build(builder, weights, kwargs: dict) -> nn.Module:
    with warnings.catch_warnings():
        # GoogLeNet and Inception3 warn on every build about a future change of their default init.
        warnings.filterwarnings("ignore", message="The default weight initialization", category=FutureWarning)
        return builder(weights=weights, progress=False, num_classes=IMAGENET_CLASSES, **kwargs)


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """torch.hub opens URLs without a timeout; a default socket timeout keeps a dead network from hanging."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _build_pretrained(model_name: str, builder, weights, kwargs: dict) -> nn.Module:
    """Fetch the weights file into the hub cache, then build through torchvision's own builder.

    The builder applies weight-specific settings (e.g. Inception's
    transform_input). Downloading first, ourselves, tells a network failure
    apart from an unreadable file, and lets a socket timeout keep it from hanging.
    """
    cached = cache_file(weights)
    instead = (
        f"pass --weights none to train from scratch, or --weights PATH to a local .pth/.safetensors file "
        f"(torch looks for {cached.name} in {cached.parent})"
    )
    if not cached.is_file():
        match = torch.hub.HASH_REGEX.search(cached.name)  # torchvision file names carry a sha256 prefix
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            with _socket_timeout(DOWNLOAD_TIMEOUT_S):
                torch.hub.download_url_to_file(weights.url, str(cached), match.group(1) if match else None, progress=False)
        except (OSError, RuntimeError) as error:  # URLError/timeouts/DNS are OSError; a bad hash is RuntimeError
            raise WeightsError(
                f"pretrained weights for torchvision:{model_name} could not be downloaded ({_short(error)}); {instead}"
            ) from error
    try:
        return _build(builder, weights, kwargs)
    except Exception as error:  # unpickling, zip and state-dict errors all mean a bad file (the same build works without it)
        raise WeightsError(
            f"pretrained weights for torchvision:{model_name} in {cached} could not be loaded ({_short(error)}); "
            f"delete the file to download it again, or {instead}"
        ) from error


def _short(error: BaseException) -> str:
    reason = getattr(error, "reason", None) or error  # URLError wraps the socket error in .reason
    text = " ".join(str(reason).split()) or type(reason).__name__
    return f"{type(reason).__name__}: {text[:160]}"


# -- input size --------------------------------------------------------------


def _weights_size(weights) -> int:
    """The square size the DEFAULT weights were trained (and evaluated) at."""
    if weights is None:
        return 224
    return int(weights.transforms().crop_size[0])


@functools.cache
def _size_parameter(model_name: str) -> str | None:
    """The constructor parameter that fixes this architecture's input size, or None when any size works.

    Only modules that define a class with such a parameter are checked further,
    by building the model on the meta device (no memory, no init cost) to learn its class.
    """
    module = sys.modules[get_model_builder(model_name).__module__]
    if not any(_class_size_parameter(obj) for obj in vars(module).values()):
        return None
    cls = _model_class(model_name)
    return _class_size_parameter(cls) if cls is not None else None


@functools.cache
def _model_class(model_name: str) -> type | None:
    """The class the builder returns, learnt from a meta-device build; None if the builder cannot run on meta."""
    try:
        with torch.device("meta"):
            return type(_build(get_model_builder(model_name), None, {}))
    except Exception:  # e.g. RegNet computes widths with .tolist(), which meta tensors refuse
        return None


def _class_size_parameter(cls) -> str | None:
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        return None
    parameters = inspect.signature(cls.__init__).parameters
    return next((p for p in SIZE_PARAMETERS if p in parameters), None)


def _size_value(model_name: str, parameter: str, size: int):
    """The size as the constructor wants it: ViT takes an int, MaxViT a (height, width) tuple."""
    annotation = str(inspect.signature(_model_class(model_name).__init__).parameters[parameter].annotation)
    return (size, size) if "tuple" in annotation.lower() else size


def _size_kwargs(model_name: str, size_parameter: str | None, weights, options: BackboneOptions) -> dict:
    """Constructor kwargs that fix the input size, after checking that ``options.image_size`` is accepted."""
    if size_parameter is None:
        return {}
    fixed = _weights_size(weights)
    if options.pretrained:  # torchvision builds it at the weights' size and refuses any other
        if options.image_size not in (None, fixed):
            raise ConfigError(
                f"torchvision:{model_name} with pretrained weights accepts only --image-size {fixed} "
                f"(got {options.image_size}); pass --image-size {fixed}, or --weights none to build it for another size"
            )
        return {}
    size = options.image_size or fixed  # without a size, match the weights so their files load
    builder = get_model_builder(model_name)
    kwargs = {size_parameter: _size_value(model_name, size_parameter, size)}
    reason = _construction_error(builder, kwargs)
    if reason is not None:
        near = _accepted_sizes_near(model_name, size)
        raise ConfigError(
            f"torchvision:{model_name} cannot take --image-size {size} ({reason}); "
            f"accepted sizes near it: {', '.join(str(s) for s in near)}"
        )
    return kwargs


def _construction_error(builder, kwargs: dict) -> str | None:
    """Why the architecture refuses these size kwargs (one line), or None; built on meta, so it costs no memory."""
    try:
        with torch.device("meta"):
            _build(builder, None, kwargs)
    except (AssertionError, ValueError, RuntimeError) as error:
        first_sentence = " ".join(str(error).split()).split(". ")[0]  # MaxViT explains at length
        return first_sentence[:160] or type(error).__name__
    return None


def accepted_sizes_near(model_name: str, size: int) -> list[int]:
    """Sizes an architecture with a fixed input size can be built for without pretrained weights, nearest to ``size``.

    Public so that callers (and the slow test) can pick a small accepted size;
    for architectures that take any size, it returns ``[size]``.
    """
    if _size_parameter(model_name) is None:
        return [size]
    return _accepted_sizes_near(model_name, size)


def _accepted_sizes_near(model_name: str, size: int) -> list[int]:
    """The nearest accepted size below and above ``size`` (within a time budget), plus the weights' own size."""
    builder = get_model_builder(model_name)
    parameter = _size_parameter(model_name)
    found: dict[str, int] = {}
    deadline = time.monotonic() + SIZE_SEARCH_BUDGET_S
    distance = 0
    while len(found) < 2 and time.monotonic() < deadline and distance <= 4 * size:
        for side, candidate in (("below", size - distance), ("above", size + distance)):
            if side in found or candidate < 1:
                continue
            if _construction_error(builder, {parameter: _size_value(model_name, parameter, candidate)}) is None:
                found[side] = candidate
        distance += 1
    sizes = set(found.values()) | {_weights_size(default_weights(model_name))}
    return sorted(sizes, key=lambda s: (abs(s - size), s))


def _accepts(model: nn.Module, size: int) -> bool:
    try:
        model(torch.zeros(1, 3, size, size))
    except Exception:  # "kernel size can't be greater than input", ViT's size assert, MaxViT's reshape, ...
        return False
    return True


def _smallest_input(model: nn.Module, weights, model_name: str) -> int:
    """The smallest square input the built model accepts, by bisection with tiny forward passes.

    torchvision's ``weights.meta["min_size"]`` is the upper bound; it is exact
    for convnets but states the training size for Swin, which accepts any size.
    """
    upper = int(weights.meta.get("min_size", (224, 224))[0]) if weights is not None else 224
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            low, high = 1, upper  # invariant: sizes < low fail; high is believed to work
            while low < high:
                middle = (low + high) // 2
                if _accepts(model, middle):
                    high = middle
                else:
                    low = middle + 1
            if high == upper and not _accepts(model, upper):
                raise PluginError(f"torchvision:{model_name} rejects even {upper} px inputs once its classifier is removed")
    finally:
        model.train(was_training)
    return high


# -- classifier and auxiliary heads -----------------------------------------


def _drop_aux_heads(model: nn.Module) -> None:
    """GoogLeNet and Inception v3 return extra logits in training mode; switch that off and drop those heads."""
    if not hasattr(model, "aux_logits"):
        return
    model.aux_logits = False
    for child_name, _ in list(model.named_children()):
        if child_name.lower().startswith("aux"):
            setattr(model, child_name, None)  # their forward skips a head that is None


def _remove_classifier(model: nn.Module, model_name: str) -> tuple[str, int]:
    """Replace the last Linear/Conv2d with 1000 outputs by Identity; return its path and its input width."""
    found = None
    for path, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == IMAGENET_CLASSES:
            found = (path, module.in_features)
        elif isinstance(module, nn.Conv2d) and module.out_channels == IMAGENET_CLASSES:
            found = (path, module.in_channels)
    if found is None:
        raise PluginError(f"torchvision:{model_name}: no Linear or Conv2d layer with {IMAGENET_CLASSES} outputs to remove")
    path, feature_dim = found
    parent_path, _, attribute = path.rpartition(".")
    setattr(model.get_submodule(parent_path), attribute, nn.Identity())
    return path, feature_dim


# -- preprocessing -------------------------------------------------------------


def _preprocessing(weights, min_size: int, input_size: int | None, fixed: bool = False) -> Preprocessing:
    """Statistics from the DEFAULT weights' eval transforms (ImageNet defaults when there are none)."""
    if weights is None:
        return Preprocessing(min_size=min_size, input_size=input_size or 224, fixed_size=fixed)
    transforms = weights.transforms()
    crop = int(transforms.crop_size[0])
    resize = int(transforms.resize_size[0]) if transforms.resize_size else crop
    interpolation = getattr(transforms.interpolation, "value", str(transforms.interpolation))
    return Preprocessing(
        mean=tuple(float(v) for v in transforms.mean),
        std=tuple(float(v) for v in transforms.std),
        input_size=input_size or crop,
        interpolation=interpolation if interpolation in INTERPOLATIONS else "bilinear",
        crop_pct=crop / resize,
        min_size=min_size,
        fixed_size=fixed,
    )


# -- layer groups --------------------------------------------------------------


def _holds_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _direct_tensors(module: nn.Module) -> list[str]:
    names = [n for n, _ in module.named_parameters(recurse=False)]
    return names + [n for n, _ in module.named_buffers(recurse=False)]


def _size(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def layer_groups(model: nn.Module) -> list[LayerGroup]:
    """Ordered groups from input to output that own every parameter once, derived from the module tree.

    Start from the parameter-holding top-level children (root tensors such as
    ViT's class token join the first); while there are fewer than 4, split the
    largest one that has parameter-holding children; finally merge a leading
    run of two or more leaf modules that precedes a container (ResNet's
    conv1 + bn1) into "stem".
    """
    # Each entry: [name, prefixes, module or None (None: merged, not splittable)].
    groups: list[list] = [[n, [n], m] for n, m in model.named_children() if _holds_parameters(m)]
    if not groups:
        return [LayerGroup("all", tuple(_direct_tensors(model)))]
    groups[0][1] += _direct_tensors(model)
    while len(groups) < MIN_GROUPS:
        splittable = [g for g in groups if g[2] is not None and _children_with_parameters(g[2])]
        if not splittable:
            break
        largest = max(splittable, key=lambda g: _size(g[2]))
        index = groups.index(largest)
        name, prefixes, module = largest
        children = [[f"{name}.{c}", [f"{name}.{c}"], m] for c, m in _children_with_parameters(module)]
        # The container's own tensors (ViT encoder's pos_embedding) and any extra prefixes go with its first child.
        children[0][1] += [p for p in prefixes if p != name] + [f"{name}.{t}" for t in _direct_tensors(module)]
        groups[index : index + 1] = children
    groups = _merge_stem(groups)
    return [LayerGroup(name, tuple(prefixes)) for name, prefixes, _ in groups]


def _children_with_parameters(module: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in module.named_children() if _holds_parameters(m)]


def _merge_stem(groups: list[list]) -> list[list]:
    run = 0
    while run < len(groups) and groups[run][2] is not None and not _children_with_parameters(groups[run][2]):
        run += 1
    taken = any(g[0] == "stem" for g in groups)
    if run < 2 or run == len(groups) or taken:  # only a short run of leaves in front of the real stages is a stem
        return groups
    prefixes = [p for g in groups[:run] for p in g[1]]
    return [["stem", prefixes, None], *groups[run:]]
