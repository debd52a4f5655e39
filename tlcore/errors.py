"""Errors that reach the user as one clear line, never as a traceback."""

from __future__ import annotations


class TlcoreError(Exception):
    """A failure caused by input or environment that the user can fix.

    The CLI prints ``str(error)`` on one line and exits with status 2; any other
    exception is a bug in tlcore or in a plugin.
    """

    exit_code = 2


class UnknownNameError(TlcoreError):
    """A backbone, dataset, head, freeze policy or callback name that nothing registered."""


class NameConflictError(TlcoreError):
    """Two plugins registered the same name."""


class ConfigError(TlcoreError):
    """A configuration value or file that is not accepted."""


class DataError(TlcoreError):
    """Data that is missing, empty or unreadable."""


class WeightsError(TlcoreError):
    """Weights that cannot be had, or do not fit the backbone."""


class PluginError(TlcoreError):
    """A plugin that raised inside a hook, or broke the contract of one."""


class ResourceError(TlcoreError):
    """The machine ran out of something a run needs (GPU memory, disk space)."""
