"""Small embedded molecules for tests, benchmarks and the demo (geometries in Angstrom).

QM9 entries are the B3LYP/6-31G(2df,p) geometries of the QM9 data set (Ramakrishnan, Dral, Rupp,
von Lilienfeld, Sci. Data 1, 140022 (2014)) as shipped by the ``qm9pack`` package; the rest are
standard structures. ``alkane(n)`` builds an all-trans n-alkane of any size for scaling studies.
"""

from __future__ import annotations

import math

WATER = """
O  0.000000  0.000000  0.117790
H  0.000000  0.755453 -0.471161
H  0.000000 -0.755453 -0.471161
"""

# QM9 index 19, acetamide CC(N)=O (contains N and O).
QM9_ACETAMIDE = """
C  0.0067988926  1.4996973638 -0.0256703020
C -0.0274038512 -0.0175205065 -0.1489481120
N  1.1782666695 -0.6332429807  0.0569172062
O -1.0372196495 -0.6398064871 -0.4072757187
H  0.9139028028  1.9292375546 -0.4610006733
H -0.8708089634  1.9112418589 -0.5234517551
H -0.0282612356  1.7851727063  1.0314912515
H  1.9840513879 -0.1317586134  0.3867490606
H  1.1904942069 -1.6391956260  0.1000620928
"""

# QM9 index 67, 2-hydroxypropanenitrile CC(O)C#N.
QM9_LACTONITRILE = """
C -0.0099246231  1.5495190809  0.0073219962
C  0.0074048540  0.0172201996  0.0503126972
O  0.7208572187 -0.4963047879  1.1586458270
C -1.3699509508 -0.5235592867  0.0089443174
N -2.4508157221 -0.9323313769  0.0071691167
H  1.0189231373  1.9163044701  0.0272414869
H -0.5026148964  1.9096936186 -0.8999795105
H -0.5480042554  1.9537761129  0.8705366377
H  0.5360284572 -0.3649419486 -0.8297094521
H  0.2770264307 -0.2064453419  1.9642177334
"""


# Ethanol CCO, staggered (anti) conformer.
ETHANOL = """
C  1.1879 -0.3829  0.0000
C  0.0000  0.5526  0.0000
O -1.1867 -0.2472  0.0000
H -1.9237  0.3850  0.0000
H  2.0985  0.2306  0.0000
H  1.1184 -1.0093  0.8869
H  1.1184 -1.0093 -0.8869
H  0.0227  1.1812  0.8852
H  0.0227  1.1812 -0.8852
"""


def _benzene() -> str:
    cc, ch = 1.397, 1.087
    lines = []
    for k in range(6):
        t = math.pi / 3 * k
        lines.append(f"C {cc * math.cos(t): .6f} {cc * math.sin(t): .6f} 0.000000")
    for k in range(6):
        t = math.pi / 3 * k
        r = cc + ch
        lines.append(f"H {r * math.cos(t): .6f} {r * math.sin(t): .6f} 0.000000")
    return "\n".join(lines)


BENZENE = _benzene()


def alkane(n: int) -> str:
    """All-trans C_nH_(2n+2) (3n + 2 atoms) with ideal tetrahedral geometry (Angstrom).

    Args:
        n: number of carbon atoms, >= 1.
    """
    if n < 1:
        raise ValueError("alkane: n must be >= 1")
    if n == 1:
        h = 1.09 / math.sqrt(3.0)
        return "\n".join(
            ["C 0.0 0.0 0.0"]
            + [
                f"H {a * h: .6f} {b * h: .6f} {a * b * h: .6f}"
                for a, b in ((1, 1), (1, -1), (-1, 1), (-1, -1))
            ]
        )
    cc, chb = 1.53, 1.09
    half = math.radians(109.47) / 2
    dx, dy = cc * math.sin(half), cc * math.cos(half)
    carbons = [(i * dx, (dy / 2) * (1 if i % 2 else -1), 0.0) for i in range(n)]
    atoms = [("C", *c) for c in carbons]
    # Two H per carbon out of the zigzag plane, pointing away from the chain.
    hz = chb * math.sin(math.radians(109.47) / 2)
    hy = chb * math.cos(math.radians(109.47) / 2)
    for i, (x, y, _) in enumerate(carbons):
        s = -1 if i % 2 else 1  # away from neighbours, opposite to the carbon's y offset
        atoms.append(("H", x, y - s * hy, hz))
        atoms.append(("H", x, y - s * hy, -hz))
    # Terminal H along the chain direction.
    x0, y0, _ = carbons[0]
    xn, yn, _ = carbons[-1]
    atoms.append(("H", x0 - dx * chb / cc, y0 + dy * chb / cc, 0.0))
    sn = 1 if (n - 1) % 2 else -1
    atoms.append(("H", xn + dx * chb / cc, yn - sn * dy * chb / cc, 0.0))
    return "\n".join(f"{s} {x: .6f} {y: .6f} {z: .6f}" for s, x, y, z in atoms)


MOLECULES = {
    "water": WATER,
    "qm9_acetamide": QM9_ACETAMIDE,
    "qm9_lactonitrile": QM9_LACTONITRILE,
    "benzene": BENZENE,
    "ethanol": ETHANOL,
}


def get(name: str) -> str:
    """Geometry string of an embedded molecule, or ``alkane<n>`` (e.g. ``alkane14``)."""
    if name.startswith("alkane") and name[6:].isdigit():
        return alkane(int(name[6:]))
    try:
        return MOLECULES[name]
    except KeyError:
        raise KeyError(
            f"dixc.molecules: unknown molecule {name!r}; known: {sorted(MOLECULES)} or alkane<n>"
        ) from None


def mole(name: str, basis: str = "def2-svp", cart: bool = False, **kwargs):
    """A built PySCF ``Mole`` of an embedded molecule (charge 0, singlet)."""
    from pyscf import gto

    return gto.M(atom=get(name), basis=basis, cart=cart, verbose=0, **kwargs)
