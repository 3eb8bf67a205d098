"""torchvision's import beside a torch its C++ ops were not built for, made to work in a fresh interpreter.

A torchvision wheel from PyPI is a CUDA build. Beside a CPU torch (torch 2.13.0+cpu with torchvision 0.28.0
here) its extension ``torchvision/_C`` cannot load; torchvision tolerates that (``extension._has_ops()`` is
then False and the ops that need it raise a clear RuntimeError when called), except that its
``_meta_registrations`` registers fake kernels for ``torchvision::nms`` and ``::qnms`` unconditionally, so
``import torchvision`` -- and ``import transformers``, which imports torchvision when it is installed --
fails with "RuntimeError: operator torchvision::nms does not exist". Defining those two schemas (no
kernel) before the first import lets it through; the models never call them, and ``torchvision.ops.nms``
still raises torchvision's own error. Only done where the extension cannot load: where it loads, it
defines the real ops, and a second definition would be an error.

``scripts/install_zoo.py`` writes ``PTH_NAME`` into the environment's site-packages: its one line runs
``install()`` at every interpreter start, which only puts ``ImportHook`` on ``sys.meta_path`` (no torch,
about 0.3 ms); the first lookup of torchvision (an import, or transformers' ``find_spec``) removes the hook
and runs ``torchvision_ops_shim()``, which imports torch, as torchvision is about to. This module imports
nothing but the standard library at import time.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys

SHIMMED_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_shim_library = None  # the torch.library.Library once defined, kept alive: dropping it would remove the schemas

# The .pth file install_zoo writes, and its one line (site runs a line that starts with "import"). An
# initcore that is gone or older leaves the line silent instead of an error at every interpreter start.
PTH_NAME = "initcore-torchvision-shim.pth"
PTH_LINE = ('import sys; exec("try:\\n from initcore import torchvision_shim as _s\\nexcept ImportError:\\n pass\\n'
            'else:\\n _s.install()")\n')


def _has_op(name: str) -> bool:
    import torch

    try:
        getattr(torch.ops.torchvision, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def torchvision_extension_loads() -> bool | None:
    """Whether torchvision's C++ extension (``torchvision/_C``) loads beside this torch, found and loaded
    the way torchvision's own ``extension.py`` does it; None if torchvision is not installed. Loading it
    here is what ``import torchvision`` would do next anyway."""
    spec = importlib.util.find_spec("torchvision")  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        return None
    import torch

    directory = next(iter(spec.submodule_search_locations))
    if os.name == "nt":  # as torchvision's _get_extension_path: its own DLLs beside the extension
        os.add_dll_directory(directory)
    loader = (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES)
    found = importlib.machinery.FileFinder(directory, loader).find_spec("_C")
    if found is None or found.origin is None:
        return False
    try:
        torch.ops.load_library(found.origin)
    except (OSError, RuntimeError):  # e.g. "libcudart.so.13: cannot open shared object file", undefined symbols
        return False
    return True


def torchvision_ops_shim() -> tuple[str, ...]:
    """Before the first import of torchvision or transformers: define the schemas that torchvision's import
    needs where its C++ ops cannot load. Returns the names of the ops defined by this call: none where
    torchvision is missing, already imported, its extension loads, or an earlier call defined them."""
    global _shim_library
    if "torchvision" in sys.modules or _shim_library is not None:
        return ()
    if torchvision_extension_loads() in (None, True):
        return ()
    missing = [name for name in SHIMMED_SCHEMAS if not _has_op(name)]
    if missing:
        import torch

        _shim_library = torch.library.Library("torchvision", "DEF")
        for name in missing:
            _shim_library.define(SHIMMED_SCHEMAS[name])
    return tuple(missing)


class ImportHook:
    """A ``sys.meta_path`` entry that finds nothing: on the first lookup of ``torchvision`` it removes itself
    and runs ``torchvision_ops_shim()``, then lets the ordinary finders import torchvision."""

    def find_spec(self, fullname: str, path=None, target=None) -> None:
        if fullname == "torchvision":
            uninstall()
            try:
                torchvision_ops_shim()
            except Exception:  # noqa: BLE001 -- never break an import: torchvision's own error then says why
                pass
        return None


def installed() -> bool:
    """Whether an ``ImportHook`` is on ``sys.meta_path``."""
    return any(isinstance(finder, ImportHook) for finder in sys.meta_path)


def install() -> None:
    """Put an ``ImportHook`` first on ``sys.meta_path``, unless one is there or torchvision is imported
    (idempotent; what the .pth line runs)."""
    if not installed() and "torchvision" not in sys.modules:
        sys.meta_path.insert(0, ImportHook())


def uninstall() -> None:
    """Remove every ``ImportHook`` from ``sys.meta_path``."""
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, ImportHook)]


def write_pth(site_packages: str | os.PathLike) -> str:
    """Write ``PTH_NAME`` (atomically; the same bytes each time) into ``site_packages``; return its path."""
    from initcore.files import atomic_write

    path = os.path.join(site_packages, PTH_NAME)
    atomic_write(path, PTH_LINE.encode())
    return path


__all__ = ["PTH_LINE", "PTH_NAME", "SHIMMED_SCHEMAS", "ImportHook", "install", "installed", "torchvision_ops_shim",
           "torchvision_extension_loads", "uninstall", "write_pth"]
