"""tlcore-example-plugin: what a third-party tlcore plugin package looks like.

tlcore finds this module through the ``tlcore`` entry point in pyproject.toml
and calls the hook implementations below whenever the plugin set changes.
Every name it registers starts with ``example:`` (the plugin's own prefix), so
it never collides with another plugin's names.
"""

from __future__ import annotations

from tlcore import hookimpl
from tlcore_example.commands import stripes_command
from tlcore_example.smallnet import WIDTHS, build_smallnet
from tlcore_example.stripes import build_stripes
from tlcore_example.training import Summary, TopHalf

__version__ = "0.1.0"

# The tlcore plugin API versions this plugin is written for: comma-separated comparisons, all of which must hold.
TLCORE_API = ">=1,<2"


@hookimpl
def tlcore_register_backbones(register) -> None:
    """Register example:smallnet and example:smallnet-wide (random init only)."""
    for name, width in WIDTHS.items():
        register(name, build_smallnet, description=f"small residual convnet, width {width}, 32 px", pretrained=False)


@hookimpl
def tlcore_register_datasets(register) -> None:
    """Register example:stripes, made in code (no files, no download)."""
    register("example:stripes", build_stripes, description="4 classes of synthetic stripes (orientation), 32x32")


@hookimpl
def tlcore_register_freeze_policies(register) -> None:
    """Register example:top-half."""
    register("example:top-half", lambda options: TopHalf(), description="train the upper half of the layer groups")


@hookimpl
def tlcore_register_callbacks(register) -> None:
    """Register example:summary; not a default, so runs ask for it with --callbacks +example:summary."""
    register("example:summary", lambda config: Summary(), default=False, description="writes example-summary.json")


@hookimpl
def tlcore_register_commands(app) -> None:
    """Add `tlcore example-stripes DIR`."""
    app.command("example-stripes")(stripes_command)
