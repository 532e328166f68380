"""The CUDA ops' code, emulated on the CPU, against the CPU kernels (no GPU needed).

``csrc/cuda/host_emulation.cpp`` is compiled here with ``torch.utils.cpp_extension`` into ops
``torch.ops.dixc_emu.*``: the CUDA path's host code (``numint_driver.h``: validation, screening
plan, blocking, cuBLAS GEMM shapes and strides through ATen) runs on CPU tensors and the kernels'
per-thread bodies (``numint_kernels.h``, ``common/ao_point.h``) run in loops over the indices the
CUDA grid would have. Agreement with the CPU kernels to ~1e-15 checks everything but the CUDA-only
parts (launch configuration, shared memory, device placement), which the ``gpu``-marked tests
check on a GPU. ``block`` (points per block) is a parameter here so that small grids exercise many
blocks and a partial last block.
"""

from __future__ import annotations

import os
import sys
import zlib

import pytest
import torch

import dixc
from _util import becke_points, rel_err, rel_err_rows, system
from dixc.molecules import mole

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
XCTYPES = ["LDA", "GGA", "MGGA"]
NFEAT = {"LDA": 1, "GGA": 4, "MGGA": 5}
TOL64, TOL32 = 1e-13, 1e-5
ops = torch.ops.dixc


@pytest.fixture(scope="module")
def emu():
    """Builds (or reuses, in build/cuda-emulation) the emulation library; ``torch.ops.dixc_emu``."""
    from torch.utils.cpp_extension import load

    build = os.path.join(ROOT, "build", "cuda-emulation")
    os.makedirs(build, exist_ok=True)
    # cpp_extension runs `ninja` from PATH; the virtual environment's bin holds it.
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    load(
        name="dixc_emu",
        sources=[
            os.path.join(ROOT, "csrc", "cuda", "host_emulation.cpp"),
            os.path.join(ROOT, "csrc", "common", "basis.cpp"),
        ],
        extra_include_paths=[os.path.join(ROOT, "csrc")],
        extra_cflags=["-O2", "-fopenmp"],
        extra_ldflags=["-fopenmp"],
        build_directory=build,
        is_python_module=False,
    )
    return torch.ops.dixc_emu


def _high_l(cart: bool):
    from pyscf import gto

    basis = {
        "Ne": [[0, [3.0, 1.0]], [4, [1.3, 1.0]], [5, [0.9, 0.7], [2.5, 0.3]], [6, [1.1, 1.0]]],
        "H": [[0, [1.0, 1.0]], [6, [0.7, 1.0]]],
    }
    return gto.M(atom="Ne 0 0 0; H 0 0.3 1.4", basis=basis, cart=cart, spin=1, verbose=0)


# (molecule, basis, cartesian, points kept): s/p/d, cartesian f, spherical g, many shells per block
SYSTEMS = {
    "water-svp-sph": ("water", "def2-svp", False, 700),
    "water-tzvp-cart": ("water", "def2-tzvp", True, 400),
    "water-qzvp-sph": ("water", "def2-qzvp", False, 300),
    "lactonitrile-svp-cart": ("qm9_lactonitrile", "def2-svp", True, 1500),
    "highl-sph": ("highl", None, False, 500),
    "highl-cart": ("highl", None, True, 500),
}


class Sys:
    def __init__(self, key):
        name, basis, cart, npts = SYSTEMS[key]
        mol = _high_l(cart) if name == "highl" else mole(name, basis, cart)
        self.basis = dixc.pack_basis(mol)
        grid, _ = dixc.make_grid(mol, level=1)
        gen = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        keep = torch.randperm(grid.ngrid, generator=gen)[:npts].sort().values
        nuclei = torch.as_tensor(mol.atom_coords(), dtype=torch.float64)
        self.coords = torch.cat([grid.coords[keep], nuclei]).contiguous()  # r = 0 included
        self.ao = ops.eval_ao(self.coords, *self.basis.tensors, self.basis.nao, 1, self.basis.cart)
        nao, ngrid = self.basis.nao, self.coords.shape[0]
        self.dm = torch.randn(3, nao, nao, generator=gen, dtype=torch.float64)  # not symmetric
        self.wv = torch.randn(3, 5, ngrid, generator=gen, dtype=torch.float64)

    def fused_args(self):
        b = self.basis
        return (self.coords, *b.tensors), (b.nao, b.cart)


_CACHE: dict[str, Sys] = {}


def _sys(key) -> Sys:
    if key not in _CACHE:
        _CACHE[key] = Sys(key)
    return _CACHE[key]


# --- eval_ao ---------------------------------------------------------------------------------
@pytest.mark.parametrize("deriv", [0, 1, 2])
@pytest.mark.parametrize("key", list(SYSTEMS))
def test_eval_ao(emu, key, deriv):
    s = _sys(key)
    args = (*s.basis.tensors, s.basis.nao, deriv, s.basis.cart)
    ref = ops.eval_ao(s.coords, *args)
    out = emu.eval_ao(s.coords, *args)
    assert out.shape == ref.shape and out.dtype == torch.float64
    assert max(rel_err_rows(out, ref)) <= TOL64
    # float32 points: AOs evaluated in float64 at the rounded points, stored as float32
    pts32 = s.coords.float()
    out32 = emu.eval_ao(pts32, *args)
    assert out32.dtype == torch.float32
    assert max(rel_err_rows(out32, ops.eval_ao(pts32.double(), *args))) <= TOL32


# --- dense and fused eval_rho / contract_vxc -------------------------------------------------
@pytest.mark.parametrize("block", [37, 128, 16384], ids=lambda b: f"block{b}")
@pytest.mark.parametrize("xctype", XCTYPES)
@pytest.mark.parametrize("key", ["water-svp-sph", "lactonitrile-svp-cart", "highl-cart"])
def test_rho_and_vxc(emu, key, xctype, block):
    s = _sys(key)
    nf = NFEAT[xctype]
    head, tail = s.fused_args()
    for dm, wv in ((s.dm, s.wv[:, :nf]), (s.dm[1], s.wv[1, :nf])):  # batched and single
        pairs = [
            (emu.eval_rho(s.ao, dm, xctype, block, 0), ops.eval_rho(s.ao, dm, xctype)),
            (
                emu.eval_rho_fused(*head, dm, xctype, *tail, block, 0),
                ops.eval_rho_fused(*head, dm, xctype, *tail),
            ),
            (emu.contract_vxc(s.ao, wv, xctype, block, 0), ops.contract_vxc(s.ao, wv, xctype)),
            (
                emu.contract_vxc_fused(*head, wv, xctype, *tail, block, 0),
                ops.contract_vxc_fused(*head, wv, xctype, *tail),
            ),
        ]
        for out, ref in pairs:
            assert out.shape == ref.shape and out.dtype == ref.dtype
            assert rel_err(out, ref) <= TOL64
        for v, _ in pairs[2:]:
            assert torch.equal(v, v.transpose(-1, -2))


@pytest.mark.parametrize("xctype", XCTYPES)
def test_float32(emu, xctype):
    s = _sys("lactonitrile-svp-cart")
    nf = NFEAT[xctype]
    head, tail = s.fused_args()
    dm, wv = s.dm, s.wv[:, :nf]
    rho_ref, v_ref = ops.eval_rho(s.ao, dm, xctype), ops.contract_vxc(s.ao, wv, xctype)
    for block in (128, 100000):
        rho = [
            emu.eval_rho(s.ao.float(), dm.float(), xctype, block, 0),
            emu.eval_rho_fused(*head, dm.float(), xctype, *tail, block, 0),
        ]
        v = [
            emu.contract_vxc(s.ao.float(), wv.float(), xctype, block, 0),
            emu.contract_vxc_fused(*head, wv.float(), xctype, *tail, block, 0),
        ]
        for out in rho:
            assert out.dtype == torch.float32 and rel_err(out, rho_ref) <= TOL32
        for out in v:
            assert out.dtype == torch.float32 and rel_err(out, v_ref) <= TOL32


def test_scratch_cap_lowers_the_block(emu):
    """A tiny scratch cap forces 128-point blocks (the rule's floor); results do not change."""
    assert emu.block_points(16384, 40, 1 << 27) == 16384
    assert emu.block_points(16384, 4096, 1 << 20) == 256
    assert emu.block_points(1024, 10**6, 1000) == 128
    assert emu.block_points(50, 10**6, 1000) == 50
    s = _sys("lactonitrile-svp-cart")
    head, tail = s.fused_args()
    ref = ops.eval_rho_fused(*head, s.dm, "MGGA", *tail)
    assert rel_err(emu.eval_rho_fused(*head, s.dm, "MGGA", *tail, 4096, 1000), ref) <= TOL64
    vref = ops.contract_vxc_fused(*head, s.wv, "MGGA", *tail)
    assert rel_err(emu.contract_vxc_fused(*head, s.wv, "MGGA", *tail, 4096, 1000), vref) <= TOL64


def test_only_symmetric_part_and_antisymmetric_zero(emu):
    s = _sys("water-svp-sph")
    head, tail = s.fused_args()
    anti = s.dm[0] - s.dm[0].T
    assert not emu.eval_rho_fused(*head, anti, "MGGA", *tail, 128, 0).any()
    assert not emu.eval_rho(s.ao, anti, "MGGA", 128, 0).any()


def test_larger_batch_equals_loop(emu):
    """B = 16 density matrices through one pass (one GEMM per block) equal 16 single calls."""
    s = _sys("water-svp-sph")
    head, tail = s.fused_args()
    gen = torch.Generator().manual_seed(5)
    dms = torch.randn(16, s.basis.nao, s.basis.nao, generator=gen, dtype=torch.float64)
    wv = torch.randn(16, 4, s.coords.shape[0], generator=gen, dtype=torch.float64)
    rho = emu.eval_rho_fused(*head, dms, "GGA", *tail, 256, 0)
    v = emu.contract_vxc_fused(*head, wv, "GGA", *tail, 256, 0)
    rho_l = torch.stack([emu.eval_rho_fused(*head, d, "GGA", *tail, 256, 0) for d in dms])
    v_l = torch.stack([emu.contract_vxc_fused(*head, w, "GGA", *tail, 256, 0) for w in wv])
    assert rel_err(rho, rho_l) <= 1e-14 and rel_err(v, v_l) <= 1e-14


# --- zero sizes and validation -----------------------------------------------------------------
@pytest.mark.parametrize("xctype", XCTYPES)
def test_zero_sizes(emu, xctype):
    basis = dixc.pack_basis(mole("water", "def2-svp"))
    nao, nf = basis.nao, NFEAT[xctype]
    f64 = torch.float64
    empty = torch.zeros(0, 3, dtype=f64)
    for deriv, ncomp in ((0, 1), (1, 4), (2, 10)):
        ao0 = emu.eval_ao(empty, *basis.tensors, nao, deriv, basis.cart)
        assert ao0.shape == (ncomp, nao, 0)
    ao0 = emu.eval_ao(empty, *basis.tensors, nao, 1, basis.cart)
    dm = torch.randn(nao, nao, dtype=f64)
    assert emu.eval_rho(ao0, dm, xctype, 64, 0).shape == (nf, 0)
    assert emu.eval_rho_fused(empty, *basis.tensors, dm, xctype, nao, False, 64, 0).shape == (nf, 0)
    w0 = torch.zeros(nf, 0, dtype=f64)
    v = emu.contract_vxc(ao0, w0, xctype, 64, 0)
    v_f = emu.contract_vxc_fused(empty, *basis.tensors, w0, xctype, nao, False, 64, 0)
    assert v.shape == v_f.shape == (nao, nao) and not v.any() and not v_f.any()
    coords = torch.randn(10, 3, dtype=f64)
    dm0 = torch.zeros(0, nao, nao, dtype=f64)
    assert emu.eval_rho_fused(coords, *basis.tensors, dm0, xctype, nao, False, 64, 0).shape == (
        0,
        nf,
        10,
    )
    wz = torch.zeros(0, nf, 10, dtype=f64)
    assert emu.contract_vxc_fused(coords, *basis.tensors, wz, xctype, nao, False, 64, 0).shape == (
        0,
        nao,
        nao,
    )


def test_points_far_from_every_shell(emu):
    """Blocks that no shell reaches (n = 0) are skipped and give zeros."""
    s = _sys("water-svp-sph")
    head, tail = s.fused_args()
    far = torch.cat([s.coords, s.coords[:50] + 1e4]).contiguous()
    w = torch.randn(5, far.shape[0], dtype=torch.float64)
    rho = emu.eval_rho_fused(far, *head[1:], s.dm[0], "MGGA", *tail, 50, 0)
    assert rel_err(rho, ops.eval_rho_fused(far, *head[1:], s.dm[0], "MGGA", *tail)) <= TOL64
    assert not rho[:, -50:].any()
    v = emu.contract_vxc_fused(far, *head[1:], w, "MGGA", *tail, 50, 0)
    assert rel_err(v, ops.contract_vxc_fused(far, *head[1:], w, "MGGA", *tail)) <= TOL64


def test_validation_messages_match_the_cpu_ops(emu):
    """The CUDA path validates with the CPU path's messages (shared checks and basis view)."""
    s = system("water", "def2-svp", False, 1, 50)
    b, coords, f64 = s.basis, s.grid.coords, torch.float64
    ao = ops.eval_ao(coords, *b.tensors, b.nao, 1, b.cart)
    bad_bas = b.bas.clone()
    bad_bas[2, 0] = 9
    # (op, arguments, whether the emulated op takes (block, scratch), expected message)
    cases = [
        (
            "eval_ao",
            (coords[:, :2], *b.tensors, b.nao, 0, b.cart),
            False,
            r"coords must be \(ngrid",
        ),
        ("eval_ao", (coords, *b.tensors, b.nao, 3, b.cart), False, r"deriv must be 0, 1 or 2"),
        (
            "eval_ao",
            (coords, bad_bas, *b.tensors[1:], b.nao, 0, b.cart),
            False,
            r"shell 2 has angular momentum l = 9",
        ),
        ("eval_rho", (ao, torch.eye(23, dtype=f64), "GGA"), True, r"nao = 24"),
        ("eval_rho", (ao, torch.eye(24), "GGA"), True, r"must have the same dtype"),
        ("eval_rho", (ao, torch.eye(24, dtype=f64), "gga"), True, r"got 'gga'"),
        (
            "contract_vxc",
            (ao, torch.zeros(4, 50, dtype=f64), "MGGA"),
            True,
            r"needs 5 rows on 50 grid points",
        ),
        (
            "eval_rho_fused",
            (coords, *b.tensors, torch.eye(26, dtype=f64), "GGA", b.nao, b.cart),
            True,
            r"dm has shape \[26, 26\] but the AO basis has nao = 24",
        ),
        (
            "contract_vxc_fused",
            (coords, *b.tensors, torch.zeros(1, 50).long(), "LDA", b.nao, b.cart),
            True,
            r"contract_vxc_fused: wv must be float64 or float32",
        ),
    ]
    for name, args, tuned, msg in cases:
        with pytest.raises(RuntimeError, match=msg):
            getattr(ops, name)(*args)
        with pytest.raises(RuntimeError, match=msg):
            getattr(emu, name)(*args, *((64, 0) if tuned else ()))


@pytest.mark.parametrize("scheme", [0, 1])
def test_becke_partition(emu, scheme):
    """becke_cuda.cu's per-point bodies (ordered atom pairs, no per-thread arrays; padding
    lanes of the last block adding zeros) = the CPU kernel (unordered pairs with scratch arrays):
    ethanol's level-1 points, 1000 of them (four blocks of 256, the last partial) with Treutler's
    size adjustment, 1e-14 absolute for the fractions and 1e-13 relative for both gradients; the
    CPU kernel's validation messages."""
    *args, adjust = becke_points("ethanol", 1, 1000, 2)
    f = emu.becke_partition(*args, adjust, scheme)
    assert float((f - ops.becke_partition(*args, adjust, scheme)).abs().max()) < 1e-14
    u = torch.randn(1000, dtype=torch.float64)
    grads = emu.becke_partition_backward(u, *args, adjust, scheme)
    grads_cpu = ops.becke_partition_backward(u, *args, adjust, scheme)
    for a, b in zip(grads, grads_cpu, strict=True):
        assert rel_err(a, b) < 1e-13
    with pytest.raises(
        RuntimeError, match=r"owner holds atom indices in \[9, 9\] but there are 9 atoms"
    ):
        emu.becke_partition(args[0], torch.full((1000,), 9), args[2], adjust, scheme)
    with pytest.raises(RuntimeError, match=r"grad must be \(ngrid,\) = \(1000,\)"):
        emu.becke_partition_backward(u[:10], *args, adjust, scheme)
