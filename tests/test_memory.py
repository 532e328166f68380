"""Memory: the fused ops never hold the (nao, ngrid) AO array.

C33H68 (101 atoms, def2-SVP, nao 802) on a level-3 grid (~1.1 M points): the dense GGA AO array
alone would take 4 * 802 * 1.1e6 * 8 B ~ 29 GB. eval_rho_fused + contract_vxc_fused must run in
under 4 GB peak RSS for the whole process (Python, torch, PySCF and the grid included). Measured in
a fresh interpreter with ``ru_maxrss`` (tracemalloc does not see torch's allocations).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

LIMIT_BYTES = 4 * 1024**3

_SCRIPT = textwrap.dedent(
    """
    import json, resource, time
    import numpy as np, torch, dixc
    from dixc.molecules import mole

    def peak():  # ru_maxrss is in KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    mol = mole("alkane33", "def2-svp")
    basis = dixc.pack_basis(mol)
    grid, _ = dixc.make_grid(mol, level=3)
    gen = torch.Generator().manual_seed(0)
    d = 0.01 * torch.randn(mol.nao, mol.nao, generator=gen, dtype=torch.float64)
    dm = 0.5 * (d + d.T)
    before = peak()
    t0 = time.perf_counter()
    rho = dixc.ops.eval_rho_fused(basis, grid.coords, dm, "GGA")
    t1 = time.perf_counter()
    wv = rho * grid.weights
    v = dixc.ops.contract_vxc_fused(basis, grid.coords, wv, "GGA")
    t2 = time.perf_counter()
    s = mol.intor("int1e_ovlp")
    print(json.dumps({
        "natm": mol.natm, "nao": mol.nao, "ngrid": grid.ngrid,
        "peak_before": before, "peak": peak(),
        "t_rho": t1 - t0, "t_vxc": t2 - t1,
        "rho_shape": list(rho.shape), "v_shape": list(v.shape),
        "v_asym": float((v - v.T).abs().max()),
        "lhs": float((rho * wv).sum()), "rhs": float((dm * v).sum()),
        "nelec": float((rho[0] * grid.weights).sum()), "tr_ds": float(np.sum(dm.numpy() * s)),
        "scale": float(np.sum(np.abs(dm.numpy() * s))),
    }))
    """
)


@pytest.mark.slow
def test_fused_gga_on_101_atoms_stays_under_4gb():
    res = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(res.stdout.strip().splitlines()[-1])
    assert r["natm"] == 101 and r["nao"] == 802
    assert r["ngrid"] > 10**6
    dense_ao_bytes = 4 * r["nao"] * r["ngrid"] * 8
    assert dense_ao_bytes > 5 * LIMIT_BYTES  # the dense path could not run within the limit
    print(
        f"ngrid {r['ngrid']}: peak RSS {r['peak'] / 2**20:.0f} MiB "
        f"(before the ops {r['peak_before'] / 2**20:.0f} MiB); "
        f"eval_rho_fused {r['t_rho']:.1f} s, contract_vxc_fused {r['t_vxc']:.1f} s"
    )
    assert r["peak"] < LIMIT_BYTES, f"peak RSS {r['peak'] / 2**30:.2f} GiB"
    # and the results are sane: shapes, symmetric V, adjoint pairing, quadrature of rho
    assert r["rho_shape"] == [4, r["ngrid"]] and r["v_shape"] == [802, 802]
    assert r["v_asym"] == 0.0
    assert abs(r["lhs"] - r["rhs"]) <= 1e-12 * abs(r["lhs"])
    assert abs(r["nelec"] - r["tr_ds"]) <= 1e-6 * r["scale"]
