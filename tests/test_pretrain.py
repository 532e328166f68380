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
