"""Cost of one DI-Loss training step per molecule, for each loss preset and architecture.

    OMP_NUM_THREADS=1 PYTHONPATH=python DIXC_OPS_LIBRARY=.dev/_dixc_ops.so \
        .venv/bin/python bench/bench_train.py --data /tmp/dixc-data/qm9-5 --molecules 6

For every (architecture, preset) it times the full per-molecule step of ``dixc train``: all loss
terms of the preset (forward) and ``backward`` into the parameters, on the training grid, with
the molecule context prepared beforehand (as the LRU cache does during training). One warm-up
step per molecule and architecture is not timed. Prints seconds per molecule-step (mean over the
molecules, median of ``--repeat`` runs each) and the overhead factor relative to ``E+rho``.

``--memory`` measures instead the peak memory of one molecule-step on the largest selected
molecule: every (architecture, preset) runs in a fresh child process, which prepares the molecule
and reports ``ru_maxrss`` (KiB on Linux) before and after one step, with the step's seconds.
``--probe-chunk`` sets ``loss.hess.probe_chunk`` (nonlocal functionals: probes whose graphs the
parameter backward rebuilds together; ``all``: every probe at once).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from dixc import data, functionals
from dixc.train import config, losses

PRESETS = ["E+rho", "E+rho+grad", "E+rho+grad+hess"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="/tmp/dixc-data/qm9-5")
    p.add_argument("--molecules", type=int, default=6, help="molecules, spread over the sizes")
    p.add_argument("--arch", nargs="+", default=["xcdiff", "nnmgga", "skala_mgga", "egxc",
                                                 "mlp_mgga"])  # fmt: skip
    p.add_argument("--grid-level", type=int, default=1)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--config", help="a training YAML whose loss section is used (presets vary)")
    p.add_argument("--memory", action="store_true", help="peak memory of one step per "
                   "(arch, preset) on the largest molecule, each in a fresh process")  # fmt: skip
    p.add_argument("--probe-chunk", help="loss.hess.probe_chunk: an integer or 'all'")
    p.add_argument("--child", nargs=3, metavar=("ARCH", "PRESET", "ID"), help=argparse.SUPPRESS)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    ds = data.ReferenceDataset(a.data)
    if a.child:
        return _child_step(a, ds)
    recs = sorted((ds[i] for i in range(len(ds))), key=lambda r: int(r.attrs["nao"]))
    pick = np.unique(np.linspace(0, len(recs) - 1, min(a.molecules, len(recs))).round().astype(int))
    if a.memory:
        return _memory_table(a, recs[pick[-1]])
    mols = [losses.prepare_molecule(recs[i], ds.config, grid_level=a.grid_level) for i in pick]
    sizes = [(m.id, m.ctx.nao, m.ctx.grid.ngrid) for m in mols]
    print(f"data {a.data}: {len(ds)} molecules; timing {len(mols)} (id, nao, ngrid): {sizes}")
    print(f"grid level {a.grid_level}, torch threads {a.threads}, float64, CPU")
    lc0 = _loss_config(a, PRESETS[-1])
    print(f"loss settings: unrolled SCF {lc0.scf.n_cycles} cycles, {lc0.grad.n_points} gradient "
          f"points, {lc0.hess.n_probes} Hessian probes per molecule-step")  # fmt: skip
    print(f"| arch | params | {' | '.join(PRESETS)} | hess / E+rho |")
    print("|---|---|" + "---|" * len(PRESETS) + "---|")
    for arch in a.arch:
        try:
            torch.manual_seed(0)
            f = functionals.create(arch)
        except Exception as err:  # an architecture that is not available in this build
            print(f"| {arch} | unavailable: {err} |")
            continue
        nparam = sum(p.numel() for p in f.parameters())
        times = {}
        for preset in PRESETS:
            lc = _loss_config(a, preset)
            w = losses.term_weights(lc)
            per_mol = []
            for m in mols:
                runs = []
                for r in range(a.repeat + 1):
                    t0 = time.perf_counter()
                    terms, _ = losses.molecule_losses(f, m, lc, torch.Generator().manual_seed(r))
                    losses.total_loss(terms, w).backward()
                    if r:
                        runs.append(time.perf_counter() - t0)
                    f.zero_grad()
                per_mol.append(statistics.median(runs))
            times[preset] = float(np.mean(per_mol))
        cells = " | ".join(f"{times[p]:.2f} s" for p in PRESETS)
        print(f"| {arch} | {nparam} | {cells} | {times[PRESETS[-1]] / times[PRESETS[0]]:.2f} |")


def _loss_config(a: argparse.Namespace, preset: str):
    """The loss section of ``--config`` with ``preset`` and ``--probe-chunk`` applied."""
    overrides = [{"loss": {"preset": preset}}]
    if a.probe_chunk is not None:
        chunk = None if a.probe_chunk == "all" else int(a.probe_chunk)
        overrides.append({"loss": {"hess": {"probe_chunk": chunk}}})
    return config.resolve(config.load_yaml(a.config) if a.config else {}, overrides).loss


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def _child_step(a: argparse.Namespace, ds: data.ReferenceDataset) -> None:
    """One molecule-step in this (fresh) process; prints a JSON line with its peak memory."""
    arch, preset, mid = a.child
    rec = ds[mid]
    lc = _loss_config(a, preset)
    mol = losses.prepare_molecule(rec, ds.config, grid_level=a.grid_level)
    torch.manual_seed(0)
    f = functionals.create(arch)
    before = _peak_gb()
    t0 = time.perf_counter()
    terms, _ = losses.molecule_losses(f, mol, lc, torch.Generator().manual_seed(0))
    losses.total_loss(terms, losses.term_weights(lc)).backward()
    seconds = time.perf_counter() - t0
    out = {"before_gb": before, "peak_gb": _peak_gb(), "s": seconds, "ngrid": mol.ctx.grid.ngrid}
    print(json.dumps(out))


def _memory_table(a: argparse.Namespace, rec) -> None:
    """Peak RSS of one step per (arch, preset), each in a fresh child process."""
    print(f"data {a.data}: largest selected molecule {rec.id} ({int(rec.attrs['nao'])} AOs); "
          f"grid level {a.grid_level}, torch threads {a.threads}, loss.hess.probe_chunk "
          f"{a.probe_chunk or 'default'}; one step per fresh process, ru_maxrss")  # fmt: skip
    print("| arch | preset | peak RSS | before the step | step |")
    print("|---|---|---|---|---|")
    for arch in a.arch:
        for preset in PRESETS:
            cmd = [sys.executable, __file__, "--data", a.data, "--grid-level", str(a.grid_level),
                   "--threads", str(a.threads), "--child", arch, preset, rec.id]  # fmt: skip
            for flag, value in (("--config", a.config), ("--probe-chunk", a.probe_chunk)):
                if value is not None:
                    cmd += [flag, value]
            run = subprocess.run(cmd, capture_output=True, text=True)
            if run.returncode:
                print(f"| {arch} | {preset} | failed: {run.stderr.strip().splitlines()[-1:]} |")
                continue
            r = json.loads(run.stdout.strip().splitlines()[-1])
            print(f"| {arch} | {preset} | {r['peak_gb']:.2f} GB | {r['before_gb']:.2f} GB | "
                  f"{r['s']:.1f} s |")  # fmt: skip


if __name__ == "__main__":
    main()
