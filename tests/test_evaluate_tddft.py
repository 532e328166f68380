"""TDDFT with dixc functionals from the orbital Hessian (TDA and Casida via batched HVPs).

* Torch PBE vs PySCF's native (libxc) PBE TDA and TDDFT on water, same orbitals and grid:
  agreement to 1e-6 eV (measured ~2e-9 eV).
* A learned meta-GGA (tiny perturbed MLP): Davidson vs dense diagonalisation of the explicitly
  built A + B and A matrices, and vs PySCF's TDA/TDDFT driven through dixc's PySCF plugin.
* The Davidson solver itself on a matrix with degenerate eigenvalues and forced restarts.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from pyscf import dft

from dixc import functionals, pyscf_plugin
from dixc.context import MolContext
from dixc.evaluate.tddft import HARTREE2EV, LinearResponse, davidson, excitations
from dixc.molecules import mole

N_STATES = 5


@functools.cache
def _water_pbe():
    mol = mole("water", "def2-svp")
    mf = dft.RKS(mol, xc="PBE")
    mf.grids.level = 1
    mf.conv_tol, mf.conv_tol_grad, mf.verbose = 1e-13, 1e-9, 0
    mf.kernel()
    assert mf.converged
    ctx = MolContext.from_mol(mol, grids=mf.grids, coulomb="exact")
    return mol, mf, ctx


def _tiny_mlp() -> functionals.XCFunctional:
    torch.manual_seed(7)
    f = functionals.create("mlp_mgga", hidden=8, depth=2)
    with torch.no_grad():
        for p in f.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return f


@pytest.mark.parametrize("method", ["tda", "rpa"])
def test_torch_pbe_equals_pyscf_native_tddft(method):
    _, mf, ctx = _water_pbe()
    res = excitations(ctx, functionals.create("pbe"), torch.as_tensor(mf.mo_coeff), N_STATES,
                      methods=(method,), tol=1e-8)[method]  # fmt: skip
    td = mf.TDA() if method == "tda" else mf.TDDFT()
    td.nstates, td.conv_tol, td.max_cycle, td.verbose = N_STATES, 1e-9, 200, 0
    td.kernel()
    assert bool(res.converged.all())
    err = np.abs(res.e.numpy() - td.e) * HARTREE2EV
    assert err.max() < 1e-6, err
    # and against the dense PySCF matrices (get_ab: libxc kernel, no Davidson on either side)
    a, b = mf.TDDFT().get_ab()
    n = a.shape[0] * a.shape[1]
    a, b = a.reshape(n, n), b.reshape(n, n)
    if method == "tda":
        exact = np.linalg.eigvalsh(a)[:N_STATES]
    else:
        w = np.linalg.eigvals(np.block([[a, b], [-b, -a]])).real
        exact = np.sort(w[w > 0])[:N_STATES]
    err = np.abs(res.e.numpy() - exact) * HARTREE2EV
    assert err.max() < 1e-6, err
    assert res.e_ev.min() > 5.0  # water's lowest singlet (~7.3 eV with PBE/def2-SVP)


def _dense(lr: LinearResponse) -> tuple[np.ndarray, np.ndarray]:
    nvir, nocc = lr.shape
    eye = torch.eye(nvir * nocc, dtype=torch.float64).reshape(-1, nvir, nocc)
    apb = lr.apb(eye).reshape(nvir * nocc, -1).numpy()
    amat = lr.a(eye).reshape(nvir * nocc, -1).numpy()
    return apb, amat


def test_learned_mgga_davidson_vs_dense_and_pyscf_plugin():
    mol, _, _ = _water_pbe()
    f = _tiny_mlp()
    mf = pyscf_plugin.RKS(mol, f, conv_tol=1e-13, conv_tol_grad=1e-9, verbose=0)
    mf.grids.level = 1
    mf.kernel()
    assert mf.converged
    ctx = MolContext.from_mol(mol, grids=mf.grids, coulomb="exact")
    lr = LinearResponse(ctx, f, torch.as_tensor(mf.mo_coeff))
    assert lr.gradient_norm < 1e-7
    apb, amat = _dense(lr)
    # the orbital Hessian is symmetric; A + B and A share the orbital-energy diagonal structure
    assert np.abs(apb - apb.T).max() < 1e-12 * np.abs(apb).max()
    delta = lr.delta.reshape(-1).numpy()
    assert np.abs(2 * amat - apb - np.diag(delta)).max() < 1e-14
    casida = np.sqrt(delta)[:, None] * apb * np.sqrt(delta)[None, :]
    w_rpa = np.sqrt(np.linalg.eigvalsh(casida)[:N_STATES])
    w_tda = np.linalg.eigvalsh(amat)[:N_STATES]
    res = {m: lr.solve(N_STATES, m, tol=1e-8) for m in ("tda", "rpa")}
    assert np.abs(res["tda"].e.numpy() - w_tda).max() * HARTREE2EV < 1e-9
    assert np.abs(res["rpa"].e.numpy() - w_rpa).max() * HARTREE2EV < 1e-9
    # X + Y normalisation: (X + Y) . (X - Y) = 1 with X - Y = omega Delta^-1 (X + Y)
    xy = res["rpa"].xy.reshape(N_STATES, -1).numpy()
    norm = np.einsum("ka,ka,k->k", xy, xy / delta, res["rpa"].e.numpy())
    assert np.abs(norm - 1).max() < 1e-10
    # PySCF's own TDA / TDDFT on the dixc functional through the plugin (f_xc from dixc)
    for method, td in (("tda", mf.TDA()), ("rpa", mf.TDDFT())):
        td.nstates, td.conv_tol, td.verbose = N_STATES, 1e-10, 0
        td.kernel()
        assert np.abs(res[method].e.numpy() - td.e).max() * HARTREE2EV < 1e-6


def test_davidson_degenerate_with_restarts():
    g = torch.Generator().manual_seed(3)
    n = 60
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=g))
    w = torch.linspace(1.0, 5.0, n, dtype=torch.float64)
    w[1] = w[2] = w[0] + 0.05  # a doubly degenerate second level
    a = q @ torch.diag(w) @ q.T + 0.3 * torch.diag(torch.linspace(0, 1, n, dtype=torch.float64))
    ref = torch.linalg.eigvalsh(a)[:4]
    calls = []

    def mv(v):
        calls.append(v.shape[0])
        return v @ a  # a is symmetric: rows of v @ a = (a v_i)^T

    res = davidson(mv, a.diagonal(), 4, tol=1e-10, max_space=12, max_cycle=300)
    assert bool(res.converged.all())
    assert (res.e - ref).abs().max() < 1e-12
    assert (res.x @ res.x.T - torch.eye(4, dtype=torch.float64)).abs().max() < 1e-10
    assert max(calls) <= 12  # batched block products, never the whole matrix at once


def test_linear_response_refuses_non_aufbau_orbitals():
    mol, mf, ctx = _water_pbe()
    c = torch.as_tensor(mf.mo_coeff).clone()
    nocc = mol.nelectron // 2
    c[:, [nocc - 1, nocc]] = c[:, [nocc, nocc - 1]]  # occupy the LUMO instead of the HOMO
    with pytest.raises(ValueError, match="aufbau"):
        LinearResponse(ctx, functionals.create("pbe"), c)
