"""A pickle reader that builds numpy arrays and plain containers, and nothing else.

The CIFAR "python version" files are pickles. A plain ``pickle.load`` runs
whatever callable the file names (``os.system``, ``builtins.open`` ...), so a
file planted in a data folder could run code. :class:`RestrictedUnpickler`
refuses every global except numpy's array reconstruction, which is all these
files need.
"""

from __future__ import annotations

import codecs
import io
import math
import os
import pickle
import pickletools
from pathlib import Path
from typing import Any

import numpy as np


class ForbiddenGlobal(pickle.UnpicklingError):
    """The pickle names a callable or class that the restricted reader does not allow."""

    def __init__(self, module: str, name: str):
        super().__init__(f"global {module}.{name} is not allowed")
        self.qualname = f"{module}.{name}"


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Python 3 pickles bytes at protocol 2 as _codecs.encode(text, "latin1"); allow that and no other codec.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise pickle.UnpicklingError("_codecs.encode is allowed only as encode(str, 'latin1')")
    return codecs.encode(text, "latin1")


class _CheckedArray(np.ndarray):
    """What the reader builds an array as, so that the pickle's BUILD step goes through our checks.

    numpy's own ``__setstate__`` allocates the declared shape before it looks
    at the data (an object array of a huge declared shape even crashes the
    process); here the shape, dtype and data are checked first. Arrays are
    handed back as plain ``np.ndarray`` views once the load is done.
    """

    budget: int = 0  # set per load: the bytes the file holds, the most any array of it may have

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("an array's state must be (version, shape, dtype, is_fortran, data)")
        shape, dtype, data = state[-4], state[-3], state[-1]
        _check_array(shape, dtype, self.budget)
        expected = math.prod(shape) * dtype.itemsize
        if not isinstance(data, (bytes, bytearray)) or len(data) != expected:
            got = f"{len(data)} bytes" if isinstance(data, (bytes, bytearray)) else type(data).__name__
            raise pickle.UnpicklingError(f"an array of shape {tuple(shape)} needs {expected} bytes of data, got {got}")
        super().__setstate__(state)


class _ArrayType:
    """Stands for ``numpy.ndarray`` in a pickle: only usable as the type ``_reconstruct`` builds, never called."""


def _check_dtype(dtype: Any) -> np.dtype:
    if not isinstance(dtype, np.dtype):
        raise pickle.UnpicklingError(f"an array's dtype must be a numpy dtype, got {type(dtype).__name__}")
    if dtype.hasobject:  # object arrays hold pickled objects; no CIFAR file has one
        raise pickle.UnpicklingError(f"arrays of dtype {dtype} (holding Python objects) are not allowed")
    return dtype


def _check_array(shape: Any, dtype: Any, budget: int) -> None:
    """Refuse an array whose declared size exceeds what the file could hold, before numpy allocates it."""
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape) or len(shape) > 32:
        raise pickle.UnpicklingError(f"an array's shape must be a tuple of at most 32 sizes, got {shape!r:.60}")
    size = math.prod(shape) * _check_dtype(dtype).itemsize
    if size > budget:
        raise pickle.UnpicklingError(
            f"the file declares an array of shape {shape} ({size:,} bytes) but holds only {budget:,} bytes"
        )


def _bounded(budget: int) -> dict[tuple[str, str], Any]:
    """The globals a CIFAR pickle may name, each refusing to allocate more than ``budget`` bytes."""
    # Take the functions from numpy's own reduce values, whatever module path this numpy keeps them under.
    reconstruct = np.ndarray.__reduce__(np.zeros(1, np.uint8))[0]
    frombuffer = np.zeros(1, np.uint8).__reduce_ex__(5)[0]
    scalar = np.int64(0).__reduce__()[0]

    def checked_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        if subtype is not _ArrayType:
            raise pickle.UnpicklingError("_reconstruct may build numpy.ndarray only")
        if isinstance(dtype, bytes):
            dtype = dtype.decode("latin1")
        if not isinstance(dtype, (str, np.dtype)) or (isinstance(dtype, str) and len(dtype) > 8):
            raise pickle.UnpicklingError(f"dtype {dtype!r:.40} is not a plain numeric type code")
        _check_array(tuple(shape) if isinstance(shape, list) else shape, np.dtype(dtype), budget)
        return reconstruct(_CheckedArray, shape, dtype)

    def checked_frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
        if not isinstance(buffer, (bytes, bytearray, memoryview, pickle.PickleBuffer)):
            raise pickle.UnpicklingError("an array's buffer must be bytes")
        _check_array(shape, dtype, budget)
        return frombuffer(buffer, dtype, shape, order)

    def checked_scalar(dtype: Any, data: Any = None) -> Any:
        dtype = _check_dtype(dtype)
        if not isinstance(data, bytes) or len(data) != dtype.itemsize:
            raise pickle.UnpicklingError(f"a {dtype} scalar needs {dtype.itemsize} bytes of data")
        return scalar(dtype, data)

    def checked_dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
        if isinstance(spec, bytes):  # Python 2 files, read with encoding="bytes"
            spec = spec.decode("latin1")
        if not isinstance(spec, str) or len(spec) > 8:  # "u1", "i8", "<f4": plain type codes only
            raise pickle.UnpicklingError(f"dtype {spec!r:.40} is not a plain numeric type code")
        return np.dtype(spec, align=bool(align), copy=bool(copy))

    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): _ArrayType,
        ("numpy", "dtype"): checked_dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    # numpy 1 pickles say numpy.core, numpy 2 pickles numpy._core; Python 2 files say numpy.core.
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = checked_reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = checked_scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = checked_frombuffer
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose ``find_class`` answers only numpy's array and dtype reconstruction.

    ``budget`` bounds every array it builds: no array may declare more bytes
    than that (the size of the file it reads), so a small file cannot make it
    allocate gigabytes.
    """

    def __init__(self, file: Any, *, budget: int, **kwargs: Any):
        super().__init__(file, **kwargs)
        self._allowed = _bounded(budget)
        self._budget = budget

    def find_class(self, module: str, name: str) -> Any:
        """Return the allowed object for ``module.name`` or raise :class:`ForbiddenGlobal`."""
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise ForbiddenGlobal(module, name) from None

    def persistent_load(self, pid: Any) -> Any:
        """Refuse persistent ids: the files never use them."""
        raise pickle.UnpicklingError("persistent ids are not allowed")

    def load(self) -> Any:
        """Read the pickle; arrays come back as plain ``np.ndarray``."""
        _CheckedArray.budget = self._budget
        try:
            return _plain(super().load())
        finally:
            _CheckedArray.budget = 0


def _plain(value: Any, depth: int = 0) -> Any:
    """The loaded value with every _CheckedArray turned into a plain ndarray view (containers walked)."""
    if isinstance(value, _CheckedArray):
        return value.view(np.ndarray)
    if depth > 16:
        return value
    if isinstance(value, dict):
        return {key: _plain(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item, depth + 1) for item in value]
    if isinstance(value, tuple):
        return tuple(_plain(item, depth + 1) for item in value)
    return value


def load_restricted(path: Path, max_bytes: int | None = None) -> Any:
    """Read one pickle from ``path`` with :class:`RestrictedUnpickler`.

    The file is read whole first (refused above ``max_bytes`` before reading)
    and unpickled from memory, so a declared length larger than the file is a
    truncation error, never an allocation; arrays are bounded by the file size.
    ``encoding="bytes"`` keeps Python 2 ``str`` values (the keys of the
    official CIFAR files and the raw array data) as ``bytes``. Errors
    propagate unchanged (:class:`ForbiddenGlobal`, ``pickle.UnpicklingError``,
    OSError, ...); callers turn them into a DataError naming the file.
    """
    size = os.stat(path).st_size
    if max_bytes is not None and size > max_bytes:
        raise pickle.UnpicklingError(f"the file has {size:,} bytes, more than the format's {max_bytes:,}")
    with open(path, "rb") as file:
        data = file.read(size + 1)
    check_declared_lengths(data)
    return RestrictedUnpickler(io.BytesIO(data), budget=len(data), encoding="bytes").load()


def check_declared_lengths(data: bytes) -> None:
    """Walk the pickle's opcodes without running them; refuse a length or frame larger than the data.

    Python's unpickler allocates what a bytes or string opcode declares before
    reading it, so 12 bytes declaring 2**40 would be a terabyte request; the
    opcode walk reads through a memory buffer, where such a length is simply
    a short read. Raises ``pickle.UnpicklingError``.
    """
    try:
        for opcode, argument, position in pickletools.genops(data):
            if opcode.name == "FRAME" and argument > len(data) - (position or 0):
                raise pickle.UnpicklingError(f"a frame at byte {position} declares {argument:,} bytes; the file is shorter")
    except (ValueError, EOFError) as error:  # genops: "expected N bytes ... but only M remain" and the like
        raise pickle.UnpicklingError(" ".join(str(error).split())) from None
