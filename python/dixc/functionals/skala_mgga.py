"""Skala-mGGA: the local (semi-local meta-GGA) branch of Microsoft's Skala functional.

G. Luise et al., "Accurate and scalable exchange-correlation with deep learning" (Microsoft
Research, 2025, arXiv:2506.14665); reference implementation: the open-source ``skala`` package
(``SkalaFunctional``: ``SemiLocalFeatures``, ``input_model``, ``output_model``, ``ScaledSigmoid``,
``enhancement_density_inner_product``).

The Skala model, per grid point:
    1. Seven semi-local features of the spin densities, log-transformed:
           f = ln(|(n_a, n_b, |grad n_a|^2, |grad n_b|^2, tau_a, tau_b, |grad n|^2)| + 1e-5).
    2. Spin symmetrisation: the input model (Linear 7 -> 256, SiLU, Linear 256 -> 256, SiLU) is
       applied to f and to its spin-swapped copy (a <-> b) and the two results are averaged.
    3. Skala's nonlocal layers (coarse-grained equivariant message passing over atom-centred
       points) would act here; this module is the model without them.
    4. The output model: (Linear 256 -> 256, SiLU) x ``n_output_layers`` (1 in Skala, whose three
       mid layers are two nonlocal + one local), Linear 256 -> 1, then a scaled sigmoid
       F = 2 sigmoid(z / 2), so the enhancement is bounded in (0, 2).
    5. e_xc = -2^(1/3) (3/4) (3/pi)^(1/3) (n_a^(4/3) + n_b^(4/3)) F: LDA exchange of the spin
       densities times F (the exchange-correlation enhancement over LDA exchange).

Here (closed shell): n_a = n_b = n/2, |grad n_a|^2 = sigma/4, tau_a = tau/2 and the spin-swapped
features equal the features, so the symmetrised average (h + h)/2 = h is computed once (the same
value, bit for bit). Step 5's prefactor is Slater exchange of n, -(3/4)(3/pi)^(1/3) n^(4/3), taken
from dixc's classical ``SlaterExchange``.

Differences from the reference code, and why:
    * The output layer is zero-initialised (Skala: Xavier-uniform like the other layers, which keep
      Skala's Xavier-uniform weights and zero biases here), so z = 0, F = 2 sigmoid(0) = 1 and at
      construction the functional is Slater exchange exactly (libxc LDA_X; no correlation). That
      is the physical starting point a distillation needs; Skala itself is trained from scratch.
    * ln(|x| + 1e-5) becomes ln(x + 1e-5): the density and gradient features are non-negative
      by construction (n > ``rho_min``, sums of squares), and |x| has a kink at 0 whose second
      derivative autograd gets wrong at grad n = 0 exactly (d^2 |sigma| / d (grad n)^2 evaluates
      to 0 there, not 2). Only tau can be negative (round-off; a perturbed density matrix): its
      logarithm is continued below 0 by a C^3 polynomial (``shifted_log``). Identical for every
      physical input.
    * Points with n <= ``rho_min`` contribute 0 with zero derivatives (Skala clips the density
      at 0 and relies on the integrator's screening), so second derivatives stay finite at n -> 0.

Parameters: 7 h + h + (h^2 + h) + n_output_layers (h^2 + h) + h + 1 (133889 for h = 256 and one
output layer).
"""

from __future__ import annotations

import torch

from dixc.functionals import register
from dixc.functionals.base import XCFunctional
from dixc.functionals.classical import SlaterExchange
from dixc.functionals.nnmgga import masked_invariants, shifted_log
from dixc.grid import Grid

Tensor = torch.Tensor

__all__ = ["SkalaMGGA"]


@register("skala_mgga")
class SkalaMGGA(XCFunctional):
    """Skala's semi-local branch: e_xc = e_x^Slater(n) 2 sigmoid(z / 2) (module docstring).

    Args:
        hidden: width of every hidden layer (256 in Skala).
        n_output_layers: hidden (Linear + SiLU) layers of the output model (1 in Skala).
        feature_eps: shift of the logarithmic features (1e-5 in Skala).
        rho_min: density (electrons / Bohr^3) at or below which a point contributes nothing.
        dtype: parameter dtype.
    """

    xctype = "MGGA"
    is_local = True
    rotation_invariant = True

    def __init__(
        self,
        hidden: int = 256,
        n_output_layers: int = 1,
        feature_eps: float = 1e-5,
        rho_min: float = 1e-10,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        if hidden < 1 or n_output_layers < 0:
            raise ValueError(f"dixc: SkalaMGGA needs hidden >= 1 and n_output_layers >= 0, got "
                             f"{hidden}, {n_output_layers}")  # fmt: skip
        if not feature_eps > 0.0 or not rho_min > 0.0:
            raise ValueError(f"dixc: SkalaMGGA needs feature_eps > 0 and rho_min > 0, got "
                             f"{feature_eps}, {rho_min}")  # fmt: skip
        self.feature_eps = float(feature_eps)
        self.rho_min = float(rho_min)
        self._slater = SlaterExchange()
        lin = torch.nn.Linear
        self.input_model = torch.nn.Sequential(
            lin(7, hidden, dtype=dtype),
            torch.nn.SiLU(),
            lin(hidden, hidden, dtype=dtype),
            torch.nn.SiLU(),
        )
        layers: list[torch.nn.Module] = []
        for _ in range(n_output_layers):
            layers += [lin(hidden, hidden, dtype=dtype), torch.nn.SiLU()]
        layers.append(lin(hidden, 1, dtype=dtype))
        self.output_model = torch.nn.Sequential(*layers)
        for m in (*self.input_model, *self.output_model):
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.xavier_uniform_(m.weight)
                torch.nn.init.zeros_(m.bias)
        torch.nn.init.zeros_(self.output_model[-1].weight)

    def features(self, n: Tensor, sigma: Tensor, tau: Tensor) -> Tensor:
        """Skala's seven log features ``(..., 7)`` from safe closed-shell invariants ``(...)``."""
        # Closed shell: n_a = n_b = n/2, |grad n_s|^2 = sigma/4, tau_a = tau_b = tau/2; the
        # features order is (n_a, n_b, |grad n_a|^2, |grad n_b|^2, tau_a, tau_b, |grad n|^2).
        eps = self.feature_eps
        f_n = torch.log(0.5 * n + eps)
        f_g = torch.log(0.25 * sigma + eps)
        f_t = shifted_log(0.5 * tau, eps)  # tau may be < 0 by round-off
        f_s = torch.log(sigma + eps)
        return torch.stack([f_n, f_n, f_g, f_g, f_t, f_t, f_s], dim=-1)

    def enhancement(self, rho: Tensor) -> tuple[Tensor, Tensor]:
        """``(mask, F)``, ``((B,) ngrid)`` each, F = 2 sigmoid(z / 2) in (0, 2)."""
        mask, n, sigma, tau = masked_invariants(rho, self.rho_min, "SkalaMGGA")
        return mask, self._enhancement(n, sigma, tau)

    def _enhancement(self, n: Tensor, sigma: Tensor, tau: Tensor) -> Tensor:
        x = self.features(n, sigma, tau).to(self.input_model[0].weight.dtype)
        h = self.input_model(x)  # = (h_ab + h_ba) / 2 at n_a = n_b
        z = self.output_model(h)[..., 0].to(n.dtype)
        return 2.0 * torch.sigmoid(0.5 * z)

    def energy_density(self, rho: Tensor, grid: Grid | None = None) -> Tensor:
        """e_xc = e_x^Slater(n) F.

        Args:
            rho: ``((B,) 5, ngrid)`` features (n, grad n, tau).
            grid: unused (local functional).

        Returns:
            ``((B,) ngrid)`` Hartree / Bohr^3; 0 where n <= ``rho_min``.
        """
        mask, n, sigma, tau = masked_invariants(rho, self.rho_min, "SkalaMGGA")
        e = self._slater.energy_density_ns(n) * self._enhancement(n, sigma, tau)
        return torch.where(mask, e, 0.0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rho_min={self.rho_min:g}"
