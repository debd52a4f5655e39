"""Training throughput on a loaded CPU: how many compute threads to use when other processes share the cores.

    python benchmarks/loaded.py                     # 0 and 1 busy processes, threads 1..cores
    python benchmarks/loaded.py --load 0,1,2 --repeats 5

Starts ``--load`` busy processes (each spins one core in pure Python, like
another job on the machine), then trains a bare ResNet-18 with SGD on random
64 px images for a few steps at every thread count from 1 to the cores,
alternating the thread counts, and prints images/s per (load, threads). The
measurement behind the "loaded machine" paragraph of docs/performance.md:
OpenMP threads that wait for a preempted sibling make a step far slower than
fewer threads would.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time

import torch
from torch import nn


def spin(stop) -> None:
    """A busy process: pure-Python work until told to stop."""
    count = 0
    while not stop.is_set():
        count += 1


def images_per_second(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int) -> float:
    """SGD steps of ``model`` on one batch; images/s over ``steps`` after one untimed step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    criterion = nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        criterion(model(images), labels).backward()
        optimizer.step()

    step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * len(images) / (time.perf_counter() - started)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--load", default="0,1", help="comma-separated numbers of busy processes to measure under")
    parser.add_argument("--threads", help="comma-separated thread counts (default: 1 to the cores)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="alternating measurements per thread count")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Measure and print the table."""
    from torchvision import models

    args = parse_args(argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    counts = [int(t) for t in args.threads.split(",")] if args.threads else list(range(1, cores + 1))
    loads = [int(n) for n in args.load.split(",")]
    torch.manual_seed(0)
    model = models.resnet18(num_classes=10).to(memory_format=torch.channels_last)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size).contiguous(
        memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (args.batch_size,))
    print(f"torch {torch.__version__}, {cores} cores; ResNet-18, {args.image_size} px, batch {args.batch_size}, "
          f"{args.steps} steps x {args.repeats} alternating repeats")
    rows = []
    for load in loads:
        stop = multiprocessing.Event()
        busy = [multiprocessing.Process(target=spin, args=(stop,), daemon=True) for _ in range(load)]
        for process in busy:
            process.start()
        try:
            measured: dict[int, list[float]] = {count: [] for count in counts}
            for repeat in range(args.repeats):
                order = counts if repeat % 2 == 0 else counts[::-1]
                for count in order:
                    torch.set_num_threads(count)
                    measured[count].append(images_per_second(model, images, labels, args.steps))
        finally:
            stop.set()
            for process in busy:
                process.join(timeout=10)
        for count in counts:
            rows.append((load, count, statistics.median(measured[count])))
            print(f"  load {load}, {count} thread(s): {rows[-1][2]:.1f} img/s", flush=True)
    print("\n| busy processes | threads | train img/s |\n|---:|---:|---:|")
    for load, count, speed in rows:
        print(f"| {load} | {count} | {speed:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
