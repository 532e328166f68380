"""``DixcNumInt`` (PySCF ``NumInt`` on dixc's kernels) vs PySCF's own ``NumInt``, float64.

Every quantity is compared on the same PySCF grid: V_xc and energies of ``nr_rks``, the XC kernel
of ``cache_xc_kernel`` / ``cache_xc_kernel1`` (spin 0; spin 1 of a restricted and of an
unrestricted density), the f_xc products of ``nr_rks_fxc`` / ``nr_rks_fxc_st`` (non-symmetric,
batched response densities as TDDFT passes them), and the end results PySCF builds on them:
orbital-Hessian products of ``gen_response`` and TDA / TDDFT excitation energies. Tolerance: 1e-10
relative (max |dixc - PySCF| / max |PySCF|, the parity tier's, ``test_ops_pyscf.py``) for
everything evaluated on the grid (measured: <= 2e-12, the largest in v_sigma where the density is
tiny); excitation energies to 1e-11 Hartree.

f_xc itself is compared through its contractions: on grid points where the density is ~1e-12,
meta-GGA kernels amplify last-digit differences of rho and tau into large relative errors of
individual f_xc entries that have no weight in any integral.
"""

from __future__ import annotations

import numpy as np
import pytest
from pyscf import dft, lib
from pyscf.dft import numint

from _util import rel_err
from dixc import molecules
from dixc.pyscf_numint import DixcNumInt

TOL = 1e-10
# one functional per xctype dixc does, and the reference hybrid (its semilocal part is a GGA)
FUNCTIONALS = ["LDA,VWN", "PBE", "TPSS", "B3LYP"]


def _converged(name: str, functionals) -> dict:
    mol = molecules.mole(name)
    out = {}
    with lib.with_omp_threads(1):
        for xc in functionals:
            mf = dft.RKS(mol, xc=xc)
            mf.grids.level = 1
            mf.conv_tol = 1e-10
            mf.verbose = 0
            mf.kernel()
            assert mf.converged
            out[xc] = mf
    return out


@pytest.fixture(scope="module")
def scf():
    """Converged SCFs of acetamide (def2-SVP, grid level 1), one per functional."""
    return _converged("qm9_acetamide", FUNCTIONALS)


@pytest.fixture(scope="module")
def scf_water():
    """The same for water (the Davidson solves of the excitation tests are PySCF-bound)."""
    return _converged("water", ["PBE", "TPSS", "B3LYP"])


def _pair(mf) -> tuple[numint.NumInt, DixcNumInt]:
    return numint.NumInt(), DixcNumInt()


def _dms(nao: int, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, nao, nao))  # not symmetric


@pytest.mark.parametrize("xc", FUNCTIONALS)
def test_nr_rks_energy_and_vxc(scf, xc):
    mf = scf[xc]
    ref, new = _pair(mf)
    dm = mf.make_rdm1()
    for d in (dm, np.stack([dm, 0.5 * (dm + dm.T) + 0.01 * np.eye(dm.shape[0])])):
        n0, e0, v0 = ref.nr_rks(mf.mol, mf.grids, xc, d)
        n1, e1, v1 = new.nr_rks(mf.mol, mf.grids, xc, d)
        assert np.shape(v1) == np.shape(v0)
        assert rel_err(np.atleast_1d(n1), np.atleast_1d(n0)) <= TOL
        assert rel_err(np.atleast_1d(e1), np.atleast_1d(e0)) <= TOL
        assert rel_err(v1, v0) <= TOL


@pytest.mark.parametrize("xc", FUNCTIONALS)
@pytest.mark.parametrize("spin", [0, 1])
def test_cache_xc_kernel(scf, xc, spin):
    """rho and v_xc equal; f_xc equal through nr_rks_fxc(_st) with each side's own kernel."""
    mf = scf[xc]
    ref, new = _pair(mf)
    c, occ = mf.mo_coeff, mf.mo_occ
    dms = _dms(mf.mol.nao, 3)
    cases = [((c, occ), (mf.make_rdm1(),))]
    if spin == 1:  # the unrestricted form PySCF's singlet/triplet response uses
        cases.append((([c, c], [occ * 0.5, occ * 0.5]), (np.stack([mf.make_rdm1() * 0.5] * 2),)))
    for mo_args, dm_args in cases:
        for r0, r1 in (
            (ref.cache_xc_kernel(mf.mol, mf.grids, xc, *mo_args, spin),
             new.cache_xc_kernel(mf.mol, mf.grids, xc, *mo_args, spin)),
            (ref.cache_xc_kernel1(mf.mol, mf.grids, xc, *dm_args, spin),
             new.cache_xc_kernel1(mf.mol, mf.grids, xc, *dm_args, spin)),
        ):  # fmt: skip
            assert type(r1[0]) is type(r0[0])
            assert rel_err(np.asarray(r1[0]), np.asarray(r0[0])) <= TOL
            for a, b in zip(r1[1], r0[1], strict=True):  # v_xc components
                assert rel_err(a, b) <= TOL
            fxc0, fxc1 = r0[2], r1[2]
            assert fxc1.shape == fxc0.shape
            if spin == 0:
                v0 = ref.nr_rks_fxc(mf.mol, mf.grids, xc, None, dms, fxc=fxc0)
                v1 = new.nr_rks_fxc(mf.mol, mf.grids, xc, None, dms, fxc=fxc1)
                assert rel_err(v1, v0) <= TOL
            else:
                for singlet in (True, False):
                    v0 = ref.nr_rks_fxc_st(
                        mf.mol, mf.grids, xc, None, dms, singlet=singlet, fxc=fxc0
                    )
                    v1 = new.nr_rks_fxc_st(
                        mf.mol, mf.grids, xc, None, dms, singlet=singlet, fxc=fxc1
                    )
                    assert rel_err(v1, v0) <= TOL


@pytest.mark.parametrize("xc", FUNCTIONALS)
def test_nr_rks_fxc(scf, xc):
    """Batched non-symmetric response densities, a single one, a chunked batch, fxc from dm0."""
    mf = scf[xc]
    ref, new = _pair(mf)
    dm0 = mf.make_rdm1()
    fxc = ref.cache_xc_kernel1(mf.mol, mf.grids, xc, dm0)[2]
    dms = _dms(mf.mol.nao, 5, seed=1)
    v0 = ref.nr_rks_fxc(mf.mol, mf.grids, xc, dm0, dms, 0, 0, None, None, fxc)
    v1 = new.nr_rks_fxc(mf.mol, mf.grids, xc, dm0, dms, 0, 0, None, None, fxc)
    assert v1.shape == (5, mf.mol.nao, mf.mol.nao)
    assert rel_err(v1, v0) <= TOL
    assert np.abs(v1 - v1.transpose(0, 2, 1)).max() == 0.0  # symmetric by construction
    single = new.nr_rks_fxc(mf.mol, mf.grids, xc, dm0, dms[2], fxc=fxc)
    assert single.shape == dms[2].shape and rel_err(single, v0[2]) <= TOL
    # max_memory so small that every matrix is its own chunk; fxc computed from dm0
    chunked = new.nr_rks_fxc(mf.mol, mf.grids, xc, dm0, dms.reshape(5, 1, *dms.shape[1:]),
                             max_memory=1e-6)  # fmt: skip
    assert chunked.shape == v0.shape and rel_err(chunked, v0) <= TOL


def test_hartree_fock_part_has_no_grid_work(scf):
    mf = scf["PBE"]
    dms = _dms(mf.mol.nao, 2)
    v = DixcNumInt().nr_rks_fxc(mf.mol, mf.grids, "HF", None, dms)
    ref = numint.NumInt().nr_rks_fxc(mf.mol, mf.grids, "HF", None, dms)
    assert v.shape == ref.shape and not v.any() and not ref.any()


def test_what_dixc_does_not_do_goes_to_pyscf(scf, monkeypatch):
    """Density-Laplacian meta-GGAs and complex response matrices run PySCF's own code."""
    mf = scf["TPSS"]
    new = DixcNumInt()
    calls = []

    def pyscf_kernel1(self, mol, grids, xc_code, dm, spin=0, max_memory=2000):
        calls.append(xc_code)
        return "pyscf"

    monkeypatch.setattr(numint.NumInt, "cache_xc_kernel1", pyscf_kernel1)
    monkeypatch.setattr(numint, "MGGA_DENSITY_LAPL", True)
    assert new.cache_xc_kernel1(mf.mol, mf.grids, "TPSS", mf.make_rdm1()) == "pyscf"
    assert len(new.cache_xc_kernel1(mf.mol, mf.grids, "PBE", mf.make_rdm1())) == 3  # dixc's
    assert calls == ["TPSS"]
    monkeypatch.setattr(numint, "MGGA_DENSITY_LAPL", False)
    dms = _dms(mf.mol.nao, 1).astype(np.complex128)
    with pytest.raises(NotImplementedError, match="complex"):  # PySCF's own message
        new.nr_rks_fxc(mf.mol, mf.grids, "PBE", mf.make_rdm1(), dms, fxc=np.zeros((4, 4, 1)))


@pytest.mark.parametrize("xc", ["PBE", "B3LYP"])
def test_orbital_hessian_products(scf, xc):
    """gen_response(hermi=1) products (what dixc generate's Hessian targets are made of)."""
    mf = scf[xc]
    dms = _dms(mf.mol.nao, 4, seed=2)
    dms = dms + dms.transpose(0, 2, 1)
    out = []
    for ni in _pair(mf):
        m = mf.copy()
        m._numint = ni
        out.append(m.gen_response(mf.mo_coeff, mf.mo_occ, hermi=1)(dms))
    assert rel_err(out[1], out[0]) <= TOL


@pytest.mark.parametrize(
    "xc, method", [("PBE", "TDA"), ("TPSS", "TDA"), ("B3LYP", "TDA"), ("B3LYP", "TDDFT")]
)
def test_excitation_energies(scf_water, xc, method):
    """PySCF's Davidson on each NumInt (same guess, default thresholds): the same roots to 1e-11 Eh
    (measured 3e-14 on acetamide): products equal to ~1e-15 give the same iterates."""
    mf = scf_water[xc]
    res = []
    for ni in _pair(mf):
        m = mf.copy()
        m._numint = ni
        td = getattr(m, method)()
        td.nstates, td.verbose = 3, 0
        with lib.with_omp_threads(1):
            td.kernel()
        assert np.all(td.converged)
        res.append((td.e, td.oscillator_strength(gauge="length")))
    (e0, f0), (e1, f1) = res
    print(f"{xc} {method}: {e1 * 27.211386} eV, |dE| {np.abs(e1 - e0).max():.1e} Eh")
    assert np.abs(e1 - e0).max() <= 1e-11
    assert np.abs(f1 - f0).max() <= 1e-9
