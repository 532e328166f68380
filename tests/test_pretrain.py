"""Physics initialisation by regression onto a classical functional (dixc.functionals.pretrain)."""

from __future__ import annotations

import torch

import dixc.functionals as F


def test_pretrain_fits_pbe_energy_density():
    torch.manual_seed(0)
    f = F.create("mlp_mgga", hidden=16, depth=2)  # starts as Slater exchange
    res = F.pretrain(f, "pbe", molecules=("water",), steps=60, progress=False)
    assert len(res.exc_error) == 2  # the SCF density and the atomic-guess density
    assert res.loss_final < 1e-3 * res.loss_initial, res
    before = max(abs(e) for _, e in res.exc_error_initial)  # Slater vs PBE: ~1 Eh
    assert before > 0.5
    assert res.max_abs_exc_error < 0.15 * before, (res.exc_error, res.exc_error_initial)


def test_pretrain_densities_reproducible_with_threads():
    """The SCF densities the fit sees are bit-for-bit equal run to run with 2 threads.

    PySCF's threaded SCF moves them by ~1e-11 run to run, which 100 L-BFGS steps amplify to
    ~10 mEh in E_xc; ``_sample_densities`` runs its SCFs on one OpenMP thread.
    """
    from pyscf import lib

    from dixc.functionals.pretrain import _sample_densities

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with lib.with_omp_threads(2):
            a = _sample_densities("pbe", ("water",), "def2-svp", 1)
            b = _sample_densities("pbe", ("water",), "def2-svp", 1)
    finally:
        torch.set_num_threads(threads)
    assert [n for n, *_ in a] == ["water/guess", "water/scf"]
    for (name, rho_a, w_a, _), (_, rho_b, w_b, _) in zip(a, b, strict=True):
        assert torch.equal(rho_a, rho_b), (name, float((rho_a - rho_b).abs().max()))
        assert torch.equal(w_a, w_b), name
