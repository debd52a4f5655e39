"""Built-in commands beyond run/list/info/plugins, added through ``tlcore_register_commands`` like a plugin's."""

from __future__ import annotations

import typer

from tlcore.hookspecs import hookimpl


@hookimpl
def tlcore_register_commands(app: typer.Typer) -> None:
    """Add the built-in after-training commands (none yet)."""
