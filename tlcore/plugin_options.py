"""Options that plugins add to runs: declared once, they become flags, config-file keys and dataset options.

A plugin implements ``tlcore_register_options(register)`` and calls
``register(name, default=..., help=..., ...)`` for each option (see
:class:`OptionRegister`). Every declared option then

- is a flag of ``tlcore run``, ``tlcore plan`` and ``tlcore eval``
  (``image_column`` becomes ``--image-column``) and a key of a ``--config`` file;
- is checked (type, choices, bounds, the plugin's own ``check``) with a one-line
  ConfigError naming the option, like every RunConfig field;
- reaches the dataset factory as ``DatasetOptions.extra[name]`` (the declared
  default when the user gave none);
- is recorded in config.json (``config.plugin_options``) and in the checkpoint's
  data record (``data.options``), so ``--resume``, ``tlcore eval`` and ``tlcore
  report`` rebuild the same data.

A name two plugins declare is an error naming both whenever a run, plan or
eval resolves its options (``tlcore plugins`` and ``tlcore list`` keep working,
so the conflict can be looked at); neither plugin's flag is added. A name that
is a RunConfig field, or an option of ``eval`` itself, cannot be declared.
"""

from __future__ import annotations

import inspect
import math
import re
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tlcore.errors import ConfigError, NameConflictError, PluginError

if TYPE_CHECKING:
    from tlcore.plugins import PluginHost

HOOK = "tlcore_register_options"
KINDS = {str: "text", int: "integer", float: "number", bool: "true or false"}
OPTION_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")  # lower_snake_case config keys
# options of commands that take plugin options besides the RunConfig fields (run --resume, eval's own)
RESERVED = frozenset(
    {"config", "resume", "checkpoint", "split", "json", "as_json", "tta", "reject_below", "plugin_options", "help"}
)
MAX_TEXT = 4096  # characters of a text option's value: far above any column name or split name


@dataclass(frozen=True)
class PluginOption:
    """One option a plugin declared: ``name`` (a config key, lower_snake_case) and what it accepts."""

    name: str
    kind: type  # str, int, float or bool
    default: Any
    help: str
    plugin: str
    choices: tuple[str, ...] | None = None
    at_least: float | None = None
    at_most: float | None = None
    check: Callable[[str, Any], None] | None = None

    @property
    def flag(self) -> str:
        """The command-line flag: ``--image-column`` for ``image_column``."""
        return "--" + self.name.replace("_", "-")

    def help_text(self) -> str:
        """The help shown by ``--help``: the plugin's text, its choices and default, and the plugin's name."""
        text = self.help
        if self.choices:
            text += f" (one of: {', '.join(self.choices)})"
        default = f"default {self.default}; " if self.default is not None else ""
        return f"{text} ({default}plugin {self.plugin})"

    def coerce(self, value: Any, where: str = "") -> Any:
        """``value`` checked against this option; ConfigError naming the option (and ``where`` it came from).

        Ints are accepted for floats; text is accepted for numbers and booleans
        only as written on a command line is parsed by the CLI, not here.
        """
        label = f"option {self.name}" + (f" ({where})" if where else "")
        if value is None:
            if self.default is None:
                return None
            raise ConfigError(f"{label} must not be empty")
        kind = self.kind
        if kind is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{label} must be true or false, got {_shown(value)}")
        elif kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{label} must be an integer, got {_shown(value)}")
        elif kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{label} must be a number, got {_shown(value)}")
            try:
                value = float(value)
            except OverflowError:
                raise ConfigError(f"{label} is too large") from None
            if not math.isfinite(value):
                raise ConfigError(f"{label} must be a finite number, got {value}")
        elif not isinstance(value, str):
            raise ConfigError(f"{label} must be text, got {_shown(value)}")
        elif len(value) > MAX_TEXT or "\x00" in value:
            raise ConfigError(f"{label} must be text of at most {MAX_TEXT} characters without NUL, got {_shown(value)}")
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{self.name} {value!r} is not accepted; accepted: {', '.join(self.choices)}")
        if kind in (int, float):
            if self.at_least is not None and value < self.at_least:
                raise ConfigError(f"{self.name} must be at least {_number(self.at_least)}, got {value}")
            if self.at_most is not None and value > self.at_most:
                raise ConfigError(f"{self.name} must be at most {_number(self.at_most)}, got {value}")
        if self.check is not None:
            self.check(self.name, value)  # the plugin's own rule; raises ConfigError
        return value


class OptionRegister:
    """The callable handed to ``tlcore_register_options``: ``register(name, default=..., help=..., ...)``.

    ``name``: the config key, lower_snake_case (``image_column``); the flag is
    ``--image-column``. ``kind``: str, int, float or bool, taken from
    ``default`` when not given (a default of None needs ``kind``; None then
    means "not given"). ``choices``: the accepted words of a text option.
    ``at_least``/``at_most``: inclusive bounds of a number. ``check(name,
    value)``: a further rule that raises ConfigError. A bad declaration raises
    PluginError naming the plugin.
    """

    def __init__(self, plugin: str, declared: list[PluginOption]):
        self._plugin = plugin
        self._declared = declared

    def __call__(
        self,
        name: str,
        *,
        default: Any = None,
        help: str,
        kind: type | None = None,
        choices: tuple[str, ...] | list[str] | None = None,
        at_least: float | None = None,
        at_most: float | None = None,
        check: Callable[[str, Any], None] | None = None,
    ) -> None:
        """Declare the option ``name``; see the class docstring."""
        from tlcore.config import FIELDS

        where = f"plugin {self._plugin} declared option {name!r}"
        if not isinstance(name, str) or not OPTION_NAME.fullmatch(name):
            raise PluginError(f"{where}: names are lower_snake_case, e.g. image_column")
        if name in FIELDS or name in RESERVED:
            raise PluginError(f"{where}: the name belongs to tlcore (a `tlcore run` or `tlcore eval` option)")
        kind = kind or (type(default) if default is not None else None)
        if kind not in KINDS:
            raise PluginError(f"{where} of kind {kind!r}; accepted: str, int, float, bool (default None needs kind=)")
        if not isinstance(help, str) or not help.strip():
            raise PluginError(f"{where} without help text")
        if choices is not None:
            choices = tuple(choices)
            if kind is not str or not choices or not all(isinstance(c, str) for c in choices):
                raise PluginError(f"{where}: choices must be a non-empty list of words of a text option")
        option = PluginOption(name, kind, default, help.strip(), self._plugin, choices, at_least, at_most, check)
        if default is not None:
            try:
                option.coerce(default)
            except ConfigError as error:
                raise PluginError(f"{where} with a default its own rules refuse: {error}") from None
        self._declared.append(option)


@dataclass
class OptionSet:
    """The options declared by the loaded plugins, and the names more than one plugin declared."""

    options: dict[str, PluginOption]
    conflicts: dict[str, list[str]]

    def check_conflicts(self) -> None:
        """NameConflictError naming both plugins when two declare one option name."""
        for name, plugins in sorted(self.conflicts.items()):
            raise NameConflictError(
                f"option {name!r} is declared by several plugins: {' and '.join(plugins)}; "
                "disable one with TLCORE_DISABLE_PLUGINS"
            )

    def resolve(self, given: Mapping[str, Any], recorded: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Every declared option's value: ``given`` (flags, config file) over ``recorded`` over the default.

        ``given`` keys must be declared options (ConfigError otherwise);
        ``recorded`` (config.json's or a checkpoint's record) may name options
        no installed plugin declares any more: they are dropped, since only the
        plugin that declared them read them. Values are checked.
        """
        self.check_conflicts()
        values: dict[str, Any] = {}
        for name, option in sorted(self.options.items()):
            if name in given:
                values[name] = option.coerce(given[name])
            elif recorded is not None and name in recorded:
                values[name] = option.coerce(recorded[name], "as recorded")
            else:
                values[name] = option.default
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            raise ConfigError(f"unknown option {unknown[0]!r}; {self.hint(unknown[0])}")
        return values

    def hint(self, key: str) -> str:
        """What to say about an unknown key: close names among the declared options."""
        import difflib

        close = difflib.get_close_matches(key, list(self.options), n=1)
        if close:
            return f"did you mean {close[0]}?"
        return "no installed plugin declares it (see `tlcore plugins`)"


_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def declared_options(host: PluginHost) -> OptionSet:
    """The options the host's plugins declare (collected again whenever its plugin set changes)."""
    key = tuple((name, id(host.pm.get_plugin(name))) for name in sorted(host.records))  # the plugin set
    cached = _cache.get(host)
    if cached is not None and cached[0] == key:
        return cached[1]
    options: dict[str, PluginOption] = {}
    owners: dict[str, list[str]] = {}
    for impl in reversed(host.hook_impls(HOOK)):  # registration order: it only orders the names in a conflict
        declared: list[PluginOption] = []
        host.call_impl(impl, register=OptionRegister(impl.plugin_name, declared))
        for option in declared:
            if impl.plugin_name not in owners.setdefault(option.name, []):
                owners[option.name].append(impl.plugin_name)
            options.setdefault(option.name, option)
    conflicts = {name: plugins for name, plugins in owners.items() if len(plugins) > 1}
    for name in conflicts:
        options.pop(name, None)
    result = OptionSet(options, conflicts)
    _cache[host] = (key, result)
    return result


# -- the command line: one flag per declared option ---------------------------------------------------------------


def accepts_plugin_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """A CLI command that takes a flag per declared option, from ``function(..., plugin_options: dict)``.

    The wrapper's signature is ``function``'s without ``plugin_options``, plus
    the flags :func:`install_option_flags` adds when the CLI starts; the
    values given are passed on as ``plugin_options`` (name to value, flags
    not given left out).
    """
    # evaluated annotations: the wrapper's module is not the one whose names a string annotation uses
    signature = inspect.signature(function, eval_str=True)
    parameters = [p for p in signature.parameters.values() if p.name != "plugin_options"]

    def wrapper(**kwargs: Any) -> Any:
        names = wrapper.__plugin_option_names__  # type: ignore[attr-defined]
        given = {name: kwargs.pop(name) for name in names if name in kwargs}
        return function(**kwargs, plugin_options={k: v for k, v in given.items() if v is not None})

    wrapper.__name__ = wrapper.__qualname__ = function.__name__
    wrapper.__doc__ = function.__doc__
    wrapper.__module__ = function.__module__
    hints = {p.name: p.annotation for p in parameters if p.annotation is not inspect.Parameter.empty}
    declare_option_parameters(wrapper, parameters, hints)
    return wrapper


def declare_option_parameters(command: Callable[..., Any], parameters: list, annotations: dict) -> None:
    """Mark ``command`` (its own ``parameters`` and ``annotations``) as one that takes the declared options' flags."""
    command.__tlcore_base__ = (list(parameters), dict(annotations))  # type: ignore[attr-defined]
    command.__plugin_option_names__ = ()  # type: ignore[attr-defined]
    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__annotations__ = dict(annotations)


def install_option_flags(command: Callable[..., Any], declared: OptionSet) -> None:
    """Give a command marked by :func:`declare_option_parameters` one flag per declared option (again per host).

    Called by the CLI before it parses the command line, so the flags follow
    the plugins of this process's host; a name the command already has is left to it.
    """
    import typer

    base, annotations = command.__tlcore_base__  # type: ignore[attr-defined]
    taken = {parameter.name for parameter in base}
    added, hints = [], dict(annotations)
    for name, option in sorted(declared.options.items()):
        if name in taken:
            continue
        flag = f"{option.flag}/--no-{option.flag[2:]}" if option.kind is bool else option.flag
        default = typer.Option(None, flag, help=option.help_text(), show_default=False)
        added.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=option.kind))
        hints[name] = option.kind
    command.__signature__ = inspect.Signature([*base, *added])  # type: ignore[attr-defined]
    command.__annotations__ = hints
    command.__plugin_option_names__ = tuple(p.name for p in added)  # type: ignore[attr-defined]


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
