"""Typed wrappers of the ``torch.ops.dixc`` ops.

Layouts (PySCF's vocabulary, dixc's AO layout):
    ao:  ``(ncomp, nao, ngrid)``, ncomp = 1, 4, 10 for deriv = 0, 1, 2 in PySCF's component order
         (value, x, y, z, xx, xy, xz, yy, yz, zz). PySCF's own ``eval_gto`` returns
         ``(ncomp, ngrid, nao)``: ``ao_pyscf.transpose(0, 2, 1)`` converts.
    rho: ``((B,) nfeat, ngrid)``: rho, d_x rho, d_y rho, d_z rho, tau with
         tau = 1/2 sum_i n_i |grad phi_i|^2; nfeat = 1 (LDA), 4 (GGA), 5 (MGGA).
    wv:  per-point weights in the same layout (e.g. grid weight x dE/d feature).
Units: Bohr for coordinates; densities in electrons / Bohr^3.
"""

from __future__ import annotations

import torch

from dixc.basis import Basis
from dixc.ops import _autograd, _fake  # noqa: F401  (registration side effects)
from dixc.ops._reference import (
    becke_partition_ref,
    contract_vxc_ref,
    eval_ao_ref,
    eval_rho_ref,
)

__all__ = [
    "becke_partition",
    "becke_partition_backward",
    "becke_partition_ref",
    "build_info",
    "check_device",
    "contract_vxc",
    "contract_vxc_fused",
    "contract_vxc_ref",
    "eval_ao",
    "eval_ao_ref",
    "eval_rho",
    "eval_rho_fused",
    "eval_rho_ref",
    "has_cuda",
]

_XCTYPES = ("LDA", "GGA", "MGGA")
_BECKE_SCHEMES = {"becke": 0, "stratmann": 1}


def _xc(xctype: str) -> str:
    x = xctype.upper()
    if x not in _XCTYPES:
        raise ValueError(f"dixc: xctype must be one of {_XCTYPES}, got {xctype!r}")
    return x


def has_cuda() -> bool:
    """Whether this build of dixc carries CUDA kernels."""
    return bool(torch.ops.dixc.has_cuda())


def build_info() -> str:
    """Version, torch version built against, kernels compiled (CPU/CUDA), OpenMP."""
    return str(torch.ops.dixc.build_info())


def check_device(device: str | torch.device) -> torch.device:
    """``torch.device(device)`` if dixc can compute there.

    Raises:
        ValueError: an unknown device, or CUDA where this torch has no CUDA support, no GPU is
            visible, the index is out of range or dixc was built without CUDA kernels (the
            message says which and the fix).
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"dixc: unknown device {device!r} ({err}); use cpu or cuda[:N]") from err
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise ValueError(f"dixc: device {device!r}: dixc's kernels run on cpu and cuda only")
    if torch.version.cuda is None:
        raise ValueError(
            f"dixc: device {device!r}: this torch ({torch.__version__}) is a CPU-only build; "
            "use --device cpu, or install a CUDA build of torch and rebuild dixc against it "
            "(pip install --no-build-isolation .)"
        )
    if not torch.cuda.is_available():
        raise ValueError(
            f"dixc: device {device!r}: no CUDA GPU is visible to torch {torch.__version__} "
            "(driver, CUDA_VISIBLE_DEVICES?); use --device cpu"
        )
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(
            f"dixc: device {device!r}: only {torch.cuda.device_count()} CUDA device(s) visible"
        )
    if not has_cuda():
        raise ValueError(
            f"dixc: device {device!r}: this dixc build has no CUDA kernels ({build_info()}); "
            "rebuild it with DIXC_CUDA=ON pip install --no-build-isolation . (needs nvcc)"
        )
    return dev


def eval_ao(basis: Basis, coords: torch.Tensor, deriv: int = 0) -> torch.Tensor:
    """AO values and derivatives on grid points.

    Args:
        basis: packed basis (``dixc.pack_basis(mol)``).
        coords: ``(ngrid, 3)`` float64 (or float32) points, Bohr.
        deriv: 0, 1 or 2.

    Returns:
        ``(ncomp, nao, ngrid)`` in the dtype of ``coords``; ncomp = 1, 4, 10.
        Differentiable w.r.t. ``coords`` (first order for deriv <= 1, second for deriv 0).
    """
    return torch.ops.dixc.eval_ao(coords, *basis.tensors, basis.nao, int(deriv), basis.cart)


def eval_rho(ao: torch.Tensor, dm: torch.Tensor, xctype: str = "LDA") -> torch.Tensor:
    """Density features from density matrices and a materialised AO array.

    Args:
        ao: ``(ncomp, nao, ngrid)``; ncomp >= 4 for GGA/MGGA.
        dm: ``(nao, nao)`` or ``(B, nao, nao)``; only its symmetric part enters (hermi=1 and
            general density matrices both work).
        xctype: 'LDA', 'GGA' or 'MGGA'.

    Returns:
        ``((B,) nfeat, ngrid)``. Differentiable to any order w.r.t. ``dm``.
    """
    return torch.ops.dixc.eval_rho(ao, dm, _xc(xctype))


def contract_vxc(ao: torch.Tensor, wv: torch.Tensor, xctype: str = "LDA") -> torch.Tensor:
    """V_ij = sum_g w0 phi_i phi_j + w_x d_x(phi_i phi_j) + w_tau 1/2 grad phi_i . grad phi_j.

    The adjoint of ``eval_rho`` in ``dm``: ``<eval_rho(ao, D), w> = <D, contract_vxc(ao, w)>``.

    Args:
        ao: ``(ncomp, nao, ngrid)``.
        wv: ``(nfeat, ngrid)`` or ``(B, nfeat, ngrid)``.
        xctype: 'LDA', 'GGA' or 'MGGA'.

    Returns:
        Symmetric ``((B,) nao, nao)``. Differentiable to any order w.r.t. ``wv``.
    """
    return torch.ops.dixc.contract_vxc(ao, wv, _xc(xctype))


def eval_rho_fused(
    basis: Basis, coords: torch.Tensor, dm: torch.Tensor, xctype: str = "LDA"
) -> torch.Tensor:
    """``eval_rho`` with screened AOs evaluated block by block (no ``(nao, ngrid)`` array).

    Args:
        basis: packed basis.
        coords: ``(ngrid, 3)`` grid points, Bohr.
        dm: ``(nao, nao)`` or ``(B, nao, nao)``; B density matrices share one pass over the AOs.
        xctype: 'LDA', 'GGA' or 'MGGA'.

    Returns:
        ``((B,) nfeat, ngrid)`` in the dtype of ``dm``.
    """
    return torch.ops.dixc.eval_rho_fused(
        coords, *basis.tensors, dm, _xc(xctype), basis.nao, basis.cart
    )


def contract_vxc_fused(
    basis: Basis, coords: torch.Tensor, wv: torch.Tensor, xctype: str = "LDA"
) -> torch.Tensor:
    """``contract_vxc`` with screened AOs evaluated block by block.

    Args:
        basis: packed basis.
        coords: ``(ngrid, 3)`` grid points, Bohr.
        wv: ``(nfeat, ngrid)`` or ``(B, nfeat, ngrid)``.
        xctype: 'LDA', 'GGA' or 'MGGA'.

    Returns:
        Symmetric ``((B,) nao, nao)`` in the dtype of ``wv``.
    """
    return torch.ops.dixc.contract_vxc_fused(
        coords, *basis.tensors, wv, _xc(xctype), basis.nao, basis.cart
    )


def becke_partition(
    coords: torch.Tensor,
    owner: torch.Tensor,
    atom_coords: torch.Tensor,
    adjust: torch.Tensor | None = None,
    scheme: str = "becke",
) -> torch.Tensor:
    """Becke cell fractions f_g = P_A(r_g) / sum_i P_i(r_g) of points owned by atoms A.

    A molecular grid's weights are w_g = vol_g f_g (vol_g: the atom grid's own weight), as PySCF's
    ``gen_grid`` builds them: P_i(r) = prod_{j != i} s(nu_ij), s(nu) = (1 - p(nu) + 1e-200) / 2,
    nu_ij = mu_ij + a_ij (1 - mu_ij^2), mu_ij = (|r - R_i| - |r - R_j|) / |R_i - R_j|, with p
    Becke's f(f(f(nu))), f(x) = (3 - x^2) x / 2, or Stratmann's polynomial (a = 0.64).

    Args:
        coords: ``(ngrid, 3)`` points, Bohr.
        owner: ``(ngrid,)`` int64, the atom whose grid each point belongs to.
        atom_coords: ``(natm, 3)`` nuclear positions, Bohr (distinct).
        adjust: ``(natm, natm)`` antisymmetric atomic-size adjustment a_ij (PySCF's
            ``radii_adjust``: ``a = clip(0.25 (rr^T - rr), -0.5, 0.5)``, ``rr_ij = R_i / R_j``
            of the (Treutler: square roots of) atomic radii); None: no adjustment.
        scheme: 'becke' (Becke's original switching function) or 'stratmann'.

    Returns:
        ``(ngrid,)`` in the dtype of ``coords``. Differentiable (first order) w.r.t. ``coords``
        and ``atom_coords`` (``becke_partition_ref`` for higher orders).
    """
    return torch.ops.dixc.becke_partition(
        coords, owner, atom_coords, *_becke_args(coords, atom_coords, adjust, scheme)
    )


def becke_partition_backward(
    grad: torch.Tensor,
    coords: torch.Tensor,
    owner: torch.Tensor,
    atom_coords: torch.Tensor,
    adjust: torch.Tensor | None = None,
    scheme: str = "becke",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The vector-Jacobian product of :func:`becke_partition` (what its autograd calls).

    Args:
        grad: ``(ngrid,)`` the incoming gradient u_g; the other arguments as for
            :func:`becke_partition`.

    Returns:
        ``(sum_g u_g df_g/dcoords (ngrid, 3), sum_g u_g df_g/datom_coords (natm, 3))``.
    """
    return torch.ops.dixc.becke_partition_backward(
        grad, coords, owner, atom_coords, *_becke_args(coords, atom_coords, adjust, scheme)
    )


def _becke_args(coords, atom_coords, adjust, scheme: str) -> tuple[torch.Tensor, int]:
    """The op's ``adjust`` (zeros for None) and integer scheme."""
    if scheme not in _BECKE_SCHEMES:
        raise ValueError(f"dixc: scheme must be one of {sorted(_BECKE_SCHEMES)}, got {scheme!r}")
    if adjust is None:
        n = atom_coords.shape[0]
        adjust = torch.zeros((n, n), dtype=coords.dtype, device=coords.device)
    return adjust, _BECKE_SCHEMES[scheme]
