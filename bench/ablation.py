"""The literature's ablation: 4 architectures x 3 loss presets, trained and evaluated alike.

For every architecture (``--archs``): one physics initialisation (regressed onto PBE on water and
ethanol, :func:`dixc.functionals.pretrain`), then one training run per loss preset (``E+rho``,
``E+rho+grad``, ``E+rho+grad+hess``) from that same file with the same seed and data order, then
``dixc evaluate`` of every run and of PBE on the held-out test set: total-energy MAE, E_rho,
dipole, L2[rho], B3LYP-SCF iterations from the learned density, TDDFT MAE. Writes
``OUT/ablation.md`` (per-run table, DI-Loss change vs ``E+rho`` per architecture and on average,
next to the published figures), ``OUT/ablation.json`` and the full evaluation report with plots
(``OUT/report``).

Every stage is resumable: a finished pretraining (``init/ARCH.safetensors``), training run
(``train/ARCH-PRESET/summary.json``) or evaluation (``eval/LABEL.json``) is not redone; rerun the
same command after an interruption. Work runs in ``--jobs`` subprocesses of one torch thread each::

    python bench/ablation.py --train-data runs/demo/data-train \\
        --test-data runs/ablation/data-test --out runs/ablation --jobs 2 --epochs 6

The data come from ``dixc generate`` (training data need gradient and Hessian targets, the test set
TDDFT states), see ``docs/results.md`` for the commands used there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ARCHS = ["xcdiff", "nnmgga", "skala_mgga", "egxc"]
PRESETS = ["E+rho", "E+rho+grad", "E+rho+grad+hess"]
# relative cost of one training step (schedules the most expensive jobs first)
COST = {"skala_mgga": 12.0, "nnmgga": 2.0, "egxc": 5.0, "xcdiff": 1.0, "pbe": 0.5}
# learning rates that differ from --lr: AdamW's first steps move every weight by ~lr, and the
# 256-wide layers of Skala-mGGA turn 1e-3 into a 100x larger energy error after one step
ARCH_LR = {"skala_mgga": 1e-4}
PUBLISHED = (
    "Published (arXiv 2606.04279, QM9 train <= 5 heavy atoms, larger test molecules): DI-Loss "
    "total-energy MAE -66% vs E+rho on average over the four architectures; E_rho 1.2 -> 0.8 mEh; "
    "B3LYP SCF iterations from the learned density up to -50%; XCdiff TDDFT MAE -19% to -35%."
)


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--train-data", required=True, help="dixc generate output with grad/hess")
    p.add_argument("--test-data", required=True, help="held-out data with TDDFT states")
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--archs", nargs="+", default=ARCHS)
    p.add_argument("--presets", nargs="+", default=PRESETS)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-3, help="AdamW peak LR (Skala-mGGA: 1e-4)")
    p.add_argument("--val-fraction", type=float, default=0.18)
    p.add_argument("--pretrain-steps", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="parallel subprocesses (1 thread each)")
    p.add_argument("--stages", nargs="+", default=["pretrain", "train", "evaluate", "report"])
    p.add_argument("--quiet", action="store_true", help="no progress bars in the subprocesses")
    p.add_argument("--tddft-archs", nargs="*", default=None, metavar="ARCH",
                   help="run TDDFT only for these architectures (and PBE); default: all. The "
                   "published TDDFT comparison is XCdiff's. An evaluation without TDDFT of an "
                   "architecture listed here is redone")  # fmt: skip
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="training config override for every run, as `dixc train --set` "
                   "(e.g. loss.hess.weight=1e-4: a weight sweep, one --out per value)")  # fmt: skip
    p.add_argument("--exclusive", nargs="*", default=[], metavar="ARCH",
                   help="architectures trained one at a time (one lane of their own; for runs "
                   "that need most of the memory)")  # fmt: skip
    # internal: one unit of work in a subprocess
    p.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _tag(preset: str) -> str:
    return preset.replace("+", "_")


def _label(arch: str, preset: str) -> str:
    return f"{arch} {preset}"


def _run_dir(a, arch: str, preset: str) -> str:
    """Training output directory of one (architecture, preset) run."""
    return os.path.join(a.out, "train", f"{arch}-{_tag(preset)}")


def _summary_path(a, arch: str, preset: str) -> str:
    """Written when a training run has finished (its presence marks the run done)."""
    return os.path.join(_run_dir(a, arch, preset), "summary.json")


def _train_config(a, arch: str, preset: str) -> dict:
    """The demo's training recipe (``dixc.demo.train_config``) with the architecture's own
    initialisation and learning rate, one thread and frequent checkpoints."""
    from dixc.demo import train_config
    from dixc.train.config import merge, parse_override

    values = train_config(
        a.train_data, os.path.join(a.out, "init", f"{arch}.safetensors"), preset,
        _run_dir(a, arch, preset), lr=ARCH_LR.get(arch, a.lr),
        epochs=a.epochs, seed=a.seed, threads=1, progress=not a.quiet, batch_size=a.batch_size,
        val_fraction=a.val_fraction, checkpoint_every=5, tensorboard=False,
    )  # fmt: skip
    for text in a.overrides:
        values = merge(values, parse_override(text))
    return values


# ---------------------------------------------------------------------------------------------
# work units (run in subprocesses)


def _work_pretrain(a, arch: str) -> None:
    import torch

    import dixc.functionals as F

    torch.manual_seed(a.seed)
    f = F.create(arch)
    res = F.pretrain(
        f, "pbe", molecules=("water", "ethanol"), steps=a.pretrain_steps, seed=a.seed,
        progress=not a.quiet,
    )  # fmt: skip
    path = os.path.join(a.out, "init", f"{arch}.safetensors")
    extra = {"pretrain_target": "pbe", "loss": res.loss_final, "seconds": res.seconds}
    F.save(f, path, extra=extra)
    print(f"{arch}: pretrain loss {res.loss_initial:.2e} -> {res.loss_final:.2e}, max |dE_xc| "
          f"{res.max_abs_exc_error * 1e3:.2f} mEh, {res.seconds:.0f} s")  # fmt: skip


def _work_train(a, arch: str, preset: str) -> None:
    import yaml

    from dixc.fileio import atomic_path
    from dixc.train import config, train

    cfg_dict = _train_config(a, arch, preset)
    run_dir = cfg_dict["run"]["out"]
    os.makedirs(run_dir, exist_ok=True)
    resume = os.path.isfile(os.path.join(run_dir, "checkpoint.pt"))
    with atomic_path(run_dir + ".yaml") as tmp, open(tmp, "w") as fh:
        yaml.safe_dump(cfg_dict, fh)
    t = time.perf_counter()
    if resume:
        from dixc.train.loop import CHECKPOINT, config_from_checkpoint

        cfg = config_from_checkpoint(os.path.join(run_dir, CHECKPOINT))
    else:
        cfg = config.resolve(cfg_dict)
    summary = train(cfg, resume=resume)
    summary["invocation_wall_s"] = time.perf_counter() - t
    if not summary.get("finished"):  # interrupted (signal, wall cap): resumable, not done
        raise SystemExit(f"ablation: training {arch} {preset} interrupted; rerun to resume")
    with atomic_path(_summary_path(a, arch, preset)) as tmp, open(tmp, "w") as fh:
        json.dump(summary, fh, indent=1, default=str)


def _work_evaluate(a, specs: list[str]) -> None:
    """Evaluates several functionals in one process; the B3LYP 'default' / 'pbe' baselines are
    computed once per test molecule for the whole study (``OUT/baselines``, shared by the
    concurrent groups and later invocations)."""
    from dixc.evaluate import evaluate_checkpoint
    from dixc.evaluate.core import open_dataset
    from dixc.fileio import atomic_path

    ds = open_dataset(a.test_data)
    try:
        for spec in specs:
            arch, _, preset = spec.partition(":")
            if arch == "pbe":
                ckpt, label = "functional:pbe", "PBE"
            else:
                ckpt = _run_dir(a, arch, preset)
                label = _label(arch, preset)
            tddft = _wants_tddft(a, arch)
            res = evaluate_checkpoint(
                ckpt, ds, label=label, tddft=tddft, progress=not a.quiet,
                baseline_cache=os.path.join(a.out, "baselines"),
            )  # fmt: skip
            with atomic_path(_eval_path(a, arch, preset)) as tmp:
                res.save(tmp)
            print(f"{label}: {json.dumps(res.summary.get('energy_mae_mEh'))} mEh")
    finally:
        ds.close()


# ---------------------------------------------------------------------------------------------
# driver


def _run_units(a, units: list[tuple[float, str, list[str]]]) -> list[str]:
    """Runs ``(cost, name, worker-args)`` units in ``--jobs`` lanes of subprocesses.

    Units of the ``--exclusive`` architectures share one lane (run one after another); the
    others are spread greedily by cost over all lanes. Returns the failures.
    """
    os.makedirs(os.path.join(a.out, "logs"), exist_ok=True)
    base = [sys.executable, os.path.abspath(__file__), "--train-data", a.train_data,
            "--test-data", a.test_data, "--out", a.out, "--epochs", str(a.epochs),
            "--batch-size", str(a.batch_size), "--lr", str(a.lr), "--val-fraction",
            str(a.val_fraction), "--pretrain-steps", str(a.pretrain_steps), "--seed", str(a.seed),
            *(["--quiet"] if a.quiet else []),
            *[f"--set={text}" for text in a.overrides],
            *(["--tddft-archs", *a.tddft_archs] if a.tddft_archs is not None else [])]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    failed: list[str] = []

    def one(unit) -> None:
        _, name, wargs = unit
        log = os.path.join(a.out, "logs", _log_stem(name) + ".log")
        t = time.perf_counter()
        print(f"[ablation] start {name} (log {log})", flush=True)
        with open(log, "a") as fh:
            rc = subprocess.call([*base, "--worker", *wargs], stdout=fh, stderr=fh, env=env)
        dt = time.perf_counter() - t
        print(f"[ablation] {'done' if rc == 0 else f'FAILED (exit {rc})'} {name}: {dt:.0f} s",
              flush=True)  # fmt: skip
        if rc:
            failed.append(f"{name} (exit {rc}, see {log})")

    n = max(1, a.jobs)
    lanes: list[list] = [[] for _ in range(n)]
    load = [0.0] * n
    for u in sorted(units, key=lambda u: -u[0]):
        k = 0 if (len(u[2]) > 1 and u[2][1] in a.exclusive) else load.index(min(load))
        lanes[k].append(u)
        load[k] += u[0]

    def lane(us) -> None:
        for u in us:
            one(u)

    with ThreadPoolExecutor(max_workers=n) as pool:
        list(pool.map(lane, lanes))
    return failed


def _log_stem(name: str) -> str:
    """File name (no suffix) of a unit's log: the unit's name, shortened with a digest if long.

    Named by what the unit does, so two invocations working on different rows never share a log.
    """
    stem = "".join(c if c.isalnum() or c in "+-." else "_" for c in name.replace(":", "-"))
    if len(stem) > 100:
        stem = stem[:60] + "_" + hashlib.sha1(name.encode()).hexdigest()[:12]
    return stem


def _stage_pretrain(a) -> list[str]:
    units = [
        (COST.get(arch, 1.0), f"pretrain {arch}", ["pretrain", arch])
        for arch in a.archs
        if not os.path.isfile(os.path.join(a.out, "init", f"{arch}.safetensors"))
    ]
    return _run_units(a, units)


def _stage_train(a) -> list[str]:
    units = []
    for arch in a.archs:
        for preset in a.presets:
            if not os.path.isfile(_summary_path(a, arch, preset)):
                units.append((COST.get(arch, 1.0), f"train {arch} {preset}",
                              ["train", arch, preset]))  # fmt: skip
    return _run_units(a, units)


def _eval_path(a, arch: str, preset: str) -> str:
    return _label_path(a, "PBE" if arch == "pbe" else _label(arch, preset))


def _label_path(a, label: str) -> str:
    """Evaluation result (JSON) of the row ``label``."""
    return os.path.join(a.out, "eval", label.replace(" ", "_") + ".json")


def _wants_tddft(a, arch: str) -> bool:
    return a.tddft_archs is None or arch == "pbe" or arch in a.tddft_archs


def _evaluated(a, arch: str, preset: str) -> bool:
    """An evaluation exists and has TDDFT if this run asks for it (else it is redone)."""
    path = _eval_path(a, arch, preset)
    if not os.path.isfile(path):
        return False
    if not _wants_tddft(a, arch):
        return True
    with open(path) as fh:
        return bool(json.load(fh).get("settings", {}).get("tddft"))


def _stage_evaluate(a) -> list[str]:
    todo = [("pbe", "")] + [(arch, p) for arch in a.archs for p in a.presets]
    todo = [(arch, p) for arch, p in todo if not _evaluated(a, arch, p)]
    trained = [
        (arch, p) for arch, p in todo
        if arch == "pbe" or os.path.isfile(_summary_path(a, arch, p))
    ]  # fmt: skip
    for arch, p in sorted(set(todo) - set(trained)):
        print(f"[ablation] not evaluated: {arch} {p} (training not finished)")
    todo = trained
    # greedy split into --jobs groups of similar cost (all share the B3LYP baselines on disk)
    groups: list[list[tuple[str, str]]] = [[] for _ in range(max(1, a.jobs))]
    load = [0.0] * len(groups)
    for arch, p in sorted(todo, key=lambda u: COST.get(u[0], 1.0)):  # cheap ones first
        k = load.index(min(load))
        groups[k].append((arch, p))
        load[k] += COST.get(arch, 1.0)
    # Each unit is named by its rows, so concurrent invocations never append to the same log.
    cmds = [["evaluate", *[f"{arch}:{p}" for arch, p in g]] for g in groups]
    units = [(cost, " ".join(c), c) for cost, c, g in zip(load, cmds, groups, strict=True) if g]
    return _run_units(a, units)


def _pct(new, old):
    if new is None or old is None or old == 0:
        return None
    return 100.0 * (new - old) / old


def _fmt(x, spec=".2f") -> str:
    return "-" if x is None else format(x, spec)


def _step_seconds(log_csv: str) -> float | None:
    """Median wall seconds per molecule of the training steps in a run's ``log.csv``."""
    import csv
    import statistics

    if not os.path.isfile(log_csv):
        return None
    with open(log_csv, newline="") as fh:
        per = [
            float(r["wall_s"]) / max(1, int(r["molecules"]))
            for r in csv.DictReader(fh)
            if r["kind"] == "train" and r.get("wall_s")
        ]
    return statistics.median(per) if per else None


def _stage_report(a) -> None:
    from dixc.evaluate.core import EvaluationResult
    from dixc.evaluate.report import comparison_table, write_report
    from dixc.fileio import atomic_path

    results, rows = [], []
    labels = [_label(arch, p) for arch in a.archs for p in a.presets] + ["PBE"]
    for label in labels:
        path = _label_path(a, label)
        if os.path.isfile(path):
            results.append(EvaluationResult.load(path))
    if not results:
        raise SystemExit(f"ablation: no evaluations under {a.out}/eval; run the earlier stages")
    paths = write_report(results, os.path.join(a.out, "report"))
    by_label = {r.label: r for r in results}

    def metrics(r) -> dict:
        s = r.summary
        h, td = s.get("hybrid", {}), s.get("tddft", {})
        return {
            "scf_ok": f"{s['n_scf_converged']}/{s['n_molecules']}",
            "e_mae": s.get("energy_mae_mEh"),
            "e_rho": s.get("e_rho_mae_mEh"),
            "dipole": s.get("dipole_mae_D"),
            "l2": s.get("l2_rho_mean"),
            "it_learned": h.get("learned", {}).get("cycles", {}).get("mean"),
            "it_default": h.get("default", {}).get("cycles", {}).get("mean"),
            "saving": h.get("learned_vs_default_cycles_pct"),
            "tddft": td.get("rpa", {}).get("mae_eV"),
        }

    table = [
        "| architecture | preset | SCF ok | E MAE (mEh) | E_rho MAE (mEh) | dipole MAE (D) | "
        "L2[rho] | B3LYP it. learned (default) | saving vs default (%) | TDDFT MAE (eV) | "
        "train wall (s) | s per molecule-step |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label in labels:
        if label not in by_label:
            continue
        m = metrics(by_label[label])
        arch, _, preset = label.partition(" ")
        wall, step = None, None
        if os.path.isfile(_summary_path(a, arch, preset)):
            with open(_summary_path(a, arch, preset)) as fh:
                wall = json.load(fh).get("wall_s")
            step = _step_seconds(os.path.join(_run_dir(a, arch, preset), "log.csv"))
        rows.append({"label": label, **m, "train_wall_s": wall, "s_per_molecule_step": step})
        table.append(
            f"| {arch} | {preset or '-'} | {m['scf_ok']} | {_fmt(m['e_mae'])} | "
            f"{_fmt(m['e_rho'])} | {_fmt(m['dipole'], '.4f')} | {_fmt(m['l2'], '.2e')} | "
            f"{_fmt(m['it_learned'], '.1f')} ({_fmt(m['it_default'], '.1f')}) | "
            f"{_fmt(m['saving'], '.1f')} | {_fmt(m['tddft'], '.3f')} | {_fmt(wall, '.0f')} | "
            f"{_fmt(step, '.2f')} |"
        )
    # DI-Loss effect: change of each DI preset vs E+rho, per architecture and on average
    delta = ["| architecture | preset | E MAE change (%) | E_rho change (%) | dipole change (%) | "
             "L2[rho] change (%) | B3LYP it. change (%) | TDDFT MAE change (%) |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    keys = ("e_mae", "e_rho", "dipole", "l2", "it_learned", "tddft")
    avg: dict[str, dict[str, list[float]]] = {}
    for preset in a.presets[1:]:
        for arch in a.archs:
            new, old = by_label.get(_label(arch, preset)), by_label.get(_label(arch, a.presets[0]))
            if new is None or old is None:
                continue
            mn, mo = metrics(new), metrics(old)
            ch = [_pct(mn[k], mo[k]) for k in keys]
            for k, c in zip(keys, ch, strict=True):
                if c is not None:
                    avg.setdefault(preset, {}).setdefault(k, []).append(c)
            delta.append(f"| {arch} | {preset} | " + " | ".join(_fmt(c, "+.0f") for c in ch) + " |")
        if preset in avg:
            mean = [
                sum(avg[preset][k]) / len(avg[preset][k]) if avg[preset].get(k) else None
                for k in keys
            ]
            delta.append(f"| **mean** | {preset} | " + " | ".join(_fmt(c, "+.0f") for c in mean)
                         + " |")  # fmt: skip
    # cost of a training step per molecule: architecture x preset, overhead vs the first preset
    cost = ["| architecture | " + " | ".join(a.presets) + f" | last / {a.presets[0]} |",
            "|---|" + "---|" * (len(a.presets) + 1)]  # fmt: skip
    for arch in a.archs:
        sec = {p: _step_seconds(os.path.join(_run_dir(a, arch, p), "log.csv"))
               for p in a.presets}  # fmt: skip
        if not any(sec.values()):
            continue
        first, last = sec.get(a.presets[0]), sec.get(a.presets[-1])
        ratio = last / first if first and last else None
        cost.append(f"| {arch} | " + " | ".join(_fmt(sec.get(p), ".2f") for p in a.presets)
                    + f" | {_fmt(ratio, '.2f')} |")  # fmt: skip
    text = (
        "## Cost per training step (median wall seconds per molecule-step)\n\n"
        + "\n".join(cost)
        + "\n\n"
        "## Per run\n\n" + "\n".join(table) + "\n\n## DI-Loss presets vs E+rho (relative change; "
        "negative = better)\n\n" + "\n".join(delta) + "\n\n" + PUBLISHED + "\n\n"
        "## dixc evaluate comparison table\n\n" + comparison_table(results) + "\n"
        f"Full report: {paths['markdown']}\n"
    )
    with atomic_path(os.path.join(a.out, "ablation.md")) as tmp, open(tmp, "w") as fh:
        fh.write(text)
    with atomic_path(os.path.join(a.out, "ablation.json")) as tmp, open(tmp, "w") as fh:
        json.dump({"args": {k: v for k, v in vars(a).items() if k != "worker"}, "rows": rows},
                  fh, indent=1)  # fmt: skip
    print(text)


def main(argv=None) -> int:
    a = _parse(argv)
    a.out = os.path.abspath(a.out)
    a.train_data, a.test_data = os.path.abspath(a.train_data), os.path.abspath(a.test_data)
    if a.worker:
        import torch

        torch.set_num_threads(1)
        kind, *rest = a.worker
        if kind == "pretrain":
            _work_pretrain(a, rest[0])
        elif kind == "train":
            _work_train(a, rest[0], rest[1])
        elif kind == "evaluate":
            _work_evaluate(a, rest)
        else:
            raise SystemExit(f"ablation: unknown worker {kind}")
        return 0
    for d in ("init", "train", "eval"):
        os.makedirs(os.path.join(a.out, d), exist_ok=True)
    t0 = time.perf_counter()
    stages = {"pretrain": _stage_pretrain, "train": _stage_train, "evaluate": _stage_evaluate}
    for st in a.stages:
        if st == "report":
            _stage_report(a)
            continue
        failed = stages[st](a)
        if failed:
            print("[ablation] failed: " + "; ".join(failed), file=sys.stderr)
            print("[ablation] fix and rerun the same command (finished work is kept)",
                  file=sys.stderr)  # fmt: skip
            return 1
        print(f"[ablation] stage {st} complete ({time.perf_counter() - t0:.0f} s so far)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
