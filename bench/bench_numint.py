"""CPU benchmark of dixc's fused numerical-integration kernels against PySCF numint.

Measured side by side in one process, on the same PySCF grid (level 3, ``non0tab`` screening as
an SCF builds it) and the same inputs:

* ``rho``: density features (rho, grad rho, and tau for MGGA) of a MINAO-guess density matrix.
  dixc: ``dixc.ops.eval_rho_fused``. PySCF: what ``numint.nr_rks`` does per block,
  ``ni.block_loop(deriv=1)`` + the ``make_rho`` of ``ni._gen_rho_evaluator`` (``eval_rho1``
  with ``pair_mask`` screening).
* ``vxc``: the V_xc matrix from per-point weights ``wv = weight * vxc`` (vxc of PBE / TPSS from
  ``ni.eval_xc_eff``, computed once in setup, so libxc is not timed on either side).
  dixc: ``dixc.ops.contract_vxc_fused``. PySCF: ``nr_rks``'s GGA / MGGA branch verbatim
  (``_scale_ao_sparse``, ``_dot_ao_ao_sparse``, ``_tau_dot_sparse``, ``lib.hermi_sum``).
* ``rho xB`` (batch table): ``eval_rho_fused`` with B density matrices in one call vs B single
  calls, and PySCF ``nr_rks``-style (AOs once per block, ``make_rho`` per matrix).
* ``ao`` (AO table): AO values + gradients alone, ``dixc.ops.eval_ao`` on PySCF's grid blocks vs
  ``ni.block_loop(deriv=1)`` (``eval_gto`` with ``non0tab``), to tell AO evaluation from GEMMs.

FLOP convention (GEMM work only): dense-equivalent eval_rho GGA ``2 nao^2 ngrid``, MGGA ``4x``
that (one extra GEMM per gradient component for tau); contract_vxc the same; times B for a batch.
"Effective" flops replay dixc's shell screening (blocks of 128 points, bounding-box test against
each shell's ``rcut``) and count ``2 n_blk^2 np_blk`` per GEMM with n_blk the surviving AOs.

Errors are ``max |x - y| / max |y|`` (per feature for rho, then the max over features) against
PySCF and against a float64 dense reference (unscreened PySCF ``eval_gto`` AOs + the pure-torch
einsum references ``dixc.ops.eval_rho_ref`` / ``contract_vxc_ref``, chunked over points).

Run (see bench/README.md):
    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=68719476736 \
        .venv/bin/python bench/bench_numint.py --markdown
"""

from __future__ import annotations

import argparse
import os
import sys

REF_FULL_MAX = 2e10  # nao^2 ngrid above which --ref auto thins the reference out
REF_SUBSET_POINTS = 50_000  # points of the thinned-out rho reference


def _parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--molecules",
        default="water,qm9_acetamide,benzene,alkane14",
        help="comma list of dixc.molecules names (water, qm9_acetamide, benzene, alkane<n>)",
    )
    p.add_argument("--basis", default="def2-svp", help="basis set (default def2-svp)")
    p.add_argument("--level", type=int, default=3, help="PySCF grid level (default 3)")
    p.add_argument("--xc", default="GGA,MGGA", help="comma list of GGA, MGGA")
    p.add_argument(
        "--ops",
        default="rho,vxc,batch,ao",
        help="comma list of rho, vxc, batch (B density matrices), ao (AO evaluation alone)",
    )
    p.add_argument("--repeat", type=int, default=3, help="timed repeats; the median is reported")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    p.add_argument(
        "--budget",
        type=float,
        default=12.0,
        help="stop repeating an entry once its timed runs took this many seconds (>= 1 run)",
    )
    p.add_argument("--threads", type=int, default=None, help="threads for torch and PySCF")
    p.add_argument("--batch", type=int, default=16, help="B of the batch entries (default 16)")
    p.add_argument(
        "--batch-molecules",
        default="water,benzene",
        help="molecules of the batch entries (PySCF's B-fold work is slow on big ones)",
    )
    p.add_argument("--batch-xc", default="GGA", help="xc types of the batch entries")
    p.add_argument(
        "--ref",
        choices=("auto", "full", "off"),
        default="auto",
        help="float64 dense reference: full on every point; auto (default): full where "
        f"nao^2 ngrid <= {REF_FULL_MAX:.0e}, else rho on a subset of points and no V reference",
    )
    p.add_argument(
        "--memory",
        choices=("inprocess", "subprocess", "off"),
        default="inprocess",
        help="peak RSS of one run per (entry, impl): in this process during the first warm-up "
        "run (default), in a fresh interpreter each (exact, slower), or off",
    )
    p.add_argument(
        "--pyscf-eval-rho",
        action="store_true",
        help="rho entries: also time plain ni.eval_rho per block (nr_rks uses eval_rho1)",
    )
    p.add_argument("--markdown", action="store_true", help="also print the tables as markdown")
    p.add_argument("--json", default=None, help="write the raw results to this JSON file")
    p.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--mem-child", nargs=2, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


ARGS = _parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.threads:
    # Before numpy / torch / PySCF load their OpenMP and BLAS runtimes.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from registry import Entry, Impl, Result, child_report, rel_max_err, run_entry  # noqa: E402

NFEAT = {"GGA": 4, "MGGA": 5}
FUNCTIONAL = {"GGA": "PBE", "MGGA": "TPSS"}
GEMMS = {"GGA": 1, "MGGA": 4}  # GEMMs of size 2 nao^2 ngrid per eval_rho / contract_vxc
DIXC_BLOCK = 128  # dixc's grid block (csrc/cpu/numint_blocks.h kBlock), for effective flops
MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
AO_CHUNK = 1024  # points per dixc.ops.eval_ao call in the AO entry


def _import_dixc():
    """Imports dixc, waiting out a reinstall in progress (the .so can be briefly missing)."""
    for attempt in range(6):
        try:
            import dixc
            import dixc.molecules  # not imported by the package itself

            return dixc
        except (ImportError, OSError) as e:
            if "missing" not in str(e) or attempt == 5:
                raise
            print(f"[bench] dixc import failed ({e}); retrying in 60 s", file=sys.stderr)
            time.sleep(60)
    raise AssertionError("unreachable")


class PointSubset:
    """A reference known on a subset ``idx`` of the grid points (last axis)."""

    def __init__(self, idx: np.ndarray, values: torch.Tensor):
        self.idx, self.values = idx, values


# --- per-molecule inputs -----------------------------------------------------------------------
class MolCtx:
    """Molecule, grid, basis and inputs shared by all entries of one molecule."""

    def __init__(self, name: str, basis: str, level: int, batch: int, cache_dir: str | None):
        from pyscf.dft import gen_grid, numint

        dixc = _import_dixc()
        self.dixc = dixc
        self.name = name
        self.mol = dixc.molecules.mole(name, basis=basis)
        self.basis = dixc.pack_basis(self.mol)
        self.nao = self.mol.nao
        self.ni = numint.NumInt()
        self.batch = batch
        path = None
        if cache_dir is not None:
            path = os.path.join(cache_dir, f"{name}-{basis}-L{level}-B{batch}.npz")
        if path is not None and os.path.exists(path):
            z = np.load(path)
            grids = gen_grid.Grids(self.mol)
            grids.level = level
            grids.coords, grids.weights = z["coords"], z["weights"]
            grids.non0tab = grids.screen_index = z["non0tab"]
            self.grids = grids
            self.dm, self.dms = z["dm"], z["dms"]
            self.wv = {xc: z[f"wv_{xc}"] for xc in NFEAT}
        else:
            self._build(level)
            if path is not None:
                np.savez(
                    path,
                    coords=self.grids.coords,
                    weights=self.grids.weights,
                    non0tab=self.grids.non0tab,
                    dm=self.dm,
                    dms=self.dms,
                    **{f"wv_{xc}": self.wv[xc] for xc in NFEAT},
                )
        self.ngrid = int(self.grids.coords.shape[0])
        self.coords_t = torch.from_numpy(np.ascontiguousarray(self.grids.coords))
        self.dm_t = torch.from_numpy(self.dm)
        self.dms_t = torch.from_numpy(self.dms)
        self.wv_t = {xc: torch.from_numpy(w) for xc, w in self.wv.items()}
        # nr_rks's wv after its in-place scaling (wv[0] *= .5; MGGA: wv[4] *= .5).
        self.wv_pyscf = {}
        for xc, w in self.wv.items():
            w = w.copy()
            w[0] *= 0.5
            if xc == "MGGA":
                w[4] *= 0.5
            self.wv_pyscf[xc] = w
        self._ref_rho = None
        self.n_blk, self.np_blk = self._dixc_screening()

    def _build(self, level: int) -> None:
        from pyscf.scf import hf

        grid, grids = self.dixc.make_grid(self.mol, level=level)
        # As an SCF does (rks.initialize_grids: grids.build(with_non0tab=True)).
        grids.non0tab = grids.screen_index = grids.make_mask(self.mol, grids.coords)
        self.grids = grids
        if not np.array_equal(grid.coords.numpy(), grids.coords):
            raise AssertionError("dixc.make_grid: Grid and PySCF Grids points differ")
        self.dm = np.ascontiguousarray(hf.init_guess_by_minao(self.mol))
        rng = np.random.default_rng(1234)
        x = rng.standard_normal((self.batch, self.nao, self.nao)) / math.sqrt(self.nao)
        self.dms = np.ascontiguousarray(0.5 * (x + x.transpose(0, 2, 1)))
        rho = pyscf_rho(self, "MGGA", self.dm)
        w = self.grids.weights
        self.wv = {}
        for xc in NFEAT:
            f = FUNCTIONAL[xc]
            _exc, vxc = self.ni.eval_xc_eff(f, rho[: NFEAT[xc]], deriv=1, xctype=xc, spin=0)[:2]
            self.wv[xc] = np.ascontiguousarray(vxc[: NFEAT[xc]] * w)

    def _dixc_screening(self) -> tuple[np.ndarray, np.ndarray]:
        """AOs surviving dixc's screening in each 128-point block (replays select_shells)."""
        b = self.basis
        pts = self.grids.coords
        nblk = (self.ngrid + DIXC_BLOCK - 1) // DIXC_BLOCK
        pad = nblk * DIXC_BLOCK - self.ngrid
        padded = np.concatenate([pts, np.repeat(pts[-1:], pad, axis=0)]) if pad else pts
        blocks = padded.reshape(nblk, DIXC_BLOCK, 3)
        lo, hi = blocks.min(axis=1), blocks.max(axis=1)
        c = b.bas_coord.numpy()
        ls = b.bas[:, 0].numpy()
        nfunc = (ls + 1) * (ls + 2) // 2 if b.cart else 2 * ls + 1
        d = np.maximum(0.0, np.maximum(lo[:, None, :] - c[None], c[None] - hi[:, None, :]))
        sel = (d * d).sum(-1) <= b.rcut.numpy()[None] ** 2
        n_blk = sel.astype(np.float64) @ nfunc.astype(np.float64)
        np_blk = np.full(nblk, DIXC_BLOCK, dtype=np.float64)
        np_blk[-1] = self.ngrid - (nblk - 1) * DIXC_BLOCK
        return n_blk, np_blk

    def flops(self, xc: str, nset: int = 1) -> tuple[float, float]:
        """(dense-equivalent, effective) GEMM flops of one eval_rho or contract_vxc."""
        dense = 2.0 * self.nao**2 * self.ngrid * GEMMS[xc] * nset
        eff = float((2.0 * self.n_blk**2 * self.np_blk).sum()) * GEMMS[xc] * nset
        return dense, eff

    # float64 dense references, chunked over points (AO chunk <= ~64 MiB)
    def _ao_chunks(self, pts: np.ndarray):
        """Unscreened float64 AOs + gradients of ``pts`` in chunks: (p0, p1, (4, nao, n))."""
        step = max(DIXC_BLOCK, (64 << 20) // (4 * 8 * max(self.nao, 1)))
        feval = "GTOval_cart_deriv1" if self.mol.cart else "GTOval_sph_deriv1"
        for p0 in range(0, len(pts), step):
            p1 = min(p0 + step, len(pts))
            ao = self.mol.eval_gto(feval, pts[p0:p1], comp=4)  # (4, n, nao)
            yield p0, p1, torch.from_numpy(ao).transpose(1, 2)  # (4, nao, n)

    def full_ref(self, mode: str) -> bool:
        """Whether the reference covers every point (else: a subset for rho, none for V)."""
        return mode == "full" or (mode == "auto" and self.nao**2 * self.ngrid <= REF_FULL_MAX)

    def ref_rho(self, xc: str, mode: str) -> torch.Tensor | PointSubset:
        if self._ref_rho is None:  # MGGA features include the GGA ones
            if self.full_ref(mode):
                idx = None
                pts = self.grids.coords
            else:  # whole dixc blocks, evenly strided: rho is pointwise, exact where compared
                nblk = (self.ngrid + DIXC_BLOCK - 1) // DIXC_BLOCK
                keep = np.arange(0, nblk, max(1, nblk * DIXC_BLOCK // REF_SUBSET_POINTS))
                idx = (keep[:, None] * DIXC_BLOCK + np.arange(DIXC_BLOCK)[None]).ravel()
                idx = idx[idx < self.ngrid]
                pts = self.grids.coords[idx]
            out = torch.empty(NFEAT["MGGA"], len(pts), dtype=torch.float64)
            for p0, p1, ao in self._ao_chunks(pts):
                out[:, p0:p1] = self.dixc.ops.eval_rho_ref(ao, self.dm_t, "MGGA")
            self._ref_rho = out if idx is None else PointSubset(idx, out)
        r = self._ref_rho
        if isinstance(r, PointSubset):
            return PointSubset(r.idx, r.values[: NFEAT[xc]])
        return r[: NFEAT[xc]]

    def ref_vxc(self, xc: str, mode: str) -> torch.Tensor | None:
        if not self.full_ref(mode):
            return None
        v = torch.zeros(self.nao, self.nao, dtype=torch.float64)
        for p0, p1, ao in self._ao_chunks(self.grids.coords):
            v += self.dixc.ops.contract_vxc_ref(ao, self.wv_t[xc][:, p0:p1], xc)
        return v


# --- PySCF peer (nr_rks minus libxc) -----------------------------------------------------------
def pyscf_rho(ctx: MolCtx, xc: str, dm: np.ndarray) -> np.ndarray:
    """Density features as numint.nr_rks computes them: ((B,) nfeat, ngrid)."""
    ni, mol, grids = ctx.ni, ctx.mol, ctx.grids
    make_rho, nset, nao = ni._gen_rho_evaluator(mol, dm, hermi=1, with_lapl=False, grids=grids)
    out = np.empty((nset, NFEAT[xc], grids.coords.shape[0]))
    p1 = 0
    for ao, mask, weight, _coords in ni.block_loop(mol, grids, nao, 1):
        p0, p1 = p1, p1 + weight.size
        for i in range(nset):
            out[i, :, p0:p1] = make_rho(i, ao, mask, xc)
    return out[0] if dm.ndim == 2 else out


def pyscf_eval_rho(ctx: MolCtx, xc: str, dm: np.ndarray) -> np.ndarray:
    """Variant: plain ``ni.eval_rho`` per block (``_dot_ao_dm`` with ``non0tab``)."""
    ni, mol, grids = ctx.ni, ctx.mol, ctx.grids
    out = np.empty((NFEAT[xc], grids.coords.shape[0]))
    p1 = 0
    for ao, mask, weight, _coords in ni.block_loop(mol, grids, mol.nao, 1):
        p0, p1 = p1, p1 + weight.size
        out[:, p0:p1] = ni.eval_rho(mol, ao, dm, mask, xc, hermi=1, with_lapl=False)
    return out


def pyscf_vxc(ctx: MolCtx, xc: str) -> np.ndarray:
    """V_xc as numint.nr_rks's GGA / MGGA branch computes it, with wv precomputed."""
    from pyscf import lib
    from pyscf.dft import numint

    ni, mol, grids = ctx.ni, ctx.mol, ctx.grids
    nao = mol.nao
    wv_all = ctx.wv_pyscf[xc]
    ao_loc = mol.ao_loc_nr()
    cutoff = grids.cutoff * 1e2
    nbins = numint.NBINS * 2 - int(numint.NBINS * np.log(cutoff) / np.log(grids.cutoff))
    pair_mask = mol.get_overlap_cond() < -np.log(ni.cutoff)
    vmat = np.zeros((1, nao, nao))
    v1 = np.zeros_like(vmat) if xc == "MGGA" else None
    aow = None
    p1 = 0
    for ao, mask, weight, _coords in ni.block_loop(mol, grids, nao, 1):
        p0, p1 = p1, p1 + weight.size
        wv = np.ascontiguousarray(wv_all[:, p0:p1])  # nr_rks makes wv = weight * vxc per block
        aow = numint._scale_ao_sparse(ao[:4], wv[:4], mask, ao_loc, out=aow)
        numint._dot_ao_ao_sparse(
            ao[0], aow, None, nbins, mask, pair_mask, ao_loc, hermi=0, out=vmat[0]
        )
        if xc == "MGGA":
            numint._tau_dot_sparse(ao, ao, wv[4], nbins, mask, pair_mask, ao_loc, out=v1[0])
    vmat = lib.hermi_sum(vmat, axes=(0, 2, 1))
    if v1 is not None:
        vmat += v1
    return vmat[0]


def _pyscf_blocks(ctx: MolCtx, deriv: int = 1):
    """PySCF block_loop's block boundaries (same formula, max_memory=2000)."""
    from pyscf.dft import numint

    comp = (deriv + 1) * (deriv + 2) * (deriv + 3) // 6
    blk = int(2000 * 1e6 / ((comp + 1) * ctx.nao * 8 * numint.BLKSIZE))
    blk = max(4, min(blk, ctx.ngrid // numint.BLKSIZE + 1, 1200)) * numint.BLKSIZE
    return [(p0, min(p0 + blk, ctx.ngrid)) for p0 in range(0, ctx.ngrid, blk)]


# --- entries -----------------------------------------------------------------------------------
def rho_error(a, b) -> float:
    """Max over features f of max |a_f - b_f| / max |b_f| (features: last-but-one axis)."""
    a = a.detach().numpy() if hasattr(a, "detach") else np.asarray(a)
    if isinstance(b, PointSubset):
        a, b = a[..., b.idx], b.values
    b = b.detach().numpy() if hasattr(b, "detach") else np.asarray(b)
    nf = b.shape[-2]
    return max(rel_max_err(a[..., f, :], b[..., f, :]) for f in range(nf))


class Bench:
    """Builds the entries; keeps one MolCtx alive at a time."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self._ctx: MolCtx | None = None

    def ctx(self, name: str) -> MolCtx:
        if self._ctx is None or self._ctx.name != name:
            self._ctx = None
            a = self.args
            self._ctx = MolCtx(name, a.basis, a.level, a.batch, a.cache_dir)
        return self._ctx

    def entries(self) -> list[Entry]:
        a = self.args
        mols = [m for m in a.molecules.split(",") if m]
        xcs = [x.upper() for x in a.xc.split(",") if x]
        ops = [o for o in a.ops.split(",") if o]
        batch_mols = set(a.batch_molecules.split(","))
        batch_xcs = {x.upper() for x in a.batch_xc.split(",") if x}
        out = []
        for m in mols:
            for xc in xcs:
                if "rho" in ops:
                    out.append(self._rho_entry(m, xc))
                if "vxc" in ops:
                    out.append(self._vxc_entry(m, xc))
                if "batch" in ops and m in batch_mols and xc in batch_xcs:
                    out.append(self._batch_entry(m, xc))
            if "ao" in ops:
                out.append(self._ao_entry(m))
        return out

    def _rho_entry(self, m: str, xc: str) -> Entry:
        def impls(c: MolCtx) -> list[Impl]:
            dense, eff = c.flops(xc)
            ops = c.dixc.ops
            out = [
                Impl(
                    "dixc",
                    lambda c: ops.eval_rho_fused(c.basis, c.coords_t, c.dm_t, xc),
                    dense,
                    eff,
                ),
                Impl("pyscf", lambda c: pyscf_rho(c, xc, c.dm), dense),
            ]
            if self.args.pyscf_eval_rho:
                out.append(Impl("pyscf_eval_rho", lambda c: pyscf_eval_rho(c, xc, c.dm), dense))
            return out

        return Entry(
            f"rho/{xc}/{m}",
            {"molecule": m, "op": "eval_rho", "xc": xc},
            lambda: self.ctx(m),
            impls,
            reference=lambda c: c.ref_rho(xc, self.args.ref),
            error=rho_error,
        )

    def _vxc_entry(self, m: str, xc: str) -> Entry:
        def impls(c: MolCtx) -> list[Impl]:
            dense, eff = c.flops(xc)
            ops = c.dixc.ops
            return [
                Impl(
                    "dixc",
                    lambda c: ops.contract_vxc_fused(c.basis, c.coords_t, c.wv_t[xc], xc),
                    dense,
                    eff,
                ),
                Impl("pyscf", lambda c: pyscf_vxc(c, xc), dense),
            ]

        return Entry(
            f"vxc/{xc}/{m}",
            {"molecule": m, "op": "contract_vxc", "xc": xc},
            lambda: self.ctx(m),
            impls,
            reference=lambda c: c.ref_vxc(xc, self.args.ref),
        )

    def _batch_entry(self, m: str, xc: str) -> Entry:
        def impls(c: MolCtx) -> list[Impl]:
            dense, eff = c.flops(xc, c.batch)
            ops = c.dixc.ops

            def singles(c: MolCtx) -> torch.Tensor:
                return torch.stack(
                    [ops.eval_rho_fused(c.basis, c.coords_t, d, xc) for d in c.dms_t]
                )

            return [
                Impl(
                    "dixc",
                    lambda c: ops.eval_rho_fused(c.basis, c.coords_t, c.dms_t, xc),
                    dense,
                    eff,
                ),
                Impl("pyscf", lambda c: pyscf_rho(c, xc, c.dms), dense),
                Impl("dixc_singles", singles, dense, eff),
            ]

        return Entry(
            f"batch/{xc}/{m}",
            {"molecule": m, "op": f"eval_rho x{self.args.batch}", "xc": xc},
            lambda: self.ctx(m),
            impls,
            error=rho_error,
            table="batch",
        )

    def _ao_entry(self, m: str) -> Entry:
        def impls(c: MolCtx) -> list[Impl]:
            ops = c.dixc.ops
            blocks = _pyscf_blocks(c)
            probe = len(blocks) // 2  # first chunk of PySCF's middle block: values compared

            def run_dixc(c: MolCtx) -> torch.Tensor:
                # eval_ao writes a dense (4, nao, n) array: chunks of AO_CHUNK points keep it in
                # cache like the fused kernels' per-block buffers (one PySCF-sized block of
                # ~65k points would measure page faults of a fresh ~250 MB array instead).
                keep = None
                for k, (b0, b1) in enumerate(blocks):
                    for p0 in range(b0, b1, AO_CHUNK):
                        ao = ops.eval_ao(c.basis, c.coords_t[p0 : min(p0 + AO_CHUNK, b1)], 1)
                        if k == probe and p0 == b0:
                            keep = ao
                return keep

            def run_pyscf(c: MolCtx) -> torch.Tensor:
                keep = None
                for k, (ao, _m, _w, _x) in enumerate(c.ni.block_loop(c.mol, c.grids, c.nao, 1)):
                    if k == probe:
                        keep = torch.from_numpy(ao[:, :AO_CHUNK].copy()).transpose(1, 2)
                return keep

            return [Impl("dixc", run_dixc), Impl("pyscf", run_pyscf)]

        return Entry(
            f"ao/deriv1/{m}",
            {"molecule": m, "op": "eval_ao deriv=1", "xc": "-"},
            lambda: self.ctx(m),
            impls,
            table="ao",
        )


# --- output ------------------------------------------------------------------------------------
def _fmt_err(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1e}"


def _fmt_mib(d: dict[str, float], k: str) -> str:
    return f"{d[k]:.0f}" if k in d and not math.isnan(d[k]) else "-"


def _gfs(flops: float | None, t: float) -> str:
    return "-" if not flops else f"{flops / t / 1e9:.1f}"


def tables(results: list[Result], batch: int) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Rows of the main, batch and AO tables."""
    main_h = [
        "molecule",
        "nao",
        "ngrid",
        "op",
        "xc",
        "dixc ms",
        "PySCF ms",
        "dixc/PySCF",
        "dixc GF/s dense-eq",
        "dixc GF/s eff",
        "eff/dense flops",
        "err vs PySCF",
        "dixc err vs f64",
        "PySCF err vs f64",
        "dixc +MiB",
        "PySCF +MiB",
    ]
    variant = any("pyscf_eval_rho" in r.median for r in results)
    if variant:
        main_h.insert(8, "PySCF ni.eval_rho ms")
    batch_h = [
        "molecule",
        "nao",
        "ngrid",
        "xc",
        f"dixc B={batch} ms",
        f"dixc {batch}x single ms",
        "batched/singles",
        f"PySCF B={batch} ms",
        "dixc/PySCF",
        "dixc GF/s eff",
        "err batched vs PySCF",
        "dixc +MiB",
        "PySCF +MiB",
    ]
    ao_h = [
        "molecule",
        "nao",
        "ngrid",
        "dixc AO ms",
        "PySCF AO ms",
        "dixc/PySCF",
        "dixc rho-GGA minus AO ms",
        "PySCF rho-GGA minus AO ms",
        "dixc +MiB",
    ]
    by_name = {r.entry.name: r for r in results}
    rows: dict[str, list[list[str]]] = {"main": [], "batch": [], "ao": []}
    for r in results:
        s, md = r.entry.sizes, r.median
        td, tp = md["dixc"], md["pyscf"]
        base = [s["molecule"], str(s["nao"]), str(s["ngrid"])]
        if r.entry.table == "main":
            fd, fe = r.flops["dixc"], r.flops_eff["dixc"]
            row = [
                *base,
                s["op"],
                s["xc"],
                f"{1e3 * td:.1f}",
                f"{1e3 * tp:.1f}",
                f"{td / tp:.2f}",
                _gfs(fd, td),
                _gfs(fe, td),
                f"{fe / fd:.2f}" if fd and fe else "-",
                _fmt_err(r.err_vs_peer.get("dixc")),
                _fmt_err(r.err_vs_ref.get("dixc")),
                _fmt_err(r.err_vs_ref.get("pyscf")),
                _fmt_mib(r.extra_mib, "dixc"),
                _fmt_mib(r.extra_mib, "pyscf"),
            ]
            if variant:
                tv = md.get("pyscf_eval_rho")
                row.insert(8, "-" if tv is None else f"{1e3 * tv:.1f}")
            rows["main"].append(row)
        elif r.entry.table == "batch":
            ts = md["dixc_singles"]
            rows["batch"].append(
                [
                    *base,
                    s["xc"],
                    f"{1e3 * td:.1f}",
                    f"{1e3 * ts:.1f}",
                    f"{td / ts:.2f}",
                    f"{1e3 * tp:.1f}",
                    f"{td / tp:.2f}",
                    _gfs(r.flops_eff["dixc"], td),
                    _fmt_err(r.err_vs_peer.get("dixc")),
                    _fmt_mib(r.extra_mib, "dixc"),
                    _fmt_mib(r.extra_mib, "pyscf"),
                ]
            )
        else:
            rho = by_name.get(f"rho/GGA/{s['molecule']}")
            rest = ["-", "-"]
            if rho is not None:
                rest = [f"{1e3 * (rho.median[k] - md[k]):.1f}" for k in ("dixc", "pyscf")]
            rows["ao"].append(
                [
                    *base,
                    f"{1e3 * td:.1f}",
                    f"{1e3 * tp:.1f}",
                    f"{td / tp:.2f}",
                    *rest,
                    _fmt_mib(r.extra_mib, "dixc"),
                ]
            )
    heads = {"main": main_h, "batch": batch_h, "ao": ao_h}
    return {k: (heads[k], rows[k]) for k in heads}


def render(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    w = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w[i]) for i, h in enumerate(header))]
    lines += ["  ".join(c.rjust(w[i]) for i, c in enumerate(r)) for r in rows]
    return "\n".join(lines)


def machine_info(threads: int) -> list[str]:
    import pyscf
    from pyscf import lib

    model = "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(ln.split(":", 1)[1].strip() for ln in out.splitlines() if "Model name" in ln)
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    env = {k: os.environ.get(k, "unset") for k in MALLOC_ENV}
    versions = (
        f"torch {torch.__version__} (threads {torch.get_num_threads()}), "
        f"PySCF {pyscf.__version__} (threads {lib.num_threads()}), "
        f"numpy {np.__version__}, python {platform.python_version()}"
    )
    return [
        f"machine: {model}, {os.cpu_count()} cores, {mem:.0f} GiB; {platform.platform()}",
        versions,
        f"threads requested: {threads}; malloc env: {env}",
        f"load average at start: {os.getloadavg()}",
    ]


def _setup_threads(threads: int | None) -> int:
    from pyscf import lib

    if threads:
        torch.set_num_threads(threads)
        lib.num_threads(threads)
    return torch.get_num_threads()


def _find(args: argparse.Namespace, name: str) -> Entry:
    """The entry called ``name`` (``op/xc/molecule``), whatever the CLI selection."""
    m = name.split("/")[-1]
    sub = argparse.Namespace(**{**vars(args), "molecules": m, "batch_molecules": m})
    sub.ops, sub.xc, sub.batch_xc = "rho,vxc,batch,ao", "GGA,MGGA", "GGA,MGGA"
    for e in Bench(sub).entries():
        if e.name == name:
            return e
    raise KeyError(name)


def main(args: argparse.Namespace) -> int:
    threads = _setup_threads(args.threads)
    bench = Bench(args)

    if args.mem_child is not None:  # child: one (entry, impl) peak
        entry = _find(args, args.mem_child[0])
        ctx = entry.setup()
        impl = next(im for im in entry.impls(ctx) if im.name == args.mem_child[1])
        child_report(lambda: impl.run(ctx))
        return 0

    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        print(
            "[bench] warning: MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ unset; large "
            "torch CPU allocations page-fault heavily on this VM (see bench/README.md)",
            file=sys.stderr,
        )
    info = machine_info(threads)
    for line in info:
        print("# " + line)
    t_all = time.perf_counter()
    tmp = None
    if args.cache_dir is None and args.memory == "subprocess":
        tmp = tempfile.TemporaryDirectory(prefix="dixc-bench-")
        args.cache_dir = tmp.name

    def child_argv(entry_name: str, impl_name: str) -> list[str]:
        argv = [sys.executable, os.path.abspath(__file__), "--mem-child", entry_name, impl_name]
        argv += ["--basis", args.basis, "--level", str(args.level), "--batch", str(args.batch)]
        argv += ["--cache-dir", args.cache_dir, "--memory", "off"]
        if args.threads:
            argv += ["--threads", str(args.threads)]
        if args.pyscf_eval_rho:
            argv += ["--pyscf-eval-rho"]
        return argv

    results = []
    try:
        for e in bench.entries():
            c = e.setup()
            e.sizes.update(nao=c.nao, ngrid=c.ngrid)
            results.append(
                run_entry(
                    e,
                    repeat=args.repeat,
                    warmup=args.warmup,
                    budget_s=args.budget,
                    with_reference=args.ref != "off",
                    memory=args.memory,
                    child_argv=child_argv,
                    log=lambda msg: print("[bench] " + msg, file=sys.stderr, flush=True),
                )
            )
    finally:
        if tmp is not None:
            tmp.cleanup()

    tabs = tables(results, args.batch)
    titles = {
        "main": "eval_rho / contract_vxc: dixc fused vs PySCF numint (nr_rks path, minus libxc)",
        "batch": f"eval_rho with B={args.batch} density matrices",
        "ao": "AO values + gradients alone on PySCF's grid blocks",
    }
    for fmt in [False, True] if args.markdown else [False]:
        for key, (h, rows) in tabs.items():
            if rows:
                print(f"\n{'### ' if fmt else '## '}{titles[key]}\n")
                print(render(h, rows, fmt))
    print(
        f"\n# repeats {args.repeat} (median), warm-up {args.warmup}; memory: {args.memory}; "
        f"total {time.perf_counter() - t_all:.0f} s; load average at end: {os.getloadavg()}"
    )
    if args.json:
        data = {
            "info": info,
            "args": {k: v for k, v in vars(args).items() if k != "cache_dir"},
            "results": [
                {
                    "name": r.entry.name,
                    "sizes": r.entry.sizes,
                    "times_s": r.times,
                    "median_s": r.median,
                    "flops": r.flops,
                    "flops_eff": r.flops_eff,
                    "err_vs_peer": r.err_vs_peer,
                    "err_vs_ref": r.err_vs_ref,
                    "peak_mib": r.peak_mib,
                    "extra_mib": r.extra_mib,
                }
                for r in results
            ],
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(data, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
