"""CUDA kernels against the CPU kernels (float64 1e-11, float32 1e-5 relative), on a GPU only.

The device-parametrised tests of the other modules run every op on CUDA at small sizes; these
add what they do not cover: many grid blocks with a partial last one, larger molecules and
l <= 6, float32 for every op and batched, the basis left on the CPU while the data is on the GPU,
non-default streams, device mismatches, double backward (HVPs) on the GPU, a second GPU.
"""

from __future__ import annotations

import pytest
import torch

import dixc
from _util import rel_err, rel_err_rows, system
from dixc.molecules import mole
from dixc.ops import contract_vxc, contract_vxc_fused, eval_ao, eval_rho, eval_rho_fused

pytestmark = pytest.mark.gpu

XCTYPES = ["LDA", "GGA", "MGGA"]
NFEAT = {"LDA": 1, "GGA": 4, "MGGA": 5}
TOL64, TOL32 = 1e-11, 1e-5
CUDA = torch.device("cuda")


def _inputs(s, nset: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    dm = torch.randn(nset, s.nao, s.nao, generator=gen, dtype=torch.float64)
    wv = torch.randn(nset, 5, s.grid.ngrid, generator=gen, dtype=torch.float64)
    return dm, wv


@pytest.fixture(scope="module")
def big():
    """Lactonitrile / def2-SVP cartesian on 6000 level-1 points: several 1024-point blocks."""
    return system("qm9_lactonitrile", "def2-svp", True, 1, 6000)


@pytest.fixture(scope="module")
def level3():
    """Water / def2-TZVP on its whole level-3 grid (~30k points, partial last block)."""
    return system("water", "def2-tzvp", False, 3)


@pytest.mark.parametrize("xctype", XCTYPES)
@pytest.mark.parametrize("key", ["big", "level3"])
def test_cuda_equals_cpu(key, xctype, request):
    s = request.getfixturevalue(key)
    nf = NFEAT[xctype]
    dm, wv = _inputs(s)
    w = wv[:, :nf]
    ao = eval_ao(s.basis, s.grid.coords, 1)
    b_d, x_d, ao_d, dm_d, w_d = (
        s.basis.to(CUDA),
        s.grid.coords.cuda(),
        ao.cuda(),
        dm.cuda(),
        w.cuda(),
    )
    assert max(rel_err_rows(eval_ao(b_d, x_d, 1), ao)) <= TOL64
    rho_ref = eval_rho(ao, dm, xctype)
    v_ref = contract_vxc(ao, w, xctype)
    assert rel_err(eval_rho(ao_d, dm_d, xctype), rho_ref) <= TOL64
    assert rel_err(eval_rho_fused(b_d, x_d, dm_d, xctype), rho_ref) <= TOL64
    v = contract_vxc(ao_d, w_d, xctype)
    v_f = contract_vxc_fused(b_d, x_d, w_d, xctype)
    assert rel_err(v, v_ref) <= TOL64 and rel_err(v_f, v_ref) <= TOL64
    assert torch.equal(v_f, v_f.transpose(-1, -2)) and torch.equal(v, v.transpose(-1, -2))


@pytest.mark.parametrize("cart", [False, True], ids=["sph", "cart"])
def test_high_l_cuda(cart):
    from pyscf import gto

    basis = {
        "Ne": [[0, [3.0, 1.0]], [4, [1.3, 1.0]], [5, [0.9, 0.7], [2.5, 0.3]], [6, [1.1, 1.0]]],
        "H": [[0, [1.0, 1.0]], [6, [0.7, 1.0]]],
    }
    mol = gto.M(atom="Ne 0 0 0; H 0 0.3 1.4", basis=basis, cart=cart, spin=1, verbose=0)
    b = dixc.pack_basis(mol)
    grid, _ = dixc.make_grid(mol, level=1)
    pts = grid.coords[:: max(1, grid.ngrid // 3000)].contiguous()
    for deriv in (0, 1, 2):
        ref = eval_ao(b, pts, deriv)
        assert max(rel_err_rows(eval_ao(b.to(CUDA), pts.cuda(), deriv), ref)) <= TOL64
    dm = torch.randn(b.nao, b.nao, dtype=torch.float64)
    ref = eval_rho_fused(b, pts, dm, "MGGA")
    assert rel_err(eval_rho_fused(b.to(CUDA), pts.cuda(), dm.cuda(), "MGGA"), ref) <= TOL64


@pytest.mark.parametrize("xctype", XCTYPES)
def test_float32_cuda(big, xctype):
    """Every op in float32 on the GPU, batched and single, against float64 on the CPU."""
    s = big
    nf = NFEAT[xctype]
    dm, wv = _inputs(s)
    w = wv[:, :nf]
    ao = eval_ao(s.basis, s.grid.coords, 1)
    b_d, x32 = s.basis.to(CUDA), s.grid.coords.float().cuda()
    ao32 = eval_ao(b_d, x32, 1)
    assert ao32.dtype == torch.float32
    assert max(rel_err_rows(ao32, eval_ao(s.basis, s.grid.coords.float().double(), 1))) <= TOL32
    x_d, ao_d = s.grid.coords.cuda(), ao.cuda()
    for sl in (slice(None), 1):
        d32, w32 = dm[sl].float().cuda(), w[sl].float().cuda()
        rho_ref, v_ref = eval_rho(ao, dm[sl], xctype), contract_vxc(ao, w[sl], xctype)
        outs = [
            (eval_rho(ao_d.float(), d32, xctype), rho_ref),
            (eval_rho_fused(b_d, x_d, d32, xctype), rho_ref),
            (contract_vxc(ao_d.float(), w32, xctype), v_ref),
            (contract_vxc_fused(b_d, x_d, w32, xctype), v_ref),
        ]
        for out, ref in outs:
            assert out.dtype == torch.float32 and out.device.type == "cuda"
            assert rel_err(out, ref) <= TOL32


def test_batch_of_16_equals_loop(level3):
    """16 probes in one call (one GEMM per block) equal 16 single calls, on the GPU."""
    s = level3
    gen = torch.Generator().manual_seed(4)
    dms = torch.randn(16, s.nao, s.nao, generator=gen, dtype=torch.float64).cuda()
    wv = torch.randn(16, 5, s.grid.ngrid, generator=gen, dtype=torch.float64).cuda()
    b, x = s.basis.to(CUDA), s.grid.coords.cuda()
    rho = eval_rho_fused(b, x, dms, "MGGA")
    v = contract_vxc_fused(b, x, wv, "MGGA")
    assert rel_err(rho, torch.stack([eval_rho_fused(b, x, d, "MGGA") for d in dms])) <= 1e-13
    assert rel_err(v, torch.stack([contract_vxc_fused(b, x, w, "MGGA") for w in wv])) <= 1e-13


def test_basis_on_cpu_data_on_cuda(big):
    """The basis tensors may stay on the CPU; outputs are on the data's GPU."""
    s = big
    dm, wv = _inputs(s)
    x = s.grid.coords.cuda()
    ao = eval_ao(s.basis, x, 1)
    assert ao.device.type == "cuda"
    assert rel_err(ao, eval_ao(s.basis.to(CUDA), x, 1)) == 0.0
    rho = eval_rho_fused(s.basis, x, dm.cuda(), "GGA")
    assert rho.device.type == "cuda"
    assert rel_err(rho, eval_rho_fused(s.basis, s.grid.coords, dm, "GGA")) <= TOL64
    v = contract_vxc_fused(s.basis, x, wv[:, :4].cuda(), "GGA")
    assert rel_err(v, contract_vxc_fused(s.basis, s.grid.coords, wv[:, :4], "GGA")) <= TOL64


def test_non_default_stream(big):
    """Kernels and GEMMs run on the current stream: results on a side stream are the same."""
    s = big
    dm, wv = _inputs(s)
    b, x = s.basis.to(CUDA), s.grid.coords.cuda()
    ref = eval_rho_fused(b, x, dm.cuda(), "MGGA")
    vref = contract_vxc_fused(b, x, wv.cuda(), "MGGA")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        d, w = dm.cuda(), wv.cuda()
        rho = eval_rho_fused(b, x, d, "MGGA")
        v = contract_vxc_fused(b, x, w, "MGGA")
        ao = eval_ao(b, x, 1)
        rho_dense = eval_rho(ao, d, "MGGA")
    torch.cuda.current_stream().wait_stream(side)
    assert rel_err(rho, ref) <= 1e-14 and rel_err(v, vref) <= 1e-14
    assert rel_err(rho_dense, ref) <= TOL64


def test_non_contiguous_cuda(big):
    s = big
    dm, wv = _inputs(s)
    b = s.basis.to(CUDA)
    x = s.grid.coords.cuda()
    ao = eval_ao(b, x, 1)
    dm_d, wv_d = dm.cuda(), wv.cuda()
    ao_nc = ao.transpose(1, 2).contiguous().transpose(1, 2)
    dm_nc = dm_d.transpose(1, 2).contiguous().transpose(1, 2)
    w_nc = wv_d.transpose(1, 2).contiguous().transpose(1, 2)
    x_nc = x.T.contiguous().T
    assert not (ao_nc.is_contiguous() or dm_nc.is_contiguous() or w_nc.is_contiguous())
    assert torch.equal(eval_rho(ao_nc, dm_nc, "MGGA"), eval_rho(ao, dm_d, "MGGA"))
    assert torch.equal(contract_vxc(ao_nc, w_nc, "MGGA"), contract_vxc(ao, wv_d, "MGGA"))
    assert torch.equal(eval_rho_fused(b, x_nc, dm_nc, "GGA"), eval_rho_fused(b, x, dm_d, "GGA"))


def test_device_mismatch_is_an_error(big):
    s = big
    dm, wv = _inputs(s)
    b = s.basis.to(CUDA)
    with pytest.raises(RuntimeError, match=r"coords is on cpu but dm is on cuda"):
        eval_rho_fused(b, s.grid.coords, dm.cuda(), "GGA")
    with pytest.raises(RuntimeError, match=r"dm must be a CUDA tensor"):
        eval_rho_fused(b, s.grid.coords.cuda(), dm, "GGA")
    ao = eval_ao(b, s.grid.coords.cuda(), 1)
    with pytest.raises(RuntimeError, match=r"is on"):
        eval_rho(ao, dm, "GGA")
    with pytest.raises(RuntimeError, match=r"is on"):
        contract_vxc(ao, wv[:, :4], "GGA")


def _energy(rho: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    n, g, tau = rho[0], rho[1:4], rho[4]
    e = torch.sqrt(1.0 + n**2 + 0.3 * (g * g).sum(0)) + 0.2 * tau * torch.exp(-0.5 * n**2)
    return (weights * e).sum()


def test_hvp_on_cuda_equals_cpu(big):
    """Reverse over reverse through the fused pair on the GPU gives the CPU's HVP."""
    s = big
    gen = torch.Generator().manual_seed(8)
    v = torch.randn(s.nao, s.nao, generator=gen, dtype=torch.float64)
    d0 = torch.randn(s.nao, s.nao, generator=gen, dtype=torch.float64) * 0.1
    out = []
    for dev in ("cpu", "cuda"):
        b, x, w = s.basis.to(dev), s.grid.coords.to(dev), s.grid.weights.to(dev)
        d = d0.to(dev).requires_grad_(True)
        e = _energy(eval_rho_fused(b, x, d, "MGGA"), w)
        (g,) = torch.autograd.grad(e, d, create_graph=True)
        (hv,) = torch.autograd.grad(g, d, grad_outputs=v.to(dev))
        out.append((g.detach(), hv))
    assert rel_err(out[1][0], out[0][0]) <= TOL64
    assert rel_err(out[1][1], out[0][1]) <= TOL64


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_second_gpu(big):
    """Everything on cuda:1 (the device guard switches devices); same values as on the CPU."""
    s = big
    dm, wv = _inputs(s)
    dev = torch.device("cuda:1")
    b, x = s.basis.to(dev), s.grid.coords.to(dev)
    rho = eval_rho_fused(b, x, dm.to(dev), "MGGA")
    assert rho.device == dev
    assert rel_err(rho, eval_rho_fused(s.basis, s.grid.coords, dm, "MGGA")) <= TOL64
    v = contract_vxc(eval_ao(b, x, 1), wv.to(dev), "MGGA")
    assert v.device == dev
    assert rel_err(v, contract_vxc(eval_ao(s.basis, s.grid.coords, 1), wv, "MGGA")) <= TOL64


@pytest.mark.parametrize("scheme", [0, 1])
def test_becke_partition_cuda(scheme):
    """becke_partition and its backward on CUDA = the CPU kernel: ethanol's whole level-3 grid
    (shared-memory reduction of the nuclei's gradient) with Treutler's size adjustment, and a
    2100-atom cluster (beyond 48 KiB of shared memory: global atomics), 1e-11 relative."""
    from pyscf.dft import gen_grid

    from dixc.nuclear_grad import BeckePartition

    mol = mole("ethanol", "def2-svp")
    grids = gen_grid.Grids(mol)
    grids.level = 3
    grids.becke_scheme = gen_grid.stratmann if scheme else gen_grid.original_becke
    becke = BeckePartition(mol, grids)
    coords, owner = becke.points()
    gen = torch.Generator().manual_seed(7)
    R = torch.rand(2100, 3, generator=gen, dtype=torch.float64) * 60.0
    pick = torch.randint(0, 2100, (100,), generator=gen)
    cases = [
        (coords, owner, becke.atom_coords, becke.adjust),
        (R[pick] + torch.randn(100, 3, generator=gen, dtype=torch.float64), pick, R,
         torch.zeros(2100, 2100, dtype=torch.float64)),
    ]  # fmt: skip
    for args in cases:
        u = torch.randn(len(args[1]), generator=gen, dtype=torch.float64)
        f = torch.ops.dixc.becke_partition(*args, scheme)
        f_gpu = torch.ops.dixc.becke_partition(*(a.to(CUDA) for a in args), scheme)
        assert rel_err(f_gpu, f) < TOL64
        grads = torch.ops.dixc.becke_partition_backward(u, *args, scheme)
        grads_gpu = torch.ops.dixc.becke_partition_backward(
            u.to(CUDA), *(a.to(CUDA) for a in args), scheme
        )
        for a, b in zip(grads_gpu, grads, strict=True):
            assert a.is_cuda and rel_err(a, b) < TOL64
