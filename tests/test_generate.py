"""``dixc generate``: derivative targets vs finite differences, kill-and-resume, retry ladder, CLI.

Small settings keep the module fast on two cores (def2-SVP / STO-3G, grid level 1, one OpenMP
thread); the identities checked hold at any basis and grid since every target is computed on the
same fixed grid as the finite differences.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from dixc import data, generate, reference, sources
from dixc.generate import GenerateConfig
from dixc.reference import ReferenceConfig

WATER = """3
water
O  0.000000  0.000000  0.117790
H  0.000000  0.755453 -0.471161
H  0.000000 -0.755453 -0.471161
"""

# Small closed-shell molecules for the pipeline tests (Angstrom).
SMALL = {
    "h2": "2\nH2\nH 0 0 0\nH 0 0 0.74\n",
    "water": WATER,
    "ammonia": "4\nNH3\nN 0 0 0.1\nH 0 0.94 -0.27\nH 0.814 -0.47 -0.27\nH -0.814 -0.47 -0.27\n",
    "methane": "5\nCH4\nC 0 0 0\nH 0.63 0.63 0.63\nH -0.63 -0.63 0.63\nH -0.63 0.63 -0.63\n"
    "H 0.63 -0.63 -0.63\n",
    "formaldehyde": "4\nCH2O\nC 0 0 0\nO 0 0 1.205\nH 0 0.94 -0.587\nH 0 -0.94 -0.587\n",
}

FD_H = 1e-4
FD_TOL = 1e-6


def write_xyz(directory, files: dict[str, str]) -> str:
    os.makedirs(directory, exist_ok=True)
    for name, text in files.items():
        with open(os.path.join(directory, f"{name}.xyz"), "w") as fh:
            fh.write(text)
    return str(directory)


def small_reference(**kw) -> ReferenceConfig:
    base = dict(basis="sto-3g", grid_level=1, k_grad=2, k_hess=2, n_tddft=0)
    base.update(kw)
    return ReferenceConfig(**base)


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    return env


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dixc.cli", "generate", *args],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
        **kw,
    )


# ---------------------------------------------------------------------------------------------
# Finite-difference checks of the stored targets (water and one QM9 molecule)

FD_CONFIG = ReferenceConfig(basis="def2-svp", grid_level=1, k_grad=4, k_hess=4)


@pytest.fixture(
    scope="module", params=["water", pytest.param("qm9_000006", marks=pytest.mark.qm9pack)]
)
def fd_dataset(request, tmp_path_factory):
    """One molecule generated through the full pipeline, read back through dixc.data."""
    tmp = tmp_path_factory.mktemp(request.param)
    if request.param == "water":
        src = [write_xyz(tmp / "in", {"water": WATER})]
        cfg = GenerateConfig(
            out=str(tmp / "out"),
            source=src,
            threads=1,
            progress=False,
            reference=dataclasses.replace(FD_CONFIG, n_tddft=2),  # TDDFT once, on water
        )
    else:
        cfg = GenerateConfig(
            out=str(tmp / "out"),
            source=["qm9"],
            qm9_index="6",
            threads=1,
            progress=False,
            reference=FD_CONFIG,
        )
    summary = generate.generate(cfg)
    assert summary.n_done == 1 and summary.n_failed == 0
    ds = data.ReferenceDataset(cfg.out)
    assert ds.ids == [request.param]
    rec = ds[0]
    ds.close()
    return request.param, rec, cfg


class _PySCF:
    """Energy and gradient at C expm(kappa(X)) on the reference's own grid."""

    def __init__(self, rec, molecule_id: str, cfg: GenerateConfig):
        mols = (
            sources.qm9_molecules(indices="6")
            if molecule_id.startswith("qm9")
            else sources.xyz_molecules(cfg.source)
        )
        self.mol = reference.build_mole(mols[0], cfg.reference)
        self.mf = reference.make_rks(self.mol, cfg.reference, numint="pyscf")  # independent
        self.mf.grids.build()
        self.occ = rec["scf/mo_occ"].numpy()
        self.nocc = int(rec.attrs["nocc"])

    def energy(self, c):
        return self.mf.energy_tot(dm=self.mf.make_rdm1(c, self.occ))

    def gradient(self, c):
        fock = self.mf.get_fock(dm=self.mf.make_rdm1(c, self.occ))
        return reference.grassmann_gradient(c, fock, self.nocc)

    def gradient_hj(self, c):
        dm = self.mf.make_rdm1(c, self.occ)
        f = self.mf.get_hcore() + self.mf.get_j(dm=dm)
        return reference.grassmann_gradient(c, f, self.nocc)


def test_stored_layout_and_dtypes(fd_dataset):
    _, rec, cfg = fd_dataset
    print(rec.id, rec.timings)
    nao, nocc, nvir = (int(rec.attrs[k]) for k in ("nao", "nocc", "nvir"))
    assert rec["scf/dm"].dtype.is_floating_point and rec["scf/dm"].shape == (nao, nao)
    assert rec["grad/x"].shape == (4, nvir, nocc)
    assert rec["hess/hv"].shape == (4, nvir, nocc)
    if rec.id == "water":
        assert rec["tddft/tda_e"].shape == (2,) and bool(rec["tddft/rpa_converged"].all())
        # Water's first singlet (B3LYP/def2-SVP): ~7.6 eV; TDA above full TDDFT.
        assert 0.25 < float(rec["tddft/rpa_e"][0]) <= float(rec["tddft/tda_e"][0]) < 0.32
    else:
        assert not any(k.startswith("tddft/") for k in rec)
    assert int(rec["grad/kind"].sum()) == 1  # one sample is a reference-SCF iterate
    assert rec.attrs["scf_strategy"] == "diis" and rec.attrs["scf_cycles"] > 2
    stages = {"scf", "grad", "hess", "tddft", "total"}
    assert set(rec.timings) == stages | {f"cpu_{k}" for k in stages}
    probs, counts = data.check_file(data.expand_paths(cfg.out)[0])
    assert probs == [] and counts == {"molecules": 1, "failed": 0}


def test_gradient_at_reference_vanishes(fd_dataset):
    _, rec, _ = fd_dataset
    assert float(np.linalg.norm(rec["scf/g"].numpy())) <= 1e-6


def test_gradients_match_energy_finite_differences(fd_dataset):
    """dE/dt of t -> E(C_k expm(t Y)) = <G_k, Y>, central differences at h = 1e-4."""
    mid, rec, cfg = fd_dataset
    ref = _PySCF(rec, mid, cfg)
    c0 = rec["scf/mo_coeff"].numpy()
    rng = np.random.default_rng(0)
    errs = []
    for k in range(rec["grad/x"].shape[0]):
        ck = reference.rotate(c0, rec["grad/x"][k].numpy())
        g = rec["grad/g"][k].numpy()
        assert abs(ref.energy(ck) - float(rec["grad/e_tot"][k])) < 1e-9
        np.testing.assert_allclose(ref.gradient_hj(ck), rec["grad/g_hj"][k].numpy(), atol=1e-10)
        for y in (g, rng.standard_normal(g.shape), rng.standard_normal(g.shape)):
            y = y / np.linalg.norm(y)
            fd = (
                ref.energy(reference.rotate(ck, FD_H * y))
                - ref.energy(reference.rotate(ck, -FD_H * y))
            ) / (2 * FD_H)
            errs.append(abs(fd - float(np.sum(g * y))) / np.linalg.norm(g))
    print(f"{mid}: gradient vs FD of E, max relative error {max(errs):.1e}")
    assert max(errs) <= FD_TOL


def test_hvps_match_gradient_finite_differences(fd_dataset):
    """H v_j = dG/dt of t -> G(C* expm(t v_j)), central differences at h = 1e-4."""
    mid, rec, cfg = fd_dataset
    ref = _PySCF(rec, mid, cfg)
    c0 = rec["scf/mo_coeff"].numpy()
    nocc = int(rec.attrs["nocc"])
    m_hj = c0.T @ rec["scf/fock_hj"].numpy() @ c0
    errs, errs_j = [], []
    for j in range(rec["hess/v"].shape[0]):
        v = rec["hess/v"][j].numpy()
        cp, cm = reference.rotate(c0, FD_H * v), reference.rotate(c0, -FD_H * v)
        fd = (ref.gradient(cp) - ref.gradient(cm)) / (2 * FD_H)
        hv = rec["hess/hv"][j].numpy()
        errs.append(np.abs(fd - hv).max() / np.abs(hv).max())
        # The stored Coulomb part: d g_hj / dt = 4 (M_vv v - v M_oo) + hv_j, M = C^T (h + J) C.
        fd_hj = (ref.gradient_hj(cp) - ref.gradient_hj(cm)) / (2 * FD_H)
        hv_hj = 4 * (m_hj[nocc:, nocc:] @ v - v @ m_hj[:nocc, :nocc]) + rec["hess/hv_j"][j].numpy()
        errs_j.append(np.abs(fd_hj - hv_hj).max() / np.abs(hv_hj).max())
    print(f"{mid}: HVP vs FD of G, max relative error {max(errs):.1e} (J part {max(errs_j):.1e})")
    assert max(errs) <= FD_TOL
    assert max(errs_j) <= FD_TOL


def test_hvps_match_pyscf_newton(fd_dataset):
    """PySCF's second-order SCF returns H X / 2 (DESIGN.md's factor trap)."""
    from pyscf.soscf import newton_ah

    mid, rec, cfg = fd_dataset
    ref = _PySCF(rec, mid, cfg)
    c0, occ = rec["scf/mo_coeff"].numpy(), rec["scf/mo_occ"].numpy()
    ref.mf.mo_coeff, ref.mf.mo_occ, ref.mf.mo_energy = c0, occ, rec["scf/mo_energy"].numpy()
    _, hop, _ = newton_ah.gen_g_hop_rhf(ref.mf, c0, occ)
    for v, hv in zip(rec["hess/v"].numpy(), rec["hess/hv"].numpy(), strict=True):
        np.testing.assert_allclose(2 * hop(v.ravel()), hv.ravel(), atol=1e-9 * np.abs(hv).max())


# ---------------------------------------------------------------------------------------------
# Kill and resume


def _compare_files(a: str, b: str) -> None:
    """Same molecules, datasets and attributes (timings and run metadata excluded)."""
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert fa.attrs["reference_config"] == fb.attrs["reference_config"]
        for kind in (data.MOLECULES, data.FAILED):
            assert sorted(fa[kind]) == sorted(fb[kind]), kind
            for mid in fa[kind]:
                ga, gb = fa[kind][mid], fb[kind][mid]
                assert dict(ga.attrs) == dict(gb.attrs), mid
                names_a, names_b = [], []
                ga.visit(names_a.append)
                gb.visit(names_b.append)
                assert names_a == names_b, mid
                for name in names_a:
                    if isinstance(ga[name], h5py.Dataset):
                        x, y = ga[name][()], gb[name][()]
                        assert x.dtype == y.dtype and x.shape == y.shape, name
                        if np.issubdtype(x.dtype, np.floating):
                            # Equal up to round-off: numpy's SIMD reductions depend on alignment.
                            np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-10, err_msg=name)
                        else:
                            np.testing.assert_array_equal(x, y, err_msg=name)


def test_killed_run_resumes_to_identical_file(tmp_path):
    src = write_xyz(tmp_path / "in", SMALL)
    common = [
        "--source",
        src,
        "--basis",
        "6-31g",
        "--grid-level",
        "1",
        "--k-grad",
        "3",
        "--k-hess",
        "3",
        "--threads",
        "1",
        "--no-progress",
    ]
    ref_out, out = tmp_path / "uninterrupted", tmp_path / "killed"
    r = cli(*common, "--out", str(ref_out))
    assert r.returncode == 0, r.stderr

    shard, parts = generate.shard_paths(str(out), (0, 1))
    proc = subprocess.Popen(
        [sys.executable, "-m", "dixc.cli", "generate", *common, "--out", str(out)],
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not data.list_parts(parts) and proc.poll() is None:
            assert time.monotonic() < deadline, "no molecule written within 120 s"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    written = data.list_parts(parts)
    assert 1 <= len(written) < len(SMALL) and not os.path.exists(shard)
    for p in written:  # every visible part is a complete molecule
        assert data.check_file(p)[0] == []

    cfg = generate.config_from_args(generate_parser().parse_args([*common, "--out", str(out)]))
    summary = generate.generate(cfg)
    assert summary.n_skipped_done == len(written)
    assert summary.n_done == len(SMALL) - len(written)
    assert not os.path.exists(parts)  # merged and removed
    _compare_files(generate.shard_paths(str(ref_out), (0, 1))[0], shard)
    assert cli("--check", str(out)).returncode == 0


def generate_parser():
    import argparse

    p = argparse.ArgumentParser()
    generate.add_arguments(p)
    return p


def test_worker_killed_pool_restarts(tmp_path):
    """SIGKILL of one pool worker: the pool is rebuilt and the file equals a one-process run."""
    src = write_xyz(tmp_path / "in", {k: SMALL[k] for k in ("water", "ammonia", "methane")})
    ref_cfg = small_reference(basis="6-31g")
    one = GenerateConfig(
        out=str(tmp_path / "one"), source=[src], threads=1, progress=False, reference=ref_cfg
    )
    generate.generate(one)

    out = tmp_path / "pool"
    args = [
        "--source",
        src,
        "--basis",
        "6-31g",
        "--grid-level",
        "1",
        "--k-grad",
        "2",
        "--k-hess",
        "2",
        "--threads",
        "1",
        "--workers",
        "2",
        "--no-progress",
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "dixc.cli", "generate", *args],
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        victim, deadline = None, time.monotonic() + 120
        while victim is None and proc.poll() is None:
            assert time.monotonic() < deadline, "no pool worker seen within 120 s"
            victim = _pool_worker(proc.pid)
            time.sleep(0.05)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err
    assert "restarting the pool" in err
    _compare_files(
        generate.shard_paths(one.out, (0, 1))[0], generate.shard_paths(str(out), (0, 1))[0]
    )


def _pool_worker(pid: int) -> int | None:
    """A ProcessPoolExecutor worker (spawned child running spawn_main) of process ``pid``."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            children = [int(c) for c in fh.read().split()]
    except OSError:
        return None
    for c in children:
        try:
            with open(f"/proc/{c}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "spawn_main" in cmd and "resource_tracker" not in cmd:
            return c
    return None


# ---------------------------------------------------------------------------------------------
# SCF failures and the retry ladder


def test_unconverged_scf_is_recorded_as_failed_not_stored(tmp_path):
    src = write_xyz(tmp_path / "in", {"water": WATER})
    cfg = GenerateConfig(
        out=str(tmp_path / "out"),
        source=[src],
        threads=1,
        progress=False,
        reference=small_reference(max_cycle=2, retry=()),
    )
    summary = generate.generate(cfg)
    assert (summary.n_done, summary.n_failed) == (0, 1)
    ok, failed = data.stored_ids(summary.shard_path)
    assert ok == set() and failed == {"water"}
    reason = dict(data.iter_failed(summary.shard_path))["water"]
    assert "did not converge" in reason and "diis" in reason
    assert len(data.ReferenceDataset(cfg.out)) == 0
    # Resuming skips the recorded failure; --retry-failed recomputes it.
    assert generate.generate(cfg).n_skipped_done == 1
    cfg.retry_failed = True
    again = generate.generate(cfg)
    assert (again.n_skipped_done, again.n_failed) == (0, 1)


def test_retry_ladder_converges_and_is_recorded(tmp_path):
    src = write_xyz(tmp_path / "in", {"water": WATER})
    cfg = GenerateConfig(
        out=str(tmp_path / "out"),
        source=[src],
        threads=1,
        progress=False,
        reference=small_reference(max_cycle=4, retry=("newton",)),
    )
    summary = generate.generate(cfg)
    assert summary.n_done == 1
    rec = data.ReferenceDataset(cfg.out)["water"]
    assert rec.attrs["scf_strategy"] == "newton" and not rec.attrs["scf_default_converged"]
    assert float(np.linalg.norm(rec["scf/g"].numpy())) <= 1e-6


# ---------------------------------------------------------------------------------------------
# Bad inputs


@pytest.mark.parametrize(
    ("name", "text", "exclude", "message"),
    [
        ("hf", "2\nHF\nH 0 0 0\nF 0 0 0.92\n", ["F"], "contains excluded element(s) F"),
        ("oh", "2\nOH radical\nO 0 0 0\nH 0 0 0.97\n", [], "odd number of electrons (9"),
        ("o2", "2\ncharge=0 multiplicity=3\nO 0 0 0\nO 0 0 1.21\n", [], "multiplicity 3"),
        ("nh3p", "4\ncharge=1\n" + SMALL["ammonia"].split("\n", 2)[2], [], "charge 1)"),
        ("xx", "2\n\nXx 0 0 0\nH 0 0 1\n", [], "unknown element 'Xx'"),
        ("short", "3\n\nO 0 0 0\nH 0 0 1\n", [], "declares 3 atoms but has only 2"),
        ("nan", "2\n\nH 0 0 zero\nH 0 0 1\n", [], "non-numeric coordinates"),
        ("count", "two\n\nH 0 0 0\nH 0 0 1\n", [], "expected the number of atoms"),
        ("clash", "2\n\nO 0 0 0\nO 0 0 0.01\n", [], "only 0.010 Angstrom apart"),
    ],
)
def test_bad_inputs_give_clear_errors(tmp_path, name, text, exclude, message):
    src = write_xyz(tmp_path / "in", {name: text})
    cfg = GenerateConfig(out=str(tmp_path / "out"), source=[src], exclude=exclude, progress=False)
    with pytest.raises(sources.InvalidMoleculeError) as err:
        generate.generate(cfg)
    assert message in str(err.value)
    assert name in str(err.value)  # names the molecule (or its file)
    assert not os.path.exists(generate.shard_paths(cfg.out, (0, 1))[0])


@pytest.mark.parametrize(
    ("xc", "message"),
    [
        ("b3lypx", "PySCF cannot run the reference functional 'b3lypx'"),
        ("wb97x-d3", "PySCF cannot run the reference functional 'wb97x-d3'"),
        ("B3LYP-D3BJ", "carries a dispersion correction (d3bj)"),
    ],
)
def test_unusable_reference_functional_fails_before_any_work(tmp_path, xc, message):
    """An unknown or dispersion-corrected --xc stops at the configuration, not per molecule."""
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        GenerateConfig(out=str(tmp_path / "out"), source=["x"], reference=small_reference(xc=xc))
    src = write_xyz(tmp_path / "in", {"h2": SMALL["h2"]})
    r = cli("--source", src, "--xc", xc, "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert not os.path.exists(tmp_path / "out")


# Closed-shell ions (10 electrons each) and molecules with an element def2-svp gives an ECP (I:
# 28 core electrons) or not (K: all electrons), Angstrom.
CHARGED_AND_HEAVY = {
    "hydroxide": "2\ncharge=-1\nO 0 0 0\nH 0 0 0.97\n",
    "ammonium": "5\ncharge=1 multiplicity=1\nN 0 0 0\nH 0.59 0.59 0.59\nH -0.59 -0.59 0.59\n"
    "H -0.59 0.59 -0.59\nH 0.59 -0.59 -0.59\n",
    "hi": "2\nhydrogen iodide\nI 0 0 0\nH 0 0 1.609\n",
    "kh": "2\npotassium hydride\nK 0 0 0\nH 0 0 2.24\n",
}
# id: (charge, electrons computed, {element: ECP}, atomic numbers)
EXPECTED = {
    "hydroxide": (-1, 10, {}, [8, 1]),
    "ammonium": (1, 10, {}, [7, 1, 1, 1, 1]),
    "hi": (0, 26, {"I": "def2-svp"}, [53, 1]),
    "kh": (0, 20, {}, [19, 1]),
}


def test_ions_and_ecps_round_trip(tmp_path):
    """Ions and ECP elements are generated, stored, checked and rebuilt as computed.

    The reference is PBE here so that dixc's own engine can recompute it: on the molecule that
    ``record_context`` rebuilds from the file (exact J, the reference's grid), the stored D* gives
    the stored total energy (1e-10 Eh; measured <= 5e-13) and a vanishing Grassmannian gradient
    (|G| < 1e-6, the reference's grad_tol; measured <= 2e-7). That holds only if the rebuilt
    molecule has the ion's electron count (with charge 0, OH- would not even build: 9 electrons)
    and iodine's ECP (without it, 54 electrons instead of 26 and other orbitals). The stored atomic
    numbers are Z (53 for I), not PySCF's ECP-reduced charges (25), and so is the grid's
    ``atom_charges`` (EG-XC's species). Files written before ``charge`` was stored get it back
    from ``nelectron``; ``--check`` flags a charge that contradicts the orbitals.
    """
    import torch

    from dixc.functionals import create
    from dixc.scf import fock

    src = write_xyz(tmp_path / "in", CHARGED_AND_HEAVY)
    cfg = GenerateConfig(
        out=str(tmp_path / "out"),
        source=[src],
        threads=1,
        progress=False,
        reference=small_reference(xc="PBE", basis="def2-svp", k_hess=0),
    )
    summary = generate.generate(cfg)
    assert (summary.n_done, summary.n_failed) == (4, 0)
    assert data.check_file(summary.shard_path)[0] == []
    ds = data.ReferenceDataset(cfg.out)
    pbe = create("pbe")
    for mid, (charge, nelec, ecp, numbers) in EXPECTED.items():
        rec = ds[mid]
        assert rec["atoms/numbers"].tolist() == numbers
        got = (rec.attrs["charge"], rec.attrs["nelectron"], rec.attrs["nocc"])
        assert got == (charge, nelec, nelec // 2)
        assert data.stored_ecp(rec.attrs) == ecp
        mol = data.record_mole(rec, ds.config)
        assert (mol.charge, mol.nelectron, sorted(mol._ecp)) == (charge, nelec, sorted(ecp))
        ctx = data.record_context(rec, ds.config, coulomb="exact")
        assert ctx.grid.atom_charges.tolist() == numbers
        e, f = fock(ctx, pbe, rec["scf/dm"])
        c, nocc = rec["scf/mo_coeff"], nelec // 2
        g = 4.0 * (c[:, nocc:].T @ f @ c[:, :nocc])
        assert abs(float(e) - float(rec["scf/e_tot"])) < 1e-10, mid
        assert float(torch.linalg.norm(g)) < 1e-6, mid
        if not ecp:
            legacy = {k: v for k, v in rec.attrs.items() if k not in ("charge", "ecp")}
            assert data.stored_charge(legacy, numbers) == charge
    ds.close()
    with h5py.File(summary.shard_path, "r+") as fh:
        fh["molecules/hydroxide"].attrs["charge"] = 0
    probs = data.check_file(summary.shard_path)[0]
    assert any("hydroxide: cannot rebuild the molecule (charge 0)" in p for p in probs), probs
    with h5py.File(summary.shard_path, "r+") as fh:
        fh["molecules/hydroxide"].attrs["charge"] = -3  # 12 electrons: builds, but tr(D S) = 10
        fh["molecules/hi"].attrs["ecp"] = "{}"  # all electrons: N = 54
    probs = data.check_file(summary.shard_path)[0]
    assert any("hydroxide: tr(D S) = 10.0000000000 != N = 12" in p for p in probs), probs
    assert any("hi: tr(D S) = 26.0000000000 != N = 54" in p for p in probs), probs


@pytest.mark.parametrize(
    ("ecp", "want"), [(None, {"I": "def2-svp"}), ("none", {}), ("lanl2dz", {"I": "lanl2dz"})]
)
def test_ecp_choice(tmp_path, ecp, want):
    """--ecp: the basis's own ECPs (default), none, or a named set (lanl2dz: 46 core electrons)."""
    mol = sources.xyz_molecules(write_xyz(tmp_path, {"hi": CHARGED_AND_HEAVY["hi"]}))[0]
    config = small_reference(basis="def2-svp", ecp=ecp)
    assert reference.ecp_assignment(mol.symbols, config) == want
    pmol = reference.build_mole(mol, config)
    core = {None: 28, "none": 0, "lanl2dz": 46}[ecp]
    assert pmol.nelectron == 54 - core
    if ecp is None:  # the default leaves the config hash of data made before --ecp unchanged
        assert "ecp" not in config.to_dict()


def test_unknown_basis_or_elements_it_lacks_fail_before_any_work(tmp_path):
    src = write_xyz(tmp_path / "in", {"h2": SMALL["h2"], "hi": CHARGED_AND_HEAVY["hi"]})
    out = str(tmp_path / "out")
    r = cli("--source", src, "--basis", "def2-svpx", "--out", out)
    assert r.returncode == 2 and "PySCF does not know the basis 'def2-svpx'" in r.stderr, r.stderr
    r = cli("--source", src, "--ecp", "lanl9", "--out", out)
    assert r.returncode == 2 and "PySCF does not know the ECP set 'lanl9'" in r.stderr, r.stderr
    r = cli("--source", src, "--basis", "6-31g", "--out", out)
    assert r.returncode == 2, r.stderr
    assert "molecule 'hi': basis '6-31g' has no functions for I" in r.stderr, r.stderr
    assert not os.path.exists(generate.shard_paths(out, (0, 1))[0])


def test_bad_input_cli_exit_code_and_skip_invalid(tmp_path):
    src = write_xyz(tmp_path / "in", {"h2": SMALL["h2"], "hf": "2\nHF\nH 0 0 0\nF 0 0 0.92\n"})
    out = str(tmp_path / "out")
    r = cli("--source", src, "--exclude", "F", "--out", out, "--basis", "sto-3g")
    assert r.returncode == 2
    assert "molecule 'hf': contains excluded element(s) F" in r.stderr
    r = cli(
        "--source",
        src,
        "--exclude",
        "F",
        "--out",
        out,
        "--basis",
        "sto-3g",
        "--grid-level",
        "1",
        "--k-grad",
        "1",
        "--k-hess",
        "1",
        "--threads",
        "1",
        "--no-progress",
        "--skip-invalid",
    )
    assert r.returncode == 0, r.stderr
    assert "skipping invalid input: molecule 'hf'" in r.stderr
    assert data.ReferenceDataset(out).ids == ["h2"]


@pytest.mark.qm9pack
def test_qm9_selection_excludes_fluorine_and_counts_heavy_atoms():
    sel = sources.qm9_molecules(max_heavy=5, exclude=["F"])
    assert len(sel) == 174 and all("F" not in m.symbols for m in sel)
    assert all(m.n_heavy <= 5 for m in sel)
    with_f = sources.qm9_molecules(max_heavy=5)
    assert any("F" in m.symbols for m in with_f) and len(with_f) == len(sel) + 1
    assert [m.id for m in sources.qm9_molecules(heavy="1")] == [
        "qm9_000001",
        "qm9_000002",
        "qm9_000003",
    ]
    a = sources.qm9_molecules(max_heavy=5, exclude="F", subset=7, subset_seed=3)
    b = sources.qm9_molecules(max_heavy=5, exclude="F", subset=7, subset_seed=3)
    assert [m.id for m in a] == [m.id for m in b] and len(a) == 7
    m = sources.qm9_molecules(indices="19")[0]  # acetamide, as embedded in dixc.molecules
    assert m.formula == "C2H5NO" and m.info["smiles"] == "CC(N)=O"
    assert sources.qm9_molecules(indices="25")[0].formula == "C2N2"  # no H: Hill order C first
    assert sources.qm9_molecules(indices="3")[0].formula == "H2O"  # no C: alphabetical
    np.testing.assert_allclose(m.coords[0], [0.0067988926, 1.4996973638, -0.0256703020])


# ---------------------------------------------------------------------------------------------
# Sharding, merge, index, check


def test_shards_merge_to_single_run(tmp_path):
    src = write_xyz(tmp_path / "in", SMALL)
    ref_cfg = small_reference()
    shard_files = []
    for i in range(2):
        cfg = GenerateConfig(
            out=str(tmp_path / "sharded"),
            source=[src],
            shard=(i, 2),
            threads=1,
            progress=False,
            reference=ref_cfg,
        )
        shard_files.append(generate.generate(cfg).shard_path)
    ids = [data.stored_ids(p)[0] for p in shard_files]
    assert ids[0].isdisjoint(ids[1]) and ids[0] | ids[1] == set(SMALL)
    assert all(generate.in_shard(m, (i, 2)) for i in range(2) for m in ids[i])

    merged = str(tmp_path / "merged.h5")
    r = cli("merge", *shard_files, "-o", merged)
    assert r.returncode == 0, r.stderr
    single = GenerateConfig(
        out=str(tmp_path / "single"), source=[src], threads=1, progress=False, reference=ref_cfg
    )
    _compare_files(generate.generate(single).shard_path, merged)

    r = cli("index", str(tmp_path / "sharded"))
    assert r.returncode == 0, r.stderr
    index_path = str(tmp_path / "sharded" / "index.json")
    ds = data.ReferenceDataset(index_path)
    assert sorted(ds.ids) == sorted(SMALL) and len(ds.files) == 2
    with pytest.raises(ValueError, match="in both"):
        data.merge_files(str(tmp_path / "dup.h5"), [merged, shard_files[0]])


def test_resume_refuses_other_config(tmp_path):
    src = write_xyz(tmp_path / "in", {"h2": SMALL["h2"]})
    cfg = GenerateConfig(
        out=str(tmp_path / "out"),
        source=[src],
        threads=1,
        progress=False,
        reference=small_reference(),
    )
    generate.generate(cfg)
    cfg.reference = small_reference(k_hess=3)
    with pytest.raises(ValueError, match="another reference config"):
        generate.generate(cfg)


def _generate_water(tmp_path, **reference) -> str:
    """Generates water (one thread, ``small_reference(**reference)``); returns the shard path."""
    src = write_xyz(tmp_path / "in", {"water": WATER})
    cfg = GenerateConfig(
        out=str(tmp_path / "out"),
        source=[src],
        threads=1,
        progress=False,
        reference=small_reference(**reference),
    )
    return generate.generate(cfg).shard_path


def test_check_flags_corrupted_data(tmp_path):
    path = _generate_water(tmp_path)
    assert cli("--check", path).returncode == 0
    with h5py.File(path, "r+") as f:
        f["molecules/water/scf/g"][0, 0] = 1e-3
        f["molecules/water/hess/hv"][0, 0] += 1.0
    r = cli("--check", path)
    assert r.returncode == 1
    assert "exceeds grad_tol" in r.stdout and "hess/hv is not symmetric" in r.stdout


@pytest.mark.qm9pack
def test_no_gradient_or_hessian_samples():
    """k_grad = k_hess = 0 (e.g. a test set with TDDFT only) stores empty target stacks."""
    mol = sources.qm9_molecules(indices="3")[0]
    res = reference.compute_reference(mol, small_reference(k_grad=0, k_hess=0))
    nvir, nocc = res.arrays["scf/g"].shape
    for key in ("grad/x", "grad/g", "hess/v", "hess/hv", "hess/hv_j"):
        assert res.arrays[key].shape == (0, nvir, nocc), key


def test_check_accepts_data_without_probes(tmp_path):
    """``--check`` on a test set made with ``--k-grad 0 --k-hess 0`` (no probes to verify) passes
    and still flags a broken record (it crashed on the empty probe stack before)."""
    path = _generate_water(tmp_path, k_grad=0, k_hess=0)
    assert data.check_file(path)[0] == []
    assert cli("--check", path).returncode == 0
    with h5py.File(path, "r+") as f:
        f["molecules/water/scf/g"][0, 0] = 1e-3
    r = cli("--check", path)
    assert r.returncode == 1 and "exceeds grad_tol" in r.stdout


def test_numint_dixc_and_pyscf_store_the_same_numbers(tmp_path):
    """The grid work in dixc's kernels (default) or PySCF's NumInt: every stored array agrees.

    Both SCFs take the same path (their Fock matrices differ by ~1e-13), the orbital phase
    convention removes the eigensolver's sign freedom, so X, G and H v agree element by element.
    Tolerance 1e-10 relative per array (measured <= 4e-11, the largest in TDDFT oscillator
    strengths, whose Davidson stops at a 1e-5 residual); the stationarity residual scf/g (~1e-9)
    to 1e-12 absolute.
    """
    src = write_xyz(tmp_path, {"formaldehyde": SMALL["formaldehyde"]})
    mol = sources.xyz_molecules([src])[0]
    cfg = small_reference(basis="def2-svp", k_grad=3, k_hess=3, n_tddft=2)
    ref = reference.compute_reference(mol, cfg, threads=1, numint="pyscf")
    new = reference.compute_reference(mol, cfg, threads=1, numint="dixc")
    assert set(new.arrays) == set(ref.arrays)
    for key, a in ref.arrays.items():
        b = new.arrays[key]
        assert b.shape == a.shape and b.dtype == a.dtype, key
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if key == "scf/g":
            assert np.abs(b - a).max() <= 1e-12
        elif a.size:
            assert np.abs(b - a).max() <= 1e-10 * max(np.abs(a).max(), 1e-300), key
    assert new.attrs["scf_cycles"] == ref.attrs["scf_cycles"]
    with pytest.raises(ValueError, match="unknown numint 'libxc'"):
        reference.compute_reference(mol, cfg, threads=1, numint="libxc")
    with pytest.raises(ValueError, match="unknown numint"):
        GenerateConfig(out=str(tmp_path / "x"), numint="libxc")


def test_orbital_phase_convention():
    """fix_phase is independent of the input's column signs, also with symmetry-equivalent ties."""
    rng = np.random.default_rng(0)
    c = rng.standard_normal((6, 4))
    c[1, 2], c[4, 2] = 3.0, -3.0 + 1e-13  # a tie up to round-off: AO order decides (AO 1)
    fixed = reference.fix_phase(c)
    for signs in ([1, -1, -1, 1], [-1, -1, -1, -1]):
        np.testing.assert_array_equal(reference.fix_phase(c * np.array(signs)), fixed)
    assert fixed[1, 2] == 3.0 and np.all(np.abs(fixed) == np.abs(c))
    idx = np.argmax(np.abs(np.delete(fixed, 2, axis=1)), axis=0)
    assert np.all(np.delete(fixed, 2, axis=1)[idx, np.arange(3)] > 0)


@pytest.mark.parametrize("n_tddft", [2, 4])
def test_tddft_roots_are_the_lowest(tmp_path, n_tddft):
    """Stored TDA / TDDFT energies are the lowest eigenvalues of the full response problem.

    Reference: PySCF's A and B matrices (``get_ab``, PySCF's own NumInt) diagonalised densely:
    TDA = eig(A), full TDDFT omega^2 = eig((A - B)(A + B)). Water at B3LYP/def2-SVP is the case
    where Davidson from only the n lowest Koopmans guesses sometimes (not reproducibly: it
    depended on the process's history) converged onto 9.95 eV and missed the 9.53 eV singlet;
    the generator now starts from max(2n, n + 4) guesses. Tolerance 1e-8 Eh (Davidson's residual
    threshold 1e-5).
    """
    import scipy.linalg

    src = write_xyz(tmp_path, {"water": WATER})
    mol = sources.xyz_molecules([src])[0]
    cfg = small_reference(basis="def2-svp", k_grad=0, k_hess=0, n_tddft=n_tddft)
    res = reference.compute_reference(mol, cfg, threads=1)
    mf = reference.make_rks(reference.build_mole(mol, cfg), cfg, numint="pyscf")
    mf.kernel()
    a, b = mf.TDA().get_ab()
    n = a.shape[0] * a.shape[1]
    a, b = a.reshape(n, n), b.reshape(n, n)
    tda = scipy.linalg.eigvalsh(a)[:n_tddft]
    rpa = np.sqrt(np.sort(np.linalg.eigvals((a - b) @ (a + b)).real)[:n_tddft])
    assert bool(res.arrays["tddft/tda_converged"].all() and res.arrays["tddft/rpa_converged"].all())
    np.testing.assert_allclose(res.arrays["tddft/tda_e"], tda, rtol=0, atol=1e-8)
    np.testing.assert_allclose(res.arrays["tddft/rpa_e"], rpa, rtol=0, atol=1e-8)
