"""dixc: Derivative-Informed XC functionals.

Exact C++/CUDA grid kernels (AO evaluation, density features, V_xc contraction) registered as
Torch ops in the ``torch.ops.dixc`` namespace, differentiable to second order, and the Python
layer built on them.
"""

from dixc._lib import load_library as _load_library

_load_library()

from dixc import ops  # noqa: E402  (registers fakes and autograd for the ops just loaded)
from dixc.basis import Basis, pack_basis  # noqa: E402
from dixc.grid import Grid, make_grid  # noqa: E402

__version__ = "0.1.0"

__all__ = ["Basis", "Grid", "__version__", "make_grid", "ops", "pack_basis"]
