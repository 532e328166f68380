"""Evaluation of one functional on a reference data set: SCF, metrics, hybrid SCF, TDDFT."""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import os
import time
import traceback
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from dixc.context import MolContext
from dixc.functionals.base import XCFunctional
from dixc.scf import SCFResult, run_scf

log = logging.getLogger("dixc.evaluate")

MEH = 1e3  # Hartree -> mEh


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or not a dixc functional."""


class DataFileError(ValueError):
    """A reference data file is missing, unreadable or not a dixc data set."""


# ---------------------------------------------------------------------------------------------
# Inputs


def _classical_names() -> list[str]:
    from dixc.functionals import available, classical

    out = []
    for name in available():
        from dixc.functionals import _REGISTRY

        obj = _REGISTRY[name]
        mod = getattr(obj, "__module__", "")
        if mod == classical.__name__:
            out.append(name)
    return out


def resolve_checkpoint_path(path: str | os.PathLike) -> str:
    """The functional file of a checkpoint: the file itself, or DIR/best.safetensors, else
    DIR/last.safetensors for a training output directory.

    Raises:
        CheckpointError: nothing usable at ``path`` (message names the path and the fix).
    """
    p = os.fspath(path)
    if os.path.isdir(p):
        for name in ("best.safetensors", "last.safetensors"):
            f = os.path.join(p, name)
            if os.path.isfile(f):
                return f
        raise CheckpointError(
            f"dixc: checkpoint directory {p!r} holds neither best.safetensors nor "
            "last.safetensors; pass a training output directory of `dixc train` (it writes them) "
            "or a functional file directly"
        )
    if not os.path.exists(p):
        raise CheckpointError(
            f"dixc: checkpoint {p!r} does not exist; pass a functional file (*.safetensors "
            "written by `dixc train` or dixc.functionals.save), a training output directory "
            "holding best.safetensors or last.safetensors, or a classical functional's name "
            f"({', '.join(_classical_names())}; `dixc evaluate --functional NAME`)"
        )
    return p


def load_checkpoint(
    checkpoint: str | os.PathLike | XCFunctional, device: torch.device | str = "cpu"
) -> tuple[XCFunctional, dict[str, Any]]:
    """Loads a functional and describes where it came from.

    Args:
        checkpoint: an :class:`XCFunctional`; a functional file or training output directory;
            or ``"functional:NAME"`` / a bare classical name (``"pbe"``) for a classical baseline.
        device: torch device.

    Returns:
        ``(functional, info)`` with info keys ``source``, ``path``, ``architecture``, ``config``,
        ``extra``, ``xctype``, ``is_local``, ``n_params``.

    Raises:
        CheckpointError: missing / corrupted file or unknown name (message names it and the fix).
    """
    from dixc import functionals

    info: dict[str, Any] = {"path": None, "extra": {}}
    if isinstance(checkpoint, torch.nn.Module):
        f = checkpoint
        info["source"] = f"<{type(f).__name__} object>"
    else:
        spec = os.fspath(checkpoint)
        name = spec.removeprefix("functional:")
        if (spec.startswith("functional:") or not os.path.exists(spec)) and (
            name.lower() in functionals.available() and os.sep not in name and "." not in name
        ):
            f = functionals.create(name)
            info["source"] = f"functional:{name.lower()}"
        else:
            path = resolve_checkpoint_path(spec)
            try:
                f = functionals.load(path)
                meta = functionals.read_metadata(path)
            except functionals.FunctionalFileError as err:
                raise CheckpointError(str(err)) from err
            info["source"] = path
            info["path"] = os.path.abspath(path)
            info["extra"] = meta.get("extra", {})
            info["dixc_version"] = meta.get("dixc_version")
            info["torch_version"] = meta.get("torch_version")
            info["sha256"] = meta.get("sha256")
    f = f.to(device=device)
    info["architecture"] = getattr(f, "arch_name", None) or type(f).__name__
    info["config"] = _jsonable(getattr(f, "config", {}))
    info["xctype"] = f.xctype
    info["is_local"] = bool(f.is_local)
    info["n_params"] = int(sum(p.numel() for p in f.parameters()))
    return f, info


def open_dataset(data):
    """A :class:`dixc.data.ReferenceDataset` from paths, with errors that name the file and fix.

    Raises:
        DataFileError: missing, unreadable or foreign file.
    """
    from dixc.data import ReferenceDataset, expand_paths

    if isinstance(data, ReferenceDataset):
        return data
    paths = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    fix = (
        "pass the output of `dixc generate` (a shard .h5 file, a directory of them, a merged "
        "file or an index.json)"
    )
    try:
        files = expand_paths(paths)
    except FileNotFoundError as err:
        raise DataFileError(f"dixc evaluate: {str(err).removeprefix('dixc: ')}; {fix}") from err
    for p in files:
        try:
            import h5py

            with h5py.File(p, "r") as fh:
                if "reference_config" not in fh.attrs:
                    raise DataFileError(
                        f"dixc evaluate: {p!r} is an HDF5 file but not a dixc reference data set "
                        f"(no reference_config attribute); {fix}"
                    )
        except OSError as err:
            raise DataFileError(
                f"dixc evaluate: cannot read data file {p!r} (not HDF5, truncated or corrupted: "
                f"{err}); validate it with `dixc generate --check {p}` and regenerate it with "
                "`dixc generate` (rerunning the same command resumes)"
            ) from err
    try:
        return ReferenceDataset(files)
    except (OSError, KeyError, ValueError) as err:
        raise DataFileError(f"dixc evaluate: cannot open the data set {files}: {err}") from err


def _jsonable(v: Any) -> Any:
    if isinstance(v, torch.dtype):
        return str(v).removeprefix("torch.")
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.generic,)):
        return v.item()
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return repr(v)


# ---------------------------------------------------------------------------------------------
# Result container


@dataclasses.dataclass
class EvaluationResult:
    """Everything measured for one functional on one data set (JSON-serialisable).

    Attributes:
        label: name in tables and plots.
        functional: where it came from (``source``, ``path``), ``architecture``, ``config``,
            ``extra`` (training metadata of the checkpoint), ``xctype``, ``n_params``.
        data: data files, ``reference_config``, molecule counts and the ids evaluated.
        settings: the evaluation knobs used.
        molecules: one dict per evaluated molecule (energies in Hartree, dipoles in Debye,
            excitation energies in Hartree; see ``docs/evaluate.md``).
        failures: ``{id, stage, error_type, reason}`` for every molecule or stage that failed.
        summary: aggregated metrics (mEh, Debye, eV, %), see :func:`summarize`.
        timings: wall seconds per stage (summed over molecules) and in total.
        created: UTC time stamp.
        versions: dixc, torch, PySCF.
    """

    label: str
    functional: dict[str, Any]
    data: dict[str, Any]
    settings: dict[str, Any]
    molecules: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    summary: dict[str, Any]
    timings: dict[str, float]
    created: str = ""
    versions: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvaluationResult:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def save(self, path: str | os.PathLike) -> None:
        """Writes the result as JSON."""
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, indent=1, allow_nan=True)

    @classmethod
    def load(cls, path: str | os.PathLike) -> EvaluationResult:
        with open(path, encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh))


# ---------------------------------------------------------------------------------------------
# Learned SCF with a retry ladder

SCF_LADDER: tuple[tuple[str, dict[str, Any]], ...] = (
    ("diis", {}),
    ("level_shift", {"level_shift": 0.3, "max_cycle_factor": 2}),
    ("damping", {"damping": 0.5, "damp_cycles": 30, "diis_start_cycle": 8, "max_cycle_factor": 2}),
)


def learned_scf(
    ctx: MolContext,
    functional: XCFunctional,
    dm0: torch.Tensor | None = None,
    *,
    init_guess: str = "minao",
    conv_tol: float = 1e-10,
    conv_tol_grad: float = 1e-6,
    max_cycle: int = 100,
) -> tuple[SCFResult, str, list[str], int]:
    """Self-consistent field with the learned functional: DIIS, then level shift, then damping.

    Returns:
        ``(result, strategy, attempts, total_cycles)``; ``result.converged`` is False when every
        strategy failed (the last attempt's result is returned, never silently accepted).
    """
    attempts: list[str] = []
    total = 0
    res = None
    for name, opts in SCF_LADDER:
        o = dict(opts)
        mc = max_cycle * int(o.pop("max_cycle_factor", 1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            try:
                res = run_scf(
                    ctx, functional, dm0, init_guess=init_guess, max_cycle=mc, conv_tol=conv_tol,
                    conv_tol_grad=conv_tol_grad, warn=False, **o,
                )  # fmt: skip
            except FloatingPointError as err:
                attempts.append(f"{name}: {err}")
                continue
        total += res.n_cycles
        dE = abs(float(res.energies[-1] - res.energies[-2])) if len(res.energies) > 1 else math.inf
        attempts.append(
            f"{name}: {'converged' if res.converged else 'not converged'} after {res.n_cycles} "
            f"cycles, |dE|={dE:.1e}, |G|={res.grad_norm:.1e}"
        )
        if res.converged:
            return res, name, attempts, total
    if res is None:
        raise FloatingPointError("; ".join(attempts))
    return res, "failed", attempts, total


# ---------------------------------------------------------------------------------------------
# Per-molecule evaluation


def _molecule_row(rec) -> dict[str, Any]:
    a = rec.attrs
    return {
        "id": rec.id,
        "formula": a.get("formula", ""),
        "natm": int(a.get("natm", 0)),
        "n_heavy": int(a.get("n_heavy", 0)),
        "nelectron": int(a.get("nelectron", 2 * int(a.get("nocc", 0)))),
        "nao": int(a.get("nao", 0)),
        "nocc": int(a.get("nocc", 0)),
        "e_ref": float(rec["scf/e_tot"]),
        "scf_cycles_ref": int(a.get("scf_cycles", -1)),
    }


def _fail(failures: list, mid: str, stage: str, err: BaseException | str) -> None:
    if isinstance(err, BaseException):
        entry = {
            "id": mid,
            "stage": stage,
            "error_type": type(err).__name__,
            "reason": str(err),
            "traceback": "".join(traceback.format_exception(err)),
        }
    else:
        entry = {"id": mid, "stage": stage, "error_type": "SCFNotConverged", "reason": err}
    failures.append(entry)
    log.warning("%s: %s failed: %s", mid, stage, entry["reason"])


def evaluate_molecule(
    rec,
    config: Mapping[str, Any],
    functional: XCFunctional,
    settings: Mapping[str, Any],
    failures: list[dict[str, Any]],
    timings: dict[str, float],
) -> dict[str, Any]:
    """Evaluates one stored molecule (see :func:`evaluate_checkpoint` for the settings)."""
    from dixc.data import record_context, record_mole
    from dixc.evaluate import hybrid as hyb
    from dixc.evaluate import metrics as met
    from dixc.evaluate.tddft import LinearResponse

    row = _molecule_row(rec)
    mid = rec.id
    dev = settings["device"]
    clock = time.perf_counter()
    mol = record_mole(rec, config)
    mf = met.reference_rks(mol, config)
    if settings["grid_level"] is None:
        ctx = record_context(rec, config, coulomb=settings["coulomb"], device=dev, grids=mf.grids)
        grid_ctx = ctx
    else:
        ctx = record_context(rec, config, settings["grid_level"], settings["coulomb"], device=dev)
        grid_ctx = MolContext.from_mol(mol, grids=mf.grids, coulomb="none", device=dev)
    timings["setup"] += time.perf_counter() - clock

    # ---- self-consistent field with the learned functional
    clock = time.perf_counter()
    scf, strategy, attempts, cycles = learned_scf(
        ctx, functional, init_guess=settings["init_guess"], conv_tol=settings["conv_tol"],
        conv_tol_grad=settings["conv_tol_grad"], max_cycle=settings["max_cycle"],
    )  # fmt: skip
    scf_wall = time.perf_counter() - clock
    timings["scf"] += scf_wall
    row["scf"] = {
        "converged": bool(scf.converged),
        "strategy": strategy,
        "cycles": int(scf.n_cycles),
        "total_cycles": int(cycles),
        "wall": scf_wall,
        "grad_norm": float(scf.grad_norm),
        "attempts": attempts,
    }
    if not scf.converged:
        _fail(failures, mid, "scf", "learned SCF did not converge: " + "; ".join(attempts))
        return row
    dm = scf.dm.detach()
    row["e_tot_scf"] = float(scf.energy)
    row["e_tot"] = met.coulomb_consistent_energy(mf, ctx, float(scf.energy), dm)
    row["energy_error"] = row["e_tot"] - row["e_ref"]
    row["homo_lumo_gap"] = float(scf.mo_energy[ctx.nocc] - scf.mo_energy[ctx.nocc - 1])

    # ---- density metrics against D*
    clock = time.perf_counter()
    try:
        m = met.density_metrics(mf, grid_ctx, dm, rec["scf/dm"], rec["scf/dipole"])
        row["metrics"] = m
        row["ref_energy_check"] = m["e_ref_at_ref"] - row["e_ref"]
        if abs(row["ref_energy_check"]) > 1e-6:
            log.warning(
                "%s: E_B3LYP[D*] recomputed differs from the stored e_tot by %.2e Eh: the "
                "reference config does not reproduce the data (PySCF version?)",
                mid, row["ref_energy_check"],
            )  # fmt: skip
    except Exception as err:
        _fail(failures, mid, "metrics", err)
    timings["metrics"] += time.perf_counter() - clock

    # ---- hybrid SCF from the learned density vs default guess vs PBE
    if settings["hybrid"]:
        clock = time.perf_counter()
        try:
            runs = hyb.hybrid_scf_runs(
                mol,
                config,
                dm.cpu().numpy(),
                learned_wall=scf_wall,
                learned_cycles=cycles,
                cache_dir=settings.get("baseline_cache"),
                **(settings.get("hybrid_options") or {}),
            )
            row["hybrid"] = {k: r.to_dict() for k, r in runs.items()}
            for k, r in runs.items():
                if not r.converged:
                    _fail(failures, mid, f"hybrid:{k}", f"B3LYP SCF from the {k} guess did not "
                          f"converge in {r.cycles} cycles")  # fmt: skip
        except Exception as err:
            _fail(failures, mid, "hybrid", err)
        timings["hybrid"] += time.perf_counter() - clock

    # ---- TDDFT with the learned functional
    n_ref = int(rec["tddft/rpa_e"].numel()) if "tddft/rpa_e" in rec else 0
    n_states = n_ref if settings["n_states"] is None else int(settings["n_states"])
    if settings["tddft"] and n_states > 0:
        clock = time.perf_counter()
        try:
            lr = LinearResponse(ctx, functional, scf.mo_coeff)
            td: dict[str, Any] = {"n_states": n_states}
            for method in ("tda", "rpa"):
                r = lr.solve(n_states, method, tol=settings["tddft_tol"])
                entry = {
                    "e": r.e.tolist(),
                    "converged": r.converged.tolist(),
                    "residual": r.residual.tolist(),
                    "n_iter": r.n_iter,
                    "n_hvp": r.n_hvp,
                }
                if f"tddft/{method}_e" in rec:
                    entry["ref"] = rec[f"tddft/{method}_e"].tolist()
                    conv_key = f"tddft/{method}_converged"
                    entry["ref_converged"] = (
                        rec[conv_key].tolist() if conv_key in rec else [True] * len(entry["ref"])
                    )
                td[method] = entry
                if not bool(r.converged.all()):
                    _fail(failures, mid, f"tddft:{method}", f"{int((~r.converged).sum())} "
                          f"{method.upper()} states did not converge")  # fmt: skip
            row["tddft"] = td
        except Exception as err:
            _fail(failures, mid, "tddft", err)
        timings["tddft"] += time.perf_counter() - clock

    # ---- nuclear forces: learned vs the reference functional's, both with the grid response
    if settings.get("forces"):
        clock = time.perf_counter()
        try:
            cache = settings.get("baseline_cache")
            row["forces"] = _forces(rec, mf, config, ctx, functional, scf, cache)
        except Exception as err:
            _fail(failures, mid, "forces", err)
        timings["forces"] = timings.get("forces", 0.0) + time.perf_counter() - clock
    return row


def _forces(
    rec, mf, config, ctx: MolContext, functional: XCFunctional, scf, cache_dir=None
) -> dict[str, Any]:
    """dE/dR of the learned SCF (:func:`dixc.nuclear_grad.scf_gradient`) and of the reference
    (:func:`reference_gradient`), Hartree / Bohr, and their difference's mean / largest absolute
    component."""
    from dixc.nuclear_grad import scf_gradient

    g = scf_gradient(ctx, functional, scf)
    g_ref = reference_gradient(rec, mf, config, cache_dir)
    d = np.abs(g - g_ref)
    return {"gradient": g.tolist(), "ref": g_ref.tolist(), "mae": float(d.mean()),
            "maxae": float(d.max())}  # fmt: skip


def reference_gradient(rec, mf, config: Mapping[str, Any], cache_dir=None) -> np.ndarray:
    """PySCF's analytic gradient ``(natm, 3)`` (Hartree / Bohr) of the reference functional
    ``mf`` (:func:`dixc.evaluate.metrics.reference_rks` of ``config``, the data set's
    ``reference_config``) at the stored orbitals, grid response included; kept per process and,
    with ``cache_dir``, on disk (:func:`dixc.evaluate.hybrid.remembered`, as the baselines)."""
    import hashlib

    from dixc.evaluate import hybrid

    mo = {k: rec[f"scf/{k}"].cpu().numpy() for k in ("mo_energy", "mo_coeff", "mo_occ")}
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(v).tobytes() for v in mo.values()))
    mol = mf.mol
    key = ("forces", *hybrid.molecule_key(mol, config), digest.hexdigest())

    def compute() -> dict[str, Any]:
        grad = mf.nuc_grad_method()
        grad.grid_response = True
        grad.verbose = 0
        return {"gradient": np.asarray(grad.kernel(**mo)).tolist(),
                "atoms": [mol.atom_symbol(i) for i in range(mol.natm)]}  # fmt: skip

    def parse(record: Mapping[str, Any]) -> np.ndarray:
        g = np.asarray(record["gradient"], dtype=np.float64)
        if g.shape != (mol.natm, 3):
            raise ValueError(f"gradient of shape {g.shape}, expected ({mol.natm}, 3)")
        return g

    return hybrid.remembered("forces", key, compute, parse, cache_dir).copy()


# ---------------------------------------------------------------------------------------------
# Aggregation


def _stats(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"n": 0}
    return {
        "n": int(v.size),
        "mean": float(v.mean()),
        "median": float(np.median(v)),
        "std": float(v.std()),
        "min": float(v.min()),
        "max": float(v.max()),
    }


def summarize(molecules: Sequence[Mapping[str, Any]], failures: Sequence[Mapping[str, Any]]):
    """Aggregates per-molecule rows (see ``docs/evaluate.md`` for every key).

    Energies in mEh, dipoles in Debye, excitation energies in eV, savings in %.
    """
    from dixc.evaluate.tddft import HARTREE2EV

    ok = [m for m in molecules if m.get("scf", {}).get("converged")]
    s: dict[str, Any] = {
        "n_molecules": len(molecules),
        "n_scf_converged": len(ok),
        "n_scf_failed": len(molecules) - len(ok),
        "n_failures": len(failures),
        "failed_ids": sorted({f["id"] for f in failures}),
    }
    err = [MEH * m["energy_error"] for m in ok]
    s["energy_mae_mEh"] = float(np.mean(np.abs(err))) if err else math.nan
    s["energy_me_mEh"] = float(np.mean(err)) if err else math.nan
    s["energy_maxae_mEh"] = float(np.max(np.abs(err))) if err else math.nan
    mets = [m["metrics"] for m in ok if "metrics" in m]
    s["n_metrics"] = len(mets)

    def agg(key: str, scale: float = 1.0) -> tuple[float, float, float]:
        v = np.array([scale * x[key] for x in mets])
        if not v.size:
            return math.nan, math.nan, math.nan
        return float(np.abs(v).mean()), float(v.mean()), float(np.abs(v).max())

    s["e_rho_mae_mEh"], s["e_rho_me_mEh"], s["e_rho_maxae_mEh"] = agg("e_rho_error", MEH)
    _, s["density_driven_mean_mEh"], s["density_driven_max_mEh"] = agg("density_driven_error", MEH)
    s["dipole_mae_D"], _, s["dipole_maxae_D"] = agg("dipole_error")
    s["dipole_magnitude_mae_D"], _, _ = agg("dipole_magnitude_error")
    s["l2_rho_mean"], _, s["l2_rho_max"] = agg("l2_rho")
    s["l1_rho_mean"], _, _ = agg("l1_rho")
    s["scf_cycles"] = _stats([m["scf"]["total_cycles"] for m in ok])
    s["scf_wall"] = _stats([m["scf"]["wall"] for m in ok])

    # hybrid SCF: statistics over molecules where every guess ran
    hy = [m["hybrid"] for m in ok if "hybrid" in m]
    if hy:
        guesses = sorted(set.intersection(*(set(h) for h in hy)))
        h: dict[str, Any] = {"n": len(hy), "guesses": guesses}
        for g in guesses:
            h[g] = {
                "cycles": _stats([x[g]["cycles"] for x in hy]),
                "wall": _stats([x[g]["wall"] for x in hy]),
                "guess_wall": _stats([x[g]["guess_wall"] for x in hy]),
                "n_converged": int(sum(bool(x[g]["converged"]) for x in hy)),
            }

        def saving(a: str, b: str, key: str = "cycles") -> float:
            if a not in guesses or b not in guesses:
                return math.nan
            ma, mb = h[a][key]["mean"], h[b][key]["mean"]
            return 100.0 * (1.0 - ma / mb) if mb else math.nan

        h["learned_vs_default_cycles_pct"] = saving("learned", "default")
        h["learned_vs_pbe_cycles_pct"] = saving("learned", "pbe")
        h["pbe_vs_default_cycles_pct"] = saving("pbe", "default")
        h["learned_vs_default_wall_pct"] = saving("learned", "default", "wall")
        h["learned_vs_pbe_wall_pct"] = saving("learned", "pbe", "wall")
        s["hybrid"] = h

    # TDDFT: MAE per state index, over molecules where both the learned and the reference state
    # converged
    td = [m["tddft"] for m in ok if "tddft" in m]
    if td:
        t: dict[str, Any] = {}
        for method in ("rpa", "tda"):
            per: dict[int, list[float]] = {}
            for x in td:
                e = x.get(method)
                if not e or "ref" not in e:
                    continue
                for k, (a, b, ca, cb) in enumerate(
                    zip(e["e"], e["ref"], e["converged"], e["ref_converged"], strict=False)
                ):
                    if ca and cb:
                        per.setdefault(k, []).append(HARTREE2EV * (a - b))
            if not per:
                continue
            ks = sorted(per)
            allv = np.concatenate([per[k] for k in ks])
            t[method] = {
                "mae_eV_per_state": [float(np.abs(per[k]).mean()) for k in ks],
                "me_eV_per_state": [float(np.mean(per[k])) for k in ks],
                "n_per_state": [len(per[k]) for k in ks],
                "mae_eV": float(np.abs(allv).mean()),
                "me_eV": float(allv.mean()),
            }
        s["tddft"] = t

    fo = [m["forces"] for m in ok if "forces" in m]
    if fo:
        s["forces"] = {
            "n": len(fo),
            "mae_mEh_bohr": float(np.mean([MEH * f["mae"] for f in fo])),
            "maxae_mEh_bohr": float(np.max([MEH * f["maxae"] for f in fo])),
        }
    return s


# ---------------------------------------------------------------------------------------------
# Driver


def evaluate_checkpoint(
    checkpoint: str | os.PathLike | XCFunctional,
    data,
    *,
    label: str | None = None,
    max_molecules: int | None = None,
    ids: Sequence[str] | None = None,
    n_states: int | None = None,
    hybrid: bool = True,
    hybrid_options: Mapping[str, Any] | None = None,
    tddft: bool = True,
    forces: bool = False,
    grid_level: int | None = None,
    coulomb: str = "df",
    init_guess: str = "minao",
    conv_tol: float = 1e-10,
    conv_tol_grad: float = 1e-6,
    max_cycle: int = 100,
    tddft_tol: float = 1e-7,
    device: torch.device | str = "cpu",
    progress: bool = True,
    baseline_cache: str | os.PathLike | None = None,
) -> EvaluationResult:
    """Evaluates a functional on every (selected) molecule of a reference data set.

    Per molecule: self-consistent SCF with the functional (DIIS from ``init_guess``, then level
    shift, then damping; failures are recorded and the evaluation continues); total-energy error
    vs the stored B3LYP energy; E_rho, density-driven error, dipole, L2/L1 density errors
    (:mod:`dixc.evaluate.metrics`); B3LYP SCF from the learned density vs PySCF's default guess
    vs a PBE density (:mod:`dixc.evaluate.hybrid`); lowest singlet excitations (TDA and Casida)
    vs the stored B3LYP TDDFT (:mod:`dixc.evaluate.tddft`); optionally nuclear forces vs the
    reference functional's.

    Args:
        checkpoint: functional file, training directory (best/last.safetensors), a functional
            object, or ``"functional:NAME"`` for a classical baseline.
        data: data file(s) / directory / index.json, or a ``ReferenceDataset``.
        label: name in tables (default: derived from the checkpoint).
        max_molecules: evaluate only the first N molecules (sorted by id).
        ids: evaluate only these molecule ids.
        n_states: excitations per molecule (None: as many as stored; 0: none).
        hybrid: run the hybrid-SCF comparison.
        hybrid_options: attributes set on every reference RKS object of the hybrid comparison
            (default: the data set's own thresholds, e.g. ``{"conv_tol_grad": 5e-7}``).
        tddft: run TDDFT.
        forces: compare nuclear forces: the analytic gradient of the learned SCF energy vs the
            reference functional's at the stored orbitals (both with the grid response).
        grid_level: grid of the learned SCF (None: the reference's grid; metrics always use the
            reference grid).
        coulomb: J in the learned SCF: 'df' (default) or 'exact'. Reported energies always use
            the reference's Coulomb treatment (see ``metrics.coulomb_consistent_energy``).
        init_guess: PySCF guess name for the learned SCF.
        conv_tol: learned SCF energy threshold (Hartree).
        conv_tol_grad: learned SCF threshold on |G| = |4 (C^T F C)_vo|.
        max_cycle: learned SCF iterations per strategy.
        tddft_tol: Davidson residual tolerance (Hartree).
        device: torch device of the functional and the grid work.
        progress: tqdm progress bar on stderr.
        baseline_cache: directory caching the B3LYP SCFs from the default and PBE guesses and
            the reference gradients (``forces``), which do not depend on the functional (shared
            by processes and later calls; see :mod:`dixc.evaluate.hybrid`). None: computed once
            per process.

    Returns:
        :class:`EvaluationResult`.

    Raises:
        CheckpointError, DataFileError: unusable inputs (messages name the file and the fix).
        ValueError: a device dixc cannot compute on (``dixc.ops.check_device``).
    """
    from tqdm.auto import tqdm

    import dixc
    from dixc.ops import check_device

    check_device(device)
    functional, finfo = load_checkpoint(checkpoint, device)
    ds = open_dataset(data)
    config = ds.config or {}
    selected = list(ds.ids)
    if ids is not None:
        missing = [i for i in ids if i not in set(selected)]
        if missing:
            raise DataFileError(
                f"dixc evaluate: molecule id(s) {missing} are not in the data set "
                f"({len(selected)} molecules: {', '.join(selected[:5])}...)"
            )
        selected = [i for i in selected if i in set(ids)]
    if max_molecules is not None:
        selected = selected[: max(0, int(max_molecules))]
    if label is None:
        label = _default_label(finfo)
    settings = {
        "max_molecules": max_molecules,
        "n_states": n_states,
        "hybrid": bool(hybrid),
        "hybrid_options": dict(hybrid_options or {}),
        "tddft": bool(tddft),
        "forces": bool(forces),
        "grid_level": grid_level,
        "reference_grid_level": config.get("grid_level"),
        "coulomb": coulomb,
        "init_guess": init_guess,
        "conv_tol": conv_tol,
        "conv_tol_grad": conv_tol_grad,
        "max_cycle": max_cycle,
        "tddft_tol": tddft_tol,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "baseline_cache": None if baseline_cache is None else os.fspath(baseline_cache),
    }
    timings = {"setup": 0.0, "scf": 0.0, "metrics": 0.0, "hybrid": 0.0, "tddft": 0.0,
               "forces": 0.0}  # fmt: skip
    failures: list[dict[str, Any]] = []
    molecules: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    log.info("evaluating %s on %d molecules of %s", label, len(selected), ds.files)
    bar = tqdm(selected, desc=f"evaluate {label}", disable=not progress, unit="mol")
    for mid in bar:
        bar.set_postfix_str(mid)
        rec = ds[mid]
        try:
            row = evaluate_molecule(rec, config, functional, settings, failures, timings)
        except Exception as err:
            row = _molecule_row(rec)
            row["scf"] = {
                "converged": False,
                "strategy": "error",
                "cycles": 0,
                "total_cycles": 0,
                "wall": 0.0,
                "grad_norm": math.nan,
                "attempts": [],
            }
            _fail(failures, mid, "setup", err)
        molecules.append(row)
        if "energy_error" in row:
            log.info(
                "%s: E err %+.3f mEh, SCF %d cycles%s",
                mid, MEH * row["energy_error"], row["scf"]["total_cycles"],
                "" if "hybrid" not in row else
                ", B3LYP cycles default/learned/pbe "
                + "/".join(str(row["hybrid"][g]["cycles"]) for g in row["hybrid"]),
            )  # fmt: skip
    timings["total"] = time.perf_counter() - t0
    data_info = {
        "files": [os.path.abspath(f) for f in ds.files],
        "reference_config": config,
        "n_available": len(ds),
        "n_selected": len(selected),
        "n_failed_in_data": len(ds.failed),
        "ids": selected,
    }
    import pyscf

    return EvaluationResult(
        label=label,
        functional=finfo,
        data=data_info,
        settings=settings,
        molecules=molecules,
        failures=failures,
        summary=summarize(molecules, failures),
        timings=timings,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        versions={"dixc": dixc.__version__, "torch": torch.__version__, "pyscf": pyscf.__version__},
    )


def _default_label(info: Mapping[str, Any]) -> str:
    src = str(info.get("source", "functional"))
    if src.startswith("functional:"):
        return src.removeprefix("functional:")
    if info.get("path"):
        p = info["path"]
        base = os.path.basename(p)
        if base in ("best.safetensors", "last.safetensors"):
            return os.path.basename(os.path.dirname(p)) or base
        return os.path.splitext(base)[0]
    return str(info.get("architecture", "functional"))
