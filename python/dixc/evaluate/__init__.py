"""``dixc evaluate``: how good is a learned functional, and what does it buy downstream?

For every molecule of a reference data set (``dixc generate``): a self-consistent SCF with the
functional, then total-energy error vs B3LYP, E_rho (mean-field energy error of the density), the
density-driven error E_B3LYP[D_theta] - E_B3LYP[D*], dipole and L2 density errors; the B3LYP SCF
started from the learned density vs PySCF's default guess vs a PBE density (iterations, wall
time); and the lowest singlet excitations (TDA, full TDDFT) from the functional's orbital Hessian
vs the stored B3LYP TDDFT; optionally (``--forces``) nuclear forces vs the reference functional's.
Results go to a Markdown + JSON report with plots; several checkpoints
go into one comparison table. See ``docs/evaluate.md``.

Python API::

    from dixc.evaluate import evaluate_checkpoint, write_report, comparison_table
    results = [evaluate_checkpoint(p, "data/test", label=l) for p, l in runs]
    results.append(evaluate_checkpoint("functional:pbe", "data/test"))
    write_report(results, "report/")
    print(comparison_table(results))
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from dixc.evaluate.core import (
    CheckpointError,
    DataFileError,
    EvaluationResult,
    evaluate_checkpoint,
    learned_scf,
    load_checkpoint,
    open_dataset,
    resolve_checkpoint_path,
    summarize,
)
from dixc.evaluate.report import comparison_table, load_report, markdown_report, write_report
from dixc.evaluate.tddft import LinearResponse, davidson, excitations

__all__ = [
    "CheckpointError",
    "DataFileError",
    "EvaluationResult",
    "LinearResponse",
    "comparison_table",
    "davidson",
    "evaluate_checkpoint",
    "evaluate_many",
    "excitations",
    "learned_scf",
    "load_checkpoint",
    "load_report",
    "main",
    "markdown_report",
    "open_dataset",
    "resolve_checkpoint_path",
    "summarize",
    "write_report",
]

log = logging.getLogger("dixc.evaluate")


def evaluate_many(
    checkpoints: Sequence, data, labels: Sequence[str] | None = None, **kwargs
) -> list[EvaluationResult]:
    """:func:`evaluate_checkpoint` for each checkpoint on the same data (one comparison).

    Args:
        checkpoints: functional files, training directories, functionals or
            ``"functional:NAME"``.
        data: data files / directory / index.json, or a ``ReferenceDataset``.
        labels: one label per checkpoint (default: derived from each checkpoint).
        kwargs: passed to :func:`evaluate_checkpoint`.
    """
    if labels is not None and len(labels) != len(checkpoints):
        raise ValueError(
            f"dixc evaluate: {len(labels)} labels for {len(checkpoints)} checkpoints; give one "
            "label per checkpoint"
        )
    ds = open_dataset(data)
    try:
        return [
            evaluate_checkpoint(c, ds, label=None if labels is None else labels[i], **kwargs)
            for i, c in enumerate(checkpoints)
        ]
    finally:
        ds.close()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dixc evaluate",
        description="Evaluate learned XC functionals against B3LYP reference data: SCF accuracy, "
        "densities, hybrid-SCF acceleration, TDDFT; Markdown/JSON report with plots.",
        epilog="example: dixc evaluate runs/e_rho/ runs/di_loss/best.safetensors --functional pbe "
        "--data data/test --labels E+rho,DI-Loss --out report/",
    )
    p.add_argument(
        "checkpoints",
        nargs="*",
        metavar="CHECKPOINT",
        help="functional file (*.safetensors) or training output directory (best.safetensors, "
        "else last.safetensors)",
    )
    p.add_argument(
        "--functional",
        action="append",
        default=[],
        metavar="NAME",
        help="add a classical functional (e.g. pbe, b3lyp_semilocal) as a baseline row; repeatable",
    )
    p.add_argument("--data", nargs="+", required=True, help="reference data: .h5 files, "
                   "directories of shards or index.json")  # fmt: skip
    p.add_argument("--out", required=True, help="report directory (report.md, report.json, plots/)")
    p.add_argument("--labels", help="comma-separated labels, one per checkpoint then per "
                   "--functional, in that order")  # fmt: skip
    p.add_argument("--max-molecules", type=int, help="evaluate only the first N molecules")
    p.add_argument("--ids", help="comma-separated molecule ids to evaluate")
    p.add_argument("--n-states", type=int, help="excited states (default: as many as stored)")
    p.add_argument("--no-hybrid", action="store_true", help="skip the hybrid-SCF comparison")
    p.add_argument(
        "--hybrid-conv-tol-grad",
        type=float,
        help="PySCF conv_tol_grad of the hybrid SCF runs (default: the data set's)",
    )
    p.add_argument(
        "--baseline-cache",
        metavar="DIR",
        help="directory caching the B3LYP SCFs from the default and PBE guesses and the "
        "reference forces (they do not depend on the functional): later evaluations on the same "
        "data reuse them",
    )
    p.add_argument("--no-tddft", action="store_true", help="skip TDDFT")
    p.add_argument(
        "--forces",
        action="store_true",
        help="also compare nuclear forces with the reference functional's (analytic gradients)",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--grid-level", type=int, help="grid of the learned SCF (default: reference's)")
    p.add_argument(
        "--coulomb",
        choices=("df", "exact"),
        default="df",
        help="J in the learned SCF (reported energies always use the reference's J)",
    )
    p.add_argument("--conv-tol", type=float, default=1e-10, help="learned SCF energy threshold")
    p.add_argument("--conv-tol-grad", type=float, default=1e-6, help="learned SCF |G| threshold")
    p.add_argument("--max-cycle", type=int, default=100, help="learned SCF iterations per strategy")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument("--strict", action="store_true",
                   help="exit with status 1 if any molecule or stage failed")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="log every molecule")
    return p


def main(argv: list[str]) -> int:
    """``dixc evaluate ...``; returns the exit status (0 ok, 1 failure, 2 usage error)."""
    p = _parser()
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.verbose:
        logging.getLogger("dixc.evaluate").setLevel(logging.INFO)
    specs = list(args.checkpoints) + [f"functional:{n}" for n in args.functional]
    if not specs:
        p.error("give at least one CHECKPOINT or --functional NAME")
    labels = None
    if args.labels:
        labels = [s.strip() for s in args.labels.split(",")]
        if len(labels) != len(specs):
            p.error(f"--labels has {len(labels)} entries for {len(specs)} functionals "
                    "(checkpoints first, then --functional)")  # fmt: skip
    try:
        for s in specs:  # fail fast, before any SCF
            load_checkpoint(s)
        ds = open_dataset(args.data)
        results = evaluate_many(
            specs,
            ds,
            labels,
            max_molecules=args.max_molecules,
            ids=None if not args.ids else [i.strip() for i in args.ids.split(",")],
            n_states=args.n_states,
            hybrid=not args.no_hybrid,
            hybrid_options=None
            if args.hybrid_conv_tol_grad is None
            else {"conv_tol_grad": args.hybrid_conv_tol_grad},
            tddft=not args.no_tddft,
            forces=args.forces,
            grid_level=args.grid_level,
            coulomb=args.coulomb,
            conv_tol=args.conv_tol,
            conv_tol_grad=args.conv_tol_grad,
            max_cycle=args.max_cycle,
            device=args.device,
            progress=not args.no_progress,
            baseline_cache=args.baseline_cache,
        )
    except (CheckpointError, DataFileError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except ValueError as err:  # e.g. a device dixc cannot compute on
        print(f"error: {err}", file=sys.stderr)
        return 2
    paths = write_report(results, args.out, plots=not args.no_plots)
    print(comparison_table(results))
    n_fail = sum(len(r.failures) for r in results)
    for r in results:
        for f in r.failures:
            print(f"FAILED {r.label} {f['id']} [{f['stage']}]: {f['reason']}", file=sys.stderr)
    print(f"report: {os.path.abspath(paths['markdown'])} (JSON: {paths['json']}, "
          f"{len(paths['plots'])} plots)")  # fmt: skip
    return 1 if (args.strict and n_fail) else 0
