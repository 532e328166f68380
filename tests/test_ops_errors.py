"""Edge cases and validation: zero sizes work; bad inputs raise errors naming the problem."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap

import pytest
import torch

import dixc
from dixc.molecules import mole
from dixc.ops import contract_vxc, contract_vxc_fused, eval_ao, eval_rho, eval_rho_fused

XCTYPES = ["LDA", "GGA", "MGGA"]
NFEAT = {"LDA": 1, "GGA": 4, "MGGA": 5}
ops = torch.ops.dixc
f64 = torch.float64


@pytest.fixture(scope="module")
def small():
    """Water / def2-SVP (nao 24, s/p/d shells) on 10 points, deriv-1 AOs."""
    basis = dixc.pack_basis(mole("water", "def2-svp"))
    coords = torch.randn(10, 3, dtype=f64, generator=torch.Generator().manual_seed(2))
    return basis, coords, eval_ao(basis, coords, 1)


# --- zero sizes ----------------------------------------------------------------------------------
@pytest.mark.parametrize("xctype", XCTYPES)
def test_empty_grid(small, xctype, device):
    basis, _, _ = small
    basis = basis.to(device)
    nao, nf = basis.nao, NFEAT[xctype]
    coords = torch.zeros(0, 3, dtype=f64, device=device)
    for deriv, ncomp in ((0, 1), (1, 4), (2, 10)):
        assert eval_ao(basis, coords, deriv).shape == (ncomp, nao, 0)
    ao = eval_ao(basis, coords, 1)
    dm = torch.randn(nao, nao, dtype=f64, device=device, requires_grad=True)
    wv = torch.zeros(nf, 0, dtype=f64, device=device, requires_grad=True)
    rho = eval_rho(ao, dm, xctype)
    rho_f = eval_rho_fused(basis, coords, dm, xctype)
    assert rho.shape == rho_f.shape == (nf, 0)
    v = contract_vxc(ao, wv, xctype)
    v_f = contract_vxc_fused(basis, coords, wv, xctype)
    assert v.shape == v_f.shape == (nao, nao)
    assert not v.any() and not v_f.any()
    # backward through an empty grid: zero gradients, no error
    (g,) = torch.autograd.grad(
        (rho.sum() + rho_f.sum() + v.sum() + v_f.sum()), dm, allow_unused=True
    )
    assert g is None or not g.any()
    (gw,) = torch.autograd.grad((v * dm).sum() + (v_f * dm).sum(), wv)
    assert gw.shape == (nf, 0)


@pytest.mark.parametrize("xctype", XCTYPES)
def test_zero_batch(small, xctype, device):
    basis, coords, ao = small
    basis, coords, ao = basis.to(device), coords.to(device), ao.to(device)
    nao, nf, ngrid = basis.nao, NFEAT[xctype], coords.shape[0]
    dm = torch.zeros(0, nao, nao, dtype=f64, device=device, requires_grad=True)
    wv = torch.zeros(0, nf, ngrid, dtype=f64, device=device, requires_grad=True)
    rho, rho_f = eval_rho(ao, dm, xctype), eval_rho_fused(basis, coords, dm, xctype)
    assert rho.shape == rho_f.shape == (0, nf, ngrid)
    v, v_f = contract_vxc(ao, wv, xctype), contract_vxc_fused(basis, coords, wv, xctype)
    assert v.shape == v_f.shape == (0, nao, nao)
    (g,) = torch.autograd.grad(rho.sum() + rho_f.sum(), dm)
    assert g.shape == (0, nao, nao)
    (gw,) = torch.autograd.grad(v.sum() + v_f.sum(), wv)
    assert gw.shape == (0, nf, ngrid)


def test_empty_basis():
    """A Mole without basis functions (e.g. a ghost-free empty system) gives nao = 0 outputs."""
    from pyscf import gto

    basis = dixc.pack_basis(gto.M(atom=[], verbose=0))
    coords = torch.zeros(5, 3, dtype=f64)
    ao = eval_ao(basis, coords, 1)
    assert ao.shape == (4, 0, 5)
    assert eval_rho(ao, torch.zeros(0, 0, dtype=f64), "MGGA").shape == (5, 5)
    assert not eval_rho(ao, torch.zeros(0, 0, dtype=f64), "MGGA").any()
    assert contract_vxc(ao, torch.ones(5, 5, dtype=f64), "MGGA").shape == (0, 0)


# --- shapes --------------------------------------------------------------------------------------
def test_nao_mismatch(small):
    basis, coords, ao = small
    with pytest.raises(
        RuntimeError, match=r"dm has shape \[23, 23\] but the AO basis has nao = 24"
    ):
        eval_rho(ao, torch.eye(23, dtype=f64), "GGA")
    with pytest.raises(RuntimeError, match=r"dm has shape \[2, 23, 23\].*nao = 24"):
        eval_rho(ao, torch.zeros(2, 23, 23, dtype=f64), "GGA")
    with pytest.raises(
        RuntimeError, match=r"eval_rho_fused: dm has shape \[23, 23\] but the AO basis has nao = 24"
    ):
        eval_rho_fused(basis, coords, torch.eye(23, dtype=f64), "GGA")


def test_nao_mismatch_fused_larger_dm(small):
    """A dm of a larger basis must not be silently truncated to the basis' AOs."""
    basis, coords, _ = small
    with pytest.raises((RuntimeError, ValueError), match=r"26.*24|24.*26"):
        eval_rho_fused(basis, coords, torch.eye(26, dtype=f64), "GGA")


def test_non_square_dm(small):
    _, _, ao = small
    with pytest.raises(RuntimeError, match=r"dm has shape \[24, 23\].*must be square"):
        eval_rho(ao, torch.zeros(24, 23, dtype=f64), "LDA")


@pytest.mark.parametrize("shape", [(24, 23), (23, 25)], ids=["24x23", "23x25"])
def test_non_square_dm_fused(small, shape):
    """The message must name the dm's shape and the basis' nao (24), not an nao read off the dm."""
    basis, coords, _ = small
    msg = rf"eval_rho_fused: dm has shape \[{shape[0]}, {shape[1]}\].*nao = 24"
    with pytest.raises(RuntimeError, match=msg):
        eval_rho_fused(basis, coords, torch.zeros(shape, dtype=f64), "LDA")


@pytest.mark.parametrize("shape", [(24,), (1, 1, 24, 24)])
def test_dm_rank(small, shape):
    basis, coords, ao = small
    dm = torch.zeros(shape, dtype=f64)
    msg = r"dm must be \(nao, nao\) or \(B, nao, nao\), got \[" + ", ".join(map(str, shape))
    with pytest.raises(RuntimeError, match=msg):
        eval_rho(ao, dm, "LDA")
    with pytest.raises(RuntimeError, match=msg):
        eval_rho_fused(basis, coords, dm, "LDA")


def test_wv_shapes(small):
    basis, coords, ao = small
    bad_rows = torch.zeros(4, 10, dtype=f64)
    msg = r"wv has shape \[4, 10\] but xctype='MGGA' needs 5 rows on 10 grid points"
    with pytest.raises(RuntimeError, match=msg):
        contract_vxc(ao, bad_rows, "MGGA")
    with pytest.raises(RuntimeError, match=msg):
        contract_vxc_fused(basis, coords, bad_rows, "MGGA")
    with pytest.raises(RuntimeError, match=r"wv has shape \[2, 4, 11\].*4 rows on 10 grid points"):
        contract_vxc(ao, torch.zeros(2, 4, 11, dtype=f64), "GGA")
    with pytest.raises(RuntimeError, match=r"wv must be \(nfeat, ngrid\) or \(B, nfeat, ngrid\)"):
        contract_vxc(ao, torch.zeros(10, dtype=f64), "LDA")


def test_ao_shapes(small):
    _, _, ao = small
    dm = torch.eye(24, dtype=f64)
    with pytest.raises(RuntimeError, match=r"ao must be \(ncomp, nao, ngrid\), got \[24, 10\]"):
        eval_rho(ao[0], dm, "LDA")
    msg = r"xctype='GGA' needs 4 AO components \(deriv >= 1\), got ao of shape \[1, 24, 10\]"
    with pytest.raises(RuntimeError, match=msg):
        eval_rho(ao[:1], dm, "GGA")
    with pytest.raises(RuntimeError, match=r"xctype='MGGA' needs 4 AO components"):
        contract_vxc(ao[:1], torch.zeros(5, 10, dtype=f64), "MGGA")


def test_coords_shape(small):
    basis, coords, _ = small
    with pytest.raises(RuntimeError, match=r"coords must be \(ngrid, 3\), got \[10, 2\]"):
        eval_ao(basis, coords[:, :2], 0)
    with pytest.raises(RuntimeError, match=r"eval_rho_fused: coords must be \(ngrid, 3\)"):
        eval_rho_fused(basis, coords[:, :2], torch.eye(24, dtype=f64), "LDA")
    with pytest.raises(RuntimeError, match=r"contract_vxc_fused: coords must be \(ngrid, 3\)"):
        contract_vxc_fused(basis, coords[:, 0], torch.zeros(1, 10, dtype=f64), "LDA")


@pytest.mark.parametrize("deriv", [3, -1])
def test_bad_deriv(small, deriv):
    basis, coords, _ = small
    with pytest.raises(RuntimeError, match=rf"deriv must be 0, 1 or 2, got {deriv}"):
        eval_ao(basis, coords, deriv)


# --- xctype and dtypes ---------------------------------------------------------------------------
def test_bad_xctype(small):
    basis, coords, ao = small
    dm, wv = torch.eye(24, dtype=f64), torch.zeros(4, 10, dtype=f64)
    for call in (
        lambda x: eval_rho(ao, dm, x),
        lambda x: contract_vxc(ao, wv, x),
        lambda x: eval_rho_fused(basis, coords, dm, x),
        lambda x: contract_vxc_fused(basis, coords, wv, x),
    ):
        with pytest.raises(ValueError, match=r"xctype must be one of .*got 'PBE'"):
            call("PBE")
    # the raw ops check too (no Python wrapper in between), and are case-sensitive
    msg = r"xctype must be 'LDA', 'GGA' or 'MGGA', got 'gga'"
    with pytest.raises(RuntimeError, match=msg):
        ops.eval_rho(ao, dm, "gga")
    with pytest.raises(RuntimeError, match=msg):
        ops.contract_vxc(ao, wv, "gga")
    with pytest.raises(RuntimeError, match=msg):
        ops.eval_rho_fused(coords, *basis.tensors, dm, "gga", basis.nao, basis.cart)
    with pytest.raises(RuntimeError, match=msg):
        ops.contract_vxc_fused(coords, *basis.tensors, wv, "gga", basis.nao, basis.cart)
    # the wrappers accept PySCF's lower-case spelling
    assert torch.equal(eval_rho(ao, dm, "gga"), eval_rho(ao, dm, "GGA"))


def test_integer_dtypes(small):
    basis, coords, ao = small
    with pytest.raises(RuntimeError, match=r"eval_rho: ao must be float64 or float32, got Long"):
        eval_rho(ao.long(), torch.eye(24).long(), "LDA")
    with pytest.raises(RuntimeError, match=r"eval_ao: coords must be float64 or float32, got Int"):
        eval_ao(basis, coords.int(), 0)
    with pytest.raises(RuntimeError, match=r"eval_rho_fused: dm must be float64 or float32"):
        eval_rho_fused(basis, coords, torch.eye(24).long(), "LDA")
    with pytest.raises(RuntimeError, match=r"contract_vxc_fused: wv must be float64 or float32"):
        contract_vxc_fused(basis, coords, torch.zeros(1, 10).long(), "LDA")
    with pytest.raises(RuntimeError, match=r"eval_rho: ao must be float64 or float32, got Half"):
        eval_rho(ao.half(), torch.eye(24).half(), "LDA")


def test_dtype_mismatch(small):
    _, _, ao = small
    with pytest.raises(
        RuntimeError, match=r"ao \(Double\) and dm \(Float\) must have the same dtype"
    ):
        eval_rho(ao, torch.eye(24), "LDA")
    with pytest.raises(
        RuntimeError, match=r"ao \(Double\) and dm \(Long\) must have the same dtype"
    ):
        eval_rho(ao, torch.eye(24).long(), "LDA")
    with pytest.raises(
        RuntimeError, match=r"ao \(Float\) and wv \(Double\) must have the same dtype"
    ):
        contract_vxc(ao.float(), torch.zeros(1, 10, dtype=f64), "LDA")


def test_fused_output_dtype_follows_dm(small):
    """Fused ops evaluate AOs in float64 from any float coords; the output has the dm's dtype."""
    basis, coords, _ = small
    dm = torch.eye(24, dtype=f64)
    rho = eval_rho_fused(basis, coords.float(), dm, "LDA")
    assert rho.dtype == f64
    assert torch.allclose(rho, eval_rho_fused(basis, coords.float().double(), dm, "LDA"))


# --- corrupted basis tensors ---------------------------------------------------------------------
def _bas(basis, row, col, value):
    bas = basis.bas.clone()
    bas[row, col] = value
    return dataclasses.replace(basis, bas=bas)


CORRUPTIONS = {
    "l=9": (lambda b: _bas(b, 2, 0, 9), r"shell 2 has angular momentum l = 9; .*0 <= l <= 6"),
    "l=-1": (lambda b: _bas(b, 2, 0, -1), r"shell 2 has angular momentum l = -1"),
    "prim_offset": (
        lambda b: _bas(b, 1, 2, 10**6),
        r"shell 1 .*prim_offset = 1000000 outside prim",
    ),
    "prim_offset<0": (lambda b: _bas(b, 1, 2, -5), r"prim_offset = -5 outside prim"),
    "nprim=0": (lambda b: _bas(b, 1, 1, 0), r"shell 1 has nprim = 0"),
    "nprim huge": (lambda b: _bas(b, 1, 1, 10**9), r"nprim = 1000000000.* outside prim"),
    "ao_offset": (
        lambda b: _bas(b, -1, 3, 24),
        r"ao_offset = 24 but the previous shells end at AO 21",
    ),
    "ao_offset<0": (
        lambda b: _bas(b, 0, 3, -1),
        r"ao_offset = -1 but the previous shells end at AO 0",
    ),
    "bas float": (
        lambda b: dataclasses.replace(b, bas=b.bas.double()),
        r"basis tensor 'bas' must be Long, got Double",
    ),
    "bas columns": (
        lambda b: dataclasses.replace(b, bas=b.bas[:, :3]),
        r"bas must be \(nshell, 4\)",
    ),
    "bas_coord rows": (
        lambda b: dataclasses.replace(b, bas_coord=b.bas_coord[:-1]),
        r"bas_coord must be \(\d+, 3\), got \[\d+, 3\]",
    ),
    "bas_coord float32": (
        lambda b: dataclasses.replace(b, bas_coord=b.bas_coord.float()),
        r"basis tensor 'bas_coord' must be Double, got Float",
    ),
    "prim columns": (
        lambda b: dataclasses.replace(b, prim=b.prim[:, :1]),
        r"prim must be \(nprim, 2\)",
    ),
    "rcut size": (
        lambda b: dataclasses.replace(b, rcut=b.rcut[:-1]),
        r"rcut must be \(\d+,\), got \[\d+\]",
    ),
    "c2s short": (
        lambda b: dataclasses.replace(b, c2s=b.c2s[:10]),
        r"c2s has 10 entries but l = 2 needs 40",
    ),
    "nao<0": (lambda b: dataclasses.replace(b, nao=-1), r"nao must be >= 0, got -1"),
}


# eval_rho_fused reads nao off the dm, so a corrupted Basis.nao does not reach it.
_CORRUPTION_CASES = [
    (key, op)
    for key in CORRUPTIONS
    for op in ("eval_ao", "eval_rho_fused", "contract_vxc_fused")
    if not (key == "nao<0" and op == "eval_rho_fused")
]


@pytest.mark.parametrize(("key", "op"), _CORRUPTION_CASES)
def test_corrupted_basis(small, key, op):
    basis, coords, _ = small
    corrupt, msg = CORRUPTIONS[key]
    bad = corrupt(basis)
    with pytest.raises(RuntimeError, match=rf"dixc\.{op}: .*{msg}"):
        if op == "eval_ao":
            eval_ao(bad, coords, 1)
        elif op == "eval_rho_fused":
            eval_rho_fused(bad, coords, torch.eye(24, dtype=f64), "GGA")
        else:
            contract_vxc_fused(bad, coords, torch.ones(4, 10, dtype=f64), "GGA")


def _run_isolated(script: str) -> subprocess.CompletedProcess:
    """Runs a script in a fresh interpreter (a crash there cannot take the test session down)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=120
    )


def test_bad_inputs_do_not_crash_the_interpreter():
    """A battery of bad calls (some unchecked nonsense) in a fresh interpreter exits cleanly."""
    res = _run_isolated(
        """
        import dataclasses, torch, dixc
        from dixc.molecules import mole
        from dixc.ops import eval_ao, eval_rho, eval_rho_fused, contract_vxc_fused
        b = dixc.pack_basis(mole("water", "def2-svp"))
        x = torch.randn(300, 3, dtype=torch.float64)
        dm = torch.eye(24, dtype=torch.float64)
        calls = []
        for row in range(b.nshell):
            for col, val in ((0, 7), (0, 2**40), (1, -3), (2, 2**62), (3, 2**62), (3, -2**62)):
                bas = b.bas.clone(); bas[row, col] = val
                bad = dataclasses.replace(b, bas=bas)
                calls.append(lambda bad=bad: eval_ao(bad, x, 2))
                calls.append(lambda bad=bad: eval_rho_fused(bad, x, dm, "MGGA"))
        n_rejected = len(calls)
        nan = torch.full((4, 3), float("nan"), dtype=torch.float64)
        calls.append(lambda: eval_ao(b, nan, 2))
        calls.append(lambda: eval_ao(dataclasses.replace(b, rcut=-b.rcut), x, 2))
        calls.append(lambda: eval_rho(torch.zeros(4, 24, 0), torch.zeros(3, 24, 24), "MGGA"))
        w = torch.zeros(2, 5, 300, dtype=torch.float64)
        calls.append(lambda: contract_vxc_fused(b, x, w, "MGGA"))
        n_err = 0
        for c in calls:
            try:
                c()
            except (RuntimeError, ValueError):
                n_err += 1
        print("survived", n_rejected, n_err)
        """
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith("survived"), res.stdout
    n_rejected, n_err = map(int, res.stdout.split()[1:])
    assert n_err == n_rejected  # every corrupted bas row is rejected, the rest runs


@pytest.mark.parametrize("col", [1, 2, 3], ids=["nprim", "prim_offset", "ao_offset"])
def test_basis_offsets_near_int64_max_rejected(col):
    """Offsets/counts of 2**63 - 1 must be rejected, not wrap around in the range checks."""
    res = _run_isolated(
        f"""
        import dataclasses, torch, dixc
        from dixc.molecules import mole
        b = dixc.pack_basis(mole("water", "def2-svp"))
        bas = b.bas.clone()
        bas[0, {col}] = 2**63 - 1  # shell 0: 5 primitives, one AO
        x = torch.zeros(8, 3, dtype=torch.float64)
        try:
            dixc.ops.eval_ao(dataclasses.replace(b, bas=bas), x, 0)
            print("accepted")
        except RuntimeError as err:
            print("rejected:", err)
        """
    )
    assert res.returncode == 0, f"interpreter died (rc {res.returncode}): {res.stderr[-500:]}"
    assert res.stdout.startswith("rejected: dixc.eval_ao: shell 0"), res.stdout


# --- devices -------------------------------------------------------------------------------------
def test_check_device_names():
    from dixc.ops import check_device

    assert check_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        check_device("gpu0")
    with pytest.raises(ValueError, match="dixc's kernels run on cpu and cuda only"):
        check_device("meta")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the errors of a machine without CUDA")
def test_cuda_device_without_cuda_is_one_clear_error(tmp_path):
    """``--device cuda`` here: every command stops at once with exit status 2 and the fix (it
    was a traceback from torch's lazy CUDA init, or one failure per molecule in evaluate)."""
    from dixc import generate
    from dixc.generate import GenerateConfig
    from dixc.ops import check_device
    from dixc.reference import ReferenceConfig

    want = "CPU-only build" if torch.version.cuda is None else "no CUDA GPU is visible"
    with pytest.raises(ValueError, match=want):
        check_device("cuda")
    xyz = tmp_path / "water.xyz"
    xyz.write_text("3\nwater\nO 0 0 0.1178\nH 0 0.7555 -0.4712\nH 0 -0.7555 -0.4712\n")
    cfg = GenerateConfig(
        out=str(tmp_path / "data"),
        source=[str(xyz)],
        threads=1,
        progress=False,
        reference=ReferenceConfig(basis="sto-3g", grid_level=0, k_grad=0, k_hess=0),
    )
    assert generate.generate(cfg).n_done == 1
    data = str(tmp_path / "data")
    for args in (
        ["run", "pbe", str(xyz)],
        ["train", "--data", data, "--out", str(tmp_path / "run"), "--arch", "xcdiff"],
        ["evaluate", "--functional", "pbe", "--data", data, "--out", str(tmp_path / "ev")],
    ):
        r = subprocess.run(
            [sys.executable, "-m", "dixc.cli", *args, "--device", "cuda", "--no-progress"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 2 and want in r.stderr and "Traceback" not in r.stderr, (
            args[0],
            r.stderr,
        )
