"""Classical semilocal XC functionals in pure Torch, closed shell (spin-summed features).

Each component implements libxc 7's formula (as PySCF calls it, ``spin=0``) with the same
parameters and density screening, and agrees with it to rounding wherever libxc is itself accurate
(see Accuracy below). Derivatives of any order come from autograd.

Components (libxc name and id):
    * :class:`SlaterExchange` (LDA_X, 1), :class:`PW92Correlation` (LDA_C_PW, 12; LDA_C_PW_MOD, 13
      with ``modified=True``), :class:`VWNCorrelation` (LDA_C_VWN, 7; LDA_C_VWN_RPA, 8).
    * :class:`B88Exchange` (GGA_X_B88, 106), :class:`LYPCorrelation` (GGA_C_LYP, 131),
      :class:`PBEExchange` (GGA_X_PBE, 101), :class:`PBECorrelation` (GGA_C_PBE, 130).

Registered names (``dixc.functionals.create(name)``): the components ``slater``, ``pw92``,
``pw92_mod``, ``vwn5``, ``vwn_rpa``, ``b88``, ``lyp``, ``pbe_x``, ``pbe_c`` and the combinations
``lda`` (PySCF "LDA,PW"), ``svwn5`` ("LDA,VWN"), ``pbe``, ``blyp`` and ``b3lyp_semilocal``
(0.08 Slater + 0.72 B88 + 0.19 VWN_RPA + 0.81 LYP: what PySCF's ``eval_xc('B3LYP')``, libxc
HYB_GGA_XC_B3LYP 402, returns; its 0.2 exact exchange is not a grid term). :class:`Mix` builds
any other weighted sum.

Closed-shell variables: n = rho (spin-summed density, electrons / Bohr^3), sigma = |grad n|^2,
spin densities n/2, rs = (3 / (4 pi n))^(1/3). libxc's reduced gradients are
x_t = sqrt(sigma) / n^(4/3) and, per spin, x_s = 2^(1/3) x_t.

Numerical safety: like libxc, a point contributes nothing below a density threshold
(``dens_threshold``: 1e-15 for LDA_X/B88/PBE exchange, applied to the spin density n/2, i.e. zero
for n <= 2e-15; 1e-15 for PW92/VWN, 1e-14 for LYP, 1e-12 for PBE correlation, applied to n).
Screened points are replaced by a harmless value (n = 1, sigma = 0) *before* any power, log or
square root and masked afterwards (the double ``torch.where``), so the value and its first and
second derivatives are finite everywhere, including n = 0, grad n = 0 and n < 0 (numerical noise).
B88's x asinh(x) = sqrt(y) asinh(sqrt(y)) is evaluated by its Taylor series for small y = x^2, so
sigma = 0 has finite derivatives too.

Accuracy: PW92's ln(1 + 1/q) is evaluated with log1p and PBE correlation in a cancellation-free
form, so at low densities (molecular tails, rho < 1e-8) dixc is accurate to ~1e-14 per point where
libxc itself loses digits (up to 1e-8 in PBE's vsigma and percents in PBE correlation's second
derivatives at rho ~ 1e-12); elsewhere the two agree to rounding.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

from dixc.functionals import register
from dixc.functionals.base import NFEAT, XCFunctional, check_features
from dixc.grid import Grid

__all__ = [
    "B88Exchange",
    "LYPCorrelation",
    "Mix",
    "PBECorrelation",
    "PBEExchange",
    "PW92Correlation",
    "SemilocalFunctional",
    "SlaterExchange",
    "VWNCorrelation",
    "b3lyp_semilocal",
    "blyp",
    "lda",
    "pbe",
    "svwn5",
]

Tensor = torch.Tensor

# (3/4) (3/pi)^(1/3): closed-shell Slater exchange e_x = -C_X n^(4/3).
_C_X = 0.75 * (3.0 / math.pi) ** (1.0 / 3.0)
# libxc X_FACTOR_C = 3/8 (3/pi)^(1/3) 4^(2/3): per-spin LDA exchange e_x,s = -X_FACTOR_C n_s^(4/3).
_X_FACTOR_C = 0.375 * (3.0 / math.pi) ** (1.0 / 3.0) * 4.0 ** (2.0 / 3.0)
# libxc X2S = 1 / (2 (6 pi^2)^(1/3)): s = X2S x_s.
_X2S = 1.0 / (2.0 * (6.0 * math.pi**2) ** (1.0 / 3.0))
# (3 / (4 pi))^(1/3): rs = _RS_FACTOR n^(-1/3).
_RS_FACTOR = (3.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
_TWO_23 = 2.0 ** (2.0 / 3.0)


def _rs(n: Tensor) -> Tensor:
    """Wigner-Seitz radius rs = (3 / (4 pi n))^(1/3) (Bohr) of a positive density."""
    return _RS_FACTOR * n.pow(-1.0 / 3.0)


def _xt2(n: Tensor, sigma: Tensor) -> Tensor:
    """Squared total reduced gradient x_t^2 = sigma / n^(8/3) (dimensionless)."""
    return sigma * n.pow(-8.0 / 3.0)


# --------------------------------------------------------------------------- base classes


class SemilocalFunctional(XCFunctional):
    """A local LDA or GGA functional e_xc(n, sigma) with libxc-style density screening.

    Subclasses set ``xctype``, ``dens_threshold`` and ``spin_screened`` and implement
    ``_kernel(n, sigma)``, which only ever sees safe inputs (n above the threshold, sigma >= 0).

    Attributes:
        dens_threshold: points with n < dens_threshold (n / 2 <= dens_threshold when
            ``spin_screened``) contribute 0, as in libxc.
        spin_screened: libxc screens exchange per spin density n / 2 (``<=``), correlation
            per total density (``<``).
    """

    xctype = "LDA"
    is_local = True
    rotation_invariant = True
    dens_threshold: float = 1e-15
    spin_screened: bool = False

    def __init__(self, dens_threshold: float | None = None) -> None:
        super().__init__()
        if dens_threshold is not None:
            if not dens_threshold > 0.0:
                raise ValueError(f"dixc: dens_threshold must be > 0, got {dens_threshold}")
            self.dens_threshold = float(dens_threshold)

    def _kernel(self, n: Tensor, sigma: Tensor | None) -> Tensor:
        """e_xc at safe inputs; ``n``, ``sigma`` (None for LDA) of one shape, same output shape."""
        raise NotImplementedError

    def _keep(self, n: Tensor) -> Tensor:
        """Boolean mask of the points libxc evaluates (not screened)."""
        if self.spin_screened:
            return 0.5 * n > self.dens_threshold
        return n >= self.dens_threshold

    def energy_density_ns(self, n: Tensor, sigma: Tensor | None = None) -> Tensor:
        """Energy per volume as a function of the invariants (libxc's variables).

        Args:
            n: ``(...)`` spin-summed density (electrons / Bohr^3); any values, screened below
                ``dens_threshold``.
            sigma: ``(...)`` |grad n|^2 (electrons^2 / Bohr^8), broadcastable with ``n``;
                required for GGAs, ignored by LDAs. Negative values are clamped to 0.

        Returns:
            ``(...)`` e_xc = n eps_xc (Hartree / Bohr^3); exactly 0 at screened points. Finite,
            with finite first and second derivatives, for all inputs.
        """
        keep = self._keep(n)
        n_safe = torch.where(keep, n, torch.ones_like(n))
        s_safe = None
        if self.xctype != "LDA":
            if sigma is None:
                raise ValueError(f"dixc: {type(self).__name__} is a GGA and needs sigma")
            n_safe, sigma = torch.broadcast_tensors(n_safe, sigma)
            keep = keep.expand_as(n_safe)
            s_safe = torch.where(keep, sigma.clamp(min=0.0), torch.zeros_like(sigma))
        e = self._kernel(n_safe, s_safe)
        return torch.where(keep, e, torch.zeros_like(e))

    def energy_density(self, rho: Tensor, grid: Grid | None = None) -> Tensor:
        """XC energy per volume e_xc = rho eps_xc.

        Args:
            rho: ``((B,) nfeat, ngrid)`` features (rho, d_x rho, d_y rho, d_z rho[, tau]); rows
                beyond the ``nfeat`` of ``xctype`` are ignored.
            grid: unused (local functional).

        Returns:
            ``((B,) ngrid)`` in Hartree / Bohr^3.
        """
        check_features(rho, self.nfeat, type(self).__name__)
        n = rho[..., 0, :]
        sigma = None
        if self.xctype != "LDA":
            grad = rho[..., 1:4, :]
            sigma = (grad * grad).sum(dim=-2)  # sigma = |grad rho|^2
        return self.energy_density_ns(n, sigma)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dens_threshold={self.dens_threshold:g}"


class Mix(XCFunctional):
    """Weighted sum E_xc = sum_k c_k E_k of functionals (for example B3LYP's semilocal part).

    ``xctype`` is the highest of the parts' (LDA < GGA < MGGA); each part reads only the feature
    rows it needs and keeps its own density screening, as libxc's mixed functionals do. Parts may
    be any :class:`XCFunctional` (classical or learned); ``energy_density_ns`` needs them all to be
    semilocal (:class:`SemilocalFunctional`).

    Args:
        parts: ``[(coefficient, functional), ...]``, at least one.
    """

    def __init__(self, parts: Iterable[tuple[float, XCFunctional]]) -> None:
        super().__init__()
        parts = list(parts)
        if not parts:
            raise ValueError("dixc: Mix needs at least one (coefficient, functional) part")
        for item in parts:
            if not (
                isinstance(item, tuple | list)
                and len(item) == 2
                and isinstance(item[1], XCFunctional)
            ):
                raise TypeError(f"dixc: Mix parts are (coefficient, XCFunctional), got {item!r}")
        self.coefficients: tuple[float, ...] = tuple(float(c) for c, _ in parts)
        self.parts = torch.nn.ModuleList([f for _, f in parts])
        self.xctype = max((f.xctype for f in self.parts), key=NFEAT.__getitem__)
        self.is_local = all(f.is_local for f in self.parts)
        self.rotation_invariant = all(f.rotation_invariant for f in self.parts)

    def energy_density_ns(self, n: Tensor, sigma: Tensor | None = None) -> Tensor:
        """Sum of the parts' ``energy_density_ns`` (semilocal parts only).

        Args:
            n: ``(...)`` spin-summed density (electrons / Bohr^3).
            sigma: ``(...)`` |grad n|^2, needed when any part is a GGA.

        Returns:
            ``(...)`` e_xc (Hartree / Bohr^3).
        """
        out = None
        for c, f in zip(self.coefficients, self.parts, strict=True):
            if not isinstance(f, SemilocalFunctional | Mix):
                raise TypeError(
                    f"dixc: {type(f).__name__} is not a semilocal (n, sigma) functional"
                )
            e = c * f.energy_density_ns(n, sigma if f.xctype != "LDA" else None)
            out = e if out is None else out + e
        assert out is not None
        return out

    def energy_density(self, rho: Tensor, grid: Grid | None = None) -> Tensor:
        """Sum of the parts' energy densities, ``((B,) ngrid)`` Hartree / Bohr^3."""
        check_features(rho, self.nfeat, "Mix")
        out = None
        for c, f in zip(self.coefficients, self.parts, strict=True):
            e = c * f.energy_density(rho[..., : f.nfeat, :], grid)
            out = e if out is None else out + e
        assert out is not None
        return out

    def extra_repr(self) -> str:
        coefs = ", ".join(f"{c:g}" for c in self.coefficients)
        return f"xctype={self.xctype}, local={self.is_local}, coefficients=({coefs})"


# --------------------------------------------------------------------------- LDA components


@register("slater")
class SlaterExchange(SemilocalFunctional):
    """Slater (Dirac) exchange, libxc LDA_X (1): e_x = -(3/4) (3/pi)^(1/3) n^(4/3)."""

    xctype = "LDA"
    dens_threshold = 1e-15
    spin_screened = True

    def _kernel(self, n: Tensor, sigma: Tensor | None) -> Tensor:
        return -_C_X * n.pow(4.0 / 3.0)


def _pw92_g(rs: Tensor, a: float, alpha1: float, beta: Sequence[float]) -> Tensor:
    """PW92 eq. (10): G(rs) = -2a (1 + alpha1 rs) ln(1 + 1 / (2a (b1 rs^1/2 + ... + b4 rs^2)))."""
    srs = rs.sqrt()
    den = beta[0] * srs + beta[1] * rs + beta[2] * rs * srs + beta[3] * rs * rs
    return -2.0 * a * (1.0 + alpha1 * rs) * torch.log1p(1.0 / (2.0 * a * den))


# Paramagnetic (zeta = 0) PW92 parameters; libxc's "modified" set (PW_MOD, used inside PBE) only
# adds digits to A. The spin-interpolation constant fz20 never enters a closed-shell evaluation.
_PW92_A = 0.031091
_PW92_A_MOD = 0.0310907
_PW92_ALPHA1 = 0.21370
_PW92_BETA = (7.5957, 3.5876, 1.6382, 0.49294)


def _pw92_eps(n: Tensor, modified: bool) -> Tensor:
    """Closed-shell PW92 correlation energy per electron eps_c(rs) (Hartree)."""
    return _pw92_g(_rs(n), _PW92_A_MOD if modified else _PW92_A, _PW92_ALPHA1, _PW92_BETA)


@register("pw92")
class PW92Correlation(SemilocalFunctional):
    """Perdew-Wang 1992 LDA correlation, libxc LDA_C_PW (12), or LDA_C_PW_MOD (13).

    Args:
        modified: libxc's PW_MOD constants (A = 0.0310907, as in the PBE reference code)
            instead of the paper's (A = 0.031091).
        dens_threshold: override of libxc's 1e-15.
    """

    xctype = "LDA"
    dens_threshold = 1e-15

    def __init__(self, modified: bool = False, dens_threshold: float | None = None) -> None:
        super().__init__(dens_threshold)
        self.modified = bool(modified)

    def _kernel(self, n: Tensor, sigma: Tensor | None) -> Tensor:
        return n * _pw92_eps(n, self.modified)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, modified={self.modified}"


register("pw92_mod")(lambda **cfg: PW92Correlation(modified=True, **cfg))

# VWN paramagnetic fits (Hartree; libxc vwn.mpl): (A, b, c, x0).
_VWN_PARAMS = {
    "vwn5": (0.0310907, 3.72744, 12.9352, -0.10498),
    "rpa": (0.0310907, 13.0720, 42.7198, -0.409286),
}


@register("vwn5")
class VWNCorrelation(SemilocalFunctional):
    """Vosko-Wilk-Nusair LDA correlation, libxc LDA_C_VWN (7, ``variant='vwn5'``) or
    LDA_C_VWN_RPA (8, ``variant='rpa'``; the one inside B3LYP).

    eps_c = A [ln(x^2/X) + 2b/Q atan(Q/(2x+b)) - b x0/X(x0) (ln((x-x0)^2/X)
    + 2(b+2x0)/Q atan(Q/(2x+b)))], x = sqrt(rs), X(x) = x^2 + b x + c, Q = sqrt(4c - b^2).

    Args:
        variant: 'vwn5' or 'rpa'.
        dens_threshold: override of libxc's 1e-15.
    """

    xctype = "LDA"
    dens_threshold = 1e-15

    def __init__(self, variant: str = "vwn5", dens_threshold: float | None = None) -> None:
        super().__init__(dens_threshold)
        key = variant.lower()
        if key not in _VWN_PARAMS:
            raise ValueError(
                f"dixc: VWN variant must be one of {sorted(_VWN_PARAMS)}, got {variant!r}"
            )
        self.variant = key

    def _kernel(self, n: Tensor, sigma: Tensor | None) -> Tensor:
        a, b, c, x0 = _VWN_PARAMS[self.variant]
        q = math.sqrt(4.0 * c - b * b)
        f2 = b * x0 / (x0 * x0 + b * x0 + c)  # b x0 / X(x0)
        atan_coef = 2.0 * b / q - f2 * 2.0 * (2.0 * x0 + b) / q
        rs = _rs(n)
        x = rs.sqrt()
        big_x = rs + b * x + c  # X(x) = x^2 + b x + c
        eps = a * (
            torch.log(rs / big_x)
            + atan_coef * torch.atan(q / (2.0 * x + b))
            - f2 * torch.log((x - x0) ** 2 / big_x)
        )
        return n * eps

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, variant={self.variant}"


register("vwn_rpa")(lambda **cfg: VWNCorrelation(variant="rpa", **cfg))


# --------------------------------------------------------------------------- GGA components


def _lda_exchange_ns(n: Tensor) -> Tensor:
    """Closed-shell Slater exchange energy per volume, -(3/4) (3/pi)^(1/3) n^(4/3)."""
    return -_C_X * n.pow(4.0 / 3.0)


def _xs2(n: Tensor, sigma: Tensor) -> Tensor:
    """Squared per-spin reduced gradient x_s^2 = 2^(2/3) sigma / n^(8/3) (closed shell)."""
    return _TWO_23 * _xt2(n, sigma)


# Taylor coefficients of asinh(x)/x in y = x^2 (through y^6; truncation < 1e-20 for y < 1e-3).
_ASINH_SERIES = (1.0, -1.0 / 6.0, 3.0 / 40.0, -5.0 / 112.0, 35.0 / 1152.0, -63.0 / 2816.0)
_ASINH_SERIES_Y = 1e-3


def _x_asinh_x(y: Tensor) -> Tensor:
    """x asinh(x) as a function of y = x^2 >= 0, smooth (finite derivatives) at y = 0."""
    small = y < _ASINH_SERIES_Y
    y_big = torch.where(small, torch.ones_like(y), y)
    x = y_big.sqrt()
    exact = x * torch.asinh(x)
    series = torch.zeros_like(y)
    for coef in reversed(_ASINH_SERIES):  # Horner: y (1 - y/6 + 3 y^2/40 - ...)
        series = series * y + coef
    return torch.where(small, y * series, exact)


@register("b88")
class B88Exchange(SemilocalFunctional):
    """Becke 1988 exchange, libxc GGA_X_B88 (106).

    e_x = e_x^LDA F(x_s), F = 1 + beta/X_FACTOR_C x_s^2 / (1 + 6 beta x_s asinh(x_s)),
    beta = 0.0042, x_s = 2^(1/3) sqrt(sigma) / n^(4/3).

    Args:
        dens_threshold: override of libxc's 1e-15 (applied to the spin density n/2).
    """

    xctype = "GGA"
    dens_threshold = 1e-15
    spin_screened = True
    beta = 0.0042
    gamma = 6.0

    def _kernel(self, n: Tensor, sigma: Tensor | None) -> Tensor:
        assert sigma is not None
        y = _xs2(n, sigma)
        f = 1.0 + self.beta / _X_FACTOR_C * y / (1.0 + self.gamma * self.beta * _x_asinh_x(y))
        return _lda_exchange_ns(n) * f


@register("pbe_x")
class PBEExchange(SemilocalFunctional):
    """Perdew-Burke-Ernzerhof exchange, libxc GGA_X_PBE (101).

    e_x = e_x^LDA F(s), F = 1 + kappa - kappa^2 / (kappa + mu s^2), s = X2S x_s,
    kappa = 0.804, mu = beta pi^2 / 3 with beta = 0.06672455060314922.

    Args:
        dens_threshold: override of libxc's 1e-15 (applied to the spin density n/2).
    """

    xctype = "GGA"
    dens_threshold = 1e-15
    spin_screened = True
    kappa = 0.8040
    mu = 0.2195149727645171

    def _kernel(self, n: Tensor, sigma: Tensor | None) -> Tensor:
        assert sigma is not None
        s2 = _X2S**2 * _xs2(n, sigma)
        f = 1.0 + self.kappa - self.kappa**2 / (self.kappa + self.mu * s2)
        return _lda_exchange_ns(n) * f


@register("pbe_c")
class PBECorrelation(SemilocalFunctional):
    """Perdew-Burke-Ernzerhof correlation, libxc GGA_C_PBE (130), closed shell (phi = 1).

    e_c = n [eps_PW(rs) + H], H = gamma ln(1 + beta/gamma t^2 (1 + A t^2) / (1 + A t^2 + A^2 t^4)),
    A = beta / gamma / (exp(-eps_PW / gamma) - 1), t^2 = x_t^2 / (16 2^(2/3) rs); eps_PW is
    libxc's PW_MOD, beta = 0.06672455060314922, gamma = (1 - ln 2) / pi^2. Evaluated in the
    algebraically equal form eps_PW + H = gamma ln(1 + (exp(eps_PW/gamma) - 1) / (1 + y + y^2)),
    y = A t^2, which avoids the cancellation of eps_PW and H at large t.

    Args:
        dens_threshold: override of libxc's 1e-12.
    """

    xctype = "GGA"
    dens_threshold = 1e-12
    beta = 0.06672455060314922
    gamma = (1.0 - math.log(2.0)) / math.pi**2

    def _kernel(self, n: Tensor, sigma: Tensor | None) -> Tensor:
        assert sigma is not None
        rs = _rs(n)
        eps = _pw92_g(rs, _PW92_A_MOD, _PW92_ALPHA1, _PW92_BETA)
        t2 = _xt2(n, sigma) / (16.0 * _TWO_23 * rs)  # t^2 = x_t^2 / (4 2^(1/3) sqrt(rs))^2
        em = torch.expm1(eps / self.gamma)  # exp(eps/gamma) - 1, in (-1, 0)
        y = self.beta / self.gamma * t2 * (1.0 + em) / (-em)  # A t^2
        # eps + H = gamma ln(1 + expm1(eps/gamma) / (1 + y + y^2)): same function, no cancellation
        # between eps and H where t is large (low density), so second derivatives stay accurate.
        return n * self.gamma * torch.log1p(em / (1.0 + y + y * y))


@register("lyp")
class LYPCorrelation(SemilocalFunctional):
    """Lee-Yang-Parr correlation, libxc GGA_C_LYP (131), closed shell.

    With r = n^(-1/3), omega = b exp(-c r) / (1 + d r), delta = (c + d / (1 + d r)) r:
    eps_c = a [-1/(1 + d r) + omega (-x_t^2 ((47 - 7 delta)/72 - 2/3) - C_F
    + 2^(-8/3) x_s^2 ((5/2 - delta/18)/2 + (delta - 11)/36 - 5/6))], C_F = 3/10 (3 pi^2)^(2/3),
    a, b, c, d = 0.04918, 0.132, 0.2533, 0.349.

    Args:
        dens_threshold: override of libxc's 1e-14.
    """

    xctype = "GGA"
    dens_threshold = 1e-14
    a = 0.04918
    b = 0.132
    c = 0.2533
    d = 0.349

    def _kernel(self, n: Tensor, sigma: Tensor | None) -> Tensor:
        assert sigma is not None
        a, b, c, d = self.a, self.b, self.c, self.d
        r = n.pow(-1.0 / 3.0)
        dr1 = 1.0 + d * r
        omega = b * torch.exp(-c * r) / dr1
        delta = (c + d / dr1) * r
        xt2 = _xt2(n, sigma)
        xs2 = _TWO_23 * xt2
        c_f = 0.3 * (3.0 * math.pi**2) ** (2.0 / 3.0)
        aux6 = 2.0 ** (-8.0 / 3.0)
        t2 = -xt2 * ((47.0 - 7.0 * delta) / 72.0 - 2.0 / 3.0)
        t4 = aux6 / 4.0 * (2.5 - delta / 18.0) * 2.0 * xs2  # libxc t4, both spins
        t5 = aux6 / 72.0 * (delta - 11.0) * 2.0 * xs2  # libxc t5, both spins
        t6 = -aux6 * (5.0 / 6.0) * xs2  # libxc t6 at zeta = 0
        eps = a * (-1.0 / dr1 + omega * (t2 - c_f + t4 + t5 + t6))
        return n * eps


# --------------------------------------------------------------------------- combinations


@register("lda")
def lda(**cfg) -> Mix:
    """LDA = Slater exchange + PW92 correlation (PySCF "LDA,PW"; libxc 1 + 12)."""
    _no_cfg("lda", cfg)
    return Mix([(1.0, SlaterExchange()), (1.0, PW92Correlation())])


@register("svwn5")
def svwn5(**cfg) -> Mix:
    """SVWN5 = Slater exchange + VWN5 correlation (PySCF "LDA,VWN"; libxc 1 + 7)."""
    _no_cfg("svwn5", cfg)
    return Mix([(1.0, SlaterExchange()), (1.0, VWNCorrelation("vwn5"))])


@register("pbe")
def pbe(**cfg) -> Mix:
    """PBE = PBE exchange + PBE correlation (PySCF "PBE"; libxc 101 + 130)."""
    _no_cfg("pbe", cfg)
    return Mix([(1.0, PBEExchange()), (1.0, PBECorrelation())])


@register("blyp")
def blyp(**cfg) -> Mix:
    """BLYP = B88 exchange + LYP correlation (PySCF "BLYP"; libxc 106 + 131)."""
    _no_cfg("blyp", cfg)
    return Mix([(1.0, B88Exchange()), (1.0, LYPCorrelation())])


@register("b3lyp_semilocal")
def b3lyp_semilocal(**cfg) -> Mix:
    """Semilocal part of B3LYP (libxc HYB_GGA_XC_B3LYP, 402, as PySCF's "B3LYP").

    0.08 Slater + 0.72 B88 + 0.19 VWN_RPA + 0.81 LYP; the remaining 0.2 exact exchange is the
    (c_x/4) tr(D K[D]) term of the total energy, not part of this grid functional.
    """
    _no_cfg("b3lyp_semilocal", cfg)
    return Mix(
        [
            (0.08, SlaterExchange()),
            (0.72, B88Exchange()),
            (0.19, VWNCorrelation("rpa")),
            (0.81, LYPCorrelation()),
        ]
    )


def _no_cfg(name: str, cfg: dict) -> None:
    if cfg:
        raise TypeError(f"dixc: functional {name!r} takes no options, got {sorted(cfg)}")
