"""PySCF molecular integration grids as tensors."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch


@dataclasses.dataclass(frozen=True)
class Grid:
    """Integration grid.

    Attributes:
        coords: float64 ``(ngrid, 3)`` points (Bohr), PySCF's order (grouped into spatial boxes).
        weights: float64 ``(ngrid,)`` quadrature weights (Bohr^3).
        atom_coords: float64 ``(natm, 3)`` nuclear positions (Bohr), for nonlocal functionals;
            None when the grid was made without a molecule.
        atom_charges: int64 ``(natm,)`` nuclear charges (atomic numbers), or None.
    """

    coords: torch.Tensor
    weights: torch.Tensor
    atom_coords: torch.Tensor | None = None
    atom_charges: torch.Tensor | None = None

    @property
    def ngrid(self) -> int:
        return int(self.coords.shape[0])

    def to(self, device: torch.device | str) -> Grid:
        opt = (None if t is None else t.to(device) for t in (self.atom_coords, self.atom_charges))
        return Grid(self.coords.to(device), self.weights.to(device), *opt)


def nuclear_charges(mol) -> np.ndarray:
    """``(natm,)`` int64 atomic numbers Z of a PySCF ``Mole`` (``mol.atom_charges()`` is Z less
    the core electrons an ECP replaces)."""
    return np.array(
        [int(mol.atom_charge(i)) + int(mol.atom_nelec_core(i)) for i in range(mol.natm)],
        dtype=np.int64,
    )


def from_pyscf(grids) -> Grid:
    """Wraps a built ``pyscf.dft.gen_grid.Grids`` (coords, weights, its molecule's atoms)."""
    if grids.coords is None:
        grids.build()
    mol = grids.mol
    return Grid(
        torch.as_tensor(grids.coords, dtype=torch.float64).clone(),
        torch.as_tensor(grids.weights, dtype=torch.float64).clone(),
        None if mol is None else torch.as_tensor(mol.atom_coords(), dtype=torch.float64),
        None if mol is None else torch.as_tensor(nuclear_charges(mol), dtype=torch.int64),
    )


def make_grid(mol, level: int = 3, prune: bool = True):
    """Builds PySCF's molecular grid for ``mol`` (Becke partitioning, NWChem pruning by default).

    Args:
        mol: a built ``pyscf.gto.Mole``.
        level: PySCF grid level 0-9.
        prune: NWChem-style pruning (PySCF's default) or none.

    Returns:
        ``(grid, grids)``: the dixc ``Grid`` and the PySCF ``Grids`` it was made from (pass the
        latter to PySCF to compare on exactly the same points).
    """
    from pyscf.dft import gen_grid

    grids = gen_grid.Grids(mol)
    grids.level = level
    if not prune:
        grids.prune = None
    grids.build()
    return from_pyscf(grids), grids
