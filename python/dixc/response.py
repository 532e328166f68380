"""Exact derivatives of the Kohn-Sham energy on the Grassmannian, for any dixc functional.

Conventions (DESIGN.md section 2): C (nao x nmo) with C^T S C = 1, C(X) = C expm(kappa),
kappa[a,i] = X[a,i], kappa[i,a] = -X[a,i], X ``(nvir, nocc)``. Then
    G_ai     = dE/dX_ai = 4 (C^T F C)_ai
    (H X)_ai = 4 [ (F_vv X - X F_oo)_ai + (C_v^T R[dD] C_o)_ai ],
    dD = 2 (C_v X C_o^T + C_o X^T C_v^T),   R[dD] = J[dD] + f_xc[dD],
valid at any (non-stationary) C. f_xc comes from a second backward pass through the ops
(``dixc.xc.XCKernel``), so a batch of X costs one batched ``eval_rho`` and ``contract_vxc``.
PySCF's ``newton_ah.gen_g_hop_rhf`` returns G/2 and HX/2; in TDDFT notation H = 4 (A + B).
"""

from __future__ import annotations

import torch

from dixc.context import MolContext
from dixc.functionals.base import XCFunctional
from dixc.scf import assemble, fock, make_rdm1
from dixc.xc import XCKernel


def grassmann_gradient(
    ctx: MolContext,
    functional: XCFunctional,
    mo_coeff: torch.Tensor,
    create_graph: bool = False,
) -> torch.Tensor:
    """G = 4 (C^T F C)_vo at the density of ``mo_coeff``.

    Args:
        ctx: molecule context.
        functional: XC functional.
        mo_coeff: ``(nao, nmo)`` orbitals (the first ``ctx.nocc`` occupied).
        create_graph: differentiable w.r.t. the functional's parameters (training).

    Returns:
        ``(nvir, nocc)`` in Hartree.
    """
    n = ctx.nocc
    _, f = fock(ctx, functional, make_rdm1(mo_coeff, n), create_graph=create_graph)
    return 4.0 * mo_coeff[:, n:].T @ f @ mo_coeff[:, :n]


class OrbitalHessian:
    """The orbital Hessian H of E at the density of ``mo_coeff``, applied to tangent vectors.

    Build once per point (one Fock build and one f_xc kernel), then ``hess(X)`` for any batch.

    Args:
        ctx: molecule context.
        functional: XC functional.
        mo_coeff: ``(nao, nmo)`` orbitals, any (also non-canonical, non-stationary) point.
        create_graph: keep the graph so that H X is differentiable w.r.t. the functional's
            parameters (the DI-Loss Hessian term).
    """

    def __init__(
        self,
        ctx: MolContext,
        functional: XCFunctional,
        mo_coeff: torch.Tensor,
        create_graph: bool = False,
    ) -> None:
        n = ctx.nocc
        self.ctx, self.nocc = ctx, n
        self.co, self.cv = mo_coeff[:, :n], mo_coeff[:, n:]
        dm = make_rdm1(mo_coeff, n)
        # The kernel's first-order weights give V_xc: one functional evaluation serves both.
        self.kernel = XCKernel(ctx, functional, dm, create_graph=create_graph)
        vxc = ctx.contract_vxc(self.kernel.wv0, functional.xctype)
        self.energy, f = assemble(ctx, dm, self.kernel.exc0, vxc)
        self.fock = f
        self.foo = self.co.T @ f @ self.co
        self.fvv = self.cv.T @ f @ self.cv
        self.gradient = 4.0 * self.cv.T @ f @ self.co

    @property
    def nvir(self) -> int:
        return int(self.cv.shape[1])

    def response(self, dm1: torch.Tensor) -> torch.Tensor:
        """R[dD] = J[dD] + f_xc[dD] for ``dm1`` ``((B,) nao, nao)``."""
        return self.ctx.get_j(dm1) + self.kernel(dm1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """H X for ``x`` ``((B,) nvir, nocc)``; returns the same shape (Hartree)."""
        co, cv = self.co, self.cv
        t = cv @ x @ co.T  # (..., nao, nao)
        dd = 2.0 * (t + t.transpose(-1, -2))
        r = self.response(dd)
        return 4.0 * (self.fvv @ x - x @ self.foo + cv.T @ r @ co)

    def diagonal(self) -> torch.Tensor:
        """Cheap approximation of diag(H) ``(nvir, nocc)``: 4 (F_aa - F_ii) (preconditioners)."""
        return 4.0 * (self.fvv.diagonal()[:, None] - self.foo.diagonal()[None, :])


def hvp(
    ctx: MolContext,
    functional: XCFunctional,
    mo_coeff: torch.Tensor,
    x: torch.Tensor,
    create_graph: bool = False,
) -> torch.Tensor:
    """H X at the density of ``mo_coeff``, ``x``: ``((B,) nvir, nocc)`` (see ``OrbitalHessian``)."""
    return OrbitalHessian(ctx, functional, mo_coeff, create_graph=create_graph)(x)


def rotate(mo_coeff: torch.Tensor, x: torch.Tensor, nocc: int) -> torch.Tensor:
    """C expm(kappa) with kappa[a,i] = X[a,i], kappa[i,a] = -X[a,i] (``x``: ``(nvir, nocc)``)."""
    nmo = mo_coeff.shape[1]
    k = x.new_zeros(nmo, nmo)
    k[nocc:, :nocc] = x
    k[:nocc, nocc:] = -x.T
    return mo_coeff @ torch.linalg.matrix_exp(k)
