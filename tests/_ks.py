"""Cached PySCF reference calculations shared by the Kohn-Sham engine tests."""

from __future__ import annotations

import functools

import numpy as np
from pyscf import dft

import dixc.functionals
from dixc.context import MolContext
from dixc.molecules import mole

AUX = "def2-universal-jkfit"


@functools.cache
def pyscf_pbe(name: str, level: int):
    """PySCF PBE/def2-SVP with density fitting, converged tightly, and the matching context."""
    mol = mole(name, "def2-svp")
    mf = dft.RKS(mol, xc="PBE").density_fit(auxbasis=AUX)
    mf.grids.level = level
    mf.conv_tol = 1e-11
    mf.verbose = 0
    mf.kernel()
    assert mf.converged
    return mol, mf, MolContext.from_mol(mol, grids=mf.grids, auxbasis=AUX)


def rel(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


class AsNonlocal(dixc.functionals.XCFunctional):
    """Wraps a local functional but declares it nonlocal (exercises the generic VJP paths)."""

    is_local = False

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.xctype = inner.xctype

    def energy_density(self, rho, grid=None):
        return self.inner.energy_density(rho, grid)
