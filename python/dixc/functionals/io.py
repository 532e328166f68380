"""Functional files: one ``.safetensors`` file holding weights and a JSON header.

The safetensors header's ``__metadata__`` carries (all strings)::

    format          "dixc-functional"
    format_version  "1"
    architecture    registry name, e.g. "xcdiff"  (``dixc.functionals.create`` rebuilds it)
    config          JSON of the constructor arguments (``XCFunctional.config``)
    dixc_version    version that wrote the file
    torch_version   torch that wrote the file
    sha256          digest of every tensor's name, dtype, shape and bytes (detects bit rot that
                    the safetensors header alone would not)
    extra           JSON chosen by the caller (training step, loss preset, data set, ...)

Files are written atomically (temporary name, fsync, rename). Reading checks every field and
raises :class:`FunctionalFileError` naming the file, the problem and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import torch

FORMAT = "dixc-functional"
FORMAT_VERSION = "1"


class FunctionalFileError(ValueError):
    """A functional file is missing, truncated, corrupted or not a dixc functional file."""


def _encode_config(cfg: dict[str, Any], path: str) -> str:
    def enc(v: Any) -> Any:
        if isinstance(v, torch.dtype):
            return {"__dtype__": str(v).removeprefix("torch.")}
        if isinstance(v, (list, tuple)):
            return [enc(x) for x in v]
        if isinstance(v, dict):
            return {str(k): enc(x) for k, x in v.items()}
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        raise TypeError(
            f"dixc: cannot save {path!r}: constructor argument value {v!r} is not "
            "JSON-serialisable; functionals saved with dixc.functionals.save take plain "
            "int/float/str/bool/list arguments (and dtype)"
        )

    return json.dumps({k: enc(v) for k, v in cfg.items()}, sort_keys=True)


def _decode_config(text: str) -> dict[str, Any]:
    def dec(v: Any) -> Any:
        if isinstance(v, dict):
            if set(v) == {"__dtype__"}:
                return getattr(torch, v["__dtype__"])
            return {k: dec(x) for k, x in v.items()}
        if isinstance(v, list):
            return [dec(x) for x in v]
        return v

    return {k: dec(v) for k, v in json.loads(text).items()}


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save(f: torch.nn.Module, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> None:
    """Writes functional ``f`` (weights, architecture name, constructor config) to ``path``.

    Args:
        f: a functional built by ``dixc.functionals.create`` or a registered class.
        path: destination, conventionally ``*.safetensors``; written atomically.
        extra: JSON-serialisable metadata stored with it (read back by :func:`read_metadata`).
    """
    from safetensors.torch import save_file

    import dixc
    from dixc.fileio import atomic_path

    path = os.fspath(path)
    name = getattr(f, "arch_name", None)
    if name is None or not hasattr(f, "config"):
        raise TypeError(
            f"dixc: cannot save {type(f).__name__} to {path!r}: it is not a registered functional "
            "(build it with dixc.functionals.create(name, ...) or a class decorated with "
            "dixc.functionals.register)"
        )
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in f.state_dict().items()}
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": name,
        "config": _encode_config(f.config, path),
        "dixc_version": dixc.__version__,
        "torch_version": torch.__version__,
        "sha256": _digest(tensors),
        "extra": json.dumps(extra or {}, sort_keys=True),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=meta)


def _read(path: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise FunctionalFileError(
            f"dixc: functional file {path!r} does not exist (write one with "
            "dixc.functionals.save or `dixc train`)"
        )
    try:
        with safe_open(path, framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as err:
        raise FunctionalFileError(
            f"dixc: {path!r} is not a readable safetensors file (truncated or corrupted?): {err}. "
            "Re-save the functional or restore the file from a backup / checkpoint"
        ) from err
    if meta.get("format") != FORMAT:
        raise FunctionalFileError(
            f"dixc: {path!r} is a safetensors file but not a dixc functional file "
            f"(format={meta.get('format')!r}); load plain weights with safetensors and "
            "module.load_state_dict instead"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise FunctionalFileError(
            f"dixc: {path!r} has functional-file format version {meta.get('format_version')!r}; "
            f"this dixc reads version {FORMAT_VERSION}: use the dixc version that wrote it "
            f"({meta.get('dixc_version')})"
        )
    for key in ("architecture", "config", "sha256"):
        if key not in meta:
            raise FunctionalFileError(f"dixc: {path!r} lacks the {key!r} field: file corrupted")
    if _digest(tensors) != meta["sha256"]:
        raise FunctionalFileError(
            f"dixc: {path!r} is corrupted: its weights do not match the checksum written with "
            "them. Restore the file from a backup or checkpoint"
        )
    return meta, tensors


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Architecture, config, versions and ``extra`` of a functional file (validated)."""
    meta, _ = _read(os.fspath(path))
    out: dict[str, Any] = dict(meta)
    out["config"] = _decode_config(meta["config"])
    out["extra"] = json.loads(meta.get("extra", "{}"))
    return out


def load(path: str | os.PathLike, device: torch.device | str | None = None) -> torch.nn.Module:
    """Rebuilds the functional saved at ``path`` (architecture + config + weights).

    Raises:
        FunctionalFileError: missing, truncated or corrupted file, unknown architecture, or
            weights that do not fit the architecture.
    """
    from dixc.functionals import available, create

    path = os.fspath(path)
    meta, tensors = _read(path)
    arch = meta["architecture"]
    if arch not in available():
        raise FunctionalFileError(
            f"dixc: {path!r} holds architecture {arch!r}, which this dixc "
            f"({meta.get('dixc_version')} wrote it) does not know; available: "
            f"{', '.join(available())}"
        )
    try:
        cfg = _decode_config(meta["config"])
        f = create(arch, **cfg)
    except Exception as err:
        raise FunctionalFileError(
            f"dixc: cannot rebuild {arch!r} from {path!r} with config {meta['config']}: {err}"
        ) from err
    try:
        f.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise FunctionalFileError(
            f"dixc: the weights in {path!r} do not fit architecture {arch!r}: {err}"
        ) from err
    if device is not None:
        f = f.to(device)
    return f
