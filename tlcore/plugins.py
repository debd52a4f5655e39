"""The plugin manager: built-in parts, installed plugins and run-time registrations.

Installed plugins are found through the entry-point group ``tlcore`` and loaded
one at a time, so a plugin that fails to import is recorded (with its error)
and everything else keeps working.

Environment variables:

- ``TLCORE_PLUGINS``: comma-separated entry-point names to load; the rest are
  skipped (set it empty to load no installed plugin). Built-in parts always load.
- ``TLCORE_DISABLE_PLUGINS``: comma-separated plugin names not to load, built-in
  ones included.
- ``TLCORE_TRACE_HOOKS``: set to 1 to print every hook call to stderr: the hook,
  the plugin, a summary of the result and the time taken.

A plugin may declare the hook API versions it supports as a string attribute
``TLCORE_API`` (e.g. ``">=1,<2"``: comma-separated comparisons that must all hold);
one whose range excludes ``hookspecs.API_VERSION`` is refused, naming both.

Order and isolation (the one rule; docs/plugins.md, "Order and conflicts"):
built-in parts are registered first, then installed plugins sorted by entry-point
name, then run-time registrations in the order made. Hooks that answer a question
(``tlcore_pretrained_weights``) ask the most recently registered plugin first and
the built-in parts last, as pluggy's ``firstresult`` does; :meth:`PluginHost.hook_impls`
returns that order. Each implementation is called on its own, so one that raises is
reported and the others still run. Names are never decided by order: two plugins
registering one name is an error naming both, and built-in commands cannot be
replaced by a plugin.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import operator
import os
import re
import sys
import time
from collections import Counter
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
ENV_TRACE = "TLCORE_TRACE_HOOKS"
API_ATTRIBUTE = "TLCORE_API"
_COMPARISONS = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
}
_CLAUSE = re.compile(r"\s*(>=|<=|==|!=|>|<)\s*(\d+)(?:\.(\d+))?\s*")
# The core's own parts, registered exactly like external plugins.
BUILTIN_MODULES = {
    "tlcore.heads": "tlcore.heads",
    "tlcore.freeze": "tlcore.freeze",
    "tlcore.callbacks": "tlcore.callbacks.builtin",
    "tlcore.commands": "tlcore.commands",
    "tlcore.scaffold": "tlcore.scaffold",
}
# The plugins in tlcore's own repository: like the built-in parts, their bare names (e.g. the command
# `report`) are tlcore's, and no other plugin can take them over (docs/plugins.md, "Order and conflicts").
FIRST_PARTY_DISTRIBUTIONS = frozenset(
    {"tlcore-torchvision", "tlcore-timm", "tlcore-datasets", "tlcore-viz", "tlcore-hf", "tlcore-mlflow", "tlcore-wandb"}
)
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
    error: str | None = None  # why it did not load, or the first hook of it that raised
    warnings: list[str] = field(default_factory=list)  # e.g. another distribution's entry point of the same name

    @property
    def first_party(self) -> bool:
        """A built-in part or a plugin from tlcore's own repository (whose bare names are reserved)."""
        return self.source == "builtin" or self.distribution in FIRST_PARTY_DISTRIBUTIONS

    def warn(self, message: str) -> None:
        """Keep ``message`` for `tlcore plugins` (once) and print it as a warning."""
        if message not in self.warnings:
            self.warnings.append(message)
        print(f"tlcore: warning: {message}", file=sys.stderr)

    def to_dict(self) -> dict:
        """JSON-ready form for `tlcore plugins --json` and config.json."""
        return {
            "name": self.name,
            "source": self.source,
            "distribution": self.distribution,
            "version": self.version,
            "hooks": self.hooks,
            "error": self.error,
            "warnings": self.warnings,
        }


def _env_names(variable: str) -> set[str] | None:
    value = os.environ.get(variable)
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


class PluginHost:
    """Owns the pluggy manager and the catalogs built from it."""

    def __init__(self, *, load_installed: bool = True):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}
        self._catalogs: dict[str, Catalog] | None = None
        self.trace_hooks = os.environ.get(ENV_TRACE, "").strip() not in ("", "0")
        if self.trace_hooks:  # calls made through pluggy (host.pm.hook.NAME(...)); call_impl traces its own
            self.pm.add_hookcall_monitoring(lambda hook_name, hook_impls, kwargs: None, _trace_pluggy_call)
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
            if name in disabled or (selected is not None and name not in selected):
                continue
            dist = getattr(entry_point, "dist", None)
            if name in self.records:  # a second distribution using a taken name: reported, never dropped silently
                self._report_duplicate(self.records[name], entry_point)
                continue
            record = PluginRecord(name, "entry point", dist.name if dist else None, dist.version if dist else None)
            try:
                plugin = entry_point.load()
                self._register_checked(plugin, name)
                record.hooks = self._hook_names(name)
            except Exception as error:  # one broken plugin is reported, the rest keep working
                record.error = f"{type(error).__name__}: {error}"
            self.records[name] = record

    def _report_duplicate(self, taken: PluginRecord, entry_point: importlib.metadata.EntryPoint) -> None:
        """Record on the loaded plugin, and warn, that another entry point of its name was not loaded."""
        dist = getattr(entry_point, "dist", None)
        other = f"{dist.name} {dist.version}" if dist else entry_point.value
        owner = "tlcore (a built-in part)" if taken.source == "builtin" else f"{taken.distribution or taken.source}"
        owner += f" {taken.version}" if taken.version and taken.source != "builtin" else ""
        message = (
            f"entry point {taken.name!r} of {other} was not loaded: the name is taken by {owner}; "
            "uninstall one of them (plugin names must be unique)"
        )
        taken.warn(message)

    def _register_checked(self, plugin: Any, name: str) -> None:
        """Register with pluggy; refuse a plugin made for another hook API and implementations that match no hook (typos)."""
        check_api_version(plugin, name)
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
            raise PluginError(f"unknown hooks: {'; '.join(_hook_hint(hook) for hook in sorted(unknown))}")
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
            taken = self.records.get(name)
            origin = f" (from {taken.distribution or taken.source})" if taken is not None else ""
            raise PluginError(f"a plugin named {name!r} is already registered{origin}; register this one under another name")
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

    def catalogs(self) -> dict[str, Catalog]:
        """Every catalog (collecting them runs every register hook, so hook errors are on the records after)."""
        return {kind: self.catalog(kind) for kind in KINDS}

    def _collect(self, kind: str) -> Catalog:
        catalog = Catalog(kind, [name for name, record in self.records.items() if record.error])
        # registration order (built-ins first): it only orders the plugins a conflict message names
        for impl in reversed(self.hook_impls(REGISTER_HOOKS[kind])):
            self.call_impl(impl, register=Register(catalog, impl.plugin_name))
        return catalog

    def call_impl(self, impl: Any, **kwargs: Any) -> Any:
        """Call one hook implementation with the arguments it asks for; name the plugin if it raises."""
        wanted = {k: v for k, v in kwargs.items() if k in impl.argnames}
        before = _trace_snapshot(kwargs) if self.trace_hooks else None
        started = time.perf_counter()
        try:
            result = impl.function(**wanted)
        except Exception as error:
            if self.trace_hooks:
                _trace_call(impl, f"raised {type(error).__name__}: {error}", started)
            message = f"plugin {impl.plugin_name} failed in {impl.function.__name__}: {type(error).__name__}: {error}"
            record = self.records.get(impl.plugin_name)
            if record is not None and record.error is None:
                record.error = message
            print(f"tlcore: warning: {message}", file=sys.stderr)
            return None
        if self.trace_hooks:
            _trace_call(impl, _trace_summary(result, before, kwargs), started)
        return result

    def hook_impls(self, hook_name: str) -> list[Any]:
        """Implementations of one hook in the order tlcore asks them: newest registration first, built-ins last.

        This is pluggy's own call order (``tryfirst``/``trylast`` included), so a
        ``firstresult`` hook answered from this list picks what pluggy would pick.
        """
        return list(reversed(getattr(self.pm.hook, hook_name).get_hookimpls()))

    def first_result(self, hook_name: str, **kwargs: Any) -> Any:
        """The first non-None answer to a ``firstresult`` hook, asking in :meth:`hook_impls` order.

        Unlike ``pm.hook.NAME(...)``, a plugin that raises is reported (see
        :meth:`call_impl`) and the next one is asked.
        """
        for impl in self.hook_impls(hook_name):
            answer = self.call_impl(impl, **kwargs)
            if answer is not None:
                return answer
        return None

    def plugin_versions(self) -> dict[str, str | None]:
        """Plugin name to version, for config.json."""
        return {name: record.version for name, record in sorted(self.records.items()) if record.error is None}


def _hook_hint(hook_name: str) -> str:
    """``hook_name`` with the closest real hook name (a typo such as a singular), or the list of hooks."""
    known = sorted(name for name in dir(hookspecs) if name.startswith(f"{hookspecs.PROJECT}_"))
    close = difflib.get_close_matches(hook_name, known, n=1, cutoff=0.6)
    if close:
        return f"{hook_name} (did you mean {close[0]}?)"
    return f"{hook_name} (the hooks are {', '.join(known)})"


def _api_version(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor or 0)


def api_range_allows(spec: str, version: str | None = None) -> bool:
    """Whether a ``TLCORE_API`` range such as ``">=1,<2"`` admits ``version`` (default: the core's).

    Raises ValueError when ``spec`` is no such range.

    Comma-separated comparisons (>=, >, <=, <, ==, !=) with versions of one or two
    numbers, all of which must hold; a missing minor version counts as 0.
    """
    current = _api_version(version or hookspecs.API_VERSION)
    allowed = True
    for clause in spec.split(","):
        match = _CLAUSE.fullmatch(clause)
        if match is None:
            raise ValueError(f"{clause.strip()!r} is not a comparison like '>=1' or '<2.1'")
        symbol, major, minor = match.groups()
        allowed = allowed and _COMPARISONS[symbol](current, (int(major), int(minor or 0)))
    return allowed


def check_api_version(plugin: Any, name: str) -> None:
    """Refuse a plugin whose ``TLCORE_API`` excludes this core's hook API version; plugins without one are accepted."""
    spec = getattr(plugin, API_ATTRIBUTE, None)
    if spec is None:
        return
    try:
        if not isinstance(spec, str):
            raise ValueError(f"it is a {type(spec).__name__}, not a string")
        allowed = api_range_allows(spec)
    except ValueError as error:
        raise PluginError(
            f"plugin {name} declares {API_ATTRIBUTE} = {spec!r}, which is not a version range like '>=1,<2': {error}"
        ) from None
    if not allowed:
        raise PluginError(
            f"plugin {name} supports tlcore plugin API {spec}, but this tlcore provides API {hookspecs.API_VERSION}; "
            f"install a version of {name} made for it"
        )


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _trace_snapshot(kwargs: dict[str, Any]) -> list[str] | None:
    """What a hook can add to, before the call: names in the Register's catalog, or the CLI's commands."""
    catalog = getattr(kwargs.get("register"), "_catalog", None)  # the Catalog a Register fills
    if catalog is not None:
        return [name for name, entries in catalog.entries.items() for _ in entries] + [f.pattern for f in catalog.families]
    commands = getattr(kwargs.get("app"), "registered_commands", None)
    if commands is not None:
        return [command.name or command.callback.__name__ for command in commands]
    return None


def _trace_summary(result: Any, before: list[str] | None, kwargs: dict[str, Any]) -> str:
    """The result of a hook call in a few words: what it registered, or its return value."""
    if before is None:
        return _short(repr(result))
    added = list((Counter(_trace_snapshot(kwargs)) - Counter(before)).elements())
    return _short(f"registered {', '.join(added)}") if added else "registered nothing"


def _trace_call(impl: Any, summary: str, started: float) -> None:
    elapsed = (time.perf_counter() - started) * 1000
    line = f"tlcore: trace: {impl.function.__name__} plugin={impl.plugin_name} -> {summary} ({elapsed:.1f} ms)"
    print(line, file=sys.stderr)


def _trace_pluggy_call(outcome: Any, hook_name: str, hook_impls: list, kwargs: dict[str, Any]) -> None:
    names = ",".join(impl.plugin_name for impl in hook_impls) or "none"
    try:
        summary = _short(repr(outcome.get_result()))
    except BaseException as error:  # the caller gets the exception from pluggy; the trace only reports it
        summary = f"raised {type(error).__name__}: {error}"
    print(f"tlcore: trace: {hook_name} plugins={names} -> {summary}", file=sys.stderr)


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


def reset_host(*, load_installed: bool = True) -> PluginHost:
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
