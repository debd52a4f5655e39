"""tlcore plugin: every torchvision classification model as the backbone ``torchvision:NAME``.

Installed through the ``tlcore`` entry-point group; this module holds the hook implementations.
Importing it is cheap: torchvision's models (about a second, as they pull in torch and
torch._dynamo) are imported by :mod:`tlcore_torchvision.backbones` the first time a name is
resolved, listed or built, so ``tlcore --help`` and commands about other plugins never pay for them.
"""

from __future__ import annotations

import importlib

from tlcore import hookimpl

__version__ = "0.1.0"

# Public functions of tlcore_torchvision.backbones, served from here on first access (PEP 562).
_LAZY = ("accepted_sizes_near", "backbone_names", "cache_file", "default_weights", "factory", "info", "layer_groups",
         "resolve")

__all__ = [*_LAZY, "tlcore_register_backbones"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module("tlcore_torchvision.backbones"), name)
    raise AttributeError(f"module 'tlcore_torchvision' has no attribute {name!r}")


def _resolve(name: str):
    """The factory for a known ``torchvision:NAME`` or None; imports torchvision's models on the first call."""
    from tlcore_torchvision.backbones import resolve

    return resolve(name)


def _names() -> list[str]:
    """Every ``torchvision:NAME`` (imports torchvision's models)."""
    from tlcore_torchvision.backbones import backbone_names

    return backbone_names()


def _info(name: str) -> dict:
    """Listing columns for one name (imports torchvision's models)."""
    from tlcore_torchvision.backbones import info

    return info(name)


@hookimpl
def tlcore_register_backbones(register) -> None:
    """Register the ``torchvision:*`` family; names resolve on demand, so nothing is built, listed or imported here."""
    register.family(
        "torchvision:*",
        _resolve,
        _names,
        description="torchvision classification model (classifier removed)",
        info=_info,
    )
