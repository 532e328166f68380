"""Hybrid (B3LYP) SCF started from different initial densities: iterations and wall time.

The reference SCF (PySCF, the data set's functional, basis, grid, thresholds) is run from
    * ``default``: PySCF's default initial guess (``minao``), as when the data were generated;
    * ``learned``: the self-consistent density of the learned functional, D_theta;
    * ``pbe``: a converged plain PBE density (PySCF, same basis and grid): the fair baseline, a
      cheap semilocal SCF that anyone could run first.
Each run uses a fresh RKS object with its grid built before the clock starts, so every run pays
the same integral set-up; the cost of producing the guess itself (learned or PBE SCF) is reported
separately.

The 'default' and 'pbe' starts do not depend on the functional evaluated: they run once per
process, and with ``cache_dir`` once per directory (JSON per molecule and settings, written
atomically; concurrent processes wait for the one computing a run instead of repeating it). A
cached run keeps the wall time of the process that measured it.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from dixc.evaluate.metrics import _np, reference_rks
from dixc.fileio import atomic_path

log = logging.getLogger("dixc.evaluate")


@dataclasses.dataclass
class HybridRun:
    """One reference SCF run.

    Attributes:
        guess: 'default', 'learned', 'pbe' or 'reference' (D*, a consistency check).
        cycles: PySCF SCF iterations (``mf.cycles``: Fock builds after the initial one).
        converged: PySCF's convergence flag.
        wall: seconds in ``mf.kernel`` (grid prebuilt).
        e_tot: final energy (Hartree).
        guess_wall: seconds spent producing the guess (PBE SCF; learned SCF filled in by the
            caller); 0 for the default guess.
        guess_cycles: iterations of the SCF that produced the guess (0 if none).
    """

    guess: str
    cycles: int
    converged: bool
    wall: float
    e_tot: float
    guess_wall: float = 0.0
    guess_cycles: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_reference_scf(
    mol, config: Mapping[str, Any], dm0=None, guess: str = "default", **overrides: Any
) -> HybridRun:
    """Runs the reference SCF from ``dm0`` (None: PySCF's default guess).

    Args:
        mol: PySCF ``Mole``.
        config: the data set's ``reference_config``.
        dm0: ``(nao, nao)`` initial density matrix, or None.
        guess: label stored in the result.
        overrides: attributes set on the RKS object (``conv_tol``, ``max_cycle``, ...).

    Returns:
        :class:`HybridRun`.
    """
    mf = reference_rks(mol, config)
    for k, v in overrides.items():
        setattr(mf, k, v)
    t0 = time.perf_counter()
    e = mf.kernel(dm0=None if dm0 is None else _np(dm0))
    wall = time.perf_counter() - t0
    return HybridRun(guess, int(mf.cycles), bool(mf.converged), wall, float(e))


def pbe_density(
    mol, config: Mapping[str, Any], conv_tol: float = 1e-9
) -> tuple[np.ndarray, int, float, bool]:
    """A converged PySCF PBE density in the reference's basis and grid.

    Returns:
        ``(dm (nao, nao), cycles, wall seconds, converged)``.
    """
    from pyscf import dft

    from dixc.pyscf_numint import DixcNumInt

    mf = dft.RKS(mol, xc="PBE")
    mf._numint = DixcNumInt()  # as the reference's RKS (reference.make_rks)
    mf.grids.level = int(config.get("grid_level", 3))
    mf.max_memory = int(config.get("max_memory", 4000))
    mf.conv_tol = conv_tol
    mf.max_cycle = int(config.get("max_cycle", 100))
    mf.verbose = 0
    if config.get("density_fit"):
        mf = mf.density_fit(auxbasis=config.get("auxbasis"))
    mf.grids.build(with_non0tab=True)
    t0 = time.perf_counter()
    mf.kernel()
    wall = time.perf_counter() - t0
    return np.asarray(mf.make_rdm1()), int(mf.cycles), wall, bool(mf.converged)


def hybrid_scf_runs(
    mol,
    config: Mapping[str, Any],
    dm_learned=None,
    learned_wall: float = 0.0,
    learned_cycles: int = 0,
    guesses: tuple[str, ...] = ("default", "learned", "pbe"),
    cache_dir: str | os.PathLike | None = None,
    **overrides: Any,
) -> dict[str, HybridRun]:
    """Reference SCF from each guess in ``guesses`` ('default', 'learned', 'pbe').

    Args:
        mol: PySCF ``Mole``.
        config: the data set's ``reference_config`` (thresholds as in the data set).
        dm_learned: D_theta ``(nao, nao)`` (needed for 'learned').
        learned_wall: seconds the learned SCF took (reported as the learned guess's cost).
        learned_cycles: iterations of the learned SCF.
        guesses: which starts to run.
        cache_dir: directory of cached 'default' / 'pbe' runs shared between processes and
            sessions (None: cache in this process only).
        overrides: attributes set on every reference RKS object.

    Returns:
        ``{guess: HybridRun}``.
    """
    for g in guesses:
        if g not in ("default", "learned", "pbe"):
            raise ValueError(f"dixc: unknown guess {g!r}; use 'default', 'learned' or 'pbe'")
    if "learned" in guesses and dm_learned is None:
        raise ValueError("dixc: the 'learned' guess needs dm_learned")
    out: dict[str, HybridRun] = {}
    for g in guesses:
        if g == "learned":
            r = run_reference_scf(mol, config, dm_learned, g, **overrides)
            r.guess_wall, r.guess_cycles = float(learned_wall), int(learned_cycles)
            out[g] = r
            continue

        def compute(g=g) -> dict[str, Any]:
            return {
                "run": _baseline_run(mol, config, g, overrides).to_dict(),
                "atoms": [mol.atom_symbol(i) for i in range(mol.natm)],
                "config": dict(config),
                "overrides": dict(overrides),
            }

        key = _baseline_key(mol, config, overrides, g)
        run = remembered(g, key, compute, lambda r: HybridRun(**r["run"]), cache_dir)
        out[g] = dataclasses.replace(run)
    return out


def _baseline_run(mol, config: Mapping[str, Any], guess: str, overrides) -> HybridRun:
    """The 'default' or 'pbe' start, computed."""
    if guess == "default":
        return run_reference_scf(mol, config, None, guess, **overrides)
    dm, cyc, wall, _ = pbe_density(mol, config)
    r = run_reference_scf(mol, config, dm, guess, **overrides)
    r.guess_wall, r.guess_cycles = wall, cyc
    return r


def remembered(name: str, key: tuple, compute, parse, cache_dir=None):
    """``parse(compute())`` for a result that does not depend on the evaluated functional: once
    per process (the last ``_BASELINES_MAX`` kept) and, with ``cache_dir``, once per directory
    (:func:`cached_record`). Returns the kept object itself (copy it before changing it)."""
    if key not in _BASELINES:  # not yet in this process: disk cache, else compute it
        if cache_dir is None:
            value = parse(compute())
        else:
            value = cached_record(cache_dir, name, key, compute, parse)
        if len(_BASELINES) >= _BASELINES_MAX:
            _BASELINES.pop(next(iter(_BASELINES)))
        _BASELINES[key] = value
    return _BASELINES[key]


def cached_record(cache_dir, name: str, key: tuple, compute, parse):
    """``parse(record)`` of the JSON record ``compute()`` makes, kept in ``cache_dir``.

    The file is ``cache_dir/<name>-<hash of key, PySCF version, numint>.json``; it is computed
    under a lock when absent (other processes wait, then read it) and written atomically. A file
    that cannot be read or parsed is reported and recomputed (then overwritten), never trusted.

    Args:
        cache_dir: the cache directory (made if needed).
        name: file name prefix (what is cached).
        key: everything the result depends on (hashed).
        compute: ``() -> dict`` (JSON-serialisable).
        parse: ``dict -> result``; raises KeyError, TypeError or ValueError on a bad record.
    """
    import pyscf

    path = _cache_path(cache_dir, name, key)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released on close; others wait, then read
        if os.path.isfile(path):
            try:
                with open(path) as fh:
                    return parse(json.load(fh))
            except (OSError, ValueError, KeyError, TypeError) as err:
                log.warning("dixc evaluate: ignoring unreadable cache file %s (%s: %s); "
                            "recomputing it", path, type(err).__name__, err)  # fmt: skip
        record = {**compute(), "pyscf": pyscf.__version__, "numint": _NUMINT}
        with atomic_path(path) as tmp, open(tmp, "w") as fh:
            json.dump(record, fh, indent=1, default=str)
        return parse(record)


# Who did the runs' grid work (reference.make_rks): part of the cache key, because the wall
# times of runs made with PySCF's NumInt (cached before 2026-12-06) are not comparable.
_NUMINT = "dixc"


def _cache_path(cache_dir, name: str, key: tuple) -> str:
    """File of one cached record: its name and a hash of its key, the PySCF version and numint."""
    import pyscf

    digest = hashlib.sha256(repr((key, pyscf.__version__, _NUMINT)).encode()).hexdigest()[:24]
    return os.path.join(os.fspath(cache_dir), f"{name}-{digest}.json")


# Results that are the same for every functional compared on a molecule (the 'default' and
# 'pbe' starts, the reference gradient) are computed once per process and reused (the runs' wall
# times are those of that one run); keys start with what the result is.
_BASELINES: dict[tuple, Any] = {}
_BASELINES_MAX = 512


def molecule_key(mol, config: Mapping[str, Any]) -> tuple:
    """What a reference result on a molecule depends on: the geometry (to 1e-10 Bohr), the
    nuclear charges and the data set's ``reference_config``."""
    return (
        np.asarray(mol.atom_coords()).round(10).tobytes(),
        tuple(int(z) for z in mol.atom_charges()),
        json.dumps(dict(config), sort_keys=True, default=str),
    )


def _baseline_key(mol, config: Mapping[str, Any], overrides: Mapping[str, Any], guess: str):
    if guess not in ("default", "pbe"):
        return None
    overrides_key = json.dumps(dict(overrides), sort_keys=True, default=str)
    return (guess, *molecule_key(mol, config), overrides_key)
