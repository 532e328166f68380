"""``dixc evaluate`` end to end: tiny checkpoints, reports, comparison table, CLI, clear errors."""

from __future__ import annotations

import json
import os

import pytest
import torch

from dixc import functionals
from dixc.evaluate import (
    CheckpointError,
    DataFileError,
    EvaluationResult,
    comparison_table,
    evaluate_many,
    load_report,
    main,
    write_report,
)
from dixc.evaluate.report import PLOTS
from test_evaluate_metrics import evaluation_data


def _tiny(path, seed: int, extra=None) -> str:
    torch.manual_seed(seed)
    f = functionals.create("mlp_mgga", hidden=8, depth=2)
    with torch.no_grad():
        for p in f.parameters():
            p.add_(0.05 * torch.randn_like(p))
    functionals.save(f, path, extra=extra or {"preset": "E+rho", "step": 3})
    return str(path)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ckpt")
    a = _tiny(tmp / "a.safetensors", 1)
    run = tmp / "run"
    run.mkdir()
    _tiny(run / "last.safetensors", 2, {"preset": "E+rho+grad+hess"})  # no best: falls back
    rs = evaluate_many([a, str(run), "functional:pbe"], evaluation_data(), progress=False)
    return rs, tmp


def test_evaluation_numbers(results):
    rs, _ = results
    assert [r.label for r in rs] == ["a", "run", "pbe"]
    assert rs[1].functional["path"].endswith("last.safetensors")
    assert rs[1].functional["extra"] == {"preset": "E+rho+grad+hess"}
    for r in rs:
        s = r.summary
        assert s["n_molecules"] == 2 and s["n_scf_converged"] == 2 and not r.failures
        # every per-molecule quantity is there and self-consistent with the summary
        errs = [abs(m["e_tot"] - m["e_ref"]) * 1e3 for m in r.molecules]
        assert s["energy_mae_mEh"] == pytest.approx(sum(errs) / 2, rel=1e-12)
        for m in r.molecules:
            assert m["metrics"]["density_driven_error"] > 0  # D_theta != D*, variational
            assert abs(m["ref_energy_check"]) < 1e-9
            assert set(m["hybrid"]) == {"default", "learned", "pbe"}
            assert all(h["converged"] for h in m["hybrid"].values())
            for method in ("tda", "rpa"):
                td = m["tddft"][method]
                assert len(td["e"]) == len(td["ref"]) == 2 and all(td["converged"])
        assert len(s["tddft"]["rpa"]["mae_eV_per_state"]) == 2
        assert s["hybrid"]["default"]["cycles"]["mean"] > s["hybrid"]["learned"]["cycles"]["min"]
    # torch PBE guess == PySCF PBE guess: the same density, so the same B3LYP iteration count
    pbe = rs[2]
    for m in pbe.molecules:
        assert m["hybrid"]["learned"]["cycles"] == m["hybrid"]["pbe"]["cycles"]


def test_report_files_and_roundtrip(results, tmp_path):
    rs, _ = results
    paths = write_report(rs, tmp_path / "report")
    assert sorted(os.path.basename(p) for p in paths["plots"]) == sorted(PLOTS)
    for p in paths["plots"]:
        with open(p, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    md = open(paths["markdown"]).read()
    for r in rs:
        assert f"## {r.label}" in md
    assert "plots/energy_parity.png" in md and "No failures." in md
    payload = json.load(open(paths["json"]))
    assert payload["results"][0]["data"]["reference_config"]["grid_level"] == 1
    back = load_report(tmp_path / "report")
    assert [b.summary == r.summary for b, r in zip(back, rs, strict=True)] == [True] * 3
    assert isinstance(back[0], EvaluationResult)


def test_comparison_table(results):
    rs, _ = results
    table = comparison_table(rs)
    lines = table.strip().splitlines()
    assert len(lines) == 2 + 3
    assert lines[2].startswith("| a | 2/2 | ")
    s = rs[2].summary
    assert f"| {s['energy_mae_mEh']:.3f} |" in lines[4]
    assert f"{s['tddft']['rpa']['mae_eV']:.3f}" in lines[4]


def test_cli_end_to_end(results, tmp_path, capsys):
    _, tmp = results
    rc = main([
        str(tmp / "a.safetensors"), "--functional", "pbe", "--data", evaluation_data(),
        "--out", str(tmp_path / "rep"), "--labels", "tiny,PBE", "--no-hybrid", "--no-tddft",
        "--max-molecules", "1", "--no-progress", "--no-plots", "--forces",
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    assert "| tiny | 1/1 |" in out and "| PBE | 1/1 |" in out
    assert "force MAE (mEh/Bohr)" in out
    rs = load_report(tmp_path / "rep")
    assert rs[0].data["ids"] == ["ammonia"] and "hybrid" not in rs[0].summary
    assert all(r.summary["forces"]["n"] == 1 and r.settings["forces"] for r in rs)
    assert "force MAE / max (mEh/Bohr)" in (tmp_path / "rep" / "report.md").read_text()
    assert not os.path.exists(tmp_path / "rep" / "plots")


def test_missing_and_corrupted_checkpoints(results, tmp_path, capsys):
    _, tmp = results
    data = evaluation_data()
    missing = str(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match=r"nope.safetensors.*does not exist.*--functional"):
        evaluate_many([missing], data)
    empty = tmp_path / "run_empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=r"run_empty.*neither best.safetensors nor last"):
        evaluate_many([str(empty)], data)
    bad = tmp_path / "bad.safetensors"
    good = open(tmp / "a.safetensors", "rb").read()
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match=r"bad.safetensors.*(truncated|corrupted)"):
        evaluate_many([str(bad)], data)
    flipped = tmp_path / "flipped.safetensors"
    flipped.write_bytes(good[:-8] + bytes(8))
    with pytest.raises(CheckpointError, match=r"flipped.safetensors.*corrupted"):
        evaluate_many([str(flipped)], data)
    rc = main([str(bad), "--data", data, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 1 and "bad.safetensors" in err and "Traceback" not in err


def test_missing_and_corrupted_data(results, tmp_path, capsys):
    _, tmp = results
    ck = str(tmp / "a.safetensors")
    with pytest.raises(DataFileError, match=r"missing.h5 does not exist.*dixc generate"):
        evaluate_many([ck], str(tmp_path / "missing.h5"))
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not an hdf5 file" * 10)
    with pytest.raises(DataFileError, match=r"junk.h5.*--check.*dixc generate"):
        evaluate_many([ck], str(junk))
    rc = main([ck, "--data", str(junk), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 1 and "junk.h5" in err and "Traceback" not in err


def test_unknown_molecule_id_and_labels(results):
    _, tmp = results
    ck = str(tmp / "a.safetensors")
    with pytest.raises(DataFileError, match=r"benzene"):
        evaluate_many([ck], evaluation_data(), ids=["benzene"])
    with pytest.raises(ValueError, match=r"one label per checkpoint"):
        evaluate_many([ck], evaluation_data(), labels=["x", "y"])
