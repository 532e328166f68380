"""``dixc run``: a functional on xyz molecules, against PySCF on the same molecule and grid.

Reference: PySCF's own RKS (libxc PBE, exact J, the same grid level), its TDDFT and oscillator
strengths, and PySCF's drop-in RKS with the same Torch functional (``dixc.pyscf_plugin``).
Tolerances: total energies 1e-8 Eh (both SCFs converge to 1e-10 Eh and |G| 1e-6, whose energy
error is second order), orbital energies 1e-5 eV, dipoles 1e-5 D, excitation energies 1e-5 eV and
oscillator strengths 1e-6 (Davidson residual 1e-7 Eh). Measured (PBE formaldehyde, grid level 2):
energy 1e-13 Eh, dipole 1e-6 D, excitation energies 1.7e-6 eV, oscillator strengths 8e-8.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from pyscf import dft, gto

import dixc.functionals
from _util import EGXC_SMALL, exact_states, excited_gradient, perturbed
from dixc import pyscf_plugin, sources
from dixc.run import RunConfig, _resumable_rows, run_molecule

pytestmark = pytest.mark.slow

WATER = "3\nwater\nO 0 0 0.1178\nH 0 0.7555 -0.4712\nH 0 -0.7555 -0.4712\n"
FORMALDEHYDE = "4\nCH2O\nC 0 0 0\nO 0 0 1.205\nH 0 0.94 -0.587\nH 0 -0.94 -0.587\n"
HYDROXIDE = "2\ncharge=-1\nO 0 0 0\nH 0 0 0.97\n"
HARTREE2EV = 27.211386245988
LEVEL = 2


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / f"{name}.xyz"
    path.write_text(text)
    return str(path)


def cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "dixc.cli", "run", *args, "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def pyscf_pbe(path: str):
    mol = gto.M(atom=path, basis="def2-svp", charge=sources.xyz_molecules(path)[0].charge)
    mol.verbose = 0
    mf = dft.RKS(mol, xc="PBE")
    mf.grids.level = LEVEL
    mf.conv_tol = 1e-11
    mf.kernel()
    assert mf.converged
    return mol, mf


@pytest.mark.parametrize("tda", [False, True])
def test_pbe_matches_pyscf(tmp_path, tda):
    """Energy, orbital energies, dipole, excitations and oscillator strengths of PBE formaldehyde
    (exact J) equal PySCF's PBE, TDDFT / TDA on the same grid."""
    path = write(tmp_path, "ch2o", FORMALDEHYDE)
    mol, mf = pyscf_pbe(path)
    td = mf.TDA() if tda else mf.TDDFT()
    td.nstates, td.conv_tol = 4, 1e-10
    td.kernel()
    config = RunConfig(grid_level=LEVEL, coulomb="exact", n_states=4, tda=tda)
    pbe = dixc.functionals.create("pbe")
    row, arrays = run_molecule(sources.xyz_molecules(path)[0], pbe, config)
    nocc = mol.nelectron // 2
    assert row["converged"] and row["energy"] == row["energy_scf"]
    assert abs(row["energy"] - mf.e_tot) < 1e-8
    assert abs(row["homo_ev"] - mf.mo_energy[nocc - 1] * HARTREE2EV) < 1e-5
    assert abs(row["lumo_ev"] - mf.mo_energy[nocc] * HARTREE2EV) < 1e-5
    np.testing.assert_allclose(row["dipole_debye"], mf.dip_moment(verbose=0), rtol=0, atol=1e-5)
    ex = row["excitations"]
    assert ex["method"] == ("tda" if tda else "rpa") and all(ex["converged"])
    np.testing.assert_allclose(ex["e_ev"], td.e * HARTREE2EV, rtol=0, atol=1e-5)
    np.testing.assert_allclose(ex["f"], td.oscillator_strength(gauge="length"), rtol=0, atol=1e-6)
    assert max(ex["f"]) > 1e-2  # a bright state among them: the comparison is not 0 == 0
    dm = mf.make_rdm1()
    assert np.abs(arrays["dm"] - dm).max() < 1e-5


def test_learned_functional_file_matches_pyscf_drop_in(tmp_path):
    """A saved (randomly initialised) XCdiff through ``dixc run`` (CLI, JSON, --save) gives the
    energy of PySCF's SCF with the same functional as a drop-in; the density-fitted default's
    energy, with its Coulomb term recomputed exactly at the density, is within 1e-6 Eh (PBE
    formaldehyde: 3e-9; the density-fitted SCF energy itself is 3e-5 off)."""
    f = dixc.functionals.create("xcdiff")
    ckpt = str(tmp_path / "xcdiff.safetensors")
    dixc.functionals.save(f, ckpt)
    path = write(tmp_path, "water", WATER)
    mol, _ = pyscf_pbe(path)
    mf = pyscf_plugin.RKS(mol, dixc.functionals.load(ckpt), conv_tol=1e-11, verbose=0)
    mf.grids.level = LEVEL
    e_ref = mf.kernel()
    assert mf.converged
    out = str(tmp_path / "out.json")
    for coulomb, tol in (("exact", 1e-8), ("df", 1e-6)):
        save = str(tmp_path / f"orbitals-{coulomb}")
        r = cli(ckpt, path, "--grid-level", str(LEVEL), "--coulomb", coulomb, "--json", out,
                "--save", save)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert "| water | H2O |" in r.stdout
        res = json.load(open(out))
        row = res["molecules"][0]
        assert res["architecture"] == "xcdiff" and row["converged"]
        assert abs(row["energy"] - e_ref) < tol, (coulomb, row["energy"] - e_ref)
        saved = np.load(os.path.join(save, "water.npz"))
        assert float(saved["energy"]) == row["energy"]
        # the orbitals diagonalise F[dm]: their density is dm up to the SCF's last step
        c, occ = saved["mo_coeff"], saved["mo_occ"]
        assert np.abs((c * occ) @ c.T - saved["dm"]).max() < 1e-5


def test_hybrid_from_learned_density(tmp_path):
    """--hybrid: PySCF B3LYP from the default guess and from the PBE density reach one energy."""
    path = write(tmp_path, "water", WATER)
    config = RunConfig(grid_level=LEVEL, hybrid="B3LYP")
    row, _ = run_molecule(sources.xyz_molecules(path)[0], dixc.functionals.create("pbe"), config)
    h = row["hybrid"]
    assert h["default"]["converged"] and h["learned"]["converged"]
    assert abs(h["default"]["e_tot"] - h["learned"]["e_tot"]) < 1e-8
    assert h["learned"]["guess_cycles"] == row["scf_cycles"]
    assert 0 < h["learned"]["cycles"] < h["default"]["cycles"]


def test_ion(tmp_path):
    """OH-: the charge from the xyz comment reaches the SCF (10 electrons, PySCF's energy)."""
    path = write(tmp_path, "oh", HYDROXIDE)
    _, mf = pyscf_pbe(path)
    config = RunConfig(grid_level=LEVEL, coulomb="exact")
    row, _ = run_molecule(sources.xyz_molecules(path)[0], dixc.functionals.create("pbe"), config)
    assert (row["charge"], row["nelectron"]) == (-1, 10)
    assert abs(row["energy"] - mf.e_tot) < 1e-8


STRETCHED = "3\nwater, stretched\nO 0 0 0.1178\nH 0 0.80 -0.4712\nH 0 -0.80 -0.4712\n"


def test_geometry_optimisation_matches_pyscf(tmp_path):
    """--opt: PBE water from a stretched start reaches PySCF's own PBE optimum (geomeTRIC on libxc
    PBE, same grid, grid response on) to 1e-6 Angstrom (measured 1e-13 Bohr); the saved xyz reads
    back through dixc, and the reported energy is PySCF's PBE energy there (1e-8 Eh). EG-XC as
    initialised (PBE exactly, through the nonlocal gradient path) reaches the same optimum. (The
    nonlocal gradient itself, away from the initialisation, is checked against finite
    differences in test_pyscf_plugin.)"""
    from pyscf.geomopt.geometric_solver import kernel as geometric_kernel

    path = write(tmp_path, "wst", STRETCHED)
    out, save = str(tmp_path / "out.json"), str(tmp_path / "saved")
    r = cli("pbe", path, "--opt", "--grid-level", str(LEVEL), "--coulomb", "exact", "--json", out,
            "--save", save)  # fmt: skip
    assert r.returncode == 0, r.stderr
    row = json.load(open(out))["molecules"][0]
    opt = row["optimization"]
    assert opt["converged"] and opt["n_steps"] >= 2 and opt["energies"][-1] < opt["energies"][0]
    _, mf = pyscf_pbe(path)
    grad = mf.nuc_grad_method()
    grad.grid_response = True
    converged, mol_eq = geometric_kernel(grad, maxsteps=100)
    assert converged
    want = mol_eq.atom_coords(unit="Angstrom")
    np.testing.assert_allclose(opt["coords_angstrom"], want, rtol=0, atol=1e-6)
    back = sources.xyz_molecules(os.path.join(save, "wst.xyz"))[0]
    assert back.symbols == ("O", "H", "H") and back.charge == 0
    np.testing.assert_allclose(back.coords, want, rtol=0, atol=1e-6)
    ref = dft.RKS(mol_eq, xc="PBE")
    ref.grids.level, ref.conv_tol, ref.verbose = LEVEL, 1e-11, 0
    assert abs(row["energy"] - ref.kernel()) < 1e-8
    egxc = str(tmp_path / "egxc.safetensors")
    dixc.functionals.save(dixc.functionals.create("egxc"), egxc)
    r = cli(egxc, path, "--opt", "--grid-level", str(LEVEL), "--coulomb", "exact", "--json", out)
    assert r.returncode == 0, r.stderr
    row = json.load(open(out))["molecules"][0]
    assert row["optimization"]["converged"]
    np.testing.assert_allclose(row["optimization"]["coords_angstrom"], want, rtol=0, atol=1e-6)


def test_forces_equal_pyscf_drop_in(tmp_path):
    """--forces: the analytic nuclear gradient of the SCF energy with a nonlocal learned functional
    (EG-XC, parameters moved off the initialisation; grid response on) equals PySCF's gradient
    after PySCF's own SCF with the functional as a drop-in, with exact and with density-fitted J
    (the same auxiliary basis): 1e-7 Eh/Bohr (measured 4e-9, the SCFs' convergence); the
    forces sum to zero (1e-9; measured 1e-14). The table shows the largest component."""
    torch.manual_seed(2)
    f = perturbed(dixc.functionals.create("egxc", **EGXC_SMALL), scale=0.05, seed=1)
    ckpt = str(tmp_path / "egxc.safetensors")
    dixc.functionals.save(f, ckpt)
    path = write(tmp_path, "wst", STRETCHED)
    mol, _ = pyscf_pbe(path)
    out = str(tmp_path / "out.json")
    for coulomb in ("exact", "df"):
        r = cli(ckpt, path, "--forces", "--grid-level", str(LEVEL), "--coulomb", coulomb,
                "--conv-tol-grad", "1e-8", "--json", out)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert "max |dE/dR| (Eh/Bohr)" in r.stdout
        row = json.load(open(out))["molecules"][0]
        g = np.array(row["gradient"])
        mf = pyscf_plugin.RKS(mol, dixc.functionals.load(ckpt), conv_tol=1e-11, verbose=0)
        mf.grids.level = LEVEL
        if coulomb == "df":
            mf = mf.density_fit(auxbasis="def2-universal-jkfit")
        assert abs(mf.kernel() - row["energy_scf"]) < 1e-8
        ref = mf.nuc_grad_method()
        ref.grid_response = True
        assert np.abs(g - ref.kernel()).max() < 1e-7, coulomb
        assert np.abs(g.sum(axis=0)).max() < 1e-9
        assert row["gradient_max"] == np.abs(g).max() > 1e-2  # stretched: far from the minimum


def test_tddft_forces_equal_pyscf(tmp_path):
    """--tddft-forces: the nuclear gradients of the excited states' total energies (PBE water,
    exact J, 2 states; dixc's own SCF and Davidson amplitudes handed to PySCF's TDA / TDDFT
    gradients, grid response added) equal native PySCF's (libxc PBE, its own SCF, the exact
    eigenvectors of its response matrix, same grid) plus the XC grid response of the densities
    PySCF built (``excited_grid_response``, read from PySCF's hook in the test):
    1e-6 Eh/Bohr (measured 2e-8 for both: dixc's default Davidson tolerance, SCF to 1e-8); the
    response itself is 2.7e-5 - 2.8e-5 (without it the CLI would fail this);
    TDDFT through the CLI (JSON, table column), TDA in process. Settings that cannot work
    (no --tddft, density-fitted J, a nonlocal functional without the grid response) are refused
    before any work."""
    path = write(tmp_path, "water", WATER)
    _, mf = pyscf_pbe(path)
    out = str(tmp_path / "out.json")
    r = cli("pbe", path, "--grid-level", str(LEVEL), "--coulomb", "exact", "--tddft", "2",
            "--tddft-forces", "--conv-tol-grad", "1e-8", "--json", out)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "excited max |dE/dR| (Eh/Bohr)" in r.stdout
    rows = {"rpa": json.load(open(out))["molecules"][0]["excitations"]}
    config = RunConfig(grid_level=LEVEL, coulomb="exact", n_states=2, tda=True,
                       conv_tol_grad=1e-8, tddft_forces=True)  # fmt: skip
    pbe = dixc.functionals.create("pbe")
    rows["tda"] = run_molecule(sources.xyz_molecules(path)[0], pbe, config)[0]["excitations"]
    for method, ex in rows.items():
        kind = "TDA" if method == "tda" else "TDDFT"
        states = exact_states(mf, kind, 2)
        g = np.array(ex["gradient"])
        assert g.shape == (2, 3, 3)
        for k in range(2):
            want = excited_gradient(mf, kind, states, k + 1, response=pbe)
            assert np.abs(g[k] - want).max() < 1e-6, (method, k, np.abs(g[k] - want).max())
            fixed = excited_gradient(mf, kind, states, k + 1)
            assert np.abs(fixed - want).max() > 1e-5
            assert ex["gradient_max"][k] == np.abs(g[k]).max() > 1e-2
    for args, why in (
        (("--tddft-forces",), "--tddft-forces needs --tddft N"),
        (("--tddft", "1", "--tddft-forces"), "--tddft-forces needs --coulomb exact"),
    ):
        r = cli("pbe", path, *args)
        assert r.returncode == 2 and why in r.stderr, r.stderr
    f = dixc.functionals.create("egxc", **EGXC_SMALL)  # nonlocal: only with the grid response
    fixed = RunConfig(coulomb="exact", n_states=1, tddft_forces=True, tddft_grid_response=False)
    with pytest.raises(ValueError, match="nonlocal EGXC need the grid response"):
        fixed.check(f)
    dataclasses.replace(fixed, tddft_grid_response=True).check(f)


def test_bad_inputs(tmp_path):
    good = write(tmp_path, "water", WATER)
    odd = write(tmp_path, "oh", "2\nOH radical\nO 0 0 0\nH 0 0 0.97\n")
    r = cli("pbe", good, odd)
    assert r.returncode == 2 and "molecule 'oh': has an odd number of electrons" in r.stderr
    r = cli("no_such_functional", good)
    assert r.returncode == 2 and "does not exist" in r.stderr, r.stderr
    # a TDDFT that cannot run (He in STO-3G has no virtual orbital): listed, the rest is kept
    he = write(tmp_path, "he", "1\nhelium\nHe 0 0 0\n")
    out = str(tmp_path / "out.json")
    r = cli("pbe", he, "--basis", "sto-3g", "--grid-level", "1", "--tddft", "2", "--json", out)
    assert r.returncode == 1 and "he: no excitations: dixc: he has no virtual orbitals" in r.stderr
    row = json.load(open(out))["molecules"][0]
    assert row["converged"] and row["lumo_ev"] is None and "error" in row["excitations"]
    assert "| he | He | diis" in r.stdout and "failed (see JSON)" in r.stdout
    r = cli("pbe", good, "--basis", "def2-svpx")
    assert r.returncode == 2 and "PySCF does not know the basis 'def2-svpx'" in r.stderr
    r = cli("pbe", good, odd, "--skip-invalid", "--grid-level", "1", "--json", out)
    assert r.returncode == 0, r.stderr
    res = json.load(open(out))
    assert [m["id"] for m in res["molecules"]] == ["water"]
    assert res["skipped"][0]["id"] == "oh"
    # an SCF that cannot converge in 2 cycles per strategy: listed, exit status 1, no orbitals
    save = str(tmp_path / "orbitals")
    r = cli("pbe", good, "--grid-level", "1", "--max-cycle", "2", "--json", out, "--save", save)
    assert r.returncode == 1 and "water: no converged SCF (diis: not converged" in r.stderr
    assert not json.load(open(out))["molecules"][0]["converged"]
    assert not os.path.exists(save)


def test_json_is_written_per_molecule_and_resume_skips_what_is_done(tmp_path):
    """--json is complete after every molecule; --resume keeps the converged rows of the same
    functional and settings (not recomputed: their wall time stays), computes the rest, and
    refuses a file made with another functional or other settings (settings added since the
    file was written count as their defaults)."""
    a = write(tmp_path, "water", WATER)
    b = write(tmp_path, "oh", HYDROXIDE)
    out = str(tmp_path / "out.json")
    common = ("--grid-level", "1", "--json", out)
    r = cli("pbe", a, b, *common)
    assert r.returncode == 0, r.stderr
    full = json.load(open(out))
    assert [m["id"] for m in full["molecules"]] == ["water", "oh"]
    cut = dict(full, molecules=full["molecules"][:1])  # as if killed during the second molecule
    # ... by a dixc from before --forces: a setting it did not record takes its default
    old_keys = ("forces", "tddft_grid_response")
    cut["config"] = {k: v for k, v in full["config"].items() if k not in old_keys}
    with open(out, "w") as fh:
        json.dump(cut, fh)
    r = cli("pbe", a, b, *common, "--resume")
    assert r.returncode == 0, r.stderr
    res = json.load(open(out))
    assert res["molecules"][0] == full["molecules"][0]  # kept as it was, wall time included
    assert res["molecules"][1]["wall_s"] != full["molecules"][1]["wall_s"]  # computed again
    assert abs(res["molecules"][1]["energy"] - full["molecules"][1]["energy"]) < 1e-9
    r = cli("blyp", a, b, *common, "--resume")
    assert r.returncode == 2 and "holds results of another functional" in r.stderr
    r = cli("pbe", a, b, "--grid-level", "2", "--json", out, "--resume")
    assert r.returncode == 2 and "computed with other settings" in r.stderr
    r = cli("pbe", a, b, *common, "--forces", "--resume")
    assert r.returncode == 2 and "computed with other settings" in r.stderr
    r = cli("pbe", a, "--resume")
    assert r.returncode == 2 and "--resume needs --json FILE" in r.stderr
    # excited-state forces from before the grid response existed are not what a run makes now
    header = {k: full[k] for k in ("functional", "architecture", "functional_sha256")}
    header["config"] = dict(full["config"], tddft_forces=True, n_states=1, coulomb="exact")
    before = {k: v for k, v in header["config"].items() if k != "tddft_grid_response"}
    old = dict(header, config=before, molecules=full["molecules"])
    with open(out, "w") as fh:
        json.dump(old, fh)
    with pytest.raises(ValueError, match="computed with other settings"):
        _resumable_rows(out, header)
    assert len(_resumable_rows(out, dict(header, config=old["config"]))) == 2


def test_info_describes_functional_files(tmp_path):
    """``dixc info FILE``: architecture, size, config and the training record; a missing or
    corrupted file is exit status 2 with the reason."""
    f = dixc.functionals.create("xcdiff")
    path = str(tmp_path / "f.safetensors")
    extra = {"preset": "E+rho+grad+hess", "step": 28, "epoch": 3, "seed": 1, "data": "data/train",
             "reference_config_hash": "abc", "validation": {"e_mae": 12.5, "e_mae_nscf": 13.0,
             "rho_l2": 0.02, "n": 3, "nonconv": 0}}  # fmt: skip
    dixc.functionals.save(f, path, extra=extra)
    n = sum(p.numel() for p in f.parameters())
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "dixc.cli", "info", path, "pbe"], env=env,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"architecture  xcdiff (MGGA, local), {n:,} parameters" in r.stdout
    assert "trained       preset E+rho+grad+hess, step 28 (epoch 3), seed 1" in r.stdout
    assert "validation    E MAE 12.500 mEh (at D* 13.000)" in r.stdout
    assert "pbe (GGA, local), 0 parameters" in r.stdout
    with open(path, "r+b") as fh:  # corrupt a byte of the tensor data
        fh.seek(-3, os.SEEK_END)
        fh.write(b"\x00\x01\x02")
    r = subprocess.run([sys.executable, "-m", "dixc.cli", "info", path], env=env,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 2 and "dixc info: error:" in r.stderr, r.stderr
