"""The DI-Loss terms of one molecule (DESIGN.md section 5), each switchable and weighted.

A pure dixc functional has no exact exchange, so every target splits into a stored part that does
not depend on the functional (core + Coulomb, suffix ``_hj`` in the data) and an XC part computed
here by autograd through the ops (``docs/generate.md``). Training never builds J except in the
unrolled SCF. With s = ``energy_scale`` (1000: energies in mEh), N_el electrons and
n_ov = n_vir n_occ rotation parameters, the terms are (each ``((),)`` and graph-carrying):

``energy``
    (s (E_theta[D*] - E_ref) / N_el)^2, E_theta[D*] = E_nuc + tr(h D*) + 1/2 tr(D* J[D*]) +
    E_xc^theta[D*] (the first three stored); a per-electron error, squared.
``scf_energy``, ``scf_density``
    an unrolled SCF (``dixc.scf.unrolled_scf``, graph through every cycle) from a fixed guess;
    sum_k w_k (s (E_k - E_ref) / N_el)^2 and sum_k w_k integral (rho_k - rho*)^2 dr / N_el over the
    last L cycles with weights growing linearly (w_k proportional to 1, 2, ..., L; sum 1).
``grad``
    (c |s G_theta(D*)|^2 + sum_k |s (G_theta(D_k) - G_ref(D_k))|^2) / ((c + K) N_el) over the
    stored perturbed points D_k (a random subset of K per step); G_ref(D*) = 0 (the stored
    |G(D*)| is below the reference's grad_tol), c = ``dstar_weight``;
    G_theta(D_k) = g_hj_k + 4 (C_k^T V_xc^theta[D_k] C_k)_vo.
``hess``
    mean_j |s (H_theta v_j - H_ref v_j)|^2 over a random subset of the stored probes v_j (unit
    Frobenius norm, uniformly distributed on the sphere), at D*:
    H_theta v = 4 (M_vv v - v M_oo) + hv_j + 4 [(W_vv v - v W_oo) + C_v^T f_xc^theta[dD] C_o],
    M = C^T F_hj C, W = C^T V_xc^theta C, dD = 2 (C_v v C_o^T + C_o v^T C_v^T).

Size normalisation. Think of M non-interacting copies of a molecule: the energy error and N_el
grow as M, so (dE / N_el)^2 stays put; integral (drho)^2, |dG|_F^2 (block diagonal in localised
orbitals; the Frobenius norm is invariant to occupied-occupied and virtual-virtual rotations) grow
as M, hence / N_el; |dH|_F^2 grows as n_ov ~ M^2 (cross-copy pairs carry orbital-energy errors),
and for unit probes E_v |dH v|^2 = |dH|_F^2 / n_ov exactly (E[v v^T] = 1 / n_ov for v uniform on
the unit sphere), so the probe mean is already intensive. Every term is therefore intensive.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch

from dixc.context import MolContext
from dixc.data import MoleculeRecord, record_context, rotated_orbitals
from dixc.functionals.base import XCFunctional
from dixc.scf import run_scf, unrolled_scf
from dixc.xc import XCKernel, exc_vxc

TERMS = ("energy", "scf_energy", "scf_density", "grad", "hess")


@dataclasses.dataclass
class TrainMolecule:
    """One reference molecule prepared for training (tensors on the training device).

    Attributes:
        id: molecule id.
        ctx: the molecule's context on the training grid (J by density fitting).
        nelec: electron count N_el.
        nocc, nvir: occupied / virtual orbital counts.
        mo_coeff: ``(nao, nmo)`` reference canonical orbitals C*.
        dm: ``(nao, nao)`` reference density D*.
        e_ref: reference total energy (Eh).
        e_hj: E_nuc + tr(h D*) + 1/2 tr(D* J[D*]) (Eh).
        fock_hj: ``(nao, nao)`` h + J[D*].
        g_hj: ``(nvir, nocc)`` 4 (C*^T F_hj C*)_vo.
        grad_c: ``(K_g, nao, nmo)`` orbitals C(X_k) of the perturbed points.
        grad_g, grad_g_hj: ``(K_g, nvir, nocc)`` reference gradient and its h+J part there.
        grad_e, grad_e_hj: ``(K_g,)`` reference energies and their h+J parts there.
        hess_v, hess_hv, hess_hv_j: ``(K_h, nvir, nocc)`` probes, reference H v, J part of H v.
        rho_ref: ``(ngrid,)`` reference density on the training grid.
    """

    id: str
    ctx: MolContext
    nelec: int
    nocc: int
    nvir: int
    mo_coeff: torch.Tensor
    dm: torch.Tensor
    e_ref: float
    e_hj: float
    fock_hj: torch.Tensor
    g_hj: torch.Tensor
    grad_c: torch.Tensor
    grad_g: torch.Tensor
    grad_g_hj: torch.Tensor
    grad_e: torch.Tensor
    grad_e_hj: torch.Tensor
    hess_v: torch.Tensor
    hess_hv: torch.Tensor
    hess_hv_j: torch.Tensor
    rho_ref: torch.Tensor
    _guesses: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def n_ov(self) -> int:
        return self.nocc * self.nvir

    def guess(self, key: str) -> torch.Tensor:
        """``(nao, nao)`` start density: a PySCF guess name or ``reference`` (D*); cached."""
        if key not in self._guesses:
            self._guesses[key] = self.dm.clone() if key == "reference" else self.ctx.init_guess(key)
        return self._guesses[key]


def prepare_molecule(
    rec: MoleculeRecord,
    ref_config: Mapping[str, Any],
    grid_level: int | None = None,
    device: torch.device | str = "cpu",
    ao_memory_mb: float = 256.0,
) -> TrainMolecule:
    """Builds the context and moves a stored molecule's targets to ``device``.

    Args:
        rec: the stored reference molecule.
        ref_config: the data set's reference config (``ReferenceDataset.config``).
        grid_level: training grid level (None: the reference's).
        device: training device.
        ao_memory_mb: dense AO arrays up to this size are kept (faster grid work).
    """
    ctx = record_context(
        rec, ref_config, grid_level=grid_level, coulomb="df", device=device,
        ao_memory_mb=ao_memory_mb,
    )  # fmt: skip
    t = {k: v.to(device) for k, v in rec.items() if v.is_floating_point()}
    nocc = int(rec.attrs["nocc"])
    c = t["scf/mo_coeff"]
    dm = t["scf/dm"]
    rho_ref = ctx.eval_rho(dm, "LDA")[..., 0, :].detach()
    e_hj = float(t["scf/e_nuc"] + t["scf/e_core"] + t["scf/e_coulomb"])
    return TrainMolecule(
        id=rec.id,
        ctx=ctx,
        nelec=2 * nocc,
        nocc=nocc,
        nvir=c.shape[1] - nocc,
        mo_coeff=c,
        dm=dm,
        e_ref=float(t["scf/e_tot"]),
        e_hj=e_hj,
        fock_hj=t["scf/fock_hj"],
        g_hj=t["scf/g_hj"],
        grad_c=rotated_orbitals(c, t["grad/x"]),
        grad_g=t["grad/g"],
        grad_g_hj=t["grad/g_hj"],
        grad_e=t["grad/e_tot"],
        grad_e_hj=t["grad/e_hj"],
        hess_v=t["hess/v"],
        hess_hv=t["hess/hv"],
        hess_hv_j=t["hess/hv_j"],
        rho_ref=rho_ref,
    )


# ---- individual terms -------------------------------------------------------------------------
def cycle_weights(n_cycles: int, late: int, growth: str = "linear") -> list[float]:
    """Weights w_k of SCF cycles k = 0..n_cycles (only the last ``late`` nonzero; sum 1)."""
    raw = {"linear": [float(i + 1) for i in range(late)], "uniform": [1.0] * late}
    w = raw.get(growth, [0.0] * (late - 1) + [1.0])
    total = sum(w)
    return [0.0] * (n_cycles + 1 - late) + [x / total for x in w]


def subset(n: int, k: int | None, generator: torch.Generator | None) -> torch.Tensor:
    """``k`` of ``range(n)`` drawn without replacement (sorted), or all of them."""
    if k is None or k >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=generator)[:k].sort().values


def density_error(mol: TrainMolecule, dm: torch.Tensor) -> torch.Tensor:
    """integral (rho_D - rho*)^2 dr on the training grid (electrons^2 / Bohr^3)."""
    rho = mol.ctx.eval_rho(dm, "LDA")[..., 0, :]
    return ((rho - mol.rho_ref) ** 2) @ mol.ctx.grid.weights


def probe_densities(mol: TrainMolecule, probes: torch.Tensor) -> torch.Tensor:
    """``(B, nao, nao)`` response densities dD = 2 (t + t^T), t = C_v v C_o^T, of probes
    ``(B, nvir, nocc)`` (the first-order change of D* along the rotation v)."""
    co, cv = mol.mo_coeff[:, : mol.nocc], mol.mo_coeff[:, mol.nocc :]
    t = cv @ probes @ co.T
    return 2.0 * (t + t.transpose(-1, -2))


def hessian_residual(
    f: XCFunctional,
    mol: TrainMolecule,
    probes: torch.Tensor,
    targets: torch.Tensor,
    hv_j: torch.Tensor,
    kernel: XCKernel | None = None,
    vxc: torch.Tensor | None = None,
) -> torch.Tensor:
    """H_theta v - H_ref v at D* for probes ``(B, nvir, nocc)`` (graph-carrying; Eh).

    Args:
        f: the functional.
        mol: the molecule.
        probes: ``(B, nvir, nocc)`` directions v.
        targets: ``(B, nvir, nocc)`` reference H_ref v.
        hv_j: ``(B, nvir, nocc)`` the stored Coulomb response 4 C_v^T J[dD] C_o of each probe.
        kernel, vxc: an existing ``XCKernel`` at D* (create_graph=True) and V_xc^theta[D*]; a
            kernel made with ``dm1=probe_densities(mol, probes)`` (these probes) gives its
            ``fxc1``, any other is applied to the probes' densities.
    """
    ctx, n = mol.ctx, mol.nocc
    dm1 = probe_densities(mol, probes)
    if kernel is None:
        kernel = XCKernel(ctx, f, mol.dm, create_graph=True, dm1=dm1)
    if vxc is None:
        vxc = ctx.contract_vxc(kernel.wv0, f.xctype)
    c = mol.mo_coeff
    co, cv = c[:, :n], c[:, n:]
    m = c.T @ (mol.fock_hj + vxc) @ c
    # the kernel's own products only if it was made for these probes (equal is False across shapes)
    made_for_these = kernel.dm1 is not None and torch.equal(kernel.dm1, dm1)
    fx = kernel.fxc1 if made_for_these else kernel(dm1)
    hv = 4.0 * (m[n:, n:] @ probes - probes @ m[:n, :n]) + hv_j + 4.0 * (cv.T @ fx @ co)
    return hv - targets


def molecule_losses(
    f: XCFunctional,
    mol: TrainMolecule,
    loss_cfg: Any,
    generator: torch.Generator | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The enabled DI-Loss terms of one molecule (unweighted; see the module docstring).

    Args:
        f: the functional being trained.
        mol: a prepared molecule.
        loss_cfg: a ``LossConfig`` (enabled flags, sizes, energy scale).
        generator: draws the perturbed-point and probe subsets (seeded per step and molecule).

    Returns:
        ``(terms, info)``: ``terms`` maps enabled term names (of ``TERMS``) to 0-d graph-carrying
        tensors; ``info`` has ``scf_converged`` / ``scf_grad_norm`` when the SCF term ran.
    """
    ctx, n, s = mol.ctx, mol.nocc, float(loss_cfg.energy_scale)
    terms: dict[str, torch.Tensor] = {}
    info: dict[str, Any] = {}
    use_e, use_g, use_h = loss_cfg.energy.enabled, loss_cfg.grad.enabled, loss_cfg.hess.enabled
    exc0 = vxc0 = kernel = None
    # the random subsets, drawn in a fixed order: perturbed points, then probes
    idx_g = subset(mol.grad_c.shape[0], loss_cfg.grad.n_points, generator) if use_g else None
    idx_h = subset(mol.hess_v.shape[0], loss_cfg.hess.n_probes, generator) if use_h else None
    if use_h:  # one functional evaluation at D* gives E_xc, V_xc and the probes' f_xc products
        kernel = XCKernel(ctx, f, mol.dm, create_graph=True, probe_chunk=loss_cfg.hess.probe_chunk,
                          dm1=probe_densities(mol, mol.hess_v[idx_h]))  # fmt: skip
        exc0, vxc0 = kernel.exc0, ctx.contract_vxc(kernel.wv0, f.xctype)
    elif use_g:
        exc0, vxc0 = exc_vxc(ctx, f, mol.dm, create_graph=True)
    elif use_e:
        exc0 = f(ctx.eval_rho(mol.dm, f.xctype), ctx.grid)
    if use_e:
        terms["energy"] = (s * (mol.e_hj + exc0 - mol.e_ref) / mol.nelec) ** 2
    if loss_cfg.scf.enabled:
        sc = loss_cfg.scf
        r = unrolled_scf(
            ctx, f, mol.guess(sc.init_guess), sc.n_cycles, diis_space=sc.diis_space,
            damping=sc.damping, level_shift=sc.level_shift, conv_tol=sc.conv_tol,
            conv_tol_grad=sc.conv_tol_grad,
        )  # fmt: skip
        w = cycle_weights(sc.n_cycles, sc.late_cycles, sc.growth)
        late = [k for k, wk in enumerate(w) if wk > 0.0]
        e = torch.stack([r.energies[k] for k in late])
        wt = torch.tensor([w[k] for k in late], dtype=e.dtype, device=e.device)
        terms["scf_energy"] = wt @ (s * (e - mol.e_ref) / mol.nelec) ** 2
        drho = density_error(mol, torch.stack([r.dms[k] for k in late]))
        terms["scf_density"] = wt @ drho / mol.nelec
        info["scf_converged"] = bool(r.converged)
        info["scf_grad_norm"] = float(r.grad_norm)
    if use_g:
        g = loss_cfg.grad
        g_star = mol.g_hj + 4.0 * mol.mo_coeff[:, n:].T @ vxc0 @ mol.mo_coeff[:, :n]
        total = g.dstar_weight * (s * g_star).pow(2).sum()
        if len(idx_g):
            ck = mol.grad_c[idx_g]
            co, cv = ck[..., :n], ck[..., n:]
            _, vk = exc_vxc(ctx, f, 2.0 * co @ co.transpose(-1, -2), create_graph=True)
            gk = mol.grad_g_hj[idx_g] + 4.0 * cv.transpose(-1, -2) @ vk @ co
            total = total + (s * (gk - mol.grad_g[idx_g])).pow(2).sum()
        terms["grad"] = total / ((g.dstar_weight + len(idx_g)) * mol.nelec)
    if use_h:
        res = hessian_residual(
            f, mol, mol.hess_v[idx_h], mol.hess_hv[idx_h], mol.hess_hv_j[idx_h], kernel, vxc0
        )
        terms["hess"] = (s * res).pow(2).sum() / len(idx_h)
    return terms, info


def total_loss(terms: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """sum_t weights[t] terms[t]."""
    out = None
    for k, v in terms.items():
        out = weights[k] * v if out is None else out + weights[k] * v
    assert out is not None
    return out


def term_weights(loss_cfg: Any) -> dict[str, float]:
    """Weight of every term name (0 for disabled terms)."""
    lo = loss_cfg
    return {
        "energy": lo.energy.weight if lo.energy.enabled else 0.0,
        "scf_energy": lo.scf.energy_weight if lo.scf.enabled else 0.0,
        "scf_density": lo.scf.density_weight if lo.scf.enabled else 0.0,
        "grad": lo.grad.weight if lo.grad.enabled else 0.0,
        "hess": lo.hess.weight if lo.hess.enabled else 0.0,
    }


# ---- validation ---------------------------------------------------------------------------------
@torch.no_grad()
def validate_molecule(f: XCFunctional, mol: TrainMolecule, vcfg: Any) -> dict[str, float]:
    """Self-consistent energy and density errors of the functional on one molecule.

    Returns:
        ``e_err`` (E_theta^SCF - E_ref, Eh), ``e_err_nscf`` (E_theta[D*] - E_ref, Eh),
        ``rho_l2`` (sqrt(integral (rho_theta - rho*)^2 dr), electrons / Bohr^(3/2)),
        ``converged`` (0/1).
    """
    r = run_scf(
        mol.ctx,
        f,
        mol.guess(vcfg.init_guess),
        max_cycle=vcfg.max_cycle,
        conv_tol=vcfg.conv_tol,
        warn=False,
    )
    exc = f(mol.ctx.eval_rho(mol.dm, f.xctype), mol.ctx.grid)
    return {
        "e_err": float(r.energy) - mol.e_ref,
        "e_err_nscf": float(mol.e_hj + exc) - mol.e_ref,
        "rho_l2": math.sqrt(max(float(density_error(mol, r.dm)), 0.0)),
        "converged": float(r.converged),
    }
