"""The local learnable meta-GGAs: NNmGGA (``nnmgga``), XCdiff (``xcdiff``), Skala-mGGA
(``skala_mgga``); architecture-specific tests (the generic ones live in test_architectures.py).

Inputs: synthetic closed-shell points (n log-uniform, reduced gradient s uniform in [0, 5] with
some s = 0 exactly, random direction of grad n, tau = tau_W + alpha tau_unif with alpha uniform in
[0, 4]) and the PySCF MINAO guess density of water (def2-SVP, level-1 grid). Every derivative
test runs on *perturbed* weights (each parameter + N(0, 1) gain / sqrt(fan-in), the zero output
layers included), so the networks are far from their baselines (checked: the enhancement
over the baseline spreads by more than 10 % over the points).

Checks and tolerances:
    * at construction each equals its classical baseline (``lda`` = Slater + PW92, or ``slater``)
      point by point to 1e-14 relative (measured: bitwise equal) wherever n > rho_min, and is 0
      below, where the baseline is < 1e-13 in magnitude;
    * gradcheck / gradgradcheck of energy_density w.r.t. all five feature rows (central
      differences, step 1e-6, atol 1e-8, rtol 1e-6) in per-point units in which the feature
      Hessian has unit scale (``_unit_curvature_problem``), on random physical points (n from
      1e-6 to 1e2) and on the contract's edge cases inside the unscreened region: grad n = 0,
      grad n = 0 with tau = 0, tau < tau_W by round-off, tau = 0 with grad n != 0, huge s, huge
      alpha, n = 3e-9, n = 50 (measured central-difference errors at step 1e-6: <= 2e-9 on
      gradients of size ~1, <= 6e-8 on Hessians of unit scale);
    * at rho = 0, 1e-30, rho_min, negative rho and noise in grad/tau: value, gradient and the full
      per-point 5x5 Hessian are finite, and exactly 0 where screened;
    * batched ((B, 5, ngrid)) evaluation = per-sample evaluation (values and gradients);
    * parameter counts of the defaults = the formula in each module docstring; float64 default;
      deterministic initialisation under torch.manual_seed;
    * XCdiff's constraints for random weights (several seeds, weight gains up to 30, both
      bounds L = 1.174 (default, the original meta-GGA's) and 1.804): uniform-gas limit
      F_x = F_c = 1 (to 1e-14) at s = 0, alpha = 1 for every density; 0 <= F_x <= L and
      0 <= F_c <= 2, e_c <= 0 over extreme inputs, and with saturated networks the bounds are
      reached (so the checks can fail); uniform scaling of exchange (1e-14); the overflow-free
      bound function equals the original's L sigmoid(w - ln(L - 1)) - 1 (1e-15);
    * NNmGGA: e_xc <= 0 everywhere for random weights (1 + act > 0); its smooth ELU has ELU's
      asymptotes and a continuous second derivative; ``activation='elu'`` (the published network)
      runs through the same generic checks as the defaults; Skala: 0 < F < 2.
"""

from __future__ import annotations

import itertools
import math
import time

import pytest
import torch

import dixc
import dixc.functionals as F
from _util import system
from dixc.functionals.nnmgga import C_S, C_TAU

ARCHS = ["nnmgga", "xcdiff", "skala_mgga"]
# Variants run through the generic checks: the defaults, and NNmGGA with the published ELU.
VARIANTS = {
    "nnmgga": ("nnmgga", {}),
    "nnmgga_elu": ("nnmgga", {"activation": "elu"}),
    "xcdiff": ("xcdiff", {}),
    "skala_mgga": ("skala_mgga", {}),
}
BASELINE = {"nnmgga": "lda", "nnmgga_elu": "lda", "xcdiff": "lda", "skala_mgga": "slater"}
RHO_MIN = 1e-10
DT = torch.float64


def _mlp_params(sizes: list[int]) -> int:
    """Parameters of a chain of Linear layers with biases, widths ``sizes``."""
    return sum(a * b + b for a, b in itertools.pairwise(sizes))


# Parameter-count formulas (also stated in the modules' docstrings).
PARAMS = {
    "nnmgga": _mlp_params([4, 100, 100, 100, 1]),  # 20801
    "xcdiff": _mlp_params([2, 16, 16, 16, 1]) + _mlp_params([4, 16, 16, 16, 1]),  # 609 + 641
    "skala_mgga": _mlp_params([7, 256, 256]) + _mlp_params([256, 256, 1]),  # 133889
}


def points(
    npts: int,
    seed: int,
    log_n: tuple[float, float] = (-6.0, 2.0),
    s_max: float = 5.0,
    alpha_max: float = 4.0,
) -> torch.Tensor:
    """``(5, npts)`` physical closed-shell features; every 7th point has grad n = 0 exactly."""
    g = torch.Generator().manual_seed(seed)
    n = 10.0 ** (log_n[0] + (log_n[1] - log_n[0]) * torch.rand(npts, generator=g, dtype=DT))
    s = s_max * torch.rand(npts, generator=g, dtype=DT)
    s[::7] = 0.0
    direction = torch.randn(3, npts, generator=g, dtype=DT)
    direction = direction / direction.norm(dim=0)
    grad = direction * (s * C_S * n ** (4.0 / 3.0))
    alpha = alpha_max * torch.rand(npts, generator=g, dtype=DT)
    tau = (grad * grad).sum(0) / (8.0 * n) + alpha * C_TAU * n ** (5.0 / 3.0)
    return torch.cat([n[None], grad, tau[None]])


def perturb(f: torch.nn.Module, gain: float = 1.0, seed: int = 0) -> torch.nn.Module:
    """Adds gain N(0, 1) / sqrt(fan-in) to every weight and 0.1 gain N(0, 1) to every bias."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in f.parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
            scale = gain / math.sqrt(p.shape[-1]) if p.dim() == 2 else 0.1 * gain
            p.add_(scale * noise)
    return f


def make(key: str, **cfg) -> torch.nn.Module:
    """The functional of a ``VARIANTS`` key (extra ``cfg`` overrides)."""
    name, base_cfg = VARIANTS[key]
    return F.create(name, **{**base_cfg, **cfg})


def baseline(name: str) -> torch.nn.Module:
    return F.create(BASELINE[name])


def enhancement(name: str, f, rho: torch.Tensor) -> torch.Tensor:
    """e_xc / e_baseline at unscreened points (the model's total enhancement)."""
    return f.energy_density(rho) / baseline(name).energy_density(rho)


@pytest.fixture(scope="module")
def water_rho() -> torch.Tensor:
    sysm = system("water", level=1)
    dm = torch.from_numpy(sysm.dm_guess)
    return dixc.ops.eval_rho_fused(sysm.basis, sysm.grid.coords, dm, "MGGA")


# --------------------------------------------------------------------------- construction


@pytest.mark.parametrize("name", ARCHS)
def test_defaults_dtype_params_and_seeded_init(name):
    f = F.create(name)
    count = sum(p.numel() for p in f.parameters())
    print(f"{name}: {count} parameters (formula {PARAMS[name]})")
    assert count == PARAMS[name]
    assert all(p.dtype == torch.float64 for p in f.parameters())
    assert f.xctype == "MGGA" and f.is_local
    torch.manual_seed(7)
    a = F.create(name).state_dict()
    torch.manual_seed(7)
    b = F.create(name).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    f32 = F.create(name, dtype=torch.float32)
    assert all(p.dtype == torch.float32 for p in f32.parameters())
    rho = points(100, 0)  # float64 features through float32 weights: a float64 energy density
    e32 = perturb(f32).energy_density(rho)
    assert e32.dtype == torch.float64 and torch.isfinite(e32).all()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_init_equals_classical_baseline(name, water_rho):
    f = make(name)
    ref_f = baseline(name)
    for rho in (points(4000, 1, log_n=(-12.0, 4.0)), water_rho):
        e = f.energy_density(rho)
        ref = ref_f.energy_density(rho)
        keep = rho[0] > RHO_MIN
        err = ((e - ref).abs() / ref.abs().clamp(min=1e-300))[keep].max().item()
        print(f"{name} vs {BASELINE[name]}: max rel err {err:.1e} over {int(keep.sum())} points")
        assert err <= 1e-14
        assert torch.equal(e[~keep], torch.zeros_like(e[~keep]))
        if (~keep).any():
            assert ref[~keep].abs().max().item() < 1e-13


def test_nnmgga_slater_baseline_and_bad_options():
    f = F.create("nnmgga", baseline="slater")
    rho = points(500, 2)
    ref = F.create("slater").energy_density(rho)
    assert torch.allclose(f.energy_density(rho), ref, rtol=1e-14, atol=0.0)
    with pytest.raises(ValueError, match="baseline"):
        F.create("nnmgga", baseline="pbe")
    with pytest.raises(ValueError, match="Lieb-Oxford"):
        F.create("xcdiff", lieb_oxford=1.0)
    with pytest.raises(ValueError, match="features of shape"):
        F.create("skala_mgga").energy_density(torch.zeros(4, 3, dtype=DT))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_perturbed_weights_are_far_from_baseline(name):
    f = perturb(make(name))
    ratio = enhancement(name, f, points(2000, 3))
    print(f"{name}: perturbed enhancement over baseline in [{ratio.min():.3f}, {ratio.max():.3f}]")
    assert (ratio.max() - ratio.min()).item() > 0.1


# --------------------------------------------------------------------------- derivatives


def _edge_points() -> torch.Tensor:
    """Unscreened edge cases of the contract: ``(5, 8)``."""
    cols = []
    n = 0.7
    tau_u = C_TAU * n ** (5.0 / 3.0)
    cols.append([n, 0.0, 0.0, 0.0, 0.8 * tau_u])  # grad n = 0
    cols.append([n, 0.0, 0.0, 0.0, 0.0])  # grad n = 0, tau = 0
    g = [0.3, -0.2, 0.1]
    tau_w = sum(x * x for x in g) / (8.0 * n)
    cols.append([n, *g, tau_w * (1.0 - 1e-13)])  # tau < tau_W by round-off
    cols.append([n, *g, 0.0])  # tau = 0 < tau_W
    cols.append([1e-2, 1e3, 0.0, 0.0, 1e3**2 / (8e-2) * 1.5])  # huge s (7.5e4)
    cols.append([2.0, 0.1, 0.2, -0.1, 1e6])  # huge alpha
    cols.append([3e-9, 1e-12, 0.0, 0.0, 1e-14])  # low density, small gradient
    cols.append([50.0, 10.0, 20.0, -5.0, 400.0])  # high density
    return torch.tensor(cols, dtype=DT).T.contiguous()


def _feature_hessian(fn, u: torch.Tensor) -> torch.Tensor:
    """Per-point 5x5 Hessian ``(5, 5, N)`` of a local ``fn`` of ``(5, N)`` features, autograd."""
    u = u.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(u).sum(), u, create_graph=True)
    return torch.stack(
        [torch.autograd.grad(g[k].sum(), u, retain_graph=True)[0] for k in range(5)]
    ).detach()


def _unit_curvature_problem(f, rho0: torch.Tensor):
    """``(fn, u0)`` probing e_xc around ``rho0`` in per-point units with unit curvature.

    u perturbs the features in their natural scales (n, C_S n^(4/3) for grad n, tau_unif for tau)
    divided by sqrt(M), M = max(1, largest |Hessian entry| of e / (C_X n^(4/3)) in natural
    units): a fixed central-difference step then resolves every point's sharpest feature (for
    example Skala's ln(tau/2 + 1e-5) at tau = 0), and gradcheck's absolute and relative
    tolerances mean the same at every point.
    """
    n = rho0[0]
    nat = torch.stack([n, *(3 * [C_S * n ** (4.0 / 3.0)]), C_TAU * n ** (5.0 / 3.0)])
    e_scale = 0.75 * (3.0 / math.pi) ** (1.0 / 3.0) * n ** (4.0 / 3.0)

    def natural(u):
        return f.energy_density(rho0 + nat * u) / e_scale

    hess = _feature_hessian(natural, torch.zeros_like(rho0))
    scale = nat / hess.abs().amax(dim=(0, 1)).clamp(min=1.0).sqrt()

    def fn(u):
        return f.energy_density(rho0 + scale * u) / e_scale

    return fn, torch.zeros_like(rho0)


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("which", ["random", "edges"])
def test_gradcheck_gradgradcheck_energy_density(name, which):
    """Central differences (step 1e-6 in unit-curvature units, see above) vs autograd."""
    f = perturb(make(name), seed=11)
    rho0 = points(16, 5, log_n=(-6.0, 2.0)) if which == "random" else _edge_points()
    fn, u0 = _unit_curvature_problem(f, rho0)
    u0.requires_grad_(True)
    tol = {"eps": 1e-6, "atol": 1e-8, "rtol": 1e-6}
    assert torch.autograd.gradcheck(fn, (u0,), **tol)
    assert torch.autograd.gradgradcheck(fn, (u0,), **tol)


def _value_grad_hessian(f, rho):
    rho = rho.clone().requires_grad_(True)
    e = f.energy_density(rho)
    (g,) = torch.autograd.grad(e.sum(), rho, create_graph=True)
    hess = torch.stack(
        [torch.autograd.grad(g[k].sum(), rho, retain_graph=True)[0] for k in range(5)]
    )
    return e.detach(), g.detach(), hess  # (N,), (5, N), (5, 5, N)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_finite_value_gradient_hessian_at_edge_cases(name):
    f = perturb(make(name), seed=12)
    screened = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0, 0.0],  # rho = 0
            [0.0, 1e-3, -2e-3, 5e-4, 1e-3],  # rho = 0 with gradient/tau noise
            [1e-30, 1e-20, 0.0, 0.0, 1e-25],  # rho = 1e-30
            [-1e-12, 1e-8, 0.0, 0.0, 1e-9],  # negative rho (noise)
            [RHO_MIN, 0.0, 0.0, 0.0, 0.0],  # exactly the threshold
        ],
        dtype=DT,
    ).T
    kept = torch.cat(
        [
            _edge_points(),
            torch.tensor(
                [
                    [2e-10, 0.0, 0.0, 0.0, 0.0],  # just above threshold, grad = tau = 0
                    [1e-8, 1e2, 0.0, 0.0, 0.0],  # s ~ 1e12, tau = 0
                    [1.0, 0.0, 0.0, 0.0, -1e-12],  # tau < 0 (round-off)
                    [1.0, 1e8, 0.0, 0.0, 1e20],  # extreme gradient and tau
                ],
                dtype=DT,
            ).T,
        ],
        dim=1,
    )
    e, g, h = _value_grad_hessian(f, torch.cat([screened, kept], dim=1))
    ns = screened.shape[1]
    for what, x in (("value", e), ("gradient", g), ("hessian", h)):
        assert torch.isfinite(x).all(), f"{name}: non-finite {what}"
        assert torch.equal(x[..., :ns], torch.zeros_like(x[..., :ns])), f"{name}: {what} screened"
    assert (e[ns:] < 0).all()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_batched_equals_per_sample(name, water_rho):
    f = perturb(make(name), seed=13)
    idx = torch.arange(0, water_rho.shape[-1], 97)
    batch = torch.stack([points(idx.numel(), 20), water_rho[:, idx], points(idx.numel(), 21)])
    batch.requires_grad_(True)
    e = f.energy_density(batch)
    (g,) = torch.autograd.grad(e.sum(), batch)
    assert e.shape == (3, idx.numel())
    for b in range(3):
        rb = batch[b].detach().requires_grad_(True)
        eb = f.energy_density(rb)
        (gb,) = torch.autograd.grad(eb.sum(), rb)
        assert torch.allclose(e[b], eb, rtol=1e-13, atol=0.0)
        assert torch.allclose(g[b], gb, rtol=1e-12, atol=1e-300)


# --------------------------------------------------------------------------- XCdiff constraints


def _extreme_points(npts: int, seed: int) -> torch.Tensor:
    """Densities 1e-9..1e5, s 0..1e8 (log-uniform), alpha 0..1e6 (log-uniform) and 0 exactly."""
    g = torch.Generator().manual_seed(seed)
    u = lambda lo, hi: 10.0 ** (lo + (hi - lo) * torch.rand(npts, generator=g, dtype=DT))  # noqa: E731
    n, s, alpha = u(-9.0, 5.0), u(-6.0, 8.0), u(-6.0, 6.0)
    s[::5] = 0.0
    alpha[::3] = 0.0
    grad = torch.zeros(3, npts, dtype=DT)
    grad[0] = s * C_S * n ** (4.0 / 3.0)
    tau = grad[0] ** 2 / (8.0 * n) + alpha * C_TAU * n ** (5.0 / 3.0)
    return torch.cat([n[None], grad, tau[None]])


@pytest.mark.parametrize("bound", [1.174, 1.804])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("gain", [1.0, 30.0])
def test_xcdiff_constraints_for_random_weights(seed, gain, bound):
    f = perturb(F.create("xcdiff", lieb_oxford=bound), gain=gain, seed=seed)
    lda = F.create("lda")
    # Uniform-gas limit: s = 0, alpha = 1 (tau = tau_unif) at any density.
    n = torch.logspace(-9, 5, 300, dtype=DT)
    ueg = torch.zeros(5, 300, dtype=DT)
    ueg[0], ueg[4] = n, C_TAU * n ** (5.0 / 3.0)
    _, fx, fc = f.enhancement_factors(ueg)
    assert (fx - 1.0).abs().max().item() <= 1e-14
    assert (fc - 1.0).abs().max().item() <= 1e-14
    e, ref = f.energy_density(ueg), lda.energy_density(ueg)
    assert ((e - ref).abs() / ref.abs()).max().item() <= 1e-14
    # ... and away from it the networks act (the test above could not pass by a dead network).
    rho = _extreme_points(20000, 100 + seed)
    mask, fx, fc = f.enhancement_factors(rho)
    assert mask.all()
    assert (fx - 1.0).abs().max().item() > 1e-2 and (fc - 1.0).abs().max().item() > 1e-2
    # Lieb-Oxford bound and non-positive correlation over extreme inputs.
    assert fx.min().item() >= 0.0 and fx.max().item() <= f.lieb_oxford
    assert fc.min().item() >= 0.0 and fc.max().item() <= 2.0
    ex, ec = f.exchange_correlation(rho)
    assert torch.isfinite(ex).all() and torch.isfinite(ec).all()
    assert ec.max().item() <= 0.0 and ex.max().item() <= 0.0
    assert torch.allclose(ex + ec, f.energy_density(rho), rtol=1e-15, atol=0.0)


@pytest.mark.parametrize("bias", [-1e3, -5.0, 5.0, 1e3])
def test_xcdiff_bounds_hold_for_saturated_networks(bias):
    """Networks forced to huge outputs: F_x reaches (never passes) 0 or the Lieb-Oxford bound,
    F_c reaches 0 or 2, and the uniform-gas limit still holds exactly."""
    f = perturb(F.create("xcdiff"), seed=4)
    with torch.no_grad():
        for net in (f.net_x, f.net_c):
            net[-1].weight.zero_()
            net[-1].bias.fill_(bias)
    rho = _extreme_points(20000, 9)
    _, fx, fc = f.enhancement_factors(rho)
    assert 0.0 <= fx.min().item() and fx.max().item() <= f.lieb_oxford
    assert 0.0 <= fc.min().item() and fc.max().item() <= 2.0
    if abs(bias) == 1e3:  # saturated: the bounds are attained (to rounding)
        target_x, target_c = (f.lieb_oxford, 0.0) if bias > 0 else (0.0, 2.0)
        assert abs(fx.max().item() - target_x) < 1e-12 or abs(fx.min().item() - target_x) < 1e-12
        assert abs(fc.max().item() - target_c) < 1e-12 or abs(fc.min().item() - target_c) < 1e-12
    _, ec = f.exchange_correlation(rho)
    assert ec.max().item() <= 0.0
    ueg = torch.zeros(5, 50, dtype=DT)
    ueg[0] = torch.logspace(-8, 4, 50, dtype=DT)
    ueg[4] = C_TAU * ueg[0] ** (5.0 / 3.0)
    _, fx, fc = f.enhancement_factors(ueg)
    assert (fx - 1.0).abs().max().item() <= 1e-14 and (fc - 1.0).abs().max().item() <= 1e-14


def test_xcdiff_bound_function_is_the_original_sigmoid():
    from dixc.functionals.xcdiff import bounded_excess

    w = torch.cat([torch.linspace(-40.0, 40.0, 4001, dtype=DT), torch.tensor([0.0], dtype=DT)])
    for lim in (1.174, 1.804, 2.0):
        ref = lim * torch.sigmoid(w - math.log(lim - 1.0)) - 1.0
        got = bounded_excess(w, lim - 1.0)
        assert (got - ref).abs().max().item() <= 1e-15
        assert got[-1].item() == 0.0
        huge = bounded_excess(torch.tensor([-1e300, -1e4, 1e4, 1e300], dtype=DT), lim - 1.0)
        assert huge.tolist() == [-1.0, -1.0, lim - 1.0, lim - 1.0]
        wg = w.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(bounded_excess(wg, lim - 1.0).sum(), wg)
        wr = w.clone().requires_grad_(True)
        (gr,) = torch.autograd.grad(torch.sigmoid(wr - math.log(lim - 1.0)).sum() * lim, wr)
        assert (g - gr).abs().max().item() <= 1e-15


def test_xcdiff_exchange_uniform_scaling():
    """e_x(l^3 n, l^8 sigma, l^5 tau) = l^4 e_x(n, sigma, tau): the exchange net sees no density."""
    f = perturb(F.create("xcdiff"), seed=3)
    rho = points(3000, 4)
    ex, _ = f.exchange_correlation(rho)
    for lam in (0.1, 0.5, 3.0, 20.0):
        scale = torch.tensor([lam**3, lam**4, lam**4, lam**4, lam**5], dtype=DT)[:, None]
        ex_l, _ = f.exchange_correlation(rho * scale)
        err = ((ex_l - lam**4 * ex).abs() / (lam**4 * ex).abs()).max().item()
        assert err <= 1e-14, f"lambda = {lam}: {err:.1e}"


def test_xcdiff_descriptors_match_the_original_formulas():
    """s and alpha descriptors vs direct transcriptions of the original's definitions."""
    from dixc.functionals.xcdiff import alpha_descriptor, s_descriptor

    rho = points(3000, 6)
    n, sigma, tau = rho[0], (rho[1:4] ** 2).sum(0), rho[4]
    s = sigma.sqrt() / (C_S * n ** (4.0 / 3.0))
    ref_s = (1.0 - torch.exp(-(s**2))) * torch.log(s + 1.0)
    got_s = s_descriptor(s**2)
    assert torch.allclose(got_s, ref_s, rtol=1e-12, atol=1e-15)
    tw = sigma / (8.0 * n)
    alpha = torch.relu((tau - tw) / (C_TAU * n ** (5.0 / 3.0) + 1e-3 * tw))
    got_a = alpha_descriptor(n, sigma, tau, n ** (1.0 / 3.0))
    assert torch.allclose(got_a, torch.log((alpha + 1.0) / 2.0), rtol=1e-12, atol=1e-14)
    # Below p = 1e-10 (s < 1e-5) the matched cubic replaces x_s ~ p^(3/2) <= 1e-15: within 1e-16
    # of the exact form absolutely, 0 at p = 0, and relative 1e-6 next to the junction.
    p = torch.tensor([0.0, 1e-14, 1e-12, 5e-11, 0.99e-10, 1e-10, 1.01e-10], dtype=DT)
    exact = -torch.expm1(-p) * torch.log1p(p.sqrt())
    got = s_descriptor(p)
    assert got[0].item() == 0.0
    assert (got - exact).abs().max().item() <= 1e-16
    assert torch.allclose(got[-3:], exact[-3:], rtol=1e-6, atol=0.0)


# --------------------------------------------------------------------------- NNmGGA, Skala


def test_nnmgga_activations():
    """SmoothELU has ELU's asymptotes and is smooth; 'elu' builds the published network."""
    from dixc.functionals.nnmgga import SmoothELU

    act = SmoothELU()
    x = torch.tensor([-1e3, -50.0, 0.0, 50.0, 1e3], dtype=DT)
    y = act(x)
    assert y[0].item() == -1.0 and y[2].item() == 0.0
    assert abs(y[1].item() + 1.0) < 1e-21
    c = math.log(math.e - 1.0)
    assert abs(y[3].item() - (50.0 + c - 1.0)) < 1e-13 and y[4].item() == 1e3 + c - 1.0
    xs = torch.linspace(-30.0, 60.0, 2001, dtype=DT).requires_grad_(True)
    assert torch.autograd.gradgradcheck(act, (xs[::50].detach().requires_grad_(True),))
    (g,) = torch.autograd.grad(act(xs).sum(), xs, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), xs)
    assert (g > 0).all() and (h >= 0).all()  # monotone, convex, second derivative continuous
    assert (h[1:] - h[:-1]).abs().max().item() < 0.02  # no jump (ELU's jumps by 1 at 0)
    elu = F.create("nnmgga", activation="elu")
    assert sum(isinstance(m, torch.nn.ELU) for m in elu.net) == 3
    assert sum(isinstance(m, SmoothELU) for m in F.create("nnmgga").net) == 3
    with pytest.raises(ValueError, match="activation"):
        F.create("nnmgga", activation="relu")


@pytest.mark.parametrize("gain", [1.0, 10.0])
def test_nnmgga_energy_density_nonpositive(gain):
    f = perturb(F.create("nnmgga"), gain=gain, seed=5)
    rho = _extreme_points(20000, 7)
    e = f.energy_density(rho)
    mask, enh = f.enhancement(rho)
    assert mask.all() and torch.isfinite(e).all()
    assert e.max().item() <= 0.0 and enh.min().item() > 0.0
    assert (enh - 1.0).abs().max().item() > 1e-2


@pytest.mark.parametrize("gain", [1.0, 30.0])
def test_skala_enhancement_bounded(gain):
    f = perturb(F.create("skala_mgga"), gain=gain, seed=6)
    rho = _extreme_points(5000, 8)
    mask, enh = f.enhancement(rho)
    assert mask.all() and torch.isfinite(enh).all()
    assert enh.min().item() >= 0.0 and enh.max().item() <= 2.0
    assert (enh - 1.0).abs().max().item() > 1e-2
    e, ex = f.energy_density(rho), F.create("slater").energy_density(rho)
    assert torch.allclose(e, ex * enh, rtol=1e-15, atol=0.0)


def test_skala_features_are_the_published_seven():
    """ln(x + 1e-5) of (n_a, n_b, |grad n_a|^2, |grad n_b|^2, tau_a, tau_b, |grad n|^2)."""
    f = F.create("skala_mgga")
    rho = points(500, 9)
    n, grad, tau = rho[0], rho[1:4], rho[4]
    ga = grad / 2.0  # grad n_a = grad n_b
    raw = [n / 2, n / 2, (ga**2).sum(0), (ga**2).sum(0), tau / 2, tau / 2, (grad**2).sum(0)]
    ref = torch.log(torch.stack(raw, dim=-1) + 1e-5)
    got = f.features(n, (grad**2).sum(0), tau)
    assert torch.allclose(got, ref, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("name", ARCHS)
def test_timing_report(name):
    """Prints forward / double-backward time on 10000 points (informative; bounded loosely)."""
    f = perturb(F.create(name), seed=1)
    rho = points(10000, 10).requires_grad_(True)
    t0 = time.perf_counter()
    e = f.energy_density(rho)
    t1 = time.perf_counter()
    (g,) = torch.autograd.grad(e.sum(), rho, create_graph=True)
    (h,) = torch.autograd.grad((g * torch.ones_like(g)).sum(), rho)
    t2 = time.perf_counter()
    print(f"{name}: forward {1e3 * (t1 - t0):.1f} ms, grad + HVP {1e3 * (t2 - t1):.1f} ms "
          "(10000 points)")  # fmt: skip
    assert torch.isfinite(h).all()
