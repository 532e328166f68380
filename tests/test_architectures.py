"""Properties every learnable dixc architecture must have, checked the same way for each.

For "nnmgga", "xcdiff", "skala_mgga", "egxc" (and the generic "mlp_mgga"), with weights perturbed
away from the physics initialisation so the networks are non-trivial:

* invariance: rotating and translating the molecule (grid points, nuclei, density gradients)
  leaves E_xc unchanged to 1e-10 Eh;
* size extensivity: two copies 100 Bohr apart give the sum of the energies to 1e-10 Eh;
* gradcheck / gradgradcheck of E_xc w.r.t. the density matrix through dixc's ops;
* finite energy, potential and second derivatives on grids where the density vanishes;
* save/load round trip: identical weights, config and energies; corrupted files are refused;
* a converged SCF on water and a QM9 molecule from the physics-initialised state;
* Grassmannian gradient G and Hessian products H X vs central differences (<= 1e-7 relative,
  h^2 error scaling) and G vs Richardson-extrapolated differences of E (<= 1e-7 relative);
* third derivatives (f_xc differentiated w.r.t. rho and the parameters, what the Hessian loss
  needs) vs Richardson-extrapolated differences of f_xc (<= 1e-7 relative).
"""

from __future__ import annotations

import math

import pytest
import torch

import dixc.functionals as F
from _ks import pyscf_pbe
from _util import random_rotation, rigid_motion
from dixc import scf as dscf
from dixc.context import MolContext
from dixc.grid import Grid
from dixc.molecules import mole
from dixc.response import grassmann_gradient, hvp, rotate

ARCHS = ["nnmgga", "xcdiff", "skala_mgga", "egxc", "mlp_mgga"]
SMALL = {"mlp_mgga": {"hidden": 16, "depth": 2}}


def perturbed(name: str, seed: int = 0, scale: float = 0.05) -> F.XCFunctional:
    """The architecture with every parameter moved by scale * N(0, 1) (deterministic)."""
    torch.manual_seed(seed)
    f = F.create(name, **SMALL.get(name, {}))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in f.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return f


def energy(f, rho, grid) -> float:
    with torch.no_grad():
        return float(f(rho, grid))


@pytest.fixture(scope="module")
def water_features():
    _, mf, ctx = pyscf_pbe("water", 1)
    rho = ctx.eval_rho(torch.as_tensor(mf.make_rdm1()), "MGGA")
    return rho, ctx.grid


def test_create_names_options_an_architecture_does_not_take():
    with pytest.raises(ValueError, match=r"has depth, widht, which functional 'egxc' does not "
                       r"take; its options: baseline, n_radial"):  # fmt: skip
        F.create("EGXC", widht=3, depth=2, hidden=4)
    with pytest.raises(ValueError, match=r"unknown functional 'egx'; available: .*egxc"):
        F.create("egx")
    assert F.options("skala_mgga") == ["hidden", "n_output_layers", "feature_eps", "rho_min",
                                       "dtype"]  # fmt: skip
    assert F.options("pw92_mod") is None  # a factory taking **cfg passes everything on
    F.check_config("xcdiff", {"hidden": 4})


@pytest.mark.parametrize("name", ARCHS)
def test_rotation_translation_invariance(name, water_features):
    rho, grid = water_features
    f = perturbed(name)
    e0 = energy(f, rho, grid)
    for seed in (1, 2):
        rho2, grid2 = rigid_motion(rho, grid, random_rotation(seed), torch.tensor([0.7, -1.3, 2.1]))
        assert abs(energy(f, rho2, grid2) - e0) < 1e-10


@pytest.mark.parametrize("name", ARCHS)
def test_size_extensivity(name, water_features):
    rho, grid = water_features
    f = perturbed(name)
    rho_b, grid_b = rigid_motion(rho, grid, random_rotation(3), torch.tensor([100.0, 0.0, 0.0]))
    both = Grid(
        coords=torch.cat([grid.coords, grid_b.coords]),
        weights=torch.cat([grid.weights, grid_b.weights]),
        atom_coords=torch.cat([grid.atom_coords, grid_b.atom_coords]),
        atom_charges=torch.cat([grid.atom_charges, grid_b.atom_charges]),
    )
    e_ab = energy(f, torch.cat([rho, rho_b], dim=-1), both)
    e_a, e_b = energy(f, rho, grid), energy(f, rho_b, grid_b)
    assert abs(e_ab - (e_a + e_b)) < 1e-10


@pytest.fixture(scope="module")
def tiny_context():
    """Water in STO-3G on a level-0 grid: small enough for gradcheck through the ops."""
    mol = mole("water", "sto-3g")
    ctx = MolContext.from_mol(mol, grid_level=0, coulomb="none")
    return ctx, torch.as_tensor(mol.RKS().get_init_guess(key="minao"))


@pytest.mark.parametrize("name", ARCHS)
def test_gradcheck_wrt_density_matrix(name, tiny_context):
    ctx, dm0 = tiny_context
    f = perturbed(name)
    gen = torch.Generator().manual_seed(5)
    d = 0.01 * torch.randn(dm0.shape, generator=gen, dtype=torch.float64)

    def exc(t):
        dm = dm0 + t * (d + d.T) / 2
        return f(ctx.eval_rho(dm, "MGGA"), ctx.grid)

    # E_xc along a line through the ops (first and second derivatives), then the full matrix.
    t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(exc, (t,), eps=1e-5, atol=1e-8, rtol=1e-6)
    assert torch.autograd.gradgradcheck(exc, (t,), eps=1e-5, atol=1e-8, rtol=1e-6)
    dm = dm0.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda m: f(ctx.eval_rho((m + m.T) / 2, "MGGA"), ctx.grid), (dm,), eps=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("name", ARCHS)
def test_finite_where_density_vanishes(name, water_features):
    rho, grid = water_features
    f = perturbed(name)
    x = rho.clone()
    ng = x.shape[-1]
    x[:, : ng // 4] = 0.0  # exactly zero density, gradient and tau
    x[:, ng // 4 : ng // 2] *= 1e-30  # vanishing but positive
    x[1:4, ng // 2 : 3 * ng // 4] = 0.0  # zero gradient at finite density
    x = torch.stack([x, rho])  # batched with a normal density
    x.requires_grad_(True)
    e = f(x, grid)
    (v,) = torch.autograd.grad(e.sum(), x, create_graph=True)
    probe = torch.randn_like(x)
    (hv,) = torch.autograd.grad((v * probe).sum(), x)
    for t in (e, v, hv):
        assert torch.isfinite(t).all()
    assert v[0, :, : ng // 4].abs().max() == 0.0  # no density, no potential


@pytest.mark.parametrize("name", ARCHS)
def test_save_load_round_trip(name, water_features, tmp_path):
    rho, grid = water_features
    f = perturbed(name)
    path = tmp_path / f"{name}.safetensors"
    F.save(f, path, extra={"note": "test"})
    g = F.load(path)
    assert type(g) is type(f) and g.config == f.config
    assert g.arch_name == name
    sf, sg = f.state_dict(), g.state_dict()
    assert sf.keys() == sg.keys() and all(torch.equal(sf[k], sg[k]) for k in sf)
    assert torch.equal(f(rho, grid), g(rho, grid))
    assert F.read_metadata(path)["extra"] == {"note": "test"}
    # one flipped bit in the weights is detected
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x10
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(raw))
    with pytest.raises(F.FunctionalFileError, match="corrupted"):
        F.load(bad)


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("molecule", ["water", "qm9_acetamide"])
def test_scf_converges_from_physics_initialisation(name, molecule):
    ctx = MolContext.from_mol(mole(molecule), grid_level=1)
    torch.manual_seed(0)
    f = F.create(name, **SMALL.get(name, {}))
    res = dscf.run_scf(ctx, f, conv_tol=1e-9, conv_tol_grad=1e-5, max_cycle=60)
    assert res.converged, (name, molecule, res.n_cycles, res.grad_norm)
    assert res.grad_norm < 1e-5
    assert math.isfinite(float(res.energy))


def _unit(shape, seed: int) -> torch.Tensor:
    x = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return x / x.norm()


@pytest.mark.parametrize("name", ARCHS)
def test_gradient_and_hvp_match_finite_differences(name):
    _, mf, ctx = pyscf_pbe("water", 1)
    f = perturbed(name)
    n = ctx.nocc
    c0 = torch.as_tensor(mf.mo_coeff)
    nvir = c0.shape[1] - n
    c = rotate(c0, 0.05 * _unit((nvir, n), 1), n)  # a non-stationary point
    x = _unit((nvir, n), 2)

    hx = hvp(ctx, f, c, x)
    errs = {}
    for h in (1e-2, 1e-3, 1e-4):
        gp = grassmann_gradient(ctx, f, rotate(c, h * x, n))
        gm = grassmann_gradient(ctx, f, rotate(c, -h * x, n))
        errs[h] = float(((gp - gm) / (2 * h) - hx).abs().max() / hx.abs().max())
    assert errs[1e-4] <= 1e-7, errs
    assert 30 < errs[1e-2] / errs[1e-3] < 300, errs

    # G vs Richardson-extrapolated central differences of E along y = G / |G| (the h^2 terms
    # cancel). Along G the slope is |G| ~ 1.5 Eh, well above E's round-off (~1e-14 relative of
    # ~76 Eh, thread-count dependent) divided by h; a random direction has a slope ~40x smaller.
    g = grassmann_gradient(ctx, f, c)
    y = g / g.norm()

    def e(t):
        return float(dscf.energy(ctx, f, dscf.make_rdm1(rotate(c, t * y, n), n)).detach())

    d = [(e(h) - e(-h)) / (2 * h) for h in (2e-3, 1e-3)]
    fd = (4 * d[1] - d[0]) / 3
    an = float((g * y).sum())
    assert abs(fd - an) <= 1e-7 * abs(an)


@pytest.mark.parametrize("name", ARCHS)
def test_third_derivatives_match_finite_differences(name, water_features):
    """What the Hessian loss differentiates: the kernel f_xc = d^2 E / d rho^2 applied to a
    direction, differentiated once more w.r.t. rho and w.r.t. the parameters. Autograd's third
    derivatives vs Richardson-extrapolated central differences of f_xc (<= 1e-7 relative); a fused
    op with a wrong third derivative (torch's layer_norm, pytorch#175754) fails this."""
    rho, grid = water_features
    f = perturbed(name)
    gen = torch.Generator().manual_seed(5)
    # Relative changes of the features at points with n > 1e-6: the derivatives of order k grow
    # like n^(4/3 - k) where the density vanishes, so absolute directions would let the tail
    # dominate, and the tail holds points next to the rho_min screening thresholds. The FD
    # direction u scales all features of a point alike: n > 0 and tau >= tau_W stay, so no
    # screening or clamp switches inside the stencil.
    m = rho * (rho[0] > 1e-6)
    v = m * torch.randn(rho.shape, generator=gen, dtype=rho.dtype)
    w = m * torch.randn(rho.shape, generator=gen, dtype=rho.dtype)
    u = m * torch.randn(rho.shape[-1], generator=gen, dtype=rho.dtype)
    params = [p for p in f.parameters() if p.requires_grad]
    # parameter direction of typical size 1e-2 per weight (EG-XC's 67k weights along N(0, 1)
    # leave the quadratic regime of central differences already at steps of 1e-4)
    pdir = [1e-2 * torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]

    def kernel_w(r, create=False):  # w . f_xc[r] v, a scalar
        r = r.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(f(r, grid), r, create_graph=True)
        (hv,) = torch.autograd.grad((g * v).sum(), r, create_graph=True)
        s = (hv * w).sum()
        return r, s if create else float(s.detach())

    r0, s = kernel_w(rho, create=True)
    grads = torch.autograd.grad(s, [r0, *params])
    an_rho = float((grads[0] * u).sum())
    an_par = sum(float((g * d).sum()) for g, d in zip(grads[1:], pdir, strict=True))

    def richardson(fn, h):
        d = [(fn(t) - fn(-t)) / (2 * t) for t in (h, h / 2)]
        return (4 * d[1] - d[0]) / 3

    def along_params(t):
        with torch.no_grad():
            for p, d in zip(params, pdir, strict=True):
                p.add_(t * d)
        try:
            return kernel_w(rho)[1]
        finally:
            with torch.no_grad():
                for p, d in zip(params, pdir, strict=True):
                    p.sub_(t * d)

    fd_rho = richardson(lambda t: kernel_w(rho + t * u)[1], 1e-4)
    fd_par = richardson(along_params, 1e-4)
    print(
        f"{name}: rel. error along rho {abs(fd_rho - an_rho) / abs(an_rho):.1e}, along the "
        f"parameters {abs(fd_par - an_par) / abs(an_par):.1e}"
    )
    assert abs(an_rho) > 0 and abs(an_par) > 0
    assert abs(fd_rho - an_rho) <= 1e-7 * abs(an_rho), (an_rho, fd_rho)
    assert abs(fd_par - an_par) <= 1e-7 * abs(an_par), (an_par, fd_par)
