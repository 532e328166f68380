"""The Torch Kohn-Sham engine: context, Coulomb, SCF driver, unrolled SCF, fixed-D mode.

Tolerances: SCF total energies equal PySCF's (same grid, same density fitting) to 1e-8 Eh; J to
1e-12 relative; unrolled-SCF parameter gradients equal central finite differences to 1e-7 relative
(Richardson-extrapolated, float64).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pyscf import df, gto, scf

import dixc.functionals
from _ks import AUX, pyscf_pbe, rel
from dixc import scf as dscf
from dixc.context import MolContext
from dixc.functionals.mlp import MLPmGGA
from dixc.molecules import mole
from dixc.response import rotate


@pytest.mark.parametrize(
    ("name", "level"),
    [("water", 3), ("qm9_acetamide", 3), pytest.param("benzene", 2, marks=pytest.mark.slow)],
)
def test_pbe_scf_equals_pyscf(name, level):
    _, mf, ctx = pyscf_pbe(name, level)
    res = dscf.run_scf(ctx, dixc.functionals.create("pbe"), conv_tol=1e-11)
    assert res.converged
    assert abs(float(res.energy) - mf.e_tot) < 1e-8
    # Converged densities agree too (the energy is stationary, so this is the stricter check).
    assert rel(res.dm.numpy(), mf.make_rdm1()) < 1e-5
    # Canonical orbital energies of the final Fock matrix.
    np.testing.assert_allclose(res.mo_energy.numpy(), mf.mo_energy, atol=1e-6)
    assert res.grad_norm < 1e-5
    assert torch.equal(res.mo_occ, torch.as_tensor(mf.mo_occ, dtype=torch.float64))


def test_coulomb_df_and_exact_equal_pyscf():
    mol = mole("water", "def2-svp")
    dm = scf.hf.RHF(mol).get_init_guess()
    rng = np.random.default_rng(0)
    dms = np.stack([dm, dm + 0.01 * rng.standard_normal(dm.shape)])  # second one not symmetric
    dfobj = df.DF(mol, auxbasis=AUX)
    ref_df = np.stack([dfobj.get_jk(d, hermi=0, with_k=False)[0] for d in dms])
    ctx = MolContext.from_mol(mol, grid_level=1, auxbasis=AUX)
    got = ctx.get_j(torch.as_tensor(dms)).numpy()
    # Only the symmetric part of D enters J (the integrals are symmetric in (la, si)).
    sym = 0.5 * (dms + dms.transpose(0, 2, 1))
    ref_sym = np.stack([dfobj.get_jk(d, hermi=1, with_k=False)[0] for d in sym])
    assert rel(got, ref_sym) < 1e-12
    assert rel(got, ref_df) < 1e-12
    ctx4 = MolContext.from_mol(mol, grid_level=1, coulomb="exact")
    ref4 = np.stack([scf.hf.get_jk(mol, d, hermi=0, with_k=False)[0] for d in sym])
    assert rel(ctx4.get_j(torch.as_tensor(dms)).numpy(), ref4) < 1e-12


def test_context_tensors_and_dipole():
    mol = mole("water", "def2-svp")
    ctx = MolContext.from_mol(mol, grid_level=1)
    np.testing.assert_allclose(ctx.S.numpy(), mol.intor("int1e_ovlp"), atol=1e-14)
    np.testing.assert_allclose(
        ctx.hcore.numpy(), scf.hf.get_hcore(mol), atol=1e-12 * np.abs(scf.hf.get_hcore(mol)).max()
    )
    assert ctx.e_nuc == pytest.approx(mol.energy_nuc(), rel=1e-15)
    assert ctx.nocc == 5
    x = ctx.orthogonalizer()
    np.testing.assert_allclose((x.T @ ctx.S @ x).numpy(), np.eye(x.shape[1]), atol=1e-12)
    dm = ctx.init_guess()
    ref = scf.hf.dip_moment(mol, dm.numpy(), verbose=0)
    np.testing.assert_allclose(ctx.dipole(dm).numpy(), ref, atol=1e-10)


def test_dense_and_fused_grid_paths_agree():
    mol = mole("water", "def2-svp")
    dense = MolContext.from_mol(mol, grid_level=2)
    fused = MolContext.from_mol(mol, grid_level=2, ao_memory_mb=0.0)
    dm = dense.init_guess()
    f = dixc.functionals.create("pbe")
    e1, v1 = dscf.fock(dense, f, dm)
    e2, v2 = dscf.fock(fused, f, dm)
    assert fused._dense_ao(1) is None and dense._dense_ao(1) is not None
    assert abs(float(e1 - e2)) < 1e-11
    assert rel(v1.numpy(), v2.numpy()) < 1e-12


def test_open_shell_and_bad_input_errors():
    mol = gto.M(atom="O 0 0 0; H 0 0 1", basis="sto-3g", spin=1, verbose=0)
    with pytest.raises(ValueError, match="closed-shell"):
        MolContext.from_mol(mol)
    ctx = MolContext.from_mol(mole("water", "sto-3g"), grid_level=1)
    with pytest.raises(ValueError, match="shape"):
        dscf.run_scf(ctx, dixc.functionals.create("lda"), dm0=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="NaN"):
        dscf.run_scf(ctx, dixc.functionals.create("lda"), dm0=torch.full((7, 7), float("nan")))
    with pytest.raises(ValueError, match="coulomb"):
        MolContext.from_mol(mole("water", "sto-3g"), coulomb="ri")


def test_nonconvergence_is_flagged_and_warned():
    _, _, ctx = pyscf_pbe("water", 3)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        res = dscf.run_scf(ctx, dixc.functionals.create("pbe"), max_cycle=2)
    assert not res.converged
    assert res.n_cycles == 2


def test_damping_and_level_shift_reach_the_same_minimum():
    _, mf, ctx = pyscf_pbe("water", 3)
    res = dscf.run_scf(
        ctx,
        dixc.functionals.create("pbe"),
        conv_tol=1e-11,
        damping=0.5,
        damp_cycles=4,
        level_shift=0.3,
        max_cycle=200,
    )
    assert res.converged
    assert abs(float(res.energy) - mf.e_tot) < 1e-8


def test_fixed_density_mode_energy_gradient_is_fock():
    """dE/dD by autograd through the ops equals F, and <F, dD> equals central differences.

    D and the direction are differences of rotated physical densities (a random symmetric
    perturbation would make rho negative somewhere, where libxc-style screening has kinks).
    """
    _, mf, ctx = pyscf_pbe("water", 3)
    f = dixc.functionals.create("pbe")
    c, n = torch.as_tensor(mf.mo_coeff), ctx.nocc
    x = torch.randn(c.shape[1] - n, n, dtype=torch.float64)
    x /= x.norm()
    dm = dscf.make_rdm1(rotate(c, 0.05 * x, n), n).requires_grad_(True)
    e = dscf.energy(ctx, f, dm)
    (g,) = torch.autograd.grad(e, dm)
    e2, fk = dscf.fock(ctx, f, dm.detach())
    assert abs(float(e.detach() - e2)) < 1e-12
    assert rel(g.numpy(), fk.numpy()) < 1e-12
    d = dscf.make_rdm1(rotate(c, 0.1 * x.flip(0), n), n) - torch.as_tensor(mf.make_rdm1())
    an = float((fk * d).sum())
    errs = []
    with torch.no_grad():
        for h in (1e-1, 1e-2, 1e-3):
            fd = (dscf.energy(ctx, f, dm + h * d) - dscf.energy(ctx, f, dm - h * d)) / (2 * h)
            errs.append(abs(float(fd) - an) / abs(an))
    assert errs[2] < 1e-8
    assert errs[0] / errs[1] > 50  # h^2 scaling (h = 1e-3 is at the rounding floor already)


def _sym(a: torch.Tensor) -> torch.Tensor:
    return (a + a.T) / 2


def _tiny_mlp(seed: int = 0) -> MLPmGGA:
    torch.manual_seed(seed)
    f = MLPmGGA(hidden=8, depth=2)
    with torch.no_grad():
        for p in f.parameters():
            p.copy_(0.1 * torch.randn_like(p))
    return f


def test_unrolled_scf_parameter_gradient_matches_finite_differences():
    mol = mole("water", "def2-svp")
    ctx = MolContext.from_mol(mol, grid_level=1)
    f = _tiny_mlp()
    dm0 = ctx.init_guess()

    def loss(model):
        return dscf.unrolled_scf(ctx, model, dm0, n_cycles=3).energy

    value = loss(f)
    params = dict(f.named_parameters())
    grads = dict(zip(params, torch.autograd.grad(value, list(params.values())), strict=True))
    assert all(bool(torch.isfinite(g).all()) for g in grads.values())
    # One entry of the first layer's weight, of a hidden bias and of the output layer.
    picks = [("net.0.weight", (3, 1)), ("net.2.bias", (5,)), ("net.4.weight", (0, 2))]
    for name, idx in picks:
        p = params[name]
        with torch.no_grad():
            orig = p[idx].item()

            def at(v, p=p, idx=idx):
                p[idx] = v
                return float(loss(f).detach())

            # Richardson extrapolation of central differences: error O(h^4).
            d = [(at(orig + h) - at(orig - h)) / (2 * h) for h in (2e-4, 1e-4)]
            p[idx] = orig
        fd = (4 * d[1] - d[0]) / 3
        assert abs(grads[name][idx].item() - fd) <= 1e-7 * max(abs(fd), 1e-3), (name, idx, fd)


def test_unrolled_energies_trajectory_and_convergence():
    _, mf, ctx = pyscf_pbe("water", 3)
    f = dixc.functionals.create("pbe")
    res = dscf.unrolled_scf(ctx, f, n_cycles=14)
    assert len(res.energies) == 15 and len(res.dms) == 15
    assert res.converged
    assert abs(float(res.energy.detach()) - mf.e_tot) < 1e-7
    # Every cycle's energy is its density's energy.
    k = 3
    assert abs(float((res.energies[k] - dscf.energy(ctx, f, res.dms[k])).detach())) < 1e-10
    short = dscf.unrolled_scf(ctx, f, n_cycles=2)
    assert not short.converged


def test_unrolled_gradient_is_finite_with_degenerate_orbitals():
    """Benzene's degenerate occupied and virtual pairs: eigh's own backward would give NaN."""
    mol = mole("benzene", "sto-3g")
    ctx = MolContext.from_mol(mol, grid_level=1)
    f = _tiny_mlp(1)
    res = dscf.unrolled_scf(ctx, f, n_cycles=3)
    e = res.mo_energy
    gaps = (e[1:] - e[:-1]).abs()
    assert bool((gaps < 1e-6).any()), "test needs degenerate levels"
    grads = torch.autograd.grad(res.energy, list(f.parameters()))
    assert all(bool(torch.isfinite(g).all()) for g in grads)
