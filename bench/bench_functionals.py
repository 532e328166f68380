"""The four learnable architectures side by side with classical PBE: cost per evaluation.

Per architecture and molecule (def2-SVP, PySCF grid level ``--level``, float64, default
hyperparameters, weights perturbed from the physics initialisation so the networks are
non-trivial), timed interleaved (median of ``--repeat``) in one process:

* parameters;
* forward: E_xc from precomputed density features (the network alone);
* V_xc: E_xc and the potential matrix from a density matrix (features via ``eval_rho``, autograd
  back through ``contract_vxc``): one Fock-build's XC part;
* HVP: the XC part of one orbital-Hessian-vector product, f_xc[dD], at a fresh density (kernel
  set-up + one probe: the Hessian loss's per-probe cost on a new molecule; the Coulomb part is
  stored with the reference data), and 16 probes batched.

``--scaling`` adds EG-XC's cost vs molecule size (alkane chains), with the number of
(point, atom) pairs inside its cutoff, to show the nonlocal part stays linear in grid size.

Run with ``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=68719476736`` (glibc's malloc
page-faults on large torch allocations on these VMs otherwise)::

    python bench/bench_functionals.py --molecules ethanol alkane14 --markdown
    python bench/bench_functionals.py --scaling --markdown
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from registry import time_interleaved

ARCHS = ["nnmgga", "xcdiff", "skala_mgga", "egxc"]


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--archs", nargs="+", default=["pbe", *ARCHS])
    p.add_argument("--molecules", nargs="+", default=["ethanol", "alkane14"])
    p.add_argument("--basis", default="def2-svp")
    p.add_argument("--level", type=int, default=3)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--probes", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--scaling", action="store_true", help="EG-XC time vs alkane chain length")
    p.add_argument("--chains", nargs="+", type=int, default=[2, 4, 8, 16])
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def _ms(ts) -> float:
    return statistics.median(ts) * 1e3


def _functional(name: str, device):
    import dixc.functionals as F

    torch.manual_seed(0)
    f = F.create(name)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in f.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return f.to(device)


def bench_molecule(mol_name: str, args) -> list[dict]:
    from pyscf import dft

    from dixc.context import MolContext
    from dixc.molecules import mole
    from dixc.xc import XCKernel, exc_vxc

    mol = mole(mol_name, args.basis)
    ctx = MolContext.from_mol(mol, grid_level=args.level, coulomb="none", device=args.device)
    nocc = ctx.nocc
    mf = dft.RKS(mol, xc="PBE")
    mf.grids = ctx.grids
    mf.verbose = 0
    mf.kernel()
    c = torch.as_tensor(mf.mo_coeff, device=args.device)
    dm = torch.as_tensor(mf.make_rdm1(), device=args.device)
    rho = ctx.eval_rho(dm, "MGGA").detach()
    nvir = c.shape[1] - nocc
    gen = torch.Generator().manual_seed(2)
    xs = torch.randn(args.probes, nvir, nocc, generator=gen, dtype=torch.float64).to(args.device)
    co, cv = c[:, :nocc], c[:, nocc:]
    dd = 2 * (cv @ xs @ co.T)
    dd = dd + dd.transpose(-1, -2)  # the probes' first-order density changes (probes, nao, nao)
    rows = []
    for name in args.archs:
        f = _functional(name, args.device)
        nparam = sum(p.numel() for p in f.parameters())

        def forward(f=f):
            with torch.no_grad():
                return f(rho, ctx.grid)

        def vxc(f=f):
            return exc_vxc(ctx, f, dm)

        def hvp1(f=f):
            return XCKernel(ctx, f, dm)(dd[0])

        def hvp16(f=f):
            return XCKernel(ctx, f, dm)(dd)

        t = time_interleaved([forward, vxc, hvp1, hvp16], repeat=args.repeat)
        row = {
            "molecule": mol_name,
            "natm": mol.natm,
            "nao": mol.nao,
            "ngrid": ctx.grid.ngrid,
            "arch": name,
            "params": nparam,
            "forward_ms": _ms(t[0]),
            "vxc_ms": _ms(t[1]),
            "hvp1_ms": _ms(t[2]),
            f"hvp{args.probes}_ms": _ms(t[3]),
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    return rows


def bench_scaling(args) -> list[dict]:
    from dixc.context import MolContext
    from dixc.molecules import mole
    from dixc.xc import exc_vxc

    rows = []
    for n in args.chains:
        mol = mole(f"alkane{n}", args.basis)
        ctx = MolContext.from_mol(mol, grid_level=args.level, coulomb="none", device=args.device)
        dm = torch.as_tensor(mol.RKS().get_init_guess(key="minao"), device=args.device)
        rho = ctx.eval_rho(dm, "MGGA").detach()
        f = _functional("egxc", args.device)

        def forward(f=f, rho=rho, ctx=ctx):
            with torch.no_grad():
                return f(rho, ctx.grid)

        def vxc(f=f, ctx=ctx, dm=dm):
            return exc_vxc(ctx, f, dm)

        t = time_interleaved([forward, vxc], repeat=args.repeat)
        pairs = getattr(f, "neighbour_pairs", None)
        row = {
            "molecule": f"C{n}H{2 * n + 2}",
            "natm": mol.natm,
            "nao": mol.nao,
            "ngrid": ctx.grid.ngrid,
            "pairs": pairs(ctx.grid) if callable(pairs) else None,
            "forward_ms": _ms(t[0]),
            "vxc_ms": _ms(t[1]),
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    return rows


def _table(rows: list[dict], markdown: bool) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    fmt = [
        ", ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items())
        for r in rows
    ]
    if not markdown:
        return "\n".join(fmt)
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = [f"{r[k]:.1f}" if isinstance(r[k], float) else str(r[k]) for k in keys]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    args = _parse(argv)
    torch.set_default_dtype(torch.float64)
    print(f"# torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}")
    result = {}
    if args.scaling:
        result["scaling"] = bench_scaling(args)
        print(_table(result["scaling"], args.markdown))
    else:
        rows = [r for m in args.molecules for r in bench_molecule(m, args)]
        result["archs"] = rows
        print(_table(rows, args.markdown))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
