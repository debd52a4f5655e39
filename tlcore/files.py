"""Writing files so that a process killed at any moment leaves each one whole or absent."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlcore.errors import ResourceError

if TYPE_CHECKING:  # torch and safetensors load when tensors are saved: writing JSON or bytes must not import them
    import torch


def _file_mode() -> int:
    # mkstemp creates 0600 files; give ours the mode a plain open() would (0666 less the umask).
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


@contextlib.contextmanager
def atomic_file(path: Path, suffix: str = "") -> Iterator[Path]:
    """A temporary file beside ``path`` to write; when the block succeeds it replaces ``path`` whole.

    The one atomic write: the block writes the complete file to the yielded
    path (``.NAME.XXXXXXXX.tmp`` plus ``suffix``; it exists, empty, and may be
    created anew). It is then flushed to disk, given the mode a plain open()
    would, and renamed over ``path``. Whatever the block raises, the temporary
    file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + suffix)
    except OSError as error:
        raise write_failure(path, error) from error
    os.close(fd)  # only its unique name is needed: writers such as safetensors create the file anew
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)
        flushed = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(flushed)
        finally:
            os.close(flushed)
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError) or type(error).__name__ == "SafetensorError":  # a full disk, a read-only one
            raise write_failure(path, error) from error
        raise


def write_failure(path: Path, error: BaseException) -> ResourceError:
    """The one-line error for a write that failed (disk full, quota, read-only): what, why, and what was kept.

    ``error`` is an OSError or a SafetensorError (safetensors reports a full
    disk as ``IoError(Os { ..., message: "No space left on device" })``).
    """
    if isinstance(error, OSError):
        reason = error.strerror or str(error)
    else:
        found = re.search(r'message: "([^"]*)"', str(error))
        reason = found.group(1) if found else " ".join(str(error).split()) or type(error).__name__
    kept = f"the last complete {path.name} is kept as it was" if path.exists() else f"no {path.name} was written"
    return ResourceError(f"cannot write {path}: {reason}; {kept}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_file`: a kill leaves the old file or the new one."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def cpu_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of ``tensor`` on the CPU that shares no memory with it, made in one copy.

    What a safetensors file needs (contiguous tensors, no shared storage: channels-last weights, tied weights)
    and what a background write needs (a snapshot that training can no longer change). Same dtype and values;
    ``clone().contiguous()`` would copy channels-last tensors twice.
    """
    import torch

    return tensor.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """A safetensors file written through :func:`atomic_file`.

    safetensors writes the file itself: no second copy of every tensor in
    memory, and two to four times faster than serialising to bytes first.
    """
    from safetensors.torch import save_file

    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


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
