"""XCdiff: the constrained local meta-GGA of Dick and Fernandez-Serra (2021).

S. Dick, M. Fernandez-Serra, "Highly accurate and constrained density functional obtained with
differentiable programming", Phys. Rev. B 104, L161109 (2021); reference code: the ``xcdiff``
repository (``dpyscfl/net.py``: ``XC.get_descriptors``, ``X_L``, ``C_L``, ``LOB``).

Functional form (closed shell, spin-summed n, sigma = |grad n|^2, tau):
    e_xc = e_x^Slater(n) F_x(s, alpha) + e_c^PW92(n) F_c(n, zeta, s, alpha)
with two separate multilayer perceptrons (GELU, 3 hidden layers of 16 = four linear layers, as
in the original's ``X_L`` / ``C_L``) acting on the descriptors of ``get_descriptors``:
    x_n     = ln(n^(1/3) + 1e-5)
    x_zeta  = ln(((1 + zeta)^(4/3) + (1 - zeta)^(4/3)) / 2) = 0 at zeta = 0
    x_s     = (1 - exp(-s^2)) ln(1 + s),     s = |grad n| / (2 (3 pi^2)^(1/3) n^(4/3))
    x_alpha = ln((alpha + 1) / 2),          alpha = (tau - tau_W) / (tau_unif + 1e-3 tau_W),
with tau_W = sigma / (8 n) and tau_unif = (3/10) (3 pi^2)^(2/3) n^(5/3). The exact constraints are
built in exactly as in the original:
    * Uniform-gas limit: both networks' outputs are multiplied by u = x_s + tanh(x_alpha)^2, which
      vanishes only at s = 0, alpha = 1, where then F_x = F_c = 1 for any weights.
    * Bound on exchange: F_x = L sigmoid(y_x u - ln(L - 1)) lies in (0, L); it is 1 where
      y_x u = 0 (L / (1 + (L - 1)) = 1). The original's meta-GGA uses L = 1.174 (the tight bound
      on F_x for two-electron densities that SCAN also imposes), its GGA the local Lieb-Oxford
      bound L = 1.804; ``lieb_oxford`` sets L (default 1.174, as the meta-GGA original).
    * Non-positive correlation: F_c = 2 sigmoid(-y_c u) lies in (0, 2) (the original's ``LOB``
      with limit 2), so e_c = e_c^PW92 F_c <= 0 since e_c^PW92 <= 0.
    * Uniform density scaling of exchange: the exchange network sees only (x_s, x_alpha), which
      are invariant under n(r) -> l^3 n(l r), so E_x[n_l] = l E_x[n] exactly.
    * Spin scaling of exchange: the original evaluates exchange per spin on the spin-scaled
      density, E_x[n_a, n_b] = (E_x[2 n_a] + E_x[2 n_b]) / 2, with descriptors of (2 n_s,
      4 sigma_ss, 2 tau_s). For a closed shell (n_a = n_b = n/2, sigma_aa = sigma/4,
      tau_a = tau/2) both terms are the unpolarised E_x[n, sigma, tau], which is what is
      evaluated (once). Correlation descriptors use the total density (and zeta = 0), so both
      networks share s and alpha here.
Exchange uses dixc's classical Slater (libxc LDA_X) and correlation PW92 with the paper's
A = 0.031091 (libxc LDA_C_PW), as the original's ``LDA_X`` and ``PW_C``.

Initialisation: the original starts from PyTorch's default (random) weights. Here both networks'
output layers are zero, so y_x = y_c = 0, F_x = F_c = 1 exactly and, at construction, the
functional *is* LDA exchange + PW92 correlation (PySCF "LDA,PW"), bit for bit. The other layers
keep PyTorch's default initialisation, as the original.

Numerical details that differ from the reference code (values differ only where stated):
    * L sigmoid(w - ln(L - 1)) - 1 is evaluated as (L - 1)(1 - e^-w) / (1 + (L - 1) e^-w) (and
      its e^w-scaled form for w < 0): the same function, but exactly 0 at w = 0 for any L (the
      sigmoid form rounds to 1 - 1.1e-16 for L = 1.174), so the uniform-gas limit and the step-0
      baseline hold to the last bit.
    * The original regularises with +1e-8 / +1e-12 in denominators; here points with n <=
      ``rho_min`` are screened instead (double ``where``: e_xc = 0 with zero derivatives) and the
      descriptors use exact n.
    * alpha: the original clamps with relu (a kink at tau = tau_W, where one-electron regions
      sit). Here alpha is used unclamped for alpha >= -1/2 (physical alpha >= 0; negatives only from
      round-off) and continued below by -1/2 + tanh(4 (alpha + 1/2)) / 4 (C^2, > -3/4), so the
      second derivative is continuous at tau = tau_W and ln((alpha + 1)/2) stays finite.
    * x_s: computed from p = s^2 as (1 - e^-p) ln(1 + sqrt p); it behaves like p^(3/2), smooth
      in grad n but with an infinite d^2/dp^2 at p = 0, so below p = 1e-10 (s < 1e-5, x_s < 1e-15)
      it is replaced by the cubic in p that matches its value and first two derivatives at 1e-10.

Parameters: exchange 2 h + h + (depth - 1)(h^2 + h) + h + 1, correlation the same with 4 inputs
(609 + 641 = 1250 for the defaults h = 16, depth = 3).
"""

from __future__ import annotations

import math

import torch

from dixc.functionals import register
from dixc.functionals.base import XCFunctional
from dixc.functionals.classical import PW92Correlation, SlaterExchange
from dixc.functionals.nnmgga import C_S, C_TAU, masked_invariants, mlp
from dixc.grid import Grid

Tensor = torch.Tensor

__all__ = ["XCdiff", "alpha_descriptor", "bounded_excess", "s_descriptor"]

_LOGE = 1e-5  # the original's shift in ln(n^(1/3) + loge)
_TW_REG = 1e-3  # the original's tau_W weight in alpha's denominator
_P0 = 1e-10  # below p = s^2 = _P0 the s descriptor is a matched cubic


def _s_cubic_coefficients(p0: float) -> tuple[float, float, float]:
    """a, b, c of q(p) = a p + b p^2 + c p^3 matching f(p) = (1 - e^-p) ln(1 + sqrt p) to second
    order at p0 (f(0) = q(0) = 0)."""
    u = math.sqrt(p0)
    a0, a1, a2 = -math.expm1(-p0), math.exp(-p0), -math.exp(-p0)  # A = 1 - e^-p and derivatives
    w = 2.0 * u * (1.0 + u)
    b0, b1, b2 = math.log1p(u), 1.0 / w, -(1.0 / u + 2.0) / (w * w)  # B = ln(1 + sqrt p), ...
    f0, f1, f2 = a0 * b0, a1 * b0 + a0 * b1, a2 * b0 + 2.0 * a1 * b1 + a0 * b2
    # In units t = p / p0: (alpha, beta, gamma) = (a p0, b p0^2, c p0^3) solve
    # alpha + beta + gamma = f0, alpha + 2 beta + 3 gamma = f1 p0, 2 beta + 6 gamma = f2 p0^2.
    r1 = f1 * p0 - f0
    gamma = (f2 * p0 * p0 - 2.0 * r1) / 2.0
    beta = r1 - 2.0 * gamma
    alpha = f0 - beta - gamma
    return alpha / p0, beta / p0**2, gamma / p0**3


_S_CUBIC = _s_cubic_coefficients(_P0)


def s_descriptor(p: Tensor) -> Tensor:
    """x_s = (1 - exp(-p)) ln(1 + sqrt(p)) of p = s^2 >= 0 (matched cubic below p = 1e-10)."""
    small = p < _P0
    pb = torch.where(small, _P0, p)
    exact = -torch.expm1(-pb) * torch.log1p(torch.sqrt(pb))
    ps = torch.where(small, p, 0.0)
    a, b, c = _S_CUBIC
    return torch.where(small, ps * (a + ps * (b + ps * c)), exact)


def bounded_excess(w: Tensor, k: float) -> Tensor:
    """(1 + k) sigmoid(w - ln k) - 1 = k (1 - e^-w) / (1 + k e^-w), in [-1, k]; exactly 0 at w = 0.

    The original's ``LOB(limit = 1 + k)``; evaluated without overflow for any w (e^-|w| <= 1).
    """
    pos = w >= 0.0
    wp = torch.where(pos, w, 0.0)
    wn = torch.where(pos, 0.0, w)
    up = -k * torch.expm1(-wp) / (1.0 + k * torch.exp(-wp))  # w >= 0
    down = k * torch.expm1(wn) / (torch.exp(wn) + k)  # w < 0, same function times e^w / e^w
    return torch.where(pos, up, down)


def alpha_descriptor(n: Tensor, sigma: Tensor, tau: Tensor, n13: Tensor) -> Tensor:
    """x_alpha = ln((alpha + 1) / 2) with alpha = (tau - tau_W) / (tau_unif + 1e-3 tau_W).

    Args:
        n, sigma, tau: safe invariants (n > 0, sigma >= 0), ``(...)``.
        n13: n^(1/3).
    """
    tau_w = sigma / (8.0 * n)
    alpha = (tau - tau_w) / (C_TAU * n * n13 * n13 + _TW_REG * tau_w)
    low = alpha < -0.5  # round-off only: tau < tau_W - tau_unif / 2
    alpha = torch.where(low, -0.5 + 0.25 * torch.tanh(4.0 * (alpha + 0.5)), alpha)
    return torch.log((alpha + 1.0) * 0.5)


@register("xcdiff")
class XCdiff(XCFunctional):
    """Dick and Fernandez-Serra's XCdiff meta-GGA (module docstring); LDA + PW92 at construction.

    Args:
        hidden: width of the hidden layers of both networks (16 in the paper).
        depth: hidden layers per network (3 in the paper, plus the output layer).
        lieb_oxford: upper bound L on F_x, > 1 (1.174 as the original meta-GGA; 1.804 is the
            local Lieb-Oxford bound).
        rho_min: density (electrons / Bohr^3) at or below which a point contributes nothing.
        dtype: parameter dtype.
    """

    xctype = "MGGA"
    is_local = True
    rotation_invariant = True

    def __init__(
        self,
        hidden: int = 16,
        depth: int = 3,
        lieb_oxford: float = 1.174,
        rho_min: float = 1e-10,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        if not lieb_oxford > 1.0:
            raise ValueError(f"dixc: XCdiff's Lieb-Oxford bound must be > 1, got {lieb_oxford}")
        if not rho_min > 0.0:
            raise ValueError(f"dixc: XCdiff needs rho_min > 0, got {rho_min}")
        self.lieb_oxford = float(lieb_oxford)
        self.rho_min = float(rho_min)
        self._slater = SlaterExchange()
        self._pw92 = PW92Correlation()
        self.net_x = mlp(2, hidden, depth, torch.nn.GELU, dtype)  # (x_s, x_alpha)
        self.net_c = mlp(4, hidden, depth, torch.nn.GELU, dtype)  # (x_n, x_zeta, x_s, x_alpha)

    def _parts(self, rho: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``(mask, e_x^Slater, e_c^PW92, F_x, F_c)``, each ``((B,) ngrid)``, at safe inputs."""
        mask, n, sigma, tau = masked_invariants(rho, self.rho_min, "XCdiff")
        n13 = n.pow(1.0 / 3.0)
        n43 = n * n13
        x_s = s_descriptor(sigma / (C_S**2 * n43 * n43))
        x_a = alpha_descriptor(n, sigma, tau, n13)
        u = x_s + torch.tanh(x_a) ** 2  # 0 only in the uniform-gas limit s = 0, alpha = 1
        dt = self.net_x[0].weight.dtype
        y_x = self.net_x(torch.stack([x_s, x_a], dim=-1).to(dt))[..., 0].to(n.dtype)
        x_n = torch.log(n13 + _LOGE)
        x_c = torch.stack([x_n, torch.zeros_like(x_n), x_s, x_a], dim=-1).to(dt)
        y_c = self.net_c(x_c)[..., 0].to(n.dtype)
        f_x = 1.0 + bounded_excess(y_x * u, self.lieb_oxford - 1.0)  # L sigmoid(w - ln(L - 1))
        f_c = 1.0 + bounded_excess(-y_c * u, 1.0)  # 2 sigmoid(-y_c u)
        return mask, self._slater.energy_density_ns(n), self._pw92.energy_density_ns(n), f_x, f_c

    def enhancement_factors(self, rho: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(mask, F_x, F_c)``, each ``((B,) ngrid)``; F_x in (0, L), F_c in (0, 2).

        Args:
            rho: ``((B,) 5, ngrid)`` features. Screened points (mask False) hold F = 1.
        """
        mask, _, _, f_x, f_c = self._parts(rho)
        return mask, f_x, f_c

    def exchange_correlation(self, rho: Tensor) -> tuple[Tensor, Tensor]:
        """``(e_x, e_c)``, each ``((B,) ngrid)`` Hartree / Bohr^3; e_x + e_c = energy_density."""
        mask, ex_lda, ec_pw, f_x, f_c = self._parts(rho)
        return torch.where(mask, ex_lda * f_x, 0.0), torch.where(mask, ec_pw * f_c, 0.0)

    def energy_density(self, rho: Tensor, grid: Grid | None = None) -> Tensor:
        """e_xc = e_x^Slater F_x + e_c^PW92 F_c.

        Args:
            rho: ``((B,) 5, ngrid)`` features (n, grad n, tau).
            grid: unused (local functional).

        Returns:
            ``((B,) ngrid)`` Hartree / Bohr^3; 0 where n <= ``rho_min``.
        """
        mask, ex_lda, ec_pw, f_x, f_c = self._parts(rho)
        return torch.where(mask, ex_lda * f_x + ec_pw * f_c, 0.0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, lieb_oxford={self.lieb_oxford:g}, rho_min={self.rho_min:g}"
