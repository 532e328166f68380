"""A PySCF ``NumInt`` whose density, V_xc and f_xc grid work runs in dixc's kernels.

XC energy densities and their derivatives still come from libxc (PySCF's ``eval_xc_eff``); the
AO evaluation, density features and V_xc contraction -- the grid work that dominates a semilocal
SCF and every linear response (TDDFT, CPHF, orbital-Hessian products) -- run in dixc's fused,
screened ops. The response densities of one call (all Davidson trial vectors, all probes) share
one pass over the AOs. Any PySCF RKS object (LDA, GGA, meta-GGA, or the semilocal part of a
hybrid such as B3LYP) can use it::

    mf = pyscf.dft.RKS(mol, xc="B3LYP")
    mf._numint = dixc.pyscf_numint.DixcNumInt()
    mf.kernel()
    mf.TDDFT().kernel()       # f_xc products through dixc as well

Closed-shell (restricted) work runs in dixc: ``nr_rks``, ``cache_xc_kernel`` /
``cache_xc_kernel1`` (spin 0, and spin 1 of a restricted or unrestricted density, as PySCF's
singlet/triplet response asks for), ``nr_rks_fxc`` (and ``nr_rks_fxc_st`` through it).
Unrestricted ``nr_uks*``, density-Laplacian meta-GGAs and complex matrices fall back to PySCF.
"""

from __future__ import annotations

import numpy as np
import torch
from pyscf.dft import numint

from dixc import ops
from dixc.basis import Basis, pack_basis

_XCTYPES = ("LDA", "GGA", "MGGA")


class DixcNumInt(numint.NumInt):
    """``pyscf.dft.numint.NumInt`` with restricted V_xc / f_xc grid work in dixc's kernels.

    float64, CPU tensors. The packed basis and the grid as tensors are cached per (mol, grid).
    """

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

    # ---- linear response: f_xc

    def _dixc_xctype(self, xc_code) -> str | None:
        """The xctype when dixc does this functional's grid work, else None (PySCF does)."""
        xctype = self._xc_type(xc_code)
        if xctype not in _XCTYPES or (xctype == "MGGA" and numint.MGGA_DENSITY_LAPL):
            return None
        return xctype

    def _rho(self, mol, grids, dms: np.ndarray, xctype: str) -> np.ndarray:
        """``(B, nfeat, ngrid)`` features of B matrices (their symmetric parts), one AO pass."""
        basis, coords, _ = self._prepare(mol, grids)
        d = torch.as_tensor(np.ascontiguousarray(dms, dtype=np.float64))
        return ops.eval_rho_fused(basis, coords, d, xctype).numpy()

    def _kernel_from_dms(
        self, mol, grids, xc_code, xctype, dms: np.ndarray, spin: int, unrestricted: bool
    ):
        rho = self._rho(mol, grids, dms, xctype)  # (1 or 2, nfeat, ngrid)
        if xctype == "LDA":
            rho = rho[:, 0]
        if unrestricted:
            rho = (rho[0], rho[1])
        else:
            rho = rho[0]
            if spin == 1:  # restricted density seen as two equal spin densities (nr_rks_fxc_st)
                rho = np.repeat(rho[np.newaxis] * 0.5, 2, axis=0)
        vxc, fxc = self.eval_xc_eff(xc_code, rho, deriv=2, xctype=xctype, spin=spin)[1:3]
        return rho, vxc, fxc

    def cache_xc_kernel(self, mol, grids, xc_code, mo_coeff, mo_occ, spin=0, max_memory=2000):
        """rho, v_xc and f_xc at the density of ``mo_coeff`` / ``mo_occ``, as PySCF returns them.

        ``mo_coeff`` (nao, nmo) is restricted; a pair of them (spin=1) unrestricted.
        """
        xctype = self._dixc_xctype(xc_code)
        unrestricted = np.asarray(mo_coeff[0]).ndim == 2
        if xctype is None:
            return super().cache_xc_kernel(mol, grids, xc_code, mo_coeff, mo_occ, spin, max_memory)
        if unrestricted:
            dms = np.stack([(c * o) @ c.T for c, o in zip(mo_coeff, mo_occ, strict=True)])
        else:
            c = np.asarray(mo_coeff)
            dms = ((c * np.asarray(mo_occ)) @ c.T)[None]
        return self._kernel_from_dms(mol, grids, xc_code, xctype, dms, spin, unrestricted)

    def cache_xc_kernel1(self, mol, grids, xc_code, dm, spin=0, max_memory=2000):
        """rho, v_xc, f_xc at the symmetric density matrix ``dm`` ((nao, nao) or (2, nao, nao))."""
        xctype = self._dixc_xctype(xc_code)
        dm = np.asarray(dm)
        if xctype is None or dm.dtype != np.float64:
            return super().cache_xc_kernel1(mol, grids, xc_code, dm, spin, max_memory)
        unrestricted = dm.ndim == 3
        dms = dm if unrestricted else dm[None]
        return self._kernel_from_dms(mol, grids, xc_code, xctype, dms, spin, unrestricted)

    def nr_rks_fxc(
        self, mol, grids, xc_code, dm0=None, dms=None, relativity=0, hermi=0, rho0=None,
        vxc=None, fxc=None, max_memory=2000, verbose=None,
    ):  # fmt: skip
        """f_xc[D1]: the XC kernel contracted with response densities, as ``NumInt.nr_rks_fxc``.

        Args:
            dm0: (nao, nao) ground-state density (used only when ``fxc`` is None).
            dms: (nao, nao) or (..., nao, nao) response densities; only their symmetric parts
                enter. All of them share one pass over the AOs per chunk (chunks bounded by
                ``max_memory`` MB).
            fxc: f_xc on the grid from ``cache_xc_kernel`` (computed from dm0 when None).

        Returns:
            (nao, nao) or (nset, nao, nao) symmetric matrices.
        """
        xctype = self._xc_type(xc_code)
        arr = np.asarray(dms)
        if xctype == "HF":
            out = np.zeros(arr.reshape(-1, *arr.shape[-2:]).shape, dtype=arr.dtype)
            return out[0] if arr.ndim == 2 else out
        if self._dixc_xctype(xc_code) is None or arr.dtype != np.float64:
            return super().nr_rks_fxc(
                mol, grids, xc_code, dm0, dms, relativity, hermi, rho0, vxc, fxc, max_memory,
                verbose,
            )  # fmt: skip
        if fxc is None:
            fxc = self.cache_xc_kernel1(mol, grids, xc_code, dm0, spin=0, max_memory=max_memory)[2]
        basis, coords, weights = self._prepare(mol, grids)
        nao = arr.shape[-1]
        d = arr.reshape(-1, nao, nao)
        fxc = np.asarray(fxc)  # (nfeat, nfeat, ngrid)
        nfeat, ngrid = fxc.shape[0], fxc.shape[-1]
        w = weights.numpy()
        # rho1 and wv of a chunk: 2 * nfeat * ngrid doubles per matrix
        chunk = max(1, int(max_memory * 1e6 / 2 / (16 * nfeat * ngrid)))
        vmat = np.empty((d.shape[0], nao, nao))
        for p0 in range(0, d.shape[0], chunk):
            rho1 = self._rho(mol, grids, d[p0 : p0 + chunk], xctype)  # (b, nfeat, ngrid)
            # wv[b, x, g] = sum_y fxc[x, y, g] rho1[b, y, g] w[g]
            wv = np.einsum("xyg,byg->bxg", fxc, rho1)
            wv *= w
            vmat[p0 : p0 + chunk] = ops.contract_vxc_fused(
                basis, coords, torch.from_numpy(wv), xctype
            ).numpy()
        return vmat[0] if arr.ndim == 2 else vmat
