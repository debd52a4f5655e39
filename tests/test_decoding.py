"""One decoding function for every path: what an image viewer shows, in training, eval, predict and --decode device.

Every image here is written to disk in its real format (JPEG with EXIF, 16-bit
PNG, PNG with tRNS, float TIFF, ...) and read back through the same functions
the pipelines use.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from PIL import Image

from tlcore.data import TransformedDataset, to_rgb
from tlcore.device_decode import decode_on
from tlcore.errors import DataError
from tlcore.images import (
    BACKGROUND,
    check_pixels,
    decode_image,
    max_pixels,
    open_image,
    orient,
    read_jpeg_header,
)
from tlcore.inference import open_image as open_image_for_predict


def picture(height: int = 20, width: int = 28) -> np.ndarray:
    """An RGB picture that is not symmetric in any way: a bright top-left block and a colour ramp."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, :, 0] = np.linspace(0, 250, width, dtype=np.uint8)[None, :]
    pixels[:, :, 1] = np.linspace(0, 200, height, dtype=np.uint8)[:, None]
    pixels[: height // 2, : width // 3, 2] = 255
    return pixels


def decoded(path) -> torch.Tensor:
    """An image file as training, eval and predict see it (opened, then converted by the core); the one function
    of tlcore.images gives the same."""
    seen = to_rgb(open_image_for_predict(path))
    assert torch.equal(seen, decode_image(path))
    return seen


def save_sideways(path, pixels: np.ndarray, orientation: int = 6, **options) -> None:
    """Store ``pixels`` as a camera does when held sideways: the stored raster turned, EXIF saying how to undo it."""
    undo = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270, 3: Image.Transpose.ROTATE_180}[orientation]
    stored = Image.fromarray(pixels).transpose(undo)  # viewing applies the opposite turn
    exif = stored.getexif()
    exif[0x0112] = orientation
    stored.save(path, exif=exif.tobytes(), **options)


# -- EXIF orientation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(tmp_path, orientation):
    pixels = picture()
    save_sideways(tmp_path / "side.png", pixels, orientation)
    seen = decoded(tmp_path / "side.png")
    assert torch.equal(seen, torch.from_numpy(pixels).permute(2, 0, 1))  # lossless: exactly the upright picture


def test_a_sideways_phone_photo_trains_and_predicts_upright(run, host, tmp_path):
    from tlcore.inference import load_checkpoint

    pixels = picture()
    Image.fromarray(pixels).save(tmp_path / "upright.jpg", quality=95)
    save_sideways(tmp_path / "phone.jpg", pixels, 6, quality=95)
    upright, phone = decoded(tmp_path / "upright.jpg"), decoded(tmp_path / "phone.jpg")
    assert phone.shape == upright.shape == (3, 20, 28)
    assert (phone.float() - upright.float()).abs().mean() < 3  # two JPEG encodings of the same picture
    # training: the dataset's PIL image, converted by the core
    item = TransformedDataset([(open_image(tmp_path / "phone.jpg"), 0)], lambda image: image)[0][0]
    assert torch.equal(item, phone)
    # predict: scored like the upright one
    predictor = load_checkpoint(run.output_dir, device="cpu", host=host)
    first, second = predictor.predict([tmp_path / "upright.jpg", tmp_path / "phone.jpg"], top_k=2)
    assert first.labels == second.labels
    assert second.probabilities == pytest.approx(first.probabilities, abs=0.02)


@pytest.fixture
def run(host, tiny_config):
    from tlcore.train import fit

    return fit(tiny_config(epochs=1, callbacks="-progress"), host)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_turns_a_tensor_as_pil_does(orientation):
    from tlcore.images import _TRANSPOSES

    pixels = picture(5, 7)
    image = Image.fromarray(pixels)
    expected = image.transpose(_TRANSPOSES[orientation]) if orientation != 1 else image
    got = orient(torch.from_numpy(pixels).permute(2, 0, 1), orientation)
    assert torch.equal(got, torch.from_numpy(np.array(expected)).permute(2, 0, 1))


def test_device_decoding_applies_the_orientation_and_reads_the_header(tmp_path):
    pixels = picture(32, 48)
    Image.fromarray(pixels).save(tmp_path / "upright.jpg", quality=95)
    save_sideways(tmp_path / "phone.jpg", pixels, 6, quality=95)
    data = [
        torch.frombuffer(bytearray((tmp_path / n).read_bytes()), dtype=torch.uint8) for n in ("upright.jpg", "phone.jpg")
    ]
    header = read_jpeg_header(data[1].numpy())
    assert header is not None and (header.width, header.height, header.orientation) == (32, 48, 6)
    upright, phone = decode_on(torch.device("cpu"), data, ["upright.jpg", "phone.jpg"])
    assert phone.shape == upright.shape == (3, 32, 48)
    assert (phone.float() - decoded(tmp_path / "phone.jpg").float()).abs().mean() < 1.0  # CPU and device agree


# -- bit depth ----------------------------------------------------------------------------------------


def save_16bit(path, values: np.ndarray) -> None:
    Image.fromarray(values.astype(np.uint16)).save(path)  # a 16-bit greyscale PNG (mode I;16)


def test_a_flat_16bit_image_of_value_1000_is_dark(tmp_path):
    save_16bit(tmp_path / "flat.png", np.full((6, 5), 1000))
    with Image.open(tmp_path / "flat.png") as image:
        assert image.mode == "I;16"  # the real on-disk format
    seen = decoded(tmp_path / "flat.png")
    assert seen.unique().tolist() == [4]  # 1000 / 257, not stretched to white


def test_16bit_exposure_classes_stay_apart(tmp_path):
    # the same scene at two exposures: stretching each image to its own range made them identical
    scene = np.random.default_rng(0).uniform(0.2, 1.0, (12, 12))
    dim, bright = [], []
    for index in range(4):
        shifted = np.roll(scene, index, axis=1)
        save_16bit(tmp_path / f"dim{index}.png", shifted * 8000)
        save_16bit(tmp_path / f"bright{index}.png", shifted * 40000)
        dim.append(decoded(tmp_path / f"dim{index}.png").float().mean())
        bright.append(decoded(tmp_path / f"bright{index}.png").float().mean())
    assert max(dim) * 3 < min(bright)
    assert max(bright) < 160  # 40000 at most: 156, by bit depth


@pytest.mark.parametrize(
    ("mode", "values", "expected"),
    [
        ("I", np.full((3, 4), 1000, dtype=np.int32), 4),
        ("I", np.full((3, 4), 70000, dtype=np.int32), 255),  # beyond 16 bits: clipped
        ("I", np.full((3, 4), -5, dtype=np.int32), 0),
        ("F", np.full((3, 4), 0.5, dtype=np.float32), 128),
        ("F", np.full((3, 4), 7.0, dtype=np.float32), 255),
        ("F", np.full((3, 4), np.nan, dtype=np.float32), 0),
    ],
)
def test_integer_and_float_images_follow_the_documented_rule(tmp_path, mode, values, expected):
    Image.fromarray(values, mode=mode).save(tmp_path / "image.tif")
    with Image.open(tmp_path / "image.tif") as image:
        assert image.mode == mode
    assert decoded(tmp_path / "image.tif").unique().tolist() == [expected]


# -- transparency -------------------------------------------------------------------------------------


def test_rgba_is_composited_on_white(tmp_path):
    pixels = np.zeros((2, 3, 4), dtype=np.uint8)
    pixels[..., 0] = 200  # red everywhere
    pixels[0, :, 3] = 0  # top row fully transparent
    pixels[1, :, 3] = 128  # bottom row half
    Image.fromarray(pixels, "RGBA").save(tmp_path / "rgba.png")
    seen = decoded(tmp_path / "rgba.png")
    assert seen[:, 0].unique().tolist() == [255]  # the background, not the hidden red
    half = seen[:, 1, 0].tolist()
    assert half == [round((200 * 128 + 255 * 127) / 255), round(255 * 127 / 255), round(255 * 127 / 255)]


def test_grey_with_alpha_is_composited(tmp_path):
    Image.fromarray(np.stack([np.full((2, 2), 10, np.uint8), np.zeros((2, 2), np.uint8)], axis=2), "LA").save(
        tmp_path / "la.png"
    )
    assert decoded(tmp_path / "la.png").unique().tolist() == [255]


def test_palette_with_a_transparent_entry_is_composited(tmp_path):
    image = Image.new("P", (3, 2), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 - 2) * 3)
    image.putpixel((0, 0), 1)  # red, opaque; everything else entry 0: black, transparent
    image.save(tmp_path / "p.png", transparency=0)
    with Image.open(tmp_path / "p.png") as reread:
        assert reread.mode == "P" and reread.info.get("transparency") == 0  # a tRNS chunk
    seen = decoded(tmp_path / "p.png")
    assert seen[:, 0, 0].tolist() == [255, 0, 0]
    assert seen[:, 1, 1].tolist() == list(BACKGROUND)


def test_four_channel_tensors_are_composited_the_same_way():
    rgba = torch.tensor([200, 0, 0, 0], dtype=torch.uint8).view(4, 1, 1)
    assert to_rgb(rgba).view(-1).tolist() == list(BACKGROUND)
    assert to_rgb(rgba.float() / 255).view(-1).tolist() == [1.0, 1.0, 1.0]


# -- every other kind of file keeps working -----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("grey.png", lambda: Image.fromarray(picture()[:, :, 0], "L")),
        ("cmyk.jpg", lambda: Image.fromarray(picture()).convert("CMYK")),
        ("palette.gif", lambda: Image.fromarray(picture()).convert("P")),
        ("one.png", lambda: Image.new("RGB", (1, 1), (9, 8, 7))),
        ("lossless.webp", lambda: Image.fromarray(picture())),
        ("image.tiff", lambda: Image.fromarray(picture())),
        ("float.tiff", lambda: Image.fromarray(picture()[:, :, 1].astype(np.float32) / 255, "F")),
        ("bilevel.png", lambda: Image.fromarray(picture()[:, :, 0]).convert("1")),
    ],
)
def test_other_modes_and_formats_keep_working(tmp_path, name, make):
    image = make()
    image.save(tmp_path / name, **({"lossless": True} if name.endswith(".webp") else {}))
    seen = decoded(tmp_path / name)
    assert seen.dtype == torch.uint8 and seen.shape == (3, image.height, image.width)
    if name in ("lossless.webp", "image.tiff"):
        assert torch.equal(seen, torch.from_numpy(picture()).permute(2, 0, 1))
    if name == "float.tiff":
        assert torch.equal(seen[0], torch.from_numpy(picture()[:, :, 1]))  # v / 255 * 255: the same values
    if name == "one.png":
        assert seen.view(-1).tolist() == [9, 8, 7]


# -- failures: one DataError naming the file ----------------------------------------------------------


def halved_idat_png(path) -> None:
    """A PNG whose IDAT length field (bytes 33-36) says half its real length: Pillow raises SyntaxError."""
    Image.fromarray(picture()).save(path)
    data = bytearray(path.read_bytes())
    assert data[37:41] == b"IDAT"
    (length,) = struct.unpack(">I", data[33:37])
    data[33:37] = struct.pack(">I", length // 2)
    path.write_bytes(bytes(data))


def test_a_corrupt_png_chunk_is_a_data_error_naming_the_file(tmp_path):
    halved_idat_png(tmp_path / "chunk.png")
    with pytest.raises(SyntaxError):  # what Pillow raises: not an OSError
        with Image.open(tmp_path / "chunk.png") as image:
            image.load()
    with pytest.raises(DataError, match=r"cannot read image \S*chunk\.png: broken PNG file"):
        decode_image(tmp_path / "chunk.png")


def test_a_lazily_opened_image_fails_as_a_data_error(tmp_path):
    halved_idat_png(tmp_path / "chunk.png")
    with Image.open(tmp_path / "chunk.png") as lazy:  # as a third-party dataset may hand it over
        with pytest.raises(DataError, match=r"chunk\.png"):
            to_rgb(lazy)


def test_decompression_bombs_are_refused_on_every_path(tmp_path, monkeypatch):
    Image.fromarray(picture(40, 40)).save(tmp_path / "big.jpg")
    Image.fromarray(picture(40, 40)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # the limit is twice this: 1000 pixels
    assert max_pixels() == 1000
    for name in ("big.jpg", "big.png"):
        with pytest.raises(DataError, match=rf"{name}: .*more than the limit of 1,000 \(a decompression bomb\?\)"):
            decode_image(tmp_path / name)
    raw = [torch.frombuffer(bytearray((tmp_path / n).read_bytes()), dtype=torch.uint8) for n in ("big.jpg", "big.png")]
    reasons = decode_on(torch.device("cpu"), raw, ["big.jpg", "big.png"])
    assert reasons[0].endswith(
        "big.jpg: 40x40 is 1,600 pixels, more than the limit of 1,000 (a decompression bomb?); "
        "raise PIL.Image.MAX_IMAGE_PIXELS to allow it"
    )  # from the header, before decoding
    assert "big.png: " in reasons[1] and "more than the limit of 1,000" in reasons[1]
    check_pixels(20, 50, "fits")  # at the limit: accepted


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],  # truncated: no end marker
        lambda data: data[:2] + b"\xff\xc0\x00\x02" + data[2:],  # a frame segment too short to hold a frame
        lambda data: data[:4] + b"\xff\xff" + data[6:],  # the first segment's length beyond the file
    ],
)
def test_unsound_jpegs_never_reach_the_device_decoder(tmp_path, damage, monkeypatch):
    Image.fromarray(picture()).save(tmp_path / "good.jpg")
    bad = damage((tmp_path / "good.jpg").read_bytes())
    assert read_jpeg_header(bytearray(bad)) is None
    handed = []
    monkeypatch.setattr("tlcore.device_decode.decode_jpeg", lambda files, **kw: handed.extend(files) or [])
    result = decode_on(torch.device("cpu"), [torch.frombuffer(bytearray(bad), dtype=torch.uint8)], ["bad.jpg"])
    assert not handed  # the CPU decoder had it, and says why it could not
    assert isinstance(result[0], (str, torch.Tensor))


def test_special_files_are_never_opened(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe.jpg")  # opening it for reading would block forever
    with pytest.raises(DataError, match=r"pipe\.jpg: it is a named pipe, not an image file"):
        decode_image(tmp_path / "pipe.jpg")
    os.symlink("/dev/null", tmp_path / "null.png")
    with pytest.raises(DataError, match=r"null\.png: it is a device file"):
        decode_image(tmp_path / "null.png")


def test_the_device_decoder_never_sees_the_exif_block(tmp_path, monkeypatch):
    # nvJPEG has crashed the process parsing damaged EXIF blocks: they are cut out, the orientation read in Python
    from tlcore import device_decode

    save_sideways(tmp_path / "phone.jpg", picture(32, 48), 6, quality=95)
    content = (tmp_path / "phone.jpg").read_bytes()
    handed, real = [], device_decode.decode_jpeg
    monkeypatch.setattr(device_decode, "decode_jpeg", lambda files, **kw: handed.extend(files) or real(files, **kw))
    damaged = bytearray(content)
    at = damaged.index(b"Exif\x00\x00") + 6 + 8  # IFD0's entry count, just after the TIFF header
    damaged[at : at + 2] = b"\xff\xff"  # 65,535 entries in a block of a few dozen bytes
    for data in (content, bytes(damaged)):
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        (image,) = decode_on(torch.device("cpu"), [raw], ["phone.jpg"])
        assert b"Exif" not in bytes(handed[-1].numpy()) and len(handed[-1]) < len(data)
        assert image.shape == decode_image(data, "phone.jpg").shape == (3, 32, 48)  # upright, as on the CPU path


def documented_load_rgb():
    """The ``load_rgb`` function docs/after-training.md gives for feeding exported models, executed as written."""
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "after-training.md").read_text(encoding="utf-8")
    section = text[text.index("## How an image file becomes pixels") :]
    code = section[section.index("```python\n") + len("```python\n") : section.index("\n```", section.index("```python"))]
    namespace: dict = {}
    exec(compile(code, "docs/after-training.md", "exec"), namespace)
    return namespace["load_rgb"]


def test_the_documented_decoding_for_exported_models_gives_the_same_pixels(tmp_path):
    load_rgb = documented_load_rgb()
    files = {
        "phone.jpg": lambda path: save_sideways(path, picture(), 6, quality=90),
        "sixteen.png": lambda path: Image.fromarray((np.arange(35).reshape(5, 7) * 1800).astype(np.uint16)).save(path),
        "int.tif": lambda path: Image.fromarray(np.full((3, 4), 70000, np.int32), "I").save(path),
        "float.tif": lambda path: Image.fromarray(np.linspace(-0.5, 1.5, 12, dtype=np.float32).reshape(3, 4), "F").save(
            path
        ),
        "rgba.png": lambda path: Image.fromarray(
            np.dstack([picture(), np.arange(20 * 28).reshape(20, 28) % 256]).astype(np.uint8), "RGBA"
        ).save(path),
        "la.png": lambda path: Image.fromarray(picture()[:, :, :2], "LA").save(path),
        "trns.png": lambda path: Image.fromarray(picture()).convert("P").save(path, transparency=3),
        "cmyk.jpg": lambda path: Image.fromarray(picture()).convert("CMYK").save(path),
        "grey.gif": lambda path: Image.fromarray(picture()[:, :, 0], "L").save(path),
    }
    for name, write in files.items():
        write(tmp_path / name)
        documented = torch.from_numpy(np.array(load_rgb(tmp_path / name))).permute(2, 0, 1)
        assert torch.equal(documented, decode_image(tmp_path / name)), name


def test_predict_names_a_pipe_in_its_folder_and_goes_on(run, host, tmp_path):
    import os

    from tlcore.inference import find_images, load_checkpoint, predict_files

    Image.fromarray(picture()).save(tmp_path / "a.png")
    os.mkfifo(tmp_path / "b.jpg")
    warnings: list[str] = []
    files = find_images([tmp_path])
    predictions = list(predict_files(load_checkpoint(run.output_dir, device="cpu", host=host), files, warn=warnings.append))
    assert [p.source for p in predictions] == [str(tmp_path / "a.png")]
    assert warnings == [f"cannot read image {tmp_path / 'b.jpg'}: it is a named pipe, not an image file"]
