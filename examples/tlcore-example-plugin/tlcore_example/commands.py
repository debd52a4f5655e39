"""`tlcore example-stripes DIR`: write the stripes dataset as an image folder."""

from __future__ import annotations

from pathlib import Path

import typer

from tlcore import ConfigError
from tlcore_example.stripes import CLASSES, make_stripes


def stripes_command(
    output: Path = typer.Argument(..., help="folder to create (must be empty or absent)"),
    per_class: int = typer.Option(10, help="images per class and split"),
    seed: int = typer.Option(0, help="random seed"),
) -> None:
    """Write example:stripes as PNG files OUTPUT/{train,val}/<class>/ (for `--dataset imagefolder`)."""
    from PIL import Image

    if per_class < 1:
        raise ConfigError(f"--per-class must be at least 1, got {per_class}")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ConfigError(f"{output} already exists and is not an empty folder; nothing was written")
    images, labels = make_stripes(per_class=2 * per_class, seed=seed)
    seen = {index: 0 for index in range(len(CLASSES))}
    for image, label in zip(images, labels.tolist(), strict=True):
        split = "train" if seen[label] < per_class else "val"
        folder = output / split / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{seen[label]:04d}.png")
        seen[label] += 1
    typer.echo(f"wrote {len(labels)} images of {len(CLASSES)} classes to {output}")
