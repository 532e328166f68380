"""HDF5 reference data sets: schema, crash-safe writing, merging, checking, and a torch reader.

Layout of one shard file (full table with shapes and units in ``docs/generate.md``)::

    /                   attrs: schema_version, reference_config (JSON), reference_config_hash,
                               generate_config (JSON), dixc_version, pyscf_version, created, shard
    /molecules/<id>/        attrs: id, source, formula, sizes, SCF strategy and cycles, ...
        atoms/  scf/  grad/  hess/  [tddft/]   datasets (float64 unless noted)
        timings             attrs only: scf, grad, hess, tddft, total (wall seconds)
    /failed/<id>/           attrs: id, source, error_type, reason; atoms/numbers, atoms/coords

Crash safety: a worker writes each finished molecule to its own part file
``<shard>.parts/<id>.h5`` under a temporary name, fsyncs and renames it (atomic on POSIX), so a
SIGKILL at any moment leaves only complete part files. :func:`consolidate` copies the shard file
and the parts into a temporary file and renames that over the shard file, and only then removes
the parts: at every instant the shard file is either the old or the new complete version, and a
molecule is never half-visible. HDF5 itself has no journal, so no write ever goes to a file that
is already visible under its final name.
"""

from __future__ import annotations

import contextlib
import datetime
import glob
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import h5py
import numpy as np
import torch

from dixc.fileio import fsync_dir, fsync_path

SCHEMA_VERSION = 1
MOLECULES = "molecules"
FAILED = "failed"
TIMINGS = "timings"
PART_SUFFIX = ".h5"
_TMP = ".tmp"


def config_hash(reference_config: Mapping[str, Any]) -> str:
    """Short stable hash of a reference config (JSON with sorted keys)."""
    text = json.dumps(dict(reference_config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_attrs(
    reference_config: Mapping[str, Any],
    generate_config: Mapping[str, Any] | None = None,
    shard: str = "0/1",
) -> dict[str, Any]:
    """Root attributes of a shard or part file (schema, configs, versions, creation time)."""
    import pyscf

    from dixc import __version__

    return {
        "schema_version": SCHEMA_VERSION,
        "reference_config": json.dumps(dict(reference_config), sort_keys=True),
        "reference_config_hash": config_hash(reference_config),
        "generate_config": json.dumps(dict(generate_config or {}), sort_keys=True, default=str),
        "dixc_version": __version__,
        "pyscf_version": pyscf.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "shard": shard,
    }


def _set_attrs(obj: h5py.HLObject, attrs: Mapping[str, Any]) -> None:
    for k, v in attrs.items():
        if v is None:
            continue
        obj.attrs[k] = v


def write_group(
    parent: h5py.Group,
    name: str,
    arrays: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any],
    timings: Mapping[str, float] | None = None,
) -> h5py.Group:
    """Creates ``parent/name`` holding ``arrays`` (keys are relative dataset paths) and attrs."""
    g = parent.create_group(name)
    for key, value in arrays.items():
        g.create_dataset(key, data=np.asarray(value))
    _set_attrs(g, attrs)
    if timings is not None:
        _set_attrs(g.create_group(TIMINGS), timings)
    return g


def atomic_h5(path: str):
    """Context manager: an h5py File written at ``path + '.tmp'``, renamed to ``path`` on success.

    On an exception the temporary file is removed and ``path`` is untouched.
    """

    @contextlib.contextmanager
    def _cm():
        tmp = path + _TMP
        f = h5py.File(tmp, "w")
        try:
            yield f
            f.flush()
            f.close()
            fsync_path(tmp)
            os.replace(tmp, path)
            fsync_dir(os.path.dirname(os.path.abspath(path)))
        except BaseException:
            with contextlib.suppress(Exception):
                f.close()
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise

    return _cm()


def part_path(parts_dir: str, molecule_id: str) -> str:
    return os.path.join(parts_dir, molecule_id + PART_SUFFIX)


def write_part(
    parts_dir: str,
    molecule_id: str,
    root_attrs: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any],
    timings: Mapping[str, float] | None = None,
    failed: bool = False,
) -> str:
    """Atomically writes one molecule (or its failure record) as ``parts_dir/<id>.h5``.

    Returns:
        The part file's path.
    """
    path = part_path(parts_dir, molecule_id)
    with atomic_h5(path) as f:
        _set_attrs(f, root_attrs)
        write_group(
            f.require_group(FAILED if failed else MOLECULES), molecule_id, arrays, attrs, timings
        )
    return path


def list_parts(parts_dir: str) -> list[str]:
    """Complete part files (temporary files of interrupted writes are ignored)."""
    if not os.path.isdir(parts_dir):
        return []
    return sorted(glob.glob(os.path.join(glob.escape(parts_dir), "*" + PART_SUFFIX)))


def stored_ids(path: str) -> tuple[set[str], set[str]]:
    """(ids of stored molecules, ids of failure records) in an HDF5 file; empty if absent."""
    if not os.path.isfile(path):
        return set(), set()
    with h5py.File(path, "r") as f:
        return set(f.get(MOLECULES, {}).keys()), set(f.get(FAILED, {}).keys())


def read_root_attrs(path: str) -> dict[str, Any]:
    with h5py.File(path, "r") as f:
        return {k: _py(v) for k, v in f.attrs.items()}


def _py(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v


def _copy_entries(src: h5py.File, dst: h5py.File, kind: str, skip: set[str]) -> list[str]:
    copied = []
    if kind not in src:
        return copied
    out = dst.require_group(kind)
    for name in src[kind]:
        if name in skip or name in out:
            continue
        src.copy(src[kind][name], out, name=name)
        copied.append(name)
    return copied


def consolidate(
    shard_path: str, parts_dir: str, root_attrs: Mapping[str, Any], remove_parts: bool = True
) -> tuple[int, int]:
    """Merges the part files into the shard file (crash-safe), then deletes the parts.

    A molecule stored successfully anywhere replaces a failure record of the same id.

    Args:
        shard_path: the shard file (created if absent).
        parts_dir: directory of part files.
        root_attrs: root attributes for the new shard file (``reference_config_hash`` must match
            the existing shard and every part).
        remove_parts: delete the parts once the new shard file is in place.

    Returns:
        (number of molecules, number of failure records) in the shard file.

    Raises:
        ValueError: a part or the existing shard was generated with another reference config.
    """
    parts = list_parts(parts_dir)
    want = root_attrs["reference_config_hash"]
    sources = ([shard_path] if os.path.isfile(shard_path) else []) + parts
    for p in sources:
        got = read_root_attrs(p).get("reference_config_hash")
        if got != want:
            raise ValueError(
                f"dixc: {p} was generated with another reference config (hash {got}, this run "
                f"{want}); use a separate --out directory for a different config"
            )
    ok: set[str] = set()
    for p in sources:
        ok |= stored_ids(p)[0]
    with atomic_h5(shard_path) as out:
        _set_attrs(out, root_attrs)
        out.require_group(MOLECULES)
        out.require_group(FAILED)
        for p in sources:
            with h5py.File(p, "r") as src:
                _copy_entries(src, out, MOLECULES, set())
                _copy_entries(src, out, FAILED, ok)
        n_ok, n_failed = len(out[MOLECULES]), len(out[FAILED])
    if remove_parts:
        for p in parts:
            with contextlib.suppress(FileNotFoundError):
                os.remove(p)
        with contextlib.suppress(OSError):
            os.rmdir(parts_dir)
    return n_ok, n_failed


def merge_files(out_path: str, inputs: Sequence[str], allow_mixed: bool = False) -> tuple[int, int]:
    """Merges shard files into one file (crash-safe; written to a temporary file, then renamed).

    Args:
        out_path: merged file.
        inputs: shard files (their reference configs must agree unless ``allow_mixed``).
        allow_mixed: allow different reference configs (the first file's attrs are kept).

    Returns:
        (molecules, failure records) in the merged file.

    Raises:
        ValueError: config mismatch or a molecule id stored in two inputs.
    """
    if not inputs:
        raise ValueError("dixc merge: no input files")
    attrs0 = read_root_attrs(inputs[0])
    seen: dict[str, str] = {}
    for p in inputs:
        a = read_root_attrs(p)
        if a.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(
                f"dixc merge: {p} has schema version {a.get('schema_version')}, "
                f"this dixc reads {SCHEMA_VERSION}"
            )
        if not allow_mixed and a.get("reference_config_hash") != attrs0["reference_config_hash"]:
            raise ValueError(
                f"dixc merge: {p} and {inputs[0]} were generated with different reference "
                "configs; pass --allow-mixed to merge anyway"
            )
        for mid in stored_ids(p)[0]:
            if mid in seen:
                raise ValueError(f"dixc merge: molecule {mid!r} is in both {seen[mid]} and {p}")
            seen[mid] = p
    attrs0["shard"] = "merged"
    attrs0["merged_from"] = json.dumps([os.path.basename(p) for p in inputs])
    with atomic_h5(out_path) as out:
        _set_attrs(out, attrs0)
        out.require_group(MOLECULES)
        out.require_group(FAILED)
        for p in inputs:
            with h5py.File(p, "r") as src:
                _copy_entries(src, out, MOLECULES, set())
                _copy_entries(src, out, FAILED, set(seen))
        return len(out[MOLECULES]), len(out[FAILED])


def expand_paths(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Data files from files, directories (their ``*.h5``) and ``index.json`` files."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[str] = []
    for p in map(os.fspath, paths):
        if os.path.isdir(p):
            found = sorted(glob.glob(os.path.join(glob.escape(p), "*.h5")))
            if not found:
                raise FileNotFoundError(f"dixc: no *.h5 data files in {p}")
            files += found
        elif p.endswith(".json"):
            with open(p, encoding="utf-8") as fh:
                index = json.load(fh)
            base = os.path.dirname(os.path.abspath(p))
            files += [os.path.join(base, f) for f in index["files"]]
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise FileNotFoundError(f"dixc: data file {p} does not exist")
    return files


def build_index(paths: str | Sequence[str], out_path: str) -> dict[str, Any]:
    """Writes a JSON index (files, per-molecule sizes, failures) of a set of data files.

    File names in the index are relative to the index's directory.

    Returns:
        The index as a dict.
    """
    files = expand_paths(paths)
    base = os.path.dirname(os.path.abspath(out_path))
    molecules, failed, hashes = [], [], set()
    for p in files:
        with h5py.File(p, "r") as f:
            hashes.add(_py(f.attrs.get("reference_config_hash")))
            rel = os.path.relpath(os.path.abspath(p), base)
            for mid, g in f.get(MOLECULES, {}).items():
                a = {k: _py(g.attrs[k]) for k in ("formula", "natm", "n_heavy", "nao", "nocc")}
                molecules.append({"id": mid, "file": rel, **a})
            for mid, g in f.get(FAILED, {}).items():
                failed.append({"id": mid, "file": rel, "reason": _py(g.attrs.get("reason", ""))})
    index = {
        "schema_version": SCHEMA_VERSION,
        "reference_config_hashes": sorted(h for h in hashes if h),
        "files": [os.path.relpath(os.path.abspath(p), base) for p in files],
        "n_molecules": len(molecules),
        "n_failed": len(failed),
        "molecules": sorted(molecules, key=lambda m: m["id"]),
        "failed": sorted(failed, key=lambda m: m["id"]),
    }
    tmp = out_path + _TMP
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(index, fh, indent=1)
    os.replace(tmp, out_path)
    return index


# ---------------------------------------------------------------------------------------------
# Reader


class MoleculeRecord(Mapping[str, torch.Tensor]):
    """One molecule's reference data: a mapping dataset path -> torch tensor, plus metadata.

    Floating data are float64 tensors, integer data int64, flags bool; scalars are 0-d tensors.
    Keys are the dataset paths of the schema (``"scf/dm"``, ``"hess/hv"``, ...).

    Attributes:
        id: molecule id.
        attrs: group attributes (sizes, formula, SCF strategy, ...).
        timings: wall seconds per stage (``scf``, ``grad``, ``hess``, ``tddft``, ``total``).
    """

    def __init__(
        self,
        molecule_id: str,
        tensors: dict[str, torch.Tensor],
        attrs: dict[str, Any],
        timings: dict[str, float],
    ):
        self.id = molecule_id
        self.tensors = tensors
        self.attrs = attrs
        self.timings = timings

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.tensors[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def __repr__(self) -> str:
        return f"MoleculeRecord({self.id!r}, {sorted(self.tensors)})"


def _to_tensor(a: np.ndarray) -> torch.Tensor:
    if a.dtype == np.bool_:
        return torch.from_numpy(np.array(a))
    if np.issubdtype(a.dtype, np.integer):
        return torch.from_numpy(np.asarray(a, dtype=np.int64))
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


def read_group(g: h5py.Group) -> MoleculeRecord:
    """Reads a ``molecules/<id>`` (or ``failed/<id>``) group into a :class:`MoleculeRecord`."""
    tensors: dict[str, torch.Tensor] = {}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            tensors[name] = _to_tensor(np.asarray(obj[()]))

    g.visititems(visit)
    attrs = {k: _py(v) for k, v in g.attrs.items()}
    timings = {k: float(v) for k, v in g[TIMINGS].attrs.items()} if TIMINGS in g else {}
    return MoleculeRecord(str(attrs.get("id", g.name.rsplit("/", 1)[-1])), tensors, attrs, timings)


class ReferenceDataset(torch.utils.data.Dataset):
    """Reference molecules from shard files, directories of them or a JSON index.

    Files are opened lazily (once per process, so a ``DataLoader`` with workers is fine).
    Indexing by position or by molecule id returns a :class:`MoleculeRecord`.

    Args:
        paths: files, directories (all ``*.h5``) or ``index.json`` files.
        allow_mixed: accept files generated with different reference configs.

    Raises:
        ValueError: schema version or reference configs differ between files.
    """

    def __init__(
        self, paths: str | os.PathLike | Sequence[str | os.PathLike], allow_mixed: bool = False
    ):
        self.files = expand_paths(paths)
        self._entries: list[tuple[int, str]] = []
        self.failed: dict[str, str] = {}
        self.config: dict[str, Any] | None = None
        hashes = set()
        for k, p in enumerate(self.files):
            with h5py.File(p, "r") as f:
                version = _py(f.attrs.get("schema_version"))
                if version != SCHEMA_VERSION:
                    raise ValueError(
                        f"dixc: {p} has schema version {version}; this dixc reads {SCHEMA_VERSION}"
                    )
                hashes.add(_py(f.attrs.get("reference_config_hash")))
                if self.config is None:
                    self.config = json.loads(_py(f.attrs["reference_config"]))
                self._entries += [(k, mid) for mid in f.get(MOLECULES, {})]
                for mid, g in f.get(FAILED, {}).items():
                    self.failed[mid] = str(_py(g.attrs.get("reason", "")))
        if len(hashes) > 1 and not allow_mixed:
            raise ValueError(
                f"dixc: the data files were generated with {len(hashes)} different reference "
                "configs; pass allow_mixed=True to read them together"
            )
        self._entries.sort(key=lambda e: e[1])
        self._pos = {mid: i for i, (_, mid) in enumerate(self._entries)}
        if len(self._pos) != len(self._entries):
            raise ValueError("dixc: a molecule id occurs in more than one data file")
        self._handles: dict[int, h5py.File] = {}
        self._pid = os.getpid()

    @property
    def ids(self) -> list[str]:
        return [mid for _, mid in self._entries]

    def __len__(self) -> int:
        return len(self._entries)

    def _file(self, k: int) -> h5py.File:
        if os.getpid() != self._pid:  # forked DataLoader worker: never share HDF5 handles
            self._handles, self._pid = {}, os.getpid()
        if k not in self._handles:
            self._handles[k] = h5py.File(self.files[k], "r")
        return self._handles[k]

    def __getitem__(self, i: int | str) -> MoleculeRecord:
        if isinstance(i, str):
            i = self._pos[i]
        k, mid = self._entries[i]
        return read_group(self._file(k)[MOLECULES][mid])

    def __iter__(self) -> Iterator[MoleculeRecord]:
        for i in range(len(self)):
            yield self[i]

    def close(self) -> None:
        for f in self._handles.values():
            f.close()
        self._handles = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state


def iter_molecules(paths: str | Sequence[str]) -> Iterator[MoleculeRecord]:
    """Yields every stored molecule of the given files / directories / index as torch tensors."""
    ds = ReferenceDataset(paths, allow_mixed=True)
    try:
        yield from ds
    finally:
        ds.close()


def stored_charge(attrs: Mapping[str, Any], numbers: Sequence[int]) -> int:
    """Total charge of a stored molecule.

    The ``charge`` attribute where present; else ``sum(Z) - nelectron`` (files written before
    ``charge`` was stored); else 0 (such files hold only neutral molecules).

    Args:
        attrs: the molecule group's attributes.
        numbers: ``(natm,)`` atomic numbers (``atoms/numbers``).
    """
    if "charge" in attrs:
        return int(_py(attrs["charge"]))
    if "nelectron" in attrs:
        return int(np.sum(np.asarray(numbers, dtype=np.int64))) - int(_py(attrs["nelectron"]))
    return 0


def stored_ecp(attrs: Mapping[str, Any]) -> dict[str, str]:
    """``{element: ECP name}`` of a stored molecule (its ``ecp`` attribute; files written before
    it was stored computed all electrons)."""
    text = _py(attrs.get("ecp", "")) or "{}"
    return {str(k): str(v) for k, v in json.loads(text).items()}


def _stored_mole(numbers, coords, charge: int, ecp: Mapping[str, str], config: Mapping[str, Any]):
    """PySCF ``Mole`` from stored atoms (atomic numbers, Bohr), charge, ECPs and the data set's
    reference config."""
    from pyscf import gto

    return gto.M(
        atom=[(int(z), tuple(r)) for z, r in zip(numbers, coords, strict=True)],
        unit="Bohr",
        basis=config.get("basis", "def2-svp"),
        ecp=dict(ecp),
        cart=bool(config.get("cart", False)),
        charge=charge,
        spin=0,
        verbose=0,
    )


def record_mole(rec: MoleculeRecord, config: Mapping[str, Any]):
    """The PySCF ``Mole`` of a stored molecule (atoms, Bohr coordinates, charge, ECPs, basis).

    Args:
        rec: a molecule read from a data file.
        config: the data set's reference config (``ReferenceDataset.config``).
    """
    numbers = rec["atoms/numbers"].tolist()
    charge = stored_charge(rec.attrs, numbers)
    mol = _stored_mole(numbers, rec["atoms/coords"].tolist(), charge, stored_ecp(rec.attrs), config)
    mol.dixc_name = rec.id
    if mol.nao != int(rec.attrs.get("nao", mol.nao)):
        raise ValueError(
            f"molecule {rec.id!r}: rebuilt basis has {mol.nao} functions but the data file says "
            f"{rec.attrs.get('nao')}; the file's reference config does not match its contents"
        )
    return mol


def record_context(
    rec: MoleculeRecord,
    config: Mapping[str, Any],
    grid_level: int | None = None,
    coulomb: str = "df",
    device: torch.device | str = "cpu",
    **kwargs: Any,
):
    """The :class:`dixc.context.MolContext` of a stored molecule, on the reference's grid level.

    Args:
        rec: a molecule read from a data file.
        config: the data set's reference config (``ReferenceDataset.config``).
        grid_level: override the reference's PySCF grid level.
        coulomb: 'df' (default), 'exact' or 'none' (see ``MolContext.from_mol``).
        device: where the context's tensors live.
        kwargs: passed to ``MolContext.from_mol``.
    """
    from dixc.context import MolContext

    level = int(config.get("grid_level", 3)) if grid_level is None else grid_level
    return MolContext.from_mol(
        record_mole(rec, config), grid_level=level, coulomb=coulomb, device=device, **kwargs
    )


def rotated_orbitals(mo_coeff: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """C expm(kappa(X)) (differentiable; batched over leading axes of ``x``).

    Args:
        mo_coeff: (nao, nmo) orbitals, occupied first.
        x: (..., n_vir, n_occ) rotation, kappa[a, i] = X[a, i], kappa[i, a] = -X[a, i].

    Returns:
        (..., nao, nmo) rotated orbitals.
    """
    nvir, nocc = x.shape[-2:]
    nmo = nvir + nocc
    kappa = x.new_zeros((*x.shape[:-2], nmo, nmo))
    kappa[..., nocc:, :nocc] = x
    kappa[..., :nocc, nocc:] = -x.transpose(-1, -2)
    return mo_coeff @ torch.linalg.matrix_exp(kappa)


def rotated_density(mo_coeff: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """D(C expm(kappa(X))) = 2 C_o C_o^T, shape (..., nao, nao), for X (..., n_vir, n_occ)."""
    c = rotated_orbitals(mo_coeff, x)[..., : x.shape[-1]]
    return 2.0 * c @ c.transpose(-1, -2)


# ---------------------------------------------------------------------------------------------
# Validation

_REQUIRED = {
    "atoms/numbers": ("natm",),
    "atoms/coords": ("natm", 3),
    "scf/e_tot": (),
    "scf/e_nuc": (),
    "scf/e_core": (),
    "scf/e_coulomb": (),
    "scf/e_xc": (),
    "scf/e_exx": (),
    "scf/dm": ("nao", "nao"),
    "scf/mo_coeff": ("nao", "nmo"),
    "scf/mo_energy": ("nmo",),
    "scf/mo_occ": ("nmo",),
    "scf/fock": ("nao", "nao"),
    "scf/fock_hj": ("nao", "nao"),
    "scf/dipole": (3,),
    "scf/g": ("nvir", "nocc"),
    "scf/g_hj": ("nvir", "nocc"),
    "grad/x": ("k_grad", "nvir", "nocc"),
    "grad/g": ("k_grad", "nvir", "nocc"),
    "grad/g_hj": ("k_grad", "nvir", "nocc"),
    "grad/e_tot": ("k_grad",),
    "grad/e_hj": ("k_grad",),
    "grad/kind": ("k_grad",),
    "hess/v": ("k_hess", "nvir", "nocc"),
    "hess/hv": ("k_hess", "nvir", "nocc"),
    "hess/hv_j": ("k_hess", "nvir", "nocc"),
}


def _check_molecule(g: h5py.Group, config: Mapping[str, Any], deep: bool) -> list[str]:
    mid = g.name.rsplit("/", 1)[-1]
    probs: list[str] = []
    a = {k: _py(v) for k, v in g.attrs.items()}
    for key in ("id", "nao", "nmo", "nocc", "nvir", "natm", "scf_cycles", "scf_strategy"):
        if key not in a:
            probs.append(f"{mid}: attribute {key!r} missing")
    if probs:
        return probs
    if a["id"] != mid:
        probs.append(f"{mid}: attribute id={a['id']!r} differs from the group name")
    dims = {k: int(a[k]) for k in ("nao", "nmo", "nocc", "nvir", "natm")}
    dims["k_grad"] = int(config.get("k_grad", -1))
    dims["k_hess"] = int(config.get("k_hess", -1))
    if dims["nocc"] + dims["nvir"] != dims["nmo"]:
        probs.append(f"{mid}: nocc + nvir != nmo")
    arr: dict[str, np.ndarray] = {}
    for key, shape in _REQUIRED.items():
        if key not in g:
            probs.append(f"{mid}: dataset {key} missing")
            continue
        v = np.asarray(g[key][()])
        want = tuple(dims[s] if isinstance(s, str) else s for s in shape)
        if v.shape != want:
            probs.append(f"{mid}: {key} has shape {v.shape}, expected {want}")
        if np.issubdtype(v.dtype, np.floating) and not np.all(np.isfinite(v)):
            probs.append(f"{mid}: {key} has non-finite values")
        arr[key] = v
    n_tddft = int(config.get("n_tddft", 0))
    if n_tddft:
        for key in ("tddft/tda_e", "tddft/rpa_e"):
            if key not in g:
                probs.append(f"{mid}: dataset {key} missing (n_tddft={n_tddft})")
    if TIMINGS not in g:
        probs.append(f"{mid}: timings missing")
    if probs:
        return probs
    e = {
        k: float(arr[f"scf/{k}"])
        for k in ("e_tot", "e_nuc", "e_core", "e_coulomb", "e_xc", "e_exx")
    }
    parts = e["e_nuc"] + e["e_core"] + e["e_coulomb"] + e["e_xc"] + e["e_exx"]
    if abs(parts - e["e_tot"]) > 1e-8 * max(1.0, abs(e["e_tot"])):
        probs.append(f"{mid}: energy components do not add up to e_tot ({parts - e['e_tot']:.2e})")
    nocc = dims["nocc"]
    if "nelectron" in a and int(a["nelectron"]) != 2 * nocc:
        probs.append(f"{mid}: nelectron = {a['nelectron']} differs from 2 nocc = {2 * nocc}")
    c, dm = arr["scf/mo_coeff"], arr["scf/dm"]
    if np.abs(dm - 2.0 * c[:, :nocc] @ c[:, :nocc].T).max() > 1e-8:
        probs.append(f"{mid}: scf/dm != 2 C_o C_o^T")
    if np.any(arr["scf/mo_occ"][:nocc] != 2.0) or np.any(arr["scf/mo_occ"][nocc:] != 0.0):
        probs.append(f"{mid}: scf/mo_occ is not 2 (occupied first) then 0")
    gnorm = float(np.linalg.norm(arr["scf/g"]))
    tol = float(config.get("grad_tol", 1e-6))
    if gnorm > tol:
        probs.append(f"{mid}: |G(D*)| = {gnorm:.2e} exceeds grad_tol {tol:.1e}: not converged")
    m = c.T @ arr["scf/fock"] @ c
    if np.abs(4.0 * m[nocc:, :nocc] - arr["scf/g"]).max() > 1e-8:
        probs.append(f"{mid}: scf/g != 4 (C^T F C)_vo")
    k_hess = dims["k_hess"]
    if k_hess:  # data without probes (--k-hess 0, e.g. test sets) have nothing to check here
        vv = arr["hess/v"].reshape(k_hess, -1)
        for key in ("hess/hv", "hess/hv_j"):
            s = vv @ arr[key].reshape(k_hess, -1).T
            if np.abs(s - s.T).max() > 1e-6 * max(1.0, np.abs(s).max()):
                probs.append(f"{mid}: {key} is not symmetric (v_i.Hv_j != v_j.Hv_i)")
        if np.abs(np.linalg.norm(vv, axis=1) - 1.0).max() > 1e-10:
            probs.append(f"{mid}: hess/v probes are not unit vectors")
    if deep:
        probs += _check_overlap(mid, arr, a, config)
    return probs


def _check_overlap(
    mid: str, arr: Mapping[str, np.ndarray], attrs: Mapping[str, Any], config: Mapping[str, Any]
) -> list[str]:
    """Rebuilds the molecule (atoms, charge, ECPs, basis): C^T S C = 1, tr(D S) = N = 2 nocc."""
    charge = stored_charge(attrs, arr["atoms/numbers"])
    try:
        mol = _stored_mole(
            arr["atoms/numbers"], arr["atoms/coords"], charge, stored_ecp(attrs), config
        )
    except (RuntimeError, ValueError, KeyError) as err:
        return [f"{mid}: cannot rebuild the molecule (charge {charge}): {err}"]
    s = mol.intor_symmetric("int1e_ovlp")
    c = arr["scf/mo_coeff"]
    probs = []
    if s.shape[0] != c.shape[0]:
        return [f"{mid}: basis {config.get('basis')} gives nao={s.shape[0]}, stored {c.shape[0]}"]
    if np.abs(c.T @ s @ c - np.eye(c.shape[1])).max() > 1e-8:
        probs.append(f"{mid}: orbitals are not orthonormal (C^T S C != 1)")
    n = float(np.einsum("ij,ji", arr["scf/dm"], s))
    if abs(n - mol.nelectron) > 1e-8:
        probs.append(f"{mid}: tr(D S) = {n:.10f} != N = {mol.nelectron}")
    return probs


def check_file(path: str, deep: bool = True) -> tuple[list[str], dict[str, int]]:
    """Validates a data file: schema, attrs, shapes, finiteness and physical identities.

    Per molecule: energy components add up; D = 2 C_o C_o^T; occupations; |G(D*)| <= grad_tol;
    G(D*) = 4 (C^T F C)_vo; probe vectors of unit norm; v_i.H v_j symmetric; with ``deep`` also
    C^T S C = 1 and tr(D S) = N with S rebuilt by PySCF. Failure records must carry a reason.

    Returns:
        (problems, counts) where counts has ``molecules`` and ``failed``; no problems = valid.
    """
    probs: list[str] = []
    counts = {"molecules": 0, "failed": 0}
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        return [f"{path}: not a readable HDF5 file ({err})"], counts
    with f:
        version = _py(f.attrs.get("schema_version"))
        if version != SCHEMA_VERSION:
            probs.append(f"{path}: schema_version {version}, expected {SCHEMA_VERSION}")
            return probs, counts
        try:
            config = json.loads(_py(f.attrs["reference_config"]))
        except (KeyError, ValueError):
            return [f"{path}: root attribute reference_config missing or not JSON"], counts
        if _py(f.attrs.get("reference_config_hash")) != config_hash(config):
            probs.append(f"{path}: reference_config_hash does not match reference_config")
        for g in f.get(MOLECULES, {}).values():
            counts["molecules"] += 1
            probs += _check_molecule(g, config, deep)
        for mid, g in f.get(FAILED, {}).items():
            counts["failed"] += 1
            if not _py(g.attrs.get("reason", "")):
                probs.append(f"failed/{mid}: no reason recorded")
            if mid in f.get(MOLECULES, {}):
                probs.append(f"{mid}: both stored and recorded as failed")
    return probs, counts


def iter_failed(paths: str | Sequence[str]) -> Iterable[tuple[str, str]]:
    """(id, reason) of every failure record in the given files."""
    for p in expand_paths(paths):
        with h5py.File(p, "r") as f:
            for mid, g in f.get(FAILED, {}).items():
                yield mid, str(_py(g.attrs.get("reason", "")))
