"""Pure-torch float64 references of every dixc op, independent of the kernels' formulas.

AO derivatives come from torch autograd on the plain Gaussian expression (not from the kernels'
radial-derivative recursions); densities and V_xc are dense einsums over the materialised AO array.
Used by the tests and, as the "torch-dense" peer, by the benchmarks.
"""

from __future__ import annotations

import torch

from dixc.basis import Basis, _ncart

_NFEAT = {"LDA": 1, "GGA": 4, "MGGA": 5}
_PAIRS = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]  # xx, xy, xz, yy, yz, zz


def _cart_exponents(l: int) -> list[tuple[int, int, int]]:
    return [(lx, ly, l - lx - ly) for lx in range(l, -1, -1) for ly in range(l - lx, -1, -1)]


def eval_ao_ref(basis: Basis, coords: torch.Tensor, deriv: int = 0) -> torch.Tensor:
    """Reference of ``eval_ao``: ``(ncomp, nao, ngrid)``, no screening."""
    basis = basis.to("cpu")
    r = coords.detach().to(torch.float64).cpu().clone().requires_grad_(deriv > 0)
    ngrid = r.shape[0]
    rows: list[torch.Tensor] = []  # each (ngrid,) value of one AO
    c2s_off, off = [], 0
    for l in range(7):
        c2s_off.append(off)
        off += _ncart(l) * (2 * l + 1)
    for s in range(basis.nshell):
        l, nprim, po, _ = (int(v) for v in basis.bas[s])
        d = r - basis.bas_coord[s]
        r2 = (d * d).sum(1)
        a = basis.prim[po : po + nprim, 0]
        c = basis.prim[po : po + nprim, 1]
        radial = (c[None, :] * torch.exp(-a[None, :] * r2[:, None])).sum(1)
        cart = torch.stack(
            [
                d[:, 0] ** lx * d[:, 1] ** ly * d[:, 2] ** lz * radial
                for lx, ly, lz in _cart_exponents(l)
            ]
        )
        if basis.cart or l < 2:
            funcs = cart
        else:
            n = _ncart(l) * (2 * l + 1)
            tab = basis.c2s[c2s_off[l] : c2s_off[l] + n].reshape(_ncart(l), 2 * l + 1)
            funcs = tab.T @ cart
        rows.extend(funcs)
    if not rows:
        return torch.zeros((1, 4, 10)[deriv], 0, ngrid, dtype=torch.float64)
    val = torch.stack(rows)  # (nao, ngrid)
    comps = [val.detach()]
    if deriv >= 1:
        grads = []
        for i in range(val.shape[0]):
            (g,) = torch.autograd.grad(val[i].sum(), r, create_graph=deriv >= 2, retain_graph=True)
            grads.append(g)  # (ngrid, 3): point g only depends on r[g]
        first = torch.stack(grads)  # (nao, ngrid, 3)
        comps.extend(first[..., x].detach() for x in range(3))
        if deriv >= 2:
            second = {}
            for x in range(3):
                hx = []
                for i in range(val.shape[0]):
                    (h,) = torch.autograd.grad(first[i, :, x].sum(), r, retain_graph=True)
                    hx.append(h)
                second[x] = torch.stack(hx)  # (nao, ngrid, 3)
            comps.extend(second[x][..., y] for x, y in _PAIRS)
    return torch.stack(comps).to(coords.dtype)


def eval_rho_ref(ao: torch.Tensor, dm: torch.Tensor, xctype: str) -> torch.Tensor:
    """Reference of ``eval_rho``: ``((B,) nfeat, ngrid)``."""
    d = 0.5 * (dm + dm.transpose(-1, -2))
    batched = d.dim() == 3
    d = d if batched else d[None]
    rho = [torch.einsum("ig,bij,jg->bg", ao[0], d, ao[0])]
    if xctype in ("GGA", "MGGA"):
        rho += [2.0 * torch.einsum("ig,bij,jg->bg", ao[x], d, ao[0]) for x in (1, 2, 3)]
    if xctype == "MGGA":
        rho.append(0.5 * torch.einsum("xig,bij,xjg->bg", ao[1:4], d, ao[1:4]))
    out = torch.stack(rho, dim=1)
    return out if batched else out[0]


def contract_vxc_ref(ao: torch.Tensor, wv: torch.Tensor, xctype: str) -> torch.Tensor:
    """Reference of ``contract_vxc``: ``((B,) nao, nao)``."""
    batched = wv.dim() == 3
    w = wv if batched else wv[None]
    v = torch.einsum("bg,ig,jg->bij", w[:, 0], ao[0], ao[0])
    if xctype in ("GGA", "MGGA"):
        t = torch.einsum("bxg,xig,jg->bij", w[:, 1:4], ao[1:4], ao[0])
        v = v + t + t.transpose(1, 2)
    if xctype == "MGGA":
        v = v + 0.5 * torch.einsum("bg,xig,xjg->bij", w[:, 4], ao[1:4], ao[1:4])
    return v if batched else v[0]


def becke_partition_ref(
    coords: torch.Tensor,
    owner: torch.Tensor,
    atom_coords: torch.Tensor,
    adjust: torch.Tensor | None = None,
    scheme: str = "becke",
) -> torch.Tensor:
    """Reference of ``becke_partition``: ``(ngrid,)``, by plain autograd-able Torch over the
    dense ``(ngrid, natm, natm)`` array of switching functions (any derivative order)."""
    natm = atom_coords.shape[0]
    eye = torch.eye(natm, dtype=torch.bool, device=coords.device)
    d = ((coords[:, None, :] - atom_coords[None]) ** 2).sum(-1).sqrt()  # (n, natm)
    r2 = ((atom_coords[:, None, :] - atom_coords[None]) ** 2).sum(-1)
    rij = torch.where(eye, 1.0, r2).sqrt()  # (natm, natm); 1 on the diagonal (unused)
    mu = (d[:, :, None] - d[:, None, :]) / rij  # mu_ij for every ordered pair
    nu = mu if adjust is None else mu + adjust * (1.0 - mu * mu)
    if scheme == "stratmann":
        m = nu / 0.64
        poly = m * (35.0 + m * m * (-35.0 + m * m * (21.0 - 5.0 * m * m))) / 16.0
        p = torch.where(nu.abs() < 0.64, poly, torch.sign(nu))
    else:
        p = nu
        for _ in range(3):
            p = (3.0 - p * p) * p * 0.5
    s = torch.where(eye, 1.0, 0.5 * (1.0 - p + 1e-200))
    cell = s.prod(dim=-1)  # P_i = prod_{j != i} s(nu_ij): (n, natm)
    return cell.gather(1, owner[:, None])[:, 0] / cell.sum(dim=-1)
