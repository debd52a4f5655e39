"""Training throughput of bare models in the default (contiguous) and the channels-last memory layout.

    python benchmarks/channels_last.py                      # CPU, 64 px, batch 64: ResNet-18, ResNet-50, Lite0
    python benchmarks/channels_last.py --device cuda --image-size 224 --batch-size 256

Measures what ``--channels-last auto`` decides: each model trains a few SGD
steps on random data in both layouts, alternating (the order flips every
repeat), in one process; the first steps of each measurement are not timed.
Prints images/s per layout (the median of the repeats) and their ratio.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import timm
import torch
import torchvision

MODELS = {
    "resnet18": lambda classes: torchvision.models.resnet18(num_classes=classes),
    "resnet50": lambda classes: torchvision.models.resnet50(num_classes=classes),
    "tf_efficientnet_lite0": lambda classes: timm.create_model("tf_efficientnet_lite0", num_classes=classes),
}


def images_per_second(name: str, layout: torch.memory_format, args: argparse.Namespace) -> float:
    """Training images/s of a fresh model over ``args.steps`` timed SGD steps in ``layout``."""
    device = torch.device(args.device)
    model = MODELS[name](10).to(device, memory_format=layout).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    images = images.contiguous(memory_format=layout)
    labels = torch.randint(0, 10, (args.batch_size,), device=device)
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return args.batch_size * args.steps / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    """Measure every model in both layouts and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma list of: {', '.join(MODELS)}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before each measurement")
    parser.add_argument("--repeats", type=int, default=2, help="measurements per layout, alternating")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = [name for name in names if name not in MODELS]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; accepted: {', '.join(MODELS)}")
    torch.manual_seed(0)
    print(f"{args.device}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}; "
          f"torch {torch.__version__}, oneDNN available: {torch.backends.mkldnn.is_available()}; "
          f"{args.image_size} px, batch {args.batch_size}, {args.steps} timed steps, {args.repeats} repeats\n")
    print("| model | contiguous img/s | channels-last img/s | channels-last / contiguous |")
    print("|---|---:|---:|---:|")
    layouts = {"contiguous": torch.contiguous_format, "channels-last": torch.channels_last}
    for name in names:
        measured: dict[str, list[float]] = {label: [] for label in layouts}
        for repeat in range(args.repeats):
            order = list(layouts) if repeat % 2 == 0 else list(reversed(layouts))
            for label in order:
                measured[label].append(images_per_second(name, layouts[label], args))
        plain, last = (statistics.median(measured[label]) for label in layouts)
        print(f"| {name} | {plain:.1f} | {last:.1f} | {last / plain:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
