"""The one interface every dixc XC functional implements.

A functional is a ``torch.nn.Module`` that maps closed-shell (spin-summed) grid features to an XC
energy. Features use the ops' layout, ``((B,) nfeat, ngrid)`` with rows
``rho, d_x rho, d_y rho, d_z rho, tau`` (tau = 1/2 sum_i n_i |grad phi_i|^2) and
nfeat = 1, 4, 5 for ``xctype`` = 'LDA', 'GGA', 'MGGA'. V_xc and the response kernel f_xc are never
written by hand: they follow by autograd through ``dixc.ops.eval_rho`` / ``contract_vxc``.

Contract for implementations:
    * ``energy_density(rho, grid)`` returns e_xc(r) = rho(r) eps_xc(r), energy per volume
      (Hartree / Bohr^3), shape ``((B,) ngrid)``. It must be finite, with finite first and second
      derivatives w.r.t. ``rho``, for every input including rho = 0 and grad rho = 0 exactly (the
      Hessian loss differentiates it twice).
    * ``xctype`` names the features it reads; ``is_local`` says whether e_xc(r) depends on the
      features at r only (then the per-point Hessian is block diagonal, which the engine exploits
      for batched Hessian-vector products). Nonlocal functionals read ``grid.coords``,
      ``grid.atom_coords`` and ``grid.atom_charges``.
    * ``forward(rho, grid)`` = sum_g w_g e_xc(r_g): the XC energy (Hartree), shape ``((B,))``.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch

from dixc.grid import Grid

NFEAT = {"LDA": 1, "GGA": 4, "MGGA": 5}
# Chunks of grid points for local functionals' derivatives: at most POINT_CHUNK_MAX points, and on
# a CPU about CACHE_POINTS_WIDTH / (widest layer) (one float64 activation of 4 MB).
POINT_CHUNK_MAX = 32768
POINT_CHUNK_MIN = 1024
CACHE_POINTS_WIDTH = 2**19


def grads_or_zeros(
    y: torch.Tensor | list[torch.Tensor],
    inputs: list[torch.Tensor],
    grad_outputs: list[torch.Tensor] | tuple[torch.Tensor, ...] | None = None,
    none: bool = False,
) -> tuple[torch.Tensor | None, ...]:
    """dy/dx for each x of ``inputs`` (detached; zeros, or None with ``none``, where x does not
    require grad or y does not depend on it). ``y`` may be a list with ``grad_outputs``."""
    wanted = [t for t in inputs if t.requires_grad]
    got = iter(torch.autograd.grad(y, wanted, grad_outputs, allow_unused=True) if wanted else ())
    out = []
    for t in inputs:
        g = next(got) if t.requires_grad else None
        out.append((None if none else torch.zeros_like(t)) if g is None else g.detach())
    return tuple(out)


def accumulate_grads(acc: list, slots, grads) -> None:
    """``acc[slot] += grad`` for each (slot, grad) pair; None grads skipped, empty slots set."""
    for k, g in zip(slots, grads, strict=True):
        if g is not None:
            acc[k] = g if acc[k] is None else acc[k] + g


class XCFunctional(torch.nn.Module):
    """Base class: subclasses set ``xctype`` (and ``is_local``) and implement ``energy_density``."""

    xctype: str = "LDA"
    is_local: bool = True
    #: e_xc depends on grad rho only through sigma = |grad rho|^2 (rotation invariance, true of
    #: every semilocal functional dixc ships): the per-point Hessian then needs 2 (GGA) / 3 (MGGA)
    #: backward passes instead of 4 / 5 (``dixc.xc.feature_hessian``). False: one per feature row.
    rotation_invariant: bool = False
    #: registry name (set by ``dixc.functionals.register``); ``save`` writes it into the file.
    arch_name: str | None = None
    #: constructor arguments (defaults filled in) of the outermost ``__init__``, recorded
    #: automatically so that ``dixc.functionals.save`` / ``load`` can rebuild the module.
    config: dict[str, Any]

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" not in cls.__dict__:
            return
        init = cls.__dict__["__init__"]
        signature = inspect.signature(init)

        @functools.wraps(init)
        def recording_init(self, *args, **kw):
            init(self, *args, **kw)
            bound = signature.bind(self, *args, **kw)
            bound.apply_defaults()
            cfg = dict(bound.arguments)
            cfg.pop("self")
            for name, p in signature.parameters.items():
                if p.kind is inspect.Parameter.VAR_KEYWORD:
                    cfg.update(cfg.pop(name))
                elif p.kind is inspect.Parameter.VAR_POSITIONAL:
                    cfg.pop(name)
            # the outermost __init__ finishes last, so its arguments win
            object.__setattr__(self, "config", cfg)

        cls.__init__ = recording_init

    @property
    def nfeat(self) -> int:
        """Number of feature rows read: 1 (LDA), 4 (GGA), 5 (MGGA)."""
        return NFEAT[self.xctype]

    def chunk_points(self, device: torch.device | str = "cpu") -> int:
        """Grid points per chunk when a local functional's derivatives are taken chunk by chunk.

        On a CPU a per-point network is fastest when one layer's activations (points x width,
        float64) stay near the cache: ``CACHE_POINTS_WIDTH`` / (widest ``Linear`` layer) points,
        rounded down to a power of two, within [``POINT_CHUNK_MIN``, ``POINT_CHUNK_MAX``]
        (ethanol's 101k-point grid, 2 cores: a 4 x 320 SiLU MLP takes V_xc 1.9x and a
        Hessian-vector product 2.5x faster in chunks of 1024 points than of 32768, the 4 x 64
        default ~1.1x in chunks of 8192). Functionals without ``Linear`` layers (fewer, larger
        chunks save Python and autograd overhead), and every functional on CUDA:
        ``POINT_CHUNK_MAX``.
        """
        width = max(
            (m.out_features for m in self.modules() if isinstance(m, torch.nn.Linear)), default=0
        )
        if torch.device(device).type != "cpu" or width == 0:
            return POINT_CHUNK_MAX
        chunk = 1 << max(0, (CACHE_POINTS_WIDTH // width).bit_length() - 1)
        return min(POINT_CHUNK_MAX, max(POINT_CHUNK_MIN, chunk))

    def point_slices(
        self, n: int, device: torch.device | str = "cpu", limit: int | None = None
    ) -> list[slice]:
        """Consecutive slices covering ``n`` grid points, ``chunk_points(device)`` at a time (at
        most ``limit``, where the caller's autograd graph per point bounds the memory)."""
        size = self.chunk_points(device)
        size = size if limit is None else min(size, limit)
        return [slice(a, min(a + size, n)) for a in range(0, n, size)]

    def energy_density(self, rho: torch.Tensor, grid: Grid | None = None) -> torch.Tensor:
        """XC energy per volume e_xc = rho eps_xc.

        Args:
            rho: ``((B,) nfeat, ngrid)`` features (float64 by default).
            grid: the integration grid (needed by nonlocal functionals only).

        Returns:
            ``((B,) ngrid)`` in Hartree / Bohr^3.
        """
        raise NotImplementedError

    def forward(self, rho: torch.Tensor, grid: Grid) -> torch.Tensor:
        """XC energy E_xc = sum_g w_g e_xc(r_g).

        Args:
            rho: ``((B,) nfeat, ngrid)`` features.
            grid: integration grid; its ``weights`` ``(ngrid,)`` are used.

        Returns:
            ``((B,))`` E_xc in Hartree.
        """
        if rho.shape[-2] < self.nfeat:
            raise ValueError(
                f"dixc: {type(self).__name__} is {self.xctype} and needs {self.nfeat} feature "
                f"rows, got rho of shape {tuple(rho.shape)}"
            )
        exc = self.energy_density(rho[..., : self.nfeat, :], grid)
        return exc @ grid.weights.to(exc.dtype)

    def extra_repr(self) -> str:
        return f"xctype={self.xctype}, local={self.is_local}"


def check_features(rho: torch.Tensor, nfeat: int, name: str) -> None:
    """Raises a clear error when ``rho`` has fewer than ``nfeat`` feature rows."""
    if rho.dim() < 2 or rho.shape[-2] < nfeat:
        raise ValueError(
            f"dixc: {name} needs features of shape ((B,) {nfeat}+, ngrid), got {tuple(rho.shape)}"
        )
