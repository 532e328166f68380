"""The training path: E_xc, V_xc (and f_xc) with the graph recomputed in backward.

``dixc.xc._LocalXCRecompute`` (local functionals) returns (E_xc, dE/d rho, d^2E/d rho^2) with
only rho and the parameters saved; its backward recomputes each chunk's graph.
``dixc.xc._XCRecompute`` does the same for any functional (nonlocal EG-XC) over the whole grid,
for (E_xc, dE/d rho). Both are checked against the plain autograd graph (same values and
gradients w.r.t. rho and the parameters to 1e-12), with torch's gradcheck and gradgradcheck (the
backward is itself differentiable), and for the memory they keep (bytes saved for backward),
which is the reason they exist.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import dixc.functionals as F
from _util import EGXC_SMALL, toy_molecule
from dixc import xc


def _features(ngrid: int, seed: int = 0) -> torch.Tensor:
    """Physical closed-shell meta-GGA features (n, grad n, tau) with tau >= tau_W."""
    g = torch.Generator().manual_seed(seed)
    n = torch.rand(ngrid, generator=g, dtype=torch.float64) * 2.0 + 1e-3
    grad = torch.randn(3, ngrid, generator=g, dtype=torch.float64) * n
    tau_w = (grad**2).sum(0) / (8.0 * n)
    tau = tau_w + torch.rand(ngrid, generator=g, dtype=torch.float64) * n
    return torch.cat([n[None], grad, tau[None]])


def _functional(name: str, **kw) -> F.XCFunctional:
    torch.manual_seed(0)
    f = F.create(name, **kw)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in f.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return f


def _direct(f, rho, w, hessian):
    """The plain autograd graph: E, dE/d rho and the per-point Hessian, all differentiable."""
    e = f.energy_density(rho) @ w
    (g,) = torch.autograd.grad(e.sum(), rho, create_graph=True)
    if not hessian:
        return e, g
    rows = [torch.autograd.grad(g[k].sum(), rho, create_graph=True)[0] for k in range(len(g))]
    return e, g, torch.stack(rows)


@pytest.mark.parametrize("name", ["xcdiff", "nnmgga", "skala_mgga"])
@pytest.mark.parametrize("hessian", [False, True])
def test_matches_plain_graph(monkeypatch, name, hessian):
    """Values and first derivatives (w.r.t. rho and parameters) of a random linear functional of
    the outputs equal the plain graph's to 1e-12, with the grid split into 4 chunks."""
    monkeypatch.setattr(xc, "CHUNK_GRAPH", 16)
    f = _functional(name)
    rho = _features(61)
    w = torch.rand(61, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    params = [p for p in f.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(3)

    def probe(outs):
        return sum((torch.randn(o.shape, generator=gen, dtype=o.dtype) * o).sum() for o in outs)

    r1 = rho.clone().requires_grad_(True)
    out1 = xc._local_xc_graph(f, r1, w, hessian)
    gen.manual_seed(3)
    g1 = torch.autograd.grad(probe(out1), [r1, *params])
    r2 = rho.clone().requires_grad_(True)
    out2 = _direct(f, r2, w, hessian)
    gen.manual_seed(3)
    g2 = torch.autograd.grad(probe(out2), [r2, *params])
    for a, b in zip(out1, out2, strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=1e-12, atol=1e-14)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("hessian", [False, True])
def test_gradcheck_and_gradgradcheck(monkeypatch, hessian):
    """The Function and its backward against finite differences (rho and one weight matrix)."""
    monkeypatch.setattr(xc, "CHUNK_GRAPH", 3)
    f = _functional("xcdiff")
    rho = _features(7).requires_grad_(True)
    w = torch.rand(7, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    p0 = min((p for p in f.parameters() if p.requires_grad), key=lambda p: p.numel())
    p = p0.detach().clone().requires_grad_(True)  # stands in for the first parameter tensor
    with _replaced(f, p0, p):

        def fn(r, q):  # q is p, which the module now uses (gradcheck perturbs it in place)
            return xc._local_xc_graph(f, r, w, hessian)

        # with the Hessian output (175 numbers) the full second-order Jacobian takes minutes:
        # fast mode checks it along random directions instead (still against finite differences)
        kw = {"eps": 1e-6, "atol": 1e-8, "rtol": 1e-6, "fast_mode": hessian}
        assert torch.autograd.gradcheck(fn, (rho, p), **kw)
        assert torch.autograd.gradgradcheck(fn, (rho, p), **kw)


@contextlib.contextmanager
def _replaced(module, param, value):
    """Within the block ``module`` uses the tensor ``value`` in place of its parameter ``param``."""
    for mod in module.modules():
        for k, v in list(mod._parameters.items()):
            if v is param:
                mod._parameters[k] = value
                try:
                    yield
                finally:
                    mod._parameters[k] = param
                return
    raise AssertionError("parameter not found")


def test_parameters_swapped_before_backward_is_an_error():
    f = _functional("xcdiff")
    rho = _features(5).requires_grad_(True)
    w = torch.ones(5, dtype=torch.float64)
    p0 = next(p for p in f.parameters() if p.requires_grad)
    with _replaced(f, p0, p0.detach().clone().requires_grad_(True)):
        exc, _ = xc._local_xc_graph(f, rho, w, False)
    with pytest.raises(RuntimeError, match="changed between the forward and the backward"):
        exc.sum().backward()


def _graph_saved_bytes(outs) -> int:
    """Bytes of the distinct tensors saved for backward anywhere in the outputs' graph."""
    sizes: dict[int, int] = {}
    # Visited nodes are kept referenced: torch may drop an unreferenced node's Python wrapper and
    # make a new one at the same address later (it does in 2.11), so a bare id() can repeat.
    seen: dict[int, object] = {}
    stack = [o.grad_fn for o in outs if o.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen[id(node)] = node
        saved = []
        for name in dir(node):
            if name.startswith("_saved_") or name == "saved_tensors":
                try:
                    v = getattr(node, name)
                except RuntimeError:
                    continue
                saved += list(v) if isinstance(v, (tuple, list)) else [v]
        for t in saved:
            if isinstance(t, torch.Tensor) and t.numel():
                sizes[t.data_ptr()] = max(sizes.get(t.data_ptr(), 0), t.numel() * t.element_size())
        stack += [nf for nf, _ in node.next_functions]
    return sum(sizes.values())


@pytest.mark.parametrize("hessian", [False, True])
def test_saved_memory_is_bounded(hessian):
    """Only rho, the weights and the parameters are saved for backward; the plain graph keeps
    the 256-wide activations (and their derivatives) of every point: >100x more here."""
    f = _functional("skala_mgga")
    rho = _features(2000).requires_grad_(True)
    w = torch.rand(2000, dtype=torch.float64)
    bound = (rho.numel() + w.numel() + sum(p.numel() for p in f.parameters())) * 8
    rec = _graph_saved_bytes(xc._local_xc_graph(f, rho, w, hessian))
    plain = _graph_saved_bytes(_direct(f, rho, w, hessian))
    assert 0 < rec <= bound
    assert plain > 100 * rho.numel() * 8 + bound


# --------------------------------------------------------------------------- nonlocal (EG-XC)


def _egxc(**kw) -> F.XCFunctional:
    return _functional("egxc", **{**EGXC_SMALL, **kw})


@pytest.fixture(params=["whole-grid", "seams"])
def seams(request, monkeypatch):
    """Both paths of the nonlocal Functions: the whole grid's recomputed graph, and EG-XC's
    chunked ``lagrangian`` (used above ``xc.SEAM_MIN_POINTS`` points; 0 here)."""
    if request.param == "seams":
        monkeypatch.setattr(xc, "SEAM_MIN_POINTS", 0)
    return request.param


def _direct_nonlocal(f, rho, grid):
    exc = f(rho, grid)
    (g,) = torch.autograd.grad(exc.sum(), rho, create_graph=True)
    return exc, g


@pytest.mark.parametrize("batched", [False, True])
def test_nonlocal_matches_plain_graph(batched, seams):
    """(E_xc, dE/d rho) and the gradients of a random linear functional of them w.r.t. rho and
    every parameter equal the plain graph's (1e-12); batched densities too; whole-grid and
    chunked (seams) recomputation."""
    f = _egxc()
    rho, grid = toy_molecule(npts=6)
    if batched:
        rho = torch.stack([rho, rho * (1.0 + 0.1 * torch.rand(rho.shape[-1], dtype=rho.dtype))])
    params = [p for p in f.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(3)

    def probe(outs):
        return sum((torch.randn(o.shape, generator=gen, dtype=o.dtype) * o).sum() for o in outs)

    r1 = rho.clone().requires_grad_(True)
    out1 = xc._XCRecompute.apply(f, grid, r1, *params)
    gen.manual_seed(3)
    g1 = torch.autograd.grad(probe(out1), [r1, *params])
    r2 = rho.clone().requires_grad_(True)
    out2 = _direct_nonlocal(f, r2, grid)
    gen.manual_seed(3)
    g2 = torch.autograd.grad(probe(out2), [r2, *params])
    assert out1[0].shape == rho.shape[:-2] and out1[1].shape == rho.shape
    for a, b in zip(out1, out2, strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=1e-12, atol=1e-14)
    assert all(float(g.abs().max()) > 0 for g in g2)  # every parameter reaches E_xc or V_xc
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13)


def test_nonlocal_gradcheck_and_gradgradcheck():
    """The Function and its backward against finite differences (rho and one weight matrix)."""
    f = _egxc()
    rho, grid = toy_molecule(npts=3, seed=1)
    rho = rho.requires_grad_(True)
    p0 = dict(f.named_parameters())["gamma_net.0.weight"]
    p = p0.detach().clone().requires_grad_(True)
    with _replaced(f, p0, p):
        params = [q for q in f.parameters() if q.requires_grad]

        def fn(r, q):  # q is p, which the module now uses (gradcheck perturbs it in place)
            return xc._XCRecompute.apply(f, grid, r, *params)

        kw = {"eps": 1e-6, "atol": 1e-8, "rtol": 1e-6}
        assert torch.autograd.gradcheck(fn, (rho, p), **kw)
        assert torch.autograd.gradgradcheck(fn, (rho, p), **kw)


def test_nonlocal_parameters_swapped_before_backward_is_an_error():
    f = _egxc()
    rho, grid = toy_molecule(npts=3)
    p0 = next(p for p in f.parameters() if p.requires_grad)
    with _replaced(f, p0, p0.detach().clone().requires_grad_(True)):
        params = [p for p in f.parameters() if p.requires_grad]
        exc, _ = xc._XCRecompute.apply(f, grid, rho.requires_grad_(True), *params)
    with pytest.raises(RuntimeError, match="changed between the forward and the backward"):
        exc.sum().backward()


def test_nonlocal_saved_memory_is_bounded():
    """Only rho and the parameters are saved (the plain graph keeps every pair block and
    per-point activation of the network and of its feature gradient)."""
    f = _egxc(n_radial=8, channels=16, nl_channels=16, hidden=32)
    rho, grid = toy_molecule(npts=400)
    rho.requires_grad_(True)
    params = [p for p in f.parameters() if p.requires_grad]
    bound = (rho.numel() + sum(p.numel() for p in params)) * 8
    rec = _graph_saved_bytes(xc._XCRecompute.apply(f, grid, rho, *params))
    plain = _graph_saved_bytes(_direct_nonlocal(f, rho, grid))
    assert 0 < rec <= bound
    assert plain > 20 * rho.numel() * 8 + bound


# ------------------------------------------------------------- f_xc of a nonlocal functional


def _direct_fxc(f, rho0, rho1, grid):
    """w1_b = (d^2 E / d rho^2) rho1_b through the plain graph, differentiable."""
    (g,) = torch.autograd.grad(f(rho0, grid), rho0, create_graph=True)
    return torch.stack(
        [torch.autograd.grad(g, rho0, rho1[b], create_graph=True)[0] for b in range(len(rho1))]
    )


def _responses(rho, nb, seed=5):
    gen = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn((nb, *rho.shape), generator=gen, dtype=rho.dtype) * rho.abs()


@pytest.mark.parametrize("chunk", [1, 2, None])
def test_fxc_matches_plain_graph(chunk, seams):
    """w1 of 3 response densities, and the gradients of a random linear functional of it w.r.t.
    rho0, rho1 and every parameter, equal the plain graph's (1e-12 / 1e-11) for every chunking
    of the probes (1 and 2 leave a partial last chunk; None takes all in one pass; the chunked
    ``lagrangian`` (seams) takes all probes per chunk of points)."""
    f = _egxc()
    rho, grid = toy_molecule(npts=6)
    params = [p for p in f.parameters() if p.requires_grad]
    rho1 = _responses(rho, 3)
    u = torch.randn(rho1.shape, generator=torch.Generator().manual_seed(7), dtype=rho.dtype)
    a0, a1 = rho.clone().requires_grad_(True), rho1.clone().requires_grad_(True)
    _, _, w_rec = xc._FxcRecompute.apply(f, grid, chunk, a0, a1, *params)
    g_rec = torch.autograd.grad((u * w_rec).sum(), [a0, a1, *params])
    b0, b1 = rho.clone().requires_grad_(True), rho1.clone().requires_grad_(True)
    w_plain = _direct_fxc(f, b0, b1, grid)
    g_plain = torch.autograd.grad((u * w_plain).sum(), [b0, b1, *params])
    assert w_rec.shape == rho1.shape
    torch.testing.assert_close(w_rec, w_plain.detach(), rtol=1e-12, atol=1e-14)
    # Every input reaches f_xc except the readout's last bias, which enters E_xc linearly in rho.
    names = ["rho0", "rho1"] + [n for n, q in f.named_parameters() if q.requires_grad]
    assert [n for n, g in zip(names, g_plain, strict=True) if not g.any()] == ["readout.2.bias"]
    for a, b in zip(g_rec, g_plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("chunk", [1, None])
@pytest.mark.parametrize("used", ["exc", "wv", "w1", "exc+wv", "exc+wv+w1"])
def test_fxc_first_order_outputs_match_plain_graph(chunk, used, seams):
    """E_xc and dE/d rho come out of the same Function as w1 (one graph for all three): their
    values equal the plain graph's (1e-12) and the gradients w.r.t. rho0, rho1 and every
    parameter of a random linear functional of any subset of the outputs do too (1e-11); an
    output that is not used gets no gradient (materialised zeros are never made)."""
    f = _egxc()
    rho, grid = toy_molecule(npts=6, seed=2)
    params = [p for p in f.parameters() if p.requires_grad]
    rho1 = _responses(rho, 3, seed=6)
    gen = torch.Generator().manual_seed(8)
    ue = torch.randn((), generator=gen, dtype=rho.dtype)
    uw = torch.randn(rho.shape, generator=gen, dtype=rho.dtype)
    u1 = torch.randn(rho1.shape, generator=gen, dtype=rho.dtype)
    keys = used.split("+")

    def scalar(exc, wv, w1):
        parts = {"exc": ue * exc, "wv": (uw * wv).sum(), "w1": (u1 * w1).sum()}
        return sum(parts[k] for k in keys)

    a0, a1 = rho.clone().requires_grad_(True), rho1.clone().requires_grad_(True)
    out_rec = xc._FxcRecompute.apply(f, grid, chunk, a0, a1, *params)
    g_rec = torch.autograd.grad(scalar(*out_rec), [a0, a1, *params], allow_unused=True)
    b0, b1 = rho.clone().requires_grad_(True), rho1.clone().requires_grad_(True)
    exc = f(b0, grid)
    (wv,) = torch.autograd.grad(exc, b0, create_graph=True)
    w1 = torch.stack([torch.autograd.grad(wv, b0, b1[b], create_graph=True)[0] for b in range(3)])
    g_plain = torch.autograd.grad(scalar(exc, wv, w1), [b0, b1, *params], allow_unused=True)
    for a, b in zip(out_rec, (exc, wv, w1), strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=1e-12, atol=1e-14)
    assert (g_rec[1] is None) == ("w1" not in keys)  # rho1 reaches only w1
    for a, b in zip(g_rec, g_plain, strict=True):
        if a is None:
            assert b is None or not b.any()
            continue
        assert b is not None
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13)
    nonzero = [g is not None and bool(g.any()) for g in g_rec]
    assert nonzero[0] and sum(nonzero[2:]) >= len(params) - 1  # only readout.2.bias may be zero


def test_fxc_gradcheck_and_gradgradcheck():
    """The Function and its backward against finite differences (rho0, rho1, one weight)."""
    f = _egxc()
    rho, grid = toy_molecule(npts=3, seed=1)
    rho1 = _responses(rho, 2).requires_grad_(True)
    rho = rho.requires_grad_(True)
    p0 = dict(f.named_parameters())["gamma_net.0.weight"]
    p = p0.detach().clone().requires_grad_(True)
    with _replaced(f, p0, p):
        params = [q for q in f.parameters() if q.requires_grad]

        def fn(r0, r1, q):  # q is p, which the module now uses (gradcheck perturbs it in place)
            return xc._FxcRecompute.apply(f, grid, 1, r0, r1, *params)  # (E, dE/d rho, w1)

        kw = {"eps": 1e-6, "atol": 1e-8, "rtol": 1e-6}
        assert torch.autograd.gradcheck(fn, (rho, rho1, p), **kw)
        assert torch.autograd.gradgradcheck(fn, (rho, rho1, p), **kw)


def test_fxc_parameters_swapped_before_backward_is_an_error():
    f = _egxc()
    rho, grid = toy_molecule(npts=3)
    p0 = next(p for p in f.parameters() if p.requires_grad)
    with _replaced(f, p0, p0.detach().clone().requires_grad_(True)):
        params = [p for p in f.parameters() if p.requires_grad]
        _, _, w1 = xc._FxcRecompute.apply(f, grid, 1, rho, _responses(rho, 2), *params)
    with pytest.raises(RuntimeError, match="changed between the forward and the backward"):
        w1.sum().backward()


def test_fxc_saved_memory_is_bounded():
    """Only rho0, rho1 and the parameters are saved; the plain graph keeps one VJP graph through
    the network per response density (4 here) on top of the first-order graph."""
    f = _egxc(n_radial=8, channels=16, nl_channels=16, hidden=32)
    rho, grid = toy_molecule(npts=400)
    rho1 = _responses(rho, 4)
    params = [p for p in f.parameters() if p.requires_grad]
    bound = (rho.numel() + rho1.numel() + sum(p.numel() for p in params)) * 8
    rec = _graph_saved_bytes(list(xc._FxcRecompute.apply(f, grid, 1, rho, rho1, *params)))
    plain = _graph_saved_bytes([_direct_fxc(f, rho.clone().requires_grad_(True), rho1, grid)])
    assert 0 < rec <= bound
    assert plain > 20 * rho.numel() * 8 + bound


@pytest.mark.gpu
def test_nonlocal_seams_on_cuda_equal_cpu(monkeypatch):
    """EG-XC's chunked backward (``EGXC.lagrangian``) of both Functions on CUDA: the gradients
    w.r.t. rho0, rho1 and every parameter equal the CPU's to 1e-11 relative."""
    import copy

    monkeypatch.setattr(xc, "SEAM_MIN_POINTS", 0)
    f = _egxc()
    rho, grid = toy_molecule(npts=40)
    rho1 = _responses(rho, 3)
    u = torch.randn(rho1.shape, generator=torch.Generator().manual_seed(7), dtype=rho.dtype)
    results = []
    for dev in ("cpu", "cuda"):
        fd = copy.deepcopy(f).to(dev)
        params = [p for p in fd.parameters() if p.requires_grad]
        gd = grid.to(dev)
        a0 = rho.to(dev).requires_grad_(True)
        a1 = rho1.to(dev).requires_grad_(True)
        exc, wv, w1 = xc._FxcRecompute.apply(fd, gd, 1, a0, a1, *params)
        e2, v2 = xc._XCRecompute.apply(fd, gd, a0, *params)
        scalar = exc + (u[0].to(dev) * wv).sum() + (u.to(dev) * w1).sum() + e2 + (v2 * a0).sum()
        results.append([g.cpu() for g in torch.autograd.grad(scalar, [a0, a1, *params])])
    for c, g in zip(*results, strict=True):
        assert (g - c).abs().max() <= 1e-11 * c.abs().max().clamp(min=1e-300)


def test_chunk_points_follow_the_widest_layer():
    """Local functionals' point chunks on a CPU: 2^19 / (widest Linear layer), a power of two in
    [1024, 32768]; networks without Linear layers and every functional on CUDA: 32768. The local
    CHUNK_GRAPH paths take the smaller of the two (``point_slices`` with that limit)."""
    cases = {
        ("mlp_mgga", 320): 1024,  # 1638 -> 1024
        ("mlp_mgga", 64): 8192,
        ("mlp_mgga", 4096): 1024,  # 128 -> the floor
        ("mlp_mgga", 8): 32768,  # 65536 -> the ceiling
        ("skala_mgga", None): 2048,  # 256 wide
        ("nnmgga", None): 4096,  # 100 wide
        ("xcdiff", None): 32768,  # 16 wide
        ("pbe", None): 32768,
    }
    for (name, hidden), want in cases.items():
        f = F.create(name, **({} if hidden is None else {"hidden": hidden}))
        assert f.chunk_points() == want, (name, hidden)
        assert f.chunk_points(torch.device("cuda")) == 32768
        graph = min(want, xc.CHUNK_GRAPH)
        got = f.point_slices(10 * graph + 3, "cpu", xc.CHUNK_GRAPH)
        assert got == [
            slice(a, min(a + graph, 10 * graph + 3)) for a in range(0, 10 * graph + 3, graph)
        ]


@pytest.mark.parametrize(
    "name", ["pbe", "b3lyp_semilocal", "mlp_mgga", "nnmgga", "xcdiff", "skala_mgga"]
)
def test_rotation_invariant_feature_hessian_equals_all_rows(name):
    """``xc.feature_hessian`` of a rotation-invariant functional (2 / 3 backward passes and the
    first derivative) equals the Hessian from one backward pass per feature row to 1e-12 of the
    largest element at each point, at ordinary points, where grad rho is zero exactly or tiny,
    and below the density screening; its grad-rho block, the part rebuilt from the invariance,
    to 1e-12 of that block's own largest element (not for PBE: there the gradient expansions of
    exchange and correlation cancel, so that block is rounding noise of 1e-18 at small grad rho,
    1e-16 of the point's largest element). A functional that does not declare the invariance
    gets the row-by-row Hessian itself."""
    f = _functional(name) if name not in ("pbe", "b3lyp_semilocal") else F.create(name)
    assert f.rotation_invariant
    rho = _features(64, seed=5)[: f.nfeat]
    rho[1:4, :4] = 0.0  # grad rho = 0 exactly
    rho[1:4, 4:8] *= 1e-9  # nearly
    rho[1:4, 8] = torch.tensor([0.0, 0.0, 1e-3])  # along z, one component only
    rho[0, 9:12] = 1e-16  # below every functional's screening threshold
    w = torch.rand(64, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    r = rho.clone().requires_grad_(True)
    e = f.energy_density(r) @ w
    (g,) = torch.autograd.grad(e, r, create_graph=True)
    got = xc.feature_hessian(f, r, g)
    rows = torch.stack([torch.autograd.grad(g[k].sum(), r, retain_graph=True)[0]
                        for k in range(f.nfeat)])  # fmt: skip

    def err(got, ref):  # per point, relative to the largest element of ref there
        return (got - ref).abs().amax(dim=(0, 1)) / ref.abs().amax(dim=(0, 1)).clamp(min=1e-300)

    assert err(got, rows).max() <= 1e-12
    if name != "pbe":
        assert err(got[1:4, 1:4], rows[1:4, 1:4]).max() <= 1e-12
    assert (got[:, :, 9:12] == 0).all()
    # the same functional without the declaration: the row-by-row Hessian itself
    f.rotation_invariant = False
    assert torch.equal(xc.feature_hessian(f, r, g), rows)
