"""EG-XC (dixc.functionals.egxc): exact physics initialisation, pair maps, equivariance and
invariance, size extensivity, derivatives of first and second order, edge cases, batching and the
linear growth of the neighbour structure."""

from __future__ import annotations

import functools
import gc
import math

import numpy as np
import pytest
import torch
from torch.func import functional_call

import dixc.functionals as F
from _util import EGXC_SMALL, perturbed, random_rotation, rigid_motion, toy_molecule
from dixc.functionals import egxc
from dixc.functionals.egxc import EGXC, PairStructure, _envelope, pair_structure
from dixc.grid import Grid, make_grid
from dixc.molecules import mole

# --------------------------------------------------------------------------- systems


@functools.cache
def _water(level: int = 1) -> tuple[torch.Tensor, Grid]:
    """Water, PySCF grid, MGGA features (5, ngrid) of PySCF's minao guess density."""
    from pyscf import dft

    mol = mole("water", "def2-svp")
    grid, grids = make_grid(mol, level)
    dm = dft.RKS(mol).get_init_guess(key="minao")
    ni = dft.numint.NumInt()
    ao = ni.eval_ao(mol, grids.coords, deriv=1)
    rho = ni.eval_rho(mol, ao, dm, xctype="MGGA", with_lapl=False)
    return torch.as_tensor(rho), grid


def water(level: int = 1) -> tuple[torch.Tensor, Grid]:
    rho, grid = _water(level)
    return rho.clone(), grid


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-300))


# --------------------------------------------------------------------------- construction


def test_registered_nonlocal_float64_deterministic():
    torch.manual_seed(5)
    f1 = F.create("egxc")
    torch.manual_seed(5)
    f2 = EGXC()
    assert isinstance(f1, EGXC) and "egxc" in F.available()
    assert f1.is_local is False and f1.xctype == "MGGA" and f1.nfeat == 5
    assert all(p.dtype == torch.float64 for p in f1.parameters())
    sd1, sd2 = f1.state_dict(), f2.state_dict()
    assert sd1.keys() == sd2.keys()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)


@pytest.mark.parametrize("baseline", ["pbe", "lda", "blyp", "b3lyp_semilocal"])
def test_init_equals_classical_baseline_exactly(baseline):
    rho, grid = water()
    rho2 = torch.stack([rho, 0.7 * rho])  # a batch of two densities
    f = F.create("egxc", baseline=baseline)
    ref = F.create(baseline)
    e, e_ref = f.energy_density(rho2, grid), ref.energy_density(rho2, grid)
    assert torch.equal(e, e_ref)  # bit for bit
    exc, exc_ref = f(rho2, grid), ref(rho2, grid)
    assert torch.equal(exc, exc_ref)
    assert float(exc_ref[0]) < -5.0  # a real XC energy (water ~ -9 Hartree)


def test_init_away_from_baseline_after_perturbation():
    """The exact equality above is not vacuous: moved weights change E_xc."""
    rho, grid = water()
    f = perturbed(F.create("egxc"))
    with torch.no_grad():
        assert abs(float(f(rho, grid) - F.create("pbe")(rho, grid))) > 1e-3


# --------------------------------------------------------------------------- pair maps


def _dense_basis(coords, atoms, cutoff, n):
    diff = coords[:, None, :] - atoms[None]
    d = diff.norm(dim=-1)
    x = d / cutoff
    k = torch.arange(1, n + 1, dtype=torch.float64)
    rad = torch.sinc(x[..., None] * k) * _envelope(x)[..., None]  # sinc(kx) = j0(k pi x)
    u = diff / torch.where(d > 0, d, 1.0)[..., None]
    ylm = torch.cat([torch.ones_like(d)[..., None], u], dim=-1)
    return (ylm[..., :, None] * rad[..., None, :]).reshape(*d.shape, 4 * n), d  # k = (m, n)


def test_pair_maps_match_dense_reference_and_are_adjoint():
    g = torch.Generator().manual_seed(0)
    atoms = 2.0 * torch.randn(5, 3, generator=g, dtype=torch.float64)
    coords = 4.0 * torch.randn(900, 3, generator=g, dtype=torch.float64)
    coords[0] = atoms[1]  # a point on a nucleus (d = 0)
    coords[1] = atoms[2] + torch.tensor([5.0, 0.0, 0.0], dtype=torch.float64)  # on the cutoff
    ps = PairStructure(coords, atoms, 5.0, 6, block_pairs=37)
    b, d = _dense_basis(coords, atoms, 5.0, 6)
    assert ps.npairs == int((d < 5.0).sum()) and ps.npairs < d.numel()
    assert all(idx.numel() <= 37 for _, idx in ps.blocks)
    assert float(b[1, 2].abs().max()) == 0.0 and bool(torch.isfinite(b).all())
    for bt, nf in [(1, 1), (2, 3), (1, 20), (3, 7), (5, 20)]:  # narrow and wide code paths
        y = torch.randn(bt, 900, nf, generator=g, dtype=torch.float64)
        t = torch.randn(bt, 5, 24, nf, generator=g, dtype=torch.float64)
        x_ref = torch.einsum("gak,bgf->bakf", b, y)
        y_ref = torch.einsum("gak,bakf->bgf", b, t)
        assert rel(ps.gather(y), x_ref) < 1e-13
        assert rel(ps.scatter(t), y_ref) < 1e-13
        lhs, rhs = (ps.scatter(t) * y).sum(), (t * ps.gather(y)).sum()
        assert abs(float(lhs - rhs)) < 1e-12 * float((t.abs() * ps.gather(y).abs()).sum())


def test_pairs_grow_linearly_with_alkane_length():
    """Pairs within the cutoff (= the work of the pair maps) grow linearly along C_nH_2n+2."""
    stats = {}
    for n in (4, 8, 16):
        grid, _ = make_grid(mole(f"alkane{n}", "sto-3g"), level=0)
        ps = pair_structure(grid, 5.0, 16, block_pairs=4096)
        assert all(idx.numel() <= 4096 for _, idx in ps.blocks)  # bounded memory per block
        stats[n] = (ps.npairs, grid.ngrid, ps.natm)
    per_c_small = (stats[8][0] - stats[4][0]) / 4
    per_c_large = (stats[16][0] - stats[8][0]) / 8
    assert abs(per_c_large / per_c_small - 1.0) < 0.05
    # a point sees a bounded number of atoms: pairs / point does not grow with the chain
    assert stats[16][0] / stats[16][1] < 1.25 * stats[8][0] / stats[8][1]
    assert stats[16][0] < 0.25 * stats[16][1] * stats[16][2]  # far from all-pairs


def test_basis_cache_is_bounded_exact_and_released(monkeypatch):
    rho, grid0 = toy_molecule(npts=40)

    def fresh():  # a new Grid object has no cached structures yet
        return Grid(grid0.coords, grid0.weights, grid0.atom_coords, grid0.atom_charges)

    f = perturbed(F.create("egxc"))

    def value_and_grad(grid):
        x = rho.clone().requires_grad_(True)
        e = f(x, grid)
        (g,) = torch.autograd.grad(e, x)
        return e.detach(), g

    monkeypatch.setattr(egxc, "BASIS_CACHE_MB", 0.0)
    grid_a = fresh()
    e0, g0 = value_and_grad(grid_a)
    assert pair_structure(grid_a, f.cutoff, f.n_radial, f.block_pairs)._box[0] == 0
    monkeypatch.setattr(egxc, "BASIS_CACHE_MB", egxc._cached_bytes[0] / 2**20 + 64.0)  # room
    grid_b = fresh()
    before = egxc._cached_bytes[0]
    e1, g1 = value_and_grad(grid_b)  # fills the cache
    e2, g2 = value_and_grad(grid_b)  # uses it
    held = pair_structure(grid_b, f.cutoff, f.n_radial, f.block_pairs)._box[0]
    assert held == 20 * 8 * pair_structure(grid_b, f.cutoff, f.n_radial, f.block_pairs).npairs
    assert egxc._cached_bytes[0] == before + held
    assert torch.equal(e0, e1) and torch.equal(e1, e2)
    assert torch.equal(g0, g1) and torch.equal(g1, g2)
    del grid_b
    gc.collect()
    assert egxc._cached_bytes[0] == before  # released with the grid


def test_neighbour_structure_is_cached_on_the_grid():
    rho, grid = toy_molecule()
    f = F.create("egxc")
    f(rho, grid)
    ps = pair_structure(grid, f.cutoff, f.n_radial, f.block_pairs)
    f(rho, grid)
    assert pair_structure(grid, f.cutoff, f.n_radial, f.block_pairs) is ps


# --------------------------------------------------------------------------- symmetry


def test_rotation_translation_invariance_and_equivariance():
    rho, grid = water()
    f = perturbed(F.create("egxc"))
    rot, shift = random_rotation(3), torch.tensor([1.3, -0.7, 2.1], dtype=torch.float64)
    rho_r, grid_r = rigid_motion(rho, grid, rot, shift)
    with torch.no_grad():
        e, e_r = f(rho, grid), f(rho_r, grid_r)
        h, h_r = f.embedding(rho, grid), f.embedding(rho_r, grid_r)
        (s, v), (s_r, v_r) = f.atom_features(rho, grid), f.atom_features(rho_r, grid_r)
        g, g_r = f.nonlocal_features(rho, grid), f.nonlocal_features(rho_r, grid_r)
        ed, ed_r = f.energy_density(rho, grid), f.energy_density(rho_r, grid_r)
    assert abs(float(e_r - e)) < 1e-10
    # density-integrated l = 0 features invariant, l = 1 features rotate as vectors
    assert float((h_r[..., 0] - h[..., 0]).abs().max()) < 1e-10
    assert float((h_r[..., 1:4] - h[..., 1:4] @ rot.T).abs().max()) < 1e-10
    assert float((h_r[..., 1:4] - h[..., 1:4]).abs().max()) > 1e-2  # they do change
    # PaiNN scalars invariant, vectors equivariant (v[a, :, f] -> R v[a, :, f])
    assert float((s_r - s).abs().max()) < 1e-10
    assert float((v_r - torch.einsum("ij,ajf->aif", rot, v)).abs().max()) < 1e-10
    assert float(v.abs().max()) > 0.1 and float((v_r - v).abs().max()) > 1e-2
    assert float((g_r - g).abs().max()) < 1e-10
    assert float((ed_r - ed).abs().max()) < 1e-10


def test_size_extensive_for_far_apart_molecules():
    """Two molecules beyond every cutoff: E(A + B) = E(A) + E(B), per point too."""
    f = perturbed(F.create("egxc"))
    rho_a, grid_a = water()
    rho_b, grid_b = toy_molecule(charges=(7, 1), npts=30, seed=2, shift=(100.0, 0.0, 0.0))
    grid_ab = Grid(
        torch.cat([grid_a.coords, grid_b.coords]),
        torch.cat([grid_a.weights, grid_b.weights]),
        torch.cat([grid_a.atom_coords, grid_b.atom_coords]),
        torch.cat([grid_a.atom_charges, grid_b.atom_charges]),
    )
    rho_ab = torch.cat([rho_a, rho_b], dim=1)
    with torch.no_grad():
        e_a, e_b, e_ab = f(rho_a, grid_a), f(rho_b, grid_b), f(rho_ab, grid_ab)
        ed_ab = f.energy_density(rho_ab, grid_ab)
        ed = torch.cat([f.energy_density(rho_a, grid_a), f.energy_density(rho_b, grid_b)])
    assert abs(float(e_ab - (e_a + e_b))) < 1e-10
    assert float((ed_ab - ed).abs().max()) < 1e-12
    assert abs(float(e_b)) > 1e-3  # both parts contribute


# --------------------------------------------------------------------------- derivatives


def test_gradcheck_and_gradgradcheck_energy_density():
    """Full nonlocal Jacobian (ngrid x 5 ngrid) and its derivative, by finite differences."""
    torch.manual_seed(11)
    f = perturbed(F.create("egxc", **EGXC_SMALL), scale=0.3)
    rho, grid = toy_molecule(npts=6)
    x = rho.clone().requires_grad_(True)

    def fn(r):
        return f.energy_density(r, grid)

    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-8, rtol=1e-6)
    assert torch.autograd.gradgradcheck(fn, (x,), eps=1e-6, atol=1e-8, rtol=1e-6)
    # and it is nonlocal: the XC density at one point depends on the density at others
    jac = torch.autograd.functional.jacobian(fn, x)  # (ngrid, 5, ngrid)
    off = jac[:, 0, :] - torch.diag(torch.diagonal(jac[:, 0, :]))
    assert float(off.abs().max()) > 1e-6


def test_geometry_derivatives_gradcheck():
    """dE_xc/d(points, weights, nuclei) (nuclear gradients) of the whole nonlocal functional
    (embedding, atom graph, decoding, readout normaliser), every component by finite differences,
    on a small random molecule; the energy and dE/d rho equal the fixed-geometry path's."""
    torch.manual_seed(13)
    f = perturbed(F.create("egxc", **EGXC_SMALL), scale=0.3)
    rho, grid = toy_molecule(npts=6)
    z = grid.atom_charges

    def energy(c, w, r):
        return f(rho, Grid(coords=c, weights=w, atom_coords=r, atom_charges=z))

    geo = [t.clone().requires_grad_(True) for t in (grid.coords, grid.weights, grid.atom_coords)]
    assert torch.autograd.gradcheck(energy, tuple(geo), eps=1e-6, atol=1e-8, rtol=1e-6)
    x = rho.clone().requires_grad_(True)
    moving = f(x, Grid(*geo, atom_charges=z))
    (v_moving,) = torch.autograd.grad(moving, x)
    x2 = rho.clone().requires_grad_(True)
    fixed = f(x2, grid)
    (v_fixed,) = torch.autograd.grad(fixed, x2)
    assert float((moving - fixed).detach().abs()) < 1e-13
    assert rel(v_moving, v_fixed) < 1e-12


def test_geometry_derivatives_on_a_molecular_grid():
    """Water on PySCF's grid: dE_xc/d points, /d weights, /d nuclei along random directions equal
    Richardson-extrapolated central differences (steps 1e-4, 2e-4 Bohr, or the weights' units;
    smaller steps are rounding-bound) to 1e-7 relative to the gradient's norm (measured: 2e-10
    points, 5e-15 weights, 1e-10 nuclei). Nothing geometric comes from the caches."""
    torch.manual_seed(14)
    f = perturbed(F.create("egxc", **EGXC_SMALL), scale=0.1)
    rho, grid = water(1)
    base = [grid.coords, grid.weights, grid.atom_coords]

    def energy(c, w, r):
        with torch.no_grad():
            return float(f(rho, Grid(c, w, r, grid.atom_charges)))

    geo = [t.clone().requires_grad_(True) for t in base]
    e = f(rho, Grid(*geo, atom_charges=grid.atom_charges))
    grads = torch.autograd.grad(e, geo)
    gen = torch.Generator().manual_seed(5)
    for i, (t, g) in enumerate(zip(base, grads, strict=True)):
        u = torch.randn(t.shape, generator=gen, dtype=t.dtype)
        u /= u.norm()

        def central(h, i=i, t=t, u=u):
            plus, minus = list(base), list(base)
            plus[i], minus[i] = t + h * u, t - h * u
            return (energy(*plus) - energy(*minus)) / (2 * h)

        fd = (4 * central(1e-4) - central(2e-4)) / 3
        assert abs(float((g * u).sum()) - fd) < 1e-7 * float(g.norm()), i


def test_gradcheck_and_gradgradcheck_default_size_energy():
    torch.manual_seed(12)
    f = perturbed(F.create("egxc"), scale=0.1)
    rho, grid = toy_molecule(npts=5, seed=1)
    x = rho.clone().requires_grad_(True)

    def fn(r):
        return f(r, grid)

    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-8, rtol=1e-6)
    assert torch.autograd.gradgradcheck(fn, (x,), eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("name", ["gamma_net.4.weight", "painn.0.filt.weight", "readout.2.bias"])
def test_parameter_derivative_of_potential(name):
    """d/dtheta of (dE/drho . v): what the gradient and Hessian losses differentiate."""
    torch.manual_seed(13)
    f = perturbed(F.create("egxc", **EGXC_SMALL), scale=0.3)
    rho, grid = toy_molecule(npts=6, seed=3)
    v = torch.randn_like(rho)
    w0 = dict(f.named_parameters())[name].detach().clone().requires_grad_(True)

    def fn(w):
        r = rho.clone().requires_grad_(True)
        e = functional_call(f, {name: w}, (r, grid))
        (g,) = torch.autograd.grad(e, r, create_graph=True)
        return (g * v).sum()

    assert torch.autograd.gradcheck(fn, (w0,), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_finite_values_and_derivatives_at_edge_cases():
    """rho = 0, grad = 0, tau = 0, rho = 1e-30, tau < tau_W, huge s, rho < 0: first and second
    derivatives finite (double-where masking), also for a density that vanishes everywhere."""
    f = perturbed(F.create("egxc"), scale=0.1)
    rho, grid = toy_molecule(npts=6)
    rho[:, 0] = 0.0  # everything zero
    rho[1:4, 1] = 0.0  # grad = 0
    rho[4, 2] = 0.0  # tau = 0
    rho[:, 3] = torch.tensor([1e-30, 1e-31, 0.0, 0.0, 0.0])  # rho = 1e-30
    rho[4, 4] = 0.5 * float((rho[1:4, 4] ** 2).sum() / (8 * rho[0, 4]))  # tau < tau_W
    rho[:, 5] = torch.tensor([1e-8, 1.0, 0.0, 0.0, 1e-3])  # huge reduced gradient
    rho[:, 6] = torch.tensor([1e-12, 1e-13, 0.0, 0.0, 1e-20])  # between rho_min and libxc's
    rho[:, 7] = torch.tensor([-1e-12, 1e-14, 0.0, 0.0, -1e-14])  # negative round-off noise
    for feats in (rho, torch.zeros_like(rho)):
        x = feats.clone().requires_grad_(True)
        e = f(x, grid)
        (g,) = torch.autograd.grad(e, x, create_graph=True)
        assert bool(torch.isfinite(e)) and bool(torch.isfinite(g).all())
        # no potential where there is no density (although E_xc is nonlocal)
        assert float(g[:, 0].detach().abs().max()) == 0.0
        assert float(g[:, 3].detach().abs().max()) == 0.0
        for probe in (torch.ones_like(x), torch.randn_like(x)):
            (hv,) = torch.autograd.grad((g * probe).sum(), x, retain_graph=True)
            assert bool(torch.isfinite(hv).all())
        # the full Hessian of one point's energy density, off-diagonal blocks included
        ed = f.energy_density(x, grid)
        (g0,) = torch.autograd.grad(ed[0], x, create_graph=True)
        hess = torch.stack([torch.autograd.grad(g0.flatten()[i], x, retain_graph=True)[0]
                            for i in range(0, g0.numel(), 7)])  # fmt: skip
        assert bool(torch.isfinite(hess).all())


# --------------------------------------------------------------------------- batching, readout


def test_batched_equals_per_sample():
    f = perturbed(F.create("egxc"))
    rho, grid = water()
    scaled = rho.clone()
    scaled[0] *= 0.8
    scaled[1:4] *= 0.8
    scaled[4] *= 0.8 ** (5.0 / 3.0)
    noisy = rho * (1.0 + 0.05 * torch.rand_like(rho))
    batch = torch.stack([rho, scaled, noisy]).requires_grad_(True)
    e = f(batch, grid)
    (g,) = torch.autograd.grad(e.sum(), batch)
    for i in range(3):
        xi = batch[i].detach().clone().requires_grad_(True)
        ei = f(xi, grid)
        (gi,) = torch.autograd.grad(ei, xi)
        assert abs(float(e[i].detach() - ei.detach())) < 1e-12 * abs(float(ei.detach()))
        assert rel(g[i], gi) < 1e-12
        with torch.no_grad():
            ed_i = f.energy_density(batch[i].detach(), grid)
            ed_b = f.energy_density(batch.detach(), grid)[i]
        assert rel(ed_b, ed_i) < 1e-12


def test_graph_readout_integrates_to_atom_energies():
    """E_graph is spread with normalised weights: it integrates to sum_a eps_a exactly."""
    rho, grid = water()
    f = F.create("egxc")
    base = F.create("pbe")(rho, grid)
    with torch.no_grad():
        f.readout[-1].bias.fill_(0.25)  # eps_a = 0.25 Hartree for every atom
        assert abs(float(f(rho, grid) - base) - 3 * 0.25) < 1e-12
    perturbed(f)
    with torch.no_grad():
        f.gamma_net[-1].weight.zero_()
        f.gamma_net[-1].bias.zero_()
        f.local_net[-1].weight.zero_()
        f.local_net[-1].bias.zero_()
        s, _ = f.atom_features(rho, grid)
        e_graph = f.readout(s).sum()
        assert abs(float(f(rho, grid) - base - e_graph)) < 1e-12


def test_graph_readout_off():
    rho, grid = water()
    f = perturbed(F.create("egxc", graph_readout=False))
    with torch.no_grad():
        f.gamma_net[-1].weight.zero_()
        f.gamma_net[-1].bias.zero_()
        f.local_net[-1].weight.zero_()
        f.local_net[-1].bias.zero_()
        assert float(f(rho, grid)) == float(F.create("pbe")(rho, grid))


# --------------------------------------------------------------------------- chunked Lagrangian


def _whole_grid_lagrangian(f, x0, grid, c0, xp, xa, xb):
    """Reference: L = c0 E(x0) + dE[xP] + sum_b d^2E[xA_b, xB_b] by plain autograd on the whole
    grid (the pair maps in ``any_order_geometry``) and its gradients w.r.t. the densities, the
    grid's weights, points and nuclei and the parameters."""
    r = x0.clone().requires_grad_(True)
    dirs = [t.clone().requires_grad_(True) for t in (xp, xa, xb)]
    params = [p for p in f.parameters() if p.requires_grad]
    geo = [grid.weights, grid.coords, grid.atom_coords]
    with egxc.any_order_geometry():
        e = f(r, grid)
        (v,) = torch.autograd.grad(e, r, create_graph=True)
        lag = c0 * e + (v * dirs[0]).sum()
        for a, b in zip(dirs[1], dirs[2], strict=True):
            (h,) = torch.autograd.grad((v * a).sum(), r, create_graph=True)
            lag = lag + (h * b).sum()
        inputs = [r, *dirs, *[t for t in geo if t.requires_grad], *params]
        got = list(torch.autograd.grad(lag, inputs, allow_unused=True))
    out = got[:4]
    for t in geo:
        out.append(got.pop(4) if t.requires_grad else torch.zeros_like(t))
    return lag.detach(), out, got[4:]


@pytest.mark.parametrize("readout", [True, False])
def test_chunked_lagrangian_equals_whole_grid(readout):
    """``EGXC.lagrangian`` (what the excited-state gradients and the recomputed training backward
    call: point chunks between the atom-level seams H, Z and X, memory bounded by the chunk)
    equals plain whole-grid autograd of L = c0 E + dE[xP] + sum_b d^2E[xA_b, xB_b]: the value
    and its gradients w.r.t. x0, xP, xA, xB, the weights, points, nuclei (moving grid; zeros on
    a fixed one) and every parameter, to 1e-10 relative (measured 2e-13), chunks of 997 points
    (ngrid not a multiple), two pairs."""
    torch.manual_seed(21)
    f = perturbed(F.create("egxc", graph_readout=readout, **EGXC_SMALL), scale=0.2)
    rho, grid = water(1)
    gen = torch.Generator().manual_seed(3)
    rnd = lambda *s: rho * torch.randn(*s, *rho.shape, generator=gen, dtype=rho.dtype)  # noqa: E731
    xp, xa, xb = rnd(), rnd(2), rnd(2)
    params = [p for p in f.parameters() if p.requires_grad]
    for moving in (True, False):
        geo = [t.clone().requires_grad_(moving) for t in (grid.weights, grid.coords,
                                                          grid.atom_coords)]  # fmt: skip
        g = Grid(geo[1], geo[0], geo[2], grid.atom_charges)
        for c0 in (1.0, 0.0):
            got = f.lagrangian(rho, g, c0, xp, xa, xb, params=True, chunk=997)
            value, ref, ref_params = _whole_grid_lagrangian(f, rho, g, c0, xp, xa, xb)
            assert abs(float(got.value - value)) <= 1e-12 * abs(float(value))
            names = ("x0", "xp", "xa", "xb", "weights", "coords", "atom_coords")
            for name, b in zip(names, ref, strict=True):
                a = getattr(got, name)
                if moving or name[0] == "x":
                    assert float(b.abs().max()) > 0.0, name
                    assert rel(a, b) < 1e-10, (moving, c0, name, rel(a, b))
                else:
                    assert float(a.abs().max()) == 0.0, name
            assert len(got.params) == len(params)
            for p, a, b in zip(params, got.params, ref_params, strict=True):
                if b is None:
                    assert a is None or float(a.abs().max()) == 0.0
                else:
                    assert rel(a, b) < 1e-10, (p.shape, rel(a, b))
        only = f.lagrangian(rho, g, 1.0, chunk=997)  # E alone: its value and gradient
        with torch.no_grad():
            assert abs(float(only.value - f(rho, g))) <= 1e-12 * abs(float(only.value))
        assert only.xp is None and only.xa is None and only.params is None


def test_chunked_lagrangian_with_a_chunk_beyond_every_cutoff():
    """Points farther than the cutoff from every atom (radial grids reach far out) can fill whole
    chunks: their decoded features are 0 (no pair, no graph to the atom operand) and the
    Lagrangian and its gradients still equal the whole grid's (1e-10, measured 7e-16)."""
    torch.manual_seed(22)
    f = perturbed(F.create("egxc", **EGXC_SMALL), scale=0.2)
    rho, grid = toy_molecule(npts=40)
    far = torch.randn(30, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    far = 12.0 * far / far.norm(dim=1, keepdim=True)  # 12 Bohr out, all atoms within 2 Bohr
    rho_far = torch.tensor([1e-3, 1e-4, -1e-4, 2e-4, 1e-3], dtype=torch.float64)[:, None]
    x0 = torch.cat([rho, rho_far.expand(5, 30)], dim=1)
    g = Grid(torch.cat([grid.coords, far]).requires_grad_(True),
             torch.cat([grid.weights, torch.full((30,), 0.5, dtype=torch.float64)]),
             grid.atom_coords.clone().requires_grad_(True), grid.atom_charges)  # fmt: skip
    chunks = f._pairs(g).point_chunks(30)
    assert not chunks[-1][1]  # the last chunk has no pair
    xp, xa, xb = 0.1 * x0, 0.2 * x0[None], -0.3 * x0[None]
    got = f.lagrangian(x0, g, 1.0, xp, xa, xb, chunk=30)
    value, ref, _ = _whole_grid_lagrangian(f, x0, g, 1.0, xp, xa, xb)
    assert abs(float(got.value - value)) <= 1e-12 * abs(float(value))
    names = ("x0", "xp", "xa", "xb", "weights", "coords", "atom_coords")
    for name, b in zip(names, ref, strict=True):
        assert rel(getattr(got, name), b) < 1e-10, name


def test_chunked_lagrangian_float32_parameters():
    """A float32 EG-XC (float64 features and grid): the chunked Lagrangian's gradients equal the
    whole-grid float32 autograd's to 1e-5 relative (measured 8e-6 for the parameters, 5e-6 for
    the weights, <= 4e-7 for the densities)."""
    torch.manual_seed(21)
    f = perturbed(F.create("egxc", dtype=torch.float32, **EGXC_SMALL), scale=0.2)
    rho, grid = water(1)
    gen = torch.Generator().manual_seed(3)
    rnd = lambda *s: rho * torch.randn(*s, *rho.shape, generator=gen, dtype=rho.dtype)  # noqa: E731
    xp, xa, xb = rnd(), rnd(2), rnd(2)
    geo = [t.clone().requires_grad_(True) for t in (grid.weights, grid.coords, grid.atom_coords)]
    g = Grid(geo[1], geo[0], geo[2], grid.atom_charges)
    got = f.lagrangian(rho, g, 1.0, xp, xa, xb, params=True, chunk=997)
    value, ref, ref_params = _whole_grid_lagrangian(f, rho, g, 1.0, xp, xa, xb)
    assert abs(float(got.value - value)) <= 1e-5 * abs(float(value))
    names = ("x0", "xp", "xa", "xb", "weights", "coords", "atom_coords")
    for name, b in zip(names, ref, strict=True):
        assert rel(getattr(got, name), b) < 1e-5, name
    for a, b in zip(got.params, ref_params, strict=True):
        assert a.dtype == torch.float32 and rel(a, b) < 1e-5


# --------------------------------------------------------------------------- errors


def test_clear_errors():
    rho, grid = toy_molecule()
    f = F.create("egxc")
    with pytest.raises(ValueError, match="atom_coords"):
        f(rho, Grid(grid.coords, grid.weights))
    with pytest.raises(ValueError, match="grid points"):
        f(rho[:, :-1], grid)
    with pytest.raises(ValueError, match="5"):
        f(rho[:4], grid)
    with pytest.raises(ValueError, match="baseline"):
        F.create("egxc", baseline="mlp_mgga")
    with pytest.raises(ValueError, match="max_charge"):
        F.create("egxc", max_charge=4)(rho, grid)
    lonely = Grid(grid.coords, grid.weights, torch.cat([grid.atom_coords, grid.atom_coords[:1]
                  + 50.0]), torch.tensor([8, 1, 1, 1]))  # fmt: skip
    with pytest.raises(ValueError, match="no grid point"):
        F.create("egxc")(rho, lonely)
    with pytest.raises(ValueError, match="xa and xb come together"):
        f.lagrangian(rho, grid, 1.0, None, rho[None])
    with pytest.raises(ValueError, match="one batch"):
        f.lagrangian(rho, grid, 1.0, None, rho[None], torch.stack([rho, rho]))
    with pytest.raises(ValueError, match="grid points"):
        f.lagrangian(rho[:, :-1], grid)


def test_envelope_is_c2_at_the_cutoff():
    x = torch.tensor([1.0 - 1e-4, 1.0, 1.0 + 1e-4], dtype=torch.float64)
    v = _envelope(x)
    assert float(v[1]) == 0.0 and float(v[2]) == 0.0 and 0.0 < float(v[0]) < 1e-9
    assert math.isclose(float(_envelope(torch.zeros(1, dtype=torch.float64))), 1.0)
    assert np.isclose(float(_envelope(torch.tensor([0.5], dtype=torch.float64))),
                      1 - 21 / 32 + 35 / 64 - 15 / 128)  # fmt: skip
