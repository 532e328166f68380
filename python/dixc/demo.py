"""``make demo``: the whole distillation pipeline on a small embedded default (~10 min, 2 cores).

Steps (all outputs under ``--out``, default ``runs/demo``):

0. exact kernels: a self-consistent PBE calculation through dixc's ops vs PySCF (same grid);
1. reference data: B3LYP/def2-SVP with gradient and Hessian targets for the QM9 molecules with
   <= 3 heavy atoms (no F; 17 molecules: training and validation) and a seeded choice of
   4-heavy-atom molecules with their lowest singlet excitations (held-out test set: 3
   molecules, 2 states by default);
2. physics initialisation: XCdiff regressed onto PBE once on water and ethanol densities (both
   runs start from this file);
3. training with the literature's ablation presets ``E+rho`` and ``E+rho+grad+hess`` (same
   initialisation, seed and data order);
4. evaluation of both and of PBE on the held-out molecules: energy, density, dipole, hybrid-SCF
   iterations from the learned density, TDDFT, nuclear forces; the comparison table is printed
   and a Markdown / JSON report with plots is written.

Reference data are cached (generation resumes); training runs are redone each time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

import torch


def run(
    molecule: str = "qm9_acetamide",
    basis: str = "def2-svp",
    xc: str = "PBE",
    level: int = 3,
    conv_tol: float = 1e-11,
) -> dict:
    """Runs PySCF RKS twice on the same grid: with PySCF's numint and with dixc's kernels.

    Returns:
        Energies (Hartree), wall times (s), SCF cycles and the energy difference.
    """
    from pyscf import dft

    from dixc import molecules
    from dixc.pyscf_numint import DixcNumInt

    mol = molecules.mole(molecule, basis=basis)
    results = {}
    for name in ("pyscf", "dixc"):
        mf = dft.RKS(mol, xc=xc)
        mf.grids.level = level
        mf.conv_tol = conv_tol
        mf.verbose = 0
        if name == "dixc":
            mf._numint = DixcNumInt()
        cycles = []
        mf.callback = lambda env, c=cycles: c.append(env["cycle"])
        t0 = time.perf_counter()
        e = mf.kernel()
        dt = time.perf_counter() - t0
        if not mf.converged:
            raise RuntimeError(f"demo: {name} SCF for {molecule} did not converge")
        results[name] = {"energy": float(e), "time": dt, "cycles": len(cycles)}
    results["molecule"] = molecule
    results["nao"] = mol.nao
    results["ngrid"] = int(mf.grids.weights.size)
    results["delta"] = abs(results["dixc"]["energy"] - results["pyscf"]["energy"])
    return results


def _step(k: int, text: str) -> float:
    print(f"\n[{k}] {text}", flush=True)
    return time.perf_counter()


def _kernels_check(args) -> bool:
    r = run(args.molecule, "def2-svp", "PBE", 3)
    print(f"PBE/def2-SVP {args.molecule}: nao {r['nao']}, {r['ngrid']} grid points")
    for k in ("pyscf", "dixc"):
        v = r[k]
        print(f"  {k:6s} E = {v['energy']:.12f} Eh  ({v['time']:.1f} s, {v['cycles']} cycles)")
    print(f"  |E_dixc - E_pyscf| = {r['delta']:.1e} Eh")
    return r["delta"] <= 1e-8


def _generate(args, out: str, sel: list[str]) -> None:
    from dixc.cli import main as cli

    argv = ["generate", "--source", "qm9", "--exclude", "F", "--workers", str(args.workers)]
    argv += ["--out", out, "--retry-failed", *sel]
    if args.quiet:
        argv.append("--no-progress")
    rc = cli(argv)
    from dixc.data import ReferenceDataset

    ds = ReferenceDataset(out)
    n, failed = len(ds), dict(ds.failed)
    ds.close()
    if rc or not n or failed:
        raise RuntimeError(
            f"demo: reference generation into {out} failed (exit {rc}, {n} molecules stored, "
            f"failed: {failed}); see the log above, fix and rerun (finished molecules are kept)"
        )


def train_config(
    data: str,
    init: str,
    preset: str,
    out: str,
    *,
    lr: float,
    epochs: int,
    seed: int,
    threads: int,
    progress: bool = True,
    batch_size: int = 2,
    val_fraction: float = 0.18,
    checkpoint_every: int = 20,
    tensorboard: bool = True,
) -> dict:
    """The demo's training recipe as a ``dixc train`` config dict (also used by
    ``bench/ablation.py``): small batches, a short unrolled SCF, 2 gradient points and 4 Hessian
    probes per step, EMA 0.9, no early stopping, training grid level 1."""
    return {
        "data": {"path": data, "val_fraction": val_fraction, "grid_level": 1},
        "model": {"init": init},
        "loss": {
            "preset": preset,
            "scf": {"n_cycles": 8, "late_cycles": 3},
            "grad": {"n_points": 2},
            "hess": {"n_probes": 4},
        },
        "optim": {
            "lr": lr,
            "batch_size": batch_size,
            "epochs": epochs,
            "warmup_steps": 3,
            "ema_decay": 0.9,
        },
        "validate": {"patience": None},
        "run": {
            "out": out,
            "seed": seed,
            "threads": threads,
            "checkpoint_every": checkpoint_every,
            "progress": progress,
            "tensorboard": tensorboard,
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="dixc demo", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("--arch", default="xcdiff", help="architecture to distil (default xcdiff)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--n-test", type=int, default=3, help="held-out 4-heavy-atom molecules")
    p.add_argument("--n-states", type=int, default=2, help="singlet excitations per molecule")
    p.add_argument("--workers", type=int, default=2, help="processes for reference generation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--molecule", default="qm9_acetamide", help="molecule of the kernel check")
    p.add_argument("--skip-check", action="store_true", help="skip step 0 (dixc vs PySCF)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)

    import yaml

    import dixc.functionals as F
    from dixc import ops
    from dixc.evaluate import evaluate_many
    from dixc.evaluate.report import comparison_table, write_report
    from dixc.fileio import atomic_path
    from dixc.train import main as train_main

    t_all = time.perf_counter()
    print(ops.build_info(), f"| torch threads: {torch.get_num_threads()}")
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    timings: dict[str, float] = {}

    if not args.skip_check:
        t = _step(0, "exact kernels: self-consistent PBE through dixc vs PySCF")
        if not _kernels_check(args):
            print("FAIL: dixc and PySCF energies differ by more than 1e-8 Eh")
            return 1
        timings["check"] = time.perf_counter() - t

    t = _step(1, "reference data: B3LYP/def2-SVP, gradients, Hessian probes (cached)")
    # data directories are named by what determines their contents (generation resumes there)
    train_data = os.path.join(out, "data-train")
    test_data = os.path.join(out, f"data-test-n{args.n_test}-s{args.n_states}-seed{args.seed}")
    _generate(args, train_data, ["--max-heavy", "3", "--k-grad", "4", "--k-hess", "8"])
    _generate(
        args,
        test_data,
        [
            *("--heavy", "4", "--subset", str(args.n_test), "--subset-seed", str(args.seed)),
            *("--k-grad", "0", "--k-hess", "0", "--tddft", str(args.n_states)),
        ],
    )
    timings["generate"] = time.perf_counter() - t

    t = _step(2, f"physics initialisation: {args.arch} regressed onto PBE")
    torch.manual_seed(args.seed)
    f0 = F.create(args.arch)
    res = F.pretrain(
        f0,
        "pbe",
        molecules=("water", "ethanol"),
        steps=100,
        seed=args.seed,
        progress=not args.quiet,
    )
    init = os.path.join(out, f"{args.arch}-pbe-init.safetensors")
    F.save(f0, init, extra={"pretrain_target": "pbe", "loss": res.loss_final})
    print(
        f"  loss {res.loss_initial:.2e} -> {res.loss_final:.2e}; max |E_xc - E_xc^PBE| "
        f"{res.max_abs_exc_error * 1e3:.1f} mEh over {len(res.exc_error)} densities "
        f"({res.seconds:.0f} s)"
    )
    timings["pretrain"] = time.perf_counter() - t

    runs = {}
    for preset in ("E+rho", "E+rho+grad+hess"):
        t = _step(3, f"training {args.arch} with {preset}")
        run_dir = os.path.join(out, "train-" + preset.replace("+", "_"))
        shutil.rmtree(run_dir, ignore_errors=True)
        cfg_path = run_dir + ".yaml"
        with atomic_path(cfg_path) as tmp, open(tmp, "w") as fh:
            cfg = train_config(
                train_data, init, preset, run_dir, lr=args.lr, epochs=args.epochs,
                seed=args.seed, threads=torch.get_num_threads(), progress=not args.quiet,
            )  # fmt: skip
            yaml.safe_dump(cfg, fh)
        rc = train_main(["--config", cfg_path])
        if rc:
            print(f"FAIL: training with {preset} exited with status {rc}")
            return rc
        runs[preset] = run_dir
        timings[f"train {preset}"] = time.perf_counter() - t

    t = _step(4, "evaluation on held-out 4-heavy-atom molecules (vs B3LYP)")
    results = evaluate_many(
        [*runs.values(), "functional:pbe"],
        test_data,
        labels=[f"{args.arch} {p}" for p in runs] + ["PBE"],
        progress=not args.quiet,
        forces=True,
    )
    report_dir = os.path.join(out, "report")
    paths = write_report(results, report_dir)
    timings["evaluate"] = time.perf_counter() - t

    print("\n" + comparison_table(results))
    print(f"\nreport: {paths.get('markdown', report_dir)} (plots in {report_dir}/plots)")
    print("wall (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    print(f"total {time.perf_counter() - t_all:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
