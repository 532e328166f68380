"""Becke's partition of space: dixc's ``becke_partition`` kernels vs PySCF, side by side.

For each molecule (grid level ``--level``, PySCF's default atom grids, Becke's original scheme
with Treutler's size adjustment, as PySCF's RKS uses), interleaved timing (median of ``--repeat``):

* the grid weights: ``dixc.nuclear_grad.BeckePartition.weights`` (dixc's kernel, all points in
  one call) vs PySCF's ``gen_grid.get_partition`` (its C kernel ``VXCgen_grid``); error of dixc's
  weights against PySCF's;
* the weight term of the nuclear gradient, sum_g u_g dw_g/dR for one vector u (points moving
  with their atoms): ``BeckePartition.weight_vjp`` vs PySCF's ``grad.rks.grids_response_cc``
  (explicit derivatives (natm, 3, n) per atom, numpy) contracted with u; max abs error.

With ``--device cuda`` (dixc built with CUDA kernels): the same two on the GPU next to dixc's CPU
kernels (CUDA events are not needed: each call ends with a host synchronisation), errors of the
GPU results against the CPU ones; PySCF's numpy grid response is then left out (``--pyscf-vjp``
keeps it).

The partition costs O(natm^2) per point, so it is the part of a grid-response gradient that grows
fastest with the molecule. Run with ``MALLOC_MMAP_THRESHOLD_=33554432
MALLOC_TRIM_THRESHOLD_=68719476736`` (glibc's malloc otherwise page-faults on large torch
allocations on these VMs)::

    python bench/bench_becke.py --molecules benzene alkane8 alkane14 --level 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from registry import time_interleaved


def bench_molecule(
    name: str, level: int, repeat: int, device: str = "cpu", with_pyscf_vjp: bool = True
) -> dict:
    from pyscf import dft
    from pyscf.dft import gen_grid
    from pyscf.grad import rks as rks_grad

    from dixc.molecules import mole
    from dixc.nuclear_grad import BeckePartition

    mol = mole(name, "def2-svp")
    grids = dft.gen_grid.Grids(mol)
    grids.level = level
    tab = grids.gen_atomic_grids(mol, grids.atom_grid, grids.radi_method, level, grids.prune)
    becke = BeckePartition(mol, grids)
    n = len(becke.vol)
    u = np.random.default_rng(0).standard_normal(n)
    ut = torch.as_tensor(u)

    def pyscf_weights():
        return gen_grid.get_partition(
            mol, tab, grids.radii_adjust, grids.atomic_radii, grids.becke_scheme, concat=True
        )[1]

    def pyscf_vjp():
        out, start = np.zeros((mol.natm, 3)), 0
        for _, w, w1 in rks_grad.grids_response_cc(grids):
            out += np.einsum("g,axg->ax", u[start : start + len(w)], w1)
            start += len(w)
        return out

    w, w_ref = becke.weights().numpy(), pyscf_weights()
    v = becke.weight_vjp(ut).numpy()
    fns = [becke.weights, pyscf_weights, lambda: becke.weight_vjp(ut)]
    if with_pyscf_vjp:
        v_ref = pyscf_vjp()
        fns.append(pyscf_vjp)
    else:
        v_ref = v
    gpu = {}
    if device != "cpu":
        bg = BeckePartition(mol, grids, device)
        ug = ut.to(device)

        def sync(fn):
            return lambda: (fn(), torch.cuda.synchronize())

        fns += [sync(bg.weights), sync(lambda: bg.weight_vjp(ug))]
        gpu["w_err"] = float(np.abs(bg.weights().cpu().numpy() - w).max() / np.abs(w).max())
        gpu["vjp_err"] = float(np.abs(bg.weight_vjp(ug).cpu().numpy() - v).max() / np.abs(v).max())
    times = [statistics.median(t) * 1e3 for t in time_interleaved(fns, repeat=repeat, warmup=1)]
    if device != "cpu":
        gpu["w_ms"], gpu["vjp_ms"] = times[-2:]
    return {
        "gpu": gpu,
        "molecule": name,
        "natm": mol.natm,
        "ngrid": n,
        "w_dixc": times[0],
        "w_pyscf": times[1],
        "w_err": float(np.abs(w - w_ref).max() / np.abs(w_ref).max()),
        "vjp_dixc": times[2],
        "vjp_pyscf": times[3] if with_pyscf_vjp else float("nan"),
        "vjp_err": float(np.abs(v - v_ref).max()),
        "vjp_scale": float(np.abs(v_ref).max()),
    }


def markdown(rows: list[dict]) -> str:
    head = (
        "| molecule | atoms | grid | weights dixc ms | PySCF (C) ms | ratio | rel err | "
        "weight VJP dixc ms | PySCF (numpy) ms | ratio | max abs err (of max) |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['molecule']} | {r['natm']} | {r['ngrid']} | {r['w_dixc']:.0f} | "
            f"{r['w_pyscf']:.0f} | {r['w_dixc'] / r['w_pyscf']:.2f} | {r['w_err']:.1e} | "
            f"{r['vjp_dixc']:.0f} | {r['vjp_pyscf']:.0f} | "
            f"{r['vjp_dixc'] / r['vjp_pyscf']:.2f} | {r['vjp_err']:.1e} ({r['vjp_scale']:.1e}) |"
        )
    return "\n".join(lines)


def markdown_gpu(rows: list[dict], device: str) -> str:
    lines = [
        f"| molecule | atoms | grid | weights {device} ms | dixc CPU ms | CPU / GPU | rel err | "
        f"weight VJP {device} ms | dixc CPU ms | CPU / GPU | rel err |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        g = r["gpu"]
        lines.append(
            f"| {r['molecule']} | {r['natm']} | {r['ngrid']} | {g['w_ms']:.2f} | "
            f"{r['w_dixc']:.1f} | "
            f"{r['w_dixc'] / g['w_ms']:.0f} | {g['w_err']:.1e} | {g['vjp_ms']:.2f} | "
            f"{r['vjp_dixc']:.1f} | {r['vjp_dixc'] / g['vjp_ms']:.0f} | {g['vjp_err']:.1e} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--molecules", nargs="+", default=["benzene", "alkane8", "alkane14"])
    ap.add_argument("--level", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="cuda: also time dixc's CUDA kernels")
    ap.add_argument("--pyscf-vjp", action="store_true", help="with --device cuda: keep PySCF's VJP")
    args = ap.parse_args(argv)
    if args.device != "cpu":
        import dixc

        if not (torch.cuda.is_available() and dixc.ops.has_cuda()):
            print(
                f"no CUDA device or dixc built without CUDA kernels: --device {args.device} skipped"
            )
            return 0
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        print("warning: MALLOC_MMAP_THRESHOLD_ unset (see bench/README.md)", file=sys.stderr)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()}")
    rows = []
    keep_vjp = args.device == "cpu" or args.pyscf_vjp
    for name in args.molecules:
        rows.append(bench_molecule(name, args.level, args.repeat, args.device, keep_vjp))
        print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    print(markdown(rows))
    if args.device != "cpu":
        print(markdown_gpu(rows, args.device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
