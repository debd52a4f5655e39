"""The ``tlcore`` command line: run, list, info, plugins, and commands added by plugins.

Every failure caused by input prints one line, ``tlcore: error: ...``, and
exits with status 2; no traceback reaches the user.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from enum import Enum
from pathlib import Path

import typer

from tlcore.config import FIELDS, HELP, build_config, load_config_file, option_kind
from tlcore.errors import ConfigError, NameConflictError, TlcoreError
from tlcore.interrupt import RunInterrupted
from tlcore.messages import one_line
from tlcore.plugin_options import declare_option_parameters, declared_options, install_option_flags
from tlcore.plugins import get_host
from tlcore.registry import KINDS

app = typer.Typer(
    name="tlcore",
    help="Fine-tune pretrained image models on your own data.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Kind = Enum("Kind", {kind: kind for kind in KINDS}, type=str)


def config_options(command, extras: dict[str, tuple[type, typer.models.OptionInfo]] | None = None):
    """Give ``command(overrides, config_file, **extras)`` one option per RunConfig field, plus --config.

    The options are generated from RunConfig and its HELP, so `run` and
    `plan` always accept exactly the keys a config file does.
    """
    extras = extras or {}

    def wrapper(**kwargs):
        config_file = kwargs.pop("config")
        extra_values = {name: kwargs.pop(name) for name in extras}
        return command({k: v for k, v in kwargs.items() if v is not None}, config_file, **extra_values)

    parameters, annotations = [], {}
    for name in FIELDS:
        kind = option_kind(name)
        flag = "--" + name.replace("_", "-")
        declared = f"{flag}/--no-{flag[2:]}" if kind is bool else flag
        # lists as "a,b"; a number that also takes words (--lr auto) as text, converted by build_config
        annotation = str if kind is list or FIELDS[name].metadata.get("words") else kind
        option = typer.Option(None, declared, help=HELP[name], show_default=False)
        parameters.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation))
        annotations[name] = annotation
    config_option = typer.Option(
        None, "--config", help="a TOML or YAML (.yaml, .yml) file of these options (underscored keys); flags override it"
    )
    parameters.append(inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=config_option, annotation=Path))
    annotations["config"] = Path
    for name, (annotation, option) in extras.items():
        parameters.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation))
        annotations[name] = annotation
    # the options plugins declare are added to these when the CLI starts (_add_plugin_option_flags); their values
    # join the overrides, which build_config sorts into plugin_options
    declare_option_parameters(wrapper, parameters, annotations)
    wrapper.__name__ = command.__name__
    wrapper.__doc__ = command.__doc__
    # the command's own module (tlcore.commands for lr-find and cv), not this one: what tells a core command of
    # tlcore.cli from one a plugin hook added (tlcore.pytest_plugin's tlcore_cli keeps only this module's)
    wrapper.__module__ = command.__module__
    return wrapper


def resolved_config(overrides: dict, config_file: Path | None):
    """Defaults, then the config file, then the flags."""
    file_values = load_config_file(config_file) if config_file is not None else {}
    return build_config(file_values, overrides)


RESUME_OPTION = typer.Option(None, "--resume", help="continue the interrupted run in this folder, as it was configured")


def run_command(overrides: dict, config_file: Path | None, resume: Path | None = None) -> None:
    """Fine-tune a backbone on a dataset and write the run folder (or --resume one)."""
    from tlcore import train  # imported here so `tlcore list` stays quick

    if resume is not None:
        if overrides or config_file is not None:
            raise ConfigError("--resume continues a run exactly as it was configured; give no other options with it")
        from tlcore.rundir import lock_run_folder, release_run_folder

        if os.environ.get("RANK", "0") == "0":  # at once, before anything is built; under torchrun rank 0 writes
            lock_run_folder(resume)
        try:
            train.resume(resume)
        finally:
            release_run_folder(resume)
        return
    train.fit(resolved_config(overrides, config_file))


app.command("run")(config_options(run_command, {"resume": (Path, RESUME_OPTION)}))


@app.command()
@config_options
def plan(overrides: dict, config_file: Path | None) -> None:
    """Dry run: per layer group and policy phase, what trains, at which rate, with which norm mode."""
    from tlcore.plan import make_plan, render_plan

    typer.echo(render_plan(make_plan(resolved_config(overrides, config_file), get_host())))


@app.command("list")
def list_command(
    kind: Kind = typer.Argument(..., help="what to list"),
    pattern: str = typer.Argument("*", help="fnmatch pattern, e.g. 'torchvision:resnet*'"),
    pretrained: bool = typer.Option(False, "--pretrained", help="backbones with pretrained weights only"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """List registered backbones, datasets, heads, freeze policies or callbacks, with their plugin.

    Backbones show whether the provider has pretrained weights, whether they are on
    this machine, and the local weights a plugin offers (tlcore_pretrained_weights);
    callbacks show which run by default.
    """
    host = get_host()
    want_info = kind.value == "backbones"
    rows = host.catalog(kind.value).listing(pattern, with_info=want_info)
    if want_info:
        for row in rows:
            offered = host.first_result("tlcore_pretrained_weights", backbone=row.name)
            row.info = {**row.info, "local_weights": offered.source if offered is not None else None}
    if pretrained:
        rows = [row for row in rows if row.info.get("pretrained") or row.info.get("local_weights")]
    if as_json:
        typer.echo(json.dumps([row.__dict__ for row in rows], indent=2))
        return
    if not rows:
        typer.echo(f"no {kind.value} match {pattern!r}")
        return
    headers = ["name", "plugin"]
    cells = [[row.name, row.plugin] for row in rows]
    if want_info:
        headers += ["pretrained", "offline", "local weights"]
        for row, cell in zip(rows, cells, strict=True):
            info = row.info
            cell += [_yes(info.get("pretrained")), _yes(info.get("offline")), info.get("local_weights") or "-"]
    if kind.value == "callbacks":
        headers.append("default")
        for row, cell in zip(rows, cells, strict=True):
            cell.append(_yes(row.info.get("default")))
    headers.append("description")
    for row, cell in zip(rows, cells, strict=True):
        cell.append(row.description)
    typer.echo(_table(headers, cells))


def _table(headers: list[str], cells: list[list[str]]) -> str:
    """Left-aligned columns under a header row, two spaces apart; the last column is not padded."""
    widths = [max(len(str(value)) for value in column) for column in zip(headers, *cells, strict=True)]
    lines = []
    for values in [headers, *cells]:
        padded = [f"{value!s:<{width}}" for value, width in zip(values[:-1], widths, strict=False)] + [str(values[-1])]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def _yes(value: object) -> str:
    return "yes" if value else "no"


@app.command()
def plugins(as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """Show every plugin: name, source, distribution, version, hooks, and its errors and warnings if any."""
    host = get_host()
    host.catalogs()  # runs every register hook, so a plugin whose hook raises shows that error below
    records = [record.to_dict() for record in host.records.values()]
    if as_json:
        typer.echo(json.dumps(records, indent=2))
        return
    rows = []
    for record in records:
        dist = f"{record['distribution'] or '-'} {record['version'] or ''}".strip()
        status = f"ERROR: {record['error']}" if record["error"] else ", ".join(record["hooks"]) or "no hooks"
        rows.append((record["name"], record["source"], dist, status, record["warnings"]))
    headers = ("name", "source", "distribution")
    widths = [max(len(header), *(len(row[i]) for row in rows)) for i, header in enumerate(headers)]
    typer.echo(f"{'name':<{widths[0]}}  {'source':<{widths[1]}}  {'distribution':<{widths[2]}}  hooks or error")
    indent = " " * (sum(widths) + 6)
    for name, source, dist, status, warnings in rows:
        # a message is shown whole: continuation lines are indented under the column
        text = status.replace("\n", "\n" + indent)
        typer.echo(f"{name:<{widths[0]}}  {source:<{widths[1]}}  {dist:<{widths[2]}}  {text}")
        for warning in warnings:
            typer.echo(f"{indent}WARNING: {warning}")


@app.command()
def info(backbone: str = typer.Argument(..., help="provider:model")) -> None:
    """Show a backbone's feature width, layer groups, parameters, preprocessing and weight sources."""
    from tlcore.backbone import BackboneOptions
    from tlcore.build import make_backbone, offered_pretrained_weights

    host = get_host()
    catalog = host.catalog("backbones")
    entry = catalog.resolve(backbone)
    built = make_backbone(backbone, host, BackboneOptions(pretrained=False))
    built.validate(plugin=entry.plugin)
    listing = {row.name: row for row in catalog.listing(backbone, with_info=True)}
    row_info = listing[backbone].info if backbone in listing else {}
    offered = offered_pretrained_weights(backbone, host)
    params = dict(built.module.named_parameters())
    typer.echo(f"backbone      {backbone}  (plugin {entry.plugin})")
    typer.echo(f"feature_dim   {built.feature_dim}")
    typer.echo(f"parameters    {sum(p.numel() for p in params.values()):,}")
    pre = built.preprocessing if offered is None or offered.preprocessing is None else offered.preprocessing
    typer.echo(
        f"preprocessing mean {list(pre.mean)} std {list(pre.std)} input {pre.input_size}px "
        f"{pre.interpolation} crop_pct {pre.crop_pct} min {pre.min_size}px"
    )
    typer.echo("weights       none (random init): always")
    typer.echo(
        f"              pretrained from the provider: {_yes(row_info.get('pretrained'))}"
        f" (offline now: {_yes(row_info.get('offline'))})"
    )
    typer.echo(f"              local pretrained (plugin): {offered.source if offered else 'none'}")
    if built.extra:  # provider facts (Backbone.extra), one per line
        for index, (key, value) in enumerate(built.extra.items()):
            typer.echo(f"{'extra' if index == 0 else '':<13} {key}: {value}")
    typer.echo("layer groups")
    typer.echo(f"  {'group':<30} {'parameters':>12}")
    for group in built.layer_groups:
        count = sum(p.numel() for name, p in params.items() if group.owns(name))
        typer.echo(f"  {group.name:<30} {count:>12,}")


_plugin_commands_added = False


def _command_name(command) -> str:
    return command.name or command.callback.__name__.replace("_", "-")


def _add_plugin_commands() -> None:
    """Let plugins add commands (once per process), under the one rule of docs/plugins.md ("Order and conflicts").

    Commands of tlcore itself (this module and the built-in parts) and the bare
    names of tlcore's own plugins cannot be replaced: a plugin trying is warned
    about by name and its command is not installed. Two other plugins claiming
    one name both lose it: the name runs a command that fails naming both.
    """
    global _plugin_commands_added
    if _plugin_commands_added:
        return
    _plugin_commands_added = True
    host = get_host()
    owners = {_command_name(command): "tlcore" for command in app.registered_commands}
    claims: dict[str, list[tuple[str, object]]] = {}
    impls = reversed(host.hook_impls("tlcore_register_commands"))  # registration order: built-ins first
    # first-party parts claim first, whatever their registration order
    for impl in sorted(impls, key=lambda impl: not _first_party(host, impl.plugin_name)):
        before = len(app.registered_commands)
        host.call_impl(impl, app=app)
        added = app.registered_commands[before:]
        del app.registered_commands[before:]
        for command in added:
            name = _command_name(command)
            if name in owners:
                record = host.records.get(impl.plugin_name)
                message = (
                    f"plugin {impl.plugin_name} tried to add command {name!r}, which belongs to {owners[name]}; "
                    f"its command was not installed (prefix plugin commands with the plugin's name, e.g. "
                    f"'{impl.plugin_name}-{name}')"
                )
                if record is not None:
                    record.warn(message)
                else:
                    print(f"tlcore: warning: {message}", file=sys.stderr)
                continue
            if _first_party(host, impl.plugin_name):
                owners[name] = impl.plugin_name
                app.registered_commands.append(command)
            else:  # one plugin adding a name twice keeps its last: only two plugins make a conflict
                claimants = [claim for claim in claims.get(name, []) if claim[0] != impl.plugin_name]
                claims[name] = [*claimants, (impl.plugin_name, command)]
    for name, claimants in claims.items():
        if len(claimants) == 1:
            app.registered_commands.append(claimants[0][1])
            continue
        plugin_names = [plugin for plugin, _ in claimants]
        app.command(name, help=f"CONFLICT: registered by plugins {' and '.join(plugin_names)}", context_settings=_ANY_ARGS)(
            _conflict_command(name, plugin_names)
        )
        for plugin in plugin_names:
            others = " and ".join(other for other in plugin_names if other != plugin)
            record = host.records.get(plugin)
            if record is not None and not any(name in warning for warning in record.warnings):
                record.warnings.append(f"command {name!r} is also registered by plugin {others}; neither is installed")


def _add_plugin_option_flags() -> None:
    """Give every command that takes run options (run, plan, eval, ...) a flag per option the plugins declare.

    Done at every start, for the host of this process (tests swap hosts); see tlcore.plugin_options.
    """
    declared = declared_options(get_host())
    for command in app.registered_commands:
        if hasattr(command.callback, "__tlcore_base__"):
            install_option_flags(command.callback, declared)


_ANY_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def _first_party(host, plugin_name: str) -> bool:
    record = host.records.get(plugin_name)
    return record is not None and record.first_party


def _conflict_command(name: str, plugin_names: list[str]):
    """A command that only says two plugins claim ``name`` (as a catalog conflict does when a name is used)."""

    def conflict() -> None:
        raise NameConflictError(
            f"command {name!r} is registered by several plugins: {' and '.join(plugin_names)}; "
            "disable one with TLCORE_DISABLE_PLUGINS"
        )

    return conflict


def usage_message(error: Exception) -> str:
    """Click's message for a usage error on one line, lower-cased first word, with where to find help.

    ``--epochs abc``, an unknown flag or command, a missing option or argument
    all become ``tlcore: error: <this>`` (exit 2), like every other bad input.
    """
    message = " ".join(error.format_message().split()) or type(error).__name__  # type: ignore[attr-defined]
    message = message[:1].lower() + message[1:] if message[:2] != message[:2].upper() else message
    context = getattr(error, "ctx", None)
    command = context.command_path if context is not None else "tlcore"
    return f"{message.rstrip('.')}; see {command} --help"


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``tlcore`` script and ``python -m tlcore``; ``argv`` defaults to sys.argv."""
    if argv is None:  # the tlcore command itself: the process is ours, so CPU runs may set torch's thread count
        from tlcore import heap
        from tlcore.import_hooks import install
        from tlcore.threads import own_process

        own_process()
        install()  # torchvision without TorchDynamo's import (about 1 s); see tlcore/import_hooks.py
        heap.start_up()  # no full garbage collection until the command's objects are built; see tlcore/heap.py
    _add_plugin_commands()
    try:
        _add_plugin_option_flags()
        # not standalone: click would turn Ctrl-C into "Aborted!" and our errors into tracebacks
        code = app(args=argv, prog_name="tlcore", standalone_mode=False)
    except KeyboardInterrupt:
        print("\ntlcore: interrupted", file=sys.stderr)
        sys.exit(130)
    except RunInterrupted as stopped:
        print(f"tlcore: {one_line(str(stopped))}", file=sys.stderr)
        sys.exit(stopped.exit_code)
    except TlcoreError as error:
        print(f"tlcore: error: {one_line(str(error))}", file=sys.stderr)
        sys.exit(error.exit_code)
    except Exception as error:
        # typer ships its own copy of click in some versions: recognise click's exceptions by name
        names = {cls.__name__ for cls in type(error).__mro__}
        if "Abort" in names:
            print("\ntlcore: interrupted", file=sys.stderr)
            sys.exit(130)
        if "ClickException" in names:  # bad flags, unknown commands: click's message, rephrased as our one line
            print(f"tlcore: error: {one_line(usage_message(error))}", file=sys.stderr)
            sys.exit(2)
        raise
    if code == 130:  # typer turns Ctrl-C during a command into a silent exit 130
        print("\ntlcore: interrupted", file=sys.stderr)
    sys.exit(code if isinstance(code, int) else 0)
