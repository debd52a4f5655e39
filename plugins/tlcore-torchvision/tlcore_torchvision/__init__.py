"""tlcore plugin: every torchvision classification model as the backbone ``torchvision:NAME``.

Installed through the ``tlcore`` entry-point group; this module holds the hook implementations.
"""

from __future__ import annotations

from tlcore import hookimpl
from tlcore_torchvision.backbones import (
    accepted_sizes_near,
    backbone_names,
    cache_file,
    default_weights,
    factory,
    info,
    layer_groups,
    resolve,
)

__version__ = "0.1.0"

__all__ = [
    "accepted_sizes_near",
    "backbone_names",
    "cache_file",
    "default_weights",
    "factory",
    "info",
    "layer_groups",
    "resolve",
    "tlcore_register_backbones",
]


@hookimpl
def tlcore_register_backbones(register) -> None:
    """Register the ``torchvision:*`` family; names resolve on demand, so nothing is built or listed here."""
    register.family(
        "torchvision:*",
        resolve,
        backbone_names,
        description="torchvision classification model (classifier removed)",
        info=info,
    )
