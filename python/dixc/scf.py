"""Restricted closed-shell Kohn-Sham SCF in Torch with any dixc functional.

Energy (Hartree) of a density matrix D (spin-summed, D = 2 C_o C_o^T):
    E[D] = E_nuc + tr(h D) + 1/2 tr(D J[D]) + E_xc[rho_D],   F = dE/dD = h + J[D] + V_xc[D].

Three ways to use it:
    * ``run_scf``: the production driver (DIIS, damping, level shift, convergence on energy and
      orbital gradient), no autograd graph kept. Non-convergence sets ``converged=False`` and warns.
    * ``unrolled_scf``: a fixed number of cycles with the autograd graph kept through every cycle
      (eigen-decomposition, DIIS, V_xc), for training through the SCF. Energies and densities of
      every cycle are returned.
    * ``energy`` / ``fock`` at a given D (no SCF), differentiable w.r.t. the functional's
      parameters.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings

import torch

from dixc.context import MolContext
from dixc.functionals.base import XCFunctional
from dixc.xc import exc_vxc

log = logging.getLogger("dixc.scf")


# ---- energy and Fock at a given density ------------------------------------------------------
def energy(
    ctx: MolContext, functional: XCFunctional, dm: torch.Tensor, create_graph: bool = True
) -> torch.Tensor:
    """Total energy E[D] (Hartree), differentiable w.r.t. ``dm`` and the functional's parameters.

    Args:
        ctx: molecule context.
        functional: XC functional.
        dm: ``((B,) nao, nao)`` density matrices.
        create_graph: unused for the energy itself (kept for symmetry with ``fock``).

    Returns:
        ``((B,))`` energies.
    """
    rho = ctx.eval_rho(dm, functional.xctype)
    exc = functional(rho, ctx.grid)
    e1 = torch.einsum("ij,...ji->...", ctx.hcore, dm)
    ej = 0.5 * torch.einsum("...ij,...ji->...", ctx.get_j(dm), dm)
    return ctx.e_nuc + e1 + ej + exc


def fock(
    ctx: MolContext, functional: XCFunctional, dm: torch.Tensor, create_graph: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Energy and Fock matrix at ``dm``.

    Args:
        ctx: molecule context.
        functional: XC functional.
        dm: ``((B,) nao, nao)``.
        create_graph: keep the graph (training); otherwise results are detached.

    Returns:
        ``(E, F)``: ``((B,))`` Hartree and ``((B,) nao, nao)``.
    """
    exc, vxc = exc_vxc(ctx, functional, dm, create_graph=create_graph)
    return assemble(ctx, dm, exc, vxc)


def assemble(
    ctx: MolContext, dm: torch.Tensor, exc: torch.Tensor, vxc: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(E, F) from the XC parts: E = E_nuc + tr(hD) + 1/2 tr(D J[D]) + E_xc, F = h + J + V_xc."""
    vj = ctx.get_j(dm)
    e = (
        ctx.e_nuc
        + torch.einsum("ij,...ji->...", ctx.hcore, dm)
        + 0.5 * torch.einsum("...ij,...ji->...", vj, dm)
        + exc
    )
    return e, ctx.hcore + vj + vxc


def make_rdm1(mo_coeff: torch.Tensor, nocc: int) -> torch.Tensor:
    """D = 2 C_o C_o^T ``(nao, nao)``."""
    co = mo_coeff[:, :nocc]
    return 2.0 * co @ co.T


# ---- eigen-solver whose backward ignores occ-occ / vir-vir rotations -------------------------
class _OccProjector(torch.autograd.Function):
    """P = 2 U_o U_o^T of the symmetric matrix Fo (orthonormal basis), with eigenpairs.

    The backward uses only occupied-virtual pairs, (eps_i - eps_a)^-1, so degenerate occupied or
    degenerate virtual levels (benzene, any symmetric molecule) give finite gradients, where
    ``torch.linalg.eigh``'s backward would divide by zero.
    """

    @staticmethod
    def forward(fo: torch.Tensor, nocc: int):
        e, u = torch.linalg.eigh(0.5 * (fo + fo.T))
        uo = u[:, :nocc]
        return 2.0 * uo @ uo.T, e, u

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, nocc = inputs
        _, e, u = output
        ctx.nocc = nocc
        ctx.mark_non_differentiable(e, u)
        ctx.save_for_backward(e, u)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gp, _ge, _gu):
        e, u = ctx.saved_tensors
        n = ctx.nocc
        uo, uv = u[:, :n], u[:, n:]
        gs = gp + gp.T
        # W[a,i] = 2 u_a^T gs u_i / (eps_i - eps_a);  dF = sym(U_v W U_o^T)
        w = 2.0 * (uv.T @ gs @ uo) / (e[:n][None, :] - e[n:][:, None])
        m = uv @ w @ uo.T
        return 0.5 * (m + m.T), None


def _diagonalize(f: torch.Tensor, x: torch.Tensor, nocc: int, differentiable: bool):
    """Solves F C = S C eps via the orthogonaliser X; returns (dm, mo_energy, mo_coeff)."""
    fo = x.T @ f @ x
    if differentiable:
        p, e, u = _OccProjector.apply(fo, nocc)
    else:
        e, u = torch.linalg.eigh(0.5 * (fo + fo.T))
        p = 2.0 * u[:, :nocc] @ u[:, :nocc].T
    return x @ p @ x.T, e, x @ u


# ---- DIIS --------------------------------------------------------------------------------------
class DIIS:
    """Pulay's commutator DIIS on Fock matrices (error FDS - SDF in the orthonormal basis).

    Differentiable: the extrapolation coefficients come from ``torch.linalg.solve``.
    """

    def __init__(self, space: int = 8) -> None:
        self.space = space
        self.focks: list[torch.Tensor] = []
        self.errors: list[torch.Tensor] = []

    def update(self, f: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
        self.focks.append(f)
        self.errors.append(err.reshape(-1))
        if len(self.focks) > self.space:
            self.focks.pop(0)
            self.errors.pop(0)
        n = len(self.focks)
        if n < 2:
            return f
        ev = torch.stack(self.errors)
        b = f.new_zeros(n + 1, n + 1)
        b[:n, :n] = ev @ ev.T
        b[:n, n] = b[n, :n] = -1.0
        rhs = f.new_zeros(n + 1)
        rhs[n] = -1.0
        scale = b[:n, :n].diagonal().abs().max().clamp_min(1e-300)
        b = torch.cat([torch.cat([b[:n, :n] / scale, b[:n, n:]], 1), b[n:]], 0)
        try:
            c = torch.linalg.solve(b, rhs)[:n]
        except RuntimeError:  # singular subspace: restart from the newest vector
            self.focks, self.errors = self.focks[-1:], self.errors[-1:]
            return f
        return torch.einsum("k,kij->ij", c, torch.stack(self.focks))


# ---- results ----------------------------------------------------------------------------------
@dataclasses.dataclass
class SCFResult:
    """Outcome of an SCF run.

    Attributes:
        energy: total energy (Hartree) at ``dm``; a 0-d tensor (graph-carrying when unrolled).
        dm: ``(nao, nao)`` final density matrix.
        mo_coeff: ``(nao, nmo)`` canonical orbitals of the final Fock matrix.
        mo_energy: ``(nmo,)`` orbital energies (Hartree).
        mo_occ: ``(nmo,)`` occupations (2 or 0).
        converged: both criteria met (``run_scf``); always False-or-True but never silent.
        n_cycles: Fock builds/diagonalisations done.
        grad_norm: Frobenius norm of the Grassmannian gradient G = 4 (C^T F C)_vo at the end.
        energies: energy of every cycle's density, ``energies[0]`` at the initial guess.
        dms: every cycle's density matrix (``unrolled_scf`` only; else empty).
    """

    energy: torch.Tensor
    dm: torch.Tensor
    mo_coeff: torch.Tensor
    mo_energy: torch.Tensor
    mo_occ: torch.Tensor
    converged: bool
    n_cycles: int
    grad_norm: float
    energies: list[torch.Tensor]
    dms: list[torch.Tensor] = dataclasses.field(default_factory=list)


def _occ(nmo: int, nocc: int, like: torch.Tensor) -> torch.Tensor:
    occ = like.new_zeros(nmo)
    occ[:nocc] = 2.0
    return occ


def _level_shift(f, s, dm, shift):
    # F + shift (S - S D S / 2): raises the virtual levels by ``shift``
    return f if not shift else f + shift * (s - 0.5 * s @ dm @ s)


def _initial_dm(ctx: MolContext, dm0, init_guess: str) -> torch.Tensor:
    if dm0 is None:
        return ctx.init_guess(init_guess)
    dm0 = torch.as_tensor(dm0, dtype=torch.float64, device=ctx.device)
    if dm0.shape != (ctx.nao, ctx.nao):
        raise ValueError(
            f"dixc: initial density matrix of {ctx.name} has shape {tuple(dm0.shape)}, "
            f"expected ({ctx.nao}, {ctx.nao})"
        )
    if not bool(torch.isfinite(dm0).all()):
        raise ValueError(f"dixc: initial density matrix of {ctx.name} contains NaN/inf")
    return dm0


def run_scf(
    ctx: MolContext,
    functional: XCFunctional,
    dm0: torch.Tensor | None = None,
    *,
    init_guess: str = "minao",
    max_cycle: int = 100,
    conv_tol: float = 1e-10,
    conv_tol_grad: float | None = None,
    diis_space: int = 8,
    diis_start_cycle: int = 1,
    damping: float = 0.0,
    damp_cycles: int = 0,
    level_shift: float = 0.0,
    warn: bool = True,
) -> SCFResult:
    """Self-consistent field with a dixc functional (no autograd graph kept).

    Args:
        ctx: molecule context.
        functional: XC functional.
        dm0: initial density matrix ``(nao, nao)``; None uses PySCF's ``init_guess``.
        init_guess: PySCF guess name when ``dm0`` is None.
        max_cycle: maximum Fock builds.
        conv_tol: energy change between cycles (Hartree).
        conv_tol_grad: Frobenius norm of G = 4 (C^T F C)_vo; default sqrt(conv_tol).
        diis_space: DIIS subspace size (0 disables DIIS).
        diis_start_cycle: first cycle that extrapolates.
        damping: Fock mixing F <- (1 - damping) F + damping F_prev for the first ``damp_cycles``.
        damp_cycles: number of damped cycles.
        level_shift: virtual level shift (Hartree) used while iterating (not in the final
            orbitals).
        warn: emit a ``RuntimeWarning`` when not converged.

    Returns:
        ``SCFResult`` (tensors detached).
    """
    if conv_tol_grad is None:
        conv_tol_grad = conv_tol**0.5
    nocc = ctx.nocc
    with torch.no_grad():
        x = ctx.orthogonalizer()
        dm = _initial_dm(ctx, dm0, init_guess)
        diis = DIIS(diis_space) if diis_space > 0 else None
        energies: list[torch.Tensor] = []
        f_prev = None
        converged = False
        gnorm = float("inf")
        cycle = 0
        mo_e = mo_c = None
        for cycle in range(1, max_cycle + 1):
            e, f = fock(ctx, functional, dm)
            energies.append(e)
            if mo_c is not None:
                cv, co = mo_c[:, nocc:], mo_c[:, :nocc]
                gnorm = float(torch.linalg.norm(4.0 * cv.T @ f @ co))
                de = abs(float(e - energies[-2])) if len(energies) > 1 else float("inf")
                log.debug("%s cycle %d E=%.12f dE=%.3e |G|=%.3e", ctx.name, cycle, e, de, gnorm)
                if de < conv_tol and gnorm < conv_tol_grad:
                    converged = True
                    break
            fd = f
            if diis is not None and cycle >= diis_start_cycle:
                sds = ctx.S @ dm @ f
                err = x.T @ (sds.T - sds) @ x  # X^T (F D S - S D F) X
                fd = diis.update(f, err)
            if damping and f_prev is not None and cycle <= damp_cycles:
                fd = (1.0 - damping) * fd + damping * f_prev
            f_prev = f
            dm, mo_e, mo_c = _diagonalize(
                _level_shift(fd, ctx.S, dm, level_shift), x, nocc, differentiable=False
            )
        # Canonical orbitals of the final Fock matrix (no level shift) at the final density.
        _, mo_e, mo_c = _diagonalize(f, x, nocc, differentiable=False)
    if not converged and warn:
        warnings.warn(
            f"dixc: SCF of {ctx.name} did not converge in {max_cycle} cycles "
            f"(last |dE|={abs(float(energies[-1] - energies[-2])) if len(energies) > 1 else 0:.2e}"
            f" Eh, |G|={gnorm:.2e}). Increase max_cycle, add damping/level_shift, or start from a "
            "better dm0.",
            RuntimeWarning,
            stacklevel=2,
        )
    return SCFResult(
        energy=energies[-1],
        dm=dm,
        mo_coeff=mo_c,
        mo_energy=mo_e,
        mo_occ=_occ(mo_c.shape[1], nocc, mo_e),
        converged=converged,
        n_cycles=cycle,
        grad_norm=gnorm,
        energies=energies,
    )


def unrolled_scf(
    ctx: MolContext,
    functional: XCFunctional,
    dm0: torch.Tensor | None = None,
    n_cycles: int = 10,
    *,
    init_guess: str = "minao",
    diis_space: int = 8,
    damping: float = 0.0,
    level_shift: float = 0.0,
    conv_tol: float = 1e-6,
    conv_tol_grad: float = 1e-3,
) -> SCFResult:
    """A fixed number of SCF cycles with gradients through the whole trajectory.

    ``energies[k]`` is E[D_k] with D_0 the initial guess and D_k the density after k
    diagonalisations; every entry carries the autograd graph back to the functional's parameters.

    Args:
        ctx: molecule context.
        functional: XC functional (its parameters receive gradients).
        dm0: initial density ``(nao, nao)`` (a constant); None uses PySCF's ``init_guess``.
        n_cycles: number of diagonalisations.
        init_guess: PySCF guess name when ``dm0`` is None.
        diis_space: DIIS subspace (0 disables); the extrapolation is differentiated too.
        damping: constant Fock mixing with the previous cycle's Fock matrix.
        level_shift: virtual level shift (Hartree).
        conv_tol: energy change of the last cycle below which the run counts as converged.
        conv_tol_grad: gradient norm |G| at the final density below which it counts as converged.

    Returns:
        ``SCFResult`` with ``energies`` (n_cycles + 1 graph-carrying 0-d tensors) and ``dms``;
        ``converged`` says whether the last cycle met both tolerances (no warning: training
        loops count and report these), ``grad_norm`` is |G| at the final density.
    """
    nocc = ctx.nocc
    x = ctx.orthogonalizer()
    dm = _initial_dm(ctx, dm0, init_guess).detach()
    diis = DIIS(diis_space) if diis_space > 0 else None
    energies, dms = [], [dm]
    f_prev = None
    mo_e = mo_c = None
    for _ in range(n_cycles):
        e, f = fock(ctx, functional, dm, create_graph=True)
        energies.append(e)
        fd = f
        if diis is not None:
            sds = ctx.S @ dm @ f
            fd = diis.update(f, x.T @ (sds.T - sds) @ x)
        if damping and f_prev is not None:
            fd = (1.0 - damping) * fd + damping * f_prev
        f_prev = f
        dm, mo_e, mo_c = _diagonalize(
            _level_shift(fd, ctx.S, dm, level_shift), x, nocc, differentiable=True
        )
        dms.append(dm)
    e, f = fock(ctx, functional, dm, create_graph=True)
    energies.append(e)
    with torch.no_grad():
        _, mo_e, mo_c = _diagonalize(f, x, nocc, differentiable=False)
        gnorm = float(torch.linalg.norm(4.0 * mo_c[:, nocc:].T @ f @ mo_c[:, :nocc]))
        de = abs(float(energies[-1] - energies[-2]))
    return SCFResult(
        energy=energies[-1],
        dm=dm,
        mo_coeff=mo_c,
        mo_energy=mo_e,
        mo_occ=_occ(mo_c.shape[1], nocc, mo_e),
        converged=de < conv_tol and gnorm < conv_tol_grad,
        n_cycles=n_cycles,
        grad_norm=gnorm,
        energies=energies,
        dms=dms,
    )
