"""GPU benchmark of dixc's CUDA kernels: fused eval_rho / contract_vxc against a dense cuBLAS peer.

Side by side in one process, on the same PySCF grid (level 3) and inputs, float64:

* ``dixc-cuda``: ``dixc.ops.eval_rho_fused`` / ``contract_vxc_fused`` on the GPU (screened
  blocks of 16384 points, AOs evaluated per block, one cuBLAS GEMM per block).
* ``torch-dense``: the same contractions as dense torch on the GPU (cuBLAS through
  ``torch.einsum``), AOs materialised by ``dixc.ops.eval_ao`` on the GPU in chunks of
  ``--dense-chunk`` points, no screening.
* ``dixc-cpu``: the fused CPU kernels (timed for molecules of at most ``--cpu-max-atoms`` atoms).
* ``--float32`` adds ``dixc-cuda-f32``.

Entries: ``rho`` (GGA, MGGA features of a MINAO-guess density matrix) and ``vxc`` (V from
per-point weights ``w_g (0.5 + u_g)``, u uniform in [0, 1), deterministic), per molecule and basis;
``hvp16`` (batch table): the HVP-shaped pair eval_rho_fused then contract_vxc_fused with B = 16
probes in one call each, against the same pair for one probe and against 16 single calls.

Timing: CUDA events around each call (warm-up first; median of ``--repeat``); the CPU peer with
``time.perf_counter``. FLOPs count the GEMM parts only (as bench_numint.py): dense-equivalent
``2 nao^2 ngrid`` per GEMM (GGA: 1 GEMM per op, MGGA: 4), times B; "effective" replays dixc's
screening (16384-point blocks, fewer when scratch memory says so; bounding box against each
shell's rcut) and counts ``2 n_blk^2 np_blk``. The FP64 peak is measured in the same run (a large
float64 matmul); the tables show achieved GFLOP/s, its fraction of that peak, times relative to
dixc-cuda, and the max relative error against the float64 CPU kernels (rho on a subset of whole
blocks and V against the float64 dense peer when the CPU peer is skipped for size).

Run on a machine with a GPU and dixc built with CUDA kernels (see bench/README.md):
    .venv/bin/python bench/bench_cuda.py --markdown
Without a GPU or CUDA kernels it says so and exits with status 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from registry import Entry, Impl, rel_max_err

NFEAT = {"GGA": 4, "MGGA": 5}
GEMMS = {"GGA": 1, "MGGA": 4}  # GEMMs of size 2 nao^2 ngrid per eval_rho / contract_vxc
CUDA_BLOCK = 16384  # dixc's CUDA block (csrc/cuda/numint_driver.h Tuning::block)
CUDA_SCRATCH = 1 << 27  # Tuning::scratch_elems
REF_BLOCK, REF_SUBSET_BLOCKS = 1024, 64  # rho reference on 64 whole 1024-point blocks (big mols)


def _parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--molecules",
        default="alkane6,alkane33",
        help="comma list of dixc.molecules names (default: C6H14, 20 atoms; C33H68, 101 atoms)",
    )
    p.add_argument("--basis", default="def2-svp,def2-tzvp", help="comma list of basis sets")
    p.add_argument("--level", type=int, default=3, help="PySCF grid level (default 3)")
    p.add_argument("--xc", default="GGA,MGGA", help="comma list of GGA, MGGA")
    p.add_argument("--ops", default="rho,vxc,hvp16", help="comma list of rho, vxc, hvp16")
    p.add_argument("--repeat", type=int, default=5, help="timed GPU runs; the median is reported")
    p.add_argument("--warmup", type=int, default=2, help="untimed GPU runs before timing")
    p.add_argument("--cpu-repeat", type=int, default=1, help="timed runs of the CPU peer")
    p.add_argument(
        "--cpu-max-atoms",
        type=int,
        default=40,
        help="time the CPU peer (and take the full float64 reference from it) up to this size",
    )
    p.add_argument("--batch", type=int, default=16, help="probes of the hvp entries (default 16)")
    p.add_argument("--batch-xc", default="GGA", help="xc types of the hvp entries")
    p.add_argument(
        "--dense-chunk", type=int, default=32768, help="grid points per chunk of the dense peer"
    )
    p.add_argument("--peak-n", type=int, default=8192, help="matrix size of the FP64 peak matmul")
    p.add_argument("--float32", action="store_true", help="also time dixc-cuda in float32")
    p.add_argument("--device", default="cuda", help="CUDA device (default: the current one)")
    p.add_argument("--markdown", action="store_true", help="also print the tables as markdown")
    p.add_argument("--json", default=None, help="write the raw results to this JSON file")
    return p.parse_args(argv)


# --- timing ------------------------------------------------------------------------------------
def time_cuda(fn: Callable[[], Any], repeat: int, warmup: int) -> list[float]:
    """Milliseconds of ``fn`` per run, measured with CUDA events on the current stream."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(max(repeat, 1)):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def fp64_peak_gflops(n: int, device) -> float:
    """Achieved GFLOP/s of an n x n float64 matmul (cuBLAS), the reference 'peak'."""
    import torch

    a = torch.randn(n, n, dtype=torch.float64, device=device)
    b = torch.randn(n, n, dtype=torch.float64, device=device)
    ms = statistics.median(time_cuda(lambda: a @ b, repeat=5, warmup=2))
    return 2.0 * n**3 / (ms * 1e-3) / 1e9


# --- inputs ------------------------------------------------------------------------------------
class MolCtx:
    """Molecule, grid, packed basis and inputs (on the CPU and on the GPU) of one entry group."""

    def __init__(self, name: str, basis: str, args: argparse.Namespace, device):
        import numpy as np
        import torch
        from pyscf.scf import hf

        import dixc
        import dixc.molecules

        self.name, self.basis_name = name, basis
        self.mol = dixc.molecules.mole(name, basis=basis)
        self.natm = self.mol.natm
        self.basis = dixc.pack_basis(self.mol)
        self.nao = self.basis.nao
        grid, _ = dixc.make_grid(self.mol, level=args.level)
        self.coords, self.weights = grid.coords, grid.weights
        self.ngrid = int(self.coords.shape[0])
        self.dm = torch.from_numpy(np.ascontiguousarray(hf.init_guess_by_minao(self.mol)))
        gen = torch.Generator().manual_seed(1234)
        x = torch.randn(args.batch, self.nao, self.nao, generator=gen, dtype=torch.float64)
        self.dms = (0.5 * (x + x.transpose(1, 2)) / math.sqrt(self.nao)).contiguous()
        u = torch.rand(max(NFEAT.values()), self.ngrid, generator=gen, dtype=torch.float64)
        self.wv = (self.weights * (0.5 + u)).contiguous()  # (5, ngrid)
        self.wvs = (
            self.wv[None] * (0.5 + torch.rand(args.batch, 1, 1, generator=gen))
        ).contiguous()
        self.dev = device
        self.basis_d = self.basis.to(device)
        self.coords_d = self.coords.to(device)
        self.dm_d, self.dms_d = self.dm.to(device), self.dms.to(device)
        self.wv_d, self.wvs_d = self.wv.to(device), self.wvs.to(device)
        self._screened: dict[int, tuple] = {}
        self.n_blk, self.np_blk = self.screening(CUDA_BLOCK)

    def block(self, xc: str, nset: int) -> int:
        """Points per block of the CUDA fused ops (numint_driver.h block_points)."""
        per = self.nao * max(4, nset * (4 if xc == "MGGA" else 1))
        if per * CUDA_BLOCK <= CUDA_SCRATCH:
            return CUDA_BLOCK
        return min(CUDA_BLOCK, max(128, CUDA_SCRATCH // per // 128 * 128))

    def screening(self, P: int):
        """AOs surviving dixc's screening per block of P points (replays plan_blocks)."""
        if P in self._screened:
            return self._screened[P]
        import numpy as np

        b, pts = self.basis, self.coords.numpy()
        nblk = (self.ngrid + P - 1) // P
        pad = nblk * P - self.ngrid
        padded = np.concatenate([pts, np.repeat(pts[-1:], pad, axis=0)]) if pad else pts
        blocks = padded.reshape(nblk, P, 3)
        lo, hi = blocks.min(axis=1), blocks.max(axis=1)
        c, ls = b.bas_coord.numpy(), b.bas[:, 0].numpy()
        nfunc = (ls + 1) * (ls + 2) // 2 if b.cart else 2 * ls + 1
        d = np.maximum(0.0, np.maximum(lo[:, None, :] - c[None], c[None] - hi[:, None, :]))
        sel = (d * d).sum(-1) <= b.rcut.numpy()[None] ** 2
        n_blk = sel.astype(np.float64) @ nfunc.astype(np.float64)
        np_blk = np.full(nblk, P, dtype=np.float64)
        np_blk[-1] = self.ngrid - (nblk - 1) * P
        self._screened[P] = (n_blk, np_blk)
        return n_blk, np_blk

    def flops(self, xc: str, nset: int = 1) -> tuple[float, float]:
        """(dense-equivalent, effective) GEMM flops of one eval_rho or contract_vxc of nset sets."""
        dense = 2.0 * self.nao**2 * self.ngrid * GEMMS[xc] * nset
        n_blk, np_blk = self.screening(self.block(xc, nset))
        eff = float((2.0 * n_blk**2 * np_blk).sum()) * GEMMS[xc] * nset
        return dense, eff

    def label(self) -> str:
        return f"{self.name}/{self.basis_name}"


# --- implementations ---------------------------------------------------------------------------
def dense_rho(ctx: MolCtx, x, xc: str, chunk: int):
    """Dense torch peer of eval_rho: AOs materialised per chunk, einsum contractions (cuBLAS)."""
    import torch

    import dixc.ops

    d = 0.5 * (x + x.T)
    out = torch.empty(NFEAT[xc], ctx.ngrid, dtype=x.dtype, device=x.device)
    for g0 in range(0, ctx.ngrid, chunk):
        ao = dixc.ops.eval_ao(ctx.basis_d, ctx.coords_d[g0 : g0 + chunk], 1)  # (4, nao, np)
        c = torch.einsum("ij,jg->ig", d, ao[0])
        out[0, g0 : g0 + chunk] = (ao[0] * c).sum(0)
        out[1:4, g0 : g0 + chunk] = 2.0 * (ao[1:4] * c).sum(1)
        if xc == "MGGA":
            cx = torch.einsum("ij,xjg->xig", d, ao[1:4])
            out[4, g0 : g0 + chunk] = 0.5 * (ao[1:4] * cx).sum((0, 1))
    return out


def dense_vxc(ctx: MolCtx, x, xc: str, chunk: int):
    """Dense torch peer of contract_vxc."""
    import torch

    import dixc.ops

    v = torch.zeros(ctx.nao, ctx.nao, dtype=x.dtype, device=x.device)
    for g0 in range(0, ctx.ngrid, chunk):
        ao = dixc.ops.eval_ao(ctx.basis_d, ctx.coords_d[g0 : g0 + chunk], 1)
        w = x[:, g0 : g0 + chunk]
        aow = 0.5 * w[0] * ao[0] + torch.einsum("xg,xig->ig", w[1:4], ao[1:4])
        v += torch.einsum("ig,jg->ij", ao[0], aow)
        if xc == "MGGA":
            v += 0.25 * torch.einsum("xig,g,xjg->ij", ao[1:4], w[4], ao[1:4])
    return v + v.T


def _fused(c: MolCtx, fn, x, xc: str, gpu: bool):
    """A fused dixc op on the GPU (basis and points there) or on the CPU."""
    if gpu:
        return fn(c.basis_d, c.coords_d, x, xc)
    return fn(c.basis, c.coords, x, xc)


def _impls(ctx: MolCtx, *, args: argparse.Namespace, op: str, xc: str) -> list[Impl]:
    """dixc-cuda, torch-dense, then dixc-cpu (small molecules) and dixc-cuda-f32 (--float32)."""
    import dixc.ops

    nf = NFEAT[xc]
    dense, eff = ctx.flops(xc)
    if op == "rho":
        fn, peer, x, x_d = dixc.ops.eval_rho_fused, dense_rho, ctx.dm, ctx.dm_d
    else:
        fn, peer, x, x_d = dixc.ops.contract_vxc_fused, dense_vxc, ctx.wv[:nf], ctx.wv_d[:nf]
    impls = [
        Impl("dixc-cuda", partial(_fused, fn=fn, x=x_d, xc=xc, gpu=True), dense, eff),
        Impl("torch-dense", partial(peer, x=x_d, xc=xc, chunk=args.dense_chunk), dense),
    ]
    if ctx.natm <= args.cpu_max_atoms:
        impls.append(Impl("dixc-cpu", partial(_fused, fn=fn, x=x, xc=xc, gpu=False), dense, eff))
    if args.float32:
        x32 = x_d.float()
        impls.append(
            Impl("dixc-cuda-f32", partial(_fused, fn=fn, x=x32, xc=xc, gpu=True), dense, eff)
        )
    return impls


def entries(ctx: MolCtx, args: argparse.Namespace) -> list[Entry]:
    out = []
    ops = args.ops.split(",")
    for xc in args.xc.split(","):
        for op in ("rho", "vxc"):
            if op in ops:
                out.append(
                    Entry(
                        name=f"{op}/{xc}/{ctx.label()}",
                        sizes={"natm": ctx.natm, "nao": ctx.nao, "ngrid": ctx.ngrid},
                        setup=lambda: ctx,
                        impls=partial(_impls, args=args, op=op, xc=xc),
                    )
                )
    return out


def reference(ctx: MolCtx, op: str, xc: str, outs: dict[str, Any], cpu_timed: bool):
    """float64 CPU reference (full when the CPU peer ran; else rho on whole blocks, V = dense)."""
    import torch

    import dixc.ops

    if cpu_timed:
        return outs["dixc-cpu"], None, "cpu"
    if op == "rho":
        nblk = (ctx.ngrid + REF_BLOCK - 1) // REF_BLOCK
        picks = sorted(
            {
                round(k * (nblk - 1) / max(REF_SUBSET_BLOCKS - 1, 1))
                for k in range(REF_SUBSET_BLOCKS)
            }
        )
        idx = torch.cat(
            [torch.arange(b * REF_BLOCK, min((b + 1) * REF_BLOCK, ctx.ngrid)) for b in picks]
        )
        ref = dixc.ops.eval_rho_fused(ctx.basis, ctx.coords[idx].contiguous(), ctx.dm, xc)
        return ref, idx, f"cpu on {len(idx)} points"
    return outs["torch-dense"], None, "torch-dense f64"


def run_main_entry(entry: Entry, ctx: MolCtx, args: argparse.Namespace, peak: float) -> list[dict]:
    import torch

    op, xc = entry.name.split("/")[:2]
    impls = entry.impls(ctx)
    rows, outs = [], {}
    for im in impls:
        if im.name == "dixc-cpu":  # slow: its timed runs also give the output
            times = []
            for _ in range(max(args.cpu_repeat, 1)):
                t0 = time.perf_counter()
                outs[im.name] = im.run(ctx)
                times.append(1e3 * (time.perf_counter() - t0))
        else:  # the first run (kept for the errors) is the first warm-up
            outs[im.name] = im.run(ctx)
            times = time_cuda(lambda im=im: im.run(ctx), args.repeat, max(args.warmup - 1, 0))
        rows.append({"impl": im.name, "ms": statistics.median(times), "times_ms": times, "im": im})
    ref, idx, ref_kind = reference(ctx, op, xc, outs, any(im.name == "dixc-cpu" for im in impls))
    base = rows[0]["ms"]
    result = []
    for r in rows:
        out = outs[r["impl"]]
        out = out.detach().to("cpu", torch.float64)
        if idx is not None:
            out = out[:, idx]
        err = rel_max_err(out, ref)
        im = r.pop("im")
        gf = im.flops / (r["ms"] * 1e-3) / 1e9 if im.flops else float("nan")
        gf_eff = im.flops_eff / (r["ms"] * 1e-3) / 1e9 if im.flops_eff is not None else float("nan")
        result.append(
            {
                "entry": entry.name,
                **entry.sizes,
                **r,
                "gflops_dense_eq": gf,
                "gflops_eff": gf_eff,
                "frac_peak": float("nan")
                if r["impl"] == "dixc-cpu"
                else (gf_eff if not math.isnan(gf_eff) else gf) / peak,
                "x_vs_dixc_cuda": r["ms"] / base,
                "err": err,
                "ref": ref_kind,
            }
        )
    return result


def run_hvp_entry(ctx: MolCtx, xc: str, args: argparse.Namespace, peak: float) -> dict:
    """B probes through eval_rho_fused + contract_vxc_fused in one call each vs 1 and vs B calls."""
    import torch

    import dixc.ops

    nf, B = NFEAT[xc], args.batch
    dms, wvs = ctx.dms_d, ctx.wvs_d[:, :nf]

    def pair(d, w):
        rho = dixc.ops.eval_rho_fused(ctx.basis_d, ctx.coords_d, d, xc)
        v = dixc.ops.contract_vxc_fused(ctx.basis_d, ctx.coords_d, w, xc)
        return rho, v

    batched = pair(dms, wvs)
    looped = [pair(dms[k], wvs[k]) for k in range(B)]
    err_loop = max(
        rel_max_err(batched[0], torch.stack([r for r, _ in looped])),
        rel_max_err(batched[1], torch.stack([v for _, v in looped])),
    )
    ms_b = statistics.median(time_cuda(lambda: pair(dms, wvs), args.repeat, args.warmup))
    ms_1 = statistics.median(time_cuda(lambda: pair(dms[0], wvs[0]), args.repeat, args.warmup))
    ms_loop = statistics.median(
        time_cuda(lambda: [pair(dms[k], wvs[k]) for k in range(B)], max(args.repeat // 2, 1), 1)
    )
    dense, eff = ctx.flops(xc, B)
    gf = 2 * (eff if not math.isnan(eff) else dense) / (ms_b * 1e-3) / 1e9
    err_cpu = float("nan")
    if ctx.natm <= args.cpu_max_atoms:
        ref = dixc.ops.eval_rho_fused(ctx.basis, ctx.coords, ctx.dms, xc)
        err_cpu = rel_max_err(batched[0], ref)
    return {
        "entry": f"hvp{B}/{xc}/{ctx.label()}",
        "natm": ctx.natm,
        "nao": ctx.nao,
        "ngrid": ctx.ngrid,
        "ms_1probe": ms_1,
        "ms_batched": ms_b,
        "ms_per_probe": ms_b / B,
        "ms_loop": ms_loop,
        "x_batched_vs_1probe": ms_b / ms_1,
        "x_loop_vs_batched": ms_loop / ms_b,
        "gflops_eff": gf,
        "frac_peak": gf / peak,
        "err_batched_vs_loop": err_loop,
        "err_rho_vs_cpu": err_cpu,
    }


# --- output ------------------------------------------------------------------------------------
def _fmt(x, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def print_tables(main_rows: list[dict], hvp_rows: list[dict], peak: float, markdown: bool) -> None:
    cols = [
        ("entry", "entry", "s"),
        ("nao", "nao", "d"),
        ("ngrid", "ngrid", "d"),
        ("impl", "impl", "s"),
        ("ms", "ms", ".2f"),
        ("GFLOP/s eff", "gflops_eff", ".0f"),
        ("GFLOP/s dense-eq", "gflops_dense_eq", ".0f"),
        ("of peak", "frac_peak", ".1%"),
        ("time / dixc-cuda", "x_vs_dixc_cuda", ".2f"),
        ("max rel err", "err", ".1e"),
        ("reference", "ref", "s"),
    ]
    hcols = [
        ("entry", "entry", "s"),
        ("nao", "nao", "d"),
        ("ngrid", "ngrid", "d"),
        ("1 probe ms", "ms_1probe", ".2f"),
        ("B probes ms", "ms_batched", ".2f"),
        ("per probe ms", "ms_per_probe", ".2f"),
        ("B single calls ms", "ms_loop", ".2f"),
        ("B / 1 probe", "x_batched_vs_1probe", ".2f"),
        ("loop / batched", "x_loop_vs_batched", ".2f"),
        ("GFLOP/s eff", "gflops_eff", ".0f"),
        ("of peak", "frac_peak", ".1%"),
        ("err batched vs loop", "err_batched_vs_loop", ".1e"),
        ("rho err vs CPU", "err_rho_vs_cpu", ".1e"),
    ]
    print(f"\nFP64 peak (measured float64 matmul): {peak:.0f} GFLOP/s")
    for title, rows, spec in (("main", main_rows, cols), ("hvp", hvp_rows, hcols)):
        if not rows:
            continue
        table = [[_fmt(r.get(k), f) for _, k, f in spec] for r in rows]
        heads = [h for h, _, _ in spec]
        widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(heads)]
        print(f"\n[{title}]")
        print("  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)))
        for t in table:
            print("  ".join(c.ljust(w) for c, w in zip(t, widths, strict=True)))
        if markdown:
            print("\n| " + " | ".join(heads) + " |")
            print("|" + "---|" * len(heads))
            for t in table:
                print("| " + " | ".join(t) + " |")


def main(argv=None) -> int:
    args = _parse_args(argv)
    import torch

    try:
        import dixc
        import dixc.molecules  # not imported by the package itself
    except ImportError as err:
        print(f"bench_cuda: cannot import dixc ({err}); install it first (make install)")
        return 0
    if not torch.cuda.is_available():
        print(
            f"bench_cuda: no CUDA device visible to torch {torch.__version__} "
            f"(CUDA {torch.version.cuda}); nothing to run"
        )
        return 0
    if not dixc.ops.has_cuda():
        print(
            f"bench_cuda: this dixc has no CUDA kernels ({dixc.ops.build_info()}); rebuild it "
            "with DIXC_CUDA=ON against a CUDA torch"
        )
        return 0
    torch.backends.cuda.matmul.allow_tf32 = False
    device = torch.device(args.device)
    torch.cuda.set_device(device)
    props = torch.cuda.get_device_properties(device)
    print(
        f"bench_cuda: {props.name} ({props.total_memory / 2**30:.0f} GiB), "
        f"torch {torch.__version__} (CUDA {torch.version.cuda}), {dixc.ops.build_info()}; "
        f"host {platform.node()}, "
        f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    )
    peak = fp64_peak_gflops(args.peak_n, device)
    main_rows: list[dict] = []
    hvp_rows: list[dict] = []
    for name in args.molecules.split(","):
        for basis in args.basis.split(","):
            t0 = time.perf_counter()
            ctx = MolCtx(name, basis, args, device)
            print(
                f"[{ctx.label()}] natm {ctx.natm}, nao {ctx.nao}, ngrid {ctx.ngrid}, "
                f"mean AOs per block {ctx.n_blk.mean():.0f}; "
                f"setup {time.perf_counter() - t0:.1f} s",
                flush=True,
            )
            for entry in entries(ctx, args):
                rows = run_main_entry(entry, ctx, args, peak)
                main_rows.extend(rows)
                print(
                    f"  {entry.name}: "
                    + ", ".join(f"{r['impl']} {r['ms']:.1f} ms (err {r['err']:.1e})" for r in rows),
                    flush=True,
                )
            if "hvp16" in args.ops:
                for xc in args.batch_xc.split(","):
                    row = run_hvp_entry(ctx, xc, args, peak)
                    hvp_rows.append(row)
                    print(
                        f"  {row['entry']}: 1 probe {row['ms_1probe']:.1f} ms, "
                        f"{args.batch} probes {row['ms_batched']:.1f} ms",
                        flush=True,
                    )
            del ctx
            torch.cuda.empty_cache()
    print_tables(main_rows, hvp_rows, peak, args.markdown)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"peak_gflops": peak, "main": main_rows, "hvp": hvp_rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
