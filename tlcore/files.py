"""Writing files so that a process killed at any moment leaves each one whole or absent."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file


def _file_mode() -> int:
    # mkstemp creates 0600 files; give ours the mode a plain open() would (0666 less the umask).
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, flush it to disk, then rename over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """A safetensors file written as :func:`atomic_write_bytes` writes bytes.

    safetensors writes the file itself: no second copy of every tensor in
    memory, and two to four times faster than serialising to bytes first.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)  # only its unique name is needed: safetensors creates the file anew
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, FILE_MODE)
        flushed = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(flushed)
        finally:
            os.close(flushed)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, value: Any) -> None:
    """Pretty JSON, written atomically."""
    atomic_write_bytes(path, (json.dumps(value, indent=2, sort_keys=False) + "\n").encode("utf-8"))


def append_json_line(path: Path, value: Any) -> None:
    """Rewrite a JSON-lines file atomically with one more line, so a kill never leaves half a line."""
    path = Path(path)
    existing = path.read_bytes() if path.exists() else b""
    atomic_write_bytes(path, existing + (json.dumps(value) + "\n").encode("utf-8"))


def atomic_link_or_copy(source: Path, target: Path) -> None:
    """Make ``target`` hold ``source``'s bytes, atomically: a hard link renamed into place, else a copy.

    Safe with atomic writers: they replace ``source`` by a new inode, so the link keeps the old bytes.
    """
    source, target = Path(source), Path(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:  # no hard links on this file system
        atomic_write_bytes(target, source.read_bytes())
        return
    os.replace(tmp, target)
