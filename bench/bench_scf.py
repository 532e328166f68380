"""Kohn-Sham engine benchmark: SCF cycle, V_xc, orbital-Hessian products, dixc vs PySCF.

Side by side in one process, interleaved timing (median of ``--repeat``), float64, same grid and
density fitting (def2-universal-jkfit) on both sides:

* per SCF cycle (Fock build + diagonalisation at a fixed density): dixc with Torch PBE and with a
  ~300k-parameter MLP meta-GGA vs PySCF PBE (libxc); error of dixc-PBE's Fock vs PySCF's;
* one V_xc evaluation (dixc Torch PBE / MLP);
* orbital-Hessian products: kernel set-up at a density (once per point), one probe, a batch of
  16 probes (one batched ``eval_rho`` + ``contract_vxc``), vs PySCF's ``gen_response`` for PBE.

Run ``make bench`` or ``python bench/bench_scf.py --molecules ethanol benzene alkane14`` with
``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=68719476736`` (glibc's malloc otherwise
page-faults on large torch allocations on these VMs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from registry import time_interleaved


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--molecules", nargs="+", default=["ethanol", "benzene", "alkane14"])
    p.add_argument("--basis", default="def2-svp")
    p.add_argument("--level", type=int, default=3)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--probes", type=int, default=16)
    p.add_argument("--mlp-hidden", type=int, default=320)
    p.add_argument("--mlp-depth", type=int, default=4)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--mlp-max-atoms", type=int, default=30, help="skip the MLP on larger molecules (time)"
    )
    p.add_argument("--markdown", action="store_true", help="print Markdown tables")
    p.add_argument("--json", default=None, help="write all numbers to this file")
    return p.parse_args(argv)


def _med(ts) -> float:
    return statistics.median(ts) * 1e3


def bench_molecule(name: str, args) -> dict:
    from pyscf import dft

    import dixc.functionals
    from dixc import scf as dscf
    from dixc.context import MolContext
    from dixc.functionals.mlp import MLPmGGA
    from dixc.molecules import mole
    from dixc.response import OrbitalHessian
    from dixc.xc import exc_vxc

    mol = mole(name, args.basis)
    mf = dft.RKS(mol, xc="PBE").density_fit(auxbasis="def2-universal-jkfit")
    mf.grids.level = args.level
    mf.verbose = 0
    mf.conv_tol = 1e-9
    mf.kernel()
    ctx = MolContext.from_mol(mol, grids=mf.grids)
    pbe = dixc.functionals.create("pbe")
    torch.manual_seed(0)
    mlp = MLPmGGA(hidden=args.mlp_hidden, depth=args.mlp_depth)
    nparam = sum(p.numel() for p in mlp.parameters())
    dm_np = mf.make_rdm1()
    dm = torch.as_tensor(dm_np)
    h1e, s1e = mf.get_hcore(), mf.get_ovlp()
    x = ctx.orthogonalizer()

    def pyscf_cycle():
        veff = mf.get_veff(mol, dm_np)
        f = mf.get_fock(h1e, s1e, veff, dm_np)
        return mf.eig(f, s1e)

    def dixc_cycle(func):
        def run():
            with torch.no_grad():
                _, f = dscf.fock(ctx, func, dm)
                return dscf._diagonalize(f, x, ctx.nocc, differentiable=False)

        return run

    with_mlp = mol.natm <= args.mlp_max_atoms
    cycles = [pyscf_cycle, dixc_cycle(pbe)] + ([dixc_cycle(mlp)] if with_mlp else [])
    times = time_interleaved(cycles, repeat=args.repeat, warmup=1)
    t_pyscf, t_pbe = _med(times[0]), _med(times[1])
    t_mlp = _med(times[2]) if with_mlp else float("nan")
    f_ref = mf.get_fock(dm=dm_np)
    f_dixc = dscf.fock(ctx, pbe, dm)[1].numpy()
    fock_err = float(np.abs(f_dixc - f_ref).max() / np.abs(f_ref).max())

    # V_xc alone, and orbital-Hessian products.
    c = torch.as_tensor(mf.mo_coeff)
    nv = c.shape[1] - ctx.nocc
    xs = torch.randn(args.probes, nv, ctx.nocc, dtype=torch.float64)
    xs /= xs.norm(dim=(1, 2), keepdim=True)
    hs = {"pbe": OrbitalHessian(ctx, pbe, c)}
    if with_mlp:
        hs["mlp"] = OrbitalHessian(ctx, mlp, c)
    resp = mf.gen_response(mf.mo_coeff, mf.mo_occ, hermi=1)
    co, cv = mf.mo_coeff[:, : ctx.nocc], mf.mo_coeff[:, ctx.nocc :]
    x0 = xs[0].numpy()

    def pyscf_probe():
        dd = 2 * (cv @ x0 @ co.T + co @ x0.T @ cv.T)
        return resp(dd)

    def one_probe(func):  # a fresh point: set-up plus the first (single) probe
        return lambda: OrbitalHessian(ctx, func, c)(xs[:1])

    def sixteen(func):  # a fresh point: set-up plus one batch of 16 probes
        return lambda: OrbitalHessian(ctx, func, c)(xs)

    fns = {"pyscf_probe": pyscf_probe}
    for key, func in [("pbe", pbe)] + ([("mlp", mlp)] if with_mlp else []):
        fns |= {
            f"vxc_{key}": lambda func=func: exc_vxc(ctx, func, dm),
            f"setup_{key}": lambda func=func: OrbitalHessian(ctx, func, c),
            f"first1_{key}": one_probe(func),
            f"first16_{key}": sixteen(func),
            f"hvp1_{key}": lambda key=key: hs[key](xs[:1]),
            f"hvp16_{key}": lambda key=key: hs[key](xs),
        }
    with torch.no_grad():
        tt = time_interleaved(list(fns.values()), repeat=args.repeat, warmup=1)
    t = {k: _med(v) for k, v in zip(fns, tt, strict=True)}
    return {
        "molecule": name,
        "natm": mol.natm,
        "nao": mol.nao,
        "ngrid": ctx.grid.ngrid,
        "ao_path": "dense" if ctx._ao else "fused",
        "mlp_params": nparam,
        "cycle_ms": {"pyscf_pbe": t_pyscf, "dixc_pbe": t_pbe, "dixc_mlp": t_mlp},
        "fock_err": fock_err,
        "ms": t,
        "pyscf_cycles": mf.cycles,
    }


def _tables(rows: list[dict]) -> str:
    out = [
        "Per SCF cycle (Fock build + diagonalisation), ms",
        "",
        "| molecule | atoms | nao | grid | PySCF PBE | dixc PBE | ratio | dixc MLP "
        f"({rows[0]['mlp_params'] // 1000}k) | ratio | Fock err |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = r["cycle_ms"]
        out.append(
            f"| {r['molecule']} | {r['natm']} | {r['nao']} | {r['ngrid']} | "
            f"{c['pyscf_pbe']:.0f} | {c['dixc_pbe']:.0f} | {c['dixc_pbe'] / c['pyscf_pbe']:.2f} | "
            f"{c['dixc_mlp']:.0f} | {c['dixc_mlp'] / c['pyscf_pbe']:.2f} | {r['fock_err']:.1e} |"
        )
    out += [
        "",
        "Orbital-Hessian products, ms. Fresh point = set-up (Fock + kernel) + products; "
        "cached = further products at the same point",
        "",
        "| molecule | functional | V_xc | set-up | fresh, 1 probe | fresh, 16 probes | "
        "cached 1 | cached 16 | fresh 1 / V_xc | fresh 16 / fresh 1 | PySCF PBE 1 probe |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["ms"]
        for f in ("pbe", "mlp"):
            if f"vxc_{f}" not in m:
                continue
            v, s = m[f"vxc_{f}"], m[f"setup_{f}"]
            f1, f16, h1, h16 = (m[f"{k}_{f}"] for k in ("first1", "first16", "hvp1", "hvp16"))
            out.append(
                f"| {r['molecule']} | {f.upper()} | {v:.0f} | {s:.0f} | {f1:.0f} | {f16:.0f} | "
                f"{h1:.0f} | {h16:.0f} | {f1 / v:.2f} | {f16 / f1:.2f} | {m['pyscf_probe']:.0f} |"
            )
    return "\n".join(out)


def main(argv=None) -> int:
    args = _parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        from pyscf import lib

        lib.num_threads(args.threads)
    rows = []
    for name in args.molecules:
        r = bench_molecule(name, args)
        rows.append(r)
        print(json.dumps(r), flush=True)
    print()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset')}"
    )
    print(_tables(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
