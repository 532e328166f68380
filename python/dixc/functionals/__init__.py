"""XC functionals as ``torch.nn.Module``: classical baselines and learnable architectures.

All share the interface of :class:`dixc.functionals.base.XCFunctional`. Create one by name::

    f = dixc.functionals.create("pbe")
    exc = f(rho, grid)  # E_xc in Hartree
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping

from dixc.functionals.base import NFEAT, XCFunctional

_REGISTRY: dict[str, Callable[..., XCFunctional]] = {}


def register(name: str) -> Callable:
    """Class/factory decorator: makes ``create(name, **cfg)`` build it."""

    def deco(obj):
        key = name.lower()
        if key in _REGISTRY:
            raise ValueError(f"dixc: functional {name!r} registered twice")
        _REGISTRY[key] = obj
        if isinstance(obj, type):
            obj.arch_name = key
        return obj

    return deco


def available() -> list[str]:
    """Names accepted by :func:`create`."""
    return sorted(_REGISTRY)


def options(name: str) -> list[str] | None:
    """The constructor options of the functional ``name`` (None: any keyword is passed on)."""
    key = name.lower()
    if key not in _REGISTRY:
        raise ValueError(f"dixc: unknown functional {name!r}; available: {', '.join(available())}")
    params = inspect.signature(_REGISTRY[key]).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in params if p.kind in keyword and p.name != "self"]


def check_config(name: str, cfg: Mapping[str, object], where: str = "the arguments") -> None:
    """Raises ``ValueError`` naming the keys of ``cfg`` that ``create(name)`` does not take."""
    allowed = options(name)
    bad = [] if allowed is None else sorted(k for k in cfg if k not in allowed)
    if bad:
        raise ValueError(
            f"dixc: {where} has {', '.join(bad)}, which functional {name.lower()!r} does not "
            f"take; its options: {', '.join(allowed) or 'none'}"
        )


def create(name: str, **cfg) -> XCFunctional:
    """Builds the functional registered as ``name`` (case-insensitive) with keyword config."""
    check_config(name, cfg)
    key = name.lower()
    factory = _REGISTRY[key]
    f = factory(**cfg)
    if not isinstance(factory, type):  # a factory function: it is rebuilt by its own name
        f.arch_name = key
        object.__setattr__(f, "config", dict(cfg))
    return f


from dixc.functionals import (  # noqa: E402,F401  (registration side effects)
    classical,
    egxc,
    mlp,
    nnmgga,
    skala_mgga,
    xcdiff,
)
from dixc.functionals.io import FunctionalFileError, load, read_metadata, save  # noqa: E402
from dixc.functionals.pretrain import PretrainResult, pretrain  # noqa: E402

__all__ = [
    "NFEAT",
    "FunctionalFileError",
    "PretrainResult",
    "XCFunctional",
    "available",
    "check_config",
    "create",
    "load",
    "options",
    "pretrain",
    "read_metadata",
    "register",
    "save",
]
