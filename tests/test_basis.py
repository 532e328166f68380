"""Packing PySCF bases (dixc.basis) and PySCF grids (dixc.grid)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pyscf import gto

import dixc
from dixc.basis import MAX_L, _ncart, cart2sph_tables
from dixc.molecules import mole


@pytest.fixture(scope="module", params=[False, True], ids=["sph", "cart"])
def acetamide(request):
    mol = mole("qm9_acetamide", "def2-tzvp", cart=request.param)
    return mol, dixc.pack_basis(mol)


def test_pack_basis_layout(acetamide):
    mol, b = acetamide
    assert b.nao == mol.nao
    assert b.cart == mol.cart
    assert b.bas.dtype == torch.int64 and b.bas.shape[1] == 4
    for t in (b.bas_coord, b.prim, b.c2s, b.rcut):
        assert t.dtype == torch.float64
    assert b.tensors == (b.bas, b.bas_coord, b.prim, b.c2s, b.rcut)
    # one dixc shell per contraction of each PySCF shell, in PySCF's AO order
    nctr = [mol.bas_nctr(i) for i in range(mol.nbas)]
    assert b.nshell == sum(nctr)
    ls = np.repeat([mol.bas_angular(i) for i in range(mol.nbas)], nctr)
    np.testing.assert_array_equal(b.bas[:, 0].numpy(), ls)
    np.testing.assert_allclose(
        b.bas_coord.numpy(), np.repeat([mol.bas_coord(i) for i in range(mol.nbas)], nctr, axis=0)
    )
    nfunc = np.array([_ncart(int(l)) if mol.cart else 2 * int(l) + 1 for l in ls])
    np.testing.assert_array_equal(b.bas[:, 3].numpy(), np.concatenate([[0], np.cumsum(nfunc)[:-1]]))
    assert int(b.bas[-1, 3]) + nfunc[-1] == mol.nao
    # primitive blocks are contiguous, in range, with the shell's exponents
    nprim, poff = b.bas[:, 1].numpy(), b.bas[:, 2].numpy()
    assert (poff + nprim <= b.prim.shape[0]).all() and (nprim >= 1).all()
    k = 0
    for i in range(mol.nbas):
        for _ in range(mol.bas_nctr(i)):
            np.testing.assert_array_equal(
                b.prim[poff[k] : poff[k] + nprim[k], 0].numpy(), mol.bas_exp(i)
            )
            k += 1
    assert (b.rcut > 0).all()


def test_pack_basis_l_up_to_4():
    mol = mole("water", "def2-qzvp")
    b = dixc.pack_basis(mol)
    assert int(b.bas[:, 0].max()) == 4 == int(mol._bas[:, 1].max())
    assert b.nao == mol.nao


def test_cart2sph_tables_are_libcints():
    tab = cart2sph_tables()
    off = 0
    for l in range(MAX_L + 1):
        n = _ncart(l) * (2 * l + 1)
        block = tab[off : off + n].reshape(_ncart(l), 2 * l + 1)
        ref = np.eye(_ncart(l)) if l < 2 else gto.cart2sph(l)
        np.testing.assert_array_equal(block, ref)
        off += n
    assert tab.size == off


def test_screening_radius_bounds_values_and_derivatives():
    """Beyond rcut, every AO of the shell and its first and second derivatives is < cutoff."""
    mol = mole("water", "def2-tzvp")
    cutoff = 1e-10
    b = dixc.pack_basis(mol, cutoff=cutoff)
    rng = np.random.default_rng(0)
    # Map dixc shells to PySCF shells (one per contraction).
    pyscf_shell = np.repeat(np.arange(mol.nbas), [mol.bas_nctr(i) for i in range(mol.nbas)])
    for s in range(b.nshell):
        ib = int(pyscf_shell[s])
        r = float(b.rcut[s])
        dirs = rng.standard_normal((64, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        pts = mol.bas_coord(ib) + (r + 1e-3) * dirs
        vals = mol.eval_gto("GTOval_sph_deriv2", pts, shls_slice=(ib, ib + 1))
        assert np.abs(vals).max() < cutoff, (s, r)
        # and the radius is not grossly loose: at half the radius something is above the cutoff
        pts_in = mol.bas_coord(ib) + 0.5 * r * dirs
        vals_in = mol.eval_gto("GTOval_sph_deriv2", pts_in, shls_slice=(ib, ib + 1))
        assert np.abs(vals_in).max() > cutoff, (s, r)


def test_tighter_cutoff_gives_larger_radii():
    mol = mole("water", "def2-svp")
    loose, tight = dixc.pack_basis(mol, cutoff=1e-8), dixc.pack_basis(mol, cutoff=1e-14)
    assert (tight.rcut > loose.rcut).all()
    assert tight.cutoff == 1e-14


def test_subset_is_the_shells_aos(acetamide, device):
    """Basis.subset: the sub-basis' AOs (values and derivatives to second order) are exactly the
    selected shells' columns of the full basis, in their order (a shell of each l, the first and
    the last shell)."""
    _, basis = acetamide
    basis = basis.to(device)
    ls = basis.bas[:, 0].cpu()
    pick = sorted({0, basis.nshell - 1} | {int((ls == l).nonzero()[0]) for l in ls.unique()})
    shells = torch.tensor(pick, device=device)
    sub, ao = basis.subset(shells)
    assert sub.nshell == len(pick) and sub.nao == len(ao) == len(set(ao.tolist()))
    coords = torch.randn(300, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    coords = coords.to(device)
    full, part = dixc.ops.eval_ao(basis, coords, 2), dixc.ops.eval_ao(sub, coords, 2)
    assert torch.equal(part, full[:, ao])
    empty, none = basis.subset(torch.zeros(0, dtype=torch.long, device=device))
    assert empty.nao == 0 and none.numel() == 0


def test_basis_to_device(device):
    b = dixc.pack_basis(mole("water", "sto-3g")).to(device)
    assert all(t.device.type == device.type for t in b.tensors)
    assert b.device.type == device.type


def test_pack_basis_rejects_l_above_6():
    mol = gto.M(atom="H 0 0 0", basis={"H": [[0, [1.0, 1.0]], [7, [1.0, 1.0]]]}, spin=1, verbose=0)
    with pytest.raises(ValueError, match=r"l = 7.*l <= 6"):
        dixc.pack_basis(mol)


def test_pack_basis_rejects_unbuilt_mole():
    """The docstring promises a ValueError for an unbuilt Mole (not an empty basis)."""
    mol = gto.Mole(atom="H 0 0 0; H 0 0 0.74", basis="sto-3g")
    with pytest.raises(ValueError, match="build"):
        dixc.pack_basis(mol)


def test_make_grid_matches_pyscf():
    mol = mole("water", "def2-svp")
    grid, grids = dixc.make_grid(mol, level=1)
    assert grid.coords.dtype == torch.float64 and grid.coords.shape == (grid.ngrid, 3)
    np.testing.assert_array_equal(grid.coords.numpy(), grids.coords)
    np.testing.assert_array_equal(grid.weights.numpy(), grids.weights)
    # the grid integrates a normalised s Gaussian on the oxygen to 1
    a = 1.3
    r2 = ((grid.coords - torch.as_tensor(mol.atom_coord(0))) ** 2).sum(1)
    integral = (grid.weights * (2 * a / np.pi) ** 1.5 * torch.exp(-2 * a * r2)).sum()
    assert abs(float(integral) - 1.0) < 1e-4  # level-1 quadrature
    unpruned, _ = dixc.make_grid(mol, level=1, prune=False)
    assert unpruned.ngrid > grid.ngrid
