"""Autograd for the dixc ops.

The pair closes under differentiation: the dm-backward of ``eval_rho`` is ``contract_vxc`` and
the wv-backward of ``contract_vxc`` is ``eval_rho`` (likewise for the fused pair). Both are linear
in their differentiable argument, so backward-of-backward (Hessian-vector products of any Torch
functional) needs no further kernels. Only inputs are saved, so double backward works.
``eval_ao`` differentiates w.r.t. the grid coordinates through higher AO derivatives.
``becke_partition`` has a first derivative (w.r.t. the points and the nuclei) in its own kernel.
"""

from __future__ import annotations

import torch

ops = torch.ops.dixc

# d/dr_x of AO component c is component _DERIV_INDEX[deriv][c][x] of the next derivative order.
_DERIV_INDEX = {
    0: [[1, 2, 3]],
    1: [[1, 2, 3], [4, 5, 6], [5, 7, 8], [6, 8, 9]],
}


def _refuse(ctx, positions, op: str, names: str) -> None:
    if any(ctx.needs_input_grad[i] for i in positions):
        raise NotImplementedError(
            f"dixc.{op}: gradients w.r.t. {names} are not implemented; detach them "
            "(only the density matrix / weights are differentiable here)."
        )


# --- eval_ao -----------------------------------------------------------------------------------
def _eval_ao_setup(ctx, inputs, output):
    coords, bas, bas_coord, prim, c2s, rcut, nao, deriv, cart = inputs
    ctx.save_for_backward(coords, bas, bas_coord, prim, c2s, rcut)
    ctx.nao, ctx.deriv, ctx.cart = nao, deriv, cart


def _eval_ao_backward(ctx, grad):
    coords, bas, bas_coord, prim, c2s, rcut = ctx.saved_tensors
    _refuse(ctx, range(1, 6), "eval_ao", "the basis tensors")
    gcoords = None
    if ctx.needs_input_grad[0]:
        if ctx.deriv not in _DERIV_INDEX:
            raise NotImplementedError(
                "dixc.eval_ao: the coordinate derivative of deriv=2 AOs needs third AO "
                "derivatives, which dixc does not evaluate; use deriv <= 1."
            )
        ao1 = ops.eval_ao(coords, bas, bas_coord, prim, c2s, rcut, ctx.nao, ctx.deriv + 1, ctx.cart)
        idx = torch.tensor(_DERIV_INDEX[ctx.deriv], device=coords.device)
        # gcoords[g, x] = sum_{c, i} grad[c, i, g] * ao1[idx[c, x], i, g]
        gcoords = torch.einsum("cig,cxig->gx", grad, ao1[idx])
    return gcoords, None, None, None, None, None, None, None, None


# --- eval_rho / contract_vxc -------------------------------------------------------------------
def _eval_rho_setup(ctx, inputs, output):
    ao, _dm, xctype = inputs
    ctx.save_for_backward(ao)
    ctx.xctype = xctype


def _eval_rho_backward(ctx, grad):
    (ao,) = ctx.saved_tensors
    _refuse(ctx, [0], "eval_rho", "ao")
    gdm = ops.contract_vxc(ao, grad, ctx.xctype) if ctx.needs_input_grad[1] else None
    return None, gdm, None


def _contract_vxc_setup(ctx, inputs, output):
    ao, _wv, xctype = inputs
    ctx.save_for_backward(ao)
    ctx.xctype = xctype


def _contract_vxc_backward(ctx, grad):
    (ao,) = ctx.saved_tensors
    _refuse(ctx, [0], "contract_vxc", "ao")
    gwv = ops.eval_rho(ao, grad, ctx.xctype) if ctx.needs_input_grad[1] else None
    return None, gwv, None


# --- fused pair --------------------------------------------------------------------------------
def _eval_rho_fused_setup(ctx, inputs, output):
    coords, bas, bas_coord, prim, c2s, rcut, _dm, xctype, nao, cart = inputs
    ctx.save_for_backward(coords, bas, bas_coord, prim, c2s, rcut)
    ctx.xctype, ctx.cart, ctx.nao = xctype, cart, nao


def _eval_rho_fused_backward(ctx, grad):
    coords, bas, bas_coord, prim, c2s, rcut = ctx.saved_tensors
    _refuse(ctx, range(6), "eval_rho_fused", "coords and the basis tensors")
    gdm = None
    if ctx.needs_input_grad[6]:
        gdm = ops.contract_vxc_fused(
            coords, bas, bas_coord, prim, c2s, rcut, grad, ctx.xctype, ctx.nao, ctx.cart
        )
    return None, None, None, None, None, None, gdm, None, None, None


def _contract_vxc_fused_setup(ctx, inputs, output):
    coords, bas, bas_coord, prim, c2s, rcut, _wv, xctype, nao, cart = inputs
    ctx.save_for_backward(coords, bas, bas_coord, prim, c2s, rcut)
    ctx.xctype, ctx.cart, ctx.nao = xctype, cart, nao


def _contract_vxc_fused_backward(ctx, grad):
    coords, bas, bas_coord, prim, c2s, rcut = ctx.saved_tensors
    _refuse(ctx, range(6), "contract_vxc_fused", "coords and the basis tensors")
    gwv = None
    if ctx.needs_input_grad[6]:
        gwv = ops.eval_rho_fused(
            coords, bas, bas_coord, prim, c2s, rcut, grad, ctx.xctype, ctx.nao, ctx.cart
        )
    return None, None, None, None, None, None, gwv, None, None, None


# --- becke_partition ---------------------------------------------------------------------------
def _becke_partition_setup(ctx, inputs, output):
    coords, owner, atom_coords, adjust, scheme = inputs
    ctx.save_for_backward(coords, owner, atom_coords, adjust)
    ctx.scheme = scheme


def _becke_partition_backward(ctx, grad):
    coords, owner, atom_coords, adjust = ctx.saved_tensors
    if ctx.needs_input_grad[3]:
        raise NotImplementedError(
            "dixc.becke_partition: gradients w.r.t. adjust (the atomic-size adjustment) are not "
            "implemented; detach it (coords and atom_coords are differentiable)."
        )
    gcoords = gatoms = None
    if ctx.needs_input_grad[0] or ctx.needs_input_grad[2]:
        gcoords, gatoms = ops.becke_partition_backward(
            grad, coords, owner, atom_coords, adjust, ctx.scheme
        )
    gcoords = gcoords if ctx.needs_input_grad[0] else None
    gatoms = gatoms if ctx.needs_input_grad[2] else None
    return gcoords, None, gatoms, None, None


def _becke_partition_backward_setup(ctx, inputs, output):
    pass


def _becke_partition_backward_backward(ctx, grad_coords, grad_atoms):
    raise NotImplementedError(
        "dixc.becke_partition: derivatives beyond the first are not implemented (nuclear "
        "gradients need the first); differentiate dixc.ops.becke_partition_ref instead."
    )


torch.library.register_autograd("dixc::eval_ao", _eval_ao_backward, setup_context=_eval_ao_setup)
torch.library.register_autograd("dixc::eval_rho", _eval_rho_backward, setup_context=_eval_rho_setup)
torch.library.register_autograd(
    "dixc::contract_vxc", _contract_vxc_backward, setup_context=_contract_vxc_setup
)
torch.library.register_autograd(
    "dixc::eval_rho_fused", _eval_rho_fused_backward, setup_context=_eval_rho_fused_setup
)
torch.library.register_autograd(
    "dixc::contract_vxc_fused",
    _contract_vxc_fused_backward,
    setup_context=_contract_vxc_fused_setup,
)
torch.library.register_autograd(
    "dixc::becke_partition", _becke_partition_backward, setup_context=_becke_partition_setup
)
torch.library.register_autograd(
    "dixc::becke_partition_backward",
    _becke_partition_backward_backward,
    setup_context=_becke_partition_backward_setup,
)
