"""`tlcore push RUN --repo NAME`: the files it uploads, its checks, and its one-line errors; no network is used."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import tlcore
from tlcore.push import HubError, files_to_push, hub_error

TINY = ["--backbone", "tlcore.testing:tiny", "--dataset", "tlcore.testing:shapes", "--weights", "none",
        "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--workers", "0", "--callbacks", "-progress"]


@pytest.fixture
def run_dir(tlcore_cli, tmp_path):
    folder = tmp_path / "run"
    code, _, err = tlcore_cli("run", *TINY, "--output", folder)
    assert code == 0, err
    return folder


def one_error_line(code, err, *fragments):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tlcore: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_dry_run_lists_the_weights_card_and_config(tlcore_cli, run_dir):
    code, out, err = tlcore_cli("push", run_dir, "--repo", "someone/tiny-shapes", "--dry-run")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "would upload to someone/tiny-shapes (nothing sent: --dry-run):"
    assert [line.split()[0] for line in lines[1:]] == ["best.safetensors", "README.md", "config.json", "metrics.jsonl"]
    assert all(line.split()[-1] in ("B", "KiB", "MiB") for line in lines[1:])


def test_the_plan_takes_last_when_there_is_no_best_and_adds_metrics_csv(run_dir):
    (run_dir / "best.safetensors").unlink()
    (run_dir / "metrics.csv").write_text("epoch\n1\n")
    plan = files_to_push(run_dir, "tiny")
    assert [p.name for p in plan.files] == ["last.safetensors", "README.md", "config.json", "metrics.jsonl", "metrics.csv"]


@pytest.mark.parametrize(
    "damage, fragments",
    [
        (lambda d: (d / "README.md").unlink(), ["has no model card (README.md written by tlcore)"]),
        (lambda d: (d / "README.md").write_text("# my own notes\n"), ["has no model card"]),
        (lambda d: (d / "config.json").write_text("[1, 2]"), ["config.json is missing or not a JSON object"]),
        (lambda d: (d / "best.safetensors").write_bytes(b"\x00" * 64), ["best.safetensors is not a readable safetensors"]),
        (lambda d: [(d / n).unlink() for n in ("best.safetensors", "last.safetensors")], ["holds no best.safetensors"]),
    ],
)
def test_a_damaged_run_folder_is_refused_before_any_upload(tlcore_cli, run_dir, damage, fragments):
    damage(run_dir)
    code, _, err = tlcore_cli("push", run_dir, "--repo", "someone/tiny", "--dry-run")
    one_error_line(code, err, *fragments)


def test_a_checkpoint_with_damaged_metadata_is_refused(tlcore_cli, run_dir):
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(run_dir / "best.safetensors"), metadata={"tlcore": json.dumps({"format": "x"})})
    code, _, err = tlcore_cli("push", run_dir, "--repo", "someone/tiny", "--dry-run")
    one_error_line(code, err, "is not a tlcore checkpoint")


@pytest.mark.parametrize("repo", ["bad repo", "a/b/c", "x" * 200, "-leading/dash"])
def test_a_repository_name_the_hub_refuses(tlcore_cli, run_dir, repo):
    code, _, err = tlcore_cli("push", run_dir, "--repo", repo, "--dry-run")
    one_error_line(code, err, "is not a repository name the Hub accepts")


def test_secrets_in_config_json_are_not_uploaded(tlcore_cli, run_dir, fake_hub):
    record = json.loads((run_dir / "config.json").read_text())
    record["config"]["plugin_options"] = {"mlflow_tracking_uri": "https://me:hunter2@mlflow.example/x", "hf_token": "hf_1"}
    original = json.dumps(record)
    (run_dir / "config.json").write_text(original)
    code, out, err = tlcore_cli("push", run_dir, "--repo", "someone/tiny", "--dry-run")
    assert code == 0 and "config.json" in out and "(secrets replaced by ***)" in out
    code, _, err = tlcore_cli("push", run_dir, "--repo", "someone/tiny")
    assert code == 0, err
    uploaded = dict(fake_hub.calls[-1][2])["config.json"]
    assert isinstance(uploaded, bytes) and b"hunter2" not in uploaded and b"hf_1" not in uploaded
    sent = json.loads(uploaded)["config"]["plugin_options"]
    assert sent == {"mlflow_tracking_uri": "https://***@mlflow.example/x", "hf_token": "***"}
    assert (run_dir / "config.json").read_text() == original  # the run folder is unchanged


def test_a_missing_folder(tlcore_cli, tmp_path):
    code, _, err = tlcore_cli("push", tmp_path / "nope", "--repo", "someone/x")
    one_error_line(code, err, "run folder", "does not exist")


class FakeApi:
    """Stands in for huggingface_hub.HfApi: records calls, or raises ``fail`` on create_repo."""

    fail: BaseException | None = None
    calls: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **options):
        if FakeApi.fail is not None:
            raise FakeApi.fail
        FakeApi.calls.append(("create_repo", repo_id, options))
        return f"https://huggingface.co/{repo_id}"

    def create_commit(self, repo_id, operations, **options):
        FakeApi.calls.append(("create_commit", repo_id, [(op.path_in_repo, op.path_or_fileobj) for op in operations]))


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub

    FakeApi.fail, FakeApi.calls = None, []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    return FakeApi


def test_push_uploads_the_listed_files_in_one_commit(tlcore_cli, run_dir, fake_hub):
    code, out, err = tlcore_cli("push", run_dir, "--repo", "someone/tiny", "--private")
    assert code == 0, err
    assert out.strip() == (
        "uploaded best.safetensors, README.md, config.json, metrics.jsonl to https://huggingface.co/someone/tiny"
    )
    (_, repo, options), (_, committed, operations) = fake_hub.calls
    assert repo == committed == "someone/tiny" and options["private"] is True and options["exist_ok"] is True
    assert operations == [(name, str(run_dir / name)) for name in ("best.safetensors", "README.md", "config.json",
                                                                    "metrics.jsonl")]


def connect_error():
    import httpx2

    return httpx2.ConnectError("[Errno -3] Temporary failure in name resolution")


def http_error(status):
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    response = httpx2.Response(status, request=httpx2.Request("POST", "https://huggingface.co/api/repos/create"))
    return HfHubHTTPError(f"{status} Client Error: Forbidden\nmore detail", response=response)


@pytest.mark.parametrize(
    "make_error, fragments",
    [
        (connect_error, ["could not reach the Hugging Face Hub: [Errno -3] Temporary failure in name resolution"]),
        (lambda: ConnectionError("Connection refused"), ["could not reach the Hugging Face Hub: Connection refused"]),
        (lambda: http_error(403), ["the Hugging Face Hub refused the upload to someone/tiny: HTTP 403", "write access"]),
    ],
)
def test_hub_failures_are_one_line(tlcore_cli, run_dir, fake_hub, make_error, fragments):
    fake_hub.fail = make_error()
    code, _, err = tlcore_cli("push", run_dir, "--repo", "someone/tiny")
    one_error_line(code, err, *fragments)


def test_an_unrelated_error_is_not_disguised_as_a_network_failure():
    error = KeyError("bug")
    assert hub_error(error, "r") is error
    assert isinstance(hub_error(TimeoutError("timed out"), "r"), HubError)


def test_offline_mode_is_a_one_line_error(tlcore_cli, run_dir, fake_hub):
    from huggingface_hub.errors import OfflineModeIsEnabled

    fake_hub.fail = OfflineModeIsEnabled("Cannot reach https://huggingface.co: offline mode is enabled.")
    code, _, err = tlcore_cli("push", run_dir, "--repo", "someone/tiny")
    one_error_line(code, err, "could not reach the Hugging Face Hub: Cannot reach https://huggingface.co")


class TakesPush:
    @tlcore.hookimpl
    def tlcore_register_commands(self, app):
        @app.command("push")
        def push() -> None:
            print("the plugin's push")


def test_no_plugin_can_take_the_push_command(tlcore_cli, tlcore_register, run_dir):
    tlcore_register(TakesPush(), "takes-push")
    code, out, err = tlcore_cli("push", run_dir, "--repo", "someone/tiny", "--dry-run")
    assert code == 0 and "the plugin's push" not in out and out.startswith("would upload")
    assert "plugin takes-push tried to add command 'push', which belongs to tlcore" in err


def test_help_imports_no_tracker_hub_or_yaml_library():
    code = (
        "import sys, contextlib, io\n"
        "from tlcore.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n        main(['--help'])\n    except SystemExit:\n        pass\n"
        "print(sorted({n.split('.')[0] for n in sys.modules} & {'mlflow', 'wandb', 'huggingface_hub', 'yaml'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
