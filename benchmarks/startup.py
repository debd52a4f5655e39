"""How long the tlcore commands that do not train take, as whole processes.

    python benchmarks/startup.py                      # 5 alternating runs of each command, medians
    python benchmarks/startup.py --repeats 9 --json startup.json
    python benchmarks/startup.py --importtime imports/ # also keep `python -X importtime` of each command
    python benchmarks/startup.py --smoke              # one run each: checks that every command works

Each command runs as its own process (``python -m tlcore ...``), as a user
types it: interpreter start, imports, plugin loading, the work and exit. The
commands alternate in an order that rotates from one repeat to the next, after
one untimed run of each that fills a shared bytecode cache (as an installed
tlcore has one). Two reference processes bound what is possible: an empty
``python -c pass`` and ``python -c "import torch"``.

``predict`` classifies one JPEG with a checkpoint that the benchmark makes
first (untimed): a one-epoch ``tlcore run`` of ``--backbone`` (torchvision's
ResNet-18, no pretrained weights) on a small generated ImageFolder.

The targets are the issue's (2-core machine): ``tlcore --help`` under 1.5 s,
``tlcore predict`` of one image under 3 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGETS = {"tlcore --help": 1.5, "tlcore predict (1 image)": 3.0}  # seconds, the targets


def make_folder(root: Path, per_class: int = 4, size: tuple[int, int] = (96, 72)) -> Path:
    """A two-class ImageFolder of small JPEG files (train/ and val/), for the checkpoint and the image to predict."""
    from PIL import Image

    for split in ("train", "val"):
        for index, label in enumerate(("ants", "bees")):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for number in range(per_class):
                colour = (40 + 150 * index, 60 + 20 * number, 200 - 150 * index)
                Image.new("RGB", size, colour).save(folder / f"{number}.jpg", quality=90)
    return root


def commands(python: str, backbone: str, data: Path, checkpoint: Path) -> dict[str, list[str]]:
    """Every timed process, by label: the two references, then the tlcore commands."""
    tlcore = [python, "-m", "tlcore"]
    image = next((data / "val" / "ants").glob("*.jpg"))
    return {
        "python -c pass": [python, "-c", "pass"],
        "python -c 'import torch'": [python, "-c", "import torch"],
        "tlcore --help": [*tlcore, "--help"],
        "tlcore plugins": [*tlcore, "plugins"],
        "tlcore list datasets": [*tlcore, "list", "datasets"],
        "tlcore list backbones 'torchvision:*'": [*tlcore, "list", "backbones", "torchvision:*"],
        "tlcore list backbones": [*tlcore, "list", "backbones"],
        f"tlcore info {backbone}": [*tlcore, "info", backbone],
        "tlcore plan": [*tlcore, "plan", "--backbone", backbone, "--weights", "none", "--dataset", "imagefolder",
                        "--data-dir", str(data)],
        "tlcore predict (1 image)": [*tlcore, "predict", str(image), "--checkpoint", str(checkpoint), "--device", "cpu"],
    }


def child_environment(work: Path, keep_bytecode_setting: bool) -> dict[str, str]:
    """The processes' environment: a .pyc cache of their own in the work folder (unless asked to keep the setting)."""
    env = dict(os.environ)
    if not keep_bytecode_setting:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    return env


def run_once(argv: list[str], env: dict[str, str], importtime: Path | None = None) -> float:
    """Seconds for one whole process; raises RuntimeError with its output when it fails."""
    if importtime is not None:
        argv = [argv[0], "-X", "importtime", *argv[1:]]
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        tail = "\n    ".join((done.stdout + done.stderr).strip().splitlines()[-10:])
        raise RuntimeError(f"{' '.join(argv)} exited with {done.returncode}:\n    {tail}")
    if importtime is not None:
        importtime.write_text(done.stderr)
    return seconds


def heaviest_imports(report: str, count: int = 8) -> list[tuple[str, float]]:
    """The top-level modules of an ``-X importtime`` report with the largest cumulative time, in seconds."""
    rows = []
    for line in report.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (part for part in line.split("|"))
        if cumulative.strip().isdigit() and len(name) - len(name.lstrip(" ")) <= 1:  # depth 0: imported directly
            rows.append((name.strip(), int(cumulative) / 1e6))
    return sorted(rows, key=lambda row: -row[1])[:count]


def make_checkpoint(python: str, backbone: str, data: Path, run_dir: Path, env: dict[str, str]) -> Path:
    """One short training run (untimed) whose best.safetensors the predict command uses."""
    argv = [python, "-m", "tlcore", "run", "--backbone", backbone, "--weights", "none", "--dataset", "imagefolder",
            "--data-dir", str(data), "--epochs", "1", "--image-size", "32", "--batch-size", "8", "--device", "cpu",
            "--callbacks", "checkpoint", "--output", str(run_dir)]
    run_once(argv, env)
    checkpoint = run_dir / "best.safetensors"
    if not checkpoint.is_file():
        raise RuntimeError(f"the training run wrote no {checkpoint}")
    return checkpoint


def table(rows: list[dict]) -> str:
    """Markdown: per command the median and the fastest run, and the target where the issue sets one."""
    lines = ["| command | median s | min s | runs | target |", "|---|---:|---:|---:|---|"]
    for row in rows:
        target = TARGETS.get(row["command"])
        verdict = "" if target is None else f"< {target} s: {'met' if row['median'] < target else 'NOT met'}"
        lines.append(f"| `{row['command']}` | {row['median']:.2f} | {row['min']:.2f} | {len(row['seconds'])} | {verdict} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each command, alternating (default 5)")
    parser.add_argument("--backbone", default="torchvision:resnet18", help="for info, plan and the predict checkpoint")
    parser.add_argument("--python", default=sys.executable, help="the interpreter whose tlcore is measured")
    parser.add_argument("--only", help="comma-separated labels (or parts of them) of the commands to time")
    parser.add_argument("--importtime", type=Path, help="write each command's `-X importtime` report into this folder")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    parser.add_argument("--work-dir", type=Path, help="data, checkpoint and bytecode cache (default: a temporary folder)")
    parser.add_argument("--no-bytecode-cache", action="store_true", help="leave PYTHONDONTWRITEBYTECODE as it is")
    parser.add_argument("--smoke", action="store_true", help="one timed run each, no warm-up: checks that all run")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.smoke:
        args.repeats = 1
    return args


def main(argv: list[str] | None = None) -> int:
    """Time the commands and print the table; 1 when a command failed."""
    args = parse_args(argv)
    temporary = args.work_dir is None
    work = Path(tempfile.mkdtemp(prefix="tlcore-startup-")) if temporary else args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = child_environment(work, args.no_bytecode_cache)
    try:
        data = make_folder(work / "data")
        checkpoint = work / "run" / "best.safetensors"
        chosen = commands(args.python, args.backbone, data, checkpoint)
        if args.only:
            wanted = [part.strip() for part in args.only.split(",") if part.strip()]
            chosen = {label: argv for label, argv in chosen.items() if any(part in label for part in wanted)}
            if not chosen:
                print(f"no command matches --only {args.only!r}", file=sys.stderr)
                return 2
        if any(str(checkpoint) in argv for argv in chosen.values()):  # predict is timed: train its checkpoint first
            shutil.rmtree(work / "run", ignore_errors=True)
            make_checkpoint(args.python, args.backbone, data, work / "run", env)
        print(f"python {args.python}; {os.cpu_count()} cores; bytecode "
              f"{'as the environment has it' if args.no_bytecode_cache else 'cached in ' + env['PYTHONPYCACHEPREFIX']}")
        for label, command in chosen.items():
            print(f"  {label}: {' '.join(command)}")
        if not args.smoke:  # untimed: fills the bytecode and file caches
            for command in chosen.values():
                run_once(command, env)
        seconds: dict[str, list[float]] = {label: [] for label in chosen}
        labels = list(chosen)
        for repeat in range(args.repeats):
            shift = repeat % len(labels)
            for label in labels[shift:] + labels[:shift]:
                seconds[label].append(run_once(chosen[label], env))
        if args.importtime is not None:
            args.importtime.mkdir(parents=True, exist_ok=True)
            for index, (label, command) in enumerate(chosen.items()):
                report = args.importtime / f"{index:02d}-{label.split()[1] if ' ' in label else label}.txt"
                run_once(command, env, report)
                heavy = ", ".join(f"{name} {secs:.2f}s" for name, secs in heaviest_imports(report.read_text()))
                print(f"  imports of {label}: {heavy}")
    except RuntimeError as error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 1
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)
    rows = [{"command": label, "median": statistics.median(values), "min": min(values), "seconds": values}
            for label, values in seconds.items()]
    print(f"\nmedians of {args.repeats} alternating run(s) per command, whole processes\n")
    print(table(rows), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"repeats": args.repeats, "cores": os.cpu_count(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
