"""Any dixc functional inside PySCF: SCF, Newton solver, stability analysis and TDDFT.

``RKS(mol, functional)`` returns a ``pyscf.dft.RKS`` object whose XC energy, V_xc and response
kernel f_xc come from the Torch functional (autograd through dixc's ops), so PySCF's own machinery
runs unchanged::

    import dixc.functionals, dixc.pyscf_plugin
    mf = dixc.pyscf_plugin.RKS(mol, dixc.functionals.create("pbe"))
    mf.kernel()
    mf.TDA().kernel()         # excitation energies with the Torch functional's f_xc
    mf.newton().kernel()      # second-order SCF, orbital Hessian from f_xc

The functional may be nonlocal (its energy needs the whole grid): V_xc and f_xc are computed on
the full grid at once, never point block by point block. Closed-shell restricted only: open-shell
entry points and triplet response raise ``NotImplementedError``.

Analytic nuclear gradients (``mf.nuc_grad_method()``, also with ``density_fit()``, and so
geometry optimisation through ``pyscf.geomopt``) take their XC terms from
:mod:`dixc.nuclear_grad` for every dixc functional, local or nonlocal: importing this module
routes ``pyscf.grad.rks.get_vxc`` and ``get_vxc_full_response`` to dixc when, and only when, the
``NumInt`` is a :class:`TorchNumInt`; every other functional runs PySCF's own code. A nonlocal
functional needs the grid response (``grad.grid_response = True``; see that module). Analytic
nuclear Hessians (``mf.Hessian()``) and excited-state (TDA / TDDFT) nuclear gradients
(``td.nuc_grad_method()``) run through PySCF's pointwise path (``eval_xc_eff`` to the third
derivative k_xc, by autograd), local functionals only; a nonlocal one is refused with the reason.
"""

from __future__ import annotations

import types

import numpy as np
import torch
from pyscf.dft import numint, rks

from dixc.context import MolContext
from dixc.functionals.base import XCFunctional
from dixc.nuclear_grad import _autograd
from dixc.xc import XCKernel, _exc_vxc_rho, feature_hessian

__all__ = ["RKS", "TorchNumInt", "initial_guess"]


def _make_libxc_shim(name: str, functional: XCFunctional) -> types.SimpleNamespace:
    """What PySCF asks ``ni.libxc`` about a functional, answered for a dixc functional."""

    top = 3  # order 3 for TDDFT gradients: pointwise (local) or routed (any; see below)

    def test_deriv_order(xc_code, deriv, raise_error=False):
        ok = deriv <= top
        if not ok and raise_error:
            raise NotImplementedError(
                f"dixc: functional {name} provides derivatives up to order {top}; PySCF asked "
                f"for order {deriv}"
            )
        return ok

    import dixc

    return types.SimpleNamespace(
        __name__="dixc",
        __version__=dixc.__version__,
        __reference__="dixc Torch functional (autograd through dixc ops)",
        is_hybrid_xc=lambda xc_code: False,
        is_nlc=lambda xc_code: False,
        is_lda=lambda xc_code: functional.xctype == "LDA",
        is_gga=lambda xc_code: functional.xctype == "GGA",
        is_meta_gga=lambda xc_code: functional.xctype == "MGGA",
        needs_laplacian=lambda xc_code: False,
        test_deriv_order=test_deriv_order,
        hybrid_coeff=lambda xc_code, spin=0: 0.0,
        rsh_coeff=lambda xc_code: (0.0, 0.0, 0.0),
        max_deriv_order=lambda xc_code: top,
        xc_reference=lambda xc_code: [f"dixc functional {name}: {functional!r}"],
    )


_POINT_CHUNK = 4096  # points per autograd pass of the pointwise derivatives (bounded graph)


def _pointwise_derivatives(
    f: XCFunctional, rho: torch.Tensor, deriv: int
) -> tuple[torch.Tensor | None, ...]:
    """e, de/dx, d^2e/dx^2, d^3e/dx^3 of a local functional's energy density at each point.

    x are the ``nfeat`` rows of ``rho`` ``(nfeat, npts)``; the derivative tensors are
    ``(nfeat,) * k + (npts,)`` (None above ``deriv``): one backward pass per row of the second
    derivative (fewer for a rotation-invariant functional when it is the highest order:
    :func:`dixc.xc.feature_hessian`) and one per pair k <= l of the third, which is symmetric (a
    local functional's points are independent, so summing over points before each backward loses
    nothing).
    """
    r = rho.detach().requires_grad_(True)
    nf = r.shape[0]
    v = f2 = k3 = None

    def grad(y: torch.Tensor, create: bool) -> torch.Tensor:  # d(sum y)/d r; 0 if y is constant
        return _autograd(y, r, create)

    with torch.enable_grad():
        e = f.energy_density(r)
        if deriv >= 1:
            v = grad(e, deriv >= 2)
        if deriv == 2 and v.requires_grad:  # fewer passes for a rotation-invariant functional
            f2 = feature_hessian(f, r, v)
        elif deriv >= 2:
            f2 = torch.stack([grad(v[k], deriv >= 3) for k in range(nf)])
        if deriv >= 3:
            k3 = r.new_empty(nf, nf, nf, r.shape[1])
            for k in range(nf):
                for m in range(k, nf):
                    k3[k, m] = k3[m, k] = grad(f2[k, m], False)
    dt = lambda t: None if t is None else t.detach()  # noqa: E731
    return e.detach(), dt(v), dt(f2), k3


class TorchNumInt(numint.NumInt):
    """A PySCF ``NumInt`` that evaluates a dixc functional (closed-shell, restricted).

    Args:
        functional: the dixc functional (float64).
        device: torch device for the grid work.
    """

    def __init__(self, functional: XCFunctional, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.functional = functional
        self.device = torch.device(device)
        self.name = type(functional).__name__
        self.libxc = _make_libxc_shim(self.name, functional)
        self._ctx_key: tuple | None = None
        self._ctx: MolContext | None = None
        self._kernel_key: bytes | None = None
        self._kernel: XCKernel | None = None

    # ---- what PySCF asks about the functional -------------------------------------------------
    def _xc_type(self, xc_code):
        return self.functional.xctype

    def hybrid_coeff(self, xc_code, spin=0):
        return 0.0

    def rsh_coeff(self, xc_code):
        return 0.0, 0.0, 0.0

    def rsh_and_hybrid_coeff(self, xc_code, spin=0):
        return 0.0, 0.0, 0.0

    # ---- grid context -------------------------------------------------------------------------
    def context(self, mol, grids) -> MolContext:
        """The grid-only ``MolContext`` of (mol, grids), cached while they are unchanged."""
        if grids.coords is None:
            grids.build()
        key = (id(mol), mol._env.tobytes(), id(grids.coords), grids.coords.shape)
        if key != self._ctx_key:
            self._ctx = MolContext.from_mol(mol, grids=grids, coulomb="none", device=self.device)
            self._ctx_key = key
            self._kernel_key = self._kernel = None
        assert self._ctx is not None
        return self._ctx

    def _dm(self, dms) -> tuple[torch.Tensor, tuple]:
        dm = np.asarray(dms)
        if dm.dtype.kind == "c":
            raise NotImplementedError("dixc: complex density matrices are not supported")
        shape = dm.shape
        d = torch.as_tensor(dm.reshape(-1, shape[-2], shape[-1]), dtype=torch.float64)
        return d.to(self.device), shape

    # ---- energy and potential -----------------------------------------------------------------
    def nr_rks(self, mol, grids, xc_code, dms, relativity=0, hermi=1, max_memory=2000,
               verbose=None):  # fmt: skip
        """Electron count, E_xc and V_xc of ``dms`` ``((nset,) nao, nao)`` (PySCF's contract)."""
        ctx = self.context(mol, grids)
        d, shape = self._dm(dms)
        exc, vxc, rho = _exc_vxc_rho(ctx, self.functional, d)
        nelec = (rho[:, 0] @ ctx.grid.weights).cpu().numpy()  # from the same features
        exc, vxc = exc.cpu().numpy(), vxc.cpu().numpy().reshape(shape)
        if len(shape) == 2:
            return float(nelec[0]), float(exc[0]), vxc
        return nelec.reshape(shape[:-2]), exc.reshape(shape[:-2]), vxc

    # ---- response -----------------------------------------------------------------------------
    def _xc_kernel(self, ctx: MolContext, dm0: torch.Tensor) -> XCKernel:
        key = dm0.cpu().numpy().tobytes()
        if key != self._kernel_key:
            self._kernel = XCKernel(ctx, self.functional, dm0)
            self._kernel_key = key
        assert self._kernel is not None
        return self._kernel

    def cache_xc_kernel(self, mol, grids, xc_code, mo_coeff, mo_occ, spin=0, max_memory=2000):
        """Builds f_xc at the density of (mo_coeff, mo_occ); returns (rho0, vxc, fxc) stand-ins.

        rho0 is the density features ``(nfeat, ngrid)``; vxc and fxc are placeholders PySCF
        passes back to ``nr_rks_fxc`` (the kernel itself is cached on this object).
        """
        mo_coeff = np.asarray(mo_coeff)
        if mo_coeff.ndim != 2:
            raise NotImplementedError("dixc: TorchNumInt is closed-shell restricted only")
        ctx = self.context(mol, grids)
        dm0 = (mo_coeff * mo_occ) @ mo_coeff.T
        kernel = self._xc_kernel(ctx, torch.as_tensor(dm0, dtype=torch.float64).to(self.device))
        return kernel.rho0.detach().cpu().numpy(), np.zeros(1), np.ones(1)

    def nr_rks_fxc(self, mol, grids, xc_code, dm0=None, dms=None, relativity=0, hermi=0,
                   rho0=None, vxc=None, fxc=None, max_memory=2000, verbose=None):  # fmt: skip
        """f_xc[D0](dms) for response density matrices ``dms`` ``((nset,) nao, nao)``."""
        ctx = self.context(mol, grids)
        if dm0 is not None:
            kernel = self._xc_kernel(ctx, torch.as_tensor(np.asarray(dm0), dtype=torch.float64))
        elif self._kernel is not None:
            kernel = self._kernel
        else:
            raise RuntimeError("dixc: nr_rks_fxc needs dm0 or a prior cache_xc_kernel call")
        d, shape = self._dm(dms)
        return kernel(d).cpu().numpy().reshape(shape)

    def nr_rks_fxc_st(self, mol, grids, xc_code, dm0=None, dms_alpha=None, relativity=0,
                      singlet=True, rho0=None, vxc=None, fxc=None, max_memory=2000,
                      verbose=None):  # fmt: skip
        """Singlet response, PySCF's ``gen_response(singlet=True)`` path.

        PySCF halves the spin-resolved kernel there, so for a closed-shell functional the result
        is f_xc[D0](dms_alpha) (checked against PySCF's TDA/TDDFT to 1e-12 eV).
        """
        if not singlet:
            raise NotImplementedError(
                "dixc: triplet response needs the spin-resolved kernel; dixc functionals are "
                "closed-shell (spin-summed) only"
            )
        return self.nr_rks_fxc(mol, grids, xc_code, dm0, np.asarray(dms_alpha), 0, 0)

    # ---- nuclear gradients --------------------------------------------------------------------
    def nuc_grad_terms(self, mol, grids, dms, grid_response: bool):
        """``(exc1 (natm, 3), vmat (3, nao, nao))`` of :func:`dixc.nuclear_grad.xc_gradient_terms`
        (PySCF's ``get_vxc[_full_response]`` contract)."""
        from dixc.nuclear_grad import xc_gradient_terms

        if not (grid_response or self.functional.is_local):
            raise NotImplementedError(
                f"dixc: nuclear gradients of the nonlocal functional {self.name} need the grid "
                "response (without it PySCF drops the terms in which the functional reads the "
                "grid and the nuclear positions): set grad.grid_response = True on "
                "mf.nuc_grad_method()"
            )
        dm = np.asarray(dms)
        if dm.ndim == 3 and dm.shape[0] == 1:
            dm = dm[0]
        if dm.ndim != 2:
            raise NotImplementedError("dixc: TorchNumInt is closed-shell restricted only")
        exc1, vmat = xc_gradient_terms(mol, grids, self.functional, dm, grid_response,
                                       device=self.device)  # fmt: skip
        return (exc1 if grid_response else None), vmat

    # ---- pointwise evaluation, for PySCF code paths that call libxc-style APIs directly -------
    def eval_xc_eff(self, xc_code, rho, deriv=1, omega=None, xctype=None, spin=0,
                    verbose=None):  # fmt: skip
        """``(exc, vxc, fxc, kxc)`` of a local functional at points ``rho`` (PySCF's layout).

        Args:
            rho: ``(nvar, ngrid)`` (or ``(ngrid,)`` for LDA) total-density variables (rho, its
                gradient, tau; PySCF's rows beyond ``functional.nfeat`` are ignored).
            deriv: 0..3.

        Returns:
            exc ``(ngrid,)`` per particle; vxc ``(nfeat, ngrid)``, fxc ``(nfeat, nfeat, ngrid)``,
            kxc ``(nfeat, nfeat, nfeat, ngrid)``: derivatives of the energy density with respect
            to the variables (autograd, in ``functional.point_slices`` of at most
            ``_POINT_CHUNK`` points; None above ``deriv``).
        """
        f = self.functional
        if not f.is_local:
            raise NotImplementedError(
                f"dixc: {self.name} is nonlocal; pointwise eval_xc_eff does not apply, and so "
                "neither do PySCF code paths built on it (e.g. analytic Hessians); SCF, TDDFT, "
                "CPHF, stability analysis and nuclear gradients of ground and excited states "
                "(dixc.nuclear_grad) do"
            )
        if spin != 0:
            raise NotImplementedError("dixc: TorchNumInt is closed-shell restricted only")
        if not 0 <= deriv <= 3:
            raise NotImplementedError(f"dixc: eval_xc_eff derivatives of order 0-3, not {deriv}")
        r = torch.as_tensor(np.asarray(rho), dtype=torch.float64)
        if r.dim() == 1:
            r = r[None]
        r = r[: f.nfeat].to(self.device)
        nf, ng = r.shape
        e = r.new_empty(ng)
        out = [r.new_empty((nf,) * k + (ng,)) if k <= deriv else None for k in (1, 2, 3)]
        for sl in f.point_slices(ng, r.device, _POINT_CHUNK):
            e[sl], *parts = _pointwise_derivatives(f, r[:, sl], deriv)
            for o, p in zip(out, parts, strict=True):
                if o is not None:
                    o[..., sl] = p
        rho0 = r[0]
        exc = torch.where(rho0 > 0, e / torch.where(rho0 > 0, rho0, 1.0), 0.0)
        conv = lambda t: None if t is None else t.cpu().numpy()  # noqa: E731
        return conv(exc), *(conv(o) for o in out)

    # ---- open shell: refused clearly ----------------------------------------------------------
    def _closed_shell_only(self, *args, **kwargs):
        raise NotImplementedError(
            "dixc: dixc functionals are closed-shell restricted; use pyscf.dft.RKS on a molecule "
            "with an even number of electrons and spin 0"
        )

    nr_uks = nr_uks_fxc = nr_rks_fxc_st_triplet = _closed_shell_only


def _route_gradients() -> None:
    """Sends PySCF's XC gradient functions to :meth:`TorchNumInt.nuc_grad_terms` for dixc
    functionals (both PySCF's plain and density-fitted RKS gradients look them up there)."""
    from pyscf.grad import rks as rks_grad

    def route(name: str, grid_response: bool) -> None:
        original = getattr(rks_grad, name)
        if getattr(original, "_dixc_route", False):
            return

        def routed(ni, mol, grids, xc_code, dms, *args, **kwargs):
            if isinstance(ni, TorchNumInt):
                return ni.nuc_grad_terms(mol, grids, dms, grid_response)
            return original(ni, mol, grids, xc_code, dms, *args, **kwargs)

        routed._dixc_route = True  # type: ignore[attr-defined]
        routed._dixc_original = original  # type: ignore[attr-defined]
        routed.__doc__ = original.__doc__
        setattr(rks_grad, name, routed)

    route("get_vxc", False)
    route("get_vxc_full_response", True)


_route_gradients()


def _route_td_gradients() -> None:
    """Sends PySCF's TDA / TDDFT gradient XC matrices (``tdrks._contract_xc_kernel``) to
    :func:`dixc.nuclear_grad.td_xc_kernel_terms` for dixc functionals: directional derivatives
    by autograd instead of the pointwise f_xc and k_xc tensors (same numbers, fewer passes)."""
    from pyscf.grad import tdrks

    original = tdrks._contract_xc_kernel
    if getattr(original, "_dixc_route", False):
        return

    def routed(td_grad, xc_code, dmvo, dmoo=None, with_vxc=True, with_kxc=True, singlet=True,
               max_memory=2000):  # fmt: skip
        mf = td_grad.base._scf
        ni = mf._numint
        if not isinstance(ni, TorchNumInt):
            return original(td_grad, xc_code, dmvo, dmoo, with_vxc, with_kxc, singlet,
                            max_memory)  # fmt: skip
        if not singlet:
            raise NotImplementedError("dixc: triplet excited-state gradients are not supported")
        from dixc.nuclear_grad import has_grid_response, td_xc_kernel_terms

        if not (ni.functional.is_local or has_grid_response(td_grad)):
            raise NotImplementedError(
                f"dixc: excited-state gradients of the nonlocal functional {ni.name} need the "
                "grid response (without it its explicit terms are missing): "
                "dixc.nuclear_grad.with_grid_response(td.nuc_grad_method())"
            )

        return td_xc_kernel_terms(td_grad.mol, mf.grids, ni.functional, mf.make_rdm1(), dmvo,
                                  dmoo, with_vxc, with_kxc, ni.device)  # fmt: skip

    routed._dixc_route = True  # type: ignore[attr-defined]
    routed._dixc_original = original  # type: ignore[attr-defined]
    routed.__doc__ = original.__doc__
    tdrks._contract_xc_kernel = routed


_route_td_gradients()


class _RKS(rks.RKS):
    """PySCF's RKS with one change: ``density_fit()`` without an auxiliary basis picks the one
    PySCF picks for a semilocal functional (PySCF would look the dixc name up in libxc)."""

    def density_fit(self, auxbasis=None, with_df=None, only_dfj=False):
        if auxbasis is None and with_df is None and isinstance(self.mol.basis, str):
            from pyscf.df.addons import predefined_auxbasis

            # no exact exchange: the same choice as for any pure functional
            auxbasis = predefined_auxbasis(self.mol, self.mol.basis, "PBE")
        return super().density_fit(auxbasis, with_df, only_dfj)


def RKS(mol, functional: XCFunctional, device: torch.device | str = "cpu", **kwargs):
    """A ``pyscf.dft.RKS`` running a dixc functional.

    Args:
        mol: a built closed-shell ``pyscf.gto.Mole``.
        functional: any dixc functional (float64).
        device: torch device of the grid work.
        **kwargs: attributes set on the returned object (e.g. ``conv_tol=1e-10``).

    Returns:
        The ``pyscf.dft.rks.RKS`` object; use ``.density_fit()``, ``.newton()``, ``.TDA()``,
        ``.TDDFT()``, ``.stability()`` as with any PySCF functional.
    """
    if mol.nelectron % 2 or mol.spin != 0:
        raise ValueError(
            f"dixc: the molecule has {mol.nelectron} electrons (spin {mol.spin}); dixc "
            "functionals are closed-shell restricted. Use a closed-shell molecule (set mol.charge "
            "so that the electron count is even, mol.spin = 0)."
        )
    mf = _RKS(mol)
    ni = TorchNumInt(functional, device=device)
    mf._numint = ni
    mf.xc = f"dixc:{ni.name}"
    for k, v in kwargs.items():
        setattr(mf, k, v)
    return mf


def initial_guess(
    mol, functional: XCFunctional, grids=None, device: torch.device | str = "cpu", **kwargs
) -> np.ndarray:
    """A converged density of ``functional``, as ``dm0`` for another SCF (e.g. a hybrid).

    ``mf.kernel(dm0=initial_guess(mol, f))`` starts PySCF's SCF from the learned density
    (``dixc evaluate`` measures the cycles this saves against PySCF's default guess).

    Args:
        mol: a built closed-shell ``pyscf.gto.Mole``.
        functional: any dixc functional.
        grids: a PySCF grid to reuse (e.g. the target SCF's ``mf.grids``); None: level 3.
        device: torch device of the grid work.
        **kwargs: attributes of the dixc SCF (default ``conv_tol=1e-9``).

    Returns:
        ``(nao, nao)`` density matrix.

    Raises:
        RuntimeError: the SCF with ``functional`` did not converge (the message says so; pass
            ``max_cycle``, ``level_shift`` or ``damp`` in ``kwargs``).
    """
    mf = RKS(mol, functional, device=device, verbose=0, **{"conv_tol": 1e-9, **kwargs})
    if grids is not None:
        mf.grids = grids
    mf.kernel()
    if not mf.converged:
        raise RuntimeError(
            f"dixc: the SCF with {type(functional).__name__} did not converge in {mf.max_cycle} "
            "cycles; pass max_cycle=..., level_shift=... or damp=... to initial_guess"
        )
    return np.asarray(mf.make_rdm1())
