"""DLPack interop with CuPy: CuPy arrays in, CuPy arrays out, no copies, on one stream.

A CuPy density matrix enters ``eval_rho`` through ``torch.from_dlpack`` and the features leave
through ``cupy.from_dlpack``; both directions share memory (equal data pointers). Everything runs
on one non-default stream, CuPy's, which torch uses through ``torch.cuda.ExternalStream``, so the
DLPack exchanges need no synchronisation. Values equal the CPU kernels' to 1e-11.
Skipped unless a GPU, dixc's CUDA kernels and CuPy are all present.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dixc
from _util import rel_err, system
from dixc.ops import eval_ao, eval_rho, eval_rho_fused

pytestmark = pytest.mark.gpu

TOL = 1e-11


@pytest.fixture(scope="module")
def cp():
    if not (torch.cuda.is_available() and dixc.ops.has_cuda()):
        pytest.skip("needs a CUDA device and dixc built with CUDA kernels")
    return pytest.importorskip("cupy")


@pytest.mark.parametrize("batched", [False, True], ids=["single", "batched"])
def test_cupy_dm_through_eval_rho_without_copies(cp, batched):
    s = system("water", "def2-svp", False, 1, 2000)
    dm_np = np.stack([s.dm_guess, s.dm_sym]) if batched else s.dm_guess
    ao_cpu = eval_ao(s.basis, s.grid.coords, 1)
    ref = eval_rho(ao_cpu, torch.from_numpy(dm_np), "MGGA")
    basis, coords = s.basis.to("cuda"), s.grid.coords.cuda()

    stream = cp.cuda.Stream(non_blocking=True)
    with stream, torch.cuda.stream(torch.cuda.ExternalStream(stream.ptr)):
        assert torch.cuda.current_stream().cuda_stream == stream.ptr
        dm_cp = cp.asarray(dm_np)
        dm_t = torch.from_dlpack(dm_cp)
        assert dm_t.is_cuda and dm_t.data_ptr() == dm_cp.data.ptr  # shared, not copied
        ao = eval_ao(basis, coords, 1)
        rho_t = eval_rho(ao, dm_t, "MGGA")
        rho_f_t = eval_rho_fused(basis, coords, dm_t, "MGGA")
        rho_cp = cp.from_dlpack(rho_t)
        rho_f_cp = cp.from_dlpack(rho_f_t)
        assert rho_cp.data.ptr == rho_t.data_ptr()  # shared, not copied
        assert rho_f_cp.data.ptr == rho_f_t.data_ptr()
        assert rho_cp.shape == tuple(ref.shape) and rho_cp.dtype == cp.float64
    stream.synchronize()
    assert rel_err(torch.from_numpy(cp.asnumpy(rho_cp)), ref) <= TOL
    assert rel_err(torch.from_numpy(cp.asnumpy(rho_f_cp)), ref) <= TOL
