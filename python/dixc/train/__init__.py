"""``dixc train``: distil a hybrid reference into an O(N^3) functional with the DI-Loss.

Usage (see ``docs/train.md``)::

    dixc train --config configs/xcdiff_e_rho_grad_hess.yaml --out runs/hess
    dixc train --config configs/tiny.yaml --set optim.lr=3e-4 --set loss.hess.weight=0.1
    dixc train --out runs/hess --resume                    # continue bit for bit
    torchrun --nproc_per_node 2 -m dixc.cli train --config ...   # data parallel (gloo / nccl)
    dixc train --print-config > my.yaml                    # every field, documented

Python API: :func:`train` (a resolved :class:`TrainConfig` in, a summary out), the loss terms in
:mod:`dixc.train.losses` and the loop in :mod:`dixc.train.loop`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from dixc.train.config import (
    PRESETS,
    TrainConfig,
    documented_yaml,
    load_yaml,
    parse_override,
    resolve,
)

__all__ = ["PRESETS", "TrainConfig", "main", "train"]

# CLI flag -> config path
_FLAGS = {
    "data": ("data", "path"),
    "out": ("run", "out"),
    "preset": ("loss", "preset"),
    "arch": ("model", "arch"),
    "init": ("model", "init"),
    "epochs": ("optim", "epochs"),
    "batch_size": ("optim", "batch_size"),
    "lr": ("optim", "lr"),
    "seed": ("run", "seed"),
    "device": ("run", "device"),
    "threads": ("run", "threads"),
    "max_steps": ("run", "max_steps"),
    "grid_level": ("data", "grid_level"),
}
# what may change when resuming (run control only: everything else would change the result)
_RESUMABLE = {"run"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dixc train",
        description="Train an XC functional on hybrid reference data with the DI-Loss "
        "(energy, density, Grassmannian gradient and Hessian terms).",
    )
    p.add_argument("--config", "-c", help="YAML config file (see --print-config)")
    p.add_argument("--data", help="reference data (dixc generate output)")
    p.add_argument("--out", "-o", help="output directory")
    p.add_argument("--preset", choices=[*PRESETS, "custom"], help="loss preset")
    p.add_argument("--arch", help="architecture (dixc.functionals registry name)")
    p.add_argument("--init", help="initial functional file (.safetensors)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cpu or cuda")
    p.add_argument("--threads", type=int, help="torch threads per process")
    p.add_argument("--grid-level", type=int, help="training grid level")
    p.add_argument("--max-steps", type=int, help="stop this invocation at this global step")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override any config field, e.g. --set loss.hess.n_probes=2 (repeatable)",
    )  # fmt: skip
    p.add_argument("--resume", action="store_true", help="continue OUT/checkpoint.pt")
    p.add_argument("--print-config", action="store_true", help="print the documented defaults")
    p.add_argument("--log-level", default="INFO")
    return p


def _overrides(a: argparse.Namespace) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for flag, (sec, key) in _FLAGS.items():
        v = getattr(a, flag)
        if v is not None:
            out.append({sec: {key: v}})
    if a.no_progress:
        out.append({"run": {"progress": False}})
    out.extend(parse_override(text) for text in a.set)
    return out


def train(cfg: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Runs training with a resolved config (joins a torchrun process group if launched so).

    Returns:
        The summary of :meth:`dixc.train.loop.Trainer.run`.
    """
    from dixc.ops import check_device
    from dixc.train.loop import Trainer, close_distributed, init_distributed

    check_device(cfg.run.device)
    dist = init_distributed(cfg.run.device)
    try:
        summary = Trainer(cfg, resume=resume, dist=dist).run()
    except BaseException:
        close_distributed(dist, barrier=False)
        raise
    close_distributed(dist)
    return summary


def main(argv: list[str]) -> int:
    """Entry point of ``dixc train``; returns the exit status."""
    a = parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, a.log_level.upper(), logging.INFO),
        format="%(asctime)s %(name)s: %(message)s",
    )
    if a.print_config:
        sys.stdout.write(documented_yaml())
        return 0
    try:
        overrides = _overrides(a)
        if a.resume:
            from dixc.train.config import from_dict, merge
            from dixc.train.loop import CHECKPOINT, config_from_checkpoint

            out = a.out
            if out is None and a.config:
                out = load_yaml(a.config).get("run", {}).get("out")
            if not out:
                raise ValueError("dixc train: --resume needs --out (or run.out in --config)")
            ckpt = os.path.join(out, CHECKPOINT)
            if not os.path.isfile(ckpt):
                raise FileNotFoundError(f"dixc train: --resume but {ckpt} does not exist")
            values = config_from_checkpoint(ckpt).to_dict()
            for o in overrides:
                bad = [k for k in o if k not in _RESUMABLE]
                if bad and not _same(values, o):
                    raise ValueError(
                        f"dixc train: --resume keeps the checkpoint's config; only run.* "
                        f"settings may change (got {json.dumps(o)})"
                    )
                values = merge(values, o)
            cfg = from_dict(values)
        else:
            cfg = resolve(load_yaml(a.config) if a.config else {}, overrides)
        summary = train(cfg, resume=a.resume)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(str(err), file=sys.stderr)
        return 2
    except RuntimeError as err:
        from dixc.train.loop import TrainingDiverged

        if not isinstance(err, TrainingDiverged):
            raise
        print(str(err), file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, default=str))
    return 0


def _same(values: dict[str, Any], o: dict[str, Any]) -> bool:
    for k, v in o.items():
        if isinstance(v, dict):
            if not isinstance(values.get(k), dict) or not _same(values[k], v):
                return False
        elif values.get(k) != v:
            return False
    return True
