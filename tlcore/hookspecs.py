"""The hooks a tlcore plugin can implement.

A plugin is any object or module with functions decorated by
``tlcore.hookimpl`` whose names are below. The core's own parts (heads, freeze
policies, callbacks) register through these same hooks. A hook
implementation may take fewer arguments than its spec, so specs can grow
without breaking plugins.

Factories registered through the ``tlcore_register_*`` hooks are called with:

- backbones: ``factory(name: str, options: BackboneOptions) -> Backbone``
- datasets: ``factory(name: str, options: DatasetOptions) -> DatasetSplits``
- heads: ``factory(in_features: int, num_classes: int, options: HeadOptions) -> torch.nn.Module``
- freeze: ``factory(options: FreezeOptions) -> FreezePolicy``
- callbacks: ``factory(config: RunConfig) -> Callback``
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import typer

    from tlcore.registry import Register
    from tlcore.weights import PretrainedWeights

PROJECT = "tlcore"
# The version of the hook API below: the minor grows when hooks or arguments are added, the major when a hook is
# removed or changed incompatibly. Plugins declare the versions they support in TLCORE_API (see tlcore.plugins).
API_VERSION = "1.0"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


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

    Use ``@app.command()``; a command name taken twice is reported as a
    conflict. Return nothing.
    """


@hookspec(firstresult=True)
def tlcore_pretrained_weights(backbone: str) -> PretrainedWeights | None:
    """Called when a run asks for ``--weights pretrained``, before the provider downloads anything.

    Return a ``PretrainedWeights`` describing local weights for the backbone
    name (already keyed like ``Backbone.module.state_dict()``), or None when
    this plugin has none. The first non-None answer wins.
    """
