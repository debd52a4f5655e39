"""A pickle reader that builds numpy arrays and plain containers, and nothing else.

The CIFAR "python version" files are pickles. A plain ``pickle.load`` runs
whatever callable the file names (``os.system``, ``builtins.open`` ...), so a
file planted in a data folder could run code. :class:`RestrictedUnpickler`
refuses every global except numpy's array reconstruction, which is all these
files need.
"""

from __future__ import annotations

import codecs
import pickle
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


def _allowed_globals() -> dict[tuple[str, str], Any]:
    # Take the functions from numpy's own reduce values, whatever module path this numpy keeps them under.
    reconstruct = np.ndarray.__reduce__(np.zeros(1, np.uint8))[0]
    frombuffer = np.zeros(1, np.uint8).__reduce_ex__(5)[0]
    scalar = np.int64(0).__reduce__()[0]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    # numpy 1 pickles say numpy.core, numpy 2 pickles numpy._core; Python 2 files say numpy.core.
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = frombuffer
    return allowed


_ALLOWED = _allowed_globals()


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose ``find_class`` answers only numpy's array and dtype reconstruction."""

    def find_class(self, module: str, name: str) -> Any:
        """Return the allowed object for ``module.name`` or raise :class:`ForbiddenGlobal`."""
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise ForbiddenGlobal(module, name) from None

    def persistent_load(self, pid: Any) -> Any:
        """Refuse persistent ids: the files never use them."""
        raise pickle.UnpicklingError("persistent ids are not allowed")


def load_restricted(path: Path) -> Any:
    """Read one pickle from ``path`` with :class:`RestrictedUnpickler`.

    ``encoding="bytes"`` keeps Python 2 ``str`` values (the keys of the official
    CIFAR files and the raw array data) as ``bytes``. Errors propagate
    unchanged; callers turn them into a DataError naming the file.
    """
    with open(path, "rb") as file:
        return RestrictedUnpickler(file, encoding="bytes").load()
