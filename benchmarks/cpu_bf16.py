"""bf16 autocast on the CPU, per architecture family: training throughput and accuracy against float32.

    python benchmarks/cpu_bf16.py                                # every family, 64 px, batch 64
    python benchmarks/cpu_bf16.py --models torchvision:resnet18 --repeats 5
    python benchmarks/cpu_bf16.py --accuracy-seeds 0,1,2 --json bf16.json
    python benchmarks/cpu_bf16.py --smoke                        # tiny sizes: checks that it runs

The measurement behind ``CPU_BF16_FAMILIES`` in tlcore/device.py: a family
belongs there only when bf16 trains it faster here and its val_acc stays within
float32's seed-to-seed spread. Run it on an idle machine.

Throughput: each backbone is built by tlcore's own plugin (no pretrained
weights) with a linear head, in channels-last as tlcore trains on the CPU, and
trains with SGD on random images; float32 and bf16 autocast alternate in one
process, in an order that rotates each repeat, each after its own warm-up
steps. Accuracy: ``tlcore.fit`` on each of ``--accuracy-data`` (the digits, in
memory; ``cifar``: CIFAR-format batch files the benchmark writes, as
benchmarks/speed.py does), ``--epochs`` at ``--accuracy-size`` px, once per
seed in float32 and once in bf16 (the family put in the table for that run
only), and the val_acc of each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

DEFAULT_MODELS = ("torchvision:resnet18", "torchvision:resnet50", "timm:tf_efficientnet_lite0", "timm:convnext_atto",
                  "timm:vit_tiny_patch16_224")
MODES = ("float32", "bf16")


def build(name: str, image_size: int, classes: int = 10) -> nn.Module:
    """The backbone as tlcore builds it (``pretrained=False``), with a linear head, channels-last."""
    from tlcore.backbone import BackboneOptions
    from tlcore.build import call_factory
    from tlcore.plugins import get_host

    entry = get_host().catalog("backbones").resolve(name)
    backbone = call_factory(entry, "backbones", name, BackboneOptions(pretrained=False, image_size=image_size))
    model = nn.Sequential(backbone.module, nn.Linear(backbone.feature_dim, classes))
    return model.to(memory_format=torch.channels_last)


def steps_per_second(model: nn.Module, mode: str, images: torch.Tensor, labels: torch.Tensor, steps: int,
                     warmup: int) -> float:
    """Training images/s over ``steps`` SGD steps (after ``warmup`` untimed ones) in float32 or bf16 autocast."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
            loss = criterion(model(images), labels)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * len(images) / (time.perf_counter() - started)


def throughput(name: str, args: argparse.Namespace) -> dict[str, list[float]]:
    """images/s per mode, one value per repeat, the modes alternating."""
    torch.manual_seed(0)
    model = build(name, args.image_size)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size).contiguous(
        memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (args.batch_size,))
    measured: dict[str, list[float]] = {mode: [] for mode in MODES}
    for repeat in range(args.repeats):
        order = MODES if repeat % 2 == 0 else MODES[::-1]
        for mode in order:
            measured[mode].append(steps_per_second(model, mode, images, labels, args.steps, args.warmup))
    return measured


def cifar_folder(work: Path, images: int) -> Path:
    """CIFAR-10-format python batches of ``images`` generated training images (a fifth as many to validate)."""
    folder = work / f"cifar-{images}"
    if not folder.is_dir():
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import speed

        speed.write_cifar(folder / speed.CIFAR_FOLDER, speed.Data("cifar", images, max(10, images // 5)))
    return folder


def accuracy(name: str, args: argparse.Namespace, work: Path, data: str = "digits") -> dict[str, list[float]]:
    """Final val_acc of ``tlcore.fit`` on ``data`` (digits | cifar) per seed, in float32 and with bf16 autocast."""
    from tlcore import device
    from tlcore.config import build_config
    from tlcore.train import fit

    dataset = {"dataset": "digits"}
    if data == "cifar":
        dataset = {"dataset": "cifar10", "data_dir": str(cifar_folder(work, args.cifar_images)), "download": False}
    results: dict[str, list[float]] = {mode: [] for mode in MODES}
    for seed in args.accuracy_seeds:
        for mode in MODES:
            pattern = device.architecture(name)
            saved = dict(device.CPU_BF16_FAMILIES)
            if mode == "bf16":  # this run only: the family as if it were measured faster
                device.CPU_BF16_FAMILIES[pattern] = "benchmarks/cpu_bf16.py"
            try:
                config = build_config(overrides={
                    "backbone": name, "weights": "none", **dataset, "epochs": args.epochs,
                    "image_size": args.accuracy_size, "batch_size": args.batch_size, "seed": seed, "device": "cpu",
                    "amp": True, "callbacks": ["metrics"], "output": str(work / f"{pattern}-{data}-{mode}-seed{seed}"),
                    **({"optimizer": "sgd", "lr": 0.01, "schedule": "constant", "warmup_epochs": 0}
                       if args.sgd else {}),
                })
                result = fit(config)
            finally:
                device.CPU_BF16_FAMILIES.clear()
                device.CPU_BF16_FAMILIES.update(saved)
            resolved = json.loads((result.output_dir / "config.json").read_text())["resolved"]
            expected = "bfloat16" if mode == "bf16" and device.cpu_has_fast_bf16() else None
            if resolved["amp_dtype"] != expected:
                raise RuntimeError(f"{name} {mode}: the run used {resolved['amp_dtype']}, expected {expected}")
            results[mode].append(result.history[-1]["val_acc"])
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated backbone names")
    parser.add_argument("--image-size", type=int, default=64, help="throughput: training image size")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before each measurement")
    parser.add_argument("--repeats", type=int, default=3, help="alternating measurements per mode")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    parser.add_argument("--accuracy-seeds", default="0,1,2", help="seeds of the digits runs ('' to skip accuracy)")
    parser.add_argument("--epochs", type=int, default=3, help="digits runs: epochs")
    parser.add_argument("--accuracy-size", type=int, default=32, help="digits runs: image size")
    parser.add_argument("--sgd", action="store_true", help="digits runs: SGD 0.01, constant rate (default: tlcore's)")
    parser.add_argument("--accuracy-models", type=int, help="accuracy runs for the first N models only (default: all)")
    parser.add_argument("--accuracy-data", default="digits,cifar", help="comma-separated: digits, cifar")
    parser.add_argument("--cifar-images", type=int, default=2000, help="cifar accuracy runs: generated train images")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that everything runs, measures nothing")
    args = parser.parse_args(argv)
    args.accuracy_seeds = [int(s) for s in args.accuracy_seeds.split(",") if s.strip()]
    args.accuracy_data = [d.strip() for d in args.accuracy_data.split(",") if d.strip()]
    unknown = [d for d in args.accuracy_data if d not in ("digits", "cifar")]
    if unknown:
        parser.error(f"--accuracy-data {unknown[0]!r} is not accepted; accepted: digits, cifar")
    if args.smoke:
        args.image_size, args.batch_size, args.steps, args.warmup, args.repeats = 32, 4, 1, 0, 1
        args.accuracy_seeds, args.epochs, args.accuracy_size = args.accuracy_seeds[:1], 1, 32
        args.accuracy_models = 1  # the accuracy runs take most of the time: check them on the first model only
        args.accuracy_data, args.cifar_images = args.accuracy_data[:1], 40
    return args


def main(argv: list[str] | None = None) -> int:
    """Measure every model, print the table; 2 for an unknown model name."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from tlcore import device
    from tlcore.errors import TlcoreError

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, native bf16 in oneDNN: {device.cpu_has_fast_bf16()}; "
          f"{args.image_size} px, batch {args.batch_size}, {args.steps} steps x {args.repeats} alternating repeats")
    rows = []
    with tempfile.TemporaryDirectory(prefix="tlcore-bf16-") as work:
        for index, name in enumerate(m.strip() for m in args.models.split(",") if m.strip()):
            with_accuracy = args.accuracy_seeds and (args.accuracy_models is None or index < args.accuracy_models)
            try:
                speed = throughput(name, args)
                acc = {data: accuracy(name, args, Path(work), data) for data in args.accuracy_data} if with_accuracy else {}
            except TlcoreError as error:
                print(f"{name}: {error}", file=sys.stderr)
                return 2
            row = {"model": name, "family": device.architecture(name), "images_per_second": speed, "val_acc": acc}
            fp32, bf16 = (statistics.median(speed[mode]) for mode in MODES)
            row["ratio"] = bf16 / fp32
            rows.append(row)
            print(f"  {name}: float32 {fp32:.1f} img/s, bf16 {bf16:.1f} img/s ({row['ratio']:.2f}x); val_acc {acc}",
                  flush=True)
    print("\n| model | float32 img/s | bf16 img/s | bf16/float32 | data | val_acc float32 (seeds) | val_acc bf16 (seeds) |")
    print("|---|---:|---:|---:|---|---|---|")
    for row in rows:
        speed = row["images_per_second"]
        cells = f"| {row['model']} | {statistics.median(speed['float32']):.1f} | " \
                f"{statistics.median(speed['bf16']):.1f} | {row['ratio']:.2f}x |"
        for data, acc in row["val_acc"].items() or [("-", {mode: [] for mode in MODES})]:
            print(f"{cells} {data} | {', '.join(f'{v:.4f}' for v in acc['float32'])} | "
                  f"{', '.join(f'{v:.4f}' for v in acc['bf16'])} |")
    if args.json:
        args.json.write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
