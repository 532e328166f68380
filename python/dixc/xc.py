"""XC energy, potential and response kernel of any dixc functional, by autograd through the ops.

For a functional E_xc[rho] with rho = eval_rho(D):
    V_xc[D]      = dE_xc/dD     = contract_vxc(w),  w = dE_xc/d rho               (one backward)
    f_xc[D](dD)  = d V_xc[D + t dD]/dt at t=0 = contract_vxc(w1),
                   w1 = (d^2 E_xc / d rho^2) . eval_rho(dD)                       (second backward)
No finite differences and no Hessian in AO space. For local functionals the feature-space Hessian
is block diagonal over grid points, so ``XCKernel`` builds it once (nfeat backward passes) and then
applies it to any number of response densities at the cost of one batched ``eval_rho`` and one
batched ``contract_vxc``. Nonlocal functionals get one vector-Jacobian product per response density.

Training (``create_graph``) never keeps the network's graph from the forward to the parameter
backward: ``_LocalXCRecompute``, ``_XCRecompute`` and ``_FxcRecompute`` save the features and
the parameters and rebuild the graph in ``backward`` (chunk by chunk of points, or of probes;
EG-XC's by points too, between the atom-level seams of its ``lagrangian``).
"""

from __future__ import annotations

import torch

from dixc.context import MolContext
from dixc.functionals.base import XCFunctional, accumulate_grads


def _check_finite(value: torch.Tensor, what: str, ctx: MolContext) -> None:
    if not bool(torch.isfinite(value).all()):
        raise FloatingPointError(
            f"dixc: {what} of {ctx.name} is not finite (NaN/inf). Check the density matrix (is it "
            "finite and does it hold the right number of electrons?) and the functional's inputs."
        )


# Grid points per chunk when a local functional runs without a kept graph: the functional's
# ``chunk_points`` (cache-sized for wide networks on a CPU, up to 32768). At most CHUNK_GRAPH for
# the recomputed training graph and the Hessian: they hold ~6 graphs of the network per point
# (~150 kB for Skala-mGGA's 256-wide MLP), 4096 points ~0.6 GB.
CHUNK_GRAPH = 4096


def hessian_passes(functional: XCFunctional, nfeat: int) -> int:
    """Backward passes :func:`feature_hessian` takes for ``nfeat`` feature rows (1, 2, 3 for a
    rotation-invariant LDA, GGA, meta-GGA; ``nfeat`` otherwise)."""
    return nfeat - 2 if functional.rotation_invariant and nfeat > 1 else nfeat


def feature_hessian(functional: XCFunctional, r: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per-point Hessian ``(nfeat, nfeat, npts)`` of a local functional, from its first derivative.

    Args:
        functional: the local functional ``g`` was computed with.
        r: ``(nfeat, npts)`` features (a leaf requiring grad).
        g: ``(nfeat, npts)`` dE/dr with its graph (``create_graph=True``); kept (retain_graph).

    One backward pass of ``g`` per direction; the points are independent, so each pass gives
    H d at every point for a per-point direction d. In general the directions are the feature
    rows (nfeat passes). A ``rotation_invariant`` GGA / meta-GGA needs only rho, tau and u, the
    unit vector along grad rho (e_x where grad rho = 0): its gradient block is
        H_gg = 4 e_ss g g^T + 2 e_s I = a u u^T + b (I - u u^T),
    with a = u.H_gg u from the pass along u and b = 2 e_s = (dE/dg . u) / |g| from the first
    derivative (b = a where grad rho = 0, as H_gg = 2 e_s I there), and H_rho,g, H_tau,g are in
    the rows of rho and tau: 2 (GGA) / 3 (meta-GGA) passes instead of 4 / 5. No graph is made.
    """
    nf = r.shape[0]
    if not g.requires_grad:  # dE/dr independent of r
        return r.new_zeros(nf, nf, r.shape[1])
    if nf == 1 or not functional.rotation_invariant:
        rows = [torch.autograd.grad(g[k].sum(), r, retain_graph=True)[0] for k in range(nf)]
        return torch.stack(rows)
    grad_rho = r[1:4].detach()
    s = torch.linalg.vector_norm(grad_rho, dim=0)
    nonzero = s > 0.0
    s_safe = torch.where(nonzero, s, 1.0)
    e_x = torch.tensor([1.0, 0.0, 0.0], dtype=r.dtype, device=r.device)[:, None]
    u = torch.where(nonzero, grad_rho / s_safe, e_x)
    zero = torch.zeros_like(r[:1])
    one = torch.ones_like(zero)
    dirs = [torch.cat([one, zero.expand(nf - 1, -1)]), torch.cat([zero, u, zero[: nf - 4]])]
    if nf == 5:
        dirs.append(torch.cat([zero.expand(4, -1), one]))
    rows = [torch.autograd.grad(g, r, d, retain_graph=True)[0] for d in dirs]
    a = (u * rows[1][1:4]).sum(0)
    b = torch.where(nonzero, (g[1:4].detach() * u).sum(0) / s_safe, a)
    hess = r.new_empty(nf, nf, r.shape[1])
    for k, row in [(0, rows[0])] + ([(4, rows[2])] if nf == 5 else []):  # rho, tau: row, column
        hess[k], hess[:, k] = row, row
    # H_gg[i,j] = b delta_ij + (a - b) u_i u_j
    hess[1:4, 1:4] = (a - b) * u[:, None] * u[None]
    hess[1:4, 1:4] += torch.eye(3, dtype=r.dtype, device=r.device)[..., None] * b
    return hess


def _local_derivs(
    functional: XCFunctional,
    rho: torch.Tensor,
    weights: torch.Tensor,
    hessian: bool,
    graph_chunks: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """E_xc, dE/d rho and (optionally) the per-point Hessian of a local functional, chunked.

    Memory is bounded by one chunk of the functional's autograd graph
    (``functional.point_slices``; at most ``CHUNK_GRAPH`` points with the Hessian or
    ``graph_chunks``, the chunks of the training Function; a large MLP's activations over a whole
    molecular grid would not fit). No graph is kept.

    Returns:
        ``(exc ((B,)), wv (same shape as rho), hess (nfeat, nfeat, ngrid) or None)``.
    """
    ngrid = rho.shape[-1]
    exc = rho.new_zeros(rho.shape[:-2])
    wv = torch.empty_like(rho)
    hess = rho.new_empty(rho.shape[-2], rho.shape[-2], ngrid) if hessian else None
    limit = CHUNK_GRAPH if hessian or graph_chunks else None
    for sl in functional.point_slices(ngrid, rho.device, limit):
        with torch.enable_grad():
            r = rho[..., sl].detach().requires_grad_(True)
            e = functional.energy_density(r) @ weights[sl]
            (g,) = torch.autograd.grad(e.sum(), r, create_graph=hessian)
            if hess is not None:
                hess[..., sl] = feature_hessian(functional, r, g)
        exc += e.detach()
        wv[..., sl] = g.detach()
    return exc, wv, hess


class _LocalXCRecompute(torch.autograd.Function):
    """E_xc, dE/d rho (and the per-point Hessian) of a local functional, graph recomputed.

    Training differentiates E_xc twice (V_xc) or three times (f_xc) and then once more w.r.t. the
    parameters. Kept as an autograd graph, every evaluation holds the network's activations and
    their derivatives for all grid points until ``backward`` (a 256-wide per-point MLP: ~25 kB
    per point, >15 GB for one small molecule through an unrolled SCF). Here the forward computes
    the derivatives chunk by chunk without a graph and saves only ``rho`` and the parameters; the
    backward recomputes each chunk's graph and contracts it with the incoming gradients:
        d/dx [<g_E, E> + <g_w, dE/d rho> + <g_H, d^2E/d rho^2>]  for x in (rho, parameters).
    Memory is then one chunk's graph (at most ``CHUNK_GRAPH`` points) at a time. Under
    ``create_graph`` (higher derivatives of the backward itself) the recomputed graph is kept, so
    every order stays exact.

    ``apply(functional, weights, hessian, rho, *params)`` -> ``(exc, wv)`` or ``(exc, wv, hess)``
    with the shapes of :func:`_local_derivs` (``hessian`` needs an unbatched ``rho``).
    """

    @staticmethod
    def forward(ctx, functional, weights, hessian, rho, *params):
        exc, wv, hess = _local_derivs(functional, rho, weights, hessian, graph_chunks=True)
        ctx.functional, ctx.hessian = functional, hessian
        ctx.param_ids = tuple(id(p) for p in params)
        ctx.save_for_backward(rho, weights, *params)
        return (exc, wv, hess) if hessian else (exc, wv)

    @staticmethod
    def backward(ctx, gexc, gwv, ghess=None):
        rho, weights, *params = ctx.saved_tensors
        _check_same_params(ctx)
        create = torch.is_grad_enabled()
        need_rho = ctx.needs_input_grad[3]
        grho: list[torch.Tensor] = []
        gparams: list[torch.Tensor | None] = [None] * len(params)
        for sl in ctx.functional.point_slices(rho.shape[-1], rho.device, CHUNK_GRAPH):
            with torch.enable_grad():
                r = rho[..., sl]
                if not (create and r.requires_grad):
                    r = r.detach().requires_grad_(True)
                e = ctx.functional.energy_density(r) @ weights[sl]
                (g,) = torch.autograd.grad(e.sum(), r, create_graph=True)
                s = (gexc * e).sum() + (gwv[..., sl] * g).sum()
                if ctx.hessian:
                    for k in range(r.shape[-2]):
                        (hk,) = torch.autograd.grad(
                            g[k].sum(), r, create_graph=True, allow_unused=True
                        )
                        if hk is not None:
                            s = s + (ghess[k, :, sl] * hk).sum()
                grads = torch.autograd.grad(s, [r, *params], allow_unused=True, create_graph=create)
            if need_rho:
                grho.append(grads[0])
            accumulate_grads(gparams, range(len(params)), grads[1:])
        return (None, None, None, torch.cat(grho, dim=-1) if need_rho else None, *gparams)


class _XCRecompute(torch.autograd.Function):
    """E_xc and dE/d rho of any (nonlocal) functional with the graph recomputed in ``backward``.

    The nonlocal counterpart of :class:`_LocalXCRecompute` without chunking (a nonlocal energy
    does not split over grid points, but a batch splits over its densities): the forward evaluates
    E_xc and its feature gradient without keeping a graph and saves ``rho`` and the parameters;
    the backward rebuilds the graph once, one density of a batch at a time, and contracts it with
    the incoming gradients, d/dx [<g_E, E> + <g_w, dE/d rho>]. An unrolled SCF
    then holds one evaluation's graph at a time instead of one per cycle, for one extra
    forward and feature backward per evaluation. Exact to every order (``create_graph`` in the
    backward keeps the recomputed graph). A functional with a chunked ``lagrangian`` (EG-XC)
    does the backward with it instead, L = g_E E + dE[g_w], point chunk by point chunk (see
    :func:`_seamed`).

    ``apply(functional, grid, rho, *params)`` -> ``(exc ((B,)), wv (same shape as rho))``.
    """

    @staticmethod
    def forward(ctx, functional, grid, rho, *params):
        exc = rho.new_empty(rho.shape[:-2])
        wv = torch.empty_like(rho)
        for b in _batch_items(rho):  # one density's graph at a time
            with torch.enable_grad():
                r = rho[b].detach().requires_grad_(True)
                e = functional(r, grid)
                (wv[b],) = torch.autograd.grad(e, r)
            exc[b] = e.detach()
        ctx.functional, ctx.grid = functional, grid
        ctx.param_ids = tuple(id(p) for p in params)
        ctx.save_for_backward(rho, *params)
        return exc, wv

    @staticmethod
    def backward(ctx, gexc, gwv):
        rho, *params = ctx.saved_tensors
        _check_same_params(ctx)
        create = torch.is_grad_enabled()
        grho: list[torch.Tensor] = []
        gparams: list[torch.Tensor | None] = [None] * len(params)
        for b in _batch_items(rho):  # densities are independent: one graph at a time, no extra cost
            if _seamed(ctx.functional, ctx.grid) and not create:
                res = ctx.functional.lagrangian(rho[b], ctx.grid, gexc[b], gwv[b], params=True)
                grho.append(res.x0)
                accumulate_grads(gparams, range(len(params)), res.params)
                continue
            with torch.enable_grad():
                r = rho[b]
                if not (create and r.requires_grad):
                    r = r.detach().requires_grad_(True)
                exc = ctx.functional(r, ctx.grid)
                (wv,) = torch.autograd.grad(exc, r, create_graph=True)
                s = (gexc[b] * exc).sum() + (gwv[b] * wv).sum()
                grads = torch.autograd.grad(s, [r, *params], allow_unused=True, create_graph=create)
            grho.append(grads[0])
            accumulate_grads(gparams, range(len(params)), grads[1:])
        grho_all = None
        if ctx.needs_input_grad[2]:
            grho_all = torch.stack(grho) if rho.dim() == 3 else grho[0]
        return (None, None, grho_all, *gparams)


#: grids with more points than this use a nonlocal functional's chunked ``lagrangian`` (when it
#: has one) in the recomputed training backward; smaller grids are no bigger than one of its
#: chunks and go through the cheaper whole-grid graph.
SEAM_MIN_POINTS = CHUNK_GRAPH


def _seamed(functional: XCFunctional, grid) -> bool:
    """Whether a nonlocal functional differentiates its Lagrangians point chunk by point chunk
    (``lagrangian``, e.g. :meth:`dixc.functionals.egxc.EGXC.lagrangian`) on this grid: then the
    recomputed backward (without ``create_graph``) calls it, memory bounded by a chunk of points
    instead of the whole grid's second- or third-order graph. The forwards keep the whole grid:
    first order, no graph kept past them (EG-XC, 41 k points: the same peak, 10 % faster)."""
    return callable(getattr(functional, "lagrangian", None)) and grid.ngrid > SEAM_MIN_POINTS


def _batch_items(rho: torch.Tensor) -> list:
    """Indices of the densities in ``((B,) nfeat, ngrid)`` features (``...`` if unbatched)."""
    return list(range(rho.shape[0])) if rho.dim() == 3 else [...]


class _FxcRecompute(torch.autograd.Function):
    """E_xc, dE/d rho and the second-order weights w1_b = (d^2 E_xc / d rho^2) rho1_b of any
    (nonlocal) functional at one density, with the graph recomputed in ``backward`` probe chunk
    by probe chunk.

    Kept as an ordinary graph, every response density holds its own vector-Jacobian product
    through the network (and its derivative) until the parameter backward: for EG-XC ~1.1 GB per
    probe at 50 k grid points, all probes at once. Here the forward builds E_xc and dE/d rho once,
    takes the B products without keeping a graph and saves ``rho0``, ``rho1`` and the
    parameters. The backward rebuilds E_xc and dE/d rho once (kept for the whole backward) and
    then, for ``chunk`` probes at a time, rebuilds their products and contracts them with the
    incoming gradients, d/dx [<g_E, E> + <g_w, dE/d rho> + sum_b <g_b, w1_b>] for x in (rho0,
    rho1, parameters) (the first two terms with the last chunk), freeing each chunk's graph
    before the next. Memory: the first-order graph and one chunk's products; cost: the
    first-order graph is traversed once per chunk, and E_xc / V_xc at rho0 come with the
    products for free (no separate :class:`_XCRecompute` at the same density). Exact to every
    order (``create_graph`` in the backward keeps the recomputed graph). A functional with a
    chunked ``lagrangian`` (EG-XC) does the backward with it instead, all probes at once, L =
    g_E E + dE[g_w] + sum_b d^2E[rho1_b, g_b], point chunk by point chunk (``chunk`` unused; see
    :func:`_seamed`).

    ``apply(functional, grid, chunk, rho0, rho1, *params)`` -> ``(exc, wv, w1)``: ``rho0`` and
    ``wv`` ``(nfeat, ngrid)``, ``exc`` 0-d, ``rho1`` and ``w1`` ``(B, nfeat, ngrid)``; ``chunk``
    None: all probes in one pass.
    """

    @staticmethod
    def forward(ctx, functional, grid, chunk, rho0, rho1, *params):
        w1 = torch.empty_like(rho1)
        with torch.enable_grad():
            r = rho0.detach().requires_grad_(True)
            exc = functional(r, grid)
            (g,) = torch.autograd.grad(exc, r, create_graph=True)
            for b in range(rho1.shape[0]):
                (w1[b],) = torch.autograd.grad(g, r, rho1[b], retain_graph=True)
        ctx.functional, ctx.grid, ctx.chunk = functional, grid, chunk
        ctx.param_ids = tuple(id(p) for p in params)
        ctx.save_for_backward(rho0, rho1, *params)
        ctx.set_materialize_grads(False)  # unused outputs (E_xc, V_xc or w1) cost nothing
        return exc.detach(), g.detach(), w1

    @staticmethod
    def backward(ctx, gexc, gwv, gw1):
        rho0, rho1, *params = ctx.saved_tensors
        _check_same_params(ctx)
        create = torch.is_grad_enabled()
        need0, need1 = ctx.needs_input_grad[3], ctx.needs_input_grad[4]
        nb = rho1.shape[0] if gw1 is not None else 0
        if _seamed(ctx.functional, ctx.grid) and not create:  # g_E E + dE[g_w] + d^2E[rho1_b, g_b]
            res = ctx.functional.lagrangian(
                rho0, ctx.grid, 0.0 if gexc is None else gexc, gwv, rho1 if nb else None,
                gw1 if nb else None, params=True,
            )  # fmt: skip
            g1 = res.xa if (need1 and nb) else None
            return (None, None, None, res.x0 if need0 else None, g1, *res.params)
        chunk = max(nb, 1) if ctx.chunk is None else max(1, int(ctx.chunk))
        grads: list[torch.Tensor | None] = [None] * (2 + len(params))
        with torch.enable_grad():
            r = rho0 if (create and rho0.requires_grad) else rho0.detach().requires_grad_(True)
            r1 = rho1
            if not (create and rho1.requires_grad):
                r1 = rho1.detach().requires_grad_(need1)
            exc = ctx.functional(r, ctx.grid)
            (g,) = torch.autograd.grad(exc, r, create_graph=True)
            inputs = [r, *params] + ([r1] if need1 else [])
            order = [0, *range(2, 2 + len(params))] + ([1] if need1 else [])  # inputs -> grads
            # the first-order terms go with the last chunk (alone when no probe has a gradient),
            # whose backward frees the first-order graph as it goes: 0.6 GB less at the peak
            # for EG-XC at 40 k points than with the first chunk, which must retain it
            s0 = [(gexc * exc).sum()] if gexc is not None else []
            s0 += [(gwv * g).sum()] if gwv is not None else []
            starts = list(range(0, nb, chunk)) or ([0] if s0 else [])
            for a in starts:
                last = a == starts[-1]
                terms = []
                for i in range(a, min(a + chunk, nb)):
                    (w,) = torch.autograd.grad(g, r, r1[i], create_graph=True)
                    terms.append((gw1[i] * w).sum())
                terms += s0 if last else []
                out = torch.autograd.grad(
                    torch.stack(terms).sum(), inputs, allow_unused=True, create_graph=create,
                    retain_graph=create or not last,
                )  # fmt: skip
                accumulate_grads(grads, order, out)
        g0 = grads[0] if need0 else None
        g1 = grads[1] if need1 else None
        return (None, None, None, g0, g1, *grads[2:])


def _check_same_params(ctx) -> None:
    """The recomputation in ``backward`` must see the parameters the forward saw."""
    now = tuple(id(p) for p in ctx.functional.parameters() if p.requires_grad)
    if now != ctx.param_ids:
        raise RuntimeError(
            f"dixc: the parameters of {type(ctx.functional).__name__} changed between the "
            "forward and the backward of E_xc (tensors replaced or requires_grad toggled); "
            "run backward before changing the module's parameters"
        )


def _local_xc_graph(
    functional: XCFunctional, rho: torch.Tensor, weights: torch.Tensor, hessian: bool
) -> tuple[torch.Tensor, ...]:
    """:class:`_LocalXCRecompute` for a local functional: differentiable, memory-bounded."""
    params = [p for p in functional.parameters() if p.requires_grad]
    return _LocalXCRecompute.apply(functional, weights, hessian, rho, *params)


def _exc_vxc_rho(
    ctx: MolContext,
    functional: XCFunctional,
    dm: torch.Tensor,
    create_graph: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """E_xc[D], V_xc[D] = dE_xc/dD and the density features they were made from.

    Args:
        ctx: molecule context.
        functional: any dixc functional.
        dm: ``((B,) nao, nao)`` density matrices (symmetric part used).
        create_graph: keep the graph so that the results can be differentiated again (w.r.t. the
            functional's parameters and ``dm``): needed for training, not for SCF.

    Returns:
        ``(exc, vxc, rho)``: ``((B,))`` Hartree, ``((B,) nao, nao)`` symmetric, and the
        features ``((B,) nfeat, ngrid)`` (detached).
    """
    xctype = functional.xctype
    if functional.is_local and not create_graph:
        rho = ctx.eval_rho(dm.detach(), xctype)
        exc, wv, _ = _local_derivs(functional, rho[..., : functional.nfeat, :], ctx.grid.weights,
                                   hessian=False)  # fmt: skip
        vxc = ctx.contract_vxc(wv, xctype)
        _check_finite(exc, "E_xc", ctx)
        return exc, vxc, rho
    if functional.is_local:  # training: graph recomputed in backward (memory-bounded)
        with torch.enable_grad():
            rho = ctx.eval_rho(dm, xctype)
            exc, wv = _local_xc_graph(functional, rho[..., : functional.nfeat, :],
                                      ctx.grid.weights, hessian=False)  # fmt: skip
        if wv.shape[-2] != rho.shape[-2]:
            wv = torch.cat([wv, wv.new_zeros(*wv.shape[:-2], rho.shape[-2] - wv.shape[-2],
                                             wv.shape[-1])], dim=-2)  # fmt: skip
        vxc = ctx.contract_vxc(wv, xctype)
        _check_finite(exc, "E_xc", ctx)
        return exc, vxc, rho.detach()
    if create_graph:  # training, nonlocal: graph recomputed in backward (one at a time)
        params = [p for p in functional.parameters() if p.requires_grad]
        with torch.enable_grad():
            rho = ctx.eval_rho(dm, xctype)
            exc, wv = _XCRecompute.apply(functional, ctx.grid, rho, *params)
        vxc = ctx.contract_vxc(wv, xctype)
        _check_finite(exc, "E_xc", ctx)
        return exc, vxc, rho.detach()
    rho = ctx.eval_rho(dm.detach(), xctype)
    with torch.enable_grad():
        r = rho.detach().requires_grad_(True)
        exc = functional(r, ctx.grid)
        (wv,) = torch.autograd.grad(exc.sum(), r)
    vxc = ctx.contract_vxc(wv, xctype)
    _check_finite(exc, "E_xc", ctx)
    return exc.detach(), vxc, rho


def exc_vxc(
    ctx: MolContext,
    functional: XCFunctional,
    dm: torch.Tensor,
    create_graph: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """E_xc[D] and V_xc[D] = dE_xc/dD: ``((B,))`` Hartree and ``((B,) nao, nao)`` symmetric.

    ``create_graph`` keeps the graph (w.r.t. the functional's parameters and ``dm``) for training.
    """
    exc, vxc, _ = _exc_vxc_rho(ctx, functional, dm, create_graph)
    return exc, vxc


class XCKernel:
    """The XC response kernel f_xc of a functional at a fixed density D0.

    ``kernel(dD)`` returns f_xc[D0](dD) for one or a batch of response density matrices.

    Args:
        ctx: molecule context.
        functional: any dixc functional.
        dm0: ``(nao, nao)`` reference density matrix (treated as a constant).
        create_graph: keep the graph through the functional (training: the result is then
            differentiable w.r.t. the functional's parameters).
        probe_chunk: nonlocal functionals under ``create_graph``: response densities whose
            graphs are rebuilt together in the parameter backward (None: all at once). Peak
            memory is the first-order graph plus ``probe_chunk`` products; the first-order graph
            is traversed once per chunk (:class:`_FxcRecompute`). Unused by EG-XC on grids
            above ``SEAM_MIN_POINTS`` (its backward is chunked by points, all probes at once).
        dm1: ``(B, nao, nao)`` response densities known up front (training's Hessian probes):
            ``kernel.fxc1`` is then f_xc[D0](dm1). For a nonlocal functional under
            ``create_graph`` E_xc, V_xc and these products come from one evaluation of the
            functional, in the forward and in the recomputed backward, instead of two.

    Attributes:
        exc0: E_xc[D0] (0-d); ``wv0``: dE_xc/d rho at D0; ``dm1`` (detached) and ``fxc1``:
            the response densities given and f_xc[D0](dm1), or None.
    """

    def __init__(
        self,
        ctx: MolContext,
        functional: XCFunctional,
        dm0: torch.Tensor,
        create_graph: bool = False,
        probe_chunk: int | None = 1,
        dm1: torch.Tensor | None = None,
    ) -> None:
        self.fxc1: torch.Tensor | None = None
        self.dm1 = None if dm1 is None else dm1.detach()
        self._setup(ctx, functional, dm0, create_graph, probe_chunk, dm1)
        if dm1 is not None and self.fxc1 is None:
            self.fxc1 = self(dm1)

    def _setup(self, ctx, functional, dm0, create_graph, probe_chunk, dm1) -> None:
        self.ctx, self.functional, self.create_graph = ctx, functional, create_graph
        self.probe_chunk = probe_chunk
        self.xctype = functional.xctype
        self._hess: torch.Tensor | None = None
        self._ncalls = 0
        rho0 = ctx.eval_rho(dm0.detach(), self.xctype).detach()
        self._chunked = functional.is_local and not create_graph
        if self._chunked:
            # No graph kept: chunked and memory-bounded; the feature Hessian is built on demand.
            self.exc0, self._g, _ = _local_derivs(functional, rho0, ctx.grid.weights, False)
            self.rho0 = rho0
            return
        if functional.is_local:  # training: feature Hessian with a recomputed graph
            nf = functional.nfeat
            with torch.enable_grad():
                exc, g, hess = _local_xc_graph(functional, rho0[:nf], ctx.grid.weights, True)
            if nf != rho0.shape[0]:
                g = torch.cat([g, g.new_zeros(rho0.shape[0] - nf, g.shape[-1])])
                hess = torch.nn.functional.pad(hess, (0, 0, 0, rho0.shape[0] - nf,
                                                      0, rho0.shape[0] - nf))  # fmt: skip
            self.rho0, self.exc0, self._g, self._hess = rho0, exc, g, hess
            return
        if create_graph:  # training, nonlocal: graphs recomputed in the parameter backward
            self._params = [p for p in functional.parameters() if p.requires_grad]
            self.rho0 = rho0
            with torch.enable_grad():
                if dm1 is None:
                    self.exc0, self._g = _XCRecompute.apply(functional, ctx.grid, rho0,
                                                            *self._params)  # fmt: skip
                else:  # E_xc, V_xc and f_xc[dm1] from one (recomputed) graph
                    rho1 = ctx.eval_rho(dm1, self.xctype)
                    self.exc0, self._g, w1 = _FxcRecompute.apply(
                        functional, ctx.grid, probe_chunk, rho0, rho1, *self._params
                    )
                    _check_finite(w1, "f_xc", ctx)
                    self.fxc1 = ctx.contract_vxc(w1, self.xctype)
            _check_finite(self.exc0, "E_xc", ctx)
            return
        with torch.enable_grad():
            rho0.requires_grad_(True)
            exc = functional(rho0, ctx.grid)
            (g,) = torch.autograd.grad(exc, rho0, create_graph=True)
        self.rho0, self.exc0, self._g = rho0, exc.detach(), g

    @property
    def wv0(self) -> torch.Tensor:
        """``(nfeat, ngrid)`` first-order weights dE_xc/d rho at D0."""
        return self._g if self.create_graph else self._g.detach()

    def _build_hessian(self) -> torch.Tensor:
        """Per-point feature Hessian ``(nfeat, nfeat, ngrid)`` (grid weights included)."""
        if self._hess is None and self._chunked:
            w = self.ctx.grid.weights
            _, _, self._hess = _local_derivs(self.functional, self.rho0, w, True)
            _check_finite(self._hess, "f_xc", self.ctx)
        if self._hess is None:
            rows = []
            with torch.enable_grad():
                for k in range(self.rho0.shape[0]):
                    (hk,) = torch.autograd.grad(
                        self._g[k].sum(), self.rho0, retain_graph=True,
                        create_graph=self.create_graph,
                    )  # fmt: skip
                    rows.append(hk)
            hess = torch.stack(rows)
            _check_finite(hess, "f_xc", self.ctx)
            self._hess = hess if self.create_graph else hess.detach()
        return self._hess

    def weights(self, rho1: torch.Tensor) -> torch.Tensor:
        """Second-order weights ``((B,) nfeat, ngrid)`` = (d^2 E_xc/d rho^2) rho1.

        Local functionals: from the per-point feature Hessian (``hessian_passes`` backward
        passes, built on the first use with B at least that many or on the second use, then
        cached), one einsum for any batch. Otherwise (nonlocal, or a first small batch): one
        vector-Jacobian product per density.
        """
        batched = rho1.dim() == 3
        nb = rho1.shape[0] if batched else 1
        self._ncalls += 1
        passes = hessian_passes(self.functional, self.rho0.shape[-2])
        use_hess = self._hess is not None or self._ncalls > 1 or nb >= passes
        if self.functional.is_local and use_hess:
            # w1[b,k,g] = sum_l H[k,l,g] rho1[b,l,g]
            return torch.einsum("klg,...lg->...kg", self._build_hessian(), rho1)
        r1 = rho1 if batched else rho1[None]
        if self.create_graph and not self.functional.is_local:
            with torch.enable_grad():
                _, _, w1 = _FxcRecompute.apply(self.functional, self.ctx.grid, self.probe_chunk,
                                               self.rho0, r1, *self._params)  # fmt: skip
            _check_finite(w1, "f_xc", self.ctx)
            return w1 if batched else w1[0]
        if self._chunked:  # one forward-over-backward per chunk, no graph kept
            w1 = torch.empty_like(r1)
            wts = self.ctx.grid.weights
            for sl in self.functional.point_slices(r1.shape[-1], r1.device):
                with torch.enable_grad():
                    r = self.rho0[:, sl].detach().requires_grad_(True)
                    e = self.functional.energy_density(r) @ wts[sl]
                    (g,) = torch.autograd.grad(e, r, create_graph=True)
                    for i in range(nb):
                        (wi,) = torch.autograd.grad(g, r, r1[i, :, sl], retain_graph=True)
                        w1[i, :, sl] = wi
            _check_finite(w1, "f_xc", self.ctx)
            return w1 if batched else w1[0]
        out = []
        with torch.enable_grad():
            for b in range(nb):
                (w,) = torch.autograd.grad(
                    self._g, self.rho0, r1[b], retain_graph=True, create_graph=self.create_graph
                )
                out.append(w)
        w1 = torch.stack(out)
        _check_finite(w1, "f_xc", self.ctx)
        return w1 if batched else w1[0]

    def __call__(self, dm1: torch.Tensor) -> torch.Tensor:
        """f_xc[D0](dm1) for ``dm1`` ``((B,) nao, nao)``; returns ``((B,) nao, nao)``."""
        rho1 = self.ctx.eval_rho(dm1, self.xctype)
        return self.ctx.contract_vxc(self.weights(rho1), self.xctype)
