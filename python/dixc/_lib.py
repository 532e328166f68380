"""Locates and loads the compiled op library (``_dixc_ops*.so``) into ``torch.ops.dixc``."""

from __future__ import annotations

import glob
import os

import torch

_LOADED: str | None = None


def load_library() -> str:
    """Loads the op library once; returns its path.

    The library sits next to this file in an installed dixc. For development from the source tree
    (``PYTHONPATH=python``), ``DIXC_OPS_LIBRARY`` may name a built ``_dixc_ops*.so`` instead.
    """
    global _LOADED
    if _LOADED is not None:
        return _LOADED
    here = os.path.dirname(os.path.abspath(__file__))
    override = os.environ.get("DIXC_OPS_LIBRARY")
    if override and not os.path.isfile(override):
        raise ImportError(f"dixc: DIXC_OPS_LIBRARY={override!r} is not a file")
    candidates = [override] if override else sorted(glob.glob(os.path.join(here, "_dixc_ops*.so")))
    if not candidates:
        raise ImportError(
            f"dixc: the compiled op library _dixc_ops*.so is missing from {here}. "
            "Install the package with `pip install --no-build-isolation .` from the repository "
            "root after `pip install torch==2.13.0` (or run `make test`), rather than importing "
            "the source tree."
        )
    try:
        torch.ops.load_library(candidates[0])
    except OSError as err:
        raise ImportError(
            f"dixc: cannot load {candidates[0]} into torch {torch.__version__}: {err}. "
            "It was probably built against another torch; rebuild with "
            "`pip install --no-build-isolation --force-reinstall --no-deps .`."
        ) from err
    _LOADED = candidates[0]
    return _LOADED
