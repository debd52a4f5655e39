"""Name registries: exact names first, then each provider's own pattern.

Every plugin gets a :class:`Register` for each kind of component and calls it
with names and factories. The core records who registered what, so a
duplicate name is an error naming both plugins and `tlcore list` can say
which plugin provides each entry.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tlcore.errors import NameConflictError, PluginError, UnknownNameError

KINDS = ("backbones", "datasets", "heads", "freeze", "callbacks")
# How one item of each kind is called in messages.
LABELS = {
    "backbones": "backbone",
    "datasets": "dataset",
    "heads": "head",
    "freeze": "freeze policy",
    "callbacks": "callback",
}


@dataclass
class Entry:
    """One registered name and the factory that builds it."""

    name: str
    factory: Callable[..., Any]
    plugin: str
    description: str = ""
    meta: dict = field(default_factory=dict)


@dataclass
class Family:
    """A provider's pattern that answers for many names it does not list one by one.

    ``resolve(name)`` returns a factory for a name it knows and None otherwise;
    ``names()`` lists the names it knows (lazily: only `tlcore list` and error
    messages call it); ``info(name)`` may return extra columns for listings.
    """

    pattern: str
    resolve: Callable[[str], Callable[..., Any] | None]
    names: Callable[[], Iterable[str]]
    plugin: str
    description: str = ""
    info: Callable[[str], dict] | None = None


class Register:
    """The callable handed to a plugin's ``tlcore_register_*`` hook.

    ``register(name, factory, description=..., **meta)`` adds one name;
    ``register.family(pattern, resolve, names, ...)`` adds a pattern-resolved family.
    """

    def __init__(self, catalog: Catalog, plugin: str):
        self._catalog = catalog
        self._plugin = plugin

    def __call__(self, name: str, factory: Callable[..., Any], *, description: str = "", **meta: Any) -> None:
        """Register ``name`` as built by ``factory``."""
        if not isinstance(name, str) or not name or name != name.strip():
            raise PluginError(f"plugin {self._plugin} registered an invalid {self._catalog.kind} name {name!r}")
        if not callable(factory):
            raise PluginError(f"plugin {self._plugin} registered {name!r} with a factory that is not callable")
        self._catalog.entries.setdefault(name, []).append(Entry(name, factory, self._plugin, description, meta))

    def family(
        self,
        pattern: str,
        resolve: Callable[[str], Callable[..., Any] | None],
        names: Callable[[], Iterable[str]],
        *,
        description: str = "",
        info: Callable[[str], dict] | None = None,
    ) -> None:
        """Register every name matching the fnmatch ``pattern`` that ``resolve`` accepts."""
        self._catalog.families.append(Family(pattern, resolve, names, self._plugin, description, info))


@dataclass
class Listing:
    """One row of `tlcore list`."""

    name: str
    plugin: str
    description: str = ""
    info: dict = field(default_factory=dict)


class Catalog:
    """All registrations of one kind (backbones, datasets, heads, freeze, callbacks)."""

    def __init__(self, kind: str, failed_plugins: list[str] | None = None):
        self.kind = kind
        self.entries: dict[str, list[Entry]] = {}
        self.families: list[Family] = []
        self.failed_plugins = failed_plugins or []  # named when a name is unknown: it may be theirs

    def resolve(self, name: str) -> Entry:
        """Return the entry for ``name``: an exact registration, else a family's match.

        Raises NameConflictError if two plugins answer for the name and
        UnknownNameError, with close matches, if none does.
        """
        exact = self.entries.get(name, [])
        if len(exact) > 1:
            raise self._conflict(name, [e.plugin for e in exact])
        if exact:
            return exact[0]
        answers = []
        for family in self.families:
            if fnmatch.fnmatchcase(name, family.pattern):
                try:
                    factory = family.resolve(name)
                except Exception as error:  # a provider's bug must not look like "unknown name"
                    raise PluginError(f"plugin {family.plugin} failed to resolve {self.kind} {name!r}: {error}") from error
                if factory is not None:
                    answers.append(Entry(name, factory, family.plugin, family.description))
        if len(answers) > 1:
            raise self._conflict(name, [e.plugin for e in answers])
        if answers:
            return answers[0]
        raise self._unknown(name)

    def listing(self, pattern: str = "*", *, with_info: bool = False) -> list[Listing]:
        """Every known name matching ``pattern``, sorted, with the plugin that provides it."""
        rows: dict[str, Listing] = {}
        for family in self.families:
            if not patterns_may_overlap(pattern, family.pattern):  # its names() may import a library (timm: 2-3 s)
                continue
            for name in self._family_names(family):
                if fnmatch.fnmatchcase(name, pattern) and name not in rows:
                    info = family.info(name) if (with_info and family.info) else {}
                    rows[name] = Listing(name, family.plugin, family.description, info)
        for name, entries in self.entries.items():
            if fnmatch.fnmatchcase(name, pattern):
                plugins = ", ".join(e.plugin for e in entries)
                if len(entries) > 1:
                    plugins = f"CONFLICT: {plugins}"
                rows[name] = Listing(name, plugins, entries[0].description, dict(entries[0].meta))
        return [rows[name] for name in sorted(rows)]

    def declares_pretrained(self, name: str) -> bool | None:
        """What the provider declared about pretrained weights for ``name``.

        The ``pretrained=`` given to ``register(...)``, or the ``pretrained`` column of
        a family's ``info(name)``; None when the provider declared nothing (or the name
        is unknown, or two plugins answer for it).
        """
        exact = self.entries.get(name, [])
        if len(exact) == 1:
            declared = exact[0].meta.get("pretrained")
            return None if declared is None else bool(declared)
        if exact:
            return None
        for family in self.families:
            if family.info is not None and fnmatch.fnmatchcase(name, family.pattern):
                try:
                    if family.resolve(name) is None:
                        continue
                    declared = family.info(name).get("pretrained")
                except Exception as error:  # a provider's bug is named, not mistaken for "nothing declared"
                    raise PluginError(f"plugin {family.plugin} failed to describe {self.kind} {name!r}: {error}") from error
                return None if declared is None else bool(declared)
        return None

    def known_names(self, near: str | None = None) -> list[str]:
        """All names, exact and from families; used for close-match suggestions.

        With ``near``, only the families whose pattern matches ``near`` are
        listed (``torchvision:resnt18`` lists no ``timm:`` names, whose listing
        imports timm); every family when none matches it.
        """
        names = set(self.entries)
        families = self.families
        if near is not None:
            families = [f for f in self.families if fnmatch.fnmatchcase(near, f.pattern)] or self.families
        for family in families:
            names.update(self._family_names(family))
        return sorted(names)

    def _family_names(self, family: Family) -> list[str]:
        try:
            return list(family.names())
        except Exception as error:
            raise PluginError(f"plugin {family.plugin} failed to list its {self.kind}: {error}") from error

    def _conflict(self, name: str, plugins: list[str]) -> NameConflictError:
        return NameConflictError(
            f"{LABELS[self.kind]} name {name!r} is registered by "
            f"several plugins: {' and '.join(plugins)}; disable one with TLCORE_DISABLE_PLUGINS"
        )

    def _unknown(self, name: str) -> UnknownNameError:
        # the provider the name points at first; every provider's names only when it has nothing close
        known = self.known_names(near=name)
        close = _close_names(name, known)
        if not close:
            known = self.known_names()
            close = _close_names(name, known)
        if close:
            hint = f"did you mean {', '.join(close)}?"
        elif len(known) <= 12:
            hint = f"accepted: {', '.join(known) or 'none are installed'}"
        else:
            hint = f"see `tlcore list {self.kind}`"
        if self.failed_plugins:
            hint += f" (plugins that failed to load: {', '.join(self.failed_plugins)}; see `tlcore plugins`)"
        return UnknownNameError(f"unknown {LABELS[self.kind]} {name!r}; {hint}")


def _close_names(name: str, known: list[str]) -> list[str]:
    """Up to three names of ``known`` close to ``name``; for ``provider:model``, also by the model part alone."""
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    if not close and ":" in name:  # compare the model part alone: "torchvision:resnt18" ~ "resnet18"
        tail = name.split(":", 1)[1]
        by_tail = {k.split(":", 1)[-1]: k for k in known}
        close = [by_tail[t] for t in difflib.get_close_matches(tail, list(by_tail), n=3, cutoff=0.6)]
    return close


_WILDCARDS = "*?["


def patterns_may_overlap(first: str, second: str) -> bool:
    """Whether some name could match both fnmatch patterns (case-sensitive); False only when none can.

    A conservative test on the literal text before the first wildcard and after
    the last one: every name ``timm:*`` matches starts with ``timm:``, so none
    matches ``torchvision:res*``. Used to skip a family's ``names()`` (which
    may import a large library) when it cannot answer a listing's pattern.
    """

    def prefix(pattern: str) -> str:
        cut = min((pattern.index(c) for c in _WILDCARDS if c in pattern), default=len(pattern))
        return pattern[:cut]

    def suffix(pattern: str) -> str:
        # after the last wildcard or class end; a literal "]" only shortens it, which stays conservative
        cut = max((pattern.rindex(c) for c in "*?]" if c in pattern), default=-1)
        return pattern[cut + 1 :] if any(c in pattern for c in _WILDCARDS) else pattern

    a, b = prefix(first), prefix(second)
    if not (a.startswith(b) or b.startswith(a)):
        return False
    a, b = suffix(first), suffix(second)
    return a.endswith(b) or b.endswith(a)
