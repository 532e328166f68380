"""A generic local meta-GGA MLP functional: the simplest learnable dixc functional.

e_xc(r) = e_x^LDA(rho) F_theta(x(r)) with dimensionless, bounded inputs
    x = ( log(rho^(1/3) + eps),  log1p(s^2),  (alpha - 1) / (alpha + 1) ... )
where s is the reduced gradient and alpha = (tau - tau_W) / tau_unif the meta-GGA indicator
(clamped >= 0). F = 1 + tanh-free smooth MLP output; at initialisation the last layer is zero, so
the functional starts as Slater exchange exactly. Points with rho below ``rho_min`` contribute 0
with zero derivatives (double-``where`` masking keeps first and second derivatives finite).
Used by the engine's tests and benchmarks; the literature's architectures live next to it.
"""

from __future__ import annotations

import math

import torch

from dixc.functionals import register
from dixc.functionals.base import XCFunctional

C_X = 0.75 * (3.0 / math.pi) ** (1.0 / 3.0)  # e_x^LDA = -C_X rho^(4/3)
C_S = 2.0 * (3.0 * math.pi**2) ** (1.0 / 3.0)  # s = |grad rho| / (C_S rho^(4/3))
C_TAU = 0.3 * (3.0 * math.pi**2) ** (2.0 / 3.0)  # tau_unif = C_TAU rho^(5/3)


@register("mlp_mgga")
class MLPmGGA(XCFunctional):
    """Local meta-GGA enhancement-factor MLP over LDA exchange.

    Args:
        hidden: width of each hidden layer.
        depth: number of hidden layers.
        rho_min: density below which a point contributes nothing (electrons / Bohr^3).
        dtype: parameter dtype (float64 by default).
    """

    xctype = "MGGA"
    is_local = True
    rotation_invariant = True

    def __init__(
        self,
        hidden: int = 64,
        depth: int = 3,
        rho_min: float = 1e-10,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        self.rho_min = rho_min
        layers: list[torch.nn.Module] = []
        width = 3
        for _ in range(depth):
            layers += [torch.nn.Linear(width, hidden, dtype=dtype), torch.nn.SiLU()]
            width = hidden
        last = torch.nn.Linear(width, 1, dtype=dtype)
        torch.nn.init.zeros_(last.weight)
        torch.nn.init.zeros_(last.bias)
        self.net = torch.nn.Sequential(*layers, last)

    def features(self, rho: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (mask ``((B,) ngrid)``, inputs ``((B,) ngrid, 3)``), finite everywhere."""
        n = rho[..., 0, :]
        mask = n > self.rho_min
        ns = torch.where(mask, n, torch.ones_like(n))
        sigma = (rho[..., 1:4, :] ** 2).sum(-2)
        s2 = sigma / (C_S**2 * ns ** (8.0 / 3.0))
        tau_w = sigma / (8.0 * ns)
        alpha = torch.clamp(rho[..., 4, :] - tau_w, min=0.0) / (C_TAU * ns ** (5.0 / 3.0))
        x = torch.stack(
            [torch.log(ns ** (1.0 / 3.0) + 1e-4), torch.log1p(s2), (alpha - 1.0) / (alpha + 1.0)],
            dim=-1,
        )
        return mask, x

    def energy_density(self, rho: torch.Tensor, grid=None) -> torch.Tensor:
        mask, x = self.features(rho)
        n = torch.where(mask, rho[..., 0, :], torch.ones_like(mask, dtype=rho.dtype))
        enh = 1.0 + self.net(x)[..., 0]
        return torch.where(mask, -C_X * n ** (4.0 / 3.0) * enh, torch.zeros_like(n))
