"""The training loop: data split and order, steps, guard rails, EMA, validation, checkpoints, logs.

Determinism. Everything random is derived from the seed and the position in training, never from
a stateful generator shared across steps: the epoch's molecule order from
``default_rng([seed, epoch])``, each molecule's probe / perturbed-point draw from
``(seed, global step, crc32(id))``. A run resumed from ``checkpoint.pt`` therefore repeats the
uninterrupted run bit for bit (the checkpoint still carries the torch / numpy / Python RNG states,
the optimizer, scheduler, EMA, guard and early-stopping state), and a DDP run with the molecules
of each batch sharded across ranks computes the same per-molecule gradients as one process; only
the order of the final summation differs.

Data parallelism. Gradients are summed across ranks with one ``all_reduce`` of the flattened
gradient after every step. This is DistributedDataParallel's reduction done by hand: the DI-Loss
differentiates the functional twice (``torch.autograd.grad(create_graph=True)`` for V_xc and f_xc),
which DDP's reducer hooks do not support.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import fcntl
import io
import logging
import math
import os
import random
import signal
import socket
import time
import warnings
import zlib
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from dixc import data as dxdata
from dixc import functionals
from dixc.fileio import atomic_path
from dixc.train import losses
from dixc.train.config import TrainConfig, from_dict

log = logging.getLogger("dixc.train")

CHECKPOINT = "checkpoint.pt"
LOCK = "train.lock"
CHECKPOINT_VERSION = 1
COLUMNS = [
    "kind", "step", "epoch", "lr", "loss", *losses.TERMS, "grad_norm", "skipped", "reason",
    "scf_nonconv", "molecules", "wall_s", "val_e_mae_mEh", "val_e_mae_nscf_mEh", "val_rho_l2",
    "val_nonconv",
]  # fmt: skip


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps were skipped by the guard rails."""


@dataclasses.dataclass
class Dist:
    """Process group info (world 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> Dist:
    """Joins the torchrun process group (gloo on CPU, nccl on CUDA) when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def close_distributed(d: Dist, barrier: bool = True) -> None:
    """Leaves the process group cleanly: a barrier (after success), then ``destroy_process_group``.

    Without it a rank that finishes first can exit while gloo's threads still talk to the
    other rank, which aborts the process ("terminate called without an active exception")
    on a loaded machine. After an error there is no barrier (the other ranks may be waiting in
    a different collective); the group is only destroyed.
    """
    if d.world <= 1:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    try:
        if barrier:
            dist.barrier()
    finally:
        dist.destroy_process_group()


def split_ids(ids: list[str], cfg: TrainConfig) -> tuple[list[str], list[str]]:
    """(train ids, validation ids), sorted; seeded by ``data.split_seed``."""
    ids = sorted(ids)
    rng = np.random.default_rng(cfg.data.split_seed)
    if cfg.data.max_molecules is not None and cfg.data.max_molecules < len(ids):
        ids = sorted(rng.choice(ids, cfg.data.max_molecules, replace=False).tolist())
    perm = rng.permutation(len(ids))
    n_val = round(cfg.data.val_fraction * len(ids))
    if cfg.data.val_fraction > 0 and len(ids) > 1:
        n_val = max(n_val, 1)
    if cfg.data.val_max is not None:
        n_val = min(n_val, cfg.data.val_max)
    val = sorted(ids[i] for i in perm[:n_val])
    train = sorted(ids[i] for i in perm[n_val:])
    if not train:
        raise ValueError("dixc train: no training molecules left after the validation split")
    return train, val


def lr_lambda(cfg: TrainConfig, total_steps: int):
    """Learning-rate factor of a global step: linear warm-up, then cosine / linear / constant."""
    o = cfg.optim

    def factor(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "constant":
            return 1.0
        span = max(total_steps - o.warmup_steps, 1)
        x = min((step - o.warmup_steps) / span, 1.0)
        if o.schedule == "linear":
            return 1.0 - (1.0 - o.min_lr_ratio) * x
        return o.min_lr_ratio + (1.0 - o.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * x))

    return factor


def molecule_seed(seed: int, step: int, molecule_id: str) -> int:
    """Seed of one molecule's random draws at one global step (independent of rank and order)."""
    return int(
        np.random.SeedSequence([seed, step, zlib.crc32(molecule_id.encode())]).generate_state(1)[0]
    )


def build_functional(cfg: TrainConfig) -> torch.nn.Module:
    """The initial functional: from ``model.init`` or a fresh ``model.arch`` (seeded)."""
    m = cfg.model
    if m.init:
        f = functionals.load(m.init)
        log.info("initialised from %s (%s)", m.init, f.arch_name)
        return f
    torch.manual_seed(cfg.run.seed)
    f = functionals.create(m.arch, **m.arch_config)
    if m.init_target:
        pretrain = getattr(functionals, "pretrain", None)
        if pretrain is None:
            log.warning(
                "model.init_target=%s requested but dixc.functionals.pretrain does not exist in "
                "this dixc; starting from the architecture's own initialisation",
                m.init_target,
            )
        else:
            kwargs = {"seed": cfg.run.seed, "progress": cfg.run.progress, **m.pretrain}
            out = pretrain(f, target=m.init_target, **kwargs)
            if isinstance(out, torch.nn.Module):
                f = out
            log.info("pre-trained %s onto %s: %s", m.arch, m.init_target, out)
    return f


class RunLock:
    """An exclusive lock on a run directory for the time a training runs in it.

    ``flock`` on ``OUT/train.lock``: held by one process at a time and released by the kernel when
    that process ends in any way (no stale locks after a crash or ``kill -9``). The file names the
    holder (pid, host, start time) for the error message of a second process.
    """

    def __init__(self, out: str) -> None:
        os.makedirs(out, exist_ok=True)
        self.path = os.path.join(out, LOCK)
        fh = open(self.path, "a+", encoding="utf-8")  # held until release()
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown process"
            fh.close()
            raise RuntimeError(
                f"dixc train: {out} is in use by another training ({holder}); wait for it to "
                "finish, stop it (SIGTERM writes a checkpoint; then --resume), or choose another "
                "--out"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")  # fmt: skip
        fh.flush()
        self._fh: io.TextIOBase | None = fh

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing the descriptor drops the flock
            self._fh = None


class Trainer:
    """Runs (or resumes) one training run into ``cfg.run.out``.

    Args:
        cfg: resolved configuration.
        resume: continue from ``OUT/checkpoint.pt``.
        dist: process group info (see :func:`init_distributed`).
    """

    def __init__(self, cfg: TrainConfig, resume: bool = False, dist: Dist | None = None) -> None:
        self.cfg = cfg
        self.dist = dist or Dist()
        self.out = cfg.run.out
        if not self.out:
            raise ValueError("dixc train: no output directory (run.out / --out)")
        if not cfg.data.path:
            raise ValueError("dixc train: no reference data (data.path / --data)")
        self.device = torch.device(
            f"cuda:{self.dist.local_rank}"
            if cfg.run.device == "cuda" and self.dist.world > 1
            else cfg.run.device
        )
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        self.ds = dxdata.ReferenceDataset(cfg.data.path)
        self.ref_config = self.ds.config or {}
        self.data_hash = dxdata.config_hash(self.ref_config)
        self.train_ids, self.val_ids = split_ids(self.ds.ids, cfg)
        self.steps_per_epoch = math.ceil(len(self.train_ids) / cfg.optim.batch_size)
        self.total_steps = self.steps_per_epoch * cfg.optim.epochs
        self.weights = losses.term_weights(cfg.loss)
        self._cache: OrderedDict[str, losses.TrainMolecule] = OrderedDict()
        self._stop = False

        self.model = build_functional(cfg).to(self.device)
        self.ema = copy.deepcopy(self.model) if cfg.optim.ema_decay is not None else None
        if self.ema is not None:
            for p in self.ema.parameters():
                p.requires_grad_(False)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        o = cfg.optim
        self.opt = torch.optim.AdamW(
            self.params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay
        )
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(cfg, self.total_steps))
        # progress and bookkeeping (all of it goes into the checkpoint)
        self.state: dict[str, Any] = {
            "epoch": 0, "step_in_epoch": 0, "global_step": 0, "ema_updates": 0,
            "grad_norms": [], "consecutive_skips": 0, "n_skipped": 0, "n_scf_nonconv": 0,
            "n_scf_runs": 0, "best_metric": None, "best_epoch": None, "bad_validations": 0,
            "validations": [], "wall": 0.0, "stopped_early": False,
        }  # fmt: skip
        self.rows: list[dict[str, Any]] = []
        ckpt = os.path.join(self.out, CHECKPOINT)
        if resume:
            self._load(ckpt)
        elif os.path.exists(ckpt):
            raise FileExistsError(
                f"dixc train: {ckpt} exists; pass --resume to continue that run or choose "
                "another --out"
            )
        self.writer = None

    # ---- molecules --------------------------------------------------------------------------
    def molecule(self, mid: str) -> losses.TrainMolecule:
        if mid in self._cache:
            self._cache.move_to_end(mid)
            return self._cache[mid]
        mol = losses.prepare_molecule(
            self.ds[mid], self.ref_config, grid_level=self.cfg.data.grid_level,
            device=self.device, ao_memory_mb=self.cfg.data.ao_memory_mb,
        )  # fmt: skip
        if self.cfg.data.cache_molecules > 0:
            self._cache[mid] = mol
            while len(self._cache) > self.cfg.data.cache_molecules:
                self._cache.popitem(last=False)
        return mol

    def epoch_order(self, epoch: int) -> list[str]:
        perm = np.random.default_rng([self.cfg.run.seed, epoch]).permutation(len(self.train_ids))
        return [self.train_ids[i] for i in perm]

    def batch(self, epoch: int, step_in_epoch: int) -> list[str]:
        b = self.cfg.optim.batch_size
        return self.epoch_order(epoch)[step_in_epoch * b : (step_in_epoch + 1) * b]

    # ---- collective helpers ---------------------------------------------------------------------
    def _all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.dist.world > 1:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def _reduce_grads(self) -> None:
        if self.dist.world == 1:
            return
        flat = torch.cat(
            [
                (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                for p in self.params
            ]
        )
        self._all_reduce(flat)
        i = 0
        for p in self.params:
            n = p.numel()
            p.grad = flat[i : i + n].view_as(p).clone()
            i += n

    # ---- one step ---------------------------------------------------------------------------
    def train_step(self, batch: list[str]) -> dict[str, Any]:
        """Computes, reduces and (unless a guard trips) applies one optimiser step."""
        st, cfg = self.state, self.cfg
        t0 = time.perf_counter()
        self.model.train()
        self.opt.zero_grad(set_to_none=False)
        mine = batch[self.dist.rank :: self.dist.world]
        # sums: terms..., weighted loss, bad, scf runs, scf non-converged
        nt = len(losses.TERMS)
        sums = torch.zeros(nt + 4, dtype=torch.float64)
        reason = ""
        for mid in mine:
            mol = self.molecule(mid)
            gen = torch.Generator().manual_seed(molecule_seed(cfg.run.seed, st["global_step"], mid))
            try:
                terms, info = losses.molecule_losses(self.model, mol, cfg.loss, gen)
                loss = losses.total_loss(terms, self.weights)
                if not bool(torch.isfinite(loss)):
                    raise FloatingPointError(f"loss of {mid} is {float(loss.detach())}")
                (loss / len(batch)).backward()
            except FloatingPointError as err:
                sums[nt + 1] += 1.0
                reason = reason or f"non-finite loss ({str(err).splitlines()[0][:160]})"
                continue
            for k, name in enumerate(losses.TERMS):
                if name in terms:
                    sums[k] += float(terms[name].detach())
            sums[nt] += float(loss.detach())
            if "scf_converged" in info:
                sums[nt + 2] += 1.0
                sums[nt + 3] += 0.0 if info["scf_converged"] else 1.0
        self._reduce_grads()
        self._all_reduce(sums)
        n = len(batch)
        bad = sums[nt + 1] > 0
        grads = [p.grad for p in self.params if p.grad is not None]
        gnorm = (
            float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
            if grads
            else 0.0
        )
        if not bad:
            if not math.isfinite(gnorm):
                bad, reason = True, f"non-finite gradient norm ({gnorm})"
            elif cfg.guard.max_grad_norm is not None and gnorm > cfg.guard.max_grad_norm:
                bad, reason = True, f"gradient norm {gnorm:.3e} > guard.max_grad_norm"
            elif (
                cfg.guard.grad_norm_factor is not None
                and len(st["grad_norms"]) >= cfg.guard.min_history
            ):
                med = float(np.median(st["grad_norms"]))
                if gnorm > cfg.guard.grad_norm_factor * med:
                    bad, reason = (
                        True,
                        (
                            f"gradient norm {gnorm:.3e} > {cfg.guard.grad_norm_factor} x running "
                            f"median {med:.3e}"
                        ),
                    )
        lr = self.opt.param_groups[0]["lr"]
        if bad:
            self.opt.zero_grad(set_to_none=False)
            st["n_skipped"] += 1
            st["consecutive_skips"] += 1
            if self.dist.main:
                log.warning("step %d skipped: %s", st["global_step"], reason)
        else:
            if cfg.optim.clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.params, cfg.optim.clip_grad_norm)
            self.opt.step()
            self._update_ema()
            st["consecutive_skips"] = 0
            st["grad_norms"] = (st["grad_norms"] + [gnorm])[-cfg.guard.window :]
        with warnings.catch_warnings():  # a skipped step steps the schedule, not the optimiser
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.sched.step()
        st["n_scf_runs"] += int(sums[nt + 2])
        st["n_scf_nonconv"] += int(sums[nt + 3])
        row: dict[str, Any] = {
            "kind": "train", "step": st["global_step"] + 1, "epoch": st["epoch"], "lr": lr,
            "loss": float(sums[nt]) / n if sums[nt + 1] == 0 else float("nan"),
            "grad_norm": gnorm, "skipped": int(bad), "reason": reason,
            "scf_nonconv": int(sums[nt + 3]), "molecules": n, "wall_s": time.perf_counter() - t0,
        }  # fmt: skip
        for k, name in enumerate(losses.TERMS):
            ok = self.weights[name] > 0 and sums[nt + 1] == 0
            row[name] = float(sums[k]) / n if ok else ""
        if st["consecutive_skips"] >= cfg.guard.max_consecutive_skips:
            raise TrainingDiverged(
                f"dixc train: {st['consecutive_skips']} consecutive steps skipped (last: "
                f"{reason}); training diverged. Lower optim.lr, tighten optim.clip_grad_norm or "
                "check the data; resume from the last checkpoint with --resume"
            )
        return row

    def _update_ema(self) -> None:
        if self.ema is None:
            return
        n = self.state["ema_updates"]
        d = min(float(self.cfg.optim.ema_decay), (1.0 + n) / (10.0 + n))
        with torch.no_grad():
            for pe, p in zip(self.ema.parameters(), self.model.parameters(), strict=True):
                pe.mul_(d).add_(p.detach(), alpha=1.0 - d)
            for be, b in zip(self.ema.buffers(), self.model.buffers(), strict=True):
                be.copy_(b)
        self.state["ema_updates"] = n + 1

    @property
    def averaged(self) -> torch.nn.Module:
        return self.ema if self.ema is not None else self.model

    # ---- validation -----------------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """Energy MAE (SCF and at D*, mEh), mean L2 density error and non-converged count."""
        f = self.averaged
        f.eval()
        mine = self.val_ids[self.dist.rank :: self.dist.world]
        sums = torch.zeros(5, dtype=torch.float64)
        for mid in mine:
            r = losses.validate_molecule(f, self.molecule(mid), self.cfg.validate)
            sums += torch.tensor(
                [abs(r["e_err"]), abs(r["e_err_nscf"]), r["rho_l2"], 1.0 - r["converged"], 1.0],
                dtype=torch.float64,
            )
        self._all_reduce(sums)
        n = max(float(sums[4]), 1.0)
        return {
            "e_mae": 1000.0 * float(sums[0]) / n,
            "e_mae_nscf": 1000.0 * float(sums[1]) / n,
            "rho_l2": float(sums[2]) / n,
            "nonconv": int(sums[3]),
            "n": int(sums[4]),
        }

    # ---- files --------------------------------------------------------------------------------
    def _extra(self, metrics: dict[str, Any] | None) -> dict[str, Any]:
        st = self.state
        return {
            "step": st["global_step"], "epoch": st["epoch"], "preset": self.cfg.loss.preset,
            "validation": metrics or {}, "data": os.path.abspath(str(self.cfg.data.path)),
            "reference_config_hash": self.data_hash, "seed": self.cfg.run.seed,
        }  # fmt: skip

    def save_functional(self, name: str, metrics: dict[str, Any] | None) -> None:
        if self.dist.main:
            f = copy.deepcopy(self.averaged).cpu()
            functionals.save(f, os.path.join(self.out, name), extra=self._extra(metrics))

    def save_checkpoint(self) -> None:
        if not self.dist.main:
            return
        payload = {
            "version": CHECKPOINT_VERSION,
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "state": copy.deepcopy(self.state),
            "n_log_rows": len(self.rows),
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),  # noqa: NPY002
                "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
            "data": {"path": self.cfg.data.path, "reference_config_hash": self.data_hash,
                     "train_ids": self.train_ids, "val_ids": self.val_ids},
            "arch": getattr(self.model, "arch_name", None),
            "arch_config": getattr(self.model, "config", None),
        }  # fmt: skip
        with atomic_path(os.path.join(self.out, CHECKPOINT)) as tmp:
            torch.save(payload, tmp)
        self.write_log()

    def _load(self, path: str) -> None:
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"dixc train: --resume but {path} does not exist; start without --resume"
            )
        ck = torch.load(path, map_location=self.device, weights_only=False)
        if ck.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"dixc train: {path} has checkpoint version {ck.get('version')}")
        if ck["data"]["reference_config_hash"] != self.data_hash:
            raise ValueError(
                f"dixc train: {path} was trained on data with reference config hash "
                f"{ck['data']['reference_config_hash']}, {self.cfg.data.path} has "
                f"{self.data_hash}; resume with the same data"
            )
        if ck["data"]["train_ids"] != self.train_ids or ck["data"]["val_ids"] != self.val_ids:
            raise ValueError(
                f"dixc train: the molecules of {self.cfg.data.path} differ from those of the "
                "checkpointed run (train/validation split changed); resume with the same data"
            )
        self.model.load_state_dict(ck["model"])
        if self.ema is not None:
            self.ema.load_state_dict(ck["ema"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        self.state = ck["state"]
        rng = ck["rng"]
        torch.set_rng_state(rng["torch"].cpu())
        np.random.set_state(rng["numpy"])  # noqa: NPY002
        random.setstate(rng["python"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([t.cpu() for t in rng["cuda"]])
        self.rows = read_log(os.path.join(self.out, "log.csv"))[: ck["n_log_rows"]]
        log.info("resumed %s at step %d (epoch %d)", path, self.state["global_step"],
                 self.state["epoch"])  # fmt: skip

    def write_log(self) -> None:
        if not self.dist.main:
            return
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: _fmt(r.get(k, "")) for k in COLUMNS})
        with atomic_path(os.path.join(self.out, "log.csv")) as tmp:
            with open(tmp, "w", encoding="utf-8", newline="") as fh:
                fh.write(buf.getvalue())

    def _tb(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None and value == value and value != "":
            self.writer.add_scalar(tag, value, step)

    # ---- driver ---------------------------------------------------------------------------------
    def _on_signal(self, signum, _frame) -> None:
        log.warning("signal %d: stopping after this step (checkpoint written)", signum)
        self._stop = True

    def run(self) -> dict[str, Any]:
        """Trains until the last epoch, early stopping, ``run.max_steps`` or SIGTERM/SIGINT.

        The run directory is locked meanwhile (:class:`RunLock`): a second training into the
        same ``--out`` (a resume started twice, two sweeps sharing a directory) fails at once
        with the holder's pid instead of interleaving checkpoints.

        Returns:
            A summary: steps, skipped steps, SCF counts, best and last validation metrics.
        """
        lock = RunLock(self.out) if self.dist.main else None
        try:
            return self._run()
        finally:
            if lock is not None:
                lock.release()

    def _run(self) -> dict[str, Any]:
        cfg, st = self.cfg, self.state
        if self.dist.main:
            os.makedirs(self.out, exist_ok=True)
            with atomic_path(os.path.join(self.out, "config.yaml")) as tmp:
                with open(tmp, "w", encoding="utf-8") as fh:
                    fh.write(cfg.to_yaml())
            if cfg.run.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(
                    os.path.join(self.out, "tb"), purge_step=st["global_step"] + 1
                )
        old = {}
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                old[s] = signal.signal(s, self._on_signal)
            except ValueError:  # not the main thread
                pass
        bar = None
        if self.dist.main and cfg.run.progress:
            from tqdm import tqdm

            bar = tqdm(total=self.total_steps, initial=st["global_step"], desc="dixc train",
                       dynamic_ncols=True)  # fmt: skip
        t_start = time.perf_counter() - st["wall"]
        finished = True
        try:
            while st["epoch"] < cfg.optim.epochs and not st["stopped_early"]:
                while st["step_in_epoch"] < self.steps_per_epoch:
                    over_time = (
                        cfg.run.max_wall_s is not None
                        and time.perf_counter() - t_start >= cfg.run.max_wall_s
                    )
                    stop = self._stop or over_time
                    if self.dist.world > 1:  # every rank must take the same decision
                        stop = bool(self._all_reduce(torch.tensor([float(stop)]))[0] > 0)
                    if stop or (
                        cfg.run.max_steps is not None and st["global_step"] >= cfg.run.max_steps
                    ):
                        finished = False
                        break
                    row = self.train_step(self.batch(st["epoch"], st["step_in_epoch"]))
                    st["step_in_epoch"] += 1
                    st["global_step"] += 1
                    st["wall"] = time.perf_counter() - t_start
                    self.rows.append(row)
                    self._log_row(row)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{row['loss']:.4g}", skip=st["n_skipped"])
                    if st["global_step"] % cfg.run.checkpoint_every == 0:
                        self.save_checkpoint()
                    else:
                        self.write_log()
                if not finished:
                    break
                last = st["epoch"] + 1 == cfg.optim.epochs
                if self.val_ids and ((st["epoch"] + 1) % cfg.validate.every_epochs == 0 or last):
                    self._validation()
                st["epoch"] += 1
                st["step_in_epoch"] = 0
                self.save_checkpoint()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            if bar is not None:
                bar.close()
        st["wall"] = time.perf_counter() - t_start
        self.save_checkpoint()
        last_metrics = st["validations"][-1] if st["validations"] else None
        self.save_functional("last.safetensors", last_metrics)
        if not self.val_ids and self.dist.main:  # no held-out data: the last model is the best
            self.save_functional("best.safetensors", None)
        if self.dist.main:
            plot_losses(self.rows, os.path.join(self.out, "loss.png"))
        if self.writer is not None:
            self.writer.close()
        summary = {
            "finished": finished, "steps": st["global_step"], "epochs": st["epoch"],
            "skipped": st["n_skipped"], "scf_runs": st["n_scf_runs"],
            "scf_nonconv": st["n_scf_nonconv"], "best_epoch": st["best_epoch"],
            "best_metric": st["best_metric"], "last_validation": last_metrics,
            "stopped_early": st["stopped_early"], "wall_s": st["wall"],
        }  # fmt: skip
        return summary

    def _validation(self) -> None:
        st, v = self.state, self.cfg.validate
        m = self.validate()
        m["epoch"], m["step"] = st["epoch"], st["global_step"]
        st["validations"].append(m)
        score = m[v.metric]
        improved = st["best_metric"] is None or score < st["best_metric"] - v.min_delta
        if improved:
            st["best_metric"], st["best_epoch"], st["bad_validations"] = score, st["epoch"], 0
            self.save_functional("best.safetensors", m)
        else:
            st["bad_validations"] += 1
            if v.patience is not None and st["bad_validations"] >= v.patience:
                st["stopped_early"] = True
        row = {
            "kind": "val", "step": st["global_step"], "epoch": st["epoch"],
            "val_e_mae_mEh": m["e_mae"], "val_e_mae_nscf_mEh": m["e_mae_nscf"],
            "val_rho_l2": m["rho_l2"], "val_nonconv": m["nonconv"],
        }  # fmt: skip
        self.rows.append(row)
        if self.dist.main:
            log.info(
                "epoch %d: validation E MAE %.3f mEh (at D* %.3f), rho L2 %.4g, %d/%d SCF "
                "not converged%s", st["epoch"], m["e_mae"], m["e_mae_nscf"], m["rho_l2"],
                m["nonconv"], m["n"], " (best)" if improved else "",
            )  # fmt: skip
            for k in ("e_mae", "e_mae_nscf", "rho_l2", "nonconv"):
                self._tb(f"val/{k}", float(m[k]), st["global_step"])

    def _log_row(self, row: dict[str, Any]) -> None:
        step = row["step"]
        for k in ("loss", "grad_norm", "lr", "skipped", "scf_nonconv", *losses.TERMS):
            v = row.get(k, "")
            if v != "" and isinstance(v, (int, float)):
                self._tb(f"train/{k}", float(v), step)


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return repr(v)  # round-trips exactly
    return v


def read_log(path: str) -> list[dict[str, Any]]:
    """Rows of ``log.csv`` (numbers parsed back to int / float)."""
    if not os.path.isfile(path):
        return []
    out = []
    with open(path, encoding="utf-8", newline="") as fh:
        for r in csv.DictReader(fh):
            row: dict[str, Any] = {}
            for k, v in r.items():
                if v == "" or k in ("kind", "reason"):
                    row[k] = v
                    continue
                try:
                    row[k] = int(v)
                except ValueError:
                    try:
                        row[k] = float(v)
                    except ValueError:
                        row[k] = v
            out.append(row)
    return out


def plot_losses(rows: list[dict[str, Any]], path: str) -> None:
    """loss.png: training loss and terms (log scale) per step; validation metrics per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in rows if r.get("kind") == "train"]
    val = [r for r in rows if r.get("kind") == "val"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ax = axes[0]
    for key in ("loss", *losses.TERMS):
        pts = [(r["step"], r[key]) for r in train if isinstance(r.get(key), (int, float))
               and r[key] == r[key] and r[key] > 0]  # fmt: skip
        if pts:
            ax.plot(*zip(*pts, strict=True), label=key, lw=1.5 if key == "loss" else 0.8)
    skipped = [r["step"] for r in train if r.get("skipped") == 1]
    for s in skipped:
        ax.axvline(s, color="red", alpha=0.3, lw=0.5)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (per molecule)")
    ax.set_title("training loss" + (f" ({len(skipped)} skipped steps in red)" if skipped else ""))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax = axes[1]
    if val:
        steps = [r["step"] for r in val]
        ax.plot(steps, [r["val_e_mae_mEh"] for r in val], "o-", label="E MAE SCF (mEh)")
        ax.plot(steps, [r["val_e_mae_nscf_mEh"] for r in val], "s--", label="E MAE at D* (mEh)")
        ax.set_yscale("log")
        ax2 = ax.twinx()
        ax2.plot(steps, [r["val_rho_l2"] for r in val], "^-", color="C3", label="rho L2")
        ax2.set_ylabel("L2 density error")
        ax2.legend(loc="upper center", fontsize=8)
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no validation split", ha="center", transform=ax.transAxes)
    ax.set_xlabel("step")
    ax.set_title("validation")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def config_from_checkpoint(path: str) -> TrainConfig:
    """The resolved config stored in a checkpoint."""
    ck = torch.load(path, map_location="cpu", weights_only=False)
    return from_dict(ck["config"])
