"""python-augeas, loaded once per process: the binding and the one Augeas instance.

A leaf module (it imports nothing of virtdeb), so that what loading Augeas costs can
be measured alone (bench/doctor.py's floor).  The Editor (edit.py) is its user.
"""

from __future__ import annotations

import os
from typing import Any

LENS_DIR = os.path.join(os.path.dirname(__file__), "lenses")
LIBAUGEAS = "libaugeas.so.0"  # libaugeas0's soname
_AUG: Any = None


def _import_augeas() -> Any:
    """The augeas module, without the ``ldconfig -p`` of python-augeas 0.5 (bookworm).

    That version is one module over ctypes that finds libaugeas with
    ``ctypes.util.find_library("augeas")``, which runs ``/sbin/ldconfig -p`` (a fork
    and exec, milliseconds of every doctor run).  While it is imported, find_library
    answers the soname when the dynamic loader loads it by that name, and asks ldconfig
    only otherwise.  python-augeas 1.x (trixie and later: cffi, a package) is imported
    as it is.
    """
    from importlib.util import find_spec

    spec = find_spec("augeas")
    if spec is None or spec.origin is None or not spec.origin.endswith("augeas.py"):
        import augeas

        return augeas
    import ctypes
    import ctypes.util

    find_library = ctypes.util.find_library

    def soname_first(name: str) -> str | None:
        if name == "augeas":
            try:
                ctypes.CDLL(LIBAUGEAS)
                return LIBAUGEAS
            except OSError:
                pass
        return find_library(name)

    ctypes.util.find_library = soname_first
    try:
        import augeas
    finally:
        ctypes.util.find_library = find_library
    return augeas


def augeas_instance() -> Any:
    """One Augeas per process: no files loaded, lenses loaded on first use."""
    global _AUG
    if _AUG is None:
        augeas = _import_augeas()
        _AUG = augeas.Augeas(loadpath=LENS_DIR,
                             flags=augeas.Augeas.NO_LOAD | augeas.Augeas.NO_MODL_AUTOLOAD)
    return _AUG
