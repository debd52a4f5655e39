"""Start-up of the ``tlcore`` command: import torchvision and timm without importing TorchDynamo.

Importing torchvision (any part of it: ``import torchvision.transforms`` runs
``torchvision/__init__.py``, which imports its models and ops) or timm imports
all of ``torch._dynamo``: about a second on a 2-core machine, more than
torchvision itself. Commands that do not train (``predict``, ``eval``, ``info``,
``plan``, ``export``) never use it; a training run imports it anyway at its
first optimizer step (torch.optim asks for it). Three module-level lines ask
for it (torchvision 0.29, timm 1.0):

- ``torchvision/ops/roi_align.py``: ``from torch._dynamo.utils import is_compile_supported``,
  a function called only when ``roi_align`` runs (detection models);
- ``torchvision/tv_tensors/__init__.py`` and ``timm/models/naflexvit.py``:
  ``@torch.compiler.disable`` on functions, which imports TorchDynamo to mark them.

:func:`install` (called by the ``tlcore`` command, which owns its process; a
library import of tlcore changes nothing) adds an import hook. While the code
of a torchvision or timm module runs, two stand-in modules sit in
``sys.modules`` for ``torch._dynamo`` and ``torch._dynamo.utils``. Their
``is_compile_supported`` imports TorchDynamo on its first call. A function
marked with their ``disable`` runs as it is while TorchDynamo is not imported
(nothing can trace it then) and through the real ``disable`` once it is, as
torch's own ``torch._disable_dynamo`` defers the same import. Any other
attribute read loads the real TorchDynamo at once and ends the stand-ins for
the process. Modules imported meanwhile that are not torchvision's or timm's
(torch's own) run without them, and once the module is done they are gone, so
``import torch._dynamo`` (``--compile``) imports the real package as usual.

A module whose source mentions ``_dynamo`` other than in the roi_align line is
imported as usual (a torchvision or timm release this was not written for).
"""

from __future__ import annotations

import functools
import importlib
import importlib.abc
import sys
import types

PACKAGES = ("torchvision", "timm")  # whose modules' import-time requests for TorchDynamo are deferred
DEFERRED_LINE = "from torch._dynamo.utils import is_compile_supported"  # roi_align's; no other is expected
DYNAMO, DYNAMO_UTILS = "torch._dynamo", "torch._dynamo.utils"

# windows: stand-ins currently in sys.modules (0 or 1 deep per running target module, restored when it ends);
# real: the real TorchDynamo was asked for, so no stand-in is ever put back; deferred: modules run with them.
_state = {"real": False, "deferred": 0}


def is_compile_supported(device_type):
    """``torch._dynamo.utils.is_compile_supported``, importing TorchDynamo on the first call."""
    from torch._dynamo.utils import is_compile_supported as real

    return real(device_type)


def disable(fn=None, recursive=True, *, reason=None):
    """``torch._dynamo.disable`` for a function, made when it is first called with TorchDynamo imported.

    Until TorchDynamo is imported nothing can trace the function, so a call runs it as it is; from then on a
    call goes through the real ``torch._dynamo.disable(fn, recursive, reason=reason)`` wrapper (made once):
    the same effect, TorchDynamo does not trace it, without importing TorchDynamo to mark it. Anything but a
    plain function (a class, a module, ``fn=None``) goes to the real ``disable`` at once.
    """
    if not isinstance(fn, types.FunctionType):
        return _real_attribute(DYNAMO, "disable")(fn, recursive, reason=reason)
    made: list = []

    @functools.wraps(fn)
    def deferred(*args, **kwargs):
        if not made:
            real = getattr(sys.modules.get(DYNAMO), "disable", None)
            if real is None or sys.modules.get(DYNAMO) is _PARENT:  # not imported (or still importing): no tracer
                return fn(*args, **kwargs)
            made.append(real(fn, recursive, reason=reason))
        return made[0](*args, **kwargs)

    return deferred


class _StandIn(types.ModuleType):
    """Stands in for a TorchDynamo module while a target module runs; any other attribute read loads the real one."""

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):  # probes (__file__, __path__): a module without them
            raise AttributeError(name)
        return _real_attribute(self.__name__, name)


def _real_attribute(module: str, name: str):
    """``module.name`` from the real TorchDynamo, which is imported now and for good (no stand-in after this)."""
    _state["real"] = True
    _take_out()
    return getattr(importlib.import_module(module), name)


_UTILS = _StandIn(DYNAMO_UTILS)
_UTILS.is_compile_supported = is_compile_supported
_PARENT = _StandIn(DYNAMO)
_PARENT.utils = _UTILS
_PARENT.disable = disable


def _put_in() -> bool:
    """Put the stand-ins in ``sys.modules``; False (nothing done) when they are there or the real one is."""
    if _state["real"] or DYNAMO in sys.modules:
        return False
    sys.modules[DYNAMO], sys.modules[DYNAMO_UTILS] = _PARENT, _UTILS
    return True


def _take_out() -> bool:
    """Take the stand-ins out of ``sys.modules``; True when they were there."""
    present = sys.modules.get(DYNAMO) is _PARENT
    for name, stand_in in ((DYNAMO, _PARENT), (DYNAMO_UTILS, _UTILS)):
        if sys.modules.get(name) is stand_in:
            del sys.modules[name]
    return present


def _source_allows(loader, name: str) -> bool:
    """Whether the module's source mentions ``_dynamo`` nowhere but in :data:`DEFERRED_LINE` (unreadable: no)."""
    try:
        source = loader.get_data(loader.get_filename(name))  # bytes: most modules never say _dynamo, no decoding
    except (ImportError, OSError, AttributeError):
        return False
    if not isinstance(source, bytes) or not source:
        return False
    if b"_dynamo" not in source:
        return True
    expected = DEFERRED_LINE.encode()
    return all(line.strip() == expected for line in source.splitlines() if b"_dynamo" in line)


def _is_target(name: str) -> bool:
    return name.partition(".")[0] in PACKAGES


class _Loader(importlib.abc.Loader):
    """A module's own loader; its code runs with the stand-ins in (a checked target) or out (anything else)."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__loader__ = module.__spec__.loader = self.loader  # the module keeps its real loader
        name = module.__spec__.name
        if _is_target(name) and _source_allows(self.loader, name):
            added = _put_in()
            try:
                self.loader.exec_module(module)
            finally:
                if added:
                    _take_out()
            if added:
                _state["deferred"] += 1
            return
        removed = _take_out()  # torch's (or anyone's) module imported by a target: the real import system
        try:
            self.loader.exec_module(module)
        finally:
            if removed:
                _put_in()


class _Finder(importlib.abc.MetaPathFinder):
    """Wraps the loader of torchvision's and timm's modules, and of every module imported while one of them runs."""

    def find_spec(self, fullname, path, target=None):
        if _state["real"] or (DYNAMO in sys.modules and sys.modules[DYNAMO] is not _PARENT):
            return None  # TorchDynamo is imported for real: nothing left to defer
        if not _is_target(fullname) and sys.modules.get(DYNAMO) is not _PARENT:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


_FINDER = _Finder()


def install() -> None:
    """From now on, this process imports torchvision and timm without TorchDynamo (see the module docstring).

    Idempotent; modules imported before the call stay as they are.
    """
    if not any(finder is _FINDER for finder in sys.meta_path):
        sys.meta_path.insert(0, _FINDER)


def uninstall() -> None:
    """Remove the hook (tests); modules already imported stay as they are."""
    sys.meta_path[:] = [finder for finder in sys.meta_path if finder is not _FINDER]


def deferred_count() -> int:
    """How many torchvision and timm modules ran with the stand-ins in this process (for tests and benchmarks)."""
    return _state["deferred"]
