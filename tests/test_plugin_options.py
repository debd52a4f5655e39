"""Options plugins declare (tlcore_register_options): flags, config keys, checks, the dataset factory, the records."""

from __future__ import annotations

import json

import pytest

import tlcore
from tlcore import ConfigError, NameConflictError
from tlcore.config import build_config, load_config_file
from tlcore.plugin_options import declared_options
from tlcore.testing import TINY_BACKBONE, shapes_dataset


class LevelPlugin:
    """A dataset whose factory records the options it was handed, and the options it declares."""

    def __init__(self):
        self.seen: list[dict] = []

    @tlcore.hookimpl
    def tlcore_register_datasets(self, register):
        def build(name, options):
            self.seen.append(dict(options.extra))
            return shapes_dataset(num_per_class=6, size=16, seed=options.seed)

        register("levels:shapes", build, description="shapes, recording its options")

    @tlcore.hookimpl
    def tlcore_register_options(self, register):
        register("level_count", default=1, at_least=0, at_most=9, help="levels: how many levels")
        register("level_name", kind=str, choices=("low", "high"), help="levels: which level")
        register("level_fast", default=False, help="levels: go fast")


class Clash:
    """Declares an option LevelPlugin declares too."""

    @tlcore.hookimpl
    def tlcore_register_options(self, register):
        register("level_count", default=2, help="clash: the same name")


@pytest.fixture
def levels(host):
    plugin = LevelPlugin()
    host.register(plugin, "levels")
    return plugin


def run_cli(cli_runner, *args):
    return cli_runner(*[str(arg) for arg in args])


def one_line(result, *fragments):
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert result.code == 2 and len(lines) == 1 and lines[0].startswith("tlcore: error: "), result
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def tiny_run_args(tmp_path, *extra):
    return [
        "run", "--backbone", TINY_BACKBONE, "--dataset", "levels:shapes", "--weights", "none", "--epochs", "1",
        "--batch-size", "8", "--device", "cpu", "--workers", "0", "--callbacks", "-progress",
        "--output", tmp_path / "run", *extra,
    ]


def test_declared_options_get_defaults_and_are_checked(levels):
    config = build_config(overrides={"dataset": "levels:shapes"})
    assert config.plugin_options == {"level_count": 1, "level_fast": False, "level_name": None}
    config = build_config({"level_count": 3}, {"level_name": "high", "level_count": 4})  # flags over the file
    assert config.plugin_options["level_count"] == 4 and config.plugin_options["level_name"] == "high"
    with pytest.raises(ConfigError, match="level_count must be at most 9, got 12"):
        build_config(overrides={"level_count": 12})
    with pytest.raises(ConfigError, match="level_name 'mid' is not accepted; accepted: low, high"):
        build_config(overrides={"level_name": "mid"})
    with pytest.raises(ConfigError, match="option level_count must be an integer, got 'x'"):
        build_config({"level_count": "x"})
    with pytest.raises(ConfigError, match="unknown config key 'level_cont'; did you mean level_count"):
        build_config({"level_cont": 2})


def test_the_flags_reach_the_factory_config_json_and_the_checkpoint(levels, tlcore_cli, tmp_path):
    result = run_cli(tlcore_cli, *tiny_run_args(tmp_path, "--level-count", "3", "--level-name", "low", "--level-fast"))
    assert result.code == 0, result.err
    assert levels.seen[-1] == {"level_count": 3, "level_fast": True, "level_name": "low"}
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["config"]["plugin_options"]
    assert recorded == {"level_count": 3, "level_fast": True, "level_name": "low"}
    checkpoint = tlcore.load_checkpoint(tmp_path / "run" / "best.safetensors", "cpu")
    assert checkpoint.info.data["options"] == recorded
    # eval rebuilds the data with the recorded options; a flag given to eval wins
    levels.seen.clear()
    result = run_cli(tlcore_cli, "eval", "--checkpoint", tmp_path / "run", "--device", "cpu")
    assert result.code == 0, result.err
    assert levels.seen[-1]["level_count"] == 3 and levels.seen[-1]["level_name"] == "low"
    result = run_cli(tlcore_cli, "eval", "--checkpoint", tmp_path / "run", "--device", "cpu", "--level-count", "5")
    assert result.code == 0, result.err
    assert levels.seen[-1]["level_count"] == 5 and levels.seen[-1]["level_fast"] is True


class LogUri:
    """A tracker-like plugin declaring a URI option (which may carry a password)."""

    @tlcore.hookimpl
    def tlcore_register_options(self, register):
        register("level_log_uri", kind=str, help="levels: where a tracker would log")


def test_a_checkpoint_never_records_a_url_password_given_as_an_option(levels, host, tlcore_cli, tmp_path):
    host.register(LogUri(), "loguri")
    secret = "https://user:hunter2@tracker.example/api"
    result = run_cli(tlcore_cli, *tiny_run_args(tmp_path, "--level-log-uri", secret))
    assert result.code == 0, result.err
    assert levels.seen[-1]["level_log_uri"] == secret  # the plugin gets what was given
    checkpoint = tlcore.load_checkpoint(tmp_path / "run" / "best.safetensors", "cpu")
    assert checkpoint.info.data["options"]["level_log_uri"] == "https://***@tracker.example/api"
    assert b"hunter2" not in (tmp_path / "run" / "best.safetensors").read_bytes()


def test_a_config_file_holds_them_and_bad_values_are_one_line(levels, tlcore_cli, tmp_path):
    config_file = tmp_path / "run.toml"
    config_file.write_text('level_count = 2\nlevel_name = "high"\n', encoding="utf-8")
    assert load_config_file(config_file)["level_count"] == 2
    result = run_cli(tlcore_cli, *tiny_run_args(tmp_path, "--config", config_file))
    assert result.code == 0, result.err
    assert levels.seen[-1]["level_count"] == 2 and levels.seen[-1]["level_name"] == "high"
    one_line(run_cli(tlcore_cli, *tiny_run_args(tmp_path, "--level-count", "-1")), "level_count must be at least 0")
    one_line(run_cli(tlcore_cli, *tiny_run_args(tmp_path, "--level-count", "many")), "'--level-count'")
    config_file.write_text('level_count = "two"\n', encoding="utf-8")
    one_line(run_cli(tlcore_cli, *tiny_run_args(tmp_path, "--config", config_file)), "level_count must be an integer")


def test_the_flags_show_in_help_with_the_plugin_name(levels, tlcore_cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps help text to the terminal's width
    for command in ("run", "plan", "eval"):
        result = run_cli(tlcore_cli, command, "--help")
        assert result.code == 0 and "--level-count" in result.out, command
        assert "levels: how many levels (default 1; plugin levels)" in result.out, command


def test_two_plugins_declaring_one_option_is_an_error_naming_both(levels, host, tlcore_cli, tmp_path):
    host.register(Clash(), "clash")
    with pytest.raises(NameConflictError, match="option 'level_count' is declared by several plugins: levels and clash"):
        build_config(overrides={})
    one_line(run_cli(tlcore_cli, *tiny_run_args(tmp_path)), "levels and clash")
    assert run_cli(tlcore_cli, "list", "datasets").code == 0  # the conflict can still be looked at


def test_a_plugin_cannot_declare_a_run_option_or_a_bad_one(host, capsys):
    class Bad:
        @tlcore.hookimpl
        def tlcore_register_options(self, register):
            register("epochs", default=3, help="taken")

    class Untyped:
        @tlcore.hookimpl
        def tlcore_register_options(self, register):
            register("untyped_thing", help="no default, no kind")

    host.register(Bad(), "bad")
    host.register(Untyped(), "untyped")
    assert declared_options(host).options == {}
    assert "the name belongs to tlcore" in host.records["bad"].error
    assert "default None needs kind=" in host.records["untyped"].error


def test_options_recorded_by_a_plugin_no_longer_installed_are_dropped(levels):
    config = build_config(overrides={"plugin_options": {"level_count": 4, "gone_option": "x"}})
    assert config.plugin_options["level_count"] == 4 and "gone_option" not in config.plugin_options
    with pytest.raises(ConfigError, match=r"option level_count \(as recorded\) must be an integer"):
        build_config(overrides={"plugin_options": {"level_count": "4"}})


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ([1, 2], "data.options must be an object"),
        ({"Bad-Key": 1}, "data.options has a key that is no option name"),
        ({"level_count": {"nested": 1}}, "data.options.level_count must be text, a number"),
        ({"level_name": "x" * 5000}, "data.options.level_name must be text, a number"),
    ],
)
def test_a_checkpoint_with_damaged_options_is_refused(tmp_path, options, fragment):
    from safetensors.torch import save

    from tlcore.checkpoint import read_checkpoint
    from tlcore.errors import WeightsError

    from .test_checkpoint_metadata import good_record, tensors

    record = good_record()
    record["data"]["options"] = options
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(save(tensors(), metadata={"tlcore": json.dumps(record)}))
    with pytest.raises(WeightsError, match=fragment):
        read_checkpoint(path)


def test_fit_with_its_own_host_takes_that_hosts_options(host, tmp_path):
    from tlcore.plugins import PluginHost
    from tlcore.testing import TINY_PLUGIN, TinyPlugin

    own = PluginHost(load_installed=False)  # not the process-wide host, which declares no level options
    own.register(TinyPlugin(), TINY_PLUGIN)
    plugin = LevelPlugin()
    own.register(plugin, "levels")
    result = tlcore.fit(
        host=own, backbone=TINY_BACKBONE, dataset="levels:shapes", weights="none", epochs=1, batch_size=8,
        device="cpu", workers=0, callbacks="-progress", output=str(tmp_path / "run"), level_count=7,
    )
    assert plugin.seen[-1]["level_count"] == 7 and result.config.plugin_options["level_count"] == 7
