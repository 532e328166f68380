"""Density and energy metrics of a (learned) density against the B3LYP reference (DESIGN.md 6).

All functions take density matrices D (spin-summed, ``(nao, nao)``, AO basis of the reference)
and a PySCF reference object ``mf`` = :func:`reference_rks` (the reference functional, basis,
grid and Coulomb treatment exactly as in the data set's ``reference_config``), so the numbers are
on the same footing as the stored reference energies.

Definitions (Hartree, Bohr, Debye):
    E_mf[D]       = tr(V_ne D) + 1/2 tr(D J[D])           mean-field (external + Hartree) energy
    E_rho error   = E_mf[D_theta] - E_mf[D*]
    density-driven error = E_B3LYP[D_theta] - E_B3LYP[D*]  (>= 0 up to grid noise: D* minimises
                                                          E_B3LYP over idempotent densities)
    L2 error      = sqrt( sum_g w_g (rho_theta(r_g) - rho*(r_g))^2 )     (e Bohr^-3/2)
    L1 error      = sum_g w_g |rho_theta(r_g) - rho*(r_g)|                (electrons)
    dipole error  = |mu_theta - mu*|  (Euclidean norm of the vector difference, Debye)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from dixc.context import MolContext


def reference_rks(mol, config: Mapping[str, Any]):
    """The data set's reference RKS object (not run) with its grid built.

    Args:
        mol: PySCF ``Mole`` (``dixc.data.record_mole``).
        config: the data set's ``reference_config`` (``ReferenceDataset.config``).

    Returns:
        ``pyscf.dft.rks.RKS`` (density-fitted when the reference was).
    """
    from dixc.reference import ReferenceConfig, make_rks

    mf = make_rks(mol, ReferenceConfig.from_dict(dict(config)))
    mf.grids.build(with_non0tab=True)
    return mf


def _np(dm) -> np.ndarray:
    if isinstance(dm, torch.Tensor):
        return dm.detach().cpu().numpy().astype(np.float64)
    return np.asarray(dm, dtype=np.float64)


def external_potential(mol) -> np.ndarray:
    """V_ne ``(nao, nao)``: nuclear attraction (plus ECP, if any), Hartree."""
    v = mol.intor_symmetric("int1e_nuc")
    if mol.has_ecp():
        v = v + mol.intor_symmetric("ECPscalar")
    return v


def mean_field_energy(mf, dm) -> float:
    """E_mf[D] = tr(V_ne D) + 1/2 tr(D J[D]) (Hartree) with the reference's Coulomb treatment."""
    d = _np(dm)
    vj = np.asarray(mf.get_j(mf.mol, d, hermi=1))
    return float(
        np.einsum("ij,ji->", external_potential(mf.mol), d) + 0.5 * np.einsum("ij,ji->", vj, d)
    )


def reference_energy(mf, dm) -> float:
    """E_ref[D] (Hartree): the reference functional (B3LYP) evaluated at any density matrix."""
    return float(mf.energy_tot(dm=_np(dm)))


def l2_density_error(ctx: MolContext, dm, dm_ref) -> tuple[float, float]:
    """(L2, L1) norms of rho[D] - rho[D_ref] on ``ctx``'s grid.

    Returns:
        ``(sqrt(sum_g w_g drho^2)`` in e Bohr^-3/2, ``sum_g w_g |drho|`` in electrons).
    """
    d = torch.as_tensor(_np(dm) - _np(dm_ref), dtype=torch.float64, device=ctx.device)
    drho = ctx.eval_rho(d, "LDA")[0]
    w = ctx.grid.weights
    return float(torch.sqrt(w @ drho**2)), float(w @ drho.abs())


def dipole(ctx: MolContext, dm) -> np.ndarray:
    """Dipole moment ``(3,)`` of D (nuclei included), Debye."""
    d = torch.as_tensor(_np(dm), dtype=torch.float64, device=ctx.device)
    return ctx.dipole(d).cpu().numpy()


def density_metrics(
    mf,
    ctx: MolContext,
    dm,
    dm_ref,
    dipole_ref=None,
    e_ref_at_ref: float | None = None,
) -> dict[str, float]:
    """Every density metric of ``dm`` against ``dm_ref`` (Hartree; see the module docstring).

    Args:
        mf: :func:`reference_rks` of the molecule.
        ctx: context whose grid measures the density error (the reference grid).
        dm: ``(nao, nao)`` density matrix to score (D_theta).
        dm_ref: ``(nao, nao)`` reference density D*.
        dipole_ref: ``(3,)`` stored reference dipole (Debye); None: computed from ``dm_ref``.
        e_ref_at_ref: E_ref[D*] if already known (saves one Fock build).

    Returns:
        dict with ``e_mf``, ``e_mf_ref``, ``e_rho_error``, ``e_ref_at_dm``, ``e_ref_at_ref``,
        ``density_driven_error`` (Hartree), ``l2_rho``, ``l1_rho``, ``dipole`` (list, Debye),
        ``dipole_ref``, ``dipole_error`` (Debye, norm of the difference),
        ``dipole_magnitude_error`` (|mu| - |mu*|, Debye).
    """
    e_mf = mean_field_energy(mf, dm)
    e_mf_ref = mean_field_energy(mf, dm_ref)
    e_dm = reference_energy(mf, dm)
    e_rr = reference_energy(mf, dm_ref) if e_ref_at_ref is None else float(e_ref_at_ref)
    l2, l1 = l2_density_error(ctx, dm, dm_ref)
    mu = dipole(ctx, dm)
    mu_ref = dipole(ctx, dm_ref) if dipole_ref is None else _np(dipole_ref).reshape(3)
    return {
        "e_mf": e_mf,
        "e_mf_ref": e_mf_ref,
        "e_rho_error": e_mf - e_mf_ref,
        "e_ref_at_dm": e_dm,
        "e_ref_at_ref": e_rr,
        "density_driven_error": e_dm - e_rr,
        "l2_rho": l2,
        "l1_rho": l1,
        "dipole": mu.tolist(),
        "dipole_ref": mu_ref.tolist(),
        "dipole_error": float(np.linalg.norm(mu - mu_ref)),
        "dipole_magnitude_error": float(np.linalg.norm(mu) - np.linalg.norm(mu_ref)),
    }


def coulomb_consistent_energy(mf, ctx: MolContext, e_scf: float, dm) -> float:
    """The SCF energy with its Coulomb term recomputed as the reference computes it.

    dixc's SCF builds J by density fitting by default; the reference (and hence E_B3LYP) usually
    uses exact integrals. At the same density, E = E_scf - 1/2 tr(D J_ctx[D]) + 1/2 tr(D J_ref[D])
    removes the fitting error from the comparison (the density itself moves only at second order).
    """
    if ctx.eri is None and ctx.cderi is None:
        raise ValueError("dixc: the SCF context has no Coulomb operator")
    d = torch.as_tensor(_np(dm), dtype=torch.float64, device=ctx.device)
    ej_ctx = 0.5 * float(torch.einsum("ij,ji->", ctx.get_j(d), d))
    vj = np.asarray(mf.get_j(mf.mol, _np(dm), hermi=1))
    ej_ref = 0.5 * float(np.einsum("ij,ji->", vj, _np(dm)))
    return float(e_scf) - ej_ctx + ej_ref
