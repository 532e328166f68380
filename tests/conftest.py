"""Shared fixtures and hooks: devices (cpu, cuda when built), fixed seeds, TF32 off.

The suite imports the *installed* ``dixc`` (the source tree's ``python/dixc`` has no compiled
library); nothing here touches ``sys.path``. Cached PySCF systems live in ``_util.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dixc

# TF32 would silently lower GEMM precision on Ampere+ GPUs: every tolerance here assumes fp32/fp64.
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False

HAS_CUDA = torch.cuda.is_available() and dixc.ops.has_cuda()
_NO_CUDA = "needs a CUDA device and dixc built with CUDA kernels"

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason=_NO_CUDA)]
    ),
]


def pytest_configure(config):
    # torch.library.opcheck imports torch.testing internals that still use torch.jit.script_method.
    config.addinivalue_line(
        "filterwarnings", "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
    )


def pytest_collection_modifyitems(config, items):
    """Skips every ``gpu``-marked test when CUDA (or dixc's CUDA kernels) is missing."""
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason=_NO_CUDA)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """``cpu`` always; ``cuda`` (marked ``gpu``) only when available and built."""
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _seed():
    """Fixed seeds for every test (torch and numpy)."""
    torch.manual_seed(1234)
    np.random.seed(1234)  # noqa: NPY002  (the legacy global RNG, for any library using it)
    yield
