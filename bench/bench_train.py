"""Cost of one DI-Loss training step per molecule, for each loss preset and architecture.

    OMP_NUM_THREADS=1 PYTHONPATH=python DIXC_OPS_LIBRARY=.dev/_dixc_ops.so \
        .venv/bin/python bench/bench_train.py --data /tmp/dixc-data/qm9-5 --molecules 6

For every (architecture, preset) it times the full per-molecule step of ``dixc train``: all loss
terms of the preset (forward) and ``backward`` into the parameters, on the training grid, with
the molecule context prepared beforehand (as the LRU cache does during training). One warm-up
step per molecule and architecture is not timed. Prints seconds per molecule-step (mean over the
molecules, median of ``--repeat`` runs each) and the overhead factor relative to ``E+rho``.
"""

from __future__ import annotations

import argparse
import statistics
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
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    ds = data.ReferenceDataset(a.data)
    recs = sorted((ds[i] for i in range(len(ds))), key=lambda r: int(r.attrs["nao"]))
    pick = np.unique(np.linspace(0, len(recs) - 1, min(a.molecules, len(recs))).round().astype(int))
    mols = [losses.prepare_molecule(recs[i], ds.config, grid_level=a.grid_level) for i in pick]
    sizes = [(m.id, m.ctx.nao, m.ctx.grid.ngrid) for m in mols]
    print(f"data {a.data}: {len(ds)} molecules; timing {len(mols)} (id, nao, ngrid): {sizes}")
    print(f"grid level {a.grid_level}, torch threads {a.threads}, float64, CPU")
    base = config.load_yaml(a.config) if a.config else {}
    lc0 = config.resolve(dict(base, loss=dict(base.get("loss", {}), preset=PRESETS[-1]))).loss
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
            values = dict(base)
            values["loss"] = dict(base.get("loss", {}), preset=preset)
            lc = config.resolve(values).loss
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


if __name__ == "__main__":
    main()
