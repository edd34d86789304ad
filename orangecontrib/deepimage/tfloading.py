"""Load TensorFlow so that it can share the process with QtWebEngine.

Why this exists
---------------
Orange's report and help windows are QtWebEngine (Chromium) views. When one
is shown, Qt creates an OpenGL context; with Mesa (software rendering, and
the AMD and Intel drivers) that loads the system's ``libLLVM-N.so`` with
``RTLD_GLOBAL``. TensorFlow's own native libraries
(``libtensorflow_framework.so.2``, ``libtensorflow_cc.so.2``) contain another,
newer LLVM (for XLA and MLIR) and export its symbols under the same names.
ELF symbol lookup searches the process' global scope first, so:

* report window first, TensorFlow second: TensorFlow's static initialisers
  bind to Mesa's LLVM and crash while TensorFlow loads (a segfault in
  ``_GLOBAL__sub_I_DebugInfoMetadata.cpp``);
* TensorFlow first, report window second: TensorFlow loads
  ``_pywrap_tensorflow_internal`` with ``RTLD_GLOBAL`` (for custom op
  libraries), which puts its LLVM into the global scope; Mesa's LLVM then
  binds to TensorFlow's, and the process aborts at exit
  (``free(): invalid pointer`` in ``llvm::cl::opt<...>::~opt``).

Both were found with gdb on a ten-line reproduction (a ``QWebEngineView``
and a matrix product).

The fix
-------
Both halves are needed, and neither touches Qt:

* TensorFlow's two native libraries are loaded first with
  ``RTLD_DEEPBIND`` (glibc), so that their references resolve inside
  themselves before the global scope: a Mesa LLVM loaded earlier is not
  seen;
* the small module through which TensorFlow asks for ``RTLD_GLOBAL`` is
  reported missing, which TensorFlow itself handles by loading its
  extension with ``RTLD_LOCAL``: a Mesa LLVM loaded later does not see
  TensorFlow's. (``RTLD_GLOBAL`` only serves custom op libraries built
  without linking ``libtensorflow_framework``.)

:func:`install` puts a one-shot import hook in place when the add-on is
imported (as the canvas does at start), so the fix applies to whichever code
imports TensorFlow first, in any thread, without loading TensorFlow before
it is needed. It does nothing on systems other than Linux with glibc, and
nothing once TensorFlow is already imported (then it is too late; the
state says so).
"""
import ctypes
import importlib.abc
import importlib.machinery
import logging
import os
import sys
import threading
from typing import List

__all__ = ["install", "uninstall", "status"]

log = logging.getLogger(__name__)

#: TensorFlow's module that switches its extension to RTLD_GLOBAL.
GLOBAL_FLAGS_MODULE = "tensorflow.python.pywrap_dlopen_global_flags"
#: TensorFlow's native libraries that carry its LLVM, in load order.
NATIVE_LIBRARIES = ("libtensorflow_framework.so.2", "libtensorflow_cc.so.2")

_lock = threading.Lock()
_loaded: List[ctypes.CDLL] = []   # kept so that the handles stay open
_state = {"installed": False, "preloaded": [], "global_flags_blocked": False,
          "too_late": False}


def _supported() -> bool:
    return sys.platform.startswith("linux") and hasattr(os, "RTLD_DEEPBIND")


def _preload_native_libraries():
    """Load TensorFlow's native libraries with RTLD_DEEPBIND, once."""
    # PathFinder directly, so that this finder is not asked again.
    spec = importlib.machinery.PathFinder.find_spec("tensorflow")
    if spec is None or not spec.submodule_search_locations:
        return
    root = list(spec.submodule_search_locations)[0]
    mode = os.RTLD_NOW | os.RTLD_LOCAL | os.RTLD_DEEPBIND
    for name in NATIVE_LIBRARIES:
        path = os.path.join(root, name)
        if not os.path.exists(path):
            continue
        try:
            _loaded.append(ctypes.CDLL(path, mode=mode))
        except OSError as ex:
            # TensorFlow's own import will then load (or fail to load) the
            # library as usual; only the protection is missing.
            log.warning("Could not preload %s: %s", path, ex)
            return
        _state["preloaded"].append(path)


class _TensorFlowLoader(importlib.abc.MetaPathFinder):
    """Acts on the first import of TensorFlow and then removes itself."""

    def __init__(self):
        self.preloaded = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "tensorflow" and not self.preloaded:
            with _lock:
                if not self.preloaded:
                    self.preloaded = True
                    _preload_native_libraries()
        elif fullname == GLOBAL_FLAGS_MODULE:
            _state["global_flags_blocked"] = True
            uninstall()
            # TensorFlow catches this and loads its extension RTLD_LOCAL.
            raise ModuleNotFoundError(
                f"{fullname} is withheld so that TensorFlow loads with "
                "RTLD_LOCAL", name=fullname)
        return None


_finder = _TensorFlowLoader()


def install() -> bool:
    """Arrange for TensorFlow to load safely beside QtWebEngine.

    Returns True if the hook is in place (or TensorFlow was already loaded
    through it), False where it does not apply or comes too late.
    """
    if not _supported():
        return False
    if "tensorflow" in sys.modules and not _finder.preloaded:
        _state["too_late"] = True
        log.info("TensorFlow was imported before the add-on; it is not "
                 "protected against QtWebEngine's LLVM.")
        return False
    if _finder.preloaded and _state["global_flags_blocked"]:
        return True
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)
    _state["installed"] = True
    return True


def uninstall():
    """Remove the import hook (TensorFlow, once loaded, stays as it is)."""
    try:
        sys.meta_path.remove(_finder)
    except ValueError:
        pass


def status() -> dict:
    """What was done: ``installed``, ``preloaded`` (library paths),
    ``global_flags_blocked`` and ``too_late``."""
    return {key: list(value) if isinstance(value, list) else value
            for key, value in _state.items()}
