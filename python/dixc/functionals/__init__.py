"""XC functionals as ``torch.nn.Module``: classical baselines and learnable architectures.

All share the interface of :class:`dixc.functionals.base.XCFunctional`. Create one by name::

    f = dixc.functionals.create("pbe")
    exc = f(rho, grid)  # E_xc in Hartree
"""

from __future__ import annotations

from collections.abc import Callable

from dixc.functionals.base import NFEAT, XCFunctional

_REGISTRY: dict[str, Callable[..., XCFunctional]] = {}


def register(name: str) -> Callable:
    """Class/factory decorator: makes ``create(name, **cfg)`` build it."""

    def deco(obj):
        key = name.lower()
        if key in _REGISTRY:
            raise ValueError(f"dixc: functional {name!r} registered twice")
        _REGISTRY[key] = obj
        return obj

    return deco


def available() -> list[str]:
    """Names accepted by :func:`create`."""
    return sorted(_REGISTRY)


def create(name: str, **cfg) -> XCFunctional:
    """Builds the functional registered as ``name`` (case-insensitive) with keyword config."""
    key = name.lower()
    if key not in _REGISTRY:
        raise ValueError(f"dixc: unknown functional {name!r}; available: {', '.join(available())}")
    return _REGISTRY[key](**cfg)


from dixc.functionals import classical, mlp  # noqa: E402,F401  (registration side effects)

__all__ = ["NFEAT", "XCFunctional", "available", "create", "register"]
