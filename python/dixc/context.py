"""Everything a Kohn-Sham calculation needs about one molecule, as torch tensors.

A :class:`MolContext` is made once per molecule from a PySCF ``Mole`` and holds the overlap S,
the core Hamiltonian h, the nuclear repulsion, the integration grid, the packed basis and the
Coulomb operator J (density fitting with PySCF's Cholesky-decomposed 3-index tensor by default,
exact 4-index integrals on request for tiny molecules). Grid work goes through dixc's ops, with a
materialised AO array when it fits in ``ao_memory_mb`` and the fused, screened kernels otherwise.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from dixc import ops
from dixc.basis import Basis, pack_basis
from dixc.grid import Grid, from_pyscf

DEFAULT_AUXBASIS = "def2-universal-jkfit"


def _tril_index(nao: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tril_indices(nao, nao, device=device).unbind(0)


@dataclasses.dataclass
class MolContext:
    """Per-molecule tensors for closed-shell restricted Kohn-Sham (float64, one device).

    Attributes:
        mol: the PySCF ``Mole`` it was made from.
        basis: packed AO basis for the ops.
        grid: integration grid (coords, weights, atoms).
        grids: the PySCF ``Grids`` the grid came from (for running PySCF on the same points).
        S: ``(nao, nao)`` overlap.
        hcore: ``(nao, nao)`` kinetic + nuclear attraction.
        e_nuc: nuclear repulsion (Hartree).
        cderi: ``(naux, nao*(nao+1)/2)`` density-fitting 3-index tensor L with
            (mu nu|la si) ~ sum_P L_P,mu nu L_P,la si (lower-triangle packed, PySCF's layout), or
            None when exact integrals are used.
        eri: ``(nao, nao, nao, nao)`` exact integrals (tiny molecules only) or None.
        nocc: number of doubly occupied orbitals.
        ao_memory_mb: largest materialised AO array (MiB) kept; above it the fused kernels run.
        auxbasis: the auxiliary basis of ``cderi`` (None without density fitting).
    """

    mol: object
    basis: Basis
    grid: Grid
    grids: object
    S: torch.Tensor
    hcore: torch.Tensor
    e_nuc: float
    cderi: torch.Tensor | None
    eri: torch.Tensor | None
    nocc: int
    ao_memory_mb: float = 1024.0
    auxbasis: str | None = None
    _ao: dict = dataclasses.field(default_factory=dict, repr=False)
    _tril: tuple | None = dataclasses.field(default=None, repr=False)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_mol(
        cls,
        mol,
        grid_level: int = 3,
        grids=None,
        coulomb: str = "df",
        auxbasis: str = DEFAULT_AUXBASIS,
        device: torch.device | str = "cpu",
        ao_memory_mb: float = 1024.0,
    ) -> MolContext:
        """Builds the context of a closed-shell molecule.

        Args:
            mol: a built ``pyscf.gto.Mole`` with an even number of electrons.
            grid_level: PySCF grid level (ignored when ``grids`` is given).
            grids: an existing PySCF ``Grids`` to reuse (e.g. ``mf.grids``), built if needed.
            coulomb: how J is built: 'df' (density fitting with ``auxbasis``, PySCF's
                Cholesky-decomposed 3-index tensor), 'exact' (4-index integrals, memory
                nao^4 x 8 bytes: tiny molecules only) or 'none' (grid work only, e.g. for a
                PySCF ``NumInt``; ``get_j`` then raises).
            auxbasis: auxiliary basis for J.
            device: torch device of every tensor.
            ao_memory_mb: materialise the AO array (and its first derivatives) when it needs at
                most this many MiB; otherwise use the fused, screened ops.

        Raises:
            ValueError: an open shell or an odd electron count (names the molecule and the fix).
        """
        from pyscf import df, gto
        from pyscf.dft import gen_grid

        if not isinstance(mol, gto.Mole) or mol._atm is None or len(mol._atm) == 0:
            raise ValueError("dixc: MolContext.from_mol needs a built pyscf.gto.Mole")
        name = _mol_name(mol)
        if coulomb not in ("df", "exact", "none"):
            raise ValueError(f"dixc: coulomb must be 'df', 'exact' or 'none', got {coulomb!r}")
        if mol.nelectron % 2 or mol.spin != 0:
            raise ValueError(
                f"dixc: {name} has {mol.nelectron} electrons (spin {mol.spin}); dixc's Kohn-Sham "
                "engine is closed-shell restricted. Use a closed-shell molecule (set mol.charge "
                "so that the electron count is even, mol.spin = 0)."
            )
        if grids is None:
            grids = gen_grid.Grids(mol)
            grids.level = grid_level
        if grids.coords is None:
            grids.build()
        dev = torch.device(device)
        t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float64).to(dev)  # noqa: E731
        S = t(mol.intor_symmetric("int1e_ovlp"))
        hcore = t(mol.intor_symmetric("int1e_kin") + mol.intor_symmetric("int1e_nuc"))
        if mol.has_ecp():
            hcore = hcore + t(mol.intor_symmetric("ECPscalar"))
        cderi = eri = None
        if coulomb == "df":
            cderi = t(df.incore.cholesky_eri(mol, auxbasis=auxbasis, aosym="s2ij"))
        elif coulomb == "exact":
            eri = t(mol.intor("int2e", aosym="s1")).reshape((mol.nao,) * 4)
        return cls(
            mol=mol,
            basis=pack_basis(mol).to(dev),
            grid=from_pyscf(grids).to(dev),
            grids=grids,
            S=S,
            hcore=hcore,
            e_nuc=float(mol.energy_nuc()),
            cderi=cderi,
            eri=eri,
            nocc=mol.nelectron // 2,
            ao_memory_mb=ao_memory_mb,
            auxbasis=auxbasis if coulomb == "df" else None,
        )

    # ---- properties ---------------------------------------------------------------------------
    @property
    def nao(self) -> int:
        return int(self.S.shape[0])

    @property
    def device(self) -> torch.device:
        return self.S.device

    @property
    def name(self) -> str:
        return _mol_name(self.mol)

    # ---- Coulomb ------------------------------------------------------------------------------
    def get_j(self, dm: torch.Tensor) -> torch.Tensor:
        """Coulomb matrix J[D]_mu nu = sum_la si (mu nu|la si) D_la si.

        Args:
            dm: ``((B,) nao, nao)``; only its symmetric part contributes.

        Returns:
            ``((B,) nao, nao)``, symmetric. Differentiable (linear in ``dm``).
        """
        if self.eri is not None:
            return torch.einsum("ijkl,...kl->...ij", self.eri, dm)
        if self.cderi is None:
            raise RuntimeError(f"dixc: the context of {self.name} was made with coulomb='none'")
        if self._tril is None:
            self._tril = _tril_index(self.nao, self.device)
        r, c = self._tril
        # rho_P = sum_{mu >= nu} L_P,mu nu (D_mu nu + D_nu mu) (1 - delta_mu nu / 2)
        dsym = dm + dm.transpose(-1, -2)
        dtril = dsym[..., r, c] * torch.where(r == c, 0.5, 1.0).to(dm.dtype)
        rho_p = dtril @ self.cderi.T  # (..., naux)
        jtril = rho_p @ self.cderi  # (..., npair)
        out = dm.new_zeros(dm.shape)
        out[..., r, c] = jtril
        out[..., c, r] = jtril
        return out

    # ---- grid work ----------------------------------------------------------------------------
    def _dense_ao(self, deriv: int) -> torch.Tensor | None:
        ncomp = (1, 4, 10)[deriv]
        need_mb = ncomp * self.nao * self.grid.ngrid * 8 / 2**20
        if need_mb > self.ao_memory_mb:
            return None
        for d in range(deriv, 3):  # a higher-derivative array also serves lower requests
            if d in self._ao:
                return self._ao[d][:ncomp]
        ao = ops.eval_ao(self.basis, self.grid.coords, deriv)
        self._ao[deriv] = ao
        return ao

    def eval_rho(self, dm: torch.Tensor, xctype: str) -> torch.Tensor:
        """Density features ``((B,) nfeat, ngrid)`` of ``dm`` ``((B,) nao, nao)`` on the grid."""
        ao = self._dense_ao(0 if xctype.upper() == "LDA" else 1)
        if ao is not None:
            return ops.eval_rho(ao, dm, xctype)
        return ops.eval_rho_fused(self.basis, self.grid.coords, dm, xctype)

    def contract_vxc(self, wv: torch.Tensor, xctype: str) -> torch.Tensor:
        """Potential matrix ``((B,) nao, nao)`` of per-point weights ``((B,) nfeat, ngrid)``."""
        ao = self._dense_ao(0 if xctype.upper() == "LDA" else 1)
        if ao is not None:
            return ops.contract_vxc(ao, wv, xctype)
        return ops.contract_vxc_fused(self.basis, self.grid.coords, wv, xctype)

    # ---- helpers ------------------------------------------------------------------------------
    def init_guess(self, key: str = "minao") -> torch.Tensor:
        """PySCF's initial density matrix (``minao``, ``atom``, ``huckel``, ``1e``)."""
        from pyscf import scf

        dm = scf.hf.RHF(self.mol).get_init_guess(self.mol, key)
        return torch.as_tensor(dm, dtype=torch.float64, device=self.device)

    def orthogonalizer(self, lindep: float = 1e-8) -> torch.Tensor:
        """X ``(nao, nmo)`` with X^T S X = 1 (canonical orthogonalisation; drops S eigenvalues
        below ``lindep``)."""
        e, v = torch.linalg.eigh(self.S)
        keep = e > lindep
        return v[:, keep] / torch.sqrt(e[keep])

    def dipole(self, dm: torch.Tensor) -> torch.Tensor:
        """Dipole moment ``(3,)`` in Debye of the density matrix (nuclei at their charges)."""
        from pyscf.data import nist

        mol = self.mol
        with mol.with_common_orig((0, 0, 0)):
            r = torch.as_tensor(mol.intor_symmetric("int1e_r"), dtype=dm.dtype, device=dm.device)
        el = torch.einsum("xij,ji->x", r, dm)
        charges = torch.as_tensor(mol.atom_charges(), dtype=dm.dtype, device=dm.device)
        nuc = charges @ torch.as_tensor(mol.atom_coords(), dtype=dm.dtype, device=dm.device)
        return (nuc - el) * nist.AU2DEBYE


def _mol_name(mol) -> str:
    name = getattr(mol, "dixc_name", None)
    if name:
        return str(name)
    syms = [mol.atom_pure_symbol(i) for i in range(mol.natm)]
    counts: dict[str, int] = {}
    for s in syms:
        counts[s] = counts.get(s, 0) + 1
    return "molecule " + "".join(f"{s}{n if n > 1 else ''}" for s, n in counts.items())
