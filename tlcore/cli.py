"""The ``tlcore`` command line: run, list, info, plugins, and commands added by plugins.

Every failure caused by input prints one line, ``tlcore: error: ...``, and
exits with status 2; no traceback reaches the user.
"""

from __future__ import annotations

import inspect
import json
import sys
from enum import Enum
from pathlib import Path

import typer

from tlcore.config import FIELDS, HELP, build_config, load_config_file, option_kind
from tlcore.errors import ConfigError, TlcoreError
from tlcore.interrupt import RunInterrupted
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
        annotation = str if kind is list else kind
        option = typer.Option(None, declared, help=HELP[name], show_default=False)
        parameters.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation))
        annotations[name] = annotation
    config_option = typer.Option(None, "--config", help="a TOML file of these options (underscored keys); flags override it")
    parameters.append(inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=config_option, annotation=Path))
    annotations["config"] = Path
    for name, (annotation, option) in extras.items():
        parameters.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation))
        annotations[name] = annotation
    wrapper.__signature__ = inspect.Signature(parameters)
    wrapper.__annotations__ = annotations
    wrapper.__name__ = command.__name__
    wrapper.__doc__ = command.__doc__
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
        train.resume(resume)
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
    """List registered backbones, datasets, heads, freeze policies or callbacks, with their plugin."""
    want_info = kind.value == "backbones"
    rows = get_host().catalog(kind.value).listing(pattern, with_info=want_info)
    if pretrained:
        rows = [row for row in rows if row.info.get("pretrained")]
    if as_json:
        typer.echo(json.dumps([row.__dict__ for row in rows], indent=2))
        return
    if not rows:
        typer.echo(f"no {kind.value} match {pattern!r}")
        return
    width = max(len(row.name) for row in rows)
    plugin_width = max(len(row.plugin) for row in rows)
    for row in rows:
        extra = ""
        if want_info and row.info:
            extra = f"  pretrained:{_yes(row.info.get('pretrained'))} offline:{_yes(row.info.get('offline'))}"
        typer.echo(f"{row.name:<{width}}  {row.plugin:<{plugin_width}}{extra}  {row.description}".rstrip())


def _yes(value: object) -> str:
    return "yes" if value else "no"


@app.command()
def plugins(as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """Show every plugin: name, distribution, version, hooks, and its load error if any."""
    records = [record.to_dict() for record in get_host().records.values()]
    if as_json:
        typer.echo(json.dumps(records, indent=2))
        return
    for record in records:
        dist = f"{record['distribution'] or '-'} {record['version'] or ''}".strip()
        status = f"ERROR: {record['error']}" if record["error"] else ", ".join(record["hooks"]) or "no hooks"
        typer.echo(f"{record['name']:<20} {record['source']:<12} {dist:<28} {status}")


@app.command()
def info(backbone: str = typer.Argument(..., help="provider:model")) -> None:
    """Show a backbone's feature width, layer groups, parameters, preprocessing and weight sources."""
    from tlcore.backbone import BackboneOptions
    from tlcore.build import call_factory, offered_pretrained_weights

    host = get_host()
    catalog = host.catalog("backbones")
    entry = catalog.resolve(backbone)
    built = call_factory(entry, "backbones", backbone, BackboneOptions(pretrained=False))
    built.validate()
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
    typer.echo("layer groups")
    for group in built.layer_groups:
        count = sum(p.numel() for name, p in params.items() if group.owns(name))
        typer.echo(f"  {group.name:<30} {count:>12,}")


_plugin_commands_added = False


def _add_plugin_commands() -> None:
    """Let plugins add commands (once per process); a name taken twice keeps the first and warns naming both."""
    global _plugin_commands_added
    if _plugin_commands_added:
        return
    _plugin_commands_added = True
    host = get_host()
    owners = {command.name or command.callback.__name__: "tlcore" for command in app.registered_commands}
    for impl in host.hook_impls("tlcore_register_commands"):
        before = len(app.registered_commands)
        host.call_impl(impl, app=app)
        added = app.registered_commands[before:]
        del app.registered_commands[before:]
        for command in added:
            name = command.name or command.callback.__name__.replace("_", "-")
            if name in owners:
                print(
                    f"tlcore: warning: command {name!r} of plugin {impl.plugin_name} conflicts with "
                    f"plugin {owners[name]}; ignored",
                    file=sys.stderr,
                )
                continue
            owners[name] = impl.plugin_name
            app.registered_commands.append(command)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``tlcore`` script and ``python -m tlcore``; ``argv`` defaults to sys.argv."""
    _add_plugin_commands()
    try:
        # not standalone: click would turn Ctrl-C into "Aborted!" and our errors into tracebacks
        code = app(args=argv, prog_name="tlcore", standalone_mode=False)
    except KeyboardInterrupt:
        print("\ntlcore: interrupted", file=sys.stderr)
        sys.exit(130)
    except RunInterrupted as stopped:
        print(f"tlcore: {stopped}", file=sys.stderr)
        sys.exit(stopped.exit_code)
    except TlcoreError as error:
        print(f"tlcore: error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    except Exception as error:
        # typer ships its own copy of click in some versions: recognise click's exceptions by name
        names = {cls.__name__ for cls in type(error).__mro__}
        if "Abort" in names:
            print("\ntlcore: interrupted", file=sys.stderr)
            sys.exit(130)
        if "ClickException" in names:  # bad flags: click's own short usage message
            error.show()
            sys.exit(error.exit_code)
        raise
    if code == 130:  # typer turns Ctrl-C during a command into a silent exit 130
        print("\ntlcore: interrupted", file=sys.stderr)
    sys.exit(code if isinstance(code, int) else 0)
