"""``make demo``: a self-consistent PBE calculation through dixc's kernels vs PySCF.

Later issues grow this into the full distillation pipeline (generate, train, evaluate).
"""

from __future__ import annotations

import argparse
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dixc demo", description=__doc__)
    p.add_argument("--molecule", default="qm9_acetamide")
    p.add_argument("--basis", default="def2-svp")
    p.add_argument("--xc", default="PBE")
    p.add_argument("--level", type=int, default=3)
    args = p.parse_args(argv)
    from dixc import ops

    print(ops.build_info(), f"| torch threads: {torch.get_num_threads()}")
    print(f"Self-consistent {args.xc}/{args.basis} on {args.molecule} (grid level {args.level})")
    r = run(args.molecule, args.basis, args.xc, args.level)
    print(f"nao = {r['nao']}, grid points = {r['ngrid']}")
    print(f"{'':8s} {'E (Hartree)':>22s} {'SCF time (s)':>13s} {'cycles':>7s}")
    for k in ("pyscf", "dixc"):
        v = r[k]
        print(f"{k:8s} {v['energy']:22.12f} {v['time']:13.2f} {v['cycles']:7d}")
    print(f"|E_dixc - E_pyscf| = {r['delta']:.2e} Hartree")
    if r["delta"] > 1e-8:
        print("FAIL: energies differ by more than 1e-8 Hartree")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
