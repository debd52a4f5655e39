"""The plugin manager: built-in parts, installed plugins and run-time registrations.

Installed plugins are found through the entry-point group ``tlcore`` and loaded
one at a time, so a plugin that fails to import is recorded (with its error)
and everything else keeps working.

Environment variables:

- ``TLCORE_PLUGINS``: comma-separated entry-point names to load; the rest are
  skipped (set it empty to load no installed plugin). Built-in parts always load.
- ``TLCORE_DISABLE_PLUGINS``: comma-separated plugin names not to load, built-in
  ones included.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pluggy

from tlcore import hookspecs
from tlcore.errors import PluginError
from tlcore.registry import KINDS, Catalog, Register

ENTRY_POINT_GROUP = "tlcore"
ENV_SELECT = "TLCORE_PLUGINS"
ENV_DISABLE = "TLCORE_DISABLE_PLUGINS"
# The core's own parts, registered exactly like external plugins.
BUILTIN_MODULES = {
    "tlcore.heads": "tlcore.heads",
    "tlcore.freeze": "tlcore.freeze",
    "tlcore.callbacks": "tlcore.callbacks.builtin",
    "tlcore.commands": "tlcore.commands",
}
REGISTER_HOOKS = {
    "backbones": "tlcore_register_backbones",
    "datasets": "tlcore_register_datasets",
    "heads": "tlcore_register_heads",
    "freeze": "tlcore_register_freeze_policies",
    "callbacks": "tlcore_register_callbacks",
}


@dataclass
class PluginRecord:
    """What `tlcore plugins` shows about one plugin."""

    name: str
    source: str  # "builtin", "entry point" or "runtime"
    distribution: str | None = None
    version: str | None = None
    hooks: list[str] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict:
        """JSON-ready form for `tlcore plugins --json` and config.json."""
        return {
            "name": self.name,
            "source": self.source,
            "distribution": self.distribution,
            "version": self.version,
            "hooks": self.hooks,
            "error": self.error,
        }


def _env_names(variable: str) -> set[str] | None:
    value = os.environ.get(variable)
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


class PluginHost:
    """Owns the pluggy manager and the catalogs built from it."""

    def __init__(self, load_installed: bool = True):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}
        self._catalogs: dict[str, Catalog] | None = None
        self._load_builtins()
        if load_installed:
            self._load_entry_points()

    # -- loading ---------------------------------------------------------

    def _load_builtins(self) -> None:
        disabled = _env_names(ENV_DISABLE) or set()
        for name, module_name in BUILTIN_MODULES.items():
            if name in disabled:
                continue
            record = PluginRecord(name, "builtin", "tlcore", _version("tlcore"))
            try:
                module = importlib.import_module(module_name)
                self._register_checked(module, name)
                record.hooks = self._hook_names(name)
            except Exception as error:  # a built-in part failing must not take the others down
                record.error = f"{type(error).__name__}: {error}"
            self.records[name] = record

    def _load_entry_points(self) -> None:
        selected = _env_names(ENV_SELECT)
        disabled = _env_names(ENV_DISABLE) or set()
        for entry_point in sorted(_entry_points(), key=lambda ep: ep.name):
            name = entry_point.name
            if name in disabled or (selected is not None and name not in selected) or name in self.records:
                continue
            dist = getattr(entry_point, "dist", None)
            record = PluginRecord(name, "entry point", dist.name if dist else None, dist.version if dist else None)
            try:
                plugin = entry_point.load()
                self._register_checked(plugin, name)
                record.hooks = self._hook_names(name)
            except Exception as error:  # one broken plugin is reported, the rest keep working
                record.error = f"{type(error).__name__}: {error}"
            self.records[name] = record

    def _register_checked(self, plugin: Any, name: str) -> None:
        """Register with pluggy and reject hook implementations that match no hook (typos)."""
        self.pm.register(plugin, name=name)
        unknown = [
            impl.function.__name__
            for hook_name in dir(self.pm.hook)
            if not hook_name.startswith("_")
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls()
            if impl.plugin_name == name and not getattr(self.pm.hook, hook_name).has_spec()
        ]
        if unknown:
            self.pm.unregister(name=name)
            raise PluginError(f"unknown hooks {', '.join(sorted(unknown))}; see docs for the hook names")
        self._catalogs = None

    def _hook_names(self, name: str) -> list[str]:
        plugin = self.pm.get_plugin(name)
        if plugin is None:
            return []
        return sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or [])

    # -- run-time registration -------------------------------------------

    def register(self, plugin: Any, name: str | None = None) -> str:
        """Register a plugin object now; it takes effect at once. Returns its name."""
        name = name or getattr(plugin, "__name__", None) or f"runtime-{id(plugin):x}"
        if self.pm.get_plugin(name) is not None or name in self.records:
            raise PluginError(f"a plugin named {name!r} is already registered")
        self._register_checked(plugin, name)
        self.records[name] = PluginRecord(name, "runtime", hooks=self._hook_names(name))
        return name

    def unregister(self, plugin_or_name: Any) -> None:
        """Undo :meth:`register` (or remove any loaded plugin) by name or object."""
        if isinstance(plugin_or_name, str):
            name = plugin_or_name
        else:
            name = self.pm.get_name(plugin_or_name)
        if name is None or name not in self.records:
            raise PluginError(f"no plugin {plugin_or_name!r} is registered")
        if self.pm.get_plugin(name) is not None:
            self.pm.unregister(name=name)
        del self.records[name]
        self._catalogs = None

    # -- catalogs ----------------------------------------------------------

    def catalog(self, kind: str) -> Catalog:
        """The catalog of one kind, rebuilt after the plugin set changes."""
        if self._catalogs is None:
            self._catalogs = {k: self._collect(k) for k in KINDS}
        return self._catalogs[kind]

    def _collect(self, kind: str) -> Catalog:
        catalog = Catalog(kind)
        hook = getattr(self.pm.hook, REGISTER_HOOKS[kind])
        for impl in reversed(hook.get_hookimpls()):  # registration order: built-ins first
            self.call_impl(impl, register=Register(catalog, impl.plugin_name))
        return catalog

    def call_impl(self, impl: Any, **kwargs: Any) -> Any:
        """Call one hook implementation with the arguments it asks for; name the plugin if it raises."""
        wanted = {k: v for k, v in kwargs.items() if k in impl.argnames}
        try:
            return impl.function(**wanted)
        except Exception as error:
            message = f"plugin {impl.plugin_name} failed in {impl.function.__name__}: {type(error).__name__}: {error}"
            record = self.records.get(impl.plugin_name)
            if record is not None and record.error is None:
                record.error = message
            print(f"tlcore: warning: {message}", file=sys.stderr)
            return None

    def hook_impls(self, hook_name: str) -> list[Any]:
        """Implementations of one hook, in registration order."""
        return list(reversed(getattr(self.pm.hook, hook_name).get_hookimpls()))

    def plugin_versions(self) -> dict[str, str | None]:
        """Plugin name to version, for config.json."""
        return {name: record.version for name, record in sorted(self.records.items()) if record.error is None}


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


_host: PluginHost | None = None


def get_host() -> PluginHost:
    """The process-wide plugin host, created on first use."""
    global _host
    if _host is None:
        _host = PluginHost()
    return _host


def reset_host(load_installed: bool = True) -> PluginHost:
    """Start over with a fresh host (tests; after installing a plugin in-process)."""
    global _host
    _host = PluginHost(load_installed=load_installed)
    return _host


def register(plugin: Any, name: str | None = None) -> str:
    """Register a plugin object (module, class instance) with hook implementations; returns its name."""
    return get_host().register(plugin, name)


def unregister(plugin_or_name: Any) -> None:
    """Remove a plugin registered with :func:`register`."""
    get_host().unregister(plugin_or_name)


@contextmanager
def registered(plugin: Any, name: str | None = None) -> Iterator[str]:
    """Register a plugin for the duration of a ``with`` block."""
    plugin_name = register(plugin, name)
    try:
        yield plugin_name
    finally:
        unregister(plugin_name)


def catalog(kind: str) -> Catalog:
    """Shortcut for ``get_host().catalog(kind)``."""
    return get_host().catalog(kind)
