"""Built-in classification heads, registered through the same hook as any plugin's.

torch is imported when a head is built, not with the module: the plugin host loads
this module for every command, `tlcore --help` included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tlcore.hookspecs import hookimpl
from tlcore.registry import Register

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class HeadOptions:
    """What the core passes to every head factory besides the sizes."""

    hidden: int = 512  # width of the hidden layer, for heads that have one
    dropout: float = 0.0  # dropout on the features before each linear layer


def linear_head(in_features: int, num_classes: int, options: HeadOptions) -> nn.Module:
    """Dropout (when asked) then one linear layer: a linear probe when the backbone is frozen."""
    from torch import nn

    layers: list[nn.Module] = [nn.Dropout(options.dropout)] if options.dropout > 0 else []
    return nn.Sequential(*layers, nn.Linear(in_features, num_classes))


def mlp_head(in_features: int, num_classes: int, options: HeadOptions) -> nn.Module:
    """Linear, GELU, dropout, linear: one hidden layer of ``options.hidden`` units."""
    from torch import nn

    return nn.Sequential(
        nn.Dropout(options.dropout) if options.dropout > 0 else nn.Identity(),
        nn.Linear(in_features, options.hidden),
        nn.GELU(),
        nn.Dropout(options.dropout) if options.dropout > 0 else nn.Identity(),
        nn.Linear(options.hidden, num_classes),
    )


@hookimpl
def tlcore_register_heads(register: Register) -> None:
    """Register the built-in heads."""
    register("linear", linear_head, description="one linear layer (optional dropout before it)")
    register("mlp", mlp_head, description="linear, GELU, dropout, linear (--head-hidden, --head-dropout)")
