"""``dixc train`` loop: outputs, bit-for-bit resume, guard rails, CLI, and 2-process gloo DDP.

Three tiny molecules (water, ammonia, methane; B3LYP/def2-SVP, grid level 1, 2 gradient points,
2 probes) generated in a module fixture; a tiny ``mlp_mgga``; every preset term switched on.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from dixc import data, functionals, generate
from dixc.generate import GenerateConfig
from dixc.reference import ReferenceConfig
from dixc.train import config, loop, losses, main

MOLS = {
    "water": "3\nwater\nO 0 0 0.117790\nH 0 0.755453 -0.471161\nH 0 -0.755453 -0.471161\n",
    "ammonia": "4\nNH3\nN 0 0 0.1\nH 0 0.94 -0.27\nH 0.814 -0.47 -0.27\nH -0.814 -0.47 -0.27\n",
    "methane": "5\nCH4\nC 0 0 0\nH 0.63 0.63 0.63\nH -0.63 -0.63 0.63\nH -0.63 0.63 -0.63\n"
    "H 0.63 -0.63 -0.63\n",
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train_loop")
    (tmp / "in").mkdir()
    for name, text in MOLS.items():
        (tmp / "in" / f"{name}.xyz").write_text(text)
    ref = ReferenceConfig(basis="def2-svp", grid_level=1, k_grad=2, k_hess=2, n_tddft=0)
    cfg = GenerateConfig(
        out=str(tmp / "data"), source=[str(tmp / "in")], threads=1, progress=False, reference=ref
    )
    assert generate.generate(cfg).n_done == 3
    return cfg.out


def tiny_values(data_path: str, out: str, **extra) -> dict:
    values = {
        "data": {"path": data_path, "val_fraction": 0.34, "grid_level": None},
        "model": {"arch": "mlp_mgga", "arch_config": {"hidden": 8, "depth": 2}},
        "loss": {
            "preset": "E+rho+grad+hess",
            "scf": {"n_cycles": 4, "late_cycles": 2},
            "hess": {"n_probes": 1},
            "grad": {"n_points": 1},
        },
        "optim": {"batch_size": 1, "epochs": 2, "lr": 3e-3, "warmup_steps": 2},
        "validate": {"max_cycle": 30},
        "run": {"out": out, "checkpoint_every": 1, "progress": False, "tensorboard": False},
    }
    for k, v in extra.items():
        sec, key = k.split("__")
        values.setdefault(sec, {})[key] = v
    return values


def _train(values, resume=False):
    cfg = (
        config.resolve(values)
        if not resume
        else loop.config_from_checkpoint(os.path.join(values["run"]["out"], loop.CHECKPOINT))
    )
    if resume:
        cfg.run.max_steps = values["run"].get("max_steps")
    return loop.Trainer(cfg, resume=resume).run()


def _rows(out):
    rows = loop.read_log(os.path.join(out, "log.csv"))
    for r in rows:
        r.pop("wall_s", None)
    return rows


def test_outputs_and_metadata(dataset, tmp_path):
    out = str(tmp_path / "run")
    values = tiny_values(dataset, out)
    values["run"]["tensorboard"] = True
    s = _train(values)
    assert s["finished"] and s["steps"] == 4 and s["epochs"] == 2 and s["skipped"] == 0
    assert s["scf_runs"] == 4  # every step's molecule ran the unrolled SCF; non-converged counted
    for name in ("checkpoint.pt", "best.safetensors", "last.safetensors", "config.yaml",
                 "log.csv", "loss.png"):  # fmt: skip
        assert os.path.isfile(os.path.join(out, name)), name
    assert any(f.startswith("events") for f in os.listdir(os.path.join(out, "tb")))
    resolved = yaml.safe_load(open(os.path.join(out, "config.yaml")))
    assert resolved["loss"]["hess"]["enabled"] and resolved["loss"]["preset"] == "E+rho+grad+hess"
    meta = functionals.read_metadata(os.path.join(out, "last.safetensors"))
    extra = meta["extra"]
    assert extra["step"] == 4 and extra["epoch"] == 2 and extra["preset"] == "E+rho+grad+hess"
    assert extra["reference_config_hash"] == data.config_hash(data.ReferenceDataset(dataset).config)
    assert set(extra["validation"]) >= {"e_mae", "rho_l2", "e_mae_nscf", "nonconv"}
    f = functionals.load(os.path.join(out, "best.safetensors"))
    assert f.arch_name == "mlp_mgga"
    rows = _rows(out)
    train = [r for r in rows if r["kind"] == "train"]
    val = [r for r in rows if r["kind"] == "val"]
    assert len(train) == 4 and len(val) == 2
    assert all(isinstance(r[t], float) for r in train for t in losses.TERMS)
    # the EMA weights are what is saved, and they moved away from the initial weights
    ck = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)
    w = load_file(os.path.join(out, "last.safetensors"))
    for k, v in ck["ema"].items():
        assert torch.equal(w[k], v)
    assert any(not torch.equal(ck["ema"][k], ck["model"][k]) for k in w)


def test_resume_is_bit_for_bit(dataset, tmp_path):
    ref_out, cut_out = str(tmp_path / "ref"), str(tmp_path / "cut")
    _train(tiny_values(dataset, ref_out))
    v = tiny_values(dataset, cut_out)
    v["run"]["max_steps"] = 1
    s1 = _train(v)
    assert not s1["finished"] and s1["steps"] == 1
    v["run"]["max_steps"] = 3  # stops at the epoch boundary before validation
    assert _train(v, resume=True)["steps"] == 3
    v["run"]["max_steps"] = None
    s3 = _train(v, resume=True)
    assert s3["finished"] and s3["steps"] == 4
    a = torch.load(os.path.join(ref_out, "checkpoint.pt"), weights_only=False)
    b = torch.load(os.path.join(cut_out, "checkpoint.pt"), weights_only=False)
    for key in ("model", "ema"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)
    for sa, sb in zip(
        a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True
    ):
        for k in sa:
            assert torch.equal(torch.as_tensor(sa[k]), torch.as_tensor(sb[k])), k
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 4
    for k in ("grad_norms", "validations", "best_metric", "n_scf_nonconv", "n_skipped"):
        assert a["state"][k] == b["state"][k], k
    assert _rows(ref_out) == _rows(cut_out)
    wa = load_file(os.path.join(ref_out, "best.safetensors"))
    wb = load_file(os.path.join(cut_out, "best.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_nan_loss_step_is_skipped_and_logged(dataset, tmp_path, monkeypatch):
    out = str(tmp_path / "nan")
    real = losses.molecule_losses
    calls = {"n": 0}

    def poisoned(f, mol, lc, gen=None):
        terms, info = real(f, mol, lc, gen)
        calls["n"] += 1
        if calls["n"] == 2:  # the second training step
            terms["grad"] = terms["grad"] * float("nan")
        return terms, info

    monkeypatch.setattr(losses, "molecule_losses", poisoned)
    values = tiny_values(dataset, out, optim__epochs=1)
    trainer = loop.Trainer(config.resolve(values))
    before = None
    snapshots = []
    orig_step = trainer.train_step

    def step(batch):
        nonlocal before
        before = [p.detach().clone() for p in trainer.model.parameters()]
        row = orig_step(batch)
        snapshots.append(
            (
                row,
                [
                    torch.equal(a, p)
                    for a, p in zip(before, trainer.model.parameters(), strict=True)
                ],
            )
        )
        return row

    trainer.train_step = step
    s = trainer.run()
    assert s["skipped"] == 1 and s["steps"] == 2
    (r1, same1), (r2, same2) = snapshots
    assert r1["skipped"] == 0 and not all(same1)  # a normal step moves the weights
    assert r2["skipped"] == 1 and all(same2)  # the poisoned step does not
    assert "non-finite loss" in r2["reason"]
    rows = [r for r in _rows(out) if r["kind"] == "train"]
    assert rows[1]["skipped"] == 1 and "non-finite" in rows[1]["reason"]
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_exploding_gradient_is_skipped_then_training_stops(dataset, tmp_path):
    values = tiny_values(dataset, str(tmp_path / "boom"))
    values["guard"] = {"max_grad_norm": 1e-12, "max_consecutive_skips": 3}
    trainer = loop.Trainer(config.resolve(values))
    w0 = [p.detach().clone() for p in trainer.model.parameters()]
    with pytest.raises(loop.TrainingDiverged, match="3 consecutive steps skipped"):
        trainer.run()
    assert all(torch.equal(a, p) for a, p in zip(w0, trainer.model.parameters(), strict=True))
    assert trainer.state["n_skipped"] == 3
    assert "guard.max_grad_norm" in trainer.rows[0]["reason"]


def test_relative_gradient_guard(dataset, tmp_path):
    values = tiny_values(dataset, str(tmp_path / "rel"), optim__epochs=1)
    values["guard"] = {"grad_norm_factor": 2.0, "min_history": 1}
    trainer = loop.Trainer(config.resolve(values))
    trainer.state["grad_norms"] = [1e-30]  # any real gradient is > 2 x this "median"
    row = trainer.train_step(trainer.batch(0, 0))
    assert row["skipped"] == 1 and "running median" in row["reason"]


def test_cli_config_overrides_and_refusals(dataset, tmp_path, capsys):
    out = str(tmp_path / "cli")
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_values(dataset, out, optim__epochs=1)))
    argv = ["--config", str(cfg_path), "--preset", "E+rho", "--set", "optim.lr=1e-4",
            "--max-steps", "1"]  # fmt: skip
    assert main(argv) == 0
    resolved = yaml.safe_load(open(os.path.join(out, "config.yaml")))
    assert resolved["optim"]["lr"] == 1e-4 and resolved["loss"]["preset"] == "E+rho"
    assert not resolved["loss"]["hess"]["enabled"] and not resolved["loss"]["grad"]["enabled"]
    assert main(argv) == 2  # checkpoint exists, no --resume
    assert "--resume" in capsys.readouterr().err
    assert main(["--out", out, "--resume", "--set", "optim.lr=1"]) == 2
    assert "only run.*" in capsys.readouterr().err
    assert main(["--out", out, "--resume"]) == 0
    assert main(["--print-config"]) == 0
    assert "hess:" in capsys.readouterr().out


def test_ddp_two_gloo_processes_match_one(dataset, tmp_path):
    """torchrun --nproc_per_node 2 gives the one-process result up to reduction order."""
    outs = {}
    for nproc in (1, 2):
        out = str(tmp_path / f"ddp{nproc}")
        values = tiny_values(dataset, out, optim__epochs=1)
        values["optim"]["batch_size"] = 2
        values["data"]["val_fraction"] = 0.0
        path = tmp_path / f"ddp{nproc}.yaml"
        path.write_text(yaml.safe_dump(values))
        env = dict(os.environ, OMP_NUM_THREADS="1")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(29500 + nproc + os.getpid() % 1000), "-m", "dixc.cli",
               "train", "--config", str(path)]  # fmt: skip
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        outs[nproc] = load_file(os.path.join(out, "last.safetensors"))
    a, b = outs[1], outs[2]
    for k in a:
        diff = float((a[k] - b[k]).abs().max())
        assert diff <= 1e-12 * max(1.0, float(a[k].abs().max())), (k, diff)


def test_second_training_into_the_same_directory_is_refused(dataset, tmp_path):
    """While one process trains into OUT, another Trainer.run() there fails at once, naming the
    holder, and writes nothing; once the lock is free (its holder ended) training proceeds."""
    import fcntl

    out = str(tmp_path / "locked")
    values = tiny_values(dataset, out, optim__epochs=1)
    values["run"]["max_steps"] = 1
    os.makedirs(out)
    holder = open(os.path.join(out, loop.LOCK), "w")  # another open file: like another process
    holder.write("pid 4242 on elsewhere since 2026-01-01 00:00:00\n")
    holder.flush()
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        with pytest.raises(RuntimeError, match=r"in use by another training \(pid 4242 on elsew"):
            _train(values)
        assert sorted(os.listdir(out)) == [loop.LOCK]
    finally:
        holder.close()
    summary = _train(values)
    assert summary["steps"] == 1
    assert os.path.exists(os.path.join(out, loop.CHECKPOINT))
    with open(os.path.join(out, loop.LOCK)) as fh:
        assert fh.read().startswith(f"pid {os.getpid()} on ")
    # released at the end of run(): a resume in the same process can lock again
    values["run"]["max_steps"] = 2
    assert _train(values, resume=True)["steps"] == 2
