"""Structure of the ops and agreement with the pure-torch references.

References (``dixc.ops.*_ref``) at 1e-12 relative in float64 (1e-5 in float32); the adjoint
identity <eval_rho(D), w> = <D, contract_vxc(w)>; symmetry of V; linearity; batching; hermi; the
fused ops against the dense ones; Hessian-vector products (reverse over reverse through the op
pair) against central finite differences with h^2 error scaling.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _util import eval_ao_ref_by_shell, rel_err, rel_err_rows, sym, system
from dixc.ops import (
    contract_vxc,
    contract_vxc_fused,
    contract_vxc_ref,
    eval_ao,
    eval_ao_ref,
    eval_rho,
    eval_rho_fused,
    eval_rho_ref,
)

XCTYPES = ["LDA", "GGA", "MGGA"]
NFEAT = {"LDA": 1, "GGA": 4, "MGGA": 5}
TOL64, TOL32 = 1e-12, 1e-5

# Small systems for the (slow, autograd-based) AO reference: s/p/d, cartesian f, spherical g.
AO_SYSTEMS = {
    "water-svp-sph": ("water", "def2-svp", False, 1, 300),
    "water-tzvp-cart": ("water", "def2-tzvp", True, 1, 200),
    "water-qzvp-sph": ("water", "def2-qzvp", False, 1, 100),
}


def _points(s) -> torch.Tensor:
    """The system's grid points plus the nuclei themselves (r = 0 for the on-centre shells)."""
    nuclei = torch.as_tensor(s.mol.atom_coords(), dtype=torch.float64)
    return torch.cat([s.grid.coords, nuclei]).contiguous()


@pytest.fixture(scope="module")
def water():
    """Water / def2-SVP on 1000 points of its level-1 grid, deriv-1 AOs, dms and weights."""
    s = system("water", "def2-svp", False, 1, 1000)
    ao = eval_ao(s.basis, s.grid.coords, 1)
    gen = torch.Generator().manual_seed(7)
    dms = torch.randn(3, s.nao, s.nao, generator=gen, dtype=torch.float64)
    dms[0] = torch.from_numpy(s.dm_guess)
    wv = torch.randn(3, 5, s.grid.ngrid, generator=gen, dtype=torch.float64)
    return s, ao, dms, wv


def _on(device, *ts):
    return [t.to(device) for t in ts]


# --- references ----------------------------------------------------------------------------------
@pytest.mark.parametrize("deriv", [0, 1, 2])
@pytest.mark.parametrize("key", list(AO_SYSTEMS))
def test_eval_ao_matches_reference(key, deriv, device):
    s = system(*AO_SYSTEMS[key])
    pts = _points(s)
    ref = eval_ao_ref_by_shell(s.basis, pts, deriv)
    ao = eval_ao(s.basis.to(device), pts.to(device), deriv)
    assert ao.device.type == device.type and ao.dtype == torch.float64
    errs = rel_err_rows(ao, ref)
    assert max(errs) <= TOL64, errs


def test_eval_ao_reference_whole_basis():
    """The reference on a whole (tiny) basis, as the benchmarks call it."""
    s = system("water", "sto-3g", False, 1, 20)
    pts = _points(s)
    ref = eval_ao_ref(s.basis, pts, 2)
    assert ref.shape == (10, s.nao, pts.shape[0])
    assert max(rel_err_rows(eval_ao(s.basis, pts, 2), ref)) <= TOL64


@pytest.mark.parametrize("deriv", [0, 1, 2])
def test_eval_ao_float32(deriv, device):
    s = system(*AO_SYSTEMS["water-tzvp-cart"])
    pts32 = _points(s).float()
    ref = eval_ao_ref_by_shell(s.basis, pts32.double(), deriv)
    ao = eval_ao(s.basis.to(device), pts32.to(device), deriv)
    assert ao.dtype == torch.float32
    assert max(rel_err_rows(ao, ref)) <= TOL32


def test_eval_ao_derivative_orders_are_nested(water):
    """deriv=2 starts with the deriv=1 components, which start with the deriv=0 values."""
    s = water[0]
    a0, a1, a2 = (eval_ao(s.basis, s.grid.coords, d) for d in (0, 1, 2))
    assert a0.shape[0] == 1 and a1.shape[0] == 4 and a2.shape[0] == 10
    assert torch.equal(a1[:1], a0)
    assert max(rel_err_rows(a2[:4], a1)) <= 1e-15  # rounding may differ (vectorised paths)


@pytest.mark.parametrize("batched", [False, True], ids=["single", "batched"])
@pytest.mark.parametrize("xctype", XCTYPES)
def test_eval_rho_matches_reference(water, xctype, batched, device):
    s, ao, dms, _ = water
    dm = dms if batched else dms[1]
    ao_d, dm_d = _on(device, ao, dm)
    rho = eval_rho(ao_d, dm_d, xctype)
    ref = eval_rho_ref(ao, dm, xctype)
    assert rho.shape == ref.shape == ((3,) if batched else ()) + (NFEAT[xctype], s.grid.ngrid)
    assert rel_err(rho, ref) <= TOL64
    # float32 inputs (ao and dm), compared with the float64 reference
    rho32 = eval_rho(ao_d.float(), dm_d.float(), xctype)
    assert rho32.dtype == torch.float32
    assert rel_err(rho32, ref) <= TOL32


@pytest.mark.parametrize("batched", [False, True], ids=["single", "batched"])
@pytest.mark.parametrize("xctype", XCTYPES)
def test_contract_vxc_matches_reference(water, xctype, batched, device):
    s, ao, _, wv = water
    w = wv[:, : NFEAT[xctype]] if batched else wv[1, : NFEAT[xctype]]
    ao_d, w_d = _on(device, ao, w)
    v = contract_vxc(ao_d, w_d, xctype)
    ref = contract_vxc_ref(ao, w, xctype)
    assert v.shape == ref.shape == ((3,) if batched else ()) + (s.nao, s.nao)
    assert rel_err(v, ref) <= TOL64
    v32 = contract_vxc(ao_d.float(), w_d.float(), xctype)
    assert v32.dtype == torch.float32
    assert rel_err(v32, ref) <= TOL32


@pytest.mark.parametrize("xctype", XCTYPES)
def test_fused_float32(water, xctype, device):
    s, ao, dms, wv = water
    basis, coords = s.basis.to(device), s.grid.coords.to(device)
    dm, w = dms[1].to(device), wv[1, : NFEAT[xctype]].to(device)
    rho32 = eval_rho_fused(basis, coords, dm.float(), xctype)
    v32 = contract_vxc_fused(basis, coords, w.float(), xctype)
    assert rho32.dtype == v32.dtype == torch.float32
    assert rel_err(rho32, eval_rho_ref(ao, dms[1], xctype)) <= TOL32
    assert rel_err(v32, contract_vxc_ref(ao, wv[1, : NFEAT[xctype]], xctype)) <= TOL32


# --- fused == dense ------------------------------------------------------------------------------
@pytest.mark.parametrize("batched", [False, True], ids=["single", "batched"])
@pytest.mark.parametrize("xctype", XCTYPES)
def test_fused_equals_dense(water, xctype, batched, device):
    s, ao, dms, wv = water
    dm = dms if batched else dms[0]
    w = (wv if batched else wv[0])[..., : NFEAT[xctype], :]
    basis, coords, ao_d, dm_d, w_d = s.basis.to(device), *_on(device, s.grid.coords, ao, dm, w)
    assert rel_err(eval_rho_fused(basis, coords, dm_d, xctype), eval_rho(ao_d, dm_d, xctype)) <= (
        TOL64
    )
    v_f = contract_vxc_fused(basis, coords, w_d, xctype)
    assert rel_err(v_f, contract_vxc(ao_d, w_d, xctype)) <= TOL64


@pytest.mark.parametrize("xctype", XCTYPES)
def test_fused_equals_dense_larger_molecule(xctype):
    """Many shells per block on a spread-out molecule: screening must not change the result."""
    s = system("qm9_lactonitrile", "def2-svp", True, 1, 4000)
    ao = eval_ao(s.basis, s.grid.coords, 1)
    dm = torch.from_numpy(s.dm_gen)
    w = torch.randn(NFEAT[xctype], s.grid.ngrid, dtype=torch.float64)
    rho = eval_rho(ao, dm, xctype)
    assert rel_err(eval_rho_fused(s.basis, s.grid.coords, dm, xctype), rho) <= TOL64
    v = contract_vxc(ao, w, xctype)
    assert rel_err(contract_vxc_fused(s.basis, s.grid.coords, w, xctype), v) <= TOL64


# --- adjoint, symmetry, linearity, batching, hermi -----------------------------------------------
@pytest.mark.parametrize("fused", [False, True], ids=["dense", "fused"])
@pytest.mark.parametrize("batched", [False, True], ids=["single", "batched"])
@pytest.mark.parametrize("xctype", XCTYPES)
def test_adjoint_identity(water, xctype, batched, fused, device):
    """<eval_rho(D), w> = <D, contract_vxc(w)> for general (non-symmetric) D."""
    s, ao, dms, wv = water
    dm = (dms if batched else dms[2]).to(device)
    w = (wv if batched else wv[2])[..., : NFEAT[xctype], :].to(device)
    if fused:
        basis, coords = s.basis.to(device), s.grid.coords.to(device)
        rho = eval_rho_fused(basis, coords, dm, xctype)
        v = contract_vxc_fused(basis, coords, w, xctype)
    else:
        ao_d = ao.to(device)
        rho, v = eval_rho(ao_d, dm, xctype), contract_vxc(ao_d, w, xctype)
    lhs = (rho * w).sum(dim=(-1, -2))
    rhs = (dm * v).sum(dim=(-1, -2))
    scale = (rho.abs() * w.abs()).sum(dim=(-1, -2))  # no cancellation in the scale
    assert (lhs.abs() > 1e-3 * scale).all()  # a meaningful, not cancelled, pairing
    assert ((lhs - rhs).abs() <= TOL64 * lhs.abs()).all(), (lhs, rhs)


@pytest.mark.parametrize("fused", [False, True], ids=["dense", "fused"])
@pytest.mark.parametrize("xctype", XCTYPES)
def test_vxc_is_symmetric(water, xctype, fused):
    s, ao, _, wv = water
    w = wv[:, : NFEAT[xctype]]
    if fused:
        v = contract_vxc_fused(s.basis, s.grid.coords, w, xctype)
    else:
        v = contract_vxc(ao, w, xctype)
    assert torch.equal(v, v.transpose(-1, -2))
    assert v.abs().max() > 0


@pytest.mark.parametrize("fused", [False, True], ids=["dense", "fused"])
@pytest.mark.parametrize("xctype", XCTYPES)
def test_linearity(water, xctype, fused):
    s, ao, dms, wv = water
    nf = NFEAT[xctype]
    if fused:
        rho_of = lambda d: eval_rho_fused(s.basis, s.grid.coords, d, xctype)  # noqa: E731
        v_of = lambda w: contract_vxc_fused(s.basis, s.grid.coords, w, xctype)  # noqa: E731
    else:
        rho_of = lambda d: eval_rho(ao, d, xctype)  # noqa: E731
        v_of = lambda w: contract_vxc(ao, w, xctype)  # noqa: E731
    a, b = 0.7, -1.9
    lin = a * rho_of(dms[1]) + b * rho_of(dms[2])
    assert rel_err(rho_of(a * dms[1] + b * dms[2]), lin) <= TOL64
    w1, w2 = wv[1, :nf], wv[2, :nf]
    assert rel_err(v_of(a * w1 + b * w2), a * v_of(w1) + b * v_of(w2)) <= TOL64


@pytest.mark.parametrize("fused", [False, True], ids=["dense", "fused"])
@pytest.mark.parametrize("xctype", XCTYPES)
def test_batched_equals_loop(water, xctype, fused):
    s, ao, dms, wv = water
    w = wv[:, : NFEAT[xctype]]
    if fused:
        rho_b = eval_rho_fused(s.basis, s.grid.coords, dms, xctype)
        rho_l = torch.stack([eval_rho_fused(s.basis, s.grid.coords, d, xctype) for d in dms])
        v_b = contract_vxc_fused(s.basis, s.grid.coords, w, xctype)
        v_l = torch.stack([contract_vxc_fused(s.basis, s.grid.coords, x, xctype) for x in w])
    else:
        rho_b = eval_rho(ao, dms, xctype)
        rho_l = torch.stack([eval_rho(ao, d, xctype) for d in dms])
        v_b = contract_vxc(ao, w, xctype)
        v_l = torch.stack([contract_vxc(ao, x, xctype) for x in w])
    assert rho_b.shape == rho_l.shape and v_b.shape == v_l.shape
    assert rel_err(rho_b, rho_l) <= 1e-14
    assert rel_err(v_b, v_l) <= 1e-14


@pytest.mark.parametrize("fused", [False, True], ids=["dense", "fused"])
@pytest.mark.parametrize("xctype", XCTYPES)
def test_only_symmetric_part_of_dm_enters(water, xctype, fused):
    s, ao, dms, _ = water
    if fused:
        rho_of = lambda d: eval_rho_fused(s.basis, s.grid.coords, d, xctype)  # noqa: E731
    else:
        rho_of = lambda d: eval_rho(ao, d, xctype)  # noqa: E731
    d = dms[2]
    assert rel_err(rho_of(d), rho_of(sym(d))) <= 1e-14
    assert rel_err(rho_of(d.T), rho_of(d)) <= 1e-14
    anti = d - d.T
    assert torch.equal(rho_of(anti), torch.zeros_like(rho_of(anti)))


def test_non_contiguous_inputs(water):
    s, ao, dms, wv = water
    ao_nc = ao.transpose(1, 2).contiguous().transpose(1, 2)
    dm_nc = dms.transpose(1, 2).contiguous().transpose(1, 2)[:, ::1]
    w_nc = wv.transpose(1, 2).contiguous().transpose(1, 2)
    coords_nc = s.grid.coords.T.contiguous().T
    assert not (ao_nc.is_contiguous() or dm_nc.is_contiguous() or w_nc.is_contiguous())
    assert not coords_nc.is_contiguous()
    assert torch.equal(eval_rho(ao_nc, dm_nc, "MGGA"), eval_rho(ao, dms, "MGGA"))
    assert torch.equal(contract_vxc(ao_nc, w_nc, "MGGA"), contract_vxc(ao, wv, "MGGA"))
    assert torch.equal(eval_ao(s.basis, coords_nc, 1), ao)
    rho_f = eval_rho_fused(s.basis, coords_nc, dm_nc, "GGA")
    assert torch.equal(rho_f, eval_rho_fused(s.basis, s.grid.coords, dms, "GGA"))
    v_f = contract_vxc_fused(s.basis, coords_nc, w_nc[:, :4], "GGA")
    assert torch.equal(v_f, contract_vxc_fused(s.basis, s.grid.coords, wv[:, :4], "GGA"))


@pytest.mark.parametrize("xctype", ["GGA", "MGGA"])
def test_extra_ao_components_are_ignored(water, xctype):
    """A deriv=2 AO array works for GGA/MGGA and gives the deriv=1 result."""
    s, ao, dms, wv = water
    ao2 = eval_ao(s.basis, s.grid.coords, 2)
    assert rel_err(eval_rho(ao2, dms, xctype), eval_rho(ao, dms, xctype)) <= 1e-14
    w = wv[:, : NFEAT[xctype]]
    assert rel_err(contract_vxc(ao2, w, xctype), contract_vxc(ao, w, xctype)) <= 1e-14


def test_density_integrates_to_trace_ds():
    """sum_g w_g rho(r_g) = tr(D S) up to quadrature error (level-3 grid)."""
    s = system("water", "def2-svp", False, 3)
    rho = eval_rho_fused(s.basis, s.grid.coords, torch.from_numpy(s.dm_guess), "GGA")
    nelec = float((rho[0] * s.grid.weights).sum())
    assert abs(nelec - float(np.sum(s.dm_guess * s.mol.intor("int1e_ovlp")))) < 1e-5
    # the gradient of a decaying density integrates to zero
    assert (rho[1:4] * s.grid.weights).sum(1).abs().max() < 1e-4


# --- Hessian-vector products vs finite differences ----------------------------------------------
def _energy(rho: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A smooth, non-polynomial model functional of (rho, grad rho, tau)."""
    n, g, tau = rho[0], rho[1:4], rho[4]
    e = torch.sqrt(1.0 + n**2 + 0.3 * (g * g).sum(0)) + 0.2 * tau * torch.exp(-0.5 * n**2)
    return (weights * e).sum()


@pytest.mark.parametrize("fused", [False, True], ids=["dense", "fused"])
def test_hvp_matches_central_differences(water, fused):
    s, ao, _, _ = water
    weights = s.grid.weights
    if fused:
        rho_of = lambda d: eval_rho_fused(s.basis, s.grid.coords, d, "MGGA")  # noqa: E731
    else:
        rho_of = lambda d: eval_rho(ao, d, "MGGA")  # noqa: E731

    def grad(d: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        d = d if create_graph else d.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(_energy(rho_of(d), weights), d, create_graph=create_graph)
        return g

    d0 = torch.from_numpy(s.dm_guess).requires_grad_(True)
    gen = torch.Generator().manual_seed(3)
    v = sym(torch.randn(s.nao, s.nao, generator=gen, dtype=torch.float64))
    v = v / v.norm()
    g0 = grad(d0, create_graph=True)
    (hv,) = torch.autograd.grad(g0, d0, grad_outputs=v)  # reverse over reverse
    assert torch.allclose(hv, hv.T, rtol=0, atol=1e-12 * hv.abs().max())
    errs = []
    for h in (1e-2, 1e-3):
        fd = (grad(d0 + h * v) - grad(d0 - h * v)) / (2 * h)
        errs.append(rel_err(fd, hv))
    # central differences: O(h^2) error, so 10x smaller h gives ~100x smaller error
    assert errs[1] < 1e-7, errs
    assert 30 < errs[0] / errs[1] < 300, errs
