"""Decoding images: one set of rules for training, validation, eval, predict, the report and ``--decode device``.

An image means what an image viewer shows. Every path that turns a file (or a
PIL image, or a tensor) into pixels goes through :func:`open_image` and
:func:`to_rgb` (together: :func:`decode_image`), which

- read only regular files (a named pipe, socket or device file is refused
  without being opened: reading one would hang or have side effects);
- refuse images above the decompression-bomb limit (:func:`max_pixels`:
  twice ``PIL.Image.MAX_IMAGE_PIXELS``, where Pillow itself refuses) before
  any pixel is decoded;
- apply the EXIF orientation (tag 0x0112), so a phone photo stored sideways
  is upright; a damaged EXIF block is ignored, as viewers ignore it;
- scale high bit depths by the depth, never by the image's own range:
  16-bit (``I;16*``) and 32-bit integer (``I``) values are read as 16-bit,
  ``v / 257`` rounded (0..65535 to 0..255; values outside clipped); float
  (``F``) values are read as 0..1, ``v * 255`` rounded (outside clipped,
  NaN as 0). A flat 16-bit image of value 1000 is dark (4), not white;
- composite transparency (an alpha channel: RGBA, LA, PA, premultiplied
  modes; or a transparent colour: palette or grey with ``tRNS``) over one
  fixed background, white (255, 255, 255), before alpha is dropped; uint8 and
  float tensors with four channels are composited the same way;
- convert every other mode (1, L, P, CMYK, YCbCr, LAB, HSV, ...) with
  Pillow's own conversion; a multi-frame file (GIF, WebP, TIFF) gives its
  first frame;
- turn every failure a decoder raises on a damaged file into one
  :class:`~tlcore.errors.DataError` naming the file.

:func:`read_jpeg_header` and :func:`orient` let ``--decode device`` follow the
same rules: the header is checked in Python (size against the same limit,
markers, an end marker) before a device decoder sees the bytes, and the EXIF
orientation is applied to the decoded tensor.
"""

from __future__ import annotations

import io
import os
import stat
import struct
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from tlcore.errors import DataError

BACKGROUND = (255, 255, 255)  # transparent pixels become white, as on a viewer's or a web page's background
ORIENTATION_TAG = 0x0112
# PIL's transposes for EXIF orientations 2-8, as PIL.ImageOps.exif_transpose applies them
_TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")

ImageSource = str | os.PathLike | bytes | bytearray | memoryview


def max_pixels() -> int | None:
    """The largest width x height decoded anywhere: twice ``PIL.Image.MAX_IMAGE_PIXELS`` (None: no limit).

    Pillow refuses images above that itself; the device path checks the same
    number from the JPEG header. Set ``PIL.Image.MAX_IMAGE_PIXELS`` to change it.
    """
    limit = Image.MAX_IMAGE_PIXELS
    return None if limit is None else 2 * int(limit)


def check_pixels(width: int, height: int, name: str) -> None:
    """DataError when ``width x height`` exceeds :func:`max_pixels` (a decompression bomb, or a huge scan)."""
    limit = max_pixels()
    if limit is not None and width * height > limit:
        raise DataError(f"cannot read image {name}: {width}x{height} is {width * height:,} pixels, {_too_many_pixels()}")


def _too_many_pixels() -> str:
    return (
        f"more than the limit of {max_pixels() or 0:,} (a decompression bomb?); raise PIL.Image.MAX_IMAGE_PIXELS to allow it"
    )


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words, from its ``st_mode``."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    return "not a regular file"


def check_regular_file(path: str | os.PathLike) -> None:
    """DataError naming ``path`` unless it is (a link to) a regular file; the file is never opened."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        raise DataError(f"cannot read image {path}: {_reason(error)}") from error
    if not stat.S_ISREG(mode):
        raise DataError(f"cannot read image {path}: it is {file_kind(mode)}, not an image file")


def read_image_file(path: str | os.PathLike) -> bytes:
    """The bytes of an image file; DataError naming it when it is not a regular file or cannot be read.

    Opened without blocking and checked again once open, so a file swapped for a pipe after the check
    cannot hang the reader.
    """
    check_regular_file(path)
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as error:
        raise DataError(f"cannot read image {path}: {_reason(error)}") from error
    with os.fdopen(descriptor, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise DataError(f"cannot read image {path}: it is {file_kind(mode)}, not an image file")
        try:
            return handle.read()
        except OSError as error:
            raise DataError(f"cannot read image {path}: {_reason(error)}") from error


def _reason(error: BaseException) -> str:
    """An exception's message on one line (its type's name when it has none)."""
    return " ".join(str(error).split()) or type(error).__name__


def open_image(source: ImageSource, name: str | None = None) -> Image.Image:
    """Open and fully decode an image file (a path, or the file's bytes) as a PIL image in the file's own mode.

    ``name`` names the image in errors (default: the path, or "an image").
    Raises DataError naming it when the file is not a regular file, is above
    :func:`max_pixels`, or cannot be decoded, whatever the decoder raised.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, name = bytes(source), name or "an image"
    else:
        name = name or str(source)
        data = read_image_file(source)
    try:
        with Image.open(io.BytesIO(data)) as image:
            check_pixels(image.width, image.height, name)  # from the header: before any pixel is decoded
            image.load()
            if isinstance(source, (str, os.PathLike)):
                image.filename = str(source)  # names it for to_rgb's errors and the report's titles
            return image
    except DataError:
        raise
    except Image.DecompressionBombError as error:  # Pillow's own check at open: the same message as ours
        raise DataError(f"cannot read image {name}: {_too_many_pixels()}") from error
    except UnidentifiedImageError as error:  # its message names the in-memory buffer, differently every time
        raise DataError(f"cannot read image {name}: not an image format Pillow can read, or damaged") from error
    except Exception as error:  # Pillow's decoders raise many types on hostile files; all mean unreadable
        raise DataError(f"cannot read image {name}: {_reason(error)}") from error


def decode_image(source: ImageSource, name: str | None = None) -> torch.Tensor:
    """An image file (path or bytes) as uint8 RGB ``(3, H, W)``, following every rule of this module.

    Raises DataError naming ``name`` (or the path) when it cannot be read.
    """
    return to_rgb(open_image(source, name), name)


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8) of an opened image; 1 when it has none or its EXIF block is damaged."""
    try:
        value = image.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # a damaged EXIF block is ignored, as viewers ignore it
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def to_rgb(image: Image.Image | torch.Tensor, name: str | None = None) -> torch.Tensor:
    """Any PIL image, or an image tensor, as an RGB tensor ``(3, H, W)``, upright and without transparency.

    PIL images of any mode become uint8 (see the module's rules). Tensors
    ``(H, W)`` or ``(C, H, W)`` with C in 1, 3, 4 keep their dtype: uint8
    (0-255) or float (0-1); one channel is repeated, a fourth is alpha and is
    composited over white. Raises DataError naming the image's file (else
    ``name``) when a PIL image cannot be decoded or converted.
    """
    if isinstance(image, torch.Tensor):
        return _tensor_to_rgb(image)
    name = getattr(image, "filename", "") or name or "an image"  # the file, when the image came from one
    try:
        return torch.from_numpy(_pil_to_rgb_array(image, name)).permute(2, 0, 1)
    except DataError:
        raise
    except Exception as error:  # a lazily opened image decodes here: any decoder failure
        raise DataError(f"cannot read image {name}: {_reason(error)}") from error


def _pil_to_rgb_array(image: Image.Image, name: str) -> np.ndarray:
    """uint8 ``(H, W, 3)`` of a PIL image, by the module's rules."""
    check_pixels(image.width, image.height, name)
    orientation = exif_orientation(image)
    if orientation != 1:
        image = image.transpose(_TRANSPOSES[orientation])
    mode = image.mode
    if mode in _SIXTEEN_BIT or mode == "I":
        values = np.asarray(image).astype(np.float32)  # by bit depth, never by the image's own range
        grey = np.rint(np.clip(values, 0, 65535) / 257.0).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        grey = np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode in _ALPHA_MODES or (mode in ("P", "L", "RGB", "1") and "transparency" in image.info):
        if mode == "1":
            image = image.convert("L")
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.array(image, dtype=np.uint8)  # a copy: torch must own writable memory


def _tensor_to_rgb(image: torch.Tensor) -> torch.Tensor:
    """``(H, W)`` or ``(C, H, W)``, C in 1, 3, 4, to 3 channels; alpha composited over white in the tensor's range."""
    if image.ndim == 2:
        image = image.unsqueeze(0)
    if image.ndim != 3 or image.shape[0] not in (1, 3, 4):
        raise DataError(f"an image tensor must be (H, W) or (C, H, W) with C in 1, 3, 4; got {tuple(image.shape)}")
    if image.shape[0] == 1:
        return image.expand(3, -1, -1)
    if image.shape[0] == 3:
        return image
    if image.is_floating_point():
        alpha = image[3:].clamp(0, 1)
        white = torch.tensor(BACKGROUND, dtype=image.dtype, device=image.device).view(3, 1, 1) / 255
        return image[:3] * alpha + white * (1 - alpha)
    colour, alpha = image[:3].to(torch.int32), image[3:].to(torch.int32)
    white = torch.tensor(BACKGROUND, dtype=torch.int32, device=image.device).view(3, 1, 1)
    return ((colour * alpha + white * (255 - alpha) + 127) // 255).to(image.dtype)


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """A decoded ``(C, H, W)`` tensor turned upright for its EXIF orientation (1-8), as PIL's transposes do."""
    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-1, -2)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-1, -2)
    if orientation == 6:
        return torch.rot90(image, -1, (-2, -1))
    if orientation == 7:
        return image.transpose(-1, -2).flip(-1, -2)
    if orientation == 8:
        return torch.rot90(image, 1, (-2, -1))
    return image


@dataclass(frozen=True)
class JpegHeader:
    """What :func:`read_jpeg_header` found in a JPEG file that a device decoder may take."""

    width: int
    height: int
    components: int  # 1 (grey) or 3 (YCbCr)
    orientation: int  # EXIF orientation, 1-8
    # (start, stop) byte spans of metadata segments (APP1-APP13, APP15, comments) a decoder does not need: EXIF
    # parsing is where nvJPEG has crashed on damaged files, so these are cut out before it sees the bytes
    metadata: tuple[tuple[int, int], ...] = ()

    def decoder_bytes(self, data: torch.Tensor) -> torch.Tensor:
        """The file's bytes (uint8, 1-D) without the :attr:`metadata` segments: what a device decoder is given."""
        if not self.metadata:
            return data
        pieces, start = [], 0
        for cut_from, cut_to in self.metadata:
            pieces.append(data[start:cut_from])
            start = cut_to
        pieces.append(data[start:])
        return torch.cat(pieces)


JPEG_SOI = b"\xff\xd8\xff"
_DEVICE_FRAMES = (0xC0, 0xC1, 0xC2)  # baseline, extended and progressive Huffman frames, 8-bit
_OTHER_FRAMES = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # lossless, hierarchical, arithmetic
_END_SEARCH = 65536  # the end-of-image marker must lie in this many final bytes (a little trailing data is common)


def read_jpeg_header(data: bytes | bytearray | memoryview | np.ndarray) -> JpegHeader | None:
    """The frame of a JPEG file whose structure is sound, or None: leave it to the CPU decoder.

    Walks the markers from the start of image to the start of scan, checking
    every segment's length against the file; needs one 8-bit Huffman frame
    (baseline, extended or progressive) of 1 or 3 components with sane
    sampling factors, quantisation tables, and an end-of-image marker after
    the scan (a truncated file has none). Only the structure is checked; the
    caller compares the size with :func:`max_pixels` and hands the decoder
    :meth:`JpegHeader.decoder_bytes` (the metadata segments cut out).
    """
    data = memoryview(data).cast("B") if not isinstance(data, np.ndarray) else memoryview(data.reshape(-1))
    size = len(data)
    if size < 4 or bytes(data[:3]) != JPEG_SOI:
        return None
    position, frame, orientation, tables, metadata = 2, None, None, False, []
    while True:
        if position + 4 > size or data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            position += 2
            continue
        if marker in (0xD8, 0xD9):  # a second start, or the end before any scan
            return None
        length = (data[position + 2] << 8) | data[position + 3]
        end = position + 2 + length
        if length < 2 or end > size:
            return None
        segment = data[position + 4 : end]
        if marker in _OTHER_FRAMES:
            return None
        if marker in _DEVICE_FRAMES:
            if frame is not None:
                return None
            frame = _read_frame(segment)
            if frame is None:
                return None
        elif marker == 0xDB:
            tables = True
        elif marker == 0xE1 and orientation is None and bytes(segment[:6]) == b"Exif\x00\x00":
            orientation = _exif_orientation(bytes(segment[6:]))  # the first Exif block, as PIL reads it
        if 0xE1 <= marker <= 0xED or marker in (0xEF, 0xFE):  # APP0 (JFIF) and APP14 (Adobe colour) stay
            metadata.append((position, end))
        if marker == 0xDA:
            if frame is None or not tables:
                return None
            break
        position = end
    tail_start = max(end, size - _END_SEARCH)
    if bytes(data[tail_start:]).find(b"\xff\xd9") < 0:  # truncated (or far too much after the image)
        return None
    width, height, components = frame
    return JpegHeader(width, height, components, orientation or 1, tuple(metadata))


def _read_frame(segment: memoryview) -> tuple[int, int, int] | None:
    """(width, height, components) of a start-of-frame segment, or None when it is not one a device decoder takes."""
    if len(segment) < 6:
        return None
    precision, components = segment[0], segment[5]
    height, width = (segment[1] << 8) | segment[2], (segment[3] << 8) | segment[4]
    if precision != 8 or height == 0 or width == 0 or components not in (1, 3) or len(segment) != 6 + 3 * components:
        return None
    for index in range(components):
        sampling = segment[6 + 3 * index + 1]
        if not (1 <= sampling >> 4 <= 4 and 1 <= sampling & 0xF <= 4):
            return None
    return width, height, components


def _exif_orientation(tiff: bytes) -> int:
    """The orientation tag of IFD0 of an EXIF block (TIFF layout); 1 when absent or damaged."""
    try:
        order = {b"II": "<", b"MM": ">"}[tiff[:2]]
        (offset,) = struct.unpack(order + "I", tiff[4:8])
        (count,) = struct.unpack(order + "H", tiff[offset : offset + 2])
        for index in range(count):
            entry = offset + 2 + 12 * index
            tag, kind = struct.unpack(order + "HH", tiff[entry : entry + 4])
            if tag == ORIENTATION_TAG:
                if kind == 3:  # SHORT
                    (value,) = struct.unpack(order + "H", tiff[entry + 8 : entry + 10])
                elif kind == 4:  # LONG
                    (value,) = struct.unpack(order + "I", tiff[entry + 8 : entry + 12])
                else:
                    return 1
                return value if 1 <= value <= 8 else 1
    except (KeyError, struct.error):
        return 1
    return 1


__all__ = [
    "BACKGROUND",
    "JpegHeader",
    "check_pixels",
    "check_regular_file",
    "decode_image",
    "exif_orientation",
    "max_pixels",
    "open_image",
    "orient",
    "read_image_file",
    "read_jpeg_header",
    "to_rgb",
]
