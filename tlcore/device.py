"""Choosing the device and the numeric precision a run uses."""

from __future__ import annotations

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


def autocast_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bf16 on CUDA where supported, else fp16; None (full precision) off CUDA or when disabled."""
    if not enabled or device.type != "cuda":
        return None
    # without emulation: older GPUs (V100, T4) can hold bf16 tensors but have no fast bf16 kernels
    with torch.cuda.device(device):
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
