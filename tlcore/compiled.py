"""``--compile``: the model through torch.compile, and its failures as one clear line."""

from __future__ import annotations

import torch
from torch import nn

from tlcore.messages import first_line


def compile_model(module: nn.Module) -> nn.Module:
    """The module compiled by torch.compile (compilation itself happens at the first call).

    The module keeps its own parameters and state-dict keys: checkpoints are
    written from the uncompiled model as always.
    """
    return torch.compile(module)


def is_compile_failure(error: BaseException) -> bool:
    """True for errors raised by torch.compile's tracing or code generation."""
    try:
        from torch._dynamo import exc
    except ImportError:  # a torch without dynamo cannot have failed in it
        return False
    kinds = tuple(
        kind for kind in (getattr(exc, "BackendCompilerFailed", None), getattr(exc, "TorchDynamoException", None)) if kind
    )
    return isinstance(error, kinds)


def compile_failure_summary(error: BaseException) -> str:
    """The first line of a compile error, without torch's long advice that follows it."""
    return first_line(error)[:300]
