"""Per-molecule hybrid-DFT reference with first- and second-derivative targets (PySCF RKS).

:func:`compute_reference` is a pure function of (molecule, config): the random rotations and probe
directions come from a generator seeded by ``config.seed`` and the molecule id, so reruns,
resumed runs and any sharding of a data set give the same numbers.

Conventions (closed-shell restricted KS, real orbitals; DESIGN.md section 2):

- D = 2 C_o C_o^T; C(X) = C* expm(kappa), kappa[a, i] = X[a, i], kappa[i, a] = -X[a, i] with
  X of shape (n_vir, n_occ) (virtual rows, occupied columns; oo and vv blocks zero).
- Grassmannian gradient at C: G = 4 (C^T F C)_vo, F = ``mf.get_fock(dm=D)``.
- Orbital-Hessian-vector product at D* (canonical C*):
  H X = 4 [F_vv X - X F_oo + C_v^T R[dD] C_o], dD = 2 (C_v X C_o^T + C_o X^T C_v^T),
  R = ``mf.gen_response(hermi=1)`` (J - (c_x/2) K + f_xc for B3LYP, c_x = 0.2).

Besides the full targets, the functional-independent "core + Coulomb" pieces are stored (suffix
``_hj``) so that training a pure functional never rebuilds J: with F_hj = h + J[D],
G_theta(D_k) = g_hj + 4 (C^T V_xc^theta C)_vo and
H_theta X = 4 [F_hj,vv X - X F_hj,oo] + hv_j + (the V_xc^theta, f_xc^theta terms).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import time
import warnings
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.linalg

from dixc.grid import nuclear_charges
from dixc.sources import InvalidMoleculeError, Molecule

log = logging.getLogger(__name__)

# A converged reference must satisfy |G(D*)|_F <= this (Hartree); looser SCFs are polished.
DEFAULT_GRAD_TOL = 1e-6
RETRY_STRATEGIES = ("level_shift", "damping", "newton")
# SCF iterates used as gradient samples lie this far (|X|_F) from D*: nearer ones carry little
# gradient, farther ones (the first iterates) are far from the region an ML SCF visits.
ITERATE_NORMS = (1e-2, 1.5)


class SCFConvergenceError(RuntimeError):
    """The reference SCF did not converge with any strategy of the retry ladder.

    Attributes:
        attempts: one line per strategy tried (strategy, cycles, final |G|, energy).
    """

    def __init__(self, molecule_id: str, attempts: list[str]):
        super().__init__(f"molecule {molecule_id!r}: SCF did not converge ({'; '.join(attempts)})")
        self.attempts = attempts


@dataclasses.dataclass(frozen=True)
class ReferenceConfig:
    """What is computed per molecule (everything that determines the stored numbers).

    Attributes:
        xc: PySCF/libxc functional name of the reference hybrid.
        basis: orbital basis (PySCF name).
        cart: Cartesian instead of spherical d, f, ... functions.
        grid_level: PySCF ``grids.level`` (0-9).
        density_fit: density-fitted J/K (``mf.density_fit()``); changes the reference.
        auxbasis: auxiliary basis for density fitting (None: PySCF's default for ``basis``).
        conv_tol: SCF energy threshold (Hartree).
        conv_tol_grad: SCF orbital-gradient threshold in PySCF's convention (|G|/2).
        max_cycle: SCF iteration limit per strategy.
        grad_tol: a converged reference must have |G(D*)|_F below this, else it is polished by
            second-order SCF and failed if that does not help.
        retry: strategies tried in order after the default DIIS run fails: ``level_shift``
            (0.3 Eh), ``damping`` (0.5 with delayed DIIS), ``newton`` (second-order, from the
            last orbitals).
        k_grad: number K_g of non-stationary points with gradient targets.
        grad_norms: Frobenius norms |X| of the random rotations, cycled over the random samples.
        grad_scf_iterates: how many of the K_g points are iterates of the reference SCF (fewer
            when the SCF took too few cycles; the rest are random rotations).
        k_hess: number K_h of random unit probes v_j (Gaussian) with H v_j targets at D*.
        n_tddft: lowest singlet excitations (TDA and full TDDFT) to compute; 0 for none.
        seed: global seed; each molecule draws from SeedSequence([seed, crc32(id)]).
        max_memory: PySCF ``max_memory`` in MB.
        ecp: effective core potentials. None (default): the basis's own where PySCF has them
            (def2-* bases: Rb to Rn; lanl2dz, ...), all electrons elsewhere; a PySCF ECP name:
            that set, for the elements it covers; ``"none"``: all electrons everywhere.
            Left out of ``to_dict`` (and so of the config hash) when None.
    """

    xc: str = "B3LYP"
    basis: str = "def2-svp"
    cart: bool = False
    grid_level: int = 3
    density_fit: bool = False
    auxbasis: str | None = None
    conv_tol: float = 1e-11
    conv_tol_grad: float = 1e-7
    max_cycle: int = 100
    grad_tol: float = DEFAULT_GRAD_TOL
    retry: tuple[str, ...] = RETRY_STRATEGIES
    k_grad: int = 4
    grad_norms: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2)
    grad_scf_iterates: int = 1
    k_hess: int = 8
    n_tddft: int = 0
    seed: int = 0
    max_memory: int = 4000
    ecp: str | None = None

    def __post_init__(self):
        for s in self.retry:
            if s not in RETRY_STRATEGIES:
                raise ValueError(f"dixc: unknown SCF retry strategy {s!r}; {RETRY_STRATEGIES}")
        if self.k_grad < 0 or self.k_hess < 0 or self.n_tddft < 0 or self.grad_scf_iterates < 0:
            raise ValueError("dixc: k_grad, k_hess, n_tddft, grad_scf_iterates must be >= 0")
        if self.k_grad > self.grad_scf_iterates and not self.grad_norms:
            raise ValueError("dixc: random gradient samples need at least one grad_norms entry")
        if any(n <= 0 for n in self.grad_norms):
            raise ValueError("dixc: grad_norms must be positive")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["retry"] = list(self.retry)
        d["grad_norms"] = list(self.grad_norms)
        if d["ecp"] is None:  # the default: data sets made before the option keep their hash
            del d["ecp"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReferenceConfig:
        d = dict(d)
        for k in ("retry", "grad_norms"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


@dataclasses.dataclass
class ReferenceResult:
    """One molecule's reference data.

    Attributes:
        arrays: dataset path (``"scf/dm"``) -> numpy array; layout in ``docs/generate.md``.
        attrs: scalar metadata (ids, sizes, SCF strategy and cycle counts).
        timings: wall seconds per stage: ``scf``, ``grad``, ``hess``, ``tddft``, ``total``, and
            the process CPU seconds of each as ``cpu_<stage>``.
    """

    arrays: dict[str, np.ndarray]
    attrs: dict[str, Any]
    timings: dict[str, float]


def molecule_seed(molecule_id: str, seed: int) -> np.random.SeedSequence:
    """The per-molecule seed sequence (independent of order, sharding and workers)."""
    return np.random.SeedSequence([int(seed), zlib.crc32(molecule_id.encode())])


def ecp_assignment(symbols: Sequence[str], config: ReferenceConfig) -> dict[str, str]:
    """Which elements get an effective core potential, and which: ``{symbol: ECP name}``.

    ``config.ecp`` None takes the basis's own ECPs (def2-svp puts 28 core electrons of iodine into
    its ECP), a name takes that set's, ``"none"`` none. Elements the set has no ECP for (every
    element of an all-electron basis) are left out: all their electrons are computed.
    """
    from pyscf import gto

    name = config.basis if config.ecp is None else config.ecp
    if name.strip().lower() == "none":
        return {}
    out = {}
    for sym in sorted(set(symbols)):
        if (name, sym) not in _ECP_HAS:
            with _quiet():
                try:
                    _ECP_HAS[name, sym] = bool(gto.basis.load_ecp(name, sym))
                except (KeyError, RuntimeError, ValueError, gto.basis.BasisNotFoundError):
                    _ECP_HAS[name, sym] = False
        if _ECP_HAS[name, sym]:
            out[sym] = name
    return out


_ECP_HAS: dict[tuple[str, str], bool] = {}


def _quiet():
    """Silences PySCF's prints and basis-set-exchange hints while a basis name is looked up."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return stack


def check_basis_names(config: ReferenceConfig) -> None:
    """Checks that PySCF knows ``config.basis`` and ``config.ecp`` (before any work).

    Raises:
        ValueError: an unknown basis or ECP name (the message names it and the fix).
    """
    from pyscf import gto

    with _quiet():
        try:
            gto.basis.load(config.basis, "H")
        except gto.basis.BasisNotFoundError as err:
            if "Unknown basis" in str(err):
                raise ValueError(
                    f"dixc: PySCF does not know the basis {config.basis!r}; use a PySCF basis "
                    "name such as def2-svp, def2-tzvp, cc-pvdz or 6-31g*"
                ) from err
        if config.ecp is not None and config.ecp.strip().lower() != "none":
            try:
                gto.basis.load_ecp(config.ecp, "H")
            except (RuntimeError, KeyError, gto.basis.BasisNotFoundError) as err:
                raise ValueError(
                    f"dixc: PySCF does not know the ECP set {config.ecp!r}; use a PySCF ECP name "
                    "(def2-svp, lanl2dz, ...) or 'none'"
                ) from err


def check_elements(molecule: Molecule, config: ReferenceConfig) -> None:
    """Checks that ``config.basis`` has functions for every element of ``molecule``.

    Raises:
        InvalidMoleculeError: naming the molecule, the elements and the fix.
    """
    from pyscf import gto

    missing = []
    for sym in sorted(set(molecule.symbols)):
        if (config.basis, sym) not in _BASIS_HAS:
            with _quiet():
                try:
                    _BASIS_HAS[config.basis, sym] = bool(gto.basis.load(config.basis, sym))
                except (gto.basis.BasisNotFoundError, KeyError, RuntimeError, ValueError):
                    _BASIS_HAS[config.basis, sym] = False
        if not _BASIS_HAS[config.basis, sym]:
            missing.append(sym)
    if missing:
        raise InvalidMoleculeError(
            molecule.id,
            f"basis {config.basis!r} has no functions for {', '.join(missing)}; choose a basis "
            f"that covers it (def2-svp covers H-Rn), --exclude {' '.join(missing)}, or "
            "--skip-invalid to skip such molecules",
        )


_BASIS_HAS: dict[tuple[str, str], bool] = {}


def build_mole(molecule: Molecule, config: ReferenceConfig):
    """PySCF ``Mole`` (the molecule's charge and spin) of ``molecule`` in ``config.basis``, with
    the ECPs of :func:`ecp_assignment`.

    Raises:
        ValueError: the basis lacks an element (message names molecule and basis).
    """
    from pyscf import gto

    try:
        return gto.M(
            atom=molecule.pyscf_atom(),
            unit="Angstrom",
            basis=config.basis,
            ecp=ecp_assignment(molecule.symbols, config),
            cart=config.cart,
            charge=molecule.charge,
            spin=molecule.spin,
            verbose=0,
            max_memory=config.max_memory,
        )
    except (KeyError, RuntimeError, ValueError) as err:
        raise ValueError(
            f"molecule {molecule.id!r}: cannot build it in basis {config.basis!r}: {err}"
        ) from err


NUMINTS = ("dixc", "pyscf")


def check_xc(xc: str) -> None:
    """Checks that PySCF runs ``xc`` and that its energy is what the targets differentiate.

    Raises:
        ValueError: a name PySCF/libxc does not know, or one with a dispersion correction (a
            density-independent energy: it adds nothing to the gradient and Hessian targets and
            the stored energy components would not hold it); the message names the fix.
    """
    from pyscf.dft import libxc
    from pyscf.scf import dispersion

    try:
        base, nlc, disp = dispersion.parse_dft(xc)
        libxc.parse_xc(base)
    except (KeyError, NotImplementedError, ValueError) as err:
        raise ValueError(
            f"dixc: PySCF cannot run the reference functional {xc!r} ({err}); use a PySCF/libxc "
            "name such as B3LYP, PBE0, CAM-B3LYP, M06-2X or wB97X-V"
        ) from err
    if disp:
        alone = f" ({base.upper()})" if nlc == "" else ""  # '' = the functional's own VV10 term
        raise ValueError(
            f"dixc: the reference functional {xc!r} carries a dispersion correction ({disp}), "
            "which does not depend on the density: it adds nothing to the gradient and Hessian "
            f"targets. Generate with the functional alone{alone} and add the dispersion energy "
            "to energies afterwards if you need it"
        )


def make_rks(mol, config: ReferenceConfig, numint: str = "dixc"):
    """The reference RKS object (not run): functional, grid level, thresholds, density fitting.

    Args:
        mol: PySCF ``Mole``.
        config: the reference settings.
        numint: who does the semilocal grid work (V_xc in the SCF, f_xc in every response):
            ``"dixc"`` (:class:`dixc.pyscf_numint.DixcNumInt`, same numbers to ~1e-12, TDDFT
            1.5-3.4x faster) or ``"pyscf"`` (PySCF's own ``NumInt``).
    """
    from pyscf import dft

    if numint not in NUMINTS:
        raise ValueError(f"dixc: unknown numint {numint!r}; choose one of {NUMINTS}")
    mf = dft.RKS(mol, xc=config.xc)
    if numint == "dixc":
        from dixc.pyscf_numint import DixcNumInt

        mf._numint = DixcNumInt()
    mf.grids.level = config.grid_level
    mf.conv_tol = config.conv_tol
    mf.conv_tol_grad = config.conv_tol_grad
    mf.max_cycle = config.max_cycle
    mf.max_memory = config.max_memory
    mf.verbose = 0
    if config.density_fit:
        mf = mf.density_fit(auxbasis=config.auxbasis)
    return mf


# ---------------------------------------------------------------------------------------------
# Grassmannian geometry


def rotate(mo_coeff: np.ndarray, x: np.ndarray) -> np.ndarray:
    """C expm(kappa(X)) for X of shape (n_vir, n_occ); C (nao, nmo) with occupied columns first."""
    nvir, nocc = x.shape
    nmo = mo_coeff.shape[1]
    assert nvir + nocc == nmo, (x.shape, mo_coeff.shape)
    kappa = np.zeros((nmo, nmo))
    kappa[nocc:, :nocc] = x
    kappa[:nocc, nocc:] = -x.T
    return mo_coeff @ scipy.linalg.expm(kappa)


def log_rotation(
    mo_coeff: np.ndarray, ovlp: np.ndarray, occ_orbitals: np.ndarray, nocc: int
) -> np.ndarray | None:
    """X with D(C expm(kappa(X))) = 2 C1 C1^T (the Grassmann logarithm), or None if undefined.

    Args:
        mo_coeff: (nao, nmo) reference orbitals, occupied first, C^T S C = 1, nmo = nao.
        ovlp: (nao, nao) AO overlap S.
        occ_orbitals: (nao, nocc) orthonormal occupied orbitals C1 of the target density.
        nocc: number of occupied orbitals.

    Returns:
        (n_vir, n_occ) X, or None when a principal angle reaches pi/2 or the basis is incomplete.
    """
    u = mo_coeff.T @ ovlp @ occ_orbitals  # target occupied space in the reference MO basis
    if abs(np.linalg.norm(u) ** 2 - nocc) > 1e-8 * nocc:  # nmo < nao: not representable
        return None
    uo, uv = u[:nocc], u[nocc:]
    if np.linalg.cond(uo) > 1e8:
        return None
    p, t, qt = np.linalg.svd(uv @ np.linalg.inv(uo), full_matrices=False)
    return (p * np.arctan(t)) @ qt


def grassmann_gradient(mo_coeff: np.ndarray, fock: np.ndarray, nocc: int) -> np.ndarray:
    """G = 4 (C^T F C)_vo, shape (n_vir, n_occ) (Hartree per unit rotation)."""
    return 4.0 * (mo_coeff[:, nocc:].T @ fock @ mo_coeff[:, :nocc])


def probe_density(mo_coeff: np.ndarray, x: np.ndarray) -> np.ndarray:
    """dD = 2 (C_v X C_o^T + C_o X^T C_v^T), (..., nao, nao), for X of shape (..., n_vir, n_occ)."""
    nocc = x.shape[-1]
    co, cv = mo_coeff[:, :nocc], mo_coeff[:, nocc:]
    a = 2.0 * np.einsum("ma,...ai,ni->...mn", cv, x, co)
    return a + np.swapaxes(a, -1, -2)


def hessian_vector_products(mf, mo_coeff: np.ndarray, fock: np.ndarray, x: np.ndarray, vresp=None):
    """H X for a stack X (K, n_vir, n_occ) at the density of ``mo_coeff`` (one batched response).

    Exact for the second derivative of t -> E(C expm(t kappa(X))) at a stationary point; keeps the
    full F_oo / F_vv blocks (not orbital-energy differences).

    Args:
        mf: the converged PySCF RKS object.
        mo_coeff: (nao, nmo) orbitals, occupied first.
        fock: (nao, nao) Fock matrix at D(mo_coeff).
        x: (K, n_vir, n_occ) directions.
        vresp: ``mf.gen_response(hermi=1)`` built for these orbitals (built when None).

    Returns:
        (K, n_vir, n_occ) H X (Hartree).
    """
    nocc = x.shape[-1]
    if vresp is None:
        occ = np.zeros(mo_coeff.shape[1])
        occ[:nocc] = 2.0
        vresp = mf.gen_response(mo_coeff=mo_coeff, mo_occ=occ, hermi=1)
    m = mo_coeff.T @ fock @ mo_coeff
    r = np.asarray(vresp(probe_density(mo_coeff, x))).reshape(x.shape[0], *fock.shape)
    resp = np.einsum("ma,kmn,ni->kai", mo_coeff[:, nocc:], r, mo_coeff[:, :nocc])
    return 4.0 * (m[nocc:, nocc:] @ x - x @ m[:nocc, :nocc] + resp)


# ---------------------------------------------------------------------------------------------
# SCF with retry ladder


def _occ_first(mo_energy, mo_coeff, mo_occ):
    order = np.argsort(-np.asarray(mo_occ), kind="stable")
    return mo_energy[order], mo_coeff[:, order], mo_occ[order]


def fix_phase(mo_coeff: np.ndarray) -> np.ndarray:
    """Orbitals with a fixed sign: in each column, the first AO coefficient whose magnitude is
    within 1e-6 (relative) of the column's largest is positive.

    The eigensolver's signs are arbitrary (they can flip between BLAS builds or with the last
    digit of the Fock matrix), and every stored quantity in the MO basis (the rotations X, G, H v)
    follows them; a fixed convention makes the data reproducible. The tolerance settles the ties
    of symmetry-equivalent atoms (equal magnitudes up to round-off) by AO order. Degenerate
    orbitals keep the solver's rotation within their subspace.
    """
    mag = np.abs(mo_coeff)
    idx = np.argmax(mag >= mag.max(axis=0) * (1 - 1e-6), axis=0)  # first such AO
    sign = np.sign(mo_coeff[idx, np.arange(mo_coeff.shape[1])])
    return mo_coeff * np.where(sign == 0, 1.0, sign)


def _grad_norm(mf, mo_coeff, mo_occ) -> float:
    nocc = int(np.count_nonzero(mo_occ > 0))
    dm = mf.make_rdm1(mo_coeff, mo_occ)
    fock = mf.get_fock(dm=dm)
    order = np.argsort(-np.asarray(mo_occ), kind="stable")
    return float(np.linalg.norm(grassmann_gradient(mo_coeff[:, order], fock, nocc)))


def _run_scf(mf, molecule_id: str, config: ReferenceConfig) -> dict[str, Any]:
    """Default DIIS run from PySCF's default guess, then the retry ladder; returns the SCF state.

    Raises:
        SCFConvergenceError: no strategy converged to ``grad_tol``.
    """
    iterates: list[np.ndarray] = []

    def record(env):
        occ = env["mo_occ"]
        iterates.append(np.array(env["mo_coeff"][:, occ > 0]))

    mf.callback = record
    mf.kernel()
    mf.callback = None
    default_cycles = int(mf.cycles)
    default_converged = bool(mf.converged)
    attempts = []
    state = None
    # Accepted when stationary to grad_tol (PySCF's flag also wants the energy change < conv_tol).
    g = _grad_norm(mf, mf.mo_coeff, mf.mo_occ)
    status = "converged" if mf.converged else "not converged"
    attempts.append(f"diis: {status} after {default_cycles} cycles, |G|={g:.1e}")
    if g <= config.grad_tol:
        state = ("diis", mf.mo_coeff, mf.mo_occ)
    last = (mf.mo_coeff, mf.mo_occ)
    # Converged but looser than grad_tol: polish quadratically instead of restarting.
    ladder = ["newton"] if mf.converged else list(config.retry)
    for strategy in ladder if state is None else ():
        m2 = mf.copy()
        m2.callback = None
        if strategy == "level_shift":
            m2.level_shift = 0.3
            m2.max_cycle = 2 * config.max_cycle
            m2.kernel()
        elif strategy == "damping":
            m2.damp = 0.5
            m2.diis_start_cycle = 8
            m2.max_cycle = 2 * config.max_cycle
            m2.kernel()
        else:  # newton: second-order SCF from the best orbitals so far
            m2 = mf.copy().newton()
            m2.conv_tol = config.conv_tol
            m2.conv_tol_grad = config.conv_tol_grad
            m2.max_cycle = config.max_cycle
            m2.verbose = 0
            m2.kernel(last[0], last[1])
        ok = np.all(np.isfinite(m2.mo_coeff))
        g = _grad_norm(mf, m2.mo_coeff, m2.mo_occ) if ok else float("nan")
        status = "converged" if m2.converged else "not converged"
        cycles = int(getattr(m2, "cycles", 0) or 0)
        attempts.append(f"{strategy}: {status} after {cycles} cycles, |G|={g:.1e}")
        if g <= config.grad_tol:
            state = (strategy, m2.mo_coeff, m2.mo_occ)
            break
        if ok:
            last = (m2.mo_coeff, m2.mo_occ)
    if state is None:
        raise SCFConvergenceError(molecule_id, attempts)
    strategy, mo_coeff, mo_occ = state
    if strategy != "diis":
        log.info("%s: SCF converged with %s (%s)", molecule_id, strategy, "; ".join(attempts))
    return {
        "strategy": strategy,
        "mo_coeff": np.asarray(mo_coeff),
        "mo_occ": np.asarray(mo_occ),
        "default_cycles": default_cycles,
        "default_converged": default_converged,
        "iterates": iterates,
        "attempts": attempts,
    }


def _energy_terms(mf, h1e: np.ndarray, dm: np.ndarray) -> tuple[np.ndarray, Any, dict]:
    """(Fock, veff, energies) at dm: e_tot, e_nuc, e_core, e_coulomb, e_xc, e_exx (Hartree).

    e_exx = -(c_x/4) tr(D K) is the exact-exchange part; e_xc the semilocal (libxc) part.
    """
    veff = mf.get_veff(mf.mol, dm)
    e_exx = 0.0 if veff.vk is None else -0.25 * float(np.einsum("ij,ji", dm, veff.vk))
    terms = {
        "e_nuc": float(mf.energy_nuc()),
        "e_core": float(np.einsum("ij,ji", h1e, dm)),
        "e_coulomb": float(veff.ecoul),
        "e_xc": float(veff.exc) - e_exx,
        "e_exx": e_exx,
    }
    terms["e_tot"] = (
        terms["e_nuc"] + terms["e_core"] + terms["e_coulomb"] + terms["e_xc"] + terms["e_exx"]
    )
    return h1e + veff, veff, terms


class _Stopwatch:
    """Wall and process-CPU seconds per named stage (CPU time does not count waiting for cores
    that other processes hold, so it measures the work on a loaded machine)."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._t = (0.0, 0.0)

    def start(self) -> None:
        self._t = (time.perf_counter(), time.process_time())

    def stop(self, name: str) -> None:
        self.wall[name] = time.perf_counter() - self._t[0]
        self.cpu[name] = time.process_time() - self._t[1]


def _pick_iterates(n: int, m: int) -> list[int]:
    """m indices spread evenly over range(n) (centres of m equal bins)."""
    if m <= 0 or n <= 0:
        return []
    m = min(m, n)
    return sorted({int((j + 0.5) * n / m) for j in range(m)})


def compute_reference(
    molecule: Molecule,
    config: ReferenceConfig,
    threads: int | None = None,
    numint: str = "dixc",
) -> ReferenceResult:
    """Runs the reference SCF and computes every stored target for one molecule.

    Args:
        molecule: a validated molecule (see :func:`dixc.sources.validate`).
        config: what to compute.
        threads: OpenMP threads for PySCF and torch (None: leave their settings).
        numint: grid work in dixc's kernels (``"dixc"``) or PySCF's (``"pyscf"``); see
            :func:`make_rks`. Not part of ``config``: the stored numbers agree to ~1e-12.

    Returns:
        Arrays (float64 unless noted; nao = AO count, nmo = MO count, n_occ = N/2,
        n_vir = nmo - n_occ): ``atoms/numbers`` (natm,) int64, ``atoms/coords`` (natm, 3) Bohr;
        ``scf/{e_tot,e_nuc,e_core,e_coulomb,e_xc,e_exx}`` () Hartree, ``scf/dm`` (nao, nao),
        ``scf/mo_coeff`` (nao, nmo), ``scf/mo_energy`` (nmo,) Hartree, ``scf/mo_occ`` (nmo,),
        ``scf/fock`` (nao, nao), ``scf/fock_hj`` (nao, nao) = h + J[D*], ``scf/dipole`` (3,)
        Debye, ``scf/g`` (n_vir, n_occ) the gradient at D* (~0), ``scf/g_hj``;
        ``grad/{x,g,g_hj}`` (K_g, n_vir, n_occ), ``grad/{e_tot,e_hj}`` (K_g,),
        ``grad/kind`` (K_g,) int8 (0 random rotation, 1 SCF iterate);
        ``hess/{v,hv,hv_j}`` (K_h, n_vir, n_occ); ``tddft/{tda,rpa}_{e,f,converged}`` (n,).

    Raises:
        SCFConvergenceError: the SCF did not converge with any strategy.
        ValueError: the basis lacks an element.
    """
    from pyscf import lib

    if threads is not None:
        import torch

        lib.num_threads(threads)
        torch.set_num_threads(threads)
    clock, total = _Stopwatch(), _Stopwatch()
    total.start()
    rng = np.random.default_rng(molecule_seed(molecule.id, config.seed))
    mol = build_mole(molecule, config)
    mf = make_rks(mol, config, numint)
    nocc = mol.nelectron // 2

    # ---- SCF
    clock.start()
    scf = _run_scf(mf, molecule.id, config)
    mo_occ = np.asarray(scf["mo_occ"], dtype=np.float64)
    if int(np.count_nonzero(mo_occ > 0)) != nocc:
        raise SCFConvergenceError(molecule.id, [*scf["attempts"], "wrong occupation"])
    h1e = mf.get_hcore()
    ovlp = mf.get_ovlp()
    dm0 = mf.make_rdm1(scf["mo_coeff"], mo_occ)
    fock0 = mf.get_fock(h1e=h1e, dm=dm0)
    mo_energy, mo_coeff = mf.canonicalize(scf["mo_coeff"], mo_occ, fock0)
    mo_energy, mo_coeff, mo_occ = _occ_first(mo_energy, mo_coeff, mo_occ)
    mo_coeff = fix_phase(mo_coeff)
    dm = mf.make_rdm1(mo_coeff, mo_occ)  # D* (equal to dm0 up to round-off)
    fock, veff, terms = _energy_terms(mf, h1e, dm)
    fock_hj = h1e + veff.vj
    g_star = grassmann_gradient(mo_coeff, fock, nocc)
    dipole = mf.dip_moment(mol, dm, unit="Debye", verbose=0)
    mf.mo_coeff, mf.mo_occ, mf.mo_energy = mo_coeff, mo_occ, mo_energy
    mf.e_tot, mf.converged = terms["e_tot"], True
    clock.stop("scf")
    nmo = mo_coeff.shape[1]
    nvir = nmo - nocc

    # ---- gradient samples at non-stationary points
    clock.start()
    xs, kinds = [], []
    if config.grad_scf_iterates and config.k_grad:
        cands = []
        for c1 in scf["iterates"]:
            x = log_rotation(mo_coeff, ovlp, c1, nocc) if c1.shape[1] == nocc else None
            if x is not None and ITERATE_NORMS[0] <= np.linalg.norm(x) <= ITERATE_NORMS[1]:
                cands.append(x)
        for k in _pick_iterates(len(cands), min(config.grad_scf_iterates, config.k_grad)):
            xs.append(cands[k])
            kinds.append(1)
    n_random = config.k_grad - len(xs)
    for k in range(n_random):
        x = rng.standard_normal((nvir, nocc))
        xs.append(x * (config.grad_norms[k % len(config.grad_norms)] / np.linalg.norm(x)))
        kinds.append(0)
    g_list, ghj_list, e_list, ehj_list = [], [], [], []
    for x in xs:
        c = rotate(mo_coeff, x)
        dmk = mf.make_rdm1(c, mo_occ)
        fk, vk, tk = _energy_terms(mf, h1e, dmk)
        g_list.append(grassmann_gradient(c, fk, nocc))
        ghj_list.append(grassmann_gradient(c, h1e + vk.vj, nocc))
        e_list.append(tk["e_tot"])
        ehj_list.append(tk["e_nuc"] + tk["e_core"] + tk["e_coulomb"])
    clock.stop("grad")

    # ---- Hessian-vector products at D*
    clock.start()
    v = rng.standard_normal((config.k_hess, nvir, nocc))
    if config.k_hess:
        v /= np.linalg.norm(v.reshape(config.k_hess, -1), axis=1)[:, None, None]
        hv = hessian_vector_products(mf, mo_coeff, fock, v)
        vj = np.asarray(mf.get_j(mol, probe_density(mo_coeff, v), hermi=1))
        vj = vj.reshape(config.k_hess, *fock.shape)
        hv_j = 4.0 * np.einsum("ma,kmn,ni->kai", mo_coeff[:, nocc:], vj, mo_coeff[:, :nocc])
    else:
        hv = hv_j = np.zeros((0, nvir, nocc))
    clock.stop("hess")

    # ---- TDDFT (singlets)
    clock.start()
    tddft: dict[str, np.ndarray] = {}
    if config.n_tddft:
        nstates = min(config.n_tddft, nocc * nvir)
        # Davidson from only the nstates lowest Koopmans guesses can converge onto a higher root
        # and miss one of the lowest (water at B3LYP/def2-SVP, nstates=2, found 7.63 / 9.95 eV
        # instead of 7.63 / 9.53 eV in some runs): start from max(2n, n + 4) guesses, as dixc's
        # own solver does (dixc.evaluate.tddft.davidson); the solver still converges n roots.
        koopmans = mf.TDA().get_init_guess(mf, min(nocc * nvir, max(2 * nstates, nstates + 4)))
        x0 = koopmans
        for name, make in (("tda", mf.TDA), ("rpa", mf.TDDFT)):
            td = make()
            td.nstates = nstates
            td.singlet = True
            td.verbose = 0
            td.kernel(x0=x0)
            if name == "tda":
                # Full TDDFT starts from the TDA vectors (X, Y=0) and the remaining guesses:
                # ~1/3 fewer Davidson iterations than from Koopmans guesses alone, same roots.
                trial = [x.ravel() for x, _ in td.xy]
                trial += list(koopmans[len(trial) :])
                x0 = np.array([np.concatenate([x, np.zeros(x.size)]) for x in trial])
            tddft[f"tddft/{name}_e"] = np.asarray(td.e, dtype=np.float64)
            tddft[f"tddft/{name}_f"] = np.asarray(td.oscillator_strength(gauge="length"))
            conv = np.broadcast_to(np.asarray(td.converged, dtype=bool), td.e.shape)
            tddft[f"tddft/{name}_converged"] = np.array(conv)
    clock.stop("tddft")
    total.stop("total")

    arrays: dict[str, np.ndarray] = {
        "atoms/numbers": nuclear_charges(mol),
        "atoms/coords": np.asarray(mol.atom_coords(unit="Bohr"), dtype=np.float64),
        **{f"scf/{k}": np.float64(v_) for k, v_ in terms.items()},
        "scf/dm": dm,
        "scf/mo_coeff": mo_coeff,
        "scf/mo_energy": np.asarray(mo_energy, dtype=np.float64),
        "scf/mo_occ": mo_occ,
        "scf/fock": np.asarray(fock),
        "scf/fock_hj": np.asarray(fock_hj),
        "scf/dipole": np.asarray(dipole, dtype=np.float64),
        "scf/g": g_star,
        "scf/g_hj": grassmann_gradient(mo_coeff, fock_hj, nocc),
        "grad/x": _stack(xs, (nvir, nocc)),
        "grad/g": _stack(g_list, (nvir, nocc)),
        "grad/g_hj": _stack(ghj_list, (nvir, nocc)),
        "grad/e_tot": np.asarray(e_list, dtype=np.float64),
        "grad/e_hj": np.asarray(ehj_list, dtype=np.float64),
        "grad/kind": np.asarray(kinds, dtype=np.int8),
        "hess/v": v,
        "hess/hv": np.asarray(hv),
        "hess/hv_j": np.asarray(hv_j),
        **tddft,
    }
    attrs = {
        "id": molecule.id,
        "source": molecule.source,
        "formula": molecule.formula,
        "natm": molecule.natm,
        "n_heavy": molecule.n_heavy,
        "nelectron": int(mol.nelectron),
        "charge": int(mol.charge),
        "ecp": json.dumps(ecp_assignment(molecule.symbols, config), sort_keys=True),
        "nao": int(mol.nao),
        "nmo": int(nmo),
        "nocc": int(nocc),
        "nvir": int(nvir),
        "scf_strategy": scf["strategy"],
        "scf_cycles": scf["default_cycles"],
        "scf_default_converged": scf["default_converged"],
        "scf_attempts": "; ".join(scf["attempts"]),
        "g_norm": float(np.linalg.norm(g_star)),
        **{k: v_ for k, v_ in molecule.info.items() if k in ("qm9_index", "smiles", "comment")},
    }
    timings = {**clock.wall, **total.wall}
    timings.update({f"cpu_{k}": v for k, v in {**clock.cpu, **total.cpu}.items()})
    return ReferenceResult(arrays=arrays, attrs=attrs, timings=timings)


def _stack(items: Sequence[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    return np.stack(items) if items else np.zeros((0, *shape))
