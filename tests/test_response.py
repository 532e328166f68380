"""Exact Grassmannian gradient and orbital-Hessian products of any dixc functional.

References: PySCF's own Fock matrix and ``gen_response`` (same grid, same density fitting; factor
4 conventions of DESIGN.md), central finite differences with h^2 error scaling, and structural
identities (symmetry of H, batch = loop, local and nonlocal kernel paths agree).
Tolerances: 1e-8 relative vs PySCF; <= 1e-7 relative vs central differences at h = 1e-4.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dixc.functionals
from _ks import AsNonlocal, pyscf_pbe, rel
from dixc import scf as dscf
from dixc.functionals.mlp import MLPmGGA
from dixc.response import OrbitalHessian, grassmann_gradient, hvp, rotate
from dixc.xc import XCKernel


def _pbe():
    return dixc.functionals.create("pbe")


def _unit(shape, gen=None) -> torch.Tensor:
    x = torch.randn(*shape, dtype=torch.float64, generator=gen)
    return x / x.norm(dim=(-2, -1), keepdim=True)


@pytest.mark.parametrize("name", ["water", "qm9_acetamide"])
def test_gradient_and_hvp_equal_pyscf_at_converged_orbitals(name):
    from pyscf.soscf import newton_ah

    _, mf, ctx = pyscf_pbe(name, 3)
    c = torch.as_tensor(mf.mo_coeff)
    n = ctx.nocc
    nv = c.shape[1] - n
    h = OrbitalHessian(ctx, _pbe(), c)
    # G = 4 (C^T F C)_vo with PySCF's Fock matrix at the same density.
    fock = mf.get_fock(dm=mf.make_rdm1())
    g_ref = 4.0 * mf.mo_coeff[:, n:].T @ fock @ mf.mo_coeff[:, :n]
    assert np.abs(h.fock.numpy() - fock).max() < 1e-8 * np.abs(fock).max()
    assert np.abs(h.gradient.numpy() - g_ref).max() < 1e-8 * np.abs(fock).max()
    # H X against PySCF's gen_g_hop_rhf (which returns H X / 2).
    x = _unit((4, nv, n))
    hx = h(x).numpy()
    _, hop, _ = newton_ah.gen_g_hop_rhf(mf, mf.mo_coeff, mf.mo_occ)
    ref = np.stack([2.0 * hop(xi.numpy().ravel()).reshape(nv, n) for xi in x])
    assert rel(hx, ref) < 1e-8


def test_gradient_and_hvp_against_pyscf_gen_response_at_rotated_point():
    """At a non-stationary, non-canonical point: DESIGN.md's formula with PySCF's response."""
    _, mf, ctx = pyscf_pbe("water", 3)
    n = ctx.nocc
    c0 = torch.as_tensor(mf.mo_coeff)
    c = rotate(c0, 0.05 * _unit((c0.shape[1] - n, n)), n)
    cn = c.numpy()
    dm = 2 * cn[:, :n] @ cn[:, :n].T
    fock = mf.get_fock(dm=dm)
    occ = np.zeros(cn.shape[1])
    occ[:n] = 2
    resp = mf.gen_response(cn, occ, hermi=1)
    x = _unit((3, cn.shape[1] - n, n))
    co, cv = cn[:, :n], cn[:, n:]
    ref = []
    for xi in x.numpy():
        dd = 2 * (cv @ xi @ co.T + co @ xi.T @ cv.T)
        fmo = cn.T @ fock @ cn
        ref.append(4 * (fmo[n:, n:] @ xi - xi @ fmo[:n, :n] + cv.T @ resp(dd) @ co))
    h = OrbitalHessian(ctx, _pbe(), c)
    assert rel(h(x).numpy(), np.stack(ref)) < 1e-8
    assert rel(h.gradient.numpy(), 4 * cv.T @ fock @ co) < 1e-8


@pytest.mark.parametrize("functional", ["pbe", "mlp"])
def test_hvp_matches_central_differences_of_gradient(functional):
    _, mf, ctx = pyscf_pbe("water", 3)
    f = _pbe() if functional == "pbe" else _random_mlp()
    n = ctx.nocc
    c0 = torch.as_tensor(mf.mo_coeff)
    c = rotate(c0, 0.05 * _unit((c0.shape[1] - n, n)), n)  # non-stationary point
    x = _unit((c0.shape[1] - n, n))
    hx = hvp(ctx, f, c, x)

    def g(t):
        return grassmann_gradient(ctx, f, rotate(c, t * x, n))

    errs = {}
    for h in (1e-2, 1e-3, 1e-4):
        fd = (g(h) - g(-h)) / (2 * h)
        errs[h] = float((fd - hx).abs().max() / hx.abs().max())
    assert errs[1e-4] <= 1e-7, errs
    assert 30 < errs[1e-2] / errs[1e-3] < 300, errs  # h^2 scaling


def test_gradient_matches_central_differences_of_energy():
    _, mf, ctx = pyscf_pbe("water", 3)
    f = _pbe()
    n = ctx.nocc
    c0 = torch.as_tensor(mf.mo_coeff)
    c = rotate(c0, 0.05 * _unit((c0.shape[1] - n, n)), n)
    x = _unit((c0.shape[1] - n, n))
    g = grassmann_gradient(ctx, f, c)

    def e(t):
        return float(dscf.energy(ctx, f, dscf.make_rdm1(rotate(c, t * x, n), n)).detach())

    # Central differences, Richardson-extrapolated (the h^2 terms cancel).
    d = [(e(h) - e(-h)) / (2 * h) for h in (2e-3, 1e-3)]
    fd = (4 * d[1] - d[0]) / 3
    an = float((g * x).sum())
    assert abs(fd - an) <= 1e-8 * abs(an)
    # x.H.x against the energy's second difference.
    xhx = float((hvp(ctx, f, c, x) * x).sum())
    h = 1e-3
    fd2 = (e(h) - 2 * e(0.0) + e(-h)) / h**2
    assert abs(fd2 - xhx) <= 1e-5 * abs(xhx)


def test_hessian_symmetric_batched_and_nonlocal_path():
    _, mf, ctx = pyscf_pbe("water", 3)
    n = ctx.nocc
    c = torch.as_tensor(mf.mo_coeff)
    nv = c.shape[1] - n
    xs = _unit((16, nv, n))
    h = OrbitalHessian(ctx, _pbe(), c)
    hx = h(xs)
    single = torch.stack([h(xs[i]) for i in range(3)])
    assert rel(hx[:3].numpy(), single.numpy()) < 1e-13
    # <Y, H X> = <X, H Y>
    m = torch.einsum("bai,cai->bc", xs, hx)
    assert rel(m.numpy(), m.T.numpy()) < 1e-10
    hn = OrbitalHessian(ctx, AsNonlocal(_pbe()), c)
    assert hn.kernel._hess is None
    assert rel(hn(xs[:3]).numpy(), hx[:3].numpy()) < 1e-12


def test_xc_kernel_equals_libxc_fxc():
    """f_xc[D](dD) against PySCF's nr_rks_fxc (libxc's second derivatives)."""
    from pyscf.dft import numint

    mol, mf, ctx = pyscf_pbe("water", 3)
    dm0 = mf.make_rdm1()
    rng = np.random.default_rng(3)
    d1 = rng.standard_normal((2, ctx.nao, ctx.nao)) * 0.1
    d1 = d1 + d1.transpose(0, 2, 1)
    ni = numint.NumInt()
    ref = ni.nr_rks_fxc(mol, mf.grids, "PBE", dm0, d1, hermi=1)
    got = XCKernel(ctx, _pbe(), torch.as_tensor(dm0))(torch.as_tensor(d1)).numpy()
    assert rel(got, ref) < 1e-9


def _random_mlp(seed: int = 0) -> MLPmGGA:
    torch.manual_seed(seed)
    f = MLPmGGA(hidden=16, depth=2)
    with torch.no_grad():
        for p in f.parameters():
            p.copy_(0.1 * torch.randn_like(p))
    return f


def test_xc_kernel_of_a_wide_network_in_cache_sized_chunks(monkeypatch):
    """A wide network's derivatives are taken in cache-sized chunks of points (here 1024 of the
    water grid's 33,704): E_xc, V_xc, one probe (forward-over-backward per chunk) and a batch (the
    per-point feature Hessian) equal the whole-grid autograd of the same network to 1e-12."""
    from dixc.functionals import base

    monkeypatch.setattr(base, "CACHE_POINTS_WIDTH", 2**14)  # width 16 -> 1024-point chunks
    _, mf, ctx = pyscf_pbe("water", 3)
    f = _random_mlp()
    assert f.chunk_points() == 1024 and ctx.grid.ngrid > 32 * 1024
    dm0 = torch.as_tensor(mf.make_rdm1())
    for got, ref in zip(dscf.exc_vxc(ctx, f, dm0), dscf.exc_vxc(ctx, AsNonlocal(f), dm0),
                        strict=True):  # fmt: skip
        assert rel(got.detach().numpy(), ref.detach().numpy()) < 1e-12
    d1 = torch.randn(
        3, ctx.nao, ctx.nao, dtype=torch.float64, generator=torch.Generator().manual_seed(5)
    )
    d1 = d1 + d1.transpose(1, 2)
    k, kn = XCKernel(ctx, f, dm0), XCKernel(ctx, AsNonlocal(f), dm0)
    one = k(d1[0])
    assert k._hess is None  # a single first probe: no feature Hessian
    assert rel(one.numpy(), kn(d1[0]).numpy()) < 1e-12
    batch = k(d1)
    assert k._hess is not None
    assert rel(batch.numpy(), kn(d1).numpy()) < 1e-12
    # a first batch of 3 builds the Hessian (3 passes for this meta-GGA), one of 2 does not
    for nb, built in ((2, False), (3, True)):
        k = XCKernel(ctx, f, dm0)
        assert rel(k(d1[:nb]).numpy(), batch[:nb].numpy()) < 1e-12
        assert (k._hess is not None) == built


def test_hvp_is_differentiable_in_parameters():
    """d/dtheta of |H_theta X|^2 (the Hessian loss's building block) vs central differences."""
    _, mf, ctx = pyscf_pbe("water", 3)
    f = _random_mlp()
    n = ctx.nocc
    c = torch.as_tensor(mf.mo_coeff)
    x = _unit((2, c.shape[1] - n, n))

    def loss():
        return (OrbitalHessian(ctx, f, c, create_graph=True)(x) ** 2).sum()

    p = f.net[0].weight
    (g,) = torch.autograd.grad(loss(), p)
    idx = (2, 1)
    with torch.no_grad():
        orig = p[idx].item()
        vals = []
        for h in (1e-4, -1e-4):
            p[idx] = orig + h
            vals.append(float(loss()))
        p[idx] = orig
    fd = (vals[0] - vals[1]) / 2e-4
    assert abs(g[idx].item() - fd) <= 1e-6 * abs(fd)
