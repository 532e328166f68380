"""Singlet excitation energies of a dixc functional from its orbital Hessian (TDA and Casida).

Closed-shell, real orbitals, a pure (semi)local or nonlocal functional without exact exchange.
In the canonical orbitals of the Fock matrix (F_oo, F_vv diagonal; DESIGN.md section 2):

    (H X)_ai / 4 = (eps_a - eps_i) X_ai + (C_v^T R[dD] C_o)_ai = ((A + B) X)_ai
    dD = 2 (C_v X C_o^T + C_o X^T C_v^T),  R = J + f_xc

(H = 4 (A + B) in TDDFT notation). Without exact exchange the exchange-type integrals that make
A - B differ from the orbital-energy differences vanish, so A - B = Delta = diag(eps_a - eps_i)
and the singlet TDDFT (RPA) problem [[A, B], [B, A]] (X, Y) = omega [[1, 0], [0, -1]] (X, Y)
reduces to Casida's symmetric eigenproblem

    Delta^(1/2) (A + B) Delta^(1/2) Z = omega^2 Z,      (A + B) = H / 4.

The Tamm-Dancoff approximation keeps A alone: A = Delta + (A + B - Delta) / 2, so
A X = (Delta X + H X / 4) / 2. Both are solved by a block Davidson method whose products go
through one batched Hessian-vector product per iteration (one ``eval_rho`` and one
``contract_vxc`` for the whole block).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import torch

from dixc.context import MolContext
from dixc.functionals.base import XCFunctional
from dixc.response import OrbitalHessian

log = logging.getLogger("dixc.evaluate")

HARTREE2EV = 27.211386245988  # CODATA 2018, the value PySCF's nist.HARTREE2EV uses


@dataclasses.dataclass
class DavidsonResult:
    """Lowest eigenpairs of a symmetric operator.

    Attributes:
        e: ``(nroots,)`` eigenvalues, ascending.
        x: ``(nroots, n)`` orthonormal eigenvectors.
        converged: ``(nroots,)`` bool, residual norm below the tolerance.
        residual: ``(nroots,)`` residual norms |A x - e x|.
        n_iter: Davidson iterations.
        n_matvec: operator applications (vectors, not batches).
    """

    e: torch.Tensor
    x: torch.Tensor
    converged: torch.Tensor
    residual: torch.Tensor
    n_iter: int
    n_matvec: int


def _orthonormalize(new: torch.Tensor, basis: torch.Tensor, lindep: float) -> torch.Tensor:
    """Rows of ``new`` made orthonormal to ``basis`` and each other (two Gram-Schmidt passes);
    rows whose remaining norm is below ``lindep`` are dropped."""
    out: list[torch.Tensor] = []
    for v in new:
        for _ in range(2):
            if basis.shape[0]:
                v = v - basis.T @ (basis @ v)
            for u in out:
                v = v - (u @ v) * u
        nrm = torch.linalg.norm(v)
        if nrm > lindep:
            out.append(v / nrm)
    if not out:
        return new.new_zeros((0, new.shape[1]))
    return torch.stack(out)


def davidson(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    diag: torch.Tensor,
    nroots: int,
    *,
    tol: float = 1e-7,
    max_cycle: int = 100,
    max_space: int | None = None,
    n_guess: int | None = None,
    lindep: float = 1e-12,
) -> DavidsonResult:
    """Lowest ``nroots`` eigenpairs of a symmetric operator by block Davidson.

    Args:
        matvec: maps a block ``(B, n)`` of vectors to ``(B, n)`` (the operator applied to each).
        diag: ``(n,)`` diagonal (or an approximation of it) for guesses and preconditioning.
        nroots: number of lowest eigenpairs wanted (<= n).
        tol: residual norm |A x - e x| at which a root counts as converged (operator units).
        max_cycle: maximum iterations.
        max_space: subspace size that triggers a restart from the current Ritz vectors
            (default max(20, 8 nroots)).
        n_guess: initial unit vectors on the smallest diagonal entries (default
            min(n, max(2 nroots, nroots + 4))), enough to resolve degenerate roots.
        lindep: norm below which a new direction is considered linearly dependent.

    Returns:
        :class:`DavidsonResult`; unconverged roots are flagged, never hidden.
    """
    n = int(diag.numel())
    if not 1 <= nroots <= n:
        raise ValueError(f"dixc: davidson needs 1 <= nroots <= {n}, got {nroots}")
    n_guess = min(n, max(2 * nroots, nroots + 4)) if n_guess is None else min(n, n_guess)
    max_space = max(20, 8 * nroots, n_guess + nroots) if max_space is None else max_space
    order = torch.argsort(diag, stable=True)[:n_guess]
    guess = diag.new_zeros((n_guess, n))
    guess[torch.arange(n_guess), order] = 1.0
    basis = diag.new_zeros((0, n))
    abasis = diag.new_zeros((0, n))
    new = guess
    n_matvec = 0
    e = x = rnorm = conv = None
    it = 0
    for it in range(1, max_cycle + 1):
        new = _orthonormalize(new, basis, lindep)
        if new.shape[0] == 0:
            log.debug("davidson: no new directions at iteration %d (subspace exhausted)", it)
            it -= 1
            break
        anew = matvec(new)
        n_matvec += new.shape[0]
        basis = torch.cat([basis, new])
        abasis = torch.cat([abasis, anew])
        sub = basis @ abasis.T
        sub = 0.5 * (sub + sub.T)
        w, u = torch.linalg.eigh(sub)
        k = min(nroots, w.numel())
        e = w[:k]
        x = u[:, :k].T @ basis
        ax = u[:, :k].T @ abasis
        r = ax - e[:, None] * x
        rnorm = torch.linalg.norm(r, dim=1)
        conv = rnorm < tol
        if k == nroots and bool(conv.all()):
            break
        if basis.shape[0] >= n:  # the subspace is the whole space: exact
            conv = torch.ones_like(conv)
            break
        denom = diag[None, :] - e[:, None]
        denom = torch.where(denom.abs() < 1e-8, torch.full_like(denom, 1e-8), denom)
        new = (r / denom)[~conv]
        if basis.shape[0] + new.shape[0] > max_space:
            keep = min(w.numel(), max(2 * nroots, nroots + 2))
            basis = u[:, :keep].T @ basis
            abasis = u[:, :keep].T @ abasis
            basis, abasis = _reorthonormalize(basis, abasis)
    assert e is not None and x is not None and rnorm is not None and conv is not None
    return DavidsonResult(e=e, x=x, converged=conv, residual=rnorm, n_iter=it, n_matvec=n_matvec)


def _reorthonormalize(basis: torch.Tensor, abasis: torch.Tensor):
    """Restores exact orthonormality of a restarted basis (A applied linearly to the same map)."""
    q, rr = torch.linalg.qr(basis.T)
    tinv = torch.linalg.solve_triangular(rr, torch.eye(rr.shape[0], dtype=rr.dtype), upper=True)
    return q.T, (abasis.T @ tinv).T


@dataclasses.dataclass
class ExcitationResult:
    """Singlet excitations of one molecule with one functional.

    Attributes:
        method: 'tda' or 'rpa' (full linear response, Casida).
        e: ``(n_states,)`` excitation energies (Hartree), ascending.
        converged: ``(n_states,)`` bool per state.
        residual: ``(n_states,)`` Davidson residual norms (Hartree; Casida's omega^2 residual
            divided by 2 omega).
        xy: ``(n_states, n_vir, n_occ)`` X (TDA, unit norm) or X + Y (RPA, normalised as
            (X + Y) . (X - Y) = 1) amplitudes in the canonical orbitals ``mo_coeff``.
        mo_coeff: ``(nao, nmo)`` canonical orbitals the amplitudes refer to.
        n_iter: Davidson iterations.
        n_hvp: Hessian-vector products (vectors).
    """

    method: str
    e: torch.Tensor
    converged: torch.Tensor
    residual: torch.Tensor
    xy: torch.Tensor
    mo_coeff: torch.Tensor
    n_iter: int
    n_hvp: int

    @property
    def e_ev(self) -> torch.Tensor:
        """Excitation energies in eV."""
        return self.e * HARTREE2EV


class LinearResponse:
    """TDA and Casida excitation energies of a functional at given (converged) orbitals.

    Builds the orbital Hessian once (one Fock build and the f_xc kernel) and rotates to canonical
    orbitals inside the occupied and virtual blocks (which leaves the density unchanged).

    Args:
        ctx: molecule context.
        functional: the XC functional (no exact exchange).
        mo_coeff: ``(nao, nmo)`` orbitals, occupied first (e.g. ``SCFResult.mo_coeff``).
    """

    def __init__(self, ctx: MolContext, functional: XCFunctional, mo_coeff: torch.Tensor):
        self.hessian = OrbitalHessian(ctx, functional, mo_coeff)
        self.nocc = ctx.nocc
        eo, uo = torch.linalg.eigh(0.5 * (self.hessian.foo + self.hessian.foo.T))
        ev, uv = torch.linalg.eigh(0.5 * (self.hessian.fvv + self.hessian.fvv.T))
        self.uo, self.uv = uo, uv
        self.mo_energy = torch.cat([eo, ev])
        self.mo_coeff = torch.cat([self.hessian.co @ uo, self.hessian.cv @ uv], dim=1)
        self.delta = ev[:, None] - eo[None, :]  # (nvir, nocc) = diag(A - B)
        self.gradient_norm = float(torch.linalg.norm(self.hessian.gradient))
        if self.delta.numel() == 0:
            raise ValueError(f"dixc: {ctx.name} has no virtual orbitals: no excitations")
        if float(self.delta.min()) <= 0.0:
            raise ValueError(
                f"dixc: {ctx.name}: the orbitals are not an aufbau ground state (HOMO-LUMO gap "
                f"{float(self.delta.min()):.3e} Eh <= 0); linear response needs a converged SCF "
                "with a positive gap"
            )

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.delta.shape)  # type: ignore[return-value]

    def apb(self, x: torch.Tensor) -> torch.Tensor:
        """(A + B) X = H X / 4 in the canonical basis, ``x`` ``((B,) nvir, nocc)``."""
        uo, uv = self.uo, self.uv
        hx = self.hessian(uv @ x @ uo.T)
        return 0.25 * (uv.T @ hx @ uo)

    def a(self, x: torch.Tensor) -> torch.Tensor:
        """A X = (Delta X + (A + B) X) / 2 in the canonical basis."""
        return 0.5 * (self.delta * x + self.apb(x))

    def solve(
        self,
        n_states: int,
        method: str = "rpa",
        *,
        tol: float = 1e-7,
        max_cycle: int = 100,
    ) -> ExcitationResult:
        """Lowest ``n_states`` singlet excitations.

        Args:
            n_states: number of states (capped at n_vir x n_occ).
            method: 'rpa' (full TDDFT, Casida) or 'tda'.
            tol: residual tolerance in Hartree (eigenvalue errors are ~ tol^2 / gap).
            max_cycle: Davidson iterations.

        Returns:
            :class:`ExcitationResult`.
        """
        nvir, nocc = self.shape
        n = nvir * nocc
        n_states = min(n_states, n)
        d = self.delta.reshape(-1)
        if method == "tda":
            res = davidson(
                lambda v: self.a(v.reshape(-1, nvir, nocc)).reshape(v.shape[0], n),
                d, n_states, tol=tol, max_cycle=max_cycle,
            )  # fmt: skip
            e, resid = res.e, res.residual
            xy = res.x.reshape(-1, nvir, nocc)
        elif method == "rpa":
            sq = d.sqrt()

            def mv(z: torch.Tensor) -> torch.Tensor:
                return sq * self.apb((z * sq).reshape(-1, nvir, nocc)).reshape(z.shape[0], n)

            # residual of omega^2 converted to Hartree: |r| / (2 omega) ~ |r| / (2 sqrt(d_min))
            scale = 2.0 * float(d.min().sqrt())
            res = davidson(mv, d * d, n_states, tol=tol * scale, max_cycle=max_cycle)
            if float(res.e.min()) <= 0.0:
                raise ValueError(
                    "dixc: Casida matrix is not positive definite (lowest omega^2 = "
                    f"{float(res.e.min()):.3e}): the ground state is unstable for this functional"
                )
            e = res.e.sqrt()
            resid = res.residual / (2.0 * e)
            # X + Y = Delta^(1/2) Z / sqrt(omega): then (X + Y).(X - Y) = 1 with
            # X - Y = omega Delta^(-1) (X + Y)
            xy = (sq * res.x / e[:, None].sqrt()).reshape(-1, nvir, nocc)
        else:
            raise ValueError(f"dixc: method must be 'rpa' or 'tda', got {method!r}")
        if not bool(res.converged.all()):
            log.warning(
                "%s: %d of %d %s states did not converge in %d Davidson iterations "
                "(largest residual %.1e)",
                self.hessian.ctx.name, int((~res.converged).sum()), n_states, method.upper(),
                max_cycle, float(resid.max()),
            )  # fmt: skip
        return ExcitationResult(
            method=method,
            e=e,
            converged=res.converged,
            residual=resid,
            xy=xy,
            mo_coeff=self.mo_coeff,
            n_iter=res.n_iter,
            n_hvp=res.n_matvec,
        )


def excitations(
    ctx: MolContext,
    functional: XCFunctional,
    mo_coeff: torch.Tensor,
    n_states: int,
    methods: tuple[str, ...] = ("tda", "rpa"),
    tol: float = 1e-7,
    max_cycle: int = 100,
) -> dict[str, ExcitationResult]:
    """Lowest singlet excitations (TDA and/or full TDDFT) of ``functional`` at ``mo_coeff``.

    Args:
        ctx: molecule context.
        functional: XC functional without exact exchange.
        mo_coeff: ``(nao, nmo)`` converged orbitals, occupied first.
        n_states: states per method.
        methods: any of 'tda', 'rpa'.
        tol: Davidson residual tolerance (Hartree).
        max_cycle: Davidson iterations.

    Returns:
        ``{method: ExcitationResult}``.
    """
    lr = LinearResponse(ctx, functional, mo_coeff)
    return {m: lr.solve(n_states, m, tol=tol, max_cycle=max_cycle) for m in methods}
