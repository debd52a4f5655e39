"""``tlcore push RUN --repo NAME``: upload a run's weights, model card and configuration to the Hugging Face Hub.

What is uploaded (:func:`files_to_push`): ``best.safetensors`` (or
``last.safetensors`` when the run has no best), ``README.md`` (the model card,
which becomes the repository's card), ``config.json`` and, when present,
``metrics.jsonl`` and ``metrics.csv``. Each is checked first: the weights must
be a tlcore checkpoint whose metadata validates, the card one tlcore wrote.
``--dry-run`` lists them and uploads nothing. config.json is uploaded with
secrets replaced by ``***`` (:func:`redact_record`: a tracker URI with a
password, a token recorded by a plugin option); the file on disk is unchanged. huggingface_hub is imported only
when something is uploaded. Every failure is one line: an unreachable Hub
(no network, a proxy, HF_HUB_OFFLINE), a refusal (no token, no right to the
repository) or a bad run folder or repository name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlcore.errors import ConfigError, TlcoreError, WeightsError
from tlcore.messages import first_line
from tlcore.model_card import CARD_NAME, read_card

WEIGHT_NAMES = ("best.safetensors", "last.safetensors")  # the first present is uploaded
EXTRA_NAMES = ("metrics.jsonl", "metrics.csv")  # uploaded when present
HUB_MODULES = ("huggingface_hub", "httpx", "httpx2", "httpcore", "requests", "urllib3")  # whose errors mean "the Hub"


class HubError(TlcoreError):
    """The Hub could not be reached, or refused the upload."""


@dataclass(frozen=True)
class PushPlan:
    """The files of a run to upload (``files``: paths inside ``run_dir``) and where (``repo``)."""

    run_dir: Path
    repo: str
    files: tuple[Path, ...]
    replaced: dict[str, bytes] = field(default_factory=dict)  # file name -> the bytes uploaded instead (redacted)


def files_to_push(run_dir: str | Path, repo: str) -> PushPlan:
    """Check ``run_dir`` and ``repo`` and list what :func:`push` would upload; nothing touches the network.

    Raises ConfigError for a missing folder, a repository name the Hub
    refuses (``user/name``, letters, digits, ``-_.``) or a folder without a
    tlcore model card or config.json, WeightsError when neither checkpoint is
    a valid tlcore checkpoint.
    """
    run = Path(run_dir).expanduser()
    if not run.is_dir():
        raise ConfigError(f"run folder {run} does not exist; pass a folder `tlcore run` wrote")
    _check_repo(repo)
    weights = next((run / name for name in WEIGHT_NAMES if (run / name).is_file()), None)
    if weights is None:
        raise ConfigError(f"run folder {run} holds no {' or '.join(WEIGHT_NAMES)}; accepted: a folder `tlcore run` wrote")
    _check_checkpoint(weights)
    if read_card(run) is None:
        raise ConfigError(
            f"run folder {run} has no model card ({CARD_NAME} written by tlcore); runs write it after each epoch"
        )
    config = run / "config.json"
    try:
        record = json.loads(config.read_text(encoding="utf-8"))
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ConfigError(f"run folder {run}: config.json is missing or not a JSON object ({first_line(error)})") from None
    cleaned = redact_record(record)
    replaced = {"config.json": (json.dumps(cleaned, indent=2) + "\n").encode()} if cleaned != record else {}
    extras = [run / name for name in EXTRA_NAMES if (run / name).is_file()]
    return PushPlan(run, repo, (weights, run / CARD_NAME, config, *extras), replaced)


SECRET_KEY = re.compile(r"token|secret|password|passwd|api[-_]?key", re.IGNORECASE)
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def redact_record(value: Any) -> Any:
    """A copy of a JSON value with secrets replaced by ``***``: values under keys named like a token, secret,
    password or API key, and the user:password of URLs in any text (a tracking URI recorded in config.json)."""
    if isinstance(value, dict):
        return {
            key: "***" if isinstance(key, str) and SECRET_KEY.search(key) and value[key] else redact_record(value[key])
            for key in value
        }
    if isinstance(value, list):
        return [redact_record(item) for item in value]
    if isinstance(value, str):
        return _USERINFO.sub("***@", value)
    return value


def push(plan: PushPlan, *, private: bool = False, token: str | None = None) -> str:
    """Create ``plan.repo`` (a model repository; kept when it exists) and upload ``plan.files`` in one commit.

    Returns the repository's URL. HubError (one line) when the Hub cannot be
    reached or refuses; ``token`` defaults to huggingface_hub's (HF_TOKEN or
    ``hf auth login``).
    """
    try:
        from huggingface_hub import CommitOperationAdd, HfApi

        api = HfApi(token=token)
        url = api.create_repo(plan.repo, repo_type="model", private=private, exist_ok=True)
        operations = [
            CommitOperationAdd(path_in_repo=path.name, path_or_fileobj=plan.replaced.get(path.name, str(path)))
            for path in plan.files
        ]
        api.create_commit(
            plan.repo,
            operations,
            commit_message=f"Upload {plan.run_dir.name} with tlcore push",
            repo_type="model",
        )
    except Exception as error:
        raise hub_error(error, plan.repo) from error
    return str(url)


def hub_error(error: BaseException, repo: str) -> BaseException:
    """The one-line HubError for a failure of huggingface_hub or its HTTP stack; any other error unchanged."""
    names = {cls.__name__ for cls in type(error).__mro__}
    modules = {cls.__module__.split(".")[0] for cls in type(error).__mro__}
    reason = " ".join(first_line(error).split())
    if "LocalTokenNotFoundError" in names:
        return HubError(f"no Hugging Face token to upload to {repo}: log in with `hf auth login` or set HF_TOKEN")
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int):  # the Hub answered: a refusal, not a network failure
        hint = " (check the token's write access and the repository's owner)" if status in (401, 403) else ""
        return HubError(f"the Hugging Face Hub refused the upload to {repo}: HTTP {status}: {reason}{hint}")
    if "OfflineModeIsEnabled" in names or modules & set(HUB_MODULES) or isinstance(error, OSError):
        return HubError(f"could not reach the Hugging Face Hub: {reason}")
    return error


def _check_repo(repo: str) -> None:
    """The Hub's own rule for repository ids (huggingface_hub's validator, imported only for this check)."""
    if not isinstance(repo, str) or not repo.strip():
        raise ConfigError(f"--repo {repo!r} is not a repository name; accepted: NAME or USER/NAME")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError as error:
        reason = " ".join(first_line(error).split())
        raise ConfigError(f"--repo {repo!r} is not a repository name the Hub accepts: {reason}") from None


def _check_checkpoint(path: Path) -> None:
    """A safetensors file whose tlcore metadata validates (the header only: no tensor is read)."""
    from safetensors import SafetensorError, safe_open

    from tlcore.checkpoint import validate_metadata

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            meta = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsError(f"{path} is not a readable safetensors file: {first_line(error)}") from None
    try:
        record = json.loads(meta.get("tlcore", ""))
    except ValueError:
        record = None
    validate_metadata(record, path)


def render_plan(plan: PushPlan) -> str:
    """What ``--dry-run`` prints: the repository, then each file with its size."""
    lines = [f"would upload to {plan.repo} (nothing sent: --dry-run):"]
    for path in plan.files:
        if path.name in plan.replaced:
            lines.append(f"  {path.name}  {_size(len(plan.replaced[path.name]))}  (secrets replaced by ***)")
        else:
            lines.append(f"  {path.name}  {_size(path.stat().st_size)}")
    return "\n".join(lines)


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count} B"
