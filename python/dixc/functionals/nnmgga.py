"""NNmGGA: the local meta-GGA neural functional of Nagai, Akashi and Sugino (2020).

R. Nagai, R. Akashi, O. Sugino, "Completing density functional theory by machine learning hidden
messages from molecules", npj Comput. Mater. 6, 43 (2020); reference code and weights:
github.com/ml-electron-project/NNfunctional (``metaGGA.py``, weights file ``NNmGGA``).

What is taken from the original:
    * Inputs: the four local descriptors n^(1/3), the spin factor d_x(zeta) = ((1+zeta)^(4/3) +
      (1-zeta)^(4/3))/2, the reduced gradient and tau over its uniform-gas value, each passed
      through a logarithm before the network.
    * Network: fully connected, 100 nodes, ELU after every hidden layer; three hidden layers plus
      the output layer (four linear layers, fc1..fc4 of the published ``metaGGA.py``, so
      ``depth=3`` hidden layers here). The published output is ``1 + ELU(fc4(h))`` (ELU on the
      output too), which keeps the enhancement positive: eps_xc has the sign of its prefactor.
    * Output form: eps_xc = eps_base(n, zeta) * (1 + act(z)), the XC energy per electron as an
      enhancement over a uniform-gas prefactor.

What differs, and why:
    * Baseline. The original prefactor is -n^(1/3) d_x(zeta), i.e. Slater exchange divided by
      C_X = (3/4)(3/pi)^(1/3) (a step-0 model 1.35x Slater exchange, not a physical functional).
      Here the prefactor is a classical functional, ``baseline='lda'`` (default: Slater exchange +
      PW92 correlation, libxc 1 + 12) or ``baseline='slater'`` (Slater exchange). Both are <= 0 and
      depend on n only: their ratio to -n^(4/3) is a positive function of n, itself an input, so
      both output forms describe the same functions (-n^(4/3) times a positive function of the
      inputs). The parametrisation and, above all, the starting point change; distillation needs
      the latter to be physical.
    * Zero-initialised output layer, so 1 + act(0) = 1: at construction the functional equals
      its baseline exactly (``lda``: the PySCF/libxc "LDA,PW" functional; see Screening).
    * Input regularisation. The original adds 1e-7 to n, |grad n| and tau before the logarithms,
      an absolute shift whose size in reduced units grows like n^(-4/3) (it erases the gradient
      information in density tails); |grad n| = sqrt(sigma) alone would have an infinite second
      derivative at sigma = 0 (the published ``eval_xc`` also adds 1e-7 to sigma). Here, with
      reduced variables
      s = |grad n| / (2 (3 pi^2)^(1/3) n^(4/3)) and t = tau / tau_unif (tau_unif = (3/10)
      (3 pi^2)^(2/3) n^(5/3)), the inputs are
          x = ( ln n^(1/3),  ln d_x(0) = 0,  ln sqrt(s^2 + eps^2),  ln(t + eps) ),  eps = log_eps,
      smooth in (n, grad n, tau) with bounded derivatives at grad n = 0 and tau = 0. eps = 1e-3
      keeps the resolved range of s and t (1e-3 .. 1e3 covers molecular densities) while bounding
      the curvature the logarithms add at s = 0 and t = 0 (d^2/ds^2 = 1/eps^2 there), which
      enters V_xc and f_xc at bond critical points and in one-electron regions. The original
      feeds |grad n| / n^(4/3) and tau / (n^(5/3) d_s(zeta)) (d_s(0) = 2), which differ from s and
      t by constant factors, i.e. by a shift of ln absorbed in the first layer's bias.
    * Closed shell only: zeta = 0, so the spin input is the constant ln d_x(0) = 0 (kept so that
      the first layer has the original's four inputs).
    * Activation (``activation``). ELU is only C^1: e_xc's second derivative jumps wherever a
      pre-activation crosses 0, so the Hessian (the DI-loss target) is discontinuous in the
      density and in the weights, and finite-difference checks of Hessian-vector products only
      converge to first order (measured: 4.7e-7 relative at step 1e-4 on water, against 7e-10
      with a smooth activation). The default is therefore a smooth ELU with ELU's asymptotes,
          act(x) = softplus(x + ln(e - 1)) - 1   (0 at 0, -> -1 as x -> -inf, ~ x - 0.46 as
      x -> +inf, C-infinity), used in the hidden layers and in the output 1 + act(z) =
      softplus(z + ln(e - 1)) (> 0, = 1 at z = 0). ``activation='elu'`` is the published network
      exactly (hidden ELU, output 1 + ELU(z)).

Screening: points with n <= ``rho_min`` contribute 0 with zero derivatives (double ``where``),
so values and first and second derivatives are finite everywhere, including n = 0, grad n = 0,
tau = 0 and tau < tau_W. The classical baseline screens at libxc's n ~ 1e-15 instead; between the
two, |e_xc^LDA| < 1e-13 Hartree/Bohr^3 per point.

This module also holds the small helpers the dixc local architectures share
(:func:`masked_invariants`, :func:`shifted_log`, :func:`mlp`).
"""

from __future__ import annotations

import math

import torch

from dixc.functionals import register
from dixc.functionals.base import XCFunctional, check_features
from dixc.functionals.classical import PW92Correlation, SlaterExchange
from dixc.grid import Grid

Tensor = torch.Tensor

__all__ = ["C_S", "C_TAU", "NNmGGA", "SmoothELU", "masked_invariants", "mlp", "shifted_log"]

C_S = 2.0 * (3.0 * math.pi**2) ** (1.0 / 3.0)  # s = |grad n| / (C_S n^(4/3))
C_TAU = 0.3 * (3.0 * math.pi**2) ** (2.0 / 3.0)  # tau_unif = C_TAU n^(5/3)


# --------------------------------------------------------------------------- shared helpers


def masked_invariants(
    rho: Tensor, rho_min: float, name: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Screening mask and safe closed-shell invariants of meta-GGA features.

    Args:
        rho: ``((B,) 5+, ngrid)`` features (n, d_x n, d_y n, d_z n, tau).
        rho_min: points with n <= rho_min are screened.
        name: functional name for the error message.

    Returns:
        ``(mask, n, sigma, tau)``, each ``((B,) ngrid)``: ``mask`` is True where n > rho_min;
        at screened points n = 1, sigma = 0, tau = tau_unif(1) (a uniform gas) replace the inputs
        *before* any nonlinear operation, so every downstream value and derivative is finite and
        the derivatives w.r.t. the screened inputs are exactly 0 (the double-``where`` rule).
    """
    check_features(rho, 5, name)
    n = rho[..., 0, :]
    mask = n > rho_min
    grad = rho[..., 1:4, :]
    sigma = (grad * grad).sum(dim=-2)  # sigma = |grad n|^2
    n = torch.where(mask, n, 1.0)
    sigma = torch.where(mask, sigma, 0.0)
    tau = torch.where(mask, rho[..., 4, :], C_TAU)
    return mask, n, sigma, tau


def shifted_log(x: Tensor, eps: float) -> Tensor:
    """ln(x + eps) for x >= 0, continued below 0 smoothly and finitely.

    For x < 0 (only from round-off, e.g. tau of a slightly non-positive density matrix) the
    logarithm is replaced by its third-order Taylor polynomial at x = 0, ln(eps) + u - u^2/2 +
    u^3/3 with u = x / eps (increasing), clamped at u = -1: value and first three derivatives are
    continuous at x = 0 (so central differences across 0 stay second-order accurate) and all are
    finite for every x (a kink only at x = -eps, far outside physical inputs).

    Args:
        x: any tensor.
        eps: shift, > 0.

    Returns:
        Tensor of x's shape.
    """
    pos = x >= 0.0
    xp = torch.where(pos, x, 0.0)
    u = torch.where(pos, 0.0, x / eps).clamp(min=-1.0)
    return torch.where(pos, torch.log(xp + eps), math.log(eps) + u * (1.0 + u * (u / 3.0 - 0.5)))


def mlp(
    n_in: int,
    hidden: int,
    depth: int,
    activation: type[torch.nn.Module],
    dtype: torch.dtype,
    zero_last: bool = True,
) -> torch.nn.Sequential:
    """``depth`` hidden layers of width ``hidden`` (Linear + activation) and a Linear output of 1.

    The output layer is zero-initialised when ``zero_last`` (the network then returns exactly 0).
    """
    if depth < 1 or hidden < 1:
        raise ValueError(f"dixc: an MLP needs depth >= 1 and hidden >= 1, got {depth}, {hidden}")
    layers: list[torch.nn.Module] = []
    width = n_in
    for _ in range(depth):
        layers += [torch.nn.Linear(width, hidden, dtype=dtype), activation()]
        width = hidden
    last = torch.nn.Linear(width, 1, dtype=dtype)
    if zero_last:
        torch.nn.init.zeros_(last.weight)
        torch.nn.init.zeros_(last.bias)
    layers.append(last)
    return torch.nn.Sequential(*layers)


# --------------------------------------------------------------------------- NNmGGA

_BASELINES = ("lda", "slater")


_SOFTPLUS_ONE = math.log(math.e - 1.0)  # softplus(_SOFTPLUS_ONE) = 1
_SOFTPLUS_LINEAR = 40.0  # softplus(y) = y beyond (e^-40 is below double-precision rounding)


def _softplus(y: Tensor) -> Tensor:
    return torch.nn.functional.softplus(y, beta=1.0, threshold=_SOFTPLUS_LINEAR)


class SmoothELU(torch.nn.Module):
    """softplus(x + ln(e - 1)) - 1: ELU's asymptotes (-1 at -inf, slope 1 at +inf), 0 at 0."""

    def forward(self, x: Tensor) -> Tensor:
        return _softplus(x + _SOFTPLUS_ONE) - 1.0


_ACTIVATIONS: dict[str, type[torch.nn.Module]] = {"smooth_elu": SmoothELU, "elu": torch.nn.ELU}


@register("nnmgga")
class NNmGGA(XCFunctional):
    """Nagai-Akashi-Sugino local meta-GGA network: e_xc = e_base(n) (1 + act(z(x))).

    At construction (zero output layer) e_xc = e_base exactly: Slater exchange + PW92
    correlation (``baseline='lda'``, PySCF "LDA,PW") or Slater exchange (``'slater'``).
    Parameters: 4 h + h + (depth - 1)(h^2 + h) + h + 1 (20801 for the defaults).

    Args:
        hidden: width of the hidden layers (100 in the paper).
        depth: number of hidden layers (3 in the paper, plus the output layer).
        baseline: ``'lda'`` or ``'slater'``, the classical prefactor (module docstring).
        log_eps: regulariser of the logarithmic s and tau / tau_unif inputs.
        activation: ``'smooth_elu'`` (default, C-infinity) or ``'elu'`` (the published network,
            C^1 only; module docstring).
        rho_min: density (electrons / Bohr^3) at or below which a point contributes nothing.
        dtype: parameter dtype.
    """

    xctype = "MGGA"
    is_local = True
    rotation_invariant = True

    def __init__(
        self,
        hidden: int = 100,
        depth: int = 3,
        baseline: str = "lda",
        log_eps: float = 1e-3,
        activation: str = "smooth_elu",
        rho_min: float = 1e-10,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        if baseline not in _BASELINES:
            raise ValueError(f"dixc: NNmGGA baseline must be one of {_BASELINES}, got {baseline!r}")
        if not log_eps > 0.0 or not rho_min > 0.0:
            raise ValueError(f"dixc: NNmGGA needs log_eps > 0 and rho_min > 0, got {log_eps}, "
                             f"{rho_min}")  # fmt: skip
        if activation not in _ACTIVATIONS:
            raise ValueError(f"dixc: NNmGGA activation must be one of {sorted(_ACTIVATIONS)}, "
                             f"got {activation!r}")  # fmt: skip
        self.baseline = baseline
        self.activation = activation
        self.log_eps = float(log_eps)
        self.rho_min = float(rho_min)
        self._slater = SlaterExchange()
        self._pw92 = PW92Correlation() if baseline == "lda" else None
        self.net = mlp(4, hidden, depth, _ACTIVATIONS[activation], dtype)

    def inputs(self, n: Tensor, sigma: Tensor, tau: Tensor) -> Tensor:
        """Network inputs ``(..., 4)`` from safe invariants ``(...)`` (n > 0)."""
        n13 = n.pow(1.0 / 3.0)
        n43 = n * n13
        s2 = sigma / (C_S**2 * n43 * n43)
        t = tau / (C_TAU * n43 * n13)  # tau / tau_unif
        eps = self.log_eps
        ln_n13 = torch.log(n13)
        return torch.stack(
            [
                ln_n13,  # ln n^(1/3)
                torch.zeros_like(ln_n13),  # ln d_x(zeta = 0)
                0.5 * torch.log(s2 + eps * eps),  # ln sqrt(s^2 + eps^2)
                shifted_log(t, eps),  # ln(t + eps)
            ],
            dim=-1,
        )

    def baseline_energy_density(self, n: Tensor) -> Tensor:
        """e_base(n) (Hartree / Bohr^3) from dixc's classical Slater (+ PW92) at safe n."""
        e = self._slater.energy_density_ns(n)
        if self._pw92 is not None:
            e = e + self._pw92.energy_density_ns(n)
        return e

    def enhancement(self, rho: Tensor) -> tuple[Tensor, Tensor]:
        """``(mask, F)``, ``((B,) ngrid)`` each: F = 1 + act(z) > 0 (1 at screened points)."""
        mask, _, f = self._evaluate(rho)
        return mask, f

    def _evaluate(self, rho: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(mask, safe n, F)`` of features ``((B,) 5, ngrid)``."""
        mask, n, sigma, tau = masked_invariants(rho, self.rho_min, "NNmGGA")
        x = self.inputs(n, sigma, tau).to(self.net[0].weight.dtype)
        z = self.net(x)[..., 0].to(n.dtype)
        if self.activation == "elu":
            return mask, n, 1.0 + torch.nn.functional.elu(z)
        return mask, n, _softplus(z + _SOFTPLUS_ONE)  # 1 + SmoothELU(z), exactly 1 at z = 0

    def energy_density(self, rho: Tensor, grid: Grid | None = None) -> Tensor:
        """e_xc = e_base(n) (1 + act(z)).

        Args:
            rho: ``((B,) 5, ngrid)`` features (n, grad n, tau).
            grid: unused (local functional).

        Returns:
            ``((B,) ngrid)`` Hartree / Bohr^3; 0 where n <= ``rho_min``.
        """
        mask, n, f = self._evaluate(rho)
        return torch.where(mask, self.baseline_energy_density(n) * f, 0.0)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, baseline={self.baseline}, activation={self.activation}, "
                f"rho_min={self.rho_min:g}")  # fmt: skip
