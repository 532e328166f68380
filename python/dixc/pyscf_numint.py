"""A PySCF ``NumInt`` whose density and V_xc grid work runs in dixc's kernels.

XC energy densities and their derivatives still come from libxc (PySCF's ``eval_xc_eff``); the
AO evaluation, density features and V_xc contraction -- the grid work that dominates a semilocal
SCF -- run in dixc's fused, screened ops. Any PySCF RKS object (LDA, GGA, meta-GGA, or the
semilocal part of a hybrid) can use it::

    mf = pyscf.dft.RKS(mol, xc="PBE")
    mf._numint = dixc.pyscf_numint.DixcNumInt()
    mf.kernel()
"""

from __future__ import annotations

import numpy as np
import torch
from pyscf.dft import numint

from dixc import ops
from dixc.basis import Basis, pack_basis


class DixcNumInt(numint.NumInt):
    """``pyscf.dft.numint.NumInt`` with ``nr_rks`` computed by dixc's kernels (float64, CPU)."""

    def __init__(self) -> None:
        super().__init__()
        self._cache_key: tuple | None = None
        self._cache: tuple[Basis, torch.Tensor, torch.Tensor] | None = None

    def _prepare(self, mol, grids) -> tuple[Basis, torch.Tensor, torch.Tensor]:
        if grids.coords is None:
            grids.build()
        key = (
            id(mol),
            mol._bas.tobytes(),
            mol._env.tobytes(),
            id(grids.coords),
            grids.coords.shape,
        )
        if key != self._cache_key:
            self._cache = (
                pack_basis(mol),
                torch.as_tensor(np.ascontiguousarray(grids.coords), dtype=torch.float64),
                torch.as_tensor(np.ascontiguousarray(grids.weights), dtype=torch.float64),
            )
            self._cache_key = key
        assert self._cache is not None
        return self._cache

    def nr_rks(
        self, mol, grids, xc_code, dms, relativity=0, hermi=1, max_memory=2000, verbose=None
    ):
        """Restricted XC electron count, energy and V_xc, as ``NumInt.nr_rks`` returns them."""
        xctype = self._xc_type(xc_code)
        dm = np.asarray(dms)
        if xctype == "HF":
            zeros = np.zeros(dm.shape[:-2]) if dm.ndim == 3 else 0.0
            return zeros, zeros, np.zeros_like(dm)
        if xctype not in ("LDA", "GGA", "MGGA"):
            raise NotImplementedError(f"dixc.DixcNumInt: xctype {xctype} of {xc_code!r}")
        basis, coords, weights = self._prepare(mol, grids)
        d = torch.as_tensor(dm, dtype=torch.float64)
        batched = d.dim() == 3
        d = d if batched else d[None]
        rho = ops.eval_rho_fused(basis, coords, d, xctype).numpy()
        w = weights.numpy()
        nset = d.shape[0]
        nelec, excsum = np.zeros(nset), np.zeros(nset)
        wv = np.empty_like(rho)
        for i in range(nset):
            r = rho[i, 0] if xctype == "LDA" else rho[i]
            exc, vxc = self.eval_xc_eff(xc_code, r, deriv=1, xctype=xctype)[:2]
            den = rho[i, 0] * w
            nelec[i] = den.sum()
            excsum[i] = np.dot(den, exc)
            wv[i] = np.asarray(vxc).reshape(wv[i].shape) * w
        vmat = ops.contract_vxc_fused(basis, coords, torch.from_numpy(wv), xctype).numpy()
        if not batched:
            return nelec[0], excsum[0], vmat[0]
        return nelec, excsum, vmat
