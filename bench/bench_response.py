"""PySCF with ``DixcNumInt`` vs PySCF's own ``NumInt``: B3LYP SCF, f_xc products, TDDFT, and a
whole ``dixc generate`` molecule (``compute_reference``), side by side in one process.

Per molecule, both sides run the same PySCF code on the same grid; only ``mf._numint`` differs:

* ``scf``: a B3LYP SCF from PySCF's default guess (its XC part is ``nr_rks``; exact exchange is
  PySCF's on both sides);
* ``fxc xB``: one ``nr_rks_fxc`` call with B non-symmetric response densities and a cached
  kernel (what every Davidson iteration of TDDFT and every ``gen_response`` call does);
* ``TDA`` / ``TDDFT``: the lowest ``--nstates`` singlets (full TDDFT from the TDA vectors, as
  ``dixc generate`` does);
* ``reference``: ``dixc.reference.compute_reference`` (SCF, K_g gradient samples, K_h probes,
  TDDFT), the unit of work of ``dixc generate``.

Printed: median wall times (``--repeat`` interleaved rounds; the SCF / TDDFT / reference entries
one round each by default), the PySCF/dixc ratio (speed-up) and the largest difference of the
results (matrices relative to their largest element, energies in Hartree).

Run with ``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=68719476736`` on these VMs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from registry import time_interleaved


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--molecules", nargs="+", default=["water", "qm9_acetamide", "benzene"])
    p.add_argument("--xc", default="B3LYP")
    p.add_argument("--basis", default="def2-svp")
    p.add_argument("--level", type=int, default=3)
    p.add_argument("--batch", type=int, default=8, help="response densities per f_xc call")
    p.add_argument("--nstates", type=int, default=5)
    p.add_argument("--repeat", type=int, default=3, help="rounds of the f_xc entries")
    p.add_argument("--repeat-long", type=int, default=1, help="rounds of SCF/TDDFT/reference")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--skip", nargs="*", default=[], help="entries to skip: scf fxc td reference")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def _rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def bench_molecule(name: str, args) -> list[dict]:
    from pyscf import dft
    from pyscf.dft import numint

    from dixc import reference
    from dixc.molecules import get, mole
    from dixc.pyscf_numint import DixcNumInt
    from dixc.sources import Molecule

    mol = mole(name, args.basis)
    sides = {"pyscf": numint.NumInt(), "dixc": DixcNumInt()}

    def rks(ni):
        mf = dft.RKS(mol, xc=args.xc)
        mf.grids.level = args.level
        mf.conv_tol, mf.verbose, mf._numint = 1e-10, 0, ni
        return mf

    base = rks(sides["pyscf"])
    base.grids.build(with_non0tab=True)
    rows = []
    out: dict[str, dict] = {}

    def row(entry, t, err, unit=""):
        t_p, t_d = (statistics.median(t[k]) for k in ("pyscf", "dixc"))
        r = {
            "molecule": name,
            "nao": mol.nao,
            "ngrid": base.grids.weights.size,
            "entry": entry,
            "pyscf_s": t_p,
            "dixc_s": t_d,
            "speedup": t_p / t_d,
            "err": err,
            "err_unit": unit,
        }
        rows.append(r)
        print(
            f"  {entry:<12} PySCF {t_p:8.3f} s  dixc {t_d:8.3f} s  x{t_p / t_d:5.2f}  "
            f"diff {err:.1e} {unit}",
            flush=True,
        )

    mfs = {}
    if "scf" not in args.skip or any(k not in args.skip for k in ("fxc", "td")):

        def scf(side):
            def run():
                mf = rks(sides[side])
                mf.grids = base.grids
                mf.kernel()
                mfs[side] = mf
                out.setdefault(side, {})["e_scf"] = mf.e_tot

            return run

        t = time_interleaved([scf("pyscf"), scf("dixc")], repeat=args.repeat_long, warmup=0)
        if "scf" not in args.skip:
            row(
                "scf",
                dict(zip(sides, t, strict=True)),
                abs(out["dixc"]["e_scf"] - out["pyscf"]["e_scf"]),
                "Eh",
            )

    if "fxc" not in args.skip:
        mf = mfs["pyscf"]
        dms = np.random.default_rng(0).standard_normal((args.batch, mol.nao, mol.nao))
        fxc = sides["pyscf"].cache_xc_kernel(mol, mf.grids, args.xc, mf.mo_coeff, mf.mo_occ)[2]
        res = {}

        def fxc_call(side):
            def run():
                res[side] = sides[side].nr_rks_fxc(mol, mf.grids, args.xc, None, dms, fxc=fxc)

            return run

        t = time_interleaved([fxc_call("pyscf"), fxc_call("dixc")], repeat=args.repeat)
        row(
            f"fxc x{args.batch}",
            dict(zip(sides, t, strict=True)),
            _rel(res["dixc"], res["pyscf"]),
            "rel",
        )

    if "td" not in args.skip:
        es: dict[str, dict[str, np.ndarray]] = {"pyscf": {}, "dixc": {}}
        t_td: dict[str, dict[str, list]] = {"TDA": {}, "TDDFT": {}}
        for side in sides:
            mf = mfs[side]
            x0 = None
            for method in ("TDA", "TDDFT"):
                ts = []
                for _ in range(args.repeat_long):
                    td = getattr(mf, method)()
                    td.nstates, td.verbose = args.nstates, 0
                    t0 = time.perf_counter()
                    td.kernel(x0=x0)
                    ts.append(time.perf_counter() - t0)
                es[side][method] = td.e
                t_td[method][side] = ts
                if method == "TDA":
                    x0 = np.array([np.concatenate([x.ravel(), np.zeros(x.size)]) for x, _ in td.xy])
        for method in ("TDA", "TDDFT"):
            err = float(np.abs(es["dixc"][method] - es["pyscf"][method]).max())
            row(f"{method} n={args.nstates}", t_td[method], err, "Eh")

    if "reference" not in args.skip:
        lines = [ln.split() for ln in get(name).strip().splitlines()]
        m = Molecule(
            id=name,
            symbols=tuple(ln[0] for ln in lines),
            coords=np.array([[float(v) for v in ln[1:4]] for ln in lines]),
            source="dixc.molecules",
        )
        cfg = reference.ReferenceConfig(
            xc=args.xc, basis=args.basis, grid_level=args.level, n_tddft=args.nstates
        )
        refs = {}

        def ref_call(side):
            def run():
                refs[side] = reference.compute_reference(m, cfg, threads=args.threads, numint=side)

            return run

        t = time_interleaved(
            [ref_call("pyscf"), ref_call("dixc")], repeat=args.repeat_long, warmup=0
        )
        a, b = refs["pyscf"].arrays, refs["dixc"].arrays
        err = max(_rel(b[k], a[k]) for k in a if a[k].size and k != "scf/g")
        row("reference", dict(zip(sides, t, strict=True)), err, "rel")
        for side in sides:
            tm = refs[side].timings
            print(
                f"    {side}: "
                + ", ".join(f"{k} {tm[k]:.2f} s" for k in ("scf", "grad", "hess", "tddft"))
            )
            rows[-1][f"{side}_stages"] = {k: tm[k] for k in ("scf", "grad", "hess", "tddft")}
    return rows


def main(argv=None) -> int:
    args = _parse(argv)
    if args.threads:
        for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[v] = str(args.threads)
    import torch
    from pyscf import lib

    if args.threads:
        torch.set_num_threads(args.threads)
        lib.num_threads(args.threads)
    for v in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        if v not in os.environ:
            print(f"warning: {v} is not set (see bench/README.md)")
    print(
        f"{args.xc}/{args.basis}, grid level {args.level}, torch threads "
        f"{torch.get_num_threads()}, PySCF threads {lib.num_threads()}, load {os.getloadavg()}"
    )
    rows = []
    for name in args.molecules:
        print(name, flush=True)
        rows += bench_molecule(name, args)
    print(f"load at the end {os.getloadavg()}")
    if args.markdown:
        print("\n| molecule | nao | ngrid | entry | PySCF s | dixc s | PySCF/dixc | difference |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['molecule']} | {r['nao']} | {r['ngrid']} | {r['entry']} | "
                f"{r['pyscf_s']:.3f} | {r['dixc_s']:.3f} | {r['speedup']:.2f} | "
                f"{r['err']:.1e} {r['err_unit']} |"
            )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
