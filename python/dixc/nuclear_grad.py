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

The excited-state (TDA / TDDFT) gradients are PySCF's, with the grid response of the XC part of
the TDDFT Lagrangian added (:func:`excited_grid_response`, through :func:`with_grid_response`):
PySCF's own hold the grid fixed in space.

Everything runs in dixc's ops (``eval_rho_fused`` for the features, ``eval_ao`` to second
derivatives per spatially compact block of points on the sub-basis of the shells that reach it,
``becke_partition`` for the Becke weights as a function of the nuclear positions, whose
derivative term is one call of its backward kernel) and Torch on the functional's device, in
bounded memory.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from dixc import ops
from dixc.basis import Basis, pack_basis
from dixc.functionals.base import XCFunctional, grads_or_zeros
from dixc.grid import Grid, nuclear_charges

__all__ = [
    "BeckePartition",
    "excited_grid_response",
    "excited_state_gradients",
    "pyscf_amplitudes",
    "scf_gradient",
    "td_xc_kernel_terms",
    "with_grid_response",
    "xc_gradient_matrix",
    "xc_gradient_terms",
]

# Second-derivative components of eval_ao (xx, xy, xz, yy, yz, zz = 4..9) as a symmetric 3 x 3.
_HESS = ((4, 5, 6), (5, 7, 8), (6, 8, 9))
_AO_BLOCK_MB = 256.0  # memory of one block's AO values and derivatives (10 nao npts float64)


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


_SCREEN_POINTS = 2048  # points per screened block of the basis-function terms
_SCREEN_BOX = 1.0  # Bohr: each atom's points are ordered by boxes of this size before blocking


@dataclasses.dataclass(frozen=True)
class _Block:
    """Spatially compact points of one atom's grid (or of a fixed grid: atom None) and the shells
    that reach them (``Basis.rcut``, the screening of dixc's own AO kernels)."""

    atom: int | None
    points: torch.Tensor  # int64 (npts,) indices into the grid
    basis: Basis  # the sub-basis of the shells that reach the block
    ao: torch.Tensor  # int64 (nao_sub,) its AOs' indices in the full basis


def _blocks(
    basis: Basis, coords: torch.Tensor, owner: torch.Tensor | None, ncomp: int
) -> list[_Block]:
    """The grid in screened blocks: each atom's points (all points when ``owner`` is None)
    ordered by boxes of ``_SCREEN_BOX`` Bohr and cut into blocks of at most ``_SCREEN_POINTS``
    (fewer where the block's AO array would pass ``_AO_BLOCK_MB``), each with the shells whose
    screening radius reaches its bounding box. A block's basis-function terms then cost its
    sub-basis' (n_sub^2) GEMMs instead of the whole basis' (nao^2): on an elongated molecule
    most shells are out of reach of most blocks (the GEMM work of C14H30's gradient drops to a
    third)."""
    n = coords.shape[0]
    if n == 0:
        return []
    step = max(256, int(_AO_BLOCK_MB * 2**20 / (8 * ncomp * max(basis.nao, 1))))
    step = min(step, _SCREEN_POINTS)
    atom = owner if owner is not None else torch.zeros(n, dtype=torch.long, device=coords.device)
    key = torch.floor(coords.detach() / _SCREEN_BOX).long()
    key = key - key.amin(0)
    span = key.amax(0) + 1
    box = (key[:, 0] * span[1] + key[:, 1]) * span[2] + key[:, 2]
    order = torch.argsort(atom * int(span.prod()) + box, stable=True)
    counts = torch.bincount(atom, minlength=1).tolist()
    centres = basis.bas_coord.to(coords.dtype)
    blocks = []
    start = 0
    for a, c in enumerate(counts):
        for i in range(start, start + c, step):
            idx = order[i : min(i + step, start + c)]
            pts = coords.detach()[idx]
            lo, hi = pts.amin(0), pts.amax(0)
            gap = torch.clamp(lo - centres, min=0.0) + torch.clamp(centres - hi, min=0.0)
            shells = torch.nonzero(torch.linalg.norm(gap, dim=1) < basis.rcut)[:, 0]
            if len(shells):
                sub, ao = basis.subset(shells)
                blocks.append(_Block(None if owner is None else a, idx, sub, ao))
        start += c
    return blocks


class BeckePartition:
    """PySCF's grid-response quadrature as a differentiable function of the nuclear positions.

    The points and weights PySCF's ``grids_response_cc`` yields, atom by atom (atom A's grid
    moves with A): r_g = c_g + R_A and w_g = vol_g f_g, f_g = P_A(r_g) / sum_i P_i(r_g), Becke's
    cell functions in either scheme PySCF's grid response supports and every radii adjustment
    (:func:`dixc.ops.becke_partition`: one pass over the atom pairs per point in dixc's kernel,
    CPU or CUDA). The weight term of the gradient, sum_g (dE/dw_g) (dw_g/dR), is one
    vector-Jacobian product (:meth:`weight_vjp`) on the functional's device, instead of PySCF's
    explicit derivatives (natm, 3, ngrid) per atom.

    Args:
        mol: the built ``pyscf.gto.Mole``.
        grids: its PySCF ``Grids`` (atom grids, Becke scheme, radii adjustment as configured).
        device: torch device.
    """

    def __init__(self, mol, grids, device: torch.device | str = "cpu") -> None:
        from pyscf.dft import gen_grid, radi

        if grids.becke_scheme not in (gen_grid.original_becke, gen_grid.stratmann):
            raise NotImplementedError(
                f"dixc: grid response for becke_scheme {grids.becke_scheme.__name__} is not "
                "implemented (PySCF's neither): use original_becke or stratmann"
            )
        self.scheme = "stratmann" if grids.becke_scheme is gen_grid.stratmann else "becke"
        dev = torch.device(device)
        tab = grids.gen_atomic_grids(mol, grids.atom_grid, grids.radi_method, grids.level,
                                     grids.prune)  # fmt: skip
        t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float64).to(dev)  # noqa: E731
        offsets = [t(tab[mol.atom_symbol(i)][0]) for i in range(mol.natm)]
        self.vol = torch.cat([t(tab[mol.atom_symbol(i)][1]) for i in range(mol.natm)])
        self.atom_coords = t(mol.atom_coords())
        self._coords = torch.cat([c + r for c, r in zip(offsets, self.atom_coords, strict=True)])
        self._owner = torch.cat([torch.full((len(c),), a, dtype=torch.long, device=dev)
                                 for a, c in enumerate(offsets)])  # fmt: skip
        adjust = np.zeros((mol.natm, mol.natm))
        if grids.radii_adjust in (radi.treutler_atomic_radii_adjust,
                                  radi.becke_atomic_radii_adjust):  # fmt: skip
            rad = np.asarray(grids.atomic_radii)[mol.atom_charges()]
            if grids.radii_adjust is radi.treutler_atomic_radii_adjust:
                rad = np.sqrt(rad)
            rad = rad + 1e-200
            rr = rad.reshape(-1, 1) * (1.0 / rad)
            adjust = np.clip(0.25 * (rr.T - rr), -0.5, 0.5)  # a_ij (other adjustments: none)
        self.adjust = t(adjust)

    def points(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Coordinates ``(ngrid, 3)`` and owning atom ``(ngrid,)`` of the points, atom by atom."""
        return self._coords, self._owner

    def weights(self) -> torch.Tensor:
        """The quadrature weights ``(ngrid,)`` (PySCF's ``grids_response_cc`` w0, same order)."""
        f = ops.becke_partition(
            self._coords, self._owner, self.atom_coords, self.adjust, self.scheme
        )
        return self.vol * f

    def weight_vjp(self, de_dw: torch.Tensor) -> torch.Tensor:
        """sum_g de_dw[g] dw_g/dR ``(natm, 3)`` (points moving with their atoms)."""
        # w_g = vol_g f(r_g, R), r_g = c_g + R_owner: dR_k = df/dR_k + sum_{owner g = k} df/dr_g
        gcoords, gatoms = ops.becke_partition_backward(
            de_dw.to(self.vol) * self.vol, self._coords, self._owner, self.atom_coords,
            self.adjust, self.scheme,
        )  # fmt: skip
        return gatoms.index_add(0, self._owner, gcoords)


def _finite_energy(functional: XCFunctional, rho: torch.Tensor, grid: Grid, what: str):
    e = functional(rho, grid)
    if not bool(torch.isfinite(e)):
        raise ValueError(
            f"dixc: E_xc of {type(functional).__name__} is not finite at this density ({what}); "
            "check the SCF and the functional"
        )
    return e


def _molecule_grid(
    mol, coords: torch.Tensor, weights: torch.Tensor, moving: bool, nuclei: bool
) -> Grid:
    """A dixc ``Grid`` of ``mol``'s points; ``moving``: coordinates and weights require grad
    (copies), ``nuclei``: the nuclear positions do."""
    dev = coords.device
    return Grid(
        coords=coords.clone().requires_grad_(moving) if moving else coords,
        weights=weights.clone().requires_grad_(moving) if moving else weights,
        atom_coords=torch.as_tensor(mol.atom_coords(), dtype=torch.float64)
        .to(dev)
        .requires_grad_(nuclei),
        atom_charges=torch.as_tensor(nuclear_charges(mol), dtype=torch.long).to(dev),
    )


def _energy_derivatives(
    functional: XCFunctional, rho: torch.Tensor, grid: Grid
) -> tuple[torch.Tensor, ...]:
    """dE/d rho ``(nfeat, ngrid)``, dE/dw ``(ngrid,)``, dE/d coords ``(ngrid, 3)``, dE/dR
    ``(natm, 3)`` of E = functional(rho, grid) (zeros where E does not depend on them)."""
    with torch.enable_grad():
        e = _finite_energy(functional, rho, grid, "nuclear gradient")
        return grads_or_zeros(e, [rho, grid.weights, grid.coords, grid.atom_coords])


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
            the points and weights are then regenerated atom by atom as PySCF's
            ``grids_response_cc`` does (:class:`BeckePartition`; the points and weights of
            ``grids`` in another order, before any pruning by density).
        device: torch device of the grid work.

    Returns:
        ``(exc1, vmat)``: ``(natm, 3)`` the grid response and explicit terms (b, c) and
        ``(3, nao, nao)`` minus the matrix M summed over the grid, as PySCF's
        ``get_vxc_full_response`` returns them (the caller adds 2 sum_{m in A} vmat D per atom).
    """

    if grids.coords is None:
        grids.build()
    dev = torch.device(device)
    xctype, nfeat = functional.xctype, functional.nfeat
    basis = pack_basis(mol).to(dev)
    d = torch.as_tensor(np.asarray(dm), dtype=torch.float64).to(dev)
    if d.dim() != 2:
        raise NotImplementedError("dixc: nuclear gradients for one closed-shell density only")
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float64).to(dev)  # noqa: E731
    if grid_response:  # PySCF's grid-response points and weights, atom by atom
        becke = BeckePartition(mol, grids, dev)
        coords, owner = becke.points()
        weights = becke.weights()
    else:
        coords, weights, owner = t(grids.coords), t(grids.weights), None
    grid = _molecule_grid(mol, coords, weights, moving=grid_response, nuclei=True)
    rho = ops.eval_rho_fused(basis, coords, d, xctype)[:nfeat].requires_grad_(True)
    v, de_dw, de_dr, de_dR = _energy_derivatives(functional, rho, grid)

    nao = basis.nao
    exc1 = de_dR.clone()  # (c) nuclei
    vmat = torch.zeros(3, nao, nao, dtype=torch.float64, device=dev)
    deriv = 1 if xctype == "LDA" else 2
    ncomp = 4 if deriv == 1 else 10
    for blk in _blocks(basis, coords, owner, ncomp):
        ao, pts = blk.ao, blk.points
        m = xc_gradient_matrix(ops.eval_ao(blk.basis, coords[pts], deriv), v[:, pts], xctype)
        vmat[:, ao[:, None], ao] += m
        if blk.atom is not None:  # (b) points: they move with their atom
            exc1[blk.atom] += 2.0 * torch.einsum("xij,ji->x", m, d[ao[:, None], ao])
    if owner is not None:
        exc1.index_add_(0, owner, de_dr)  # (c) points
        exc1 += becke.weight_vjp(de_dw)  # (b) weights: sum_g dE/dw_g dw_g/dR
    return exc1.cpu().numpy(), -vmat.cpu().numpy()


_POINT_CHUNK = 4096  # points per third-order autograd pass of a local functional


def _autograd(y: torch.Tensor, x: torch.Tensor, create: bool) -> torch.Tensor:
    """d(sum y)/dx (zeros where y does not depend on x)."""
    if not y.requires_grad:
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(y.sum(), x, retain_graph=True, create_graph=create,
                               allow_unused=True)  # fmt: skip
    return torch.zeros_like(x) if g is None else g


def _local_chunks(functional: XCFunctional, x: torch.Tensor) -> list[slice]:
    """Slices of the points (last axis) of ``x``, at most ``_POINT_CHUNK`` each."""
    return functional.point_slices(x.shape[-1], x.device, _POINT_CHUNK)


def _lagrangian_derivatives(
    functional: XCFunctional, feats: torch.Tensor, grid: Grid
) -> tuple[torch.Tensor, ...]:
    """Derivatives of the XC Lagrangian L = E(x0) + dE(x0)[xP] + 4 d^2E(x0)[xT, xT].

    Args:
        feats: ``(3, nfeat, ngrid)`` features of the ground-state, relaxed difference and
            transition densities.
        grid: the points (weights included); for a nonlocal functional its ``coords``,
            ``weights`` and ``atom_coords`` may require grad.

    Returns:
        ``(dL/dx (3, nfeat, ngrid), dL/dw (ngrid,), dL/dcoords (ngrid, 3), dL/dR (natm, 3))``.
        A local functional's pointwise l = e + e_u xP_u + 4 e_uv xT_u xT_v is done in chunks of
        ``_POINT_CHUNK`` points (dL/dw = l; no explicit coordinates); EG-XC's by its own
        ``lagrangian`` (point chunks between its atom-level seams, bounded memory);
        another nonlocal one's L on the whole grid (three backward passes through its energy).
    """
    x0, xp, xt = feats
    if functional.is_local:
        ell, d0 = [], []
        for sl in _local_chunks(functional, x0):
            r = x0[:, sl].detach().requires_grad_(True)
            with torch.enable_grad():
                e = functional.energy_density(r)
                v = _autograd(e, r, True)  # e_u
                h = _autograd((v * xt[:, sl]).sum(0), r, True)  # e_uv xT_v
                lag = e + (v * xp[:, sl]).sum(0) + 4.0 * (h * xt[:, sl]).sum(0)
                d0.append(torch.stack([_autograd(lag, r, False), v, 8.0 * h]).detach())
            ell.append(lag.detach())
        w = grid.weights.detach()
        return (
            torch.cat(d0, 2) * w,
            torch.cat(ell),
            torch.zeros_like(grid.coords),
            torch.zeros_like(grid.atom_coords),
        )
    chunked = getattr(functional, "lagrangian", None)
    if chunked is not None:  # EG-XC: point chunk by point chunk (bounded memory)
        r = chunked(x0, grid, 1.0, xp, xt[None], 4.0 * xt[None])  # 4 d^2E[xT, xT] = d^2E[xT, 4 xT]
        return (torch.stack([r.x0, r.xp, r.xa[0] + 4.0 * r.xb[0]]), r.weights, r.coords,
                r.atom_coords)  # fmt: skip
    r = x0.detach().requires_grad_(True)
    with torch.enable_grad():
        e = _finite_energy(functional, r, grid, "excited-state gradient")
        v = _autograd(e, r, True)
        h = _autograd((v * xt).sum(), r, True)
        lag = e + (v * xp).sum() + 4.0 * (h * xt).sum()
        d0, *geometric = grads_or_zeros(lag, [r, grid.weights, grid.coords, grid.atom_coords])
    return (torch.stack([d0, v.detach(), 8.0 * h.detach()]), *geometric)


def excited_grid_response(
    mol,
    grids,
    functional: XCFunctional,
    dm0: np.ndarray,
    dm_relaxed: np.ndarray,
    dm_transition: np.ndarray,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """The grid response (and explicit terms) of the XC part of a singlet TDA / TDDFT gradient.

    PySCF's excited-state gradient (``pyscf.grad.tdrks.grad_elec``) differentiates the XC part
    of the TDDFT Lagrangian with the grid held fixed in space. That part is

        L_xc = E(x0) + dE(x0)[xP] + 4 d^2E(x0)[xT, xT],

    for a local functional sum_g w_g l(r_g) with l = e(x0) + e_u(x0) xP_u + 4 e_uv(x0) xT_u xT_v
    (x0, xP, xT: the features of the ground-state density D0, the relaxed difference density P
    (difference density plus Z-vector) and the transition density T = (X + Y)_AO with PySCF's
    normalisation x.x - y.y = 1/2; e_u, e_uv: derivatives of the energy density; the 4 is the
    singlet kernel's 2 (f_aa + f_ab = 2 e'') times the 2 of that normalisation). With the grid
    moving with the atoms (PySCF's ``grids_response_cc`` quadrature, :class:`BeckePartition`),
    its derivative gains

        sum_{g in A} sum_k dL/dx_k(r_g) . grad x_k(r_g)  +  sum_g dL/dw_g dw_g/dR_A
        (+ for a nonlocal functional: sum_{g in A} dL/dr_g + dL/dR_A, its explicit terms)

    computed as in :func:`xc_gradient_terms` (2 tr(M^(A)(dL/dx_k) D_k) per density k, one
    vector-Jacobian product through the Becke weights). Adding it to PySCF's gradient makes the
    excited-state gradient the derivative of E_SCF + omega computed on grids that move with the
    atoms, as the ground-state ``grid_response`` does (:func:`with_grid_response` does that).

    Args:
        mol: the built ``pyscf.gto.Mole``.
        grids: the PySCF ``Grids`` of the SCF and response (unpruned by density).
        functional: any dixc functional (float64); EG-XC by point chunks (its ``lagrangian``),
            another nonlocal one on the whole grid at once.
        dm0: ``(nao, nao)`` ground-state density matrix (2 C_occ C_occ^T).
        dm_relaxed: ``(nao, nao)`` relaxed difference density (PySCF's ``dmz1doo``; symmetrised).
        dm_transition: ``(nao, nao)`` transition density (PySCF's ``dmxpy``; symmetrised).
        device: torch device of the grid work.

    Returns:
        ``(natm, 3)`` Hartree / Bohr.

    Raises:
        ValueError: ``grids`` is not the Becke partition of its atom grids (pruned by density).
    """
    if grids.coords is None:
        grids.build()
    dev = torch.device(device)
    xctype, nfeat = functional.xctype, functional.nfeat
    basis = pack_basis(mol).to(dev)
    becke = BeckePartition(mol, grids, dev)
    coords, owner = becke.points()
    weights = becke.weights()
    total = float(np.asarray(grids.weights).sum())  # PySCF pads with zero weights: count differs
    if abs(total - float(weights.sum())) > 1e-10 * abs(total):
        raise ValueError(
            f"dixc: the grid of {mol.natm}-atom {''.join(mol.elements)} is not the Becke "
            f"partition of its atom grids (weights sum to {total:.12g}, the partition's to "
            f"{float(weights.sum()):.12g}): the grid response needs the unpruned partition (do "
            "not prune the grid by density)"
        )

    def sym(a: np.ndarray) -> torch.Tensor:
        a = torch.as_tensor(np.asarray(a), dtype=torch.float64).to(dev)
        return 0.5 * (a + a.T)

    dms = torch.stack([sym(dm0), sym(dm_relaxed), sym(dm_transition)])
    feats = ops.eval_rho_fused(basis, coords, dms, xctype)[:, :nfeat]
    nonlocal_ = not functional.is_local  # explicit terms: only a nonlocal functional has them
    grid = _molecule_grid(mol, coords, weights, moving=nonlocal_, nuclei=nonlocal_)
    vs, de_dw, de_dr, de_dR = _lagrangian_derivatives(functional, feats, grid)
    out = de_dR.clone()  # explicit: nuclei
    out.index_add_(0, owner, de_dr)  # explicit: points
    out += becke.weight_vjp(de_dw)  # sum_g dL/dw_g dw_g/dR
    deriv = 1 if xctype == "LDA" else 2
    for blk in _blocks(basis, coords, owner, 4 if deriv == 1 else 10):
        ao = ops.eval_ao(blk.basis, coords[blk.points], deriv)
        for d, v in zip(dms, vs, strict=True):  # the points of the block move with their atom
            m = xc_gradient_matrix(ao, v[:, blk.points], xctype)
            out[blk.atom] += 2.0 * torch.einsum("xij,ji->x", m, d[blk.ao[:, None], blk.ao])
    return out.cpu().numpy()


def _kernel_directions(
    functional: XCFunctional,
    feats: torch.Tensor,
    grid: Grid,
    with_oo: bool,
    with_kxc: bool,
) -> list[torch.Tensor | None]:
    """Weighted E_u(x0), E_uv x1_v, E_uv x2_v and E_uvw x1_v x1_w per point ``(nfeat, ngrid)``
    each (``feats`` = x0, x1[, x2]; the third and fourth None when not asked): directional
    derivatives by autograd, one backward pass per direction (a local functional's in chunks of
    ``_POINT_CHUNK`` points, weights applied after; EG-XC's as gradients of one Lagrangian by
    its chunked ``lagrangian``; another nonlocal one's
    on the whole grid)."""

    def directions(energy, r, sl) -> list[torch.Tensor | None]:
        v = _autograd(energy, r, True)
        f1 = _autograd((v * feats[1][:, sl]).sum(), r, with_kxc)
        f2 = _autograd((v * feats[2][:, sl]).sum(), r, False) if with_oo else None
        k = _autograd((f1 * feats[1][:, sl]).sum(), r, False) if with_kxc else None
        return [None if x is None else x.detach() for x in (v, f1, f2, k)]

    x0 = feats[0]
    chunked = getattr(functional, "lagrangian", None)
    if chunked is not None:  # EG-XC, point chunk by point chunk, all four from one Lagrangian:
        # L = d^2E[x1, x1 or 0] (+ d^2E[x2, 0]): dL/dx0 = E_uvw x1 x1 (with k), dL/dxP = E_u
        # (xP = 0), dL/dxB_b = E_uv xA_b
        zero = torch.zeros_like(x0)
        xa = torch.stack([feats[1]] + ([feats[2]] if with_oo else []))
        xb = torch.stack([feats[1] if with_kxc else zero] + ([zero] if with_oo else []))
        r = chunked(x0, grid, 0.0, zero, xa, xb)
        return [r.xp, r.xb[0], r.xb[1] if with_oo else None, r.x0 if with_kxc else None]
    if not functional.is_local:
        r = x0.detach().requires_grad_(True)
        with torch.enable_grad():
            return directions(functional(r, grid), r, slice(None))
    parts: list[list] = [[], [], [], []]
    for sl in _local_chunks(functional, x0):
        r = x0[:, sl].detach().requires_grad_(True)
        with torch.enable_grad():
            got = directions(functional.energy_density(r), r, sl)
        for out, x in zip(parts, got, strict=True):
            out.append(x)
    w = grid.weights
    return [None if p[0] is None else torch.cat(p, 1) * w for p in parts]


def td_xc_kernel_terms(
    mol,
    grids,
    functional: XCFunctional,
    dm0: np.ndarray,
    dmvo: np.ndarray,
    dmoo: np.ndarray | None = None,
    with_vxc: bool = True,
    with_kxc: bool = True,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray | None, ...]:
    """The XC matrices of PySCF's singlet TDA / TDDFT gradient (``tdrks._contract_xc_kernel``).

    With x0, x1, x2 the features of the ground-state density ``dm0``, of 2 (dmvo + dmvo^T) / 2
    and of 2 ``dmoo`` (PySCF's factor 2 for alpha + beta), and the per-point vectors (weights
    included) u = E_uv x1_v (f1vo), E_uv x2_v (f1oo), E_u (v1ao), E_uvw x1_v x1_w (k1ao) of the
    XC energy E, each result is ``(4, nao, nao)``: [0] the potential matrix sum_g u . dx/dD
    (``contract_vxc``), [1:] minus the gradient matrix M of :func:`xc_gradient_matrix`. The
    products come from directional derivatives by autograd (one backward pass per direction)
    instead of the pointwise f_xc and k_xc tensors PySCF contracts (one pass per row of f_xc and
    per pair of k_xc's indices): the same numbers, several times fewer passes for a learned
    functional, and defined for a nonlocal functional too (whose gradient then also needs the
    explicit and grid-response terms of :func:`excited_grid_response`).

    Args:
        mol: the built ``pyscf.gto.Mole``.
        grids: the PySCF ``Grids`` of the response (fixed in space).
        functional: any dixc functional (float64).
        dm0: ``(nao, nao)`` ground-state density matrix.
        dmvo: ``(nao, nao)`` transition-like density (symmetrised here, as PySCF does).
        dmoo: ``(nao, nao)`` symmetric density, or None (then f1oo is None).
        with_vxc: compute v1ao (else None).
        with_kxc: compute k1ao (else None).
        device: torch device of the grid work.

    Returns:
        ``(f1vo, f1oo, v1ao, k1ao)`` as PySCF's function returns them.
    """
    if grids.coords is None:
        grids.build()
    dev = torch.device(device)
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float64).to(dev)  # noqa: E731
    xctype, nfeat = functional.xctype, functional.nfeat
    basis = pack_basis(mol).to(dev)
    coords, weights = t(grids.coords), t(grids.weights)
    dvo = t(dmvo)
    dms = [t(dm0), dvo + dvo.T] + ([] if dmoo is None else [2.0 * t(dmoo)])
    feats = ops.eval_rho_fused(basis, coords, torch.stack(dms), xctype)[:, :nfeat]
    grid = _molecule_grid(mol, coords, weights, moving=False, nuclei=False)
    v, f1, f2, k = _kernel_directions(functional, feats, grid, dmoo is not None, with_kxc)
    wanted = [f1, f2, v if with_vxc else None, k]
    us = [u for u in wanted if u is not None]
    nao = basis.nao
    mats = torch.zeros(len(us), 4, nao, nao, dtype=torch.float64, device=dev)
    deriv = 1 if xctype == "LDA" else 2
    ncomp = 1 if xctype == "LDA" else 4
    for blk in _blocks(basis, coords, None, 4 if deriv == 1 else 10):
        ao = ops.eval_ao(blk.basis, coords[blk.points], deriv)
        ub = torch.stack([u[:, blk.points] for u in us])
        i, j = blk.ao[:, None], blk.ao
        mats[:, 0][:, i, j] += ops.contract_vxc(ao[:ncomp].contiguous(), ub, xctype)
        for k in range(len(us)):
            mats[k, 1:][:, i, j] -= xc_gradient_matrix(ao, ub[k], xctype)
    out: list[np.ndarray | None] = []
    it = iter(mats.cpu().numpy())
    for u in wanted:
        out.append(None if u is None else next(it))
    return tuple(out)


def with_grid_response(td_grad):
    """Adds the grid response to PySCF's TDA / TDDFT gradient object of a dixc drop-in.

    ``td_grad`` (``td.nuc_grad_method()`` of :func:`dixc.pyscf_plugin.RKS`'s ``TDA()`` or
    ``TDDFT()``, singlets) then returns the derivative of E_SCF + omega with the grid moving
    with the atoms: :func:`excited_grid_response` is added through PySCF's ``extra_force``
    hook (any hook already there is kept), once per state, from the densities PySCF built. A
    nonlocal functional's excited-state gradients need it (its explicit terms come with it).

    Returns:
        ``td_grad`` (modified in place).
    """
    from dixc.pyscf_plugin import TorchNumInt

    mf = td_grad.base._scf
    ni = mf._numint
    if not isinstance(ni, TorchNumInt):
        raise TypeError(
            "dixc: with_grid_response needs the gradient of a dixc drop-in "
            "(dixc.pyscf_plugin.RKS(mol, functional).TDA() or .TDDFT())"
        )
    if not getattr(td_grad.base, "singlet", True):
        raise NotImplementedError("dixc: the excited-state grid response is for singlets only")
    if has_grid_response(td_grad):
        return td_grad
    previous = td_grad.extra_force
    cache: dict = {}

    def extra_force(atom_id, envs):
        key = envs["dmz1doo"]  # one array per state; held here, so its identity is not reused
        if cache.get("key") is not key:
            g = excited_grid_response(td_grad.mol, mf.grids, ni.functional, 2.0 * envs["oo0"],
                                      key, envs["dmxpy"], ni.device)  # fmt: skip
            cache.update(key=key, value=g)
        return previous(atom_id, envs) + cache["value"][atom_id]

    extra_force._dixc_grid_response = True  # type: ignore[attr-defined]
    td_grad.extra_force = extra_force
    return td_grad


def has_grid_response(td_grad) -> bool:
    """Whether :func:`with_grid_response` was applied to ``td_grad``."""
    return bool(getattr(td_grad.extra_force, "_dixc_grid_response", False))


def _drop_in(ctx, functional: XCFunctional):
    """PySCF's RKS with ``functional`` as a drop-in on the context's molecule, grid and device
    (importing :mod:`dixc.pyscf_plugin` routes PySCF's XC gradient terms to this module)."""
    from dixc import pyscf_plugin

    mf = pyscf_plugin.RKS(ctx.mol, functional, device=ctx.device, verbose=0)
    mf.grids = ctx.grids
    return mf


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
    if ctx.cderi is None and ctx.eri is None:
        raise ValueError(f"dixc: the context of {ctx.name} has no Coulomb operator (coulomb=none)")
    mf = _drop_in(ctx, functional)
    if ctx.cderi is not None:
        mf = mf.density_fit(auxbasis=ctx.auxbasis)
    grad = mf.nuc_grad_method()
    grad.grid_response = True
    grad.verbose = 0
    t = lambda x: x.detach().cpu().numpy()  # noqa: E731
    out = grad.kernel(mo_energy=t(res.mo_energy), mo_coeff=t(res.mo_coeff), mo_occ=t(res.mo_occ))
    return np.asarray(out)


def pyscf_amplitudes(
    e: np.ndarray, xy: np.ndarray, mo_energy: np.ndarray, nocc: int, method: str
) -> list[tuple[np.ndarray, np.ndarray | int]]:
    """dixc's singlet amplitudes as PySCF's ``td.xy``: one ``(x, y)`` per state, ``(nocc, nvir)``
    each (y = 0 for TDA), normalised as x.x - y.y = 1/2.

    Args:
        e: ``(n,)`` excitation energies (Hartree).
        xy: ``(n, nvir, nocc)`` X (TDA, unit norm) or X + Y (RPA, (X + Y).(X - Y) = 1), in
            canonical orbitals with energies ``mo_energy``; for RPA, X - Y follows from
            (A - B)(X - Y) = omega (X + Y), A - B = diag(e_a - e_i) (no exact exchange).
        mo_energy: ``(nmo,)`` orbital energies, occupied first.
        nocc: doubly occupied orbitals.
        method: 'tda' or 'rpa'.
    """
    out: list[tuple[np.ndarray, np.ndarray | int]] = []
    for w, a in zip(e, xy, strict=True):
        if method == "tda":
            out.append((np.sqrt(0.5) * a.T, 0))
        else:
            xmy = w * a / (mo_energy[nocc:, None] - mo_energy[None, :nocc])
            out.append((np.sqrt(0.5) * 0.5 * (a + xmy).T, np.sqrt(0.5) * 0.5 * (a - xmy).T))
    return out


def excited_state_gradients(
    ctx,
    functional: XCFunctional,
    mo_coeff,
    mo_energy,
    e,
    xy,
    method: str,
    grid_response: bool = True,
) -> np.ndarray:
    """dE_n/dR ``(n_states, natm, 3)`` (Hartree / Bohr), E_n = E_SCF + omega_n, of singlet
    excitations computed by :class:`dixc.evaluate.tddft.LinearResponse`.

    PySCF's TDA / TDDFT nuclear gradients (Z-vector, orbital relaxation) with ``functional`` as a
    drop-in (:mod:`dixc.pyscf_plugin`: XC matrices from :func:`td_xc_kernel_terms`) on the
    context's grid,
    with dixc's amplitudes converted to PySCF's convention (x^2 - y^2 = 1/2, X - Y from
    (A - B)(X - Y) = omega (X + Y) with A - B diagonal: no exact exchange), and, unlike PySCF's
    own, with the grid moving with the atoms (:func:`with_grid_response`), as ``scf_gradient``.

    Args:
        ctx: the :class:`dixc.context.MolContext` of the SCF (exact J: PySCF has no
            density-fitted excited-state gradients).
        functional: the SCF's functional (local or nonlocal).
        mo_coeff: ``(nao, nmo)`` canonical orbitals of the amplitudes, occupied first.
        mo_energy: ``(nmo,)`` their orbital energies.
        e: ``(n_states,)`` excitation energies (Hartree).
        xy: ``(n_states, nvir, nocc)`` X (TDA, unit norm) or X + Y (RPA, (X + Y).(X - Y) = 1).
        method: 'tda' or 'rpa'.
        grid_response: add the grid response of the XC terms (:func:`excited_grid_response`);
            False gives PySCF's fixed-grid gradient.

    Raises:
        ValueError: the context has density-fitted (or no) Coulomb integrals.
        NotImplementedError: a nonlocal functional without the grid response.
    """
    if ctx.eri is None:
        raise ValueError(
            f"dixc: excited-state gradients of {ctx.name} need exact Coulomb integrals "
            "(coulomb='exact', dixc run --coulomb exact): PySCF has no density-fitted TDDFT "
            "gradients"
        )
    if not (grid_response or functional.is_local):
        raise NotImplementedError(
            f"dixc: excited-state gradients of the nonlocal functional "
            f"{type(functional).__name__} need the grid response (its explicit terms come with "
            "it): grid_response=True"
        )
    t = lambda x: np.asarray(x.detach().cpu().numpy() if torch.is_tensor(x) else x)  # noqa: E731
    c, eps, omega, amp = t(mo_coeff), t(mo_energy), t(e), t(xy)
    nocc = ctx.nocc
    mf = _drop_in(ctx, functional)
    occ = np.zeros(c.shape[1])
    occ[:nocc] = 2.0
    mf.mo_coeff, mf.mo_energy, mf.mo_occ, mf.converged = c, eps, occ, True
    td = mf.TDA() if method == "tda" else mf.TDDFT()
    pairs = pyscf_amplitudes(omega, amp, eps, nocc, method)
    td.e, td.xy, td.converged = omega, pairs, np.ones(len(omega), dtype=bool)
    td.nstates = len(omega)
    grad = td.nuc_grad_method()
    grad.verbose = 0
    if grid_response:
        with_grid_response(grad)
    return np.stack([np.asarray(grad.kernel(state=k + 1)) for k in range(len(omega))])
