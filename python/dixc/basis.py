"""Packing a PySCF ``Mole``'s Gaussian basis into the tensors dixc's kernels read.

Every contraction of a PySCF shell becomes one dixc shell; AO order is PySCF's
(``mol.ao_labels()``), spherical or cartesian as ``mol.cart`` says. Coefficients follow libcint's
normalisation, with the s and p factors (1/sqrt(4 pi), sqrt(3/(4 pi))) folded in, and the
cartesian -> real-spherical tables are libcint's, so values equal ``mol.eval_gto`` exactly.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

MAX_L = 6
_SP_FACTOR = {0: 1.0 / math.sqrt(4.0 * math.pi), 1: math.sqrt(3.0 / (4.0 * math.pi))}


def _ncart(l: int) -> int:
    return (l + 1) * (l + 2) // 2


@dataclasses.dataclass(frozen=True)
class Basis:
    """A packed contracted-Gaussian basis.

    Attributes:
        bas: int64 ``(nshell, 4)``: angular momentum l, number of primitives, offset into ``prim``,
            offset of the shell's first AO.
        bas_coord: float64 ``(nshell, 3)``: shell centres (Bohr).
        prim: float64 ``(nprim, 2)``: exponent (Bohr^-2) and contraction coefficient.
        c2s: float64 ``(sum_l ncart(l) * (2l + 1),)``: cartesian -> spherical tables, l = 0..6,
            each row-major ``(ncart, 2l + 1)``.
        rcut: float64 ``(nshell,)``: radius (Bohr) beyond which the shell's values and first and
            second derivatives are all below ``cutoff``; blocks of grid points farther away skip it.
        nao: number of AOs.
        cart: cartesian (True) or real spherical (False) functions.
        cutoff: the screening threshold ``rcut`` was made with.
    """

    bas: torch.Tensor
    bas_coord: torch.Tensor
    prim: torch.Tensor
    c2s: torch.Tensor
    rcut: torch.Tensor
    nao: int
    cart: bool
    cutoff: float

    @property
    def nshell(self) -> int:
        return int(self.bas.shape[0])

    @property
    def device(self) -> torch.device:
        return self.bas.device

    @property
    def tensors(
        self,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The five tensors in op-argument order ``(bas, bas_coord, prim, c2s, rcut)``."""
        return (self.bas, self.bas_coord, self.prim, self.c2s, self.rcut)

    def subset(self, shells: torch.Tensor) -> tuple[Basis, torch.Tensor]:
        """The basis of some of the shells (screening: those reaching a block of points).

        Args:
            shells: int64 ``(k,)`` increasing shell indices.

        Returns:
            The sub-basis (its AOs in the order of ``shells``; ``prim`` and ``c2s`` shared) and
            the int64 ``(nao_sub,)`` indices of its AOs in this basis.
        """
        bas = self.bas[shells].clone()
        l = bas[:, 0]
        nfun = (l + 1) * (l + 2) // 2 if self.cart else 2 * l + 1
        start = torch.cumsum(nfun, 0) - nfun
        nao = int(nfun.sum())
        ao = torch.repeat_interleave(bas[:, 3] - start, nfun, output_size=nao)
        ao = ao + torch.arange(nao, device=bas.device)
        bas[:, 3] = start
        sub = dataclasses.replace(
            self, bas=bas, bas_coord=self.bas_coord[shells], rcut=self.rcut[shells], nao=nao
        )
        return sub, ao

    def to(self, device: torch.device | str) -> Basis:
        """Returns the basis with every tensor on ``device``."""
        move = {f: getattr(self, f).to(device) for f in ("bas", "bas_coord", "prim", "c2s", "rcut")}
        return dataclasses.replace(self, **move)


def cart2sph_tables(max_l: int = MAX_L) -> np.ndarray:
    """libcint's cartesian -> real-spherical tables for l = 0..max_l, packed as ``Basis.c2s``."""
    from pyscf import gto

    parts = []
    for l in range(max_l + 1):
        if l < 2:  # s and p: identity; their normalisation factors live in the coefficients
            parts.append(np.eye(_ncart(l)).ravel())
        else:
            parts.append(np.asarray(gto.cart2sph(l), dtype=np.float64).reshape(-1))
    return np.concatenate(parts)


def _screening_radius(
    l: int, exps: np.ndarray, coefs: np.ndarray, scale: float, cutoff: float
) -> float:
    """Largest r at which a bound on |chi|, |grad chi| and |d2 chi| of the shell reaches cutoff."""
    r = np.linspace(0.0, 80.0, 3201)[:, None]  # step 0.025 Bohr
    a = exps[None, :]
    poly = (
        r**l
        + l * r ** max(l - 1, 0)
        + 2.0 * a * r ** (l + 1)
        + l * l * r ** max(l - 2, 0)
        + 2.0 * a * (2 * l + 1) * r**l
        + 4.0 * a * a * r ** (l + 2)
    )
    g = scale * (np.abs(coefs)[None, :] * poly * np.exp(-a * r * r)).sum(axis=1)
    above = np.nonzero(g >= cutoff)[0]
    if len(above) == 0:
        return 0.0
    if above[-1] == len(r) - 1:
        return math.inf
    return float(r[above[-1] + 1, 0]) + 0.025


def pack_basis(mol, cutoff: float = 1e-14, dtype: torch.dtype = torch.float64) -> Basis:
    """Packs the AO basis of a built PySCF ``Mole``.

    Args:
        mol: a built ``pyscf.gto.Mole`` (spherical or ``cart=True``).
        cutoff: screening threshold on |AO value and derivatives|; 1e-14 keeps densities exact to
            well below 1e-10.
        dtype: floating dtype of ``bas_coord``/``prim``/``c2s``/``rcut`` (kernels read float64).

    Returns:
        The packed ``Basis``; ``basis.nao == mol.nao``.

    Raises:
        ValueError: a shell with l > 6, or an unbuilt ``Mole``.
    """
    if not getattr(mol, "_built", False) or getattr(mol, "_bas", None) is None:
        raise ValueError("dixc.pack_basis: the Mole is not built; call mol.build() first")
    c2s = cart2sph_tables()
    c2s_abs = {}
    off = 0
    for l in range(MAX_L + 1):
        n = _ncart(l) * (2 * l + 1)
        tab = np.abs(c2s[off : off + n].reshape(_ncart(l), 2 * l + 1))
        c2s_abs[l] = 1.0 if (l < 2 or mol.cart) else float(tab.sum(axis=0).max())
        off += n
    bas_rows, coords, prims, rcuts = [], [], [], []
    ao = 0
    for ib in range(mol.nbas):
        l = int(mol.bas_angular(ib))
        if l > MAX_L:
            atom = mol.bas_atom(ib)
            raise ValueError(
                f"dixc.pack_basis: shell {ib} of atom {atom} ({mol.atom_symbol(atom)}) has "
                f"l = {l}; dixc supports l <= {MAX_L}. Use a smaller basis."
            )
        exps = np.asarray(mol.bas_exp(ib), dtype=np.float64)
        ctr = np.asarray(mol._libcint_ctr_coeff(ib), dtype=np.float64)  # (nprim, nctr)
        fac = _SP_FACTOR.get(l, 1.0)
        nfunc = _ncart(l) if mol.cart else 2 * l + 1
        for k in range(ctr.shape[1]):
            coefs = ctr[:, k] * fac
            bas_rows.append((l, len(exps), len(prims), ao))
            prims.extend(zip(exps, coefs, strict=True))
            coords.append(mol.bas_coord(ib))
            rcuts.append(_screening_radius(l, exps, coefs, c2s_abs[l], cutoff))
            ao += nfunc
    if ao != mol.nao:
        raise AssertionError(f"dixc.pack_basis: packed {ao} AOs but mol.nao = {mol.nao}")
    rc = np.asarray(rcuts, dtype=np.float64)
    rc[~np.isfinite(rc)] = 1e30
    return Basis(
        bas=torch.tensor(np.asarray(bas_rows, dtype=np.int64).reshape(-1, 4)),
        bas_coord=torch.tensor(np.asarray(coords, dtype=np.float64).reshape(-1, 3), dtype=dtype),
        prim=torch.tensor(np.asarray(prims, dtype=np.float64).reshape(-1, 2), dtype=dtype),
        c2s=torch.tensor(c2s, dtype=dtype),
        rcut=torch.tensor(rc, dtype=dtype),
        nao=int(mol.nao),
        cart=bool(mol.cart),
        cutoff=float(cutoff),
    )
