"""``dixc generate``: B3LYP reference data with derivative targets, sharded and resumable.

Driver over :mod:`dixc.sources` (which molecules), :mod:`dixc.reference` (what per molecule) and
:mod:`dixc.data` (how it is stored). One run treats one shard ``i/n`` of the selected molecules
(a molecule belongs to shard ``crc32(id) % n``, so shards stay stable when the selection grows)
with ``workers`` processes on this machine, each writing finished molecules as crash-safe part
files; at the end the parts are merged into ``<out>/shard-<i>-of-<n>.h5``. A killed run resumes
where it stopped: molecules already stored (in the shard file or as parts) and recorded
failures are skipped.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import fcntl
import glob
import json
import logging
import multiprocessing
import os
import sys
import time
import traceback
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from dixc import data
from dixc.reference import (
    NUMINTS,
    ReferenceConfig,
    SCFConvergenceError,
    check_basis_names,
    check_elements,
    check_xc,
    compute_reference,
)
from dixc.sources import (
    InvalidMoleculeError,
    Molecule,
    parse_elements,
    qm9_molecules,
    validate,
    xyz_molecules,
)

log = logging.getLogger("dixc.generate")

BOHR_ANGSTROM = 0.52917721092  # PySCF's param.BOHR


@dataclasses.dataclass
class GenerateConfig:
    """One ``dixc generate`` run: which molecules, where, how parallel, and the reference config.

    Attributes:
        out: output directory (shard files ``shard-<i>-of-<n>.h5`` and their part directories).
        source: ``["qm9"]`` or xyz / extxyz files and directories.
        min_heavy, max_heavy, heavy: QM9 heavy-atom selection (``heavy``: ranges ``"1-5,7"``).
        exclude: elements; QM9 molecules containing them are not selected, xyz molecules
            containing them are invalid.
        qm9_index: QM9 index ranges to select (``"1-100,205"``).
        subset: random subset size (after the filters); ``subset_seed`` seeds it.
        limit: keep only the first ``limit`` molecules (after ``subset``).
        shard: (i, n): this run treats molecules with crc32(id) % n == i.
        workers: processes on this machine (1: in this process).
        threads: OpenMP threads per worker (None: usable cores // workers).
        numint: semilocal grid work (SCF V_xc, response f_xc) in ``"dixc"``'s kernels or in
            ``"pyscf"``'s ``NumInt``; the same numbers to ~1e-12 (see ``reference.make_rks``).
        skip_invalid: log and skip invalid molecules instead of stopping.
        retry_failed: recompute molecules recorded as failed in an earlier run.
        progress: tqdm progress bar (stderr).
        reference: what is computed per molecule.
    """

    out: str
    source: list[str] = dataclasses.field(default_factory=lambda: ["qm9"])
    min_heavy: int | None = None
    max_heavy: int | None = None
    heavy: str | None = None
    exclude: list[str] = dataclasses.field(default_factory=list)
    qm9_index: str | None = None
    subset: int | None = None
    subset_seed: int = 0
    limit: int | None = None
    shard: tuple[int, int] = (0, 1)
    workers: int = 1
    threads: int | None = None
    numint: str = "dixc"
    skip_invalid: bool = False
    retry_failed: bool = False
    progress: bool = True
    reference: ReferenceConfig = dataclasses.field(default_factory=ReferenceConfig)

    def __post_init__(self):
        if self.numint not in NUMINTS:
            raise ValueError(f"dixc: unknown numint {self.numint!r}; choose one of {NUMINTS}")
        check_xc(self.reference.xc)
        check_basis_names(self.reference)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["reference"] = self.reference.to_dict()
        d["shard"] = f"{self.shard[0]}/{self.shard[1]}"
        return d


@dataclasses.dataclass
class GenerateSummary:
    """What a run did.

    Attributes:
        shard_path: the shard file written.
        n_selected: molecules of this shard after selection and validation.
        n_skipped_done: already stored or recorded as failed before this run.
        n_done, n_failed, n_errors: computed now: stored, SCF/basis failures, unexpected errors.
        n_invalid: invalid molecules skipped (``skip_invalid``).
        wall: seconds of this run; ``timings``: summed per-stage worker seconds.
    """

    shard_path: str
    n_selected: int = 0
    n_skipped_done: int = 0
    n_done: int = 0
    n_failed: int = 0
    n_errors: int = 0
    n_invalid: int = 0
    wall: float = 0.0
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    bytes_written: int = 0


def parse_shard(spec: str) -> tuple[int, int]:
    """Parses ``"i/n"`` (0 <= i < n), e.g. ``$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``."""
    try:
        i, n = (int(t) for t in spec.split("/"))
    except ValueError:
        raise ValueError(f"dixc: --shard must look like i/n (e.g. 3/16), got {spec!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"dixc: --shard {spec}: need 0 <= i < n")
    return i, n


def in_shard(molecule_id: str, shard: tuple[int, int]) -> bool:
    return zlib.crc32(molecule_id.encode()) % shard[1] == shard[0]


def shard_paths(out: str, shard: tuple[int, int]) -> tuple[str, str]:
    """(shard file, parts directory) of shard ``i/n`` in ``out``."""
    stem = os.path.join(out, f"shard-{shard[0]:05d}-of-{shard[1]:05d}")
    return stem + ".h5", stem + ".parts"


def select_molecules(cfg: GenerateConfig) -> tuple[list[Molecule], list[tuple[str, str]]]:
    """The run's molecules (all shards), validated; plus (id, reason) of skipped invalid ones.

    Raises:
        InvalidMoleculeError: an invalid molecule and not ``skip_invalid``.
    """
    if cfg.source == ["qm9"]:
        mols = qm9_molecules(
            min_heavy=cfg.min_heavy,
            max_heavy=cfg.max_heavy,
            heavy=cfg.heavy,
            exclude=cfg.exclude,
            indices=cfg.qm9_index,
            subset=cfg.subset,
            subset_seed=cfg.subset_seed,
            limit=cfg.limit,
        )
    else:
        if "qm9" in cfg.source:
            raise ValueError("dixc: --source qm9 cannot be combined with xyz paths")
        mols = _read_xyz_sources(cfg)
    return valid_molecules(mols, cfg.reference, cfg.exclude, cfg.skip_invalid)


def valid_molecules(
    mols: Sequence[Molecule],
    reference: ReferenceConfig,
    exclude: str | Sequence[str] | None = None,
    skip_invalid: bool = False,
) -> tuple[list[Molecule], list[tuple[str, str]]]:
    """The molecules that pass ``sources.validate`` and have functions in the basis.

    Returns:
        ``(valid, invalid)``, ``invalid`` as ``(id, reason)`` (only with ``skip_invalid``).

    Raises:
        InvalidMoleculeError: the first invalid molecule, unless ``skip_invalid``.
    """
    excluded = parse_elements(exclude)
    keep, invalid = [], []
    for m in mols:
        try:
            validate(m, excluded)
            check_elements(m, reference)
        except InvalidMoleculeError as err:
            if not skip_invalid:
                raise
            log.warning("skipping invalid input: %s", err)
            invalid.append((m.id, str(err)))
            continue
        keep.append(m)
    return keep, invalid


def _read_xyz_sources(cfg: GenerateConfig) -> list[Molecule]:
    mols = xyz_molecules(cfg.source, skip_unreadable=cfg.skip_invalid)
    if cfg.subset is not None and cfg.subset < len(mols):
        rng = np.random.default_rng(cfg.subset_seed)
        mols = [mols[k] for k in np.sort(rng.choice(len(mols), cfg.subset, replace=False))]
    return mols[: cfg.limit] if cfg.limit is not None else mols


# ---------------------------------------------------------------------------------------------
# Worker side


def _failure_arrays(m: Molecule) -> dict[str, np.ndarray]:
    return {
        "atoms/numbers": m.numbers,
        "atoms/coords": np.asarray(m.coords, dtype=np.float64) / BOHR_ANGSTROM,
    }


def _work(
    m: Molecule,
    reference: dict[str, Any],
    parts_dir: str,
    root_attrs: dict[str, Any],
    threads: int | None,
    numint: str = "dixc",
) -> dict[str, Any]:
    """Computes one molecule and writes its part file; returns a small status dict."""
    ref = ReferenceConfig.from_dict(reference)
    base = {"id": m.id, "source": m.source, "formula": m.formula}
    t0 = time.perf_counter()
    try:
        res = compute_reference(m, ref, threads=threads, numint=numint)
    except (SCFConvergenceError, ValueError) as err:
        kind = "scf" if isinstance(err, SCFConvergenceError) else "input"
        attrs = {**base, "error_type": type(err).__name__, "reason": str(err)}
        path = data.write_part(parts_dir, m.id, root_attrs, _failure_arrays(m), attrs, failed=True)
        return {
            "id": m.id,
            "status": kind,
            "reason": str(err),
            "bytes": os.path.getsize(path),
            "timings": {"total": time.perf_counter() - t0},
        }
    except Exception as err:  # a bug or resource problem: record it, keep the run going
        tb = traceback.format_exc(limit=6)
        attrs = {**base, "error_type": type(err).__name__, "reason": f"{err}\n{tb}"}
        path = data.write_part(parts_dir, m.id, root_attrs, _failure_arrays(m), attrs, failed=True)
        return {
            "id": m.id,
            "status": "error",
            "reason": f"{type(err).__name__}: {err}",
            "bytes": os.path.getsize(path),
            "timings": {"total": time.perf_counter() - t0},
        }
    attrs = {**res.attrs, "seed": int(ref.seed)}
    path = data.write_part(parts_dir, m.id, root_attrs, res.arrays, attrs, res.timings)
    return {"id": m.id, "status": "ok", "bytes": os.path.getsize(path), "timings": res.timings}


def _init_worker(threads: int, log_level: int) -> None:
    logging.basicConfig(level=log_level, format="%(asctime)s %(name)s: %(message)s")
    import torch
    from pyscf import lib

    lib.num_threads(threads)
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# Driver


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def _shard_lock(path: str):
    """Exclusive lock on the shard (two runs of one shard would race on its files)."""
    fh = open(path + ".lock", "w")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(
                f"dixc: another dixc generate is writing {path} (lock {path}.lock held)"
            ) from None
        yield
    finally:
        fh.close()


def _check_config(path: str, want_hash: str) -> None:
    got = data.read_root_attrs(path).get("reference_config_hash")
    if got != want_hash:
        raise ValueError(
            f"dixc: {path} holds data from another reference config (hash {got}, this run "
            f"{want_hash}); choose a new --out directory or remove the old data"
        )


def generate(cfg: GenerateConfig) -> GenerateSummary:
    """Runs (or resumes) reference generation for one shard.

    Returns:
        Counts, wall time and summed per-stage timings of this run.

    Raises:
        InvalidMoleculeError: invalid input and not ``skip_invalid`` (nothing is computed).
        ValueError: the output directory holds data from another reference config.
        RuntimeError: another run holds this shard's lock, or worker processes kept dying.
    """
    t_start = time.perf_counter()
    os.makedirs(cfg.out, exist_ok=True)
    shard_path, parts_dir = shard_paths(cfg.out, cfg.shard)
    summary = GenerateSummary(shard_path=shard_path)
    mols, invalid = select_molecules(cfg)
    summary.n_invalid = len(invalid)
    mols = [m for m in mols if in_shard(m.id, cfg.shard)]
    summary.n_selected = len(mols)
    ref_dict = cfg.reference.to_dict()
    root_attrs = data.file_attrs(ref_dict, cfg.to_dict(), shard=f"{cfg.shard[0]}/{cfg.shard[1]}")
    want_hash = root_attrs["reference_config_hash"]

    with _shard_lock(shard_path):
        os.makedirs(parts_dir, exist_ok=True)
        # Temporary files of writes a kill interrupted (their writers are gone: we hold the lock).
        for tmp in [*glob.glob(os.path.join(glob.escape(parts_dir), "*.tmp")), shard_path + ".tmp"]:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        done_ok, done_failed = data.stored_ids(shard_path)
        if os.path.isfile(shard_path):
            _check_config(shard_path, want_hash)
        for p in data.list_parts(parts_dir):
            _check_config(p, want_hash)
            ok, failed = data.stored_ids(p)
            done_ok |= ok
            done_failed |= failed
        skip = done_ok | (set() if cfg.retry_failed else done_failed)
        todo = [m for m in mols if m.id not in skip]
        summary.n_skipped_done = len(mols) - len(todo)
        if summary.n_skipped_done:
            log.info(
                "resuming %s: %d of %d molecules already done (%d recorded as failed)",
                shard_path,
                summary.n_skipped_done,
                len(mols),
                len(done_failed & {m.id for m in mols}),
            )
        workers = max(1, min(cfg.workers, len(todo))) if todo else 1
        threads = cfg.threads or max(1, _usable_cores() // workers)
        log.info(
            "shard %d/%d: %d molecules to compute with %d worker(s) x %d thread(s) -> %s",
            cfg.shard[0],
            cfg.shard[1],
            len(todo),
            workers,
            threads,
            shard_path,
        )
        if todo:
            _run(todo, cfg, ref_dict, parts_dir, root_attrs, workers, threads, summary)
        n_ok, n_failed = data.consolidate(shard_path, parts_dir, root_attrs)
        log.info("%s: %d molecules stored, %d recorded as failed", shard_path, n_ok, n_failed)
    summary.wall = time.perf_counter() - t_start
    return summary


def _account(summary: GenerateSummary, r: dict[str, Any]) -> None:
    if r["status"] == "ok":
        summary.n_done += 1
        for k, v in r["timings"].items():
            summary.timings[k] = summary.timings.get(k, 0.0) + v
        summary.bytes_written += r["bytes"]
        t = r["timings"]
        log.info(
            "%s done in %.1f s (scf %.1f, grad %.1f, hess %.1f, tddft %.1f), %.0f kB",
            r["id"],
            t["total"],
            t["scf"],
            t["grad"],
            t["hess"],
            t["tddft"],
            r["bytes"] / 1e3,
        )
    elif r["status"] == "error":
        summary.n_errors += 1
        log.error("%s: unexpected error (recorded as failed): %s", r["id"], r["reason"])
    else:
        summary.n_failed += 1
        log.warning("%s: recorded as failed: %s", r["id"], r["reason"])


def _run(
    todo: list[Molecule],
    cfg: GenerateConfig,
    ref_dict: dict[str, Any],
    parts_dir: str,
    root_attrs: dict[str, Any],
    workers: int,
    threads: int,
    summary: GenerateSummary,
) -> None:
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    bar = tqdm(
        total=len(todo),
        unit="mol",
        desc=f"shard {cfg.shard[0]}/{cfg.shard[1]}",
        disable=not cfg.progress,
        dynamic_ncols=True,
        file=sys.stderr,
    )
    with bar, logging_redirect_tqdm():
        if workers == 1:
            for m in todo:
                _account(summary, _work(m, ref_dict, parts_dir, root_attrs, threads, cfg.numint))
                bar.update()
            return
        remaining = {m.id: m for m in todo}
        ctx = multiprocessing.get_context("spawn")  # forking after OpenMP/torch init can hang
        restarts = 0
        while remaining:
            pool = cf.ProcessPoolExecutor(
                workers,
                mp_context=ctx,
                initializer=_init_worker,
                initargs=(threads, logging.getLogger().getEffectiveLevel()),
            )
            try:
                futs = [
                    pool.submit(_work, m, ref_dict, parts_dir, root_attrs, threads, cfg.numint)
                    for m in remaining.values()
                ]
                for fut in cf.as_completed(futs):
                    r = fut.result()
                    remaining.pop(r["id"], None)
                    _account(summary, r)
                    bar.update()
            except cf.process.BrokenProcessPool:
                # A worker died (OOM killer, signal): what it finished is on disk; go again.
                restarts += 1
                finished = set()
                for p in data.list_parts(parts_dir):
                    finished |= set().union(*data.stored_ids(p))
                for mid in list(remaining):
                    if mid in finished:
                        remaining.pop(mid)
                        bar.update()
                if restarts > 3:
                    raise RuntimeError(
                        f"dixc: worker processes died {restarts} times; {len(remaining)} "
                        f"molecules left (resume with the same command)"
                    ) from None
                log.error("a worker process died; restarting the pool (%d left)", len(remaining))
            finally:
                pool.shutdown(wait=True, cancel_futures=True)


def format_summary(s: GenerateSummary) -> str:
    """Human-readable summary: counts, molecules/hour, per-stage time split, bytes/molecule."""
    lines = [
        f"{s.shard_path}: {s.n_done} computed, {s.n_failed} failed, {s.n_errors} errors, "
        f"{s.n_skipped_done} already done, {s.n_invalid} invalid skipped, wall {s.wall:.1f} s"
    ]
    if s.n_done:
        stages = ("scf", "grad", "hess", "tddft")
        n, t = s.n_done, s.timings
        cpu = sum(t.get(f"cpu_{k}", 0.0) for k in stages) or 1.0
        split = ", ".join(f"{k} {100 * t.get(f'cpu_{k}', 0.0) / cpu:.0f}%" for k in stages)
        lines.append(
            f"  {3600 * n / s.wall:.1f} molecules/hour; per molecule {t['total'] / n:.1f} s wall, "
            f"{t.get('cpu_total', 0.0) / n:.1f} s CPU; CPU split {split}; "
            f"{s.bytes_written / n / 1e3:.0f} kB/molecule"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# CLI


def add_arguments(p) -> None:
    """Adds ``dixc generate``'s options (and its merge / index subcommands) to a parser."""
    g = p.add_argument_group("molecules")
    g.add_argument(
        "--source",
        nargs="+",
        default=["qm9"],
        metavar="qm9|PATH",
        help="'qm9' (via qm9pack) or xyz/extxyz files and directories",
    )
    g.add_argument("--min-heavy", type=int, help="QM9: at least this many heavy atoms")
    g.add_argument("--max-heavy", type=int, help="QM9: at most this many heavy atoms")
    g.add_argument("--heavy", help="QM9: heavy-atom count ranges, e.g. 1-5,7")
    g.add_argument(
        "--exclude",
        nargs="*",
        default=[],
        metavar="EL",
        help="elements to exclude, e.g. F (QM9: not selected; xyz: invalid)",
    )
    g.add_argument("--qm9-index", help="QM9 index ranges, e.g. 1-100,205")
    g.add_argument("--subset", type=int, help="random subset of this size (after filters)")
    g.add_argument("--subset-seed", type=int, default=0)
    g.add_argument("--limit", type=int, help="first N molecules (after --subset)")
    g.add_argument(
        "--skip-invalid",
        action="store_true",
        help="log and skip invalid molecules instead of stopping",
    )

    d = ReferenceConfig()
    r = p.add_argument_group("reference")
    r.add_argument("--xc", default=d.xc)
    r.add_argument("--basis", default=d.basis)
    r.add_argument("--cart", action="store_true", help="Cartesian basis functions")
    r.add_argument(
        "--ecp",
        default=None,
        help="effective core potentials: a PySCF ECP name, or 'none' for all electrons "
        "(default: the basis's own where PySCF has them, e.g. def2-* for Rb-Rn)",
    )
    r.add_argument("--grid-level", type=int, default=d.grid_level)
    r.add_argument("--density-fit", action="store_true", help="density-fitted J/K")
    r.add_argument("--auxbasis", default=None)
    r.add_argument("--conv-tol", type=float, default=d.conv_tol)
    r.add_argument("--conv-tol-grad", type=float, default=d.conv_tol_grad)
    r.add_argument("--max-cycle", type=int, default=d.max_cycle)
    r.add_argument(
        "--grad-tol",
        type=float,
        default=d.grad_tol,
        help="required |G(D*)| (Frobenius) of a converged reference",
    )
    r.add_argument(
        "--retry",
        nargs="*",
        default=list(d.retry),
        help="SCF retry ladder after the default DIIS run",
    )
    r.add_argument("--k-grad", type=int, default=d.k_grad, help="gradient samples K_g")
    r.add_argument(
        "--grad-norms",
        type=float,
        nargs="+",
        default=list(d.grad_norms),
        help="|X| of the random rotations (cycled)",
    )
    r.add_argument(
        "--grad-scf-iterates",
        type=int,
        default=d.grad_scf_iterates,
        help="how many of the K_g samples are reference-SCF iterates",
    )
    r.add_argument("--k-hess", type=int, default=d.k_hess, help="Hessian probes K_h")
    r.add_argument(
        "--tddft",
        type=int,
        default=d.n_tddft,
        metavar="N",
        help="lowest N singlet excitations (TDA and TDDFT); 0: none",
    )
    r.add_argument("--seed", type=int, default=d.seed)
    r.add_argument("--max-memory", type=int, default=d.max_memory, help="PySCF max_memory, MB")

    x = p.add_argument_group("run")
    x.add_argument("--out", "-o", default="dixc-data", help="output directory")
    x.add_argument("--shard", default="0/1", help="i/n: this run's shard")
    x.add_argument("--workers", type=int, default=1, help="processes on this machine")
    x.add_argument("--threads", type=int, help="OpenMP threads per worker (cores // workers)")
    x.add_argument(
        "--numint",
        choices=NUMINTS,
        default="dixc",
        help="semilocal grid work (SCF V_xc, TDDFT/Hessian f_xc) in dixc's kernels (default) or "
        "PySCF's NumInt; the same numbers to ~1e-12",
    )
    x.add_argument(
        "--retry-failed", action="store_true", help="recompute molecules recorded as failed"
    )
    x.add_argument("--no-progress", action="store_true", help="no progress bar")
    x.add_argument("--log-level", default="INFO")
    x.add_argument("--summary-json", metavar="FILE", help="write the run summary as JSON")
    x.add_argument(
        "--check", nargs="+", metavar="FILE", help="validate data files (or directories) and exit"
    )
    x.add_argument(
        "--no-deep-check",
        action="store_true",
        help="--check without rebuilding overlaps with PySCF",
    )

    sub = p.add_subparsers(dest="action", metavar="{merge,index}")
    m = sub.add_parser("merge", help="merge shard files into one file")
    m.add_argument("inputs", nargs="+", help="shard files or directories")
    m.add_argument("--output", "-o", required=True, help="merged file")
    m.add_argument("--allow-mixed", action="store_true", help="allow different reference configs")
    ix = sub.add_parser("index", help="write a JSON index of data files")
    ix.add_argument("inputs", nargs="+", help="data files or directories")
    ix.add_argument("--output", "-o", help="index file (default: <first dir>/index.json)")


def config_from_args(a) -> GenerateConfig:
    ref = ReferenceConfig(
        xc=a.xc,
        basis=a.basis,
        cart=a.cart,
        grid_level=a.grid_level,
        density_fit=a.density_fit,
        auxbasis=a.auxbasis,
        conv_tol=a.conv_tol,
        conv_tol_grad=a.conv_tol_grad,
        max_cycle=a.max_cycle,
        grad_tol=a.grad_tol,
        retry=tuple(a.retry),
        k_grad=a.k_grad,
        grad_norms=tuple(a.grad_norms),
        grad_scf_iterates=a.grad_scf_iterates,
        k_hess=a.k_hess,
        n_tddft=a.tddft,
        seed=a.seed,
        max_memory=a.max_memory,
        ecp=a.ecp,
    )
    exclude = sorted(parse_elements(" ".join(a.exclude)))
    return GenerateConfig(
        out=a.out,
        source=list(a.source),
        min_heavy=a.min_heavy,
        max_heavy=a.max_heavy,
        heavy=a.heavy,
        exclude=exclude,
        qm9_index=a.qm9_index,
        subset=a.subset,
        subset_seed=a.subset_seed,
        limit=a.limit,
        shard=parse_shard(a.shard),
        workers=a.workers,
        threads=a.threads,
        numint=a.numint,
        skip_invalid=a.skip_invalid,
        retry_failed=a.retry_failed,
        progress=not a.no_progress,
        reference=ref,
    )


def run_check(paths: Sequence[str], deep: bool = True) -> int:
    """``--check``: prints problems per file; returns 0 when every file is valid."""
    bad = 0
    for p in data.expand_paths(list(paths)):
        probs, counts = data.check_file(p, deep=deep)
        status = "OK" if not probs else f"{len(probs)} problem(s)"
        print(f"{p}: {counts['molecules']} molecules, {counts['failed']} failed records: {status}")
        for line in probs[:50]:
            print(f"  {line}")
        if len(probs) > 50:
            print(f"  ... {len(probs) - 50} more")
        for mid, reason in data.iter_failed(p):
            print(f"  failed {mid}: {reason.splitlines()[0] if reason else ''}")
        bad += bool(probs)
    parts = [q for p in paths if os.path.isdir(p) for q in os.listdir(p) if q.endswith(".parts")]
    for q in parts:
        print(f"note: unmerged part directory {q}: resume that shard's run to merge it")
    return 1 if bad else 0


def main(args) -> int:
    """Entry point of ``dixc generate`` (``args`` from :func:`add_arguments`'s parser)."""
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.action == "merge":
        out = args.output
        n_ok, n_failed = data.merge_files(out, data.expand_paths(args.inputs), args.allow_mixed)
        print(f"{out}: {n_ok} molecules, {n_failed} failed records")
        return 0
    if args.action == "index":
        files = data.expand_paths(args.inputs)
        first = args.inputs[0]
        out = args.output or os.path.join(
            first if os.path.isdir(first) else os.path.dirname(first) or ".", "index.json"
        )
        index = data.build_index(files, out)
        print(
            f"{out}: {index['n_molecules']} molecules in {len(index['files'])} files, "
            f"{index['n_failed']} failed"
        )
        return 0
    if args.check:
        return run_check(args.check, deep=not args.no_deep_check)
    try:
        cfg = config_from_args(args)
        summary = generate(cfg)
    except (InvalidMoleculeError, ValueError, FileNotFoundError, ImportError, RuntimeError) as err:
        print(f"dixc generate: error: {err}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    if args.summary_json:
        with open(args.summary_json, "w", encoding="utf-8") as fh:
            json.dump(dataclasses.asdict(summary), fh, indent=1)
    return 1 if summary.n_errors else 0
