"""Helpers shared by the test modules (PySCF systems, error measures, random matrices)."""

from __future__ import annotations

import dataclasses
import functools
import zlib

import numpy as np
import torch

import dixc
from dixc.grid import Grid
from dixc.molecules import mole


@dataclasses.dataclass
class System:
    """A molecule, its packed basis, a PySCF grid and a few density matrices (all float64)."""

    mol: object
    basis: dixc.Basis
    grid: dixc.Grid
    pgrids: object  # pyscf.dft.gen_grid.Grids on exactly the same points
    dm_guess: np.ndarray  # PySCF's initial guess (symmetric, physical)
    dm_sym: np.ndarray  # random symmetric
    dm_gen: np.ndarray  # random, not symmetric

    @property
    def nao(self) -> int:
        return int(self.mol.nao)

    def ao_pyscf(self, deriv: int, coords: np.ndarray | None = None) -> np.ndarray:
        """PySCF AO values in dixc's layout ``(ncomp, nao, ngrid)``."""
        kind = "cart" if self.mol.cart else "sph"
        pts = self.pgrids.coords if coords is None else coords
        ao = self.mol.eval_gto(f"GTOval_{kind}_deriv{deriv}", pts)
        return np.ascontiguousarray(ao.reshape(-1, *ao.shape[-2:]).transpose(0, 2, 1))


def random_dm(
    nao: int, rng: np.random.Generator, symmetric: bool, scale: float = 0.1
) -> np.ndarray:
    d = rng.standard_normal((nao, nao)) * scale
    return 0.5 * (d + d.T) if symmetric else d


@functools.cache
def system(
    name: str,
    basis: str = "def2-svp",
    cart: bool = False,
    level: int = 1,
    npoints: int | None = None,
) -> System:
    """Builds (once per session) a PySCF molecule, grid and density matrices.

    ``npoints`` keeps a random subset of the grid (in PySCF's spatially sorted order); the PySCF
    ``Grids`` object is cut to the same points and weights, so PySCF's numint integrates on exactly
    dixc's points.
    """
    from pyscf import dft

    mol = mole(name, basis, cart)
    grid, pgrids = dixc.make_grid(mol, level=level)
    rng = np.random.default_rng(zlib.crc32(f"{name}/{basis}/{cart}".encode()))
    if npoints is not None and npoints < grid.ngrid:
        keep = np.sort(rng.choice(grid.ngrid, npoints, replace=False))
        pgrids.coords = np.ascontiguousarray(pgrids.coords[keep])
        pgrids.weights = np.ascontiguousarray(pgrids.weights[keep])
        pgrids.non0tab = None
        pgrids.screen_index = None
        grid = dixc.Grid(grid.coords[keep].clone(), grid.weights[keep].clone())
    dm_guess = dft.RKS(mol).get_init_guess()
    return System(
        mol=mol,
        basis=dixc.pack_basis(mol),
        grid=grid,
        pgrids=pgrids,
        dm_guess=np.asarray(dm_guess),
        dm_sym=random_dm(mol.nao, rng, symmetric=True),
        dm_gen=random_dm(mol.nao, rng, symmetric=False),
    )


def rel_err(x, ref) -> float:
    """max |x - ref| / max |ref| (0 when both vanish)."""
    x = torch.as_tensor(x).detach().to("cpu", torch.float64)
    ref = torch.as_tensor(ref).detach().to("cpu", torch.float64)
    assert x.shape == ref.shape, (x.shape, ref.shape)
    if ref.numel() == 0:
        return 0.0
    scale = ref.abs().max().item()
    diff = (x - ref).abs().max().item()
    return diff / scale if scale > 0 else diff


def rel_err_rows(x, ref) -> list[float]:
    """``rel_err`` per leading row (e.g. per AO component or density feature)."""
    return [rel_err(a, b) for a, b in zip(x, ref, strict=True)]


def sym(a: torch.Tensor) -> torch.Tensor:
    return 0.5 * (a + a.transpose(-1, -2))


def eval_ao_ref_by_shell(basis: dixc.Basis, coords: torch.Tensor, deriv: int) -> torch.Tensor:
    """``dixc.ops.eval_ao_ref`` applied one shell at a time (same values, far less autograd work).

    The reference differentiates the stacked AO values row by row, so its cost grows with nao^2;
    each single-shell basis keeps it linear in the number of shells.
    """
    parts = []
    for s in range(basis.nshell):
        l, ao0 = int(basis.bas[s, 0]), int(basis.bas[s, 3])
        nfunc = (l + 1) * (l + 2) // 2 if basis.cart else 2 * l + 1
        bas = basis.bas[s : s + 1].clone()
        bas[0, 3] = 0
        one = dataclasses.replace(
            basis,
            bas=bas,
            bas_coord=basis.bas_coord[s : s + 1],
            rcut=basis.rcut[s : s + 1],
            nao=nfunc,
        )
        parts.append((ao0, dixc.ops.eval_ao_ref(one, coords, deriv)))
    parts.sort(key=lambda p: p[0])
    return torch.cat([p[1] for p in parts], dim=1)


def becke_points(name: str, level: int, npts: int, seed: int):
    """A subsample of ``npts`` points of a molecule's atom grids (PySCF's order, each point owned
    by its atom) and Treutler's radii adjustment, for the Becke-partition tests: float64
    ``coords (npts, 3)``, int64 ``owner (npts,)``, ``atom_coords (natm, 3)``, ``adjust``."""
    from pyscf.dft import gen_grid, radi

    mol = mole(name, "def2-svp")
    g = gen_grid.Grids(mol)
    tab = g.gen_atomic_grids(mol, g.atom_grid, g.radi_method, level, g.prune)
    R = mol.atom_coords()
    coords = np.concatenate([tab[mol.atom_symbol(a)][0] + R[a] for a in range(mol.natm)])
    owner = np.concatenate([[a] * len(tab[mol.atom_symbol(a)][0]) for a in range(mol.natm)])
    keep = np.sort(np.random.default_rng(seed).choice(len(owner), npts, replace=False))
    rad = np.sqrt(np.asarray(radi.BRAGG_RADII)[mol.atom_charges()])
    rr = rad[:, None] / rad[None]
    adjust = np.clip(0.25 * (rr.T - rr), -0.5, 0.5)
    t = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    return t(coords[keep]), torch.as_tensor(owner[keep]), t(R), t(adjust)


def random_rotation(seed: int) -> torch.Tensor:
    """A proper rotation matrix (3, 3), float64, deterministic in ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def rigid_motion(rho: torch.Tensor, grid, rot: torch.Tensor, shift: torch.Tensor):
    """Features ((B,) 5, ngrid) and grid of the moved molecule (r -> R r + t, grad -> R grad)."""
    rho2 = rho.clone()
    rho2[..., 1:4, :] = torch.einsum("ij,...jg->...ig", rot, rho[..., 1:4, :])
    grid2 = Grid(
        coords=grid.coords @ rot.T + shift,
        weights=grid.weights,
        atom_coords=grid.atom_coords @ rot.T + shift,
        atom_charges=grid.atom_charges,
    )
    return rho2, grid2


def perturbed(f, scale: float = 0.05, seed: int = 7):
    """Moves every parameter of ``f`` (the zero-initialised last layers too) by ``scale`` N(0, 1)
    away from its initialisation, reproducibly (``seed``); returns ``f``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in f.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return f


# A small EG-XC network, so that finite-difference and gradcheck tests over every feature stay fast.
EGXC_SMALL = dict(n_radial=4, channels=4, nl_channels=3, layers=2, hidden=8, n_rbf_gnn=4)


def toy_molecule(
    charges=(8, 1, 1), npts: int = 8, seed: int = 0, shift=(0.0, 0.0, 0.0)
) -> tuple[torch.Tensor, Grid]:
    """A molecule-like random grid: points within 5.5 Bohr of water-like nuclei, Gaussian
    density sum_a Z_a exp(-0.15 |r - R_a|^2), exact gradient, tau = tau_W + 0.2 rho^(5/3)."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.tensor([[0.0, 0.0, 0.22], [0.0, 1.43, -0.89], [0.0, -1.43, -0.89]])[
        : len(charges)
    ].double()
    pos = pos + torch.tensor(shift, dtype=torch.float64)
    pts = []
    for r in pos:
        d = torch.randn(npts, 3, generator=g, dtype=torch.float64)
        d = d / d.norm(dim=1, keepdim=True)
        rad = 0.05 + 5.45 * torch.rand(npts, 1, generator=g, dtype=torch.float64)
        pts.append(r + d * rad)
    coords = torch.cat(pts)
    w = 0.01 + 0.3 * torch.rand(coords.shape[0], generator=g, dtype=torch.float64)
    z = torch.tensor(charges, dtype=torch.float64)
    diff = coords[:, None, :] - pos[None]
    gauss = z * torch.exp(-0.15 * (diff**2).sum(-1))  # (ngrid, natm)
    rho = gauss.sum(1)
    grad = (-0.3 * gauss[..., None] * diff).sum(1)  # (ngrid, 3)
    tau = (grad**2).sum(1) / (8.0 * rho) + 0.2 * rho ** (5.0 / 3.0)
    feats = torch.cat([rho[None], grad.T, tau[None]])
    grid = Grid(coords, w, pos, torch.tensor(charges, dtype=torch.int64))
    return feats, grid


def exact_states(mf, kind: str, n: int):
    """The n lowest singlets of ``mf``'s response matrix (PySCF's, applied to the identity),
    diagonalised exactly: ``(omega (n,), PySCF td.xy)``. No Davidson: its convergence flags flip
    on rounding near a tight conv_tol (seen for native and dixc operators alike)."""
    from dixc.nuclear_grad import pyscf_amplitudes

    vind, hdiag = getattr(mf, kind)().gen_vind()
    m = vind(np.eye(hdiag.size))
    w, v = np.linalg.eigh(0.5 * (m + m.T))
    nocc = int((mf.mo_occ > 0).sum())
    eps = np.asarray(mf.mo_energy)
    z = v[:, :n].T.reshape(n, nocc, -1).transpose(0, 2, 1)  # (n, nvir, nocc), unit norm
    if kind == "TDA":
        e, xy = w[:n], z
    else:  # PySCF's pure-DFT matrix D^1/2 (A + B) D^1/2 gives omega^2; X + Y = D^1/2 z / omega^1/2
        e = np.sqrt(w[:n])
        xy = np.sqrt(eps[nocc:, None] - eps[None, :nocc]) * z / np.sqrt(e)[:, None, None]
    return e, pyscf_amplitudes(e, xy, eps, nocc, "tda" if kind == "TDA" else "rpa")


def excited_gradient(
    mf,
    kind: str,
    states,
    state: int = 1,
    cphf_tol: float = 1e-8,
    response=None,
    grid_response: bool = False,
):
    """PySCF's TDA / TDDFT nuclear gradient of ``state`` (1-based) with the given amplitudes.

    With ``response`` (a dixc functional), plus :func:`dixc.nuclear_grad.excited_grid_response`
    of the densities PySCF built (read from its ``extra_force`` hook here, not through
    ``with_grid_response``), for any ``mf`` (native libxc too). With ``grid_response`` (a dixc
    drop-in), through :func:`dixc.nuclear_grad.with_grid_response`, the public path."""
    from dixc import nuclear_grad

    td = getattr(mf, kind)()
    td.e, td.xy = states
    td.nstates, td.converged = len(td.e), np.ones(len(td.e), dtype=bool)
    g = td.nuc_grad_method()
    g.verbose, g.cphf_conv_tol = 0, cphf_tol
    if grid_response:
        nuclear_grad.with_grid_response(g)
    seen: dict = {}
    if response is not None:
        g.extra_force = lambda atom, envs: seen.update(envs) or 0.0
    out = g.kernel(state=state)
    if response is not None:
        out = out + nuclear_grad.excited_grid_response(
            mf.mol, mf.grids, response, 2.0 * seen["oo0"], seen["dmz1doo"], seen["dmxpy"]
        )
    return out
