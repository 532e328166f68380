"""Molecule sources for reference generation: QM9 (via ``qm9pack``) and xyz / extended-xyz files.

Every source yields :class:`Molecule` records (symbols + Cartesian coordinates in Angstrom, charge,
spin) with a stable, file-system-safe ``id``. :func:`validate` checks that a molecule is something
``dixc generate`` can treat (closed shell, neutral or ionic; known elements, no clashing atoms, no
excluded element) and raises :class:`InvalidMoleculeError` naming the molecule and the fix
otherwise.

QM9 (Ramakrishnan, Dral, Rupp, von Lilienfeld, "Quantum chemistry structures and properties of 134
kilo molecules", Sci. Data 1, 140022 (2014)) is read from the CSV files shipped in the ``qm9pack``
wheel (130,831 molecules: QM9 without the 3,054 that failed the original geometry consistency
check; B3LYP/6-31G(2df,p) geometries). Only the data files are read (``import qm9pack`` itself
needs ``pkg_resources``, which recent setuptools no longer ships).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import importlib.util
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# Element symbols indexed by atomic number (0 is PySCF's ghost "X", never accepted here).
_SYMBOLS: tuple[str, ...] = (
    "X H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As "
    "Se Br Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd "
    "Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am "
    "Cm Bk Cf Es Fm Md No Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og"
).split()
_Z: dict[str, int] = {s.lower(): z for z, s in enumerate(_SYMBOLS) if z > 0}

# Closer than this (Angstrom) is a broken geometry, typically Bohr read as Angstrom or a duplicate.
MIN_DISTANCE_ANGSTROM = 0.4
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.+=-]")


class InvalidMoleculeError(ValueError):
    """A molecule ``dixc generate`` cannot treat; the message names the molecule and the fix.

    Attributes:
        molecule_id: id of the offending molecule (or the file name for unreadable files).
    """

    def __init__(self, molecule_id: str, message: str):
        super().__init__(f"molecule {molecule_id!r}: {message}")
        self.molecule_id = molecule_id


class XYZFormatError(InvalidMoleculeError):
    """A malformed xyz / extended-xyz file (the message gives file and line)."""


@dataclasses.dataclass(eq=False)
class Molecule:
    """A molecule to compute: geometry, charge, spin and provenance.

    Attributes:
        id: stable identifier, safe as an HDF5 group and file name (``qm9_000019``, ``water``).
        symbols: element symbols, length natm (standard capitalisation).
        coords: (natm, 3) float64 Cartesian coordinates in Angstrom.
        charge: total charge (any, as long as the electron count is even).
        spin: number of unpaired electrons 2S, PySCF's ``Mole.spin`` (dixc generate requires 0).
        source: where it came from: ``"qm9"`` or the file path.
        info: extra provenance (QM9 index and SMILES, xyz comment line, frame number).
    """

    id: str
    symbols: tuple[str, ...]
    coords: np.ndarray
    charge: int = 0
    spin: int = 0
    source: str = ""
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def natm(self) -> int:
        return len(self.symbols)

    @property
    def numbers(self) -> np.ndarray:
        """(natm,) int64 atomic numbers."""
        return np.array([_Z[s.lower()] for s in self.symbols], dtype=np.int64)

    @property
    def n_heavy(self) -> int:
        """Number of non-hydrogen atoms."""
        return sum(1 for s in self.symbols if s != "H")

    @property
    def nelectron(self) -> int:
        return int(self.numbers.sum()) - self.charge

    @property
    def formula(self) -> str:
        """Hill formula (C first, then H, then the rest alphabetically)."""
        counts: dict[str, int] = {}
        for s in self.symbols:
            counts[s] = counts.get(s, 0) + 1
        first = [s for s in ("C", "H") if s in counts] if "C" in counts else []
        order = first + sorted(s for s in counts if s not in first)
        return "".join(f"{s}{counts[s] if counts[s] > 1 else ''}" for s in order)

    def pyscf_atom(self) -> list[tuple[str, tuple[float, float, float]]]:
        """The geometry as a PySCF ``atom`` list (Angstrom)."""
        return [
            (s, tuple(float(c) for c in xyz))
            for s, xyz in zip(self.symbols, self.coords, strict=True)
        ]


def element_symbol(token: str, molecule_id: str = "?") -> str:
    """Standard symbol for ``token`` (a symbol in any case, or an atomic number).

    Raises:
        InvalidMoleculeError: unknown element.
    """
    t = token.strip()
    if t.isdigit():
        z = int(t)
        if 0 < z < len(_SYMBOLS):
            return _SYMBOLS[z]
    else:
        z = _Z.get(t.lower(), 0)
        if z:
            return _SYMBOLS[z]
    raise InvalidMoleculeError(
        molecule_id,
        f"unknown element {token!r}; give element symbols (H, C, N, O, ...) or atomic numbers",
    )


def parse_elements(spec: str | Iterable[str] | None) -> frozenset[str]:
    """Element set from ``"F,Cl"``, ``"F Cl"`` or a list; symbols are normalised."""
    if spec is None:
        return frozenset()
    tokens = re.split(r"[\s,]+", spec) if isinstance(spec, str) else list(spec)
    return frozenset(element_symbol(t, "--exclude") for t in tokens if t.strip())


def validate(mol: Molecule, exclude: Iterable[str] = ()) -> None:
    """Checks that ``dixc generate`` can treat ``mol``.

    Requires at least one atom, known elements, none of ``exclude``, a closed shell (spin 0 and an
    even electron count; ions such as OH- or NH4+ are fine) and no two atoms closer than 0.4
    Angstrom.

    Raises:
        InvalidMoleculeError: naming the molecule, what is wrong and what to do.
    """
    if mol.natm == 0:
        raise InvalidMoleculeError(mol.id, "has no atoms")
    for s in mol.symbols:
        element_symbol(s, mol.id)
    coords = np.asarray(mol.coords, dtype=np.float64)
    if coords.shape != (mol.natm, 3) or not np.all(np.isfinite(coords)):
        raise InvalidMoleculeError(
            mol.id, f"coordinates must be finite with shape ({mol.natm}, 3), got {coords.shape}"
        )
    bad = sorted(set(mol.symbols) & set(parse_elements(exclude)))
    if bad:
        raise InvalidMoleculeError(
            mol.id,
            f"contains excluded element(s) {', '.join(bad)}; remove it from the input, drop "
            "--exclude, or pass --skip-invalid to skip such molecules",
        )
    if mol.spin != 0:
        raise InvalidMoleculeError(
            mol.id,
            f"has multiplicity {mol.spin + 1} (spin 2S={mol.spin}); dixc generate treats "
            "closed-shell molecules only (restricted KS, multiplicity 1): drop the molecule or "
            "set multiplicity=1 in its xyz comment line",
        )
    if mol.nelectron % 2:
        raise InvalidMoleculeError(
            mol.id,
            f"has an odd number of electrons ({mol.nelectron}: {mol.formula}, charge "
            f"{mol.charge}); dixc generate treats closed-shell molecules only (restricted KS): "
            "check the formula for a missing hydrogen, or the charge= of its xyz comment line",
        )
    if mol.natm > 1:
        d = np.linalg.norm(coords[:, None, :] - coords[None, :, :], axis=-1)
        d[np.diag_indices(mol.natm)] = np.inf
        i, j = np.unravel_index(int(np.argmin(d)), d.shape)
        if d[i, j] < MIN_DISTANCE_ANGSTROM:
            raise InvalidMoleculeError(
                mol.id,
                f"atoms {i} ({mol.symbols[i]}) and {j} ({mol.symbols[j]}) are only "
                f"{d[i, j]:.3f} Angstrom apart; coordinates must be in Angstrom (Bohr given?) "
                "without duplicated atoms",
            )


# --------------------------------------------------------------------------------------------
# xyz / extended xyz


def _safe_id(text: str) -> str:
    return _ID_UNSAFE.sub("_", text) or "_"


_KV = re.compile(r'(\w+)\s*=\s*("[^"]*"|\S+)')


def _parse_comment(comment: str) -> dict[str, str]:
    """key=value pairs of an extended-xyz comment line (values unquoted); {} for plain xyz."""
    return {k.lower(): v.strip('"') for k, v in _KV.findall(comment)}


def _columns(props: str | None, path: str, lineno: int) -> tuple[int, int]:
    """(species column, first position column) from an extxyz ``Properties`` string."""
    if props is None:
        return 0, 1
    f = props.split(":")
    if len(f) % 3:
        raise XYZFormatError(
            os.path.basename(path), f"{path}:{lineno}: malformed Properties={props!r}"
        )
    col, species, pos = 0, None, None
    for name, _kind, n in zip(f[0::3], f[1::3], f[2::3], strict=True):
        if name == "species":
            species = col
        elif name == "pos":
            pos = col
        col += int(n)
    if species is None or pos is None:
        raise XYZFormatError(
            os.path.basename(path),
            f"{path}:{lineno}: Properties={props!r} lacks 'species' or 'pos'",
        )
    return species, pos


def _float(tok: str) -> float:
    # The original QM9 xyz files write exponents Mathematica-style: 1.2*^-6.
    return float(tok.replace("*^", "e"))


def read_xyz(path: str | os.PathLike) -> list[Molecule]:
    """Reads every frame of an xyz or extended-xyz file.

    Ids are the file stem (``water.xyz`` -> ``water``), with ``-<frame>`` appended when the file
    holds several frames. Extended-xyz comment lines may set ``charge=``, ``multiplicity=`` (2S+1)
    or ``spin=`` (2S) and ``Properties=`` (``species`` and ``pos`` columns are used). The original
    QM9 files (``gdb`` comment, three trailing property lines, ``*^`` exponents) are read too.

    Args:
        path: file path.

    Returns:
        Molecules (coordinates in Angstrom), validated only for syntax here.

    Raises:
        XYZFormatError: malformed file (message gives file and line).
        InvalidMoleculeError: unknown element.
    """
    path = os.fspath(path)
    stem = _safe_id(os.path.splitext(os.path.basename(path))[0])
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    frames: list[Molecule] = []
    i = 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        head = lines[i].strip()
        frame_id = f"{stem}-{len(frames)}"
        try:
            natm = int(head.split()[0])
            if natm <= 0 or len(head.split()) != 1:
                raise ValueError
        except ValueError:
            raise XYZFormatError(
                frame_id,
                f"{path}:{i + 1}: expected the number of atoms (a positive integer), got {head!r}",
            ) from None
        if i + 1 >= len(lines):
            raise XYZFormatError(frame_id, f"{path}:{i + 2}: missing comment line")
        comment = lines[i + 1]
        kv = _parse_comment(comment)
        if "lattice" in kv or kv.get("pbc", "F F F").upper().replace(" ", "") not in ("FFF", "F"):
            raise XYZFormatError(frame_id, f"{path}:{i + 2}: periodic structures are not supported")
        sp_col, pos_col = _columns(kv.get("properties"), path, i + 2)
        symbols, coords = [], []
        for k in range(natm):
            ln = i + 2 + k
            if ln >= len(lines) or not lines[ln].strip():
                raise XYZFormatError(
                    frame_id,
                    f"{path}:{ln + 1}: the frame declares {natm} atoms but has only {k} atom lines",
                )
            f = lines[ln].split()
            if len(f) < max(sp_col + 1, pos_col + 3):
                raise XYZFormatError(
                    frame_id, f"{path}:{ln + 1}: expected 'element x y z', got {lines[ln]!r}"
                )
            try:
                xyz = [_float(t) for t in f[pos_col : pos_col + 3]]
            except ValueError:
                raise XYZFormatError(
                    frame_id, f"{path}:{ln + 1}: non-numeric coordinates in {lines[ln]!r}"
                ) from None
            symbols.append(element_symbol(f[sp_col], frame_id))
            coords.append(xyz)
        i += 2 + natm
        if comment.startswith("gdb "):  # original QM9 file: frequencies, SMILES, InChI follow
            i += 3
        try:
            charge = int(kv.get("charge", "0"))
            if "multiplicity" in kv or "mult" in kv:
                spin = int(kv.get("multiplicity", kv.get("mult", "1"))) - 1
            else:
                spin = int(kv.get("spin", "0"))
        except ValueError:
            raise XYZFormatError(
                frame_id, f"{path}: non-integer charge/multiplicity in comment {comment!r}"
            ) from None
        frames.append(
            Molecule(
                id=frame_id,
                symbols=tuple(symbols),
                coords=np.array(coords, dtype=np.float64),
                charge=charge,
                spin=spin,
                source=path,
                info={"comment": comment.strip(), "frame": len(frames)},
            )
        )
    if not frames:
        raise XYZFormatError(stem, f"{path}: no molecules in file")
    if len(frames) == 1:
        frames[0].id = stem
    return frames


XYZ_SUFFIXES = (".xyz", ".extxyz")


def xyz_molecules(
    paths: str | os.PathLike | Sequence[str | os.PathLike], skip_unreadable: bool = False
) -> list[Molecule]:
    """Molecules from xyz / extxyz files and directories of them (top level, sorted by name).

    Args:
        paths: files and directories.
        skip_unreadable: log and skip a path whose files cannot be read instead of raising.

    Raises:
        FileNotFoundError: a path does not exist or a directory holds no xyz files.
        XYZFormatError, InvalidMoleculeError: see :func:`read_xyz`; also duplicated ids.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if skip_unreadable:
        mols: list[Molecule] = []
        for p in paths:
            try:
                mols += xyz_molecules(p)
            except InvalidMoleculeError as err:
                log.warning("skipping unreadable input: %s", err)
        return mols
    files: list[str] = []
    for p in map(os.fspath, paths):
        if os.path.isdir(p):
            found = sorted(
                os.path.join(p, n) for n in os.listdir(p) if n.lower().endswith(XYZ_SUFFIXES)
            )
            if not found:
                raise FileNotFoundError(f"dixc: no *.xyz / *.extxyz files in directory {p}")
            files += found
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise FileNotFoundError(f"dixc: xyz input {p} does not exist")
    out: list[Molecule] = []
    seen: dict[str, str] = {}
    for f in files:
        for m in read_xyz(f):
            if m.id in seen:
                raise InvalidMoleculeError(
                    m.id, f"id given by both {seen[m.id]} and {f}; rename one of the files"
                )
            seen[m.id] = f
            out.append(m)
    return out


# --------------------------------------------------------------------------------------------
# QM9 via qm9pack


@dataclasses.dataclass(frozen=True)
class _QM9Row:
    index: int
    smiles: str
    symbols: tuple[str, ...]
    xyz: str  # JSON list of [x, y, z] (Angstrom), parsed only when selected


def qm9pack_data_dir() -> str:
    """Directory holding qm9pack's ``qm9_part*.csv`` files.

    Raises:
        ImportError: qm9pack is not installed.
    """
    spec = importlib.util.find_spec("qm9pack")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "dixc: the QM9 source needs the qm9pack package (its wheel ships the QM9 geometries): "
            "pip install qm9pack"
        )
    d = os.path.join(next(iter(spec.submodule_search_locations)), "data")
    if not os.path.isfile(os.path.join(d, "qm9_part1.csv")):
        raise ImportError(f"dixc: qm9pack is installed but {d}/qm9_part1.csv is missing")
    return d


@functools.cache
def _qm9_table() -> tuple[_QM9Row, ...]:
    """All QM9 rows, sorted by QM9 index (parsed once per process, ~1.5 s)."""
    d = qm9pack_data_dir()
    csv.field_size_limit(1 << 28)
    rows = []
    parts = sorted(n for n in os.listdir(d) if re.fullmatch(r"qm9_part\d+\.csv", n))
    for name in parts:
        with open(os.path.join(d, name), newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader)
            col = {h: k for k, h in enumerate(header)}
            ci, cs, ce, cx = col["Index"], col["SMILES"], col["Elements"], col["XYZ_Ang"]
            for r in reader:
                symbols = tuple(s.strip().strip("'\"") for s in r[ce].strip("[]").split(","))
                rows.append(_QM9Row(int(r[ci]), r[cs], symbols, r[cx]))
    rows.sort(key=lambda r: r.index)
    log.debug("qm9pack: %d molecules from %s", len(rows), d)
    return tuple(rows)


def _parse_qm9_xyz(text: str) -> np.ndarray:
    # "[[x,y,z],...]" with numbers such as "0." that JSON rejects.
    toks = text.replace("[", " ").replace("]", " ").replace(",", " ").split()
    return np.array([_float(t) for t in toks], dtype=np.float64).reshape(-1, 3)


def parse_ranges(spec: str) -> list[tuple[int, int]]:
    """``"1-5,7,9-"`` -> [(1, 5), (7, 7), (9, inf)] inclusive ranges (open ends allowed)."""
    out = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d*)\s*-\s*(\d*)|(\d+)", part)
        if not m:
            raise ValueError(f"dixc: bad range {part!r} in {spec!r}; use e.g. 1-5,7,9-")
        if m.group(3):
            lo = hi = int(m.group(3))
        else:
            lo = int(m.group(1)) if m.group(1) else 0
            hi = int(m.group(2)) if m.group(2) else 2**62
        out.append((lo, hi))
    return out


def _in_ranges(x: int, ranges: list[tuple[int, int]]) -> bool:
    return any(lo <= x <= hi for lo, hi in ranges)


def qm9_molecules(
    *,
    min_heavy: int | None = None,
    max_heavy: int | None = None,
    heavy: str | None = None,
    exclude: Iterable[str] = (),
    indices: str | Sequence[int] | None = None,
    subset: int | None = None,
    subset_seed: int = 0,
    limit: int | None = None,
) -> list[Molecule]:
    """QM9 molecules selected as in the literature.

    Filters apply in order: QM9 index ranges, heavy-atom count (``min_heavy``/``max_heavy`` and the
    range list ``heavy``, e.g. ``"1-5,7"``), excluded elements (e.g. ``{"F"}``: molecules that
    contain them are left out), then a random ``subset`` of the survivors (seeded, returned in
    index order) and finally the first ``limit``.

    Returns:
        Molecules with ids ``qm9_<index:06d>``, coordinates in Angstrom.
    """
    table = _qm9_table()
    excl = parse_elements(exclude)
    if isinstance(indices, str):
        idx_ranges = parse_ranges(indices)
    elif indices is not None:
        idx_ranges = [(int(i), int(i)) for i in indices]
    else:
        idx_ranges = None
    heavy_ranges = parse_ranges(heavy) if heavy else None
    sel = []
    for r in table:
        if idx_ranges is not None and not _in_ranges(r.index, idx_ranges):
            continue
        nh = sum(1 for s in r.symbols if s != "H")
        if min_heavy is not None and nh < min_heavy:
            continue
        if max_heavy is not None and nh > max_heavy:
            continue
        if heavy_ranges is not None and not _in_ranges(nh, heavy_ranges):
            continue
        if excl and excl.intersection(r.symbols):
            continue
        sel.append(r)
    if subset is not None and subset < len(sel):
        rng = np.random.default_rng(subset_seed)
        keep = np.sort(rng.choice(len(sel), size=subset, replace=False))
        sel = [sel[k] for k in keep]
    if limit is not None:
        sel = sel[:limit]
    return [
        Molecule(
            id=f"qm9_{r.index:06d}",
            symbols=r.symbols,
            coords=_parse_qm9_xyz(r.xyz),
            source="qm9",
            info={"qm9_index": r.index, "smiles": r.smiles},
        )
        for r in sel
    ]
