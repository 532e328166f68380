"""Fake (meta) kernels: output shapes and dtypes for tracing, ``torch.compile`` and opcheck."""

from __future__ import annotations

import torch

_NFEAT = {"LDA": 1, "GGA": 4, "MGGA": 5}
_NCOMP = {0: 1, 1: 4, 2: 10}


def _nfeat(xctype: str) -> int:
    torch._check(xctype in _NFEAT, lambda: f"xctype must be LDA, GGA or MGGA, got {xctype!r}")
    return _NFEAT[xctype]


@torch.library.register_fake("dixc::eval_ao")
def _eval_ao_fake(coords, bas, bas_coord, prim, c2s, rcut, nao, deriv, cart):
    torch._check(coords.dim() == 2 and coords.shape[1] == 3, lambda: "coords must be (ngrid, 3)")
    torch._check(deriv in _NCOMP, lambda: f"deriv must be 0, 1 or 2, got {deriv}")
    return coords.new_empty((_NCOMP[deriv], nao, coords.shape[0]))


@torch.library.register_fake("dixc::eval_rho")
def _eval_rho_fake(ao, dm, xctype):
    nf = _nfeat(xctype)
    torch._check(ao.dim() == 3, lambda: "ao must be (ncomp, nao, ngrid)")
    torch._check(dm.dim() in (2, 3), lambda: "dm must be (nao, nao) or (B, nao, nao)")
    torch._check(ao.dtype == dm.dtype, lambda: "ao and dm must have the same dtype")
    shape = (nf, ao.shape[2]) if dm.dim() == 2 else (dm.shape[0], nf, ao.shape[2])
    return ao.new_empty(shape)


@torch.library.register_fake("dixc::contract_vxc")
def _contract_vxc_fake(ao, wv, xctype):
    _nfeat(xctype)
    torch._check(ao.dim() == 3, lambda: "ao must be (ncomp, nao, ngrid)")
    torch._check(wv.dim() in (2, 3), lambda: "wv must be (nfeat, ngrid) or (B, nfeat, ngrid)")
    nao = ao.shape[1]
    shape = (nao, nao) if wv.dim() == 2 else (wv.shape[0], nao, nao)
    return ao.new_empty(shape)


@torch.library.register_fake("dixc::eval_rho_fused")
def _eval_rho_fused_fake(coords, bas, bas_coord, prim, c2s, rcut, dm, xctype, nao, cart):
    nf = _nfeat(xctype)
    torch._check(dm.dim() in (2, 3), lambda: "dm must be (nao, nao) or (B, nao, nao)")
    torch._check(dm.shape[-1] == nao and dm.shape[-2] == nao, lambda: f"dm must be {nao} x {nao}")
    ngrid = coords.shape[0]
    shape = (nf, ngrid) if dm.dim() == 2 else (dm.shape[0], nf, ngrid)
    return dm.new_empty(shape)


@torch.library.register_fake("dixc::contract_vxc_fused")
def _contract_vxc_fused_fake(coords, bas, bas_coord, prim, c2s, rcut, wv, xctype, nao, cart):
    _nfeat(xctype)
    torch._check(wv.dim() in (2, 3), lambda: "wv must be (nfeat, ngrid) or (B, nfeat, ngrid)")
    shape = (nao, nao) if wv.dim() == 2 else (wv.shape[0], nao, nao)
    return wv.new_empty(shape)


@torch.library.register_fake("dixc::becke_partition")
def _becke_partition_fake(coords, owner, atom_coords, adjust, scheme):
    torch._check(coords.dim() == 2 and coords.shape[1] == 3, lambda: "coords must be (ngrid, 3)")
    torch._check(owner.shape == coords.shape[:1], lambda: "owner must be (ngrid,)")
    torch._check(scheme in (0, 1), lambda: f"scheme must be 0 or 1, got {scheme}")
    return coords.new_empty((coords.shape[0],))


@torch.library.register_fake("dixc::becke_partition_backward")
def _becke_partition_backward_fake(grad, coords, owner, atom_coords, adjust, scheme):
    torch._check(grad.shape == coords.shape[:1], lambda: "grad must be (ngrid,)")
    return coords.new_empty(coords.shape), coords.new_empty(atom_coords.shape)
