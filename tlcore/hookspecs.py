"""The hooks a tlcore plugin can implement.

A plugin is any object or module with functions decorated by
``tlcore.hookimpl`` whose names are below. The core's own parts (heads, freeze
policies, callbacks) register through these same hooks. A hook
implementation may take fewer arguments than its spec, so specs can grow
without breaking plugins.

Factories registered through the ``tlcore_register_*`` hooks are called as the
typed protocols below say (all importable from ``tlcore``):

- backbones, :class:`BackboneFactory`: ``factory(name: str, options: BackboneOptions) -> Backbone``
- datasets, :class:`DatasetFactory`: ``factory(name: str, options: DatasetOptions) -> DatasetSplits``
- heads, :class:`HeadFactory`: ``factory(in_features: int, num_classes: int, options: HeadOptions) -> torch.nn.Module``
- freeze, :class:`FreezePolicyFactory`: ``factory(options: FreezeOptions) -> FreezePolicy``
- callbacks, :class:`CallbackFactory`: ``factory(config: RunConfig) -> Callback``

Order (see tlcore.plugins): hooks are asked newest registration first, built-in
parts last; names are never decided by order (a name two plugins register is an
error naming both, and built-in commands cannot be replaced).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import pluggy

if TYPE_CHECKING:
    import typer
    from torch import nn

    from tlcore.backbone import Backbone, BackboneOptions
    from tlcore.callbacks.base import Callback
    from tlcore.config import RunConfig
    from tlcore.dataset import DatasetOptions, DatasetSplits
    from tlcore.freeze import FreezeOptions, FreezePolicy
    from tlcore.heads import HeadOptions
    from tlcore.plugin_options import OptionRegister
    from tlcore.registry import Register
    from tlcore.weights import PretrainedWeights

PROJECT = "tlcore"
# The version of the hook API below: the minor grows when hooks or arguments are added, the major when a hook is
# removed or changed incompatibly. Plugins declare the versions they support in TLCORE_API (see tlcore.plugins).
API_VERSION = "1.1"  # 1.1: tlcore_register_options
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# -- the factories the register hooks take (typing.Protocol: any callable of this shape fits) --


class BackboneFactory(Protocol):
    """Builds the backbone ``name``; ``options.pretrained`` asks for the provider's own pretrained weights.

    Called by runs, `tlcore info` and `tlcore plan`. Raise ``WeightsError`` or
    ``ConfigError`` for what the user can fix; anything else is reported as the
    plugin's bug. The result is checked with ``Backbone.validate`` (one forward pass).
    """

    def __call__(self, name: str, options: BackboneOptions, /) -> Backbone: ...


class DatasetFactory(Protocol):
    """Opens the dataset ``name`` (``options``: data_dir, seed, val_fraction, download); raise ``DataError`` when missing."""

    def __call__(self, name: str, options: DatasetOptions, /) -> DatasetSplits: ...


class HeadFactory(Protocol):
    """A module mapping ``(N, in_features)`` features to ``(N, num_classes)`` logits."""

    def __call__(self, in_features: int, num_classes: int, options: HeadOptions, /) -> nn.Module: ...


class FreezePolicyFactory(Protocol):
    """A freeze policy for these options (bn_mode, freeze_to, unfreeze_start, unfreeze_every)."""

    def __call__(self, options: FreezeOptions, /) -> FreezePolicy: ...


class CallbackFactory(Protocol):
    """A fresh callback, holding one run's state, for the run's configuration."""

    def __call__(self, config: RunConfig, /) -> Callback: ...


@hookspec
def tlcore_register_backbones(register: Register) -> None:
    """Called whenever the plugin set changes, to collect backbones.

    Call ``register("provider:model", factory)`` for each backbone, or
    ``register.family("provider:*", resolve, names)`` for a model zoo whose
    members are resolved by name on demand. Names are ``provider:model``.
    Return nothing.
    """


@hookspec
def tlcore_register_datasets(register: Register) -> None:
    """Called whenever the plugin set changes, to collect datasets.

    Call ``register(name, factory)`` for each dataset. Return nothing.
    """


@hookspec
def tlcore_register_heads(register: Register) -> None:
    """Called whenever the plugin set changes, to collect classification heads.

    Call ``register(name, factory)``; the factory builds a module mapping
    ``(N, in_features)`` features to ``(N, num_classes)`` logits. Return nothing.
    """


@hookspec
def tlcore_register_freeze_policies(register: Register) -> None:
    """Called whenever the plugin set changes, to collect freeze policies.

    Call ``register(name, factory)``; the factory returns a ``FreezePolicy``
    that says which layer groups train in each epoch. Return nothing.
    """


@hookspec
def tlcore_register_callbacks(register: Register) -> None:
    """Called whenever the plugin set changes, to collect training callbacks.

    Call ``register(name, factory, default=True|False)``; the factory gets the
    run's ``RunConfig`` and returns a fresh ``Callback`` with per-run state.
    Callbacks registered with ``default=True`` run unless the user deselects
    them. Return nothing.
    """


@hookspec
def tlcore_register_commands(app: typer.Typer) -> None:
    """Called once when the CLI starts, to add commands to the ``tlcore`` Typer app.

    Use ``@app.command()``, with names prefixed by the plugin's name. tlcore's own
    commands cannot be replaced (the plugin is warned about and its command is not
    installed); a name two plugins add fails naming both. Return nothing.
    """


@hookspec
def tlcore_register_options(register: OptionRegister) -> None:
    """Called whenever the plugin set changes, to collect the options a plugin adds to runs (API 1.1).

    Call ``register(name, default=..., help=..., kind=..., choices=..., at_least=..., at_most=..., check=...)``
    for each option (see :class:`tlcore.plugin_options.OptionRegister`). Each becomes a flag of
    ``tlcore run``, ``plan`` and ``eval`` (``image_column``: ``--image-column``) and a config-file key,
    is validated, reaches dataset factories as ``DatasetOptions.extra[name]``, and is recorded in
    config.json and checkpoints. A name two plugins declare is an error naming both. Return nothing.
    """


@hookspec(firstresult=True)
def tlcore_pretrained_weights(backbone: str) -> PretrainedWeights | None:
    """Called when a run asks for ``--weights pretrained``, before the provider downloads anything.

    Return a ``PretrainedWeights`` describing local weights for the backbone
    name (already keyed like ``Backbone.module.state_dict()``), or None when
    this plugin has none. Plugins are asked newest registration first, built-in
    parts last, and the first non-None answer wins (pluggy's firstresult order);
    one that raises is reported and the next is asked. Also asked by
    `tlcore info` and `tlcore list backbones`, so answer without loading anything.
    """
