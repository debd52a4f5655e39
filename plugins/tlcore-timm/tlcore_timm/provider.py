"""Every timm model as a tlcore backbone: ``timm:NAME`` and ``timm:NAME.TAG``.

The model is built by ``timm.create_model(..., num_classes=0)``, so timm's own
head pools and returns the pre-logit features; a one-image forward pass at
build time confirms their width and finds the smallest input that works.
Preprocessing comes from the model's pretrained configuration, layer groups
from its ``group_matcher`` (see :mod:`tlcore_timm.groups`).

Pretrained weights are never fetched blindly: a file already in the Hugging
Face (or torch hub) cache is loaded from there without network; otherwise the
hub must answer a short connection test first, so a machine without network
gets a one-line WeightsError at once instead of minutes of retries.
"""

from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path
from urllib.parse import urlparse

import torch

from tlcore import (
    INTERPOLATIONS,
    Backbone,
    BackboneOptions,
    ConfigError,
    PluginError,
    Preprocessing,
    WeightsError,
    first_line,
    load_into_backbone,
)
from tlcore_timm import lite0
from tlcore_timm.groups import layer_groups

PREFIX = "timm:"
# Probe sizes for the smallest input a convolutional model accepts.
MIN_SIZE_LADDER = (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 384, 448, 512)
CONNECT_TIMEOUT_S = 3.0
WEIGHTS_ALTERNATIVES = "pass --weights none to train from scratch, or --weights PATH to a local .safetensors/.pth file"


# -- names -------------------------------------------------------------------


def split_name(model_name: str) -> tuple[str, str]:
    """``"resnet50.a1_in1k"`` -> ``("resnet50", "a1_in1k")``; the tag is "" when absent (as timm splits)."""
    arch, _, tag = model_name.partition(".")
    return arch, tag


def names() -> list[str]:
    """Every timm architecture and every pretrained tag, as ``timm:NAME``."""
    import timm

    return sorted({PREFIX + n for n in timm.list_models()} | {PREFIX + n for n in timm.list_models(pretrained=True)})


def resolve(name: str):
    """The factory for a ``timm:`` name timm knows (architecture and, if given, tag), else None."""
    import timm

    if not name.startswith(PREFIX):
        return None
    model_name = name[len(PREFIX):]
    arch, tag = split_name(model_name)
    if not arch or not timm.is_model(arch):  # is_model ignores the tag, so the tag is checked below
        return None
    if tag and not _tag_exists(model_name):
        return None
    return build_backbone


def _tag_exists(model_name: str) -> bool:
    import timm

    # Exact-name filters; include_tags also lists configurations that have no weights.
    return bool(timm.list_pretrained(model_name) or timm.list_models(model_name, include_tags=True))


def _pretrained_cfg(model_name: str):
    """timm's pretrained config for the name (the default tag when none is given), or None."""
    from timm.models import get_pretrained_cfg

    try:
        return get_pretrained_cfg(model_name)
    except RuntimeError:  # an invalid tag
        return None


def has_pretrained(model_name: str) -> bool:
    """True when timm lists pretrained weights for the name (for a bare architecture: its default tag)."""
    import timm

    arch, tag = split_name(model_name)
    if tag:
        return bool(timm.list_pretrained(model_name))
    cfg = _pretrained_cfg(model_name)
    return bool(cfg is not None and timm.models.is_model_pretrained(arch) and _has_source(cfg))


def _has_source(cfg) -> bool:
    return bool(cfg.hf_hub_id or cfg.url or cfg.file or cfg.state_dict)


def info(name: str) -> dict:
    """Listing columns: whether the name has pretrained weights and whether they are on this machine."""
    model_name = name[len(PREFIX):]
    if name in lite0.NAMES:
        return {"pretrained": True, "offline": lite0.available()}
    pretrained = has_pretrained(model_name)
    offline = pretrained and cached_weights_file(_pretrained_cfg(model_name)) is not None
    return {"pretrained": pretrained, "offline": offline}


# -- weights cache and network -------------------------------------------------


def cached_weights_file(cfg) -> Path | None:
    """The local file timm would load for this pretrained config, if already cached; never touches the network."""
    if cfg is None:
        return None
    try:
        if cfg.file and Path(cfg.file).is_file():
            return Path(cfg.file)
        if cfg.hf_hub_id:
            found = _hf_cached(cfg.hf_hub_id, cfg.hf_hub_filename)
            if found is not None:
                return found
        if cfg.url:
            from torch.hub import get_dir

            candidate = Path(get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)
            if candidate.is_file():
                return candidate
    except Exception:  # a cache layout we do not understand: treat as not cached
        return None
    return None


def _hf_cached(hub_id: str, filename: str | None) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    repo_id, _, revision = hub_id.partition("@")
    # timm prefers model.safetensors and falls back to pytorch_model.bin.
    candidates = [filename] if filename else []
    candidates += ["model.safetensors", "pytorch_model.bin"]
    for candidate in candidates:
        found = try_to_load_from_cache(repo_id, candidate, revision=revision or None)
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    return None


def _download_host(cfg) -> tuple[str, int]:
    """The host:port a download would connect to first (the proxy where one is configured)."""
    for variable in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        proxy = os.environ.get(variable)
        if proxy:
            parsed = urlparse(proxy if "://" in proxy else f"http://{proxy}")
            if parsed.hostname:
                return parsed.hostname, parsed.port or 80
    if cfg.hf_hub_id:
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    else:
        endpoint = cfg.url
    parsed = urlparse(endpoint)
    return parsed.hostname or "huggingface.co", parsed.port or (80 if parsed.scheme == "http" else 443)


def _offline_reason(cfg) -> str | None:
    """Why a download cannot work now (offline mode, or the host does not answer quickly); None if it may."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on") and cfg.hf_hub_id:
        return "HF_HUB_OFFLINE is set"
    host, port = _download_host(cfg)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return None
    except OSError as error:
        return f"{host} cannot be reached ({type(error).__name__})"


# -- the factory ---------------------------------------------------------------


def build_backbone(name: str, options: BackboneOptions) -> Backbone:
    """Build ``timm:NAME[.TAG]`` as a tlcore Backbone with timm's pooled pre-logit features.

    Raises ConfigError when the model cannot run at ``options.image_size`` and
    WeightsError when ``options.pretrained`` weights cannot be had.
    """
    import timm

    model_name = name[len(PREFIX):] if name.startswith(PREFIX) else name
    arch, _ = split_name(model_name)
    cfg = _pretrained_cfg(model_name)
    fixed = bool(cfg is not None and cfg.fixed_input_size)
    default_size = int(cfg.input_size[-2]) if cfg is not None else 224
    kwargs: dict = {"num_classes": 0}
    # Models with position embeddings or windows (ViT, Swin, ...) are built for one size: pass the requested one.
    if fixed and options.image_size and options.image_size != default_size:
        kwargs["img_size"] = options.image_size

    use_lite0 = options.pretrained and PREFIX + model_name in lite0.NAMES and lite0.available()
    model = _create(model_name, kwargs, options.pretrained and not use_lite0, cfg, default_size)
    built_size = int(kwargs.get("img_size", default_size))

    feature_dim, min_size = _probe(model, model_name, fixed, built_size, options.image_size, default_size)
    preprocessing = _preprocessing(model, min_size, built_size if fixed else None)
    groups, grouping = layer_groups(model)
    weights = "none"
    if options.pretrained:
        tag = model.pretrained_cfg.get("tag") or ""
        weights = f"timm:{arch}{'.' + tag if tag else ''} (hub)"
    backbone = Backbone(
        name=name,
        module=model,
        feature_dim=feature_dim,
        preprocessing=preprocessing,
        layer_groups=groups,
        weights=weights,
        extra={
            "timm_model": model_name,
            "timm_version": timm.__version__,
            "fixed_input_size": fixed,
            "layer_grouping": grouping,
            "parameters": sum(p.numel() for p in model.parameters()),
        },
    )
    if use_lite0:
        offered = lite0.pretrained_weights(PREFIX + model_name)
        load_into_backbone(backbone, offered.verified_state_dict(), offered.source)
        backbone.weights = offered.source
        backbone.preprocessing = offered.preprocessing
    backbone.validate()
    return backbone


def _create(model_name: str, kwargs: dict, pretrained: bool, cfg, default_size: int) -> torch.nn.Module:
    create_kwargs = dict(kwargs)
    if pretrained:
        if cfg is None or not has_pretrained(model_name):
            raise WeightsError(f"timm model {model_name} has no pretrained weights in timm; {WEIGHTS_ALTERNATIVES}")
        local = cached_weights_file(cfg)
        if local is not None:
            # Point timm at the cached file: it loads (and adapts, e.g. position embeddings) with no network call.
            create_kwargs["pretrained_cfg_overlay"] = {"file": str(local)}
        else:
            reason = _offline_reason(cfg)
            if reason is not None:
                raise WeightsError(
                    f"pretrained weights for timm:{model_name} could not be had offline: not in the Hugging Face "
                    f"cache and {reason}; {WEIGHTS_ALTERNATIVES}"
                )
    try:
        return _create_with_size(model_name, create_kwargs, pretrained, default_size)
    except (WeightsError, ConfigError):
        raise
    except Exception as error:
        if pretrained and _is_download_error(error):
            raise WeightsError(
                f"pretrained weights for timm:{model_name} could not be downloaded ({first_line(error)}); "
                f"{WEIGHTS_ALTERNATIVES}"
            ) from error
        raise


def _create_with_size(model_name: str, kwargs: dict, pretrained: bool, default_size: int) -> torch.nn.Module:
    import timm

    size = kwargs.get("img_size")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # timm's notices about resampled position embeddings
            return timm.create_model(model_name, pretrained=pretrained, **kwargs)
    except TypeError as error:
        if size is None or "img_size" not in str(error):
            raise
        # The model cannot be built for another size: only its own size works.
        raise ConfigError(_size_message(model_name, size, default_size, "it takes no img_size")) from error
    except (AssertionError, ValueError, RuntimeError) as error:
        if size is None or _is_download_error(error):
            raise
        raise ConfigError(_size_message(model_name, size, default_size, first_line(error))) from error


def _is_download_error(error: BaseException) -> bool:
    seen = error
    while seen is not None:
        if isinstance(seen, (OSError, ConnectionError, TimeoutError)) or type(seen).__module__.startswith(
            ("huggingface_hub", "requests", "urllib3", "httpx")
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _size_message(model_name: str, size: int, default_size: int, reason: str) -> str:
    return (
        f"timm model {model_name} cannot run at image size {size} ({reason}); "
        f"use image size {default_size} (its default) or another size its architecture accepts"
    )


def _forward(model: torch.nn.Module, size: int) -> tuple[torch.Tensor | None, str]:
    """The model's output on one blank ``size`` image, or None and the first line of the error."""
    try:
        with torch.no_grad():  # not inference_mode: models that cache tensors must still train afterwards
            return model(torch.zeros(1, 3, size, size)), ""
    except Exception as error:  # any failure means "not at this size"
        return None, first_line(error)


def _probe(
    model: torch.nn.Module, model_name: str, fixed: bool, built_size: int, requested: int | None, default_size: int
) -> tuple[int, int]:
    """Run the model on one blank image: the width of what it returns, and the smallest size that works."""
    was_training = model.training
    model.eval()  # batch statistics of one image would fail, and must not be updated
    try:
        if fixed:
            min_size = built_size
            output, error = _forward(model, built_size)
            if output is None:
                raise ConfigError(_size_message(model_name, built_size, default_size, error))
        else:
            min_size, output = default_size, None
            for size in MIN_SIZE_LADDER:
                if size > max(default_size, requested or 0):
                    break
                output, _ = _forward(model, size)
                if output is not None:
                    min_size = size
                    break
            if requested and (output is None or requested != min_size):
                at_requested, error = _forward(model, requested)
                if at_requested is None:
                    if output is not None:
                        error = f"{error}; the smallest size that works is {min_size}"
                    raise ConfigError(_size_message(model_name, requested, default_size, error))
                output = at_requested
            if output is None:
                output, error = _forward(model, default_size)
                if output is None:
                    raise PluginError(f"timm model {model_name} fails on a blank {default_size}px image: {error}")
    finally:
        model.train(was_training)
    if output.ndim != 2:
        raise PluginError(f"timm model {model_name} returns {tuple(output.shape)} with num_classes=0, not pooled features")
    width = int(output.shape[1])
    declared = getattr(model, "head_hidden_size", None) or getattr(model, "num_features", None)
    if declared is not None and int(declared) != width:
        warnings.warn(f"timm model {model_name} declares {declared} features but returns {width}", stacklevel=2)
    return width, min_size


def _preprocessing(model: torch.nn.Module, min_size: int, fixed_size: int | None) -> Preprocessing:
    from timm.data import resolve_data_config

    data = resolve_data_config({}, model=model)
    mean, std = tuple(data["mean"]), tuple(data["std"])
    if len(mean) == 1:  # grey-scale statistics: the same for the three channels
        mean, std = mean * 3, std * 3
    interpolation = data.get("interpolation", "bilinear")
    if interpolation not in INTERPOLATIONS:  # "random" or "lanczos": bicubic is the closest the core offers
        interpolation = "bicubic"
    input_size = int(data["input_size"][-2])
    return Preprocessing(
        mean=tuple(float(v) for v in mean[:3]),
        std=tuple(float(v) for v in std[:3]),
        input_size=fixed_size or input_size,  # a model built for another size runs only at that size
        interpolation=interpolation,
        crop_pct=float(data.get("crop_pct", 0.875)),
        min_size=min_size,
        fixed_size=fixed_size is not None,
    )
