"""DI-Loss terms: parameter gradients vs finite differences, and the Hutchinson Hessian estimate.

Water, B3LYP/def2-SVP reference generated in a module fixture at grid level 1 (training on the
same grid), a tiny ``mlp_mgga`` (hidden 8, depth 2) with random weights, float64 throughout.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from _ks import AsNonlocal
from dixc import data, functionals, generate, reference
from dixc.context import MolContext
from dixc.generate import GenerateConfig
from dixc.reference import ReferenceConfig
from dixc.response import OrbitalHessian
from dixc.train import config, losses
from dixc.xc import XCKernel

WATER = """3
water
O  0.000000  0.000000  0.117790
H  0.000000  0.755453 -0.471161
H  0.000000 -0.755453 -0.471161
"""
REF = ReferenceConfig(basis="def2-svp", grid_level=1, k_grad=2, k_hess=3, n_tddft=0)


@pytest.fixture(scope="module")
def water(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train_losses")
    (tmp / "in").mkdir()
    (tmp / "in" / "water.xyz").write_text(WATER)
    cfg = GenerateConfig(
        out=str(tmp / "out"), source=[str(tmp / "in")], threads=1, progress=False, reference=REF
    )
    assert generate.generate(cfg).n_done == 1
    ds = data.ReferenceDataset(cfg.out)
    rec = ds[0]
    ds.close()
    mol = losses.prepare_molecule(rec, ds.config)
    return rec, ds.config, mol


def tiny_functional(seed: int = 3, nonlocal_: bool = False):
    torch.manual_seed(seed)
    f = functionals.create("mlp_mgga", hidden=8, depth=2)
    with torch.no_grad():  # the last layer starts at zero: make the enhancement factor non-trivial
        last = f.net[-1]
        last.weight.normal_(0.0, 0.3)
        last.bias.fill_(0.05)
    return AsNonlocal(f) if nonlocal_ else f


def loss_cfg(term: str, **kw):
    flags = {t: {"enabled": t == term} for t in ("energy", "scf", "grad", "hess")}
    values = {"loss": {"preset": "custom", **flags}}
    cfg = config.resolve(values)
    for k, v in kw.items():
        sec, key = k.split("__")
        setattr(getattr(cfg.loss, sec), key, v)
    return cfg.loss


def _scalar(f, mol, lc, name):
    terms, _ = losses.molecule_losses(f, mol, lc, torch.Generator().manual_seed(7))
    return terms[name]


def _fd_check(f, mol, lc, name, h=2e-3):
    params = [p for p in f.parameters()]
    theta0 = torch.nn.utils.parameters_to_vector(params).detach().clone()
    gen = torch.Generator().manual_seed(11)
    u = torch.randn(theta0.shape, generator=gen, dtype=theta0.dtype)
    u /= u.norm()
    value = _scalar(f, mol, lc, name)
    grads = torch.autograd.grad(value, params)
    analytic = float(torch.cat([g.reshape(-1) for g in grads]) @ u)

    def at(t):
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(theta0 + t * u, params)
        out = float(_scalar(f, mol, lc, name).detach())
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(theta0, params)
        return out

    d = [(at(s) - at(-s)) / (2 * s) for s in (h, h / 2)]
    rich = (4 * d[1] - d[0]) / 3  # O(h^4)
    err_h = abs(d[0] - analytic) / abs(analytic)
    err_h2 = abs(d[1] - analytic) / abs(analytic)
    err_r = abs(rich - analytic) / abs(analytic)
    return float(value.detach()), analytic, err_h, err_h2, err_r


CASES = {
    "energy": ("energy", {}),
    "scf_energy": ("scf", {"scf__n_cycles": 5, "scf__late_cycles": 3}),
    "scf_density": ("scf", {"scf__n_cycles": 5, "scf__late_cycles": 3}),
    "grad": ("grad", {}),
    "hess": ("hess", {"hess__n_probes": 2}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_term_parameter_gradient_matches_finite_differences(water, name):
    _, _, mol = water
    term, kw = CASES[name]
    lc = loss_cfg(term, **kw)
    value, analytic, err_h, err_h2, err_r = _fd_check(tiny_functional(), mol, lc, name)
    print(
        f"{name}: L={value:.4g} dL/du={analytic:.6g} rel.err h={err_h:.1e} h/2={err_h2:.1e} "
        f"Richardson={err_r:.1e}"
    )
    assert value > 0 and abs(analytic) > 0
    # central differences: O(h^2) error that shrinks ~4x when h halves; Richardson is O(h^4)
    assert err_r < 1e-7, (name, err_h, err_h2, err_r)
    assert err_h2 < 1e-4


@pytest.mark.parametrize("name", ["scf_energy", "grad", "hess"])
def test_nonlocal_path_gradient_matches_finite_differences(water, name):
    """Same terms through the generic (nonlocal) paths of V_xc (graph recomputed in backward,
    ``dixc.xc._XCRecompute``) and f_xc (recomputed probe by probe, ``dixc.xc._FxcRecompute``)."""
    _, _, mol = water
    term, kw = CASES[name]
    lc = loss_cfg(term, **kw)
    *_, err_r = _fd_check(tiny_functional(nonlocal_=True), mol, lc, name)
    print(f"nonlocal {name}: Richardson rel.err {err_r:.1e}")
    assert err_r < 1e-7, (name, err_r)


def test_nonlocal_wrapper_gives_identical_terms(water):
    _, _, mol = water
    lc = config.resolve({"loss": {"preset": "E+rho+grad+hess"}}).loss
    lc.scf.n_cycles, lc.scf.late_cycles = 4, 2
    a, _ = losses.molecule_losses(tiny_functional(), mol, lc, torch.Generator().manual_seed(1))
    b, _ = losses.molecule_losses(
        tiny_functional(nonlocal_=True), mol, lc, torch.Generator().manual_seed(1)
    )
    for k in a:
        assert float(a[k].detach()) == pytest.approx(float(b[k].detach()), rel=1e-11), k


@pytest.mark.parametrize("chunk", [1, 2, None])
def test_nonlocal_hessian_term_parameter_gradient_any_probe_chunk(water, chunk):
    """The Hessian term's parameter gradient through the nonlocal path equals the local path's
    (feature Hessian) to 1e-11 however the 3 probes are chunked in the recomputed backward."""
    _, _, mol = water
    lc = loss_cfg("hess", hess__n_probes=None, hess__probe_chunk=chunk)
    grads = []
    for nonlocal_ in (False, True):
        f = tiny_functional(nonlocal_=nonlocal_)
        g = torch.autograd.grad(_scalar(f, mol, lc, "hess"), list(f.parameters()))
        grads.append(torch.cat([gi.reshape(-1) for gi in g]))
    scale = float(grads[0].abs().max())
    assert mol.hess_v.shape[0] == 3 and scale > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-11, atol=1e-11 * scale)


@pytest.mark.parametrize("nonlocal_", [False, True])
def test_hessian_residual_same_for_any_kernel(water, nonlocal_):
    """H_theta v - H_ref v and its parameter gradient are the same (1e-12) whether the kernel at
    D* took these probes' densities up front (``dm1``: for a nonlocal functional E_xc, V_xc and
    f_xc from one recomputed graph), took none, or took other probes' (then it is applied to
    these probes: a stale ``fxc1`` is never used)."""
    _, _, mol = water
    v, tgt, hv_j = mol.hess_v, mol.hess_hv, mol.hess_hv_j
    f = tiny_functional(nonlocal_=nonlocal_)
    params = list(f.parameters())
    dm1s = {
        "these": losses.probe_densities(mol, v),
        "none": None,
        "others": losses.probe_densities(mol, v[:2].flip(0)),
    }
    out = {}
    for key, dm1 in dm1s.items():
        kernel = XCKernel(mol.ctx, f, mol.dm, create_graph=True, dm1=dm1)
        if dm1 is not None:
            assert kernel.fxc1.shape == dm1.shape and torch.equal(kernel.dm1, dm1)
        vxc = mol.ctx.contract_vxc(kernel.wv0, f.xctype)
        res = losses.hessian_residual(f, mol, v, tgt, hv_j, kernel, vxc)
        loss = (res**2).sum() + kernel.exc0
        out[key] = (res.detach(), torch.autograd.grad(loss, params))
    ref_res, ref_grad = out["these"]
    assert float(ref_res.abs().max()) > 0
    for key in ("none", "others"):
        res, grad = out[key]
        torch.testing.assert_close(
            res, ref_res, rtol=1e-12, atol=1e-12 * float(ref_res.abs().max())
        )
        for a, b in zip(grad, ref_grad, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12 * float(b.abs().max() + 1e-300))


# ---- Hutchinson: the probe mean equals |H_theta - H_ref|_F^2 / n_ov -----------------------------
@pytest.fixture(scope="module")
def full_hessians(water):
    """H_theta (engine, exact J) and H_ref (PySCF B3LYP response) as full n_ov x n_ov matrices."""
    rec, ref_config, mol = water
    nocc, nvir = mol.nocc, mol.nvir
    n = nocc * nvir
    basis = torch.eye(n, dtype=torch.float64).reshape(n, nvir, nocc)
    f = tiny_functional()
    pmol = data.record_mole(rec, ref_config)
    ctx = MolContext.from_mol(pmol, grid_level=ref_config["grid_level"], coulomb="exact")
    h_theta = OrbitalHessian(ctx, f, mol.mo_coeff)(basis).reshape(n, n).detach().T
    mf = reference.make_rks(pmol, ReferenceConfig(**ref_config))
    c = rec["scf/mo_coeff"].numpy()
    hv = reference.hessian_vector_products(mf, c, rec["scf/fock"].numpy(), basis.numpy())
    h_ref = torch.as_tensor(hv.reshape(n, n).T)
    return f, ctx, h_theta, h_ref


def _hv_j(ctx, mol, v):
    co, cv = mol.mo_coeff[:, : mol.nocc], mol.mo_coeff[:, mol.nocc :]
    t = cv @ v @ co.T
    return 4.0 * cv.T @ ctx.get_j(2.0 * (t + t.transpose(-1, -2))) @ co


def test_full_reference_hessian_reproduces_stored_probes(water, full_hessians):
    rec = water[0]
    _, _, h_theta, h_ref = full_hessians
    v = rec["hess/v"].reshape(len(rec["hess/v"]), -1)
    stored = rec["hess/hv"].reshape(v.shape)
    err = float((v @ h_ref.T - stored).abs().max() / stored.abs().max())
    assert err < 1e-9, err
    assert float((h_ref - h_ref.T).abs().max()) < 1e-8 * float(h_ref.abs().max())
    assert float((h_theta - h_theta.T).abs().max()) < 1e-9 * float(h_theta.abs().max())


def test_hessian_term_exact_over_orthonormal_bases(water, full_hessians):
    """mean over any orthonormal basis of |dH e_i|^2 is |dH|_F^2 / n exactly (trace identity)."""
    _, _, mol = water
    f, ctx, h_theta, h_ref = full_hessians
    dh = h_theta - h_ref
    n = dh.shape[0]
    exact = float((dh**2).sum()) / n
    q, _ = torch.linalg.qr(
        torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    )
    for basis in (torch.eye(n, dtype=torch.float64), q.T):
        v = basis.reshape(n, mol.nvir, mol.nocc)
        targets = (basis @ h_ref.T).reshape(v.shape)
        res = losses.hessian_residual(f, mol, v, targets, _hv_j(ctx, mol, v))
        estimate = float((res.detach() ** 2).sum()) / n
        print(
            f"ONB estimate {estimate:.12g} exact {exact:.12g} rel {abs(estimate / exact - 1):.1e}"
        )
        assert estimate == pytest.approx(exact, rel=1e-10)


def test_hessian_term_is_unbiased_over_random_unit_probes(water, full_hessians):
    """E_v |dH v|^2 = |dH|_F^2 / n for Gaussian probes normalised to unit Frobenius norm."""
    _, _, mol = water
    f, ctx, h_theta, h_ref = full_hessians
    dh = h_theta - h_ref
    n = dh.shape[0]
    exact = float((dh**2).sum()) / n
    gen = torch.Generator().manual_seed(2024)
    m = 600
    v = torch.randn(m, n, dtype=torch.float64, generator=gen)
    v /= v.norm(dim=1, keepdim=True)
    vv = v.reshape(m, mol.nvir, mol.nocc)
    res = losses.hessian_residual(f, mol, vv, (v @ h_ref.T).reshape(vv.shape), _hv_j(ctx, mol, vv))
    samples = (res.detach() ** 2).reshape(m, -1).sum(1)
    # each sample is exactly |dH v|^2 (the loss assembles H_theta v correctly) ...
    direct = ((v @ dh.T) ** 2).sum(1)
    assert float((samples - direct).abs().max() / direct.max()) < 1e-9
    # ... and their mean estimates |dH|_F^2 / n without bias (z-score of the sample mean)
    z = (float(samples.mean()) - exact) / (float(samples.std()) / np.sqrt(m))
    print(f"Hutchinson: exact {exact:.6g} mean {float(samples.mean()):.6g} z {z:.2f}")
    assert abs(z) < 4.0, z
    # and the estimator with the stored probes is the loss term itself
    lc = loss_cfg("hess", hess__n_probes=None)
    terms, _ = losses.molecule_losses(f, mol, lc)
    k = mol.hess_v.shape[0]
    vs = mol.hess_v.reshape(k, -1)
    manual = float(((vs @ dh.T) ** 2).sum()) / k * lc.energy_scale**2
    assert float(terms["hess"].detach()) == pytest.approx(manual, rel=1e-8)


# ---- targets and normalisation ----------------------------------------------------------------
def test_terms_vanish_for_the_reference_energy_identity(water):
    """E_theta[D*] assembled from stored h+J parts equals the engine's energy at D*."""
    rec, ref_config, mol = water
    from dixc.scf import energy

    f = tiny_functional()
    pmol = data.record_mole(rec, ref_config)
    ctx = MolContext.from_mol(pmol, grid_level=ref_config["grid_level"], coulomb="exact")
    e_engine = float(energy(ctx, f, mol.dm).detach())
    exc = f(mol.ctx.eval_rho(mol.dm, f.xctype), mol.ctx.grid).detach()
    assert float(mol.e_hj + exc) == pytest.approx(e_engine, abs=1e-9)
    # G at D* from stored parts equals the engine's gradient there
    from dixc.response import grassmann_gradient

    lc = loss_cfg("grad", grad__dstar_weight=1.0)
    lc.grad.n_points = 0
    terms, _ = losses.molecule_losses(f, mol, lc)
    g = grassmann_gradient(ctx, f, mol.mo_coeff)
    manual = float((g**2).sum().detach()) * lc.energy_scale**2 / mol.nelec
    assert float(terms["grad"].detach()) == pytest.approx(manual, rel=1e-8)


def test_cycle_weights_grow_and_sum_to_one():
    w = losses.cycle_weights(6, 3, "linear")
    assert len(w) == 7 and w[:4] == [0.0] * 4
    assert w[4] < w[5] < w[6] and sum(w) == pytest.approx(1.0)
    assert losses.cycle_weights(4, 2, "last") == [0, 0, 0, 0, 1.0]


def test_presets_switch_terms():
    for preset, flags in config.PRESETS.items():
        lc = config.resolve({"loss": {"preset": preset}}).loss
        assert {t: getattr(lc, t).enabled for t in flags} == flags
    lc = config.resolve({"loss": {"preset": "E+rho", "hess": {"enabled": True}}}).loss
    assert not lc.hess.enabled  # a preset decides; enabled flags count with preset custom only
    lc = config.resolve({"loss": {"preset": "custom", "scf": {"enabled": False}}}).loss
    assert not lc.scf.enabled and lc.hess.enabled
    with pytest.raises(ValueError, match="unknown loss preset"):
        config.resolve({"loss": {"preset": "E+hess"}})
    with pytest.raises(ValueError, match="unknown config key"):
        config.resolve({"loss": {"hess": {"nprobes": 2}}})


def test_arch_config_is_checked_against_the_architecture():
    """A file's arch_config stays when an override changes model.arch: a clear error names the
    keys the new architecture does not take and the fix; null clears it, then keys are set."""
    file_values = {"model": {"arch": "mlp_mgga", "arch_config": {"hidden": 8, "depth": 2}}}
    msg = r"arch_config has depth, which functional 'egxc' does not take; its options: .*hidden"
    with pytest.raises(ValueError, match=msg + r".*--set model.arch_config=null clears it"):
        config.resolve(file_values, [config.parse_override("model.arch=egxc")])
    sets = ["model.arch=egxc", "model.arch_config=null", "model.arch_config.hidden=16"]
    cfg = config.resolve(file_values, [config.parse_override(t) for t in sets])
    assert cfg.model.arch == "egxc" and cfg.model.arch_config == {"hidden": 16}
    cfg = config.resolve(file_values, [config.parse_override("model.arch_config=null")])
    assert cfg.model.arch_config == {}
    # a functional file to start from replaces arch and arch_config: not checked against them
    values = {"model": {"arch": "egxc", "arch_config": {"depth": 2}, "init": "f.safetensors"}}
    assert config.resolve(values).model.init == "f.safetensors"


def test_dataclass_fields_are_all_documented():
    for key, _, doc in config.field_table():
        assert doc, key
    text = config.documented_yaml()
    assert "loss:" in text and "# " in text
    assert dataclasses.is_dataclass(config.TrainConfig())
