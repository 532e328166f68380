"""The XC part of analytic nuclear gradients, for any dixc functional (local or nonlocal).

At a converged SCF the gradient needs dE_xc/dR_A at a fixed density matrix D. With
E_xc = sum_g w_g e_xc(rho(r_g); grid), the nuclear positions R enter in three ways:

    (a) the basis functions centred on atom A move with it:
            rho_g = sum_mn D_mn chi_m(r_g - R_m) chi_n(r_g - R_n);
    (b) the grid moves with the atoms (grid response): each point r_g belongs to one atom's
        Becke cell and moves with it, and every weight w_g depends on all nuclear positions;
    (c) a nonlocal functional reads the nuclear positions directly (EG-XC: the nuclei-centred
        density embedding and decoding, the atom graph, the readout normaliser).

Writing V = dE_xc/d rho (per point and feature, weights included: autograd of the whole-grid
energy, so a nonlocal functional is handled exactly like a local one),

    dE/dR_A = -2 sum_{m in A} sum_n D_mn M_mn        (a)
              + [r_g moves with A] 2 tr(M^(A) D)     (b, points)
              + sum_g (dE/dw_g) (dw_g/dR_A)          (b, weights; dE/dw_g = e_xc(r_g) if local)
              + sum_{g in A} dE/dr_g + dE/dR_A       (c, explicit; zero for local functionals)

with M^(block)[x]_mn = sum_{g in block} [d_x chi_m (V_0 chi_n + V_j d_j chi_n)
                                         + d_x d_j chi_m (V_j chi_n + V_tau d_j chi_n / 2)]
(j summed over x, y, z; V_j = dE/d(d_j rho), V_tau = dE/d tau; GGA drops V_tau, LDA keeps V_0).
M is PySCF's XC gradient matrix (``pyscf.grad.rks.get_vxc``'s, sign included), so the terms slot
into PySCF's gradient machinery unchanged (see :mod:`dixc.pyscf_plugin`).

Without the grid response only (a) and (c) with the points held fixed remain. That is what
PySCF computes for local functionals by default, but for a nonlocal functional whose features
are centred on the nuclei it is not a useful approximation (points a few 1e-4 Bohr from a
nucleus see its angular factor turn as it moves); dixc's PySCF hook therefore asks for the grid
response there.

Everything runs in dixc's ops (``eval_rho_fused`` for the features, ``eval_ao`` to second
derivatives per block of points) on the functional's device, in bounded memory.
"""

from __future__ import annotations

import numpy as np
import torch

from dixc import ops
from dixc.basis import pack_basis
from dixc.functionals.base import XCFunctional
from dixc.grid import Grid, nuclear_charges

__all__ = ["scf_gradient", "xc_gradient_matrix", "xc_gradient_terms"]

# Second-derivative components of eval_ao (xx, xy, xz, yy, yz, zz = 4..9) as a symmetric 3 x 3.
_HESS = ((4, 5, 6), (5, 7, 8), (6, 8, 9))
_AO_BLOCK_MB = 256.0  # memory of one block's AO values and derivatives (10 nao npts float64)
_WEIGHT_DERIV_MB = 512.0  # Becke weight derivatives kept from the first pass (else recomputed)


def xc_gradient_matrix(ao: torch.Tensor, v: torch.Tensor, xctype: str) -> torch.Tensor:
    """M[x] = sum_g (d_x chi_m) ... (the matrix of the module docstring) for one block of points.

    Args:
        ao: ``(ncomp, nao, npts)`` AO values and derivatives (ncomp = 4 for LDA, 10 otherwise).
        v: ``(nfeat, npts)`` dE_xc/d feature at the points (quadrature weights included).
        xctype: 'LDA', 'GGA' or 'MGGA'.

    Returns:
        ``(3, nao, nao)``, rows = the differentiated basis function.
    """
    # M[x] = ao_x (v0 ao_0 + v_j ao_j)^T + ao_xj (v_j ao_0 + v_tau ao_j / 2)^T
    y = ao[0] * v[0]
    if xctype == "LDA":
        return torch.stack([ao[1 + x] @ y.T for x in range(3)])
    y = y + (ao[1:4] * v[1:4, None, :]).sum(dim=0)
    if xctype == "GGA":  # ao_xj v_j ao_0^T = (sum_j v_j ao_xj) ao_0^T: 6 products, not 12
        return torch.stack([
            ao[1 + x] @ y.T + (ao[list(_HESS[x])] * v[1:4, None, :]).sum(dim=0) @ ao[0].T
            for x in range(3)
        ])  # fmt: skip
    z = ao[0][None] * v[1:4, None, :] + ao[1:4] * (0.5 * v[4])  # (3, nao, npts), j = x, y, z
    zc = z.permute(1, 0, 2).reshape(ao.shape[1], -1)  # (nao, 3 npts)
    out = []
    for x in range(3):
        hx = ao[list(_HESS[x])].permute(1, 0, 2).reshape(ao.shape[1], -1)  # (nao, 3 npts)
        out.append(ao[1 + x] @ y.T + hx @ zc.T)
    return torch.stack(out)


def _blocks(
    owner: torch.Tensor | None, n: int, nao: int, ncomp: int
) -> list[tuple[int | None, slice]]:
    """Blocks of consecutive points of one atom each (or of the fixed grid: atom None), each
    small enough that its AO array stays within ``_AO_BLOCK_MB``."""
    step = max(256, int(_AO_BLOCK_MB * 2**20 / (8 * ncomp * max(nao, 1))))
    if owner is None:
        segments = [(None, 0, n)]
    else:
        counts = torch.bincount(owner).tolist()
        ends = np.cumsum(counts).tolist()
        pairs = enumerate(zip(counts, ends, strict=True))
        segments = [(a, e - c, e) for a, (c, e) in pairs if c]
    return [(a, slice(i, min(i + step, e))) for a, s, e in segments for i in range(s, e, step)]


def _energy_derivatives(
    functional: XCFunctional, rho: torch.Tensor, grid: Grid
) -> tuple[torch.Tensor, ...]:
    """dE/d rho ``(nfeat, ngrid)``, dE/dw ``(ngrid,)``, dE/d coords ``(ngrid, 3)``, dE/dR
    ``(natm, 3)`` of E = functional(rho, grid) (zeros where E does not depend on them)."""
    inputs = [rho, grid.weights, grid.coords, grid.atom_coords]
    with torch.enable_grad():
        e = functional(rho, grid)
        if not bool(torch.isfinite(e)):
            raise ValueError(
                f"dixc: E_xc of {type(functional).__name__} is not finite at this density "
                "(nuclear gradient); check the SCF and the functional"
            )
        wanted = [t for t in inputs if t.requires_grad]
        got = iter(torch.autograd.grad(e, wanted, allow_unused=True))
    out = []
    for t in inputs:
        g = next(got) if t.requires_grad else None
        out.append(torch.zeros_like(t) if g is None else g.detach())
    return tuple(out)


def xc_gradient_terms(
    mol,
    grids,
    functional: XCFunctional,
    dm: np.ndarray,
    grid_response: bool = True,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """The XC terms of the nuclear gradient at a fixed density matrix, in PySCF's layout.

    Args:
        mol: the built ``pyscf.gto.Mole``.
        grids: the PySCF ``Grids`` the energy is integrated on (built if needed).
        functional: any dixc functional (float64).
        dm: ``(nao, nao)`` total (closed-shell) density matrix.
        grid_response: include the motion of the grid with the atoms (points and weights);
            the points are then regenerated atom by atom as PySCF's ``grids_response_cc``
            does, the same points and weights as ``grids`` in another order.
        device: torch device of the grid work.

    Returns:
        ``(exc1, vmat)``: ``(natm, 3)`` the grid response and explicit terms (b, c) and
        ``(3, nao, nao)`` minus the matrix M summed over the grid, as PySCF's
        ``get_vxc_full_response`` returns them (the caller adds 2 sum_{m in A} vmat D per atom).
    """
    from pyscf.grad import rks as rks_grad

    if grids.coords is None:
        grids.build()
    dev = torch.device(device)
    xctype, nfeat = functional.xctype, functional.nfeat
    basis = pack_basis(mol).to(dev)
    d = torch.as_tensor(np.asarray(dm), dtype=torch.float64).to(dev)
    if d.dim() != 2:
        raise NotImplementedError("dixc: nuclear gradients for one closed-shell density only")
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float64).to(dev)  # noqa: E731
    if grid_response:
        # points and weights per atom; the weight derivatives (natm, 3, n) kept while small
        parts, kept, held = [], [], 0
        for c, w, w1 in rks_grad.grids_response_cc(grids):
            parts.append((c, w))
            held += w1.nbytes
            kept.append(w1 if held <= _WEIGHT_DERIV_MB * 2**20 else None)
        owner = torch.cat([torch.full((len(w),), a, dtype=torch.long) for a, (_, w) in
                           enumerate(parts)]).to(dev)  # fmt: skip
        coords = t(np.concatenate([c for c, _ in parts]))
        weights = t(np.concatenate([w for _, w in parts]))
    else:
        coords, weights, owner = t(grids.coords), t(grids.weights), None
    atom_coords = t(mol.atom_coords())
    grid = Grid(
        coords=coords.clone().requires_grad_(grid_response),
        weights=weights.clone().requires_grad_(grid_response),
        atom_coords=atom_coords.clone().requires_grad_(True),
        atom_charges=torch.as_tensor(nuclear_charges(mol), dtype=torch.long).to(dev),
    )
    rho = ops.eval_rho_fused(basis, coords, d, xctype)[:nfeat].requires_grad_(True)
    v, de_dw, de_dr, de_dR = _energy_derivatives(functional, rho, grid)

    nao = basis.nao
    exc1 = de_dR.clone()  # (c) nuclei
    vmat = torch.zeros(3, nao, nao, dtype=torch.float64, device=dev)
    deriv = 1 if xctype == "LDA" else 2
    ncomp = 4 if deriv == 1 else 10
    for atom, sl in _blocks(owner, coords.shape[0], nao, ncomp):
        m = xc_gradient_matrix(ops.eval_ao(basis, coords[sl], deriv), v[:, sl], xctype)
        vmat += m
        if atom is not None:  # (b) points: they move with their atom
            exc1[atom] += 2.0 * torch.einsum("xij,ji->x", m, d)
    if owner is not None:
        exc1.index_add_(0, owner, de_dr)  # (c) points
        again = None if all(w1 is not None for w1 in kept) else rks_grad.grids_response_cc(grids)
        start = 0
        for (_, w), w1 in zip(parts, kept, strict=True):
            if again is not None:
                w1 = next(again)[2]
            n = len(w)
            # (b) weights: sum_g dE/dw_g dw_g/dR
            exc1 += torch.einsum("g,axg->ax", de_dw[start : start + n], t(w1))
            start += n
    return exc1.cpu().numpy(), -vmat.cpu().numpy()


def scf_gradient(ctx, functional: XCFunctional, res) -> np.ndarray:
    """dE_SCF/dR ``(natm, 3)`` (Hartree / Bohr) at a converged dixc SCF of ``functional``.

    PySCF's RKS gradient with ``functional`` as a drop-in (:mod:`dixc.pyscf_plugin`; XC terms
    from :func:`xc_gradient_terms`, grid response included) on the context's grid, with its
    Coulomb treatment (exact, or density fitting with the context's auxiliary basis and its
    response), at the SCF's orbitals: the derivative of the energy the SCF minimised.

    Args:
        ctx: the :class:`dixc.context.MolContext` of the SCF (``coulomb`` 'df' or 'exact').
        functional: the SCF's functional.
        res: the SCF result (``mo_energy``, ``mo_coeff``, ``mo_occ``; see :mod:`dixc.scf`).
    """
    from dixc import pyscf_plugin

    if ctx.cderi is None and ctx.eri is None:
        raise ValueError(f"dixc: the context of {ctx.name} has no Coulomb operator (coulomb=none)")
    mf = pyscf_plugin.RKS(ctx.mol, functional, device=ctx.device, verbose=0)
    mf.grids = ctx.grids
    if ctx.cderi is not None:
        mf = mf.density_fit(auxbasis=ctx.auxbasis)
    grad = mf.nuc_grad_method()
    grad.grid_response = True
    grad.verbose = 0
    t = lambda x: x.detach().cpu().numpy()  # noqa: E731
    out = grad.kernel(mo_energy=t(res.mo_energy), mo_coeff=t(res.mo_coeff), mo_occ=t(res.mo_occ))
    return np.asarray(out)
