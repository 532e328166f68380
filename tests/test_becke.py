"""``dixc.ops.becke_partition``: Becke's partition of space and its first derivative.

Independent references: the pure-torch dense reference (``becke_partition_ref``, plain autograd),
PySCF's C partition (``gen_grid.get_partition``) and central finite differences. Tolerances:
fractions (in [0, 1]) 1e-14 absolute, gradients 1e-12 relative to their largest entry, finite
differences 1e-7 relative. The ``device`` fixture adds CUDA runs (marked gpu) where built.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _util import becke_points
from dixc import ops
from dixc.molecules import mole

SCHEMES = ["becke", "stratmann"]


def _ethanol(npts: int = 700, seed: int = 0):
    """Ethanol's level-0 atom-grid points, subsampled, with Treutler's radii adjustment."""
    return becke_points("ethanol", 0, npts, seed)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("adjusted", [False, True])
def test_equals_reference(scheme, adjusted, device):
    """Fractions and both gradients (points, nuclei) of the kernel = the dense reference by
    autograd, ethanol, both schemes, with and without the size adjustment."""
    coords, owner, R, adjust = (x.to(device) for x in _ethanol())
    adj = adjust if adjusted else None
    u = torch.randn(len(owner), dtype=torch.float64).to(device)
    out = []
    for fn in (ops.becke_partition, ops.becke_partition_ref):
        c, r = coords.clone().requires_grad_(), R.clone().requires_grad_()
        f = fn(c, owner, r, adj, scheme)
        out.append((f.detach(), *torch.autograd.grad((f * u).sum(), [c, r])))
    (f, gc, gr), (f_ref, gc_ref, gr_ref) = out
    assert float((f - f_ref).abs().max()) < 1e-14
    assert _rel(gc, gc_ref) < 1e-12
    assert _rel(gr, gr_ref) < 1e-12
    assert 0.05 < float(f.min()) or float(f.max()) > 0.5  # a non-trivial partition


@pytest.mark.parametrize("scheme", SCHEMES)
def test_equals_pyscf_partition(scheme):
    """vol * f = the weights of PySCF's own (C) Becke partition, ``gen_grid.get_partition``, on
    ethanol's level-2 grid with Treutler's adjustment: 1e-14 relative."""
    from pyscf.dft import gen_grid, radi

    mol = mole("ethanol", "def2-svp")
    g = gen_grid.Grids(mol)
    becke = gen_grid.stratmann if scheme == "stratmann" else gen_grid.original_becke
    tab = g.gen_atomic_grids(mol, g.atom_grid, g.radi_method, 2, g.prune)
    coords_ref, w_ref = gen_grid.get_partition(
        mol, tab, radi.treutler_atomic_radii_adjust, g.atomic_radii, becke, concat=True
    )
    R = mol.atom_coords()
    owner = np.concatenate([[a] * len(tab[mol.atom_symbol(a)][0]) for a in range(mol.natm)])
    vol = np.concatenate([tab[mol.atom_symbol(a)][1] for a in range(mol.natm)])
    rad = np.sqrt(np.asarray(g.atomic_radii)[mol.atom_charges()]) + 1e-200
    rr = rad[:, None] / rad[None]
    adjust = torch.as_tensor(np.clip(0.25 * (rr.T - rr), -0.5, 0.5))
    f = ops.becke_partition(
        torch.as_tensor(coords_ref), torch.as_tensor(owner), torch.as_tensor(R), adjust, scheme
    )
    assert np.abs(vol * f.numpy() - w_ref).max() < 1e-14 * np.abs(w_ref).max()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_finite_differences(scheme):
    """d/dR of sum_g u_g f_g (points fixed) and d/dr_g (per atom, its point with the largest
    gradient) = central differences (h = 1e-4 Bohr, fourth order): 1e-7 relative."""
    coords, owner, R, adjust = _ethanol(300, seed=1)
    u = torch.randn(len(owner), dtype=torch.float64)
    c, r = coords.clone().requires_grad_(), R.clone().requires_grad_()
    gc, gr = torch.autograd.grad(
        (ops.becke_partition(c, owner, r, adjust, scheme) * u).sum(), [c, r]
    )

    def loss(cc, rr):
        return float((ops.becke_partition(cc, owner, rr, adjust, scheme) * u).sum())

    h = 1e-4
    for a in range(R.shape[0]):
        for x in range(3):
            d = torch.zeros_like(R)
            d[a, x] = h
            fd = (8 * (loss(coords, R + d) - loss(coords, R - d))
                  - (loss(coords, R + 2 * d) - loss(coords, R - 2 * d))) / (12 * h)  # fmt: skip
            assert abs(fd - float(gr[a, x])) < 1e-7 * float(gr.abs().max())
    for a in range(R.shape[0]):  # per atom, its point with the largest gradient (f_g of r_g only)
        g = int(torch.where(owner == a, gc.abs().amax(1), -1.0).argmax())
        for x in range(3):
            d = torch.zeros_like(coords[g : g + 1])
            d[0, x] = h
            pt, o = coords[g : g + 1], owner[g : g + 1]

            def one(p):
                return float(ops.becke_partition(p, o, R, adjust, scheme)[0] * u[g])  # noqa: B023

            fd = (8 * (one(pt + d) - one(pt - d)) - (one(pt + 2 * d) - one(pt - 2 * d))) / (12 * h)
            assert abs(fd - float(gc[g, x])) < 1e-7 * float(gc[g].abs().max())


def test_translation_invariance(device):
    """f depends on differences of positions only: the gradients w.r.t. all points and all
    nuclei sum to zero (1e-12 relative)."""
    coords, owner, R, adjust = (x.to(device) for x in _ethanol())
    u = torch.randn(len(owner), dtype=torch.float64).to(device)
    gc, gr = torch.ops.dixc.becke_partition_backward(u, coords, owner, R, adjust, 0)
    total = gc.sum(0) + gr.sum(0)
    assert float(total.abs().max()) < 1e-12 * float(gr.abs().max())


def test_gradcheck_and_no_second_order():
    """torch.autograd.gradcheck on a small system (3 atoms, 8 points, both inputs); a second
    derivative is refused with a message naming the reference that has one."""
    gen = torch.Generator().manual_seed(5)
    R = torch.randn(3, 3, generator=gen, dtype=torch.float64) * 1.5
    owner = torch.arange(8) % 3
    coords = R[owner] + torch.randn(8, 3, generator=gen, dtype=torch.float64)
    adjust = torch.tensor([[0.0, 0.1, -0.2], [-0.1, 0.0, 0.05], [0.2, -0.05, 0.0]],
                          dtype=torch.float64)  # fmt: skip
    for scheme in SCHEMES:
        fn = lambda c, r: ops.becke_partition(c, owner, r, adjust, scheme)  # noqa: E731, B023
        cr = (coords.clone().requires_grad_(), R.clone().requires_grad_())
        assert torch.autograd.gradcheck(fn, cr, eps=1e-6, atol=1e-8, rtol=1e-6)
    c, r = coords.clone().requires_grad_(), R.clone().requires_grad_()
    (gr,) = torch.autograd.grad(ops.becke_partition(c, owner, r, adjust).sum(), [r],
                                create_graph=True)  # fmt: skip
    with pytest.raises(NotImplementedError, match=r"beyond the first.*becke_partition_ref"):
        torch.autograd.grad(gr.sum(), [r])


def test_opcheck(device):
    """torch.library.opcheck (schema, fake kernel, autograd registration) on both ops."""
    coords, owner, R, adjust = (x.to(device) for x in _ethanol(50))
    u = torch.randn(50, dtype=torch.float64).to(device)
    torch.library.opcheck(
        torch.ops.dixc.becke_partition, (coords.requires_grad_(), owner, R, adjust, 1)
    )
    torch.library.opcheck(
        torch.ops.dixc.becke_partition_backward,
        (u, coords.detach(), owner, R, adjust, 0),
        test_utils=("test_schema", "test_faketensor"),
    )


def test_float32(device):
    """float32 inputs: float32 outputs within 1e-6 relative of the float64 ones (the kernel
    computes in float64 and rounds)."""
    coords, owner, R, adjust = (x.to(device) for x in _ethanol())
    u = torch.randn(len(owner), dtype=torch.float64).to(device)
    f64 = ops.becke_partition(coords, owner, R, adjust)
    f32 = ops.becke_partition(coords.float(), owner, R.float(), adjust.float())
    assert f32.dtype == torch.float32
    assert _rel(f32.double(), f64) < 1e-6
    g64 = torch.ops.dixc.becke_partition_backward(u, coords, owner, R, adjust, 1)
    g32 = torch.ops.dixc.becke_partition_backward(
        u.float(), coords.float(), owner, R.float(), adjust.float(), 1
    )
    for a, b in zip(g32, g64, strict=True):
        assert a.dtype == torch.float32 and _rel(a.double(), b) < 1e-5


def test_one_atom_and_no_points(device):
    """One atom: f = 1 and zero derivatives; no points: empty outputs, zero nuclear gradient."""
    R = torch.tensor([[0.1, 0.2, 0.3]], dtype=torch.float64, device=device)
    coords = torch.randn(5, 3, dtype=torch.float64).to(device)
    owner = torch.zeros(5, dtype=torch.long, device=device)
    assert torch.equal(ops.becke_partition(coords, owner, R), torch.ones_like(coords[:, 0]))
    gc, gr = torch.ops.dixc.becke_partition_backward(
        torch.ones(5, dtype=torch.float64, device=device),
        coords,
        owner,
        R,
        torch.zeros_like(R[:, :1]),
        0,
    )
    assert float(gc.abs().max()) == 0.0 and float(gr.abs().max()) == 0.0
    R2 = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.4]], dtype=torch.float64, device=device)
    empty = torch.zeros(0, 3, dtype=torch.float64, device=device)
    none = torch.zeros(0, dtype=torch.long, device=device)
    assert ops.becke_partition(empty, none, R2).shape == (0,)
    gc, gr = torch.ops.dixc.becke_partition_backward(
        empty[:, 0], empty, none, R2, torch.zeros(2, 2, dtype=torch.float64, device=device), 0
    )
    assert gc.shape == (0, 3) and torch.equal(gr, torch.zeros_like(R2))


def test_bad_input():
    """Each refusal names what is wrong: coincident nuclei, owners out of range, shapes, dtypes,
    the scheme, and a gradient w.r.t. the size adjustment."""
    R = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.4], [0.0, 0.0, 1.4]], dtype=torch.float64)
    coords = torch.randn(4, 3, dtype=torch.float64)
    owner = torch.tensor([0, 1, 1, 0])
    with pytest.raises(RuntimeError, match="nuclei 1 and 2 coincide"):
        ops.becke_partition(coords, owner, R)
    R = R[:2]
    with pytest.raises(RuntimeError, match=r"owner holds atom indices in \[0, 5\] but there are 2"):
        ops.becke_partition(coords, torch.tensor([0, 1, 5, 0]), R)
    with pytest.raises(RuntimeError, match="owner must be int64"):
        ops.becke_partition(coords, owner.int(), R)
    with pytest.raises(RuntimeError, match=r"coords must be \(ngrid, 3\)"):
        ops.becke_partition(coords[:, :2], owner, R)
    with pytest.raises(RuntimeError, match=r"adjust must be \(natm, natm\)"):
        ops.becke_partition(coords, owner, R, torch.zeros(3, 3, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="same dtype"):
        ops.becke_partition(coords, owner, R.float())
    with pytest.raises(ValueError, match="scheme must be one of"):
        ops.becke_partition(coords, owner, R, scheme="lko")
    with pytest.raises(RuntimeError, match="scheme must be 0"):
        torch.ops.dixc.becke_partition(coords, owner, R, torch.zeros(2, 2, dtype=torch.float64), 2)
    with pytest.raises(RuntimeError, match=r"grad must be \(ngrid,\)"):
        torch.ops.dixc.becke_partition_backward(
            torch.ones(3, dtype=torch.float64),
            coords,
            owner,
            R,
            torch.zeros(2, 2, dtype=torch.float64),
            0,
        )
    adjust = torch.zeros(2, 2, dtype=torch.float64, requires_grad=True)
    with pytest.raises(NotImplementedError, match=r"w\.r\.t\. adjust"):
        ops.becke_partition(coords, owner, R, adjust).sum().backward()
