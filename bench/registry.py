"""A small benchmark registry: entries, timing, peak memory and error bookkeeping.

An :class:`Entry` names one piece of work at one size (``sizes``), a ``setup`` that builds the
inputs once, the implementations that do the work (the first is the one under test, the second
its peer, any further ones are variants) and an optional float64 ``reference``. :func:`run_entry`
warms every implementation up, then times them interleaved (A B A B ...) so that a load change
on the machine hits all of them alike, and reports the median of ``repeat`` runs measured with
``time.perf_counter``.

Peak memory is the resident-set high-water mark (``VmHWM``) of one run:

* ``mode="subprocess"``: a fresh interpreter per (entry, implementation) runs setup, resets the
  high-water mark, runs the implementation once and reports; peaks are per entry and not hidden
  by memory the allocator kept from earlier entries.
* ``mode="inprocess"``: the same reset-run-read sequence in this process (cheaper; allocations
  below glibc's mmap threshold can reuse heap pages kept from earlier work, so this is a lower
  bound).

Resetting the high-water mark writes ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0); where that
is not possible the process-wide ``ru_maxrss`` is reported instead.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "Entry",
    "Impl",
    "Result",
    "measure_peak",
    "peak_in_subprocess",
    "rel_max_err",
    "run_entry",
    "time_interleaved",
]


@dataclasses.dataclass
class Impl:
    """One implementation of an entry's work.

    Attributes:
        name: short label (``"dixc"``, ``"pyscf"``, ...).
        run: ``ctx -> result``; the result is what errors are computed on.
        flops: floating-point operations of one run, dense-equivalent convention (``None``: n/a).
        flops_eff: operations actually issued after screening, where known.
    """

    name: str
    run: Callable[[Any], Any]
    flops: float | None = None
    flops_eff: float | None = None


@dataclasses.dataclass
class Entry:
    """A benchmark entry.

    Attributes:
        name: unique id, e.g. ``"rho/GGA/benzene"``; used to re-create the entry in a subprocess.
        sizes: problem sizes and labels printed in the tables (molecule, nao, ngrid, ...).
        setup: builds the inputs (``ctx``) shared by all implementations.
        impls: ``ctx -> list[Impl]``; first = under test, second = peer, rest = variants.
        reference: ``ctx -> result`` in float64 (``None``: no reference).
        error: ``(result, reference) -> float``.
        table: which output table the entry belongs to.
    """

    name: str
    sizes: dict[str, Any]
    setup: Callable[[], Any]
    impls: Callable[[Any], list[Impl]]
    reference: Callable[[Any], Any] | None = None
    error: Callable[[Any, Any], float] | None = None
    table: str = "main"


@dataclasses.dataclass
class Result:
    """What :func:`run_entry` measured for one entry."""

    entry: Entry
    times: dict[str, list[float]]  # seconds, per impl, all repeats
    median: dict[str, float]  # seconds
    flops: dict[str, float | None]
    flops_eff: dict[str, float | None]
    err_vs_peer: dict[str, float]  # impl -> error vs the peer (impls[1]); peer absent
    err_vs_ref: dict[str, float]  # impl -> error vs the float64 reference
    peak_mib: dict[str, float] = dataclasses.field(default_factory=dict)  # absolute VmHWM
    extra_mib: dict[str, float] = dataclasses.field(default_factory=dict)  # VmHWM - VmRSS before


def rel_max_err(a: Any, b: Any) -> float:
    """``max |a - b| / max |b|`` over all elements (numpy arrays or torch tensors)."""
    import numpy as np

    a = _as_numpy(a)
    b = _as_numpy(b)
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    diff = float(np.max(np.abs(a - b))) if b.size else 0.0
    return diff / scale if scale > 0 else diff


def _as_numpy(x: Any):
    import numpy as np

    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def time_interleaved(
    fns: Sequence[Callable[[], Any]],
    repeat: int,
    warmup: int = 1,
    budget_s: float | None = None,
) -> list[list[float]]:
    """Times ``fns`` interleaved: ``warmup`` untimed rounds, then up to ``repeat`` timed rounds.

    Args:
        fns: the callables, one round calls each once in order.
        repeat: timed rounds.
        warmup: untimed rounds first.
        budget_s: stop after the round in which the timed rounds' total passes this (at least
            one round is always timed); ``None``: always ``repeat`` rounds.

    Returns:
        ``times[k]``: the wall-clock durations (seconds) of ``fns[k]``, one per timed round.
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    spent = 0.0
    for _ in range(max(repeat, 1)):
        for k, fn in enumerate(fns):
            gc.collect()
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            times[k].append(dt)
            spent += dt
        if budget_s is not None and spent >= budget_s:
            break
    return times


def _status_kib(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_peak(fn: Callable[[], Any]) -> tuple[float, float]:
    """Runs ``fn`` once and returns ``(peak, extra)`` in MiB.

    ``peak`` is the process's resident high-water mark during the run, ``extra`` that minus the
    resident size just before it (the memory the run itself added).
    """
    gc.collect()
    base = _status_kib("VmRSS")
    if _reset_hwm() and base is not None:
        fn()
        peak = _status_kib("VmHWM")
        if peak is not None:
            return peak / 1024.0, max(peak - base, 0.0) / 1024.0
    # Fallback: process-wide peak (kilobytes on Linux).
    fn()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024.0, float("nan")


def peak_in_subprocess(argv: Sequence[str], timeout: float = 600.0) -> tuple[float, float]:
    """Runs ``argv`` (a child that ends by printing ``measure_peak``'s JSON) and parses it."""
    out = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, env=os.environ.copy()
    )
    if out.returncode != 0:
        raise RuntimeError(f"memory child {argv} failed:\n{out.stderr[-4000:]}")
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")][-1]
    d = json.loads(line)
    return float(d["peak_mib"]), float(d["extra_mib"])


def child_report(fn: Callable[[], Any]) -> None:
    """In a memory child: measure ``fn`` and print the JSON line the parent parses."""
    peak, extra = measure_peak(fn)
    sys.stdout.write(json.dumps({"peak_mib": peak, "extra_mib": extra}) + "\n")
    sys.stdout.flush()


def run_entry(
    entry: Entry,
    repeat: int = 5,
    warmup: int = 1,
    budget_s: float | None = None,
    with_reference: bool = True,
    memory: str = "off",
    child_argv: Callable[[str, str], Sequence[str]] | None = None,
    log: Callable[[str], None] | None = None,
) -> Result:
    """Sets the entry up, times its implementations, computes errors and (optionally) peaks.

    The first warm-up round's outputs are kept for the errors; with ``memory="inprocess"`` that
    round is also the one whose peak is measured (no extra run).

    Args:
        entry: the entry.
        repeat: timed rounds (the median is reported).
        warmup: untimed rounds before timing (at least 1 is run: it provides the outputs).
        budget_s: see :func:`time_interleaved`.
        with_reference: compute the float64 reference and errors against it.
        memory: ``"off"``, ``"inprocess"`` or ``"subprocess"`` (needs ``child_argv``).
        child_argv: ``(entry_name, impl_name) -> argv`` of the memory child.
        log: progress messages.
    """
    say = log or (lambda _m: None)
    t0 = time.perf_counter()
    ctx = entry.setup()
    impls = entry.impls(ctx)
    say(f"{entry.name}: setup {time.perf_counter() - t0:.1f} s")
    outs: dict[str, Any] = {}
    peaks: dict[str, tuple[float, float]] = {}
    for im in impls:  # first warm-up round, kept for errors (and in-process peaks)
        if memory == "inprocess":

            def keep(im=im):
                outs[im.name] = im.run(ctx)

            peaks[im.name] = measure_peak(keep)
        else:
            outs[im.name] = im.run(ctx)
    times = time_interleaved(
        [lambda im=im: im.run(ctx) for im in impls],
        repeat=repeat,
        warmup=max(warmup - 1, 0),
        budget_s=budget_s,
    )
    times_d = {im.name: t for im, t in zip(impls, times, strict=True)}
    median = {k: statistics.median(v) for k, v in times_d.items()}
    err = entry.error or rel_max_err
    peer = impls[1].name if len(impls) > 1 else None
    err_peer = {k: err(v, outs[peer]) for k, v in outs.items() if peer is not None and k != peer}
    err_ref: dict[str, float] = {}
    if with_reference and entry.reference is not None:
        t1 = time.perf_counter()
        ref = entry.reference(ctx)  # None: not affordable at this size
        if ref is not None:
            err_ref = {k: err(v, ref) for k, v in outs.items()}
        say(f"{entry.name}: reference {time.perf_counter() - t1:.1f} s")
    res = Result(
        entry=entry,
        times=times_d,
        median=median,
        flops={im.name: im.flops for im in impls},
        flops_eff={im.name: im.flops_eff for im in impls},
        err_vs_peer=err_peer,
        err_vs_ref=err_ref,
    )
    outs.clear()
    for k, (peak, extra) in peaks.items():
        res.peak_mib[k], res.extra_mib[k] = peak, extra
    if memory == "subprocess":
        if child_argv is None:
            raise ValueError("run_entry: memory='subprocess' needs child_argv")
        del ctx
        gc.collect()
        for im in impls:
            res.peak_mib[im.name], res.extra_mib[im.name] = peak_in_subprocess(
                child_argv(entry.name, im.name)
            )
    say(
        f"{entry.name}: "
        + ", ".join(f"{k} {1e3 * v:.1f} ms" for k, v in median.items())
        + f" ({len(times[0])} repeats, {time.perf_counter() - t0:.1f} s total)"
    )
    return res
