"""Parity tier: dixc ops vs PySCF numint + libxc on the same grid points, float64.

Every comparison is max |dixc - PySCF| / max |PySCF| <= 1e-10, per AO component / density feature
(rho, d_x rho, d_y rho, d_z rho, tau are each measured against their own scale) and per matrix for
V_xc. The larger systems integrate on a random subset of their level-1 grid (PySCF's ``Grids`` is
cut to the same points and weights), which keeps the per-point checks intact and the suite fast.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pyscf import dft, gto
from pyscf.dft import numint

import dixc
from _util import rel_err, rel_err_rows, system
from dixc.ops import contract_vxc, contract_vxc_fused, eval_ao, eval_rho, eval_rho_fused

TOL = 1e-10
XCTYPES = ["LDA", "GGA", "MGGA"]
# (molecule, basis, cartesian, grid level, grid points kept or None for the whole grid)
CASES = [
    ("water", "def2-svp", False, 3, None),
    ("water", "def2-tzvp", True, 2, None),
    ("water", "def2-qzvp", False, 1, None),  # g functions
    ("qm9_acetamide", "def2-svp", True, 1, None),  # whole level-1 grid
    ("qm9_acetamide", "def2-tzvp", False, 1, 12000),  # f functions, N and O
    ("benzene", "def2-svp", False, 1, 12000),
    ("benzene", "def2-tzvp", True, 1, 6000),
]
# PySCF functionals covering each xctype of contract_vxc.
FUNCTIONALS = {"LDA": "LDA,VWN", "GGA": "PBE", "MGGA": "TPSS"}


def _case_id(c) -> str:
    name, basis, cart, level, npts = c
    return f"{name}-{basis}-{'cart' if cart else 'sph'}-L{level}" + (f"-{npts}" if npts else "")


class Case:
    """One system with dixc's and PySCF's deriv-1 AO arrays on the same points."""

    def __init__(self, params):
        self.sys = system(*params)
        self.coords = self.sys.grid.coords
        self.ao = eval_ao(self.sys.basis, self.coords, 1)
        self.ao_ref = self.sys.ao_pyscf(1)  # (4, nao, ngrid), dixc layout
        self.ao_ref_pyscf = self.ao_ref.transpose(0, 2, 1)  # PySCF layout view

    def dm(self, kind: str) -> np.ndarray:
        return {"guess": self.sys.dm_guess, "sym": self.sys.dm_sym, "gen": self.sys.dm_gen}[kind]

    def rho_ref(self, dm: np.ndarray, xctype: str, hermi: int) -> np.ndarray:
        ao = self.ao_ref_pyscf[0] if xctype == "LDA" else self.ao_ref_pyscf  # PySCF's LDA: 2-D
        ref = numint.eval_rho(self.sys.mol, ao, dm, xctype=xctype, hermi=hermi, with_lapl=False)
        return ref.reshape(-1, self.coords.shape[0])


@pytest.fixture(scope="module", params=CASES, ids=_case_id)
def case(request) -> Case:
    return Case(request.param)


@pytest.fixture(scope="module")
def water_scf():
    """A converged PBE density of water (cheap grid for the SCF; parity on a level-3 grid)."""
    s = system("water", "def2-svp", False, 3)
    mf = dft.RKS(s.mol, xc="PBE")
    mf.grids.level = 1
    mf.conv_tol = 1e-9
    mf.kernel()
    assert mf.converged
    return s, np.asarray(mf.make_rdm1())


# --- AO values -----------------------------------------------------------------------------------
@pytest.mark.parametrize("deriv", [0, 1, 2])
def test_eval_ao_matches_pyscf(case, deriv):
    s = case.sys
    if deriv == 1:
        ao, ref = case.ao, case.ao_ref
    else:
        # Second derivatives on the first 3000 points (10 components of large arrays otherwise).
        pts = s.grid.coords[:3000] if deriv == 2 else s.grid.coords
        ao = eval_ao(s.basis, pts, deriv)
        ref = s.ao_pyscf(deriv, pts.numpy())
    assert ao.shape == (1 if deriv == 0 else 4 if deriv == 1 else 10, s.nao, ao.shape[2])
    assert ao.dtype == torch.float64
    errs = rel_err_rows(ao, ref)
    assert max(errs) <= TOL, errs


# --- densities -----------------------------------------------------------------------------------
@pytest.mark.parametrize("fused", [False, True], ids=["dense", "fused"])
@pytest.mark.parametrize("dm_kind", ["guess", "sym", "gen"])
@pytest.mark.parametrize("xctype", XCTYPES)
def test_eval_rho_matches_pyscf(case, xctype, dm_kind, fused):
    dm = case.dm(dm_kind)
    hermi = 0 if dm_kind == "gen" else 1
    ref = case.rho_ref(dm, xctype, hermi)
    dmt = torch.from_numpy(dm)
    if fused:
        rho = eval_rho_fused(case.sys.basis, case.coords, dmt, xctype)
    else:
        rho = eval_rho(case.ao, dmt, xctype)
    assert rho.shape == ref.shape
    errs = rel_err_rows(rho, ref)  # per feature: rho, grad rho (x, y, z), tau
    assert max(errs) <= TOL, dict(zip(["rho", "dx", "dy", "dz", "tau"], errs, strict=False))


@pytest.mark.parametrize("fused", [False, True], ids=["dense", "fused"])
def test_eval_rho_batched_matches_pyscf(case, fused):
    dms = np.stack([case.dm("guess"), case.dm("sym"), case.dm("gen")])
    ref = np.stack([case.rho_ref(d, "MGGA", 0) for d in dms])
    dmt = torch.from_numpy(dms)
    if fused:
        rho = eval_rho_fused(case.sys.basis, case.coords, dmt, "MGGA")
    else:
        rho = eval_rho(case.ao, dmt, "MGGA")
    assert rho.shape == (3, 5, case.coords.shape[0])
    errs = [max(rel_err_rows(r, f)) for r, f in zip(rho, ref, strict=True)]
    assert max(errs) <= TOL, errs


def test_tau_is_half_sum_grad_squared(case):
    """tau = 1/2 sum_i n_i |grad phi_i|^2 (libxc convention), with D = C n C^T."""
    dm = case.dm("guess")
    n, c = np.linalg.eigh(dm)
    grad_mo = np.einsum("xig,ia->xag", case.ao_ref[1:4], c)
    tau_ref = 0.5 * np.einsum("a,xag->g", n, grad_mo**2)
    tau = eval_rho(case.ao, torch.from_numpy(dm), "MGGA")[4]
    assert rel_err(tau, tau_ref) <= TOL


# --- V_xc ----------------------------------------------------------------------------------------
def _vxc_parity(s, ao_pyscf, dm, xc, fused, ao=None):
    ni = numint.NumInt()
    xctype = ni._xc_type(xc)
    ao_p = ao_pyscf[0] if xctype == "LDA" else ao_pyscf
    rho = numint.eval_rho(s.mol, ao_p, dm, xctype=xctype, hermi=1, with_lapl=False)
    vxc = ni.eval_xc_eff(xc, rho, deriv=1)[1]
    wv = torch.from_numpy(np.ascontiguousarray(vxc * s.pgrids.weights).reshape(-1, rho.shape[-1]))
    v_ref = ni.nr_rks(s.mol, s.pgrids, xc, dm)[2]
    if fused:
        v = contract_vxc_fused(s.basis, s.grid.coords, wv, xctype)
    else:
        v = contract_vxc(ao, wv, xctype)
    assert v.shape == (s.nao, s.nao)
    return rel_err(v, v_ref)


@pytest.mark.parametrize("fused", [False, True], ids=["dense", "fused"])
@pytest.mark.parametrize("xctype", XCTYPES)
def test_contract_vxc_matches_pyscf_nr_rks(case, xctype, fused):
    err = _vxc_parity(
        case.sys, case.ao_ref_pyscf, case.dm("guess"), FUNCTIONALS[xctype], fused, case.ao
    )
    assert err <= TOL


@pytest.mark.parametrize("fused", [False, True], ids=["dense", "fused"])
@pytest.mark.parametrize("xc", ["PBE", "TPSS"])
def test_vxc_converged_density_water(water_scf, xc, fused):
    s, dm = water_scf
    ao_pyscf = s.mol.eval_gto("GTOval_sph_deriv1", s.pgrids.coords)
    ao = eval_ao(s.basis, s.grid.coords, 1)
    assert _vxc_parity(s, ao_pyscf, dm, xc, fused, ao) <= TOL
    # and the density itself
    ref = numint.eval_rho(s.mol, ao_pyscf, dm, xctype="MGGA", hermi=1, with_lapl=False)
    rho = eval_rho(ao, torch.from_numpy(dm), "MGGA")
    assert max(rel_err_rows(rho, ref)) <= TOL
    # the density integrates to the 10 electrons of water
    nelec = float((rho[0] * s.grid.weights).sum())
    assert abs(nelec - 10.0) < 1e-4


# --- angular momenta beyond the standard sets (l = 5, 6) ------------------------------------------
@pytest.fixture(scope="module", params=[False, True], ids=["sph", "cart"])
def high_l(request):
    """Two centres carrying h (l = 5) and i (l = 6) shells, plus cc-pV5Z-like contractions."""
    basis = {
        "Ne": [[0, [3.0, 1.0]], [4, [1.3, 1.0]], [5, [0.9, 0.7], [2.5, 0.3]], [6, [1.1, 1.0]]],
        "H": [[0, [1.0, 1.0]], [6, [0.7, 1.0]]],
    }
    mol = gto.M(atom="Ne 0 0 0; H 0 0.3 1.4", basis=basis, cart=request.param, spin=1, verbose=0)
    assert int(mol._bas[:, 1].max()) == 6
    grid, _ = dixc.make_grid(mol, level=1)
    pts = grid.coords[:: max(1, grid.ngrid // 2000)].contiguous()
    return mol, dixc.pack_basis(mol), pts


@pytest.mark.parametrize("deriv", [0, 1, 2])
def test_eval_ao_high_l_matches_pyscf(high_l, deriv):
    mol, basis, pts = high_l
    kind = "cart" if mol.cart else "sph"
    ref = mol.eval_gto(f"GTOval_{kind}_deriv{deriv}", pts.numpy())
    ref = ref.reshape(-1, *ref.shape[-2:]).transpose(0, 2, 1)
    ao = eval_ao(basis, pts, deriv)
    errs = rel_err_rows(ao, ref)
    assert max(errs) <= TOL, errs


def test_eval_rho_high_l_matches_pyscf(high_l):
    mol, basis, pts = high_l
    kind = "cart" if mol.cart else "sph"
    ao_pyscf = mol.eval_gto(f"GTOval_{kind}_deriv1", pts.numpy())
    dm = np.random.default_rng(5).standard_normal((mol.nao, mol.nao))
    ref = numint.eval_rho(mol, ao_pyscf, dm, xctype="MGGA", hermi=0, with_lapl=False)
    dmt = torch.from_numpy(dm)
    rho = eval_rho(eval_ao(basis, pts, 1), dmt, "MGGA")
    rho_f = eval_rho_fused(basis, pts, dmt, "MGGA")
    assert max(rel_err_rows(rho, ref)) <= TOL
    assert max(rel_err_rows(rho_f, ref)) <= TOL
