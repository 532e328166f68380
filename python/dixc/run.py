"""``dixc run``: a functional (learned or classical) on your own molecules, no reference needed.

For every molecule of the xyz / extended-xyz inputs: a self-consistent Kohn-Sham calculation with
the functional (DIIS, then level shift, then damping, as ``dixc evaluate``), its total energy,
orbital energies (HOMO, LUMO), dipole moment, optionally the lowest singlet excitations (full
TDDFT or TDA, from the functional's orbital Hessian) with oscillator strengths, and optionally a
hybrid SCF in PySCF started from the learned density next to PySCF's default guess (the cycles a
learned guess saves). Prints a table, writes JSON, and with ``--save`` the orbitals per molecule.

Python API::

    from dixc.run import run_molecule, RunConfig
    from dixc.evaluate import load_checkpoint
    functional, _ = load_checkpoint("runs/di/")          # or "pbe"
    row = run_molecule(molecule, functional, RunConfig(basis="def2-svp", n_states=5))
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from dixc.evaluate.tddft import HARTREE2EV
from dixc.sources import InvalidMoleculeError, Molecule, xyz_molecules

log = logging.getLogger("dixc.run")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """How every molecule is computed.

    Attributes:
        basis: orbital basis (PySCF name).
        ecp: effective core potentials as ``dixc generate --ecp`` (None: the basis's own).
        cart: Cartesian basis functions.
        grid_level: PySCF grid level of the SCF and every quantity computed from it.
        coulomb: ``'df'`` (density-fitted J, def2-universal-jkfit) or ``'exact'``.
        conv_tol: SCF energy threshold (Hartree).
        conv_tol_grad: SCF threshold on |G| = |4 (C^T F C)_vo|_F.
        max_cycle: SCF iterations per strategy.
        n_states: lowest singlet excitations to compute (0: none).
        tda: Tamm-Dancoff instead of full TDDFT (Casida).
        hybrid: a PySCF functional (e.g. ``"B3LYP"``) to run from PySCF's default guess and from
            the learned density, or None.
        device: torch device of the Kohn-Sham engine.
        optimize: first optimise the geometry (geomeTRIC through PySCF, with the functional's
            analytic nuclear gradients including the grid response; local or nonlocal).
        opt_maxsteps: geometry steps at most.
        forces: the analytic nuclear gradient of the SCF energy at the final geometry (the
            functional's XC terms with the grid response, J as in the SCF).
        tddft_forces: the analytic nuclear gradients of the excited states' total energies
            E_SCF + omega_n (PySCF's TDA/TDDFT gradients with the functional as a drop-in, plus
            dixc's grid response; exact J, needs ``n_states`` > 0).
        tddft_grid_response: with ``tddft_forces``, add the grid response (False: PySCF's
            fixed-grid excited-state gradients, local functionals only; files written before it
            existed did that).
    """

    basis: str = "def2-svp"
    ecp: str | None = None
    cart: bool = False
    grid_level: int = 3
    coulomb: str = "df"
    conv_tol: float = 1e-10
    conv_tol_grad: float = 1e-6
    max_cycle: int = 100
    n_states: int = 0
    tda: bool = False
    hybrid: str | None = None
    device: str = "cpu"
    optimize: bool = False
    opt_maxsteps: int = 100
    forces: bool = False
    tddft_forces: bool = False
    tddft_grid_response: bool = True

    def check(self, functional) -> None:
        """Refuses settings that cannot work together (ValueError, naming the fix)."""
        if self.tddft_forces:
            if self.n_states <= 0:
                raise ValueError("--tddft-forces needs --tddft N (the states to differentiate)")
            if self.coulomb != "exact":
                raise ValueError(
                    "--tddft-forces needs --coulomb exact (PySCF has no density-fitted TDDFT "
                    "gradients)"
                )
            if not (self.tddft_grid_response or functional.is_local):
                raise ValueError(
                    f"--tddft-forces of the nonlocal {type(functional).__name__} need the grid "
                    "response (tddft_grid_response=True)"
                )

    def reference_config(self, xc: str = "B3LYP"):
        """The :class:`dixc.reference.ReferenceConfig` of the same basis, ECPs and grid."""
        from dixc.reference import ReferenceConfig

        return ReferenceConfig(
            xc=xc, basis=self.basis, ecp=self.ecp, cart=self.cart, grid_level=self.grid_level
        )


def oscillator_strengths(
    ctx, mo_coeff: torch.Tensor, xy: torch.Tensor, e: torch.Tensor
) -> torch.Tensor:
    """Singlet oscillator strengths f_n = 2/3 omega_n |mu_0n|^2 (length gauge).

    Args:
        ctx: molecule context (its ``mol`` gives the dipole integrals, origin at 0).
        mo_coeff: ``(nao, nmo)`` canonical orbitals of the amplitudes, occupied first.
        xy: ``(n, nvir, nocc)`` X + Y (RPA, (X + Y).(X - Y) = 1) or X (TDA, unit norm), spin-
            adapted: the transition dipole is sqrt(2) sum_ia (X + Y)_ai <a|r|i>.
        e: ``(n,)`` excitation energies (Hartree).

    Returns:
        ``(n,)`` dimensionless oscillator strengths.
    """
    r = torch.as_tensor(ctx.mol.intor_symmetric("int1e_r"), dtype=xy.dtype, device=xy.device)
    nocc = xy.shape[-1]
    co, cv = mo_coeff[:, :nocc], mo_coeff[:, nocc:]
    r_vo = torch.einsum("pa,xpq,qi->xai", cv, r, co)  # <a|r|i>, (3, nvir, nocc)
    mu = math.sqrt(2.0) * torch.einsum("nai,xai->nx", xy, r_vo)
    return 2.0 / 3.0 * e * (mu * mu).sum(-1)


# geomeTRIC configures the root logger from an ini file; this one sends its step log nowhere
# (the steps are recorded through the callback) and the caller's logging is restored afterwards.
_GEOMETRIC_LOG_INI = """[loggers]
keys=root

[handlers]
keys=null

[formatters]
keys=plain

[logger_root]
level=INFO
handlers=null

[handler_null]
class=NullHandler
level=INFO
formatter=plain
args=()

[formatter_plain]
format=%(message)s
"""


def _check_optimizable() -> None:
    try:
        import geometric  # noqa: F401
    except ImportError as err:
        raise ValueError(
            f"dixc: geometry optimisation needs geomeTRIC ({err}); pip install geometric"
        ) from err


def optimize_geometry(
    molecule: Molecule, functional, config: RunConfig = RunConfig()
) -> tuple[Molecule, dict[str, Any]]:
    """Minimises the energy of ``functional`` over the nuclear positions.

    geomeTRIC (through ``pyscf.geomopt``) with PySCF's SCF and analytic nuclear gradients on
    ``functional`` as a drop-in (``dixc.pyscf_plugin``; exact J; the grid moves with the atoms and
    its response is included, so the gradient is the derivative of the energy being minimised).
    Local and nonlocal functionals alike (:mod:`dixc.nuclear_grad`).

    Returns:
        ``(molecule at the last geometry, info)``: info has ``converged`` (geomeTRIC's criteria:
        |dE| < 1e-6 Eh, max gradient < 4.5e-4 Eh/Bohr, max step < 1.8e-3 Angstrom, and their RMS
        counterparts), ``n_steps``, per-step ``energies`` and ``grad_max``, ``coords_angstrom``.

    Raises:
        ValueError: an SCF that does not converge on the way, or no geomeTRIC installed
            (messages name the fix).
    """
    import tempfile

    from dixc import pyscf_plugin
    from dixc.reference import build_mole

    _check_optimizable()
    from pyscf.geomopt.geometric_solver import kernel as geometric_kernel

    mol = build_mole(molecule, config.reference_config())
    mf = pyscf_plugin.RKS(
        mol, functional, device=config.device, conv_tol=config.conv_tol, verbose=0
    )
    mf.grids.level = config.grid_level
    grad = mf.nuc_grad_method()
    grad.grid_response = True
    steps: list[dict[str, float]] = []

    def record(env: dict[str, Any]) -> None:
        g = np.asarray(env["gradients"])
        steps.append({"energy": float(env["energy"]), "grad_max": float(np.abs(g).max())})

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    with tempfile.TemporaryDirectory() as tmp:
        ini = os.path.join(tmp, "log.ini")
        with open(ini, "w", encoding="utf-8") as fh:
            fh.write(_GEOMETRIC_LOG_INI)
        try:
            converged, mol_eq = geometric_kernel(
                grad,
                assert_convergence=True,
                maxsteps=config.opt_maxsteps,
                callback=record,
                logIni=ini,
            )
        except RuntimeError as err:
            raise ValueError(
                f"dixc: {molecule.id}: an SCF did not converge during the geometry optimisation "
                f"(step {len(steps)}: {err}); raise --max-cycle or start from a better geometry"
            ) from err
        finally:
            root.handlers[:] = saved[0]
            root.setLevel(saved[1])
    coords = np.asarray(mol_eq.atom_coords(unit="Angstrom"), dtype=np.float64)
    info = {
        "converged": bool(converged),
        "n_steps": len(steps),
        "energies": [s["energy"] for s in steps],
        "grad_max": [s["grad_max"] for s in steps],
        "coords_angstrom": coords.tolist(),
    }
    return dataclasses.replace(molecule, coords=coords), info


def run_molecule(
    molecule: Molecule, functional, config: RunConfig = RunConfig()
) -> tuple[dict[str, Any], dict[str, np.ndarray] | None]:
    """One molecule: SCF with ``functional``, properties, excitations, hybrid SCF.

    Args:
        molecule: a validated molecule (``dixc.sources``).
        functional: an :class:`dixc.functionals.XCFunctional`.
        config: how to compute it.

    Returns:
        ``(row, arrays)``: ``row`` is JSON-ready (``converged`` False, with ``scf_attempts``, when
        every SCF strategy failed; then no excitations or hybrid runs); ``arrays`` holds
        ``dm`` (the density of the energy), ``mo_coeff``, ``mo_energy``, ``mo_occ`` (the
        canonical orbitals of F[dm]: their density is dm up to the SCF's last step), None when
        the SCF failed.

    Raises:
        ValueError: the basis lacks an element of the molecule (message names both).
    """
    from dixc.context import MolContext
    from dixc.evaluate.core import learned_scf
    from dixc.evaluate.metrics import coulomb_consistent_energy, dipole
    from dixc.reference import build_mole

    t0 = time.perf_counter()
    opt = None
    if config.optimize:
        molecule, opt = optimize_geometry(molecule, functional, config)
    t_scf = time.perf_counter()
    mol = build_mole(molecule, config.reference_config())
    mol.dixc_name = molecule.id
    ctx = MolContext.from_mol(
        mol, grid_level=config.grid_level, coulomb=config.coulomb, device=config.device
    )
    res, strategy, attempts, cycles = learned_scf(
        ctx,
        functional,
        conv_tol=config.conv_tol,
        conv_tol_grad=config.conv_tol_grad,
        max_cycle=config.max_cycle,
    )
    scf_wall = time.perf_counter() - t_scf
    nocc = ctx.nocc
    row: dict[str, Any] = {
        "id": molecule.id,
        "formula": molecule.formula,
        "source": molecule.source,
        "natm": molecule.natm,
        "charge": molecule.charge,
        "nelectron": int(mol.nelectron),
        "nao": int(mol.nao),
        "converged": bool(res.converged),
        "scf_strategy": strategy,
        "scf_cycles": int(cycles),
        "scf_attempts": attempts,
        "grad_norm": float(res.grad_norm),
        "energy_scf": float(res.energy),
    }
    if opt is not None:
        row["optimization"] = opt
        row["symbols"] = list(molecule.symbols)
    if not res.converged:
        row["wall_s"] = time.perf_counter() - t0
        return row, None
    dm = res.dm.detach()
    row["energy"] = row["energy_scf"]
    if config.coulomb == "df":  # at the same density, the Coulomb energy with exact integrals
        from pyscf.scf import hf

        row["energy"] = coulomb_consistent_energy(hf.RHF(mol), ctx, row["energy_scf"], dm)
    mo_e = res.mo_energy.detach().cpu().numpy()
    row["homo_ev"] = float(mo_e[nocc - 1] * HARTREE2EV)
    row["lumo_ev"] = float(mo_e[nocc] * HARTREE2EV) if mo_e.size > nocc else None
    row["gap_ev"] = None if row["lumo_ev"] is None else row["lumo_ev"] - row["homo_ev"]
    mu = dipole(ctx, dm)
    row["dipole_debye"] = [float(v) for v in mu]
    row["dipole_norm_debye"] = float(np.linalg.norm(mu))
    if config.forces:
        from dixc.nuclear_grad import scf_gradient

        g = scf_gradient(ctx, functional, res)
        row["gradient"] = g.tolist()
        row["gradient_max"] = float(np.abs(g).max())
    if config.n_states > 0:
        from dixc.evaluate.tddft import LinearResponse

        method = "tda" if config.tda else "rpa"
        try:
            lr = LinearResponse(ctx, functional, res.mo_coeff)
            ex = lr.solve(config.n_states, method)
        except ValueError as err:  # no gap / unstable ground state: named, the rest is kept
            row["excitations"] = {"method": method, "error": str(err)}
        else:
            f = oscillator_strengths(ctx, ex.mo_coeff.detach(), ex.xy.detach(), ex.e.detach())
            row["excitations"] = {
                "method": method,
                "e_ev": [float(v) for v in ex.e_ev],
                "f": [float(v) for v in f],
                "converged": [bool(v) for v in ex.converged],
            }
            if config.tddft_forces:
                from dixc.nuclear_grad import excited_state_gradients

                g = excited_state_gradients(
                    ctx,
                    functional,
                    lr.mo_coeff,
                    lr.mo_energy,
                    ex.e,
                    ex.xy,
                    method,
                    grid_response=config.tddft_grid_response,
                )
                row["excitations"]["gradient"] = g.tolist()
                row["excitations"]["gradient_max"] = [float(v) for v in np.abs(g).max(axis=(1, 2))]
    if config.hybrid:
        from dixc.evaluate.hybrid import hybrid_scf_runs

        runs = hybrid_scf_runs(
            mol,
            config.reference_config(config.hybrid).to_dict(),
            dm.cpu().numpy(),
            learned_wall=scf_wall,
            learned_cycles=cycles,
            guesses=("default", "learned"),
        )
        d, g = runs["default"], runs["learned"]
        row["hybrid"] = {
            "xc": config.hybrid,
            "default": d.to_dict(),
            "learned": g.to_dict(),
            "saving_pct": 100.0 * (d.cycles - g.cycles) / d.cycles if d.cycles else None,
        }
    row["wall_s"] = time.perf_counter() - t0
    arrays = {
        "mo_coeff": res.mo_coeff.detach().cpu().numpy(),
        "mo_energy": mo_e,
        "mo_occ": res.mo_occ.detach().cpu().numpy(),
        "dm": dm.cpu().numpy(),
    }
    return row, arrays


def save_arrays(directory: str, molecule_id: str, row: dict[str, Any], arrays) -> str:
    """Writes ``DIRECTORY/<id>.npz`` (orbitals, density, energy) atomically, and after a
    geometry optimisation ``DIRECTORY/<id>.xyz`` (the geometry they belong to); returns the
    ``.npz`` path."""
    from dixc.fileio import atomic_path

    path = os.path.join(directory, f"{molecule_id}.npz")
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, energy=np.float64(row["energy"]), **arrays)
    opt = row.get("optimization")
    if opt is not None:
        lines = [str(len(row["symbols"])), f"{molecule_id} optimised with dixc run, E = "
                 f"{row['energy']:.10f} Eh, charge={row['charge']} multiplicity=1"]  # fmt: skip
        lines += [
            f"{s:<2s} {x:16.10f} {y:16.10f} {z:16.10f}"
            for s, (x, y, z) in zip(row["symbols"], opt["coords_angstrom"], strict=True)
        ]
        with atomic_path(path[:-4] + ".xyz") as tmp, open(tmp, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
    return path


def _opt_cell(opt: dict[str, Any] | None) -> str:
    if opt is None:
        return "-"
    return f"{opt['n_steps']}" + ("" if opt["converged"] else " (not converged)")


def problems(row: dict[str, Any]) -> list[str]:
    """What did not work for one molecule (empty when everything asked for converged)."""
    if not row.get("converged"):
        why = row.get("error") or "; ".join(row.get("scf_attempts", []))
        return [f"no converged SCF ({why})"]
    out = []
    opt = row.get("optimization")
    if opt and not opt["converged"]:
        out.append(f"the geometry did not converge in {opt['n_steps']} steps (--opt-maxsteps); "
                   "results are at the last geometry")  # fmt: skip
    ex = row.get("excitations")
    if ex and "error" in ex:
        out.append(f"no excitations: {ex['error']}")
    elif ex and not all(ex["converged"]):
        out.append(f"{ex['converged'].count(False)} excited state(s) not converged (marked *)")
    h = row.get("hybrid")
    for g in ("default", "learned") if h else ():
        if not h[g]["converged"]:
            out.append(f"{h['xc']} SCF from the {g} guess did not converge")
    return out


def _excitations_cell(ex: dict[str, Any] | None) -> str:
    """``omega (f)`` per state; ``*`` marks a state whose Davidson did not converge."""
    if not ex:
        return "-"
    if "error" in ex:
        return "failed (see JSON)"
    return ", ".join(
        f"{e:.3f} ({f:.3f}){'' if ok else '*'}"
        for e, f, ok in zip(ex["e_ev"], ex["f"], ex["converged"], strict=True)
    )


def _hybrid_cell(h: dict[str, Any] | None) -> str:
    if not h:
        return "-"
    return " / ".join(
        f"{h[g]['cycles']}{'' if h[g]['converged'] else ' (not converged)'}"
        for g in ("default", "learned")
    )


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of the molecules' results."""
    n = max((1 if r.get("excitations") else 0 for r in rows), default=0)
    hyb = any("hybrid" in r for r in rows)
    opt = any("optimization" in r for r in rows)
    forces = any("gradient" in r for r in rows)
    ex_forces = any("gradient" in (r.get("excitations") or {}) for r in rows)
    head = ["molecule", "formula", "SCF", "E (Eh)", "HOMO (eV)", "gap (eV)", "dipole (D)"]
    if opt:
        head.insert(2, "geometry steps")
    if forces:
        head.append("max |dE/dR| (Eh/Bohr)")
    if n:
        head.append("excitations eV (f)")
    if ex_forces:
        head.append("excited max |dE/dR| (Eh/Bohr)")
    if hyb:
        xc = next(r["hybrid"]["xc"] for r in rows if "hybrid" in r)
        head.append(f"{xc} cycles default / learned")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if not r.get("converged"):
            cells = [r["id"], r.get("formula", ""), r.get("error", "not converged")]
            cells += ["-"] * (len(head) - 3)
        else:
            cells = [
                r["id"],
                r["formula"],
                *([_opt_cell(r.get("optimization"))] if opt else []),
                f"{r['scf_strategy']} ({r['scf_cycles']})",
                f"{r['energy']:.8f}",
                f"{r['homo_ev']:.3f}",
                "-" if r["gap_ev"] is None else f"{r['gap_ev']:.3f}",
                f"{r['dipole_norm_debye']:.4f}",
            ]
            if forces:
                cells.append(f"{r['gradient_max']:.2e}" if "gradient" in r else "-")
            if n:
                cells.append(_excitations_cell(r.get("excitations")))
            if ex_forces:
                gmax = (r.get("excitations") or {}).get("gradient_max")
                cells.append(", ".join(f"{v:.2e}" for v in gmax) if gmax else "-")
            if hyb:
                cells.append(_hybrid_cell(r.get("hybrid")))
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dixc run",
        description="Run a learned or classical functional on xyz molecules: SCF, energy, "
        "orbital energies, dipole, optional TDDFT and hybrid SCF from the learned density.",
    )
    p.add_argument(
        "functional",
        help="functional file (*.safetensors), training output directory, or a classical "
        "functional name (pbe, blyp, ...)",
    )
    p.add_argument("xyz", nargs="+", help="xyz / extended-xyz files or directories of them")
    d = RunConfig()
    p.add_argument("--basis", default=d.basis)
    p.add_argument("--ecp", default=None, help="ECP set or 'none' (default: the basis's own)")
    p.add_argument("--cart", action="store_true", help="Cartesian basis functions")
    p.add_argument("--grid-level", type=int, default=d.grid_level)
    p.add_argument("--coulomb", choices=("df", "exact"), default=d.coulomb)
    p.add_argument("--conv-tol", type=float, default=d.conv_tol)
    p.add_argument("--conv-tol-grad", type=float, default=d.conv_tol_grad)
    p.add_argument("--max-cycle", type=int, default=d.max_cycle)
    p.add_argument("--tddft", type=int, default=0, metavar="N", help="lowest N singlet states")
    p.add_argument("--tda", action="store_true", help="Tamm-Dancoff instead of full TDDFT")
    p.add_argument(
        "--hybrid",
        default=None,
        metavar="XC",
        help="also run this PySCF functional (e.g. B3LYP) from the default and learned guesses",
    )
    p.add_argument(
        "--opt",
        action="store_true",
        help="first optimise the geometry (geomeTRIC; exact J)",
    )
    p.add_argument("--opt-maxsteps", type=int, default=d.opt_maxsteps)
    p.add_argument(
        "--forces",
        action="store_true",
        help="also the analytic nuclear gradient (Eh/Bohr) of the SCF energy",
    )
    p.add_argument(
        "--tddft-forces",
        action="store_true",
        help="also the nuclear gradients (Eh/Bohr) of the --tddft states' total energies "
        "(grid response included; --coulomb exact)",
    )
    p.add_argument(
        "--json",
        default=None,
        metavar="FILE",
        help="write every result as JSON (rewritten atomically after each molecule)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="skip molecules whose results --json FILE already holds (same functional and "
        "settings; failed ones are computed again)",
    )
    p.add_argument("--save", default=None, metavar="DIR", help="write DIR/<id>.npz orbitals")
    p.add_argument("--skip-invalid", action="store_true", help="skip invalid molecules")
    p.add_argument("--device", default=d.device)
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--log-level", default="WARNING")
    return p


def main(argv: list[str]) -> int:
    """Exit status: 0 everything asked for converged, 1 something did not (each listed on
    stderr by :func:`problems`), 2 unusable input."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    from tqdm import tqdm

    from dixc.evaluate.core import CheckpointError, load_checkpoint
    from dixc.generate import valid_molecules
    from dixc.reference import check_basis_names, check_xc

    config = RunConfig(
        basis=args.basis,
        ecp=args.ecp,
        cart=args.cart,
        grid_level=args.grid_level,
        coulomb=args.coulomb,
        conv_tol=args.conv_tol,
        conv_tol_grad=args.conv_tol_grad,
        max_cycle=args.max_cycle,
        n_states=args.tddft,
        tda=args.tda,
        hybrid=args.hybrid,
        device=args.device,
        optimize=args.opt,
        forces=args.forces,
        tddft_forces=args.tddft_forces,
        opt_maxsteps=args.opt_maxsteps,
    )
    try:
        from dixc.ops import check_device

        check_device(args.device)
        functional, info = load_checkpoint(args.functional, device=args.device)
        config.check(functional)
        check_basis_names(config.reference_config())
        if config.optimize:
            _check_optimizable()
        if config.hybrid:
            check_xc(config.hybrid)
        mols, invalid = valid_molecules(
            xyz_molecules(args.xyz, skip_unreadable=args.skip_invalid),
            config.reference_config(),
            skip_invalid=args.skip_invalid,
        )
        skipped = [{"id": i, "error": why} for i, why in invalid]
    except (CheckpointError, InvalidMoleculeError, ValueError, FileNotFoundError) as err:
        print(f"dixc run: error: {err}", file=sys.stderr)
        return 2
    header = {
        "functional": info["source"],
        "architecture": info["architecture"],
        "functional_sha256": info.get("sha256"),
        "config": dataclasses.asdict(config),
    }
    done: dict[str, dict[str, Any]] = {}
    if args.resume:
        try:
            done = _resumable_rows(args.json, header)
        except ValueError as err:
            print(f"dixc run: error: {err}", file=sys.stderr)
            return 2
    rows: list[dict[str, Any]] = []
    for m in tqdm(mols, desc="dixc run", unit="mol", disable=args.no_progress):
        if m.id in done:
            rows.append(done[m.id])
            continue
        try:
            row, arrays = run_molecule(m, functional, config)
        except (ValueError, FloatingPointError, RuntimeError) as err:
            log.error("%s: %s", m.id, err)
            row, arrays = (
                {"id": m.id, "formula": m.formula, "converged": False, "error": str(err)},
                None,
            )
        if arrays is not None and args.save:
            row["saved"] = save_arrays(args.save, m.id, row, arrays)
        rows.append(row)
        if row.get("converged"):
            log.info("%s: E = %.8f Eh (%s)", m.id, row["energy_scf"], row["scf_strategy"])
        if args.json:  # after every molecule: a killed run loses at most the one in progress
            _write_json(args.json, {**header, "molecules": rows, "skipped": skipped})
    print(f"functional: {info['source']} ({info['architecture']}, {config.basis}, grid "
          f"{config.grid_level})")  # fmt: skip
    print(format_table(rows))
    failed = 0
    for r in rows:
        msgs = problems(r)
        for msg in msgs:
            print(f"dixc run: {r['id']}: {msg}", file=sys.stderr)
        failed += bool(msgs)
    if args.json:
        _write_json(args.json, {**header, "molecules": rows, "skipped": skipped})
    return 1 if failed else 0


def _write_json(path: str, out: dict[str, Any]) -> None:
    from dixc.fileio import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(out, fh, indent=1)


def _resumable_rows(path: str | None, header: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Rows of an earlier ``--json`` file made with the same functional and settings.

    Raises:
        ValueError: no ``--json``, an unreadable file, or another functional / settings.
    """
    if not path:
        raise ValueError("--resume needs --json FILE (the results to continue)")
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            old = json.load(fh)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(
            f"cannot read {path} to resume ({err}); remove it or drop --resume"
        ) from err

    def settings(h: dict[str, Any]) -> dict[str, Any]:  # the device does not change results
        # settings added since a file was written take their defaults (what that run did), but
        # for the excited-state grid response, which files written before it had not
        cfg = {**dataclasses.asdict(RunConfig()), "tddft_grid_response": False,
               **(h.get("config") or {})}  # fmt: skip
        if not cfg["tddft_forces"]:
            cfg.pop("tddft_grid_response")
        return {k: v for k, v in cfg.items() if k != "device"}

    if settings(old) != settings(header):
        raise ValueError(
            f"{path} holds results computed with other settings; write to another --json FILE "
            "or drop --resume"
        )
    same = old.get("functional_sha256") == header["functional_sha256"] and (
        header["functional_sha256"] is not None or old.get("functional") == header["functional"]
    )
    if not same:
        raise ValueError(
            f"{path} holds results of another functional ({old.get('functional')}); write to "
            "another --json FILE or drop --resume"
        )
    return {r["id"]: r for r in old.get("molecules", []) if r.get("converged")}
