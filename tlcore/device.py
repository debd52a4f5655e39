"""Choosing the device and the numeric precision a run uses."""

from __future__ import annotations

import fnmatch

import torch

from tlcore.errors import ConfigError


def pick_device(spec: str) -> torch.device:
    """``auto`` gives cuda, then mps, then cpu; anything else must be available here."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device {spec!r} is not accepted; accepted: auto, cpu, cuda, cuda:N, mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {spec!r} was asked for but CUDA is not available here; use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {spec!r} does not exist; this machine has {torch.cuda.device_count()} CUDA devices")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"device {spec!r} was asked for but MPS is not available here; use --device cpu or auto")
    if device.type == "cuda" and device.index is None:  # an explicit index: tensors placed on it compare equal to it
        return torch.device("cuda", torch.cuda.current_device())
    return device


# bf16 autocast on the CPU, per architecture family: fnmatch patterns over the model name (without the
# ``provider:`` prefix and the ``.tag``) -> the measurement that put the family here. Only families that
# `python benchmarks/cpu_bf16.py` measured faster in bf16 on an idle machine, with val_acc within the
# seed-to-seed spread of float32 on the digits and CIFAR-format jobs, belong here: elsewhere bf16 costs
# time (EfficientNet-Lite0's depthwise convolutions did not gain) or accuracy.
CPU_BF16_FAMILIES: dict[str, str] = {
    # `python benchmarks/cpu_bf16.py --models torchvision:resnet18,... --accuracy-seeds 0,1,2` (2-core AMD EPYC with
    # AVX512-BF16, torch 2.14.1, 2026-11-29): 510 against 311 training images/s at 64 px (1.64x); digits val_acc
    # 0.942 / 0.961 / 0.958 against float32's 0.953 / 0.961 / 0.975 (mean 0.954 within float32's seed range)
    "resnet18": "1.64x training images/s, digits val_acc within float32's seed spread",
}


def architecture(backbone: str) -> str:
    """``"timm:resnet50.a1_in1k"`` -> ``"resnet50"``: the name the CPU bf16 table is matched against."""
    return backbone.partition(":")[2].partition(".")[0] if ":" in backbone else backbone.partition(".")[0]


def cpu_bf16_family(backbone: str | None) -> str | None:
    """The CPU_BF16_FAMILIES pattern ``backbone`` matches, or None (then CPU runs stay in float32)."""
    if not backbone:
        return None
    name = architecture(backbone)
    return next((pattern for pattern in CPU_BF16_FAMILIES if fnmatch.fnmatchcase(name, pattern)), None)


def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels on this CPU (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without the probe: assume not
        return False


def autocast_dtype(device: torch.device, enabled: bool, backbone: str | None = None) -> torch.dtype | None:
    """The autocast dtype of a run, or None for full precision.

    CUDA: bf16 where the GPU has native bf16, else fp16. CPU: bf16 only when
    ``backbone`` (``provider:model``) belongs to a family in
    :data:`CPU_BF16_FAMILIES` and the CPU has native bf16 kernels. None
    elsewhere (mps) or when ``enabled`` is False (``--no-amp``).
    """
    if not enabled:
        return None
    if device.type == "cpu":
        return torch.bfloat16 if cpu_bf16_family(backbone) is not None and cpu_has_fast_bf16() else None
    if device.type != "cuda":
        return None
    # without emulation: older GPUs (V100, T4) can hold bf16 tensors but have no fast bf16 kernels
    with torch.cuda.device(device):
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def validation_dtype(device: torch.device, amp_dtype: torch.dtype | None) -> torch.dtype | None:
    """The autocast dtype of validation and of the feature cache: the training one on CUDA, float32 (None) elsewhere.

    On the CPU bf16 only speeds up training (:data:`CPU_BF16_FAMILIES`); validating in float32 there gives the
    val_acc, val_loss, val_map and thresholds that `tlcore eval`, `predict` and export reproduce (they compute in
    float32), for the price of a forward pass without autocast.
    """
    return amp_dtype if device.type == "cuda" else None


def precision_phrase(device: torch.device, amp_dtype: torch.dtype | None, backbone: str | None = None) -> str:
    """How the run computes, for its first line: ``bf16 autocast`` or ``float32`` with the reason on the CPU."""
    if amp_dtype is not None:
        return f"{str(amp_dtype).replace('torch.', '')} autocast"
    if device.type == "cpu" and cpu_bf16_family(backbone) is None:
        return "float32 (bf16 not measured faster for this family on the CPU)"
    return "float32"
