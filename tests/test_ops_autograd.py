"""Autograd of the ops: gradcheck / gradgradcheck, opcheck, torch.compile, refused gradients.

Tiny problems (water / STO-3G, nao 7, a few dozen points) keep the finite-difference checks cheap.
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import dixc
from dixc.molecules import mole
from dixc.ops import contract_vxc, contract_vxc_fused, eval_ao, eval_rho, eval_rho_fused

XCTYPES = ["LDA", "GGA", "MGGA"]
NFEAT = {"LDA": 1, "GGA": 4, "MGGA": 5}
ops = torch.ops.dixc


@pytest.fixture(scope="module")
def tiny():
    """Water / STO-3G (nao 7) and 30 points scattered around the molecule (Bohr)."""
    mol = mole("water", "sto-3g")
    basis = dixc.pack_basis(mol)
    gen = torch.Generator().manual_seed(11)
    atoms = torch.as_tensor(mol.atom_coords(), dtype=torch.float64)
    coords = atoms[torch.arange(30) % 3] + 0.8 * torch.randn(
        30, 3, generator=gen, dtype=torch.float64
    )
    return basis, coords


def _args(tiny, device, batched: bool, xctype: str):
    basis, coords = tiny
    basis, coords = basis.to(device), coords.to(device)
    shape = ((2,) if batched else ()) + (basis.nao, basis.nao)
    dm = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    wshape = ((2,) if batched else ()) + (NFEAT[xctype], coords.shape[0])
    wv = torch.randn(wshape, dtype=torch.float64, device=device, requires_grad=True)
    return basis, coords, dm, wv


# --- gradcheck / gradgradcheck -------------------------------------------------------------------
@pytest.mark.parametrize("op", ["eval_rho", "contract_vxc", "eval_rho_fused", "contract_vxc_fused"])
@pytest.mark.parametrize("batched", [False, True], ids=["single", "batched"])
@pytest.mark.parametrize("xctype", XCTYPES)
def test_gradcheck_and_gradgradcheck(tiny, op, xctype, batched, device):
    """Each op w.r.t. its differentiable input (dm or wv), first and second order."""
    basis, coords, dm, wv = _args(tiny, device, batched, xctype)
    ao = eval_ao(basis, coords, 1)
    fn, x = {
        "eval_rho": (lambda d: eval_rho(ao, d, xctype), dm),
        "contract_vxc": (lambda w: contract_vxc(ao, w, xctype), wv),
        "eval_rho_fused": (lambda d: eval_rho_fused(basis, coords, d, xctype), dm),
        "contract_vxc_fused": (lambda w: contract_vxc_fused(basis, coords, w, xctype), wv),
    }[op]
    assert gradcheck(fn, (x,))
    assert gradgradcheck(fn, (x,))


def test_eval_ao_deriv0_gradcheck_and_gradgradcheck(tiny, device):
    basis, coords = tiny
    basis = basis.to(device)
    x = coords[:12].to(device).requires_grad_(True)
    assert gradcheck(lambda c: eval_ao(basis, c, 0), (x,))
    assert gradgradcheck(lambda c: eval_ao(basis, c, 0), (x,))


def test_eval_ao_deriv1_gradcheck(tiny, device):
    basis, coords = tiny
    basis = basis.to(device)
    x = coords[:12].to(device).requires_grad_(True)
    assert gradcheck(lambda c: eval_ao(basis, c, 1), (x,))


def test_eval_ao_coordinate_gradient_is_the_ao_derivative(tiny):
    """d/dr_g sum_i ao[0, i, g] = sum_i ao[1:4, i, g]: the backward is the next AO derivative."""
    basis, coords = tiny
    x = coords.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(eval_ao(basis, x, 0).sum(), x)
    assert torch.allclose(g, eval_ao(basis, coords, 1)[1:4].sum(1).T, rtol=1e-13, atol=0)


def test_eval_ao_deriv1_double_backward_refused(tiny):
    basis, coords = tiny
    x = coords[:5].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(eval_ao(basis, x, 1).sum(), x, create_graph=True)
    with pytest.raises(NotImplementedError, match=r"deriv <= 1"):
        g.sum().backward()


def test_eval_ao_deriv2_backward_refused(tiny):
    basis, coords = tiny
    x = coords[:5].clone().requires_grad_(True)
    out = eval_ao(basis, x, 2)
    with pytest.raises(NotImplementedError, match=r"deriv=2 AOs needs third AO derivatives"):
        out.sum().backward()


def test_hvp_by_double_backward_is_linear_response(tiny):
    """For E = 1/2 sum w rho^2, the HVP in direction P is contract_vxc(w * rho[P])."""
    basis, coords = tiny
    ao = eval_ao(basis, coords, 0)
    w = torch.rand(coords.shape[0], dtype=torch.float64)
    dm = torch.randn(basis.nao, basis.nao, dtype=torch.float64, requires_grad=True)
    p = torch.randn(basis.nao, basis.nao, dtype=torch.float64)
    e = 0.5 * (w * eval_rho(ao, dm, "LDA")[0] ** 2).sum()
    (g,) = torch.autograd.grad(e, dm, create_graph=True)
    (hp,) = torch.autograd.grad(g, dm, grad_outputs=p)
    ref = contract_vxc(ao, (w * eval_rho(ao, p, "LDA")[0])[None], "LDA")
    assert torch.allclose(hp, ref, rtol=1e-12, atol=1e-14)


# --- gradients that are not implemented: clear refusals ------------------------------------------
def test_grad_wrt_ao_refused(tiny):
    basis, coords = tiny
    ao = eval_ao(basis, coords, 1).requires_grad_(True)
    dm = torch.randn(basis.nao, basis.nao, dtype=torch.float64, requires_grad=True)
    with pytest.raises(NotImplementedError, match=r"eval_rho: gradients w\.r\.t\. ao are not impl"):
        eval_rho(ao, dm, "GGA").sum().backward()
    wv = torch.randn(4, coords.shape[0], dtype=torch.float64)
    with pytest.raises(NotImplementedError, match=r"contract_vxc: gradients w\.r\.t\. ao"):
        contract_vxc(ao, wv, "GGA").sum().backward()


def test_grad_wrt_coords_of_fused_ops_refused(tiny):
    basis, coords = tiny
    x = coords.clone().requires_grad_(True)
    dm = torch.randn(basis.nao, basis.nao, dtype=torch.float64)
    with pytest.raises(NotImplementedError, match=r"eval_rho_fused: gradients w\.r\.t\. coords"):
        eval_rho_fused(basis, x, dm, "LDA").sum().backward()
    wv = torch.randn(1, coords.shape[0], dtype=torch.float64)
    with pytest.raises(
        NotImplementedError, match=r"contract_vxc_fused: gradients w\.r\.t\. coords"
    ):
        contract_vxc_fused(basis, x, wv, "LDA").sum().backward()


def test_grad_wrt_basis_refused(tiny):
    basis, coords = tiny
    centres = basis.bas_coord.clone().requires_grad_(True)
    b, _, p, c2s, rcut = basis.tensors
    out = ops.eval_ao(coords, b, centres, p, c2s, rcut, basis.nao, 0, basis.cart)
    with pytest.raises(
        NotImplementedError, match=r"eval_ao: gradients w\.r\.t\. the basis tensors"
    ):
        out.sum().backward()


# --- opcheck -------------------------------------------------------------------------------------
def _opcheck(op, args):
    result = torch.library.opcheck(op, args)
    assert all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("deriv", [0, 1, 2])
def test_opcheck_eval_ao(tiny, deriv, requires_grad):
    basis, coords = tiny
    x = coords.clone().requires_grad_(requires_grad and deriv < 2)
    _opcheck(ops.eval_ao.default, (x, *basis.tensors, basis.nao, deriv, basis.cart))


@pytest.mark.parametrize("batched", [False, True], ids=["single", "batched"])
@pytest.mark.parametrize("xctype", XCTYPES)
def test_opcheck_eval_rho_and_contract_vxc(tiny, xctype, batched):
    basis, coords, dm, wv = _args(tiny, "cpu", batched, xctype)
    ao = eval_ao(basis, coords, 1)
    _opcheck(ops.eval_rho.default, (ao, dm, xctype))
    _opcheck(ops.contract_vxc.default, (ao, wv, xctype))


@pytest.mark.parametrize("batched", [False, True], ids=["single", "batched"])
@pytest.mark.parametrize("xctype", XCTYPES)
def test_opcheck_fused(tiny, xctype, batched):
    basis, coords, dm, wv = _args(tiny, "cpu", batched, xctype)
    _opcheck(
        ops.eval_rho_fused.default, (coords, *basis.tensors, dm, xctype, basis.nao, basis.cart)
    )
    _opcheck(
        ops.contract_vxc_fused.default,
        (coords, *basis.tensors, wv, xctype, basis.nao, basis.cart),
    )


def test_info_ops():
    info = dixc.ops.build_info()
    assert "dixc" in info and "CPU" in info and torch.__version__.split("+")[0] in info
    assert isinstance(dixc.ops.has_cuda(), bool)
    assert ("CUDA" in info) == dixc.ops.has_cuda()


# --- torch.compile (first order) -----------------------------------------------------------------
def _model_energy(rho: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    n, g = rho[0], rho[1:4]
    return (weights * torch.sqrt(1.0 + n**2 + (g * g).sum(0))).sum()


@pytest.mark.parametrize("fused", [False, True], ids=["dense", "fused"])
def test_compiled_energy_and_gradient_match_eager(tiny, fused):
    basis, coords = tiny
    ao = eval_ao(basis, coords, 1)
    weights = torch.rand(coords.shape[0], dtype=torch.float64)

    def energy(dm: torch.Tensor) -> torch.Tensor:
        if fused:
            rho = eval_rho_fused(basis, coords, dm, "GGA")
        else:
            rho = eval_rho(ao, dm, "GGA")
        return _model_energy(rho, weights)

    torch._dynamo.reset()
    compiled = torch.compile(energy, backend="aot_eager", fullgraph=True)
    dm0 = torch.randn(basis.nao, basis.nao, dtype=torch.float64)
    results = []
    for f in (energy, compiled):
        dm = dm0.clone().requires_grad_(True)
        e = f(dm)
        (g,) = torch.autograd.grad(e, dm)
        results.append((e.detach(), g))
    (e_ref, g_ref), (e_c, g_c) = results
    assert torch.allclose(e_c, e_ref, rtol=1e-13, atol=0)
    assert torch.allclose(g_c, g_ref, rtol=1e-12, atol=1e-14)
    assert g_ref.abs().max() > 0


def test_compiled_contract_vxc_matches_eager(tiny):
    basis, coords = tiny
    ao = eval_ao(basis, coords, 1)
    wv0 = torch.randn(5, coords.shape[0], dtype=torch.float64)
    p = torch.randn(basis.nao, basis.nao, dtype=torch.float64)

    def loss(wv):
        v = contract_vxc(ao, wv, "MGGA") + contract_vxc_fused(basis, coords, wv, "MGGA")
        return (v * p).sum()

    torch._dynamo.reset()
    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    out = []
    for f in (loss, compiled):
        wv = wv0.clone().requires_grad_(True)
        e = f(wv)
        (g,) = torch.autograd.grad(e, wv)
        out.append((e.detach(), g))
    assert torch.allclose(out[1][0], out[0][0], rtol=1e-13, atol=0)
    assert torch.allclose(out[1][1], out[0][1], rtol=1e-12, atol=1e-14)


def test_compiled_eval_ao_coordinate_gradient(tiny):
    basis, coords = tiny

    def f(x):
        return (eval_ao(basis, x, 0) ** 2).sum()

    torch._dynamo.reset()
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    grads = []
    for fn in (f, compiled):
        x = coords.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(x), x)
        grads.append(g)
    assert torch.allclose(grads[1], grads[0], rtol=1e-13, atol=0)


@pytest.mark.slow
def test_inductor_compiled_energy_and_gradient_match_eager(tiny):
    """The default backend (inductor, C++ codegen on the CPU) around the custom ops."""
    basis, coords = tiny
    ao = eval_ao(basis, coords, 1)
    weights = torch.rand(coords.shape[0], dtype=torch.float64)

    def energy(dm: torch.Tensor) -> torch.Tensor:
        return _model_energy(eval_rho(ao, dm, "GGA"), weights)

    torch._dynamo.reset()
    compiled = torch.compile(energy, fullgraph=True)
    dm0 = torch.randn(basis.nao, basis.nao, dtype=torch.float64)
    out = []
    for f in (energy, compiled):
        dm = dm0.clone().requires_grad_(True)
        e = f(dm)
        (g,) = torch.autograd.grad(e, dm)
        out.append((e.detach(), g))
    assert torch.allclose(out[1][0], out[0][0], rtol=1e-12, atol=0)
    assert torch.allclose(out[1][1], out[0][1], rtol=1e-12, atol=1e-14)
