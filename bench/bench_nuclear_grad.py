"""XC terms of analytic nuclear gradients: dixc (any functional) vs PySCF (libxc), side by side.

For each molecule (def2-SVP, grid level 3, PySCF PBE's converged density), interleaved timing
(median of ``--repeat``) of the XC part of the nuclear gradient, with the grid response
(``get_vxc_full_response``) and without (``get_vxc``):

* PySCF with libxc PBE (its own ``NumInt``): the peer;
* dixc with Torch PBE (``dixc.nuclear_grad`` through the PySCF drop-in): error vs the peer;
* dixc with XCdiff (learned meta-GGA) and EG-XC (nonlocal; grid response only): no peer exists
  (PySCF has no nonlocal-functional gradients); their time next to one V_xc evaluation.

With ``--excited``: the excited-state (TDA, first singlet) gradient instead, PySCF's code with libxc
PBE vs dixc's PBE and XCdiff as drop-ins (XC matrices from directional derivatives by autograd,
``nuclear_grad.td_xc_kernel_terms``), same amplitudes, each also with dixc's grid response added
(``nuclear_grad.with_grid_response``; PySCF has none), and EG-XC (nonlocal; with it only).

Run with ``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=68719476736`` (glibc's malloc
otherwise page-faults on large torch allocations on these VMs)::

    python bench/bench_nuclear_grad.py --molecules water ethanol qm9_lactonitrile benzene
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


def bench_molecule(name: str, repeat: int, basis: str, level: int) -> list[dict]:
    from pyscf import dft
    from pyscf.grad import rks as rks_grad

    import dixc.functionals
    from dixc import pyscf_plugin
    from dixc.molecules import mole
    from dixc.xc import _exc_vxc_rho

    mol = mole(name, basis)
    ref = dft.RKS(mol, xc="PBE")
    ref.grids.level, ref.conv_tol, ref.verbose = level, 1e-10, 0
    ref.kernel()
    grids, dm = ref.grids, ref.make_rdm1()
    native = {
        True: rks_grad.get_vxc_full_response._dixc_original,
        False: rks_grad.get_vxc._dixc_original,
    }
    routed = {True: rks_grad.get_vxc_full_response, False: rks_grad.get_vxc}
    torch.manual_seed(0)
    rows = []
    for fname in ("pbe", "xcdiff", "egxc"):
        f = dixc.functionals.create(fname)
        ni = pyscf_plugin.TorchNumInt(f)
        ctx = ni.context(mol, grids)
        d = torch.as_tensor(dm)

        def vxc(ctx=ctx, f=f, d=d):
            return _exc_vxc_rho(ctx, f, d)

        for response in (True, False):
            if response is False and not f.is_local:
                continue

            def ours(response=response, ni=ni):
                return routed[response](ni, mol, grids, "x", dm)

            fns = [ours, vxc]
            if fname == "pbe":

                def peer(response=response):
                    return native[response](ref._numint, mol, grids, "PBE", dm)

                fns.append(peer)
            times = time_interleaved(fns, repeat=repeat, warmup=1)
            med = [statistics.median(t) * 1e3 for t in times]
            row = {
                "molecule": name,
                "atoms": mol.natm,
                "nao": mol.nao,
                "grid": int(grids.weights.size),
                "functional": fname,
                "response": response,
                "dixc_ms": med[0],
                "vxc_ms": med[1],
                "pyscf_ms": med[2] if len(med) > 2 else float("nan"),
                "err": float("nan"),
            }
            if fname == "pbe":
                e1, v1 = ours()
                e2, v2 = fns[2]()
                err = np.abs(v1 - v2).max()
                if e2 is not None:
                    err = max(err, np.abs(e1 - e2).max())
                row["err"] = float(err)
            rows.append(row)
            print(
                f"{name:18s} {fname:7s} response={response!s:5s} dixc {med[0]:8.1f} ms  "
                f"V_xc {med[1]:8.1f} ms  PySCF {row['pyscf_ms']:8.1f} ms  err {row['err']:.1e}",
                flush=True,
            )
    return rows


def bench_excited(name: str, repeat: int, basis: str, level: int) -> list[dict]:
    """Excited-state (TDA, first singlet) nuclear gradient: PySCF with libxc PBE vs the same code
    with dixc's PBE, a learned meta-GGA (XCdiff) and EG-XC (nonlocal) as drop-ins, at PySCF PBE's
    orbitals and TDA amplitudes."""
    from pyscf import dft

    import dixc.functionals
    from dixc import pyscf_plugin
    from dixc.molecules import mole
    from dixc.nuclear_grad import with_grid_response

    mol = mole(name, basis)
    ref = dft.RKS(mol, xc="PBE")
    ref.grids.level, ref.conv_tol, ref.verbose = level, 1e-10, 0
    ref.kernel()
    td_ref = ref.TDA()
    td_ref.nstates, td_ref.verbose = 1, 0
    td_ref.kernel()
    torch.manual_seed(0)
    grads = {"pyscf": td_ref.nuc_grad_method()}
    for fname in ("pbe", "xcdiff", "egxc"):
        mf = pyscf_plugin.RKS(mol, dixc.functionals.create(fname), verbose=0)
        mf.grids = ref.grids
        mf.mo_coeff, mf.mo_energy, mf.mo_occ = ref.mo_coeff, ref.mo_energy, ref.mo_occ
        td = mf.TDA()
        td.e, td.xy, td.nstates, td.converged = td_ref.e, td_ref.xy, 1, td_ref.converged
        if fname != "egxc":  # nonlocal: only with the grid response (its explicit terms)
            grads[fname] = td.nuc_grad_method()
        grads[f"{fname}_response"] = with_grid_response(td.nuc_grad_method())
    for g in grads.values():
        g.verbose = 0
    names = list(grads)
    fns = [lambda g=grads[k]: g.kernel(state=1) for k in names]
    times = time_interleaved(fns, repeat=repeat, warmup=1)
    med = {k: statistics.median(t) * 1e3 for k, t in zip(names, times, strict=True)}
    g_ref, g_pbe, g_resp = (fns[names.index(k)]() for k in ("pyscf", "pbe", "pbe_response"))
    err = float(np.abs(g_pbe - g_ref).max())
    response = float(np.abs(g_resp - g_pbe).max())
    print(f"{name:18s} TDA gradient: PySCF {med['pyscf']:8.1f} ms  dixc PBE {med['pbe']:8.1f} ms"
          f" (+ grid response {med['pbe_response']:8.1f} ms)  XCdiff {med['xcdiff']:8.1f} ms"
          f" (+ grid response {med['xcdiff_response']:8.1f} ms)  EG-XC {med['egxc_response']:8.1f}"
          f" ms  err {err:.1e}"
          f"  response {response:.1e}", flush=True)  # fmt: skip
    row = {"molecule": name, "atoms": mol.natm, "nao": mol.nao, "grid": ref.grids.weights.size}
    return [{**row, **{f"{k}_ms": v for k, v in med.items()}, "err": err, "response": response}]


def markdown_excited(rows: list[dict]) -> str:
    out = [
        "| molecule | atoms | nao | grid | PySCF (libxc PBE) ms | dixc PBE ms | ratio "
        "| max abs err | dixc XCdiff ms | + grid response: PBE ms | XCdiff ms | max response "
        "| EG-XC (nonlocal) ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [r["molecule"], r["atoms"], r["nao"], r["grid"], f"{r['pyscf_ms']:.0f}",
                 f"{r['pbe_ms']:.0f}", f"{r['pbe_ms'] / r['pyscf_ms']:.2f}", f"{r['err']:.1e}",
                 f"{r['xcdiff_ms']:.0f}", f"{r['pbe_response_ms']:.0f}",
                 f"{r['xcdiff_response_ms']:.0f}", f"{r['response']:.1e}",
                 f"{r['egxc_response_ms']:.0f}"]  # fmt: skip
        out.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(out)


def markdown(rows: list[dict]) -> str:
    out = [
        "| molecule | atoms | nao | grid | functional | grid response | dixc ms | PySCF (libxc "
        "PBE) ms | ratio | max abs err | one V_xc ms | gradient / V_xc |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(x: float, spec: str) -> str:
        return "-" if x != x else format(x, spec)

    for r in rows:
        ratio = r["dixc_ms"] / r["pyscf_ms"]
        cells = [r["molecule"], r["atoms"], r["nao"], r["grid"], r["functional"],
                 "yes" if r["response"] else "no", fmt(r["dixc_ms"], ".0f"),
                 fmt(r["pyscf_ms"], ".0f"), fmt(ratio, ".2f"), fmt(r["err"], ".1e"),
                 fmt(r["vxc_ms"], ".0f"), fmt(r["dixc_ms"] / r["vxc_ms"], ".1f")]  # fmt: skip
        out.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--molecules", nargs="+", default=["water", "ethanol", "qm9_lactonitrile"])
    p.add_argument("--basis", default="def2-svp")
    p.add_argument("--grid-level", type=int, default=3)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--excited", action="store_true", help="excited-state (TDA) gradients instead")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name in args.molecules:
        if args.excited:
            rows += bench_excited(name, args.repeat, args.basis, args.grid_level)
        else:
            rows += bench_molecule(name, args.repeat, args.basis, args.grid_level)
    print()
    print(markdown_excited(rows) if args.excited else markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
