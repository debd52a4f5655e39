"""Fuzzing the one decoding function (hypothesis): damaged image files are a DataError, never another exception.

Inputs: random bytes (alone, and behind each format's magic number),
truncations and bit flips of valid JPEG (with EXIF), PNG (RGBA, 16-bit,
palette with tRNS), WebP, TIFF (8-bit and float) and GIF files. Each input
goes through :func:`tlcore.images.decode_image` (the CPU path of training,
eval and predict) and through ``--decode device``'s header check and
:func:`tlcore.device_decode.decode_on` on the CPU (the device path's
decisions, with torchvision's decoder standing in for nvJPEG).

Examples are derandomized; ``TLCORE_FUZZ_SCALE=10`` tries ten times as many
from a random seed. ``pytest -s`` prints the counts (docs/reliability.md
records them).
"""

from __future__ import annotations

import io
import os
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tlcore.device_decode import decode_on
from tlcore.errors import DataError
from tlcore.images import decode_image, read_jpeg_header

# Pillow warns about the damaged TIFF tags it skips; the property is about exceptions, not warnings
pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning", "ignore::DeprecationWarning", "ignore::PIL.Image.DecompressionBombWarning"
)

SCALE = float(os.environ.get("TLCORE_FUZZ_SCALE", "1"))
TRIED: Counter = Counter()
DECODED: Counter = Counter()


def fuzz_settings(examples: int):
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=None,
        derandomize=SCALE == 1,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def _encode(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def _seeds() -> dict[str, bytes]:
    """Small valid files of every format and several modes."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))
    exif = rgb.getexif()
    exif[0x0112] = 6
    palette = rgb.convert("P")
    return {
        "jpeg": _encode(rgb, "JPEG", quality=80, exif=exif.tobytes()),
        "progressive jpeg": _encode(rgb.convert("L"), "JPEG", progressive=True),
        "png rgba": _encode(rgb.convert("RGBA"), "PNG"),
        "png 16-bit": _encode(Image.fromarray(rng.integers(0, 65535, (9, 7), dtype=np.uint16)), "PNG"),
        "png palette trns": _encode(palette, "PNG", transparency=0),
        "webp": _encode(rgb, "WEBP", quality=80),
        "tiff": _encode(rgb, "TIFF"),
        "float tiff": _encode(Image.fromarray(rng.random((6, 5), dtype=np.float32), "F"), "TIFF"),
        "gif": _encode(palette, "GIF"),
    }


SEEDS = _seeds()
MAGICS = [b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"II*\x00", b"MM\x00*", b"GIF89a"]


@pytest.fixture(scope="module", autouse=True)
def _print_counts():
    # a small pixel limit (twice this: 100,000 pixels) keeps every input cheap: a flipped bit in a header's size
    # would otherwise have Pillow allocate and fill a huge image from a few bytes; it also puts the limit to work
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, 50_000
    yield
    Image.MAX_IMAGE_PIXELS = limit
    for target, count in TRIED.items():
        print(f"\nfuzz {target}: {count} inputs tried: {DECODED[target]} decoded, {count - DECODED[target]} DataError")


def check(target: str, data: bytes) -> None:
    """The property: an image (uint8, 3 channels) or a DataError, on the CPU path and on the device path."""
    TRIED[target] += 1
    try:
        image = decode_image(data, "fuzzed")
    except DataError as error:
        assert str(error).startswith("cannot read image fuzzed: ") and "\n" not in str(error)
    else:
        DECODED[target] += 1
        assert image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3
    read_jpeg_header(data)  # never raises: a header, or None
    raw = torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())  # as EncodedFiles reads a file
    (result,) = decode_on(torch.device("cpu"), [raw], ["fuzzed"])
    assert isinstance(result, str) or (result.dtype == torch.uint8 and result.shape[0] == 3)


MUTANTS_PER_SEED = int(200 * SCALE)  # of each kind: 9 seeds x 2 kinds x 200 = 3,600 inputs


def test_seeded_truncations_and_bit_flips():
    # the bulk of the inputs, drawn by a seeded generator (hypothesis's own draws, below, cost more per input)
    rng = np.random.default_rng(None if SCALE != 1 else 0)
    for data in SEEDS.values():
        for _ in range(MUTANTS_PER_SEED):
            check("truncated files", data[: int(rng.integers(0, len(data)))])
            flipped = bytearray(data)
            span = len(data) if rng.random() < 0.5 else min(len(data), 128)  # often in the header, which decides most
            for where in rng.integers(0, span, int(rng.integers(1, 7))):
                flipped[where] ^= 1 << int(rng.integers(0, 8))
            check("bit flips", bytes(flipped))


def test_every_seed_decodes():
    for name, data in SEEDS.items():
        assert decode_image(data, name).shape[0] == 3, name


@fuzz_settings(300)
@given(magic=st.one_of(st.just(b""), st.sampled_from(MAGICS)), body=st.binary(max_size=300))
def test_random_bytes(magic, body):
    check("random bytes", magic + body)


@fuzz_settings(200)
@given(name=st.sampled_from(sorted(SEEDS)), cut=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_files(name, cut):
    data = SEEDS[name]
    check("truncated files", data[: int(len(data) * cut)])


@fuzz_settings(400)
@given(
    name=st.sampled_from(sorted(SEEDS)),
    flips=st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 7)), min_size=1, max_size=6),
    header_only=st.booleans(),
)
def test_bit_flips(name, flips, header_only):
    data = bytearray(SEEDS[name])
    span = min(len(data), 128) if header_only else len(data)  # the header decides most decoder paths
    for where, bit in flips:
        data[int(where * span)] ^= 1 << bit
    check("bit flips", bytes(data))
