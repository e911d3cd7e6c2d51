"""KNN (K0.5Na0.5NbO3) supercells with ase, viewed along [100]pc (the beam is +z).

In-plane axes: x is the detector/scan column direction ("right"), y the row direction ("up").
Nb is displaced along one of the 12 <110>pc variants; projected along z these give the
8 classes of `polarmap.classes`: diagonal classes from the single in-plane variant (x, y, 0),
axial classes from one of the two variants with a component along the beam, e.g. RM from
(1, 0, +1) or (1, 0, -1) (`axial_beam_component` picks which).
"""

from dataclasses import dataclass
from pathlib import Path

import ase
import ase.io
import numpy as np
import yaml

from polarmap.classes import CLASS_NAMES, class_direction
from polarmap.atomic import replace_atomically

DEFAULT_LATTICE_FILE = Path(__file__).with_name("data") / "knn_amm2.yaml"


@dataclass(frozen=True)
class StructureSettings:
    lattice_file: str = ""
    a_site_order: str = "ordered"  # "ordered" (rock-salt K/Na) or "random"
    a_site_seed: int = 0
    nb_displacement_angstrom: float | None = None  # None: the refinement's value
    axial_beam_component: int = 1  # +1 or -1: which of the two variants gives an axial class


@dataclass(frozen=True)
class Lattice:
    a_pc: float
    nb_displacement: float
    source: str


def load_lattice(settings: StructureSettings) -> Lattice:
    path = Path(settings.lattice_file) if settings.lattice_file else DEFAULT_LATTICE_FILE
    with open(path) as f:
        ref = yaml.safe_load(f)
    try:
        volume_per_formula_unit = ref["a_o_angstrom"] * ref["b_o_angstrom"] * ref["c_o_angstrom"] / 2
        displacement = ref["nb_displacement_angstrom"]
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: missing lattice key {err}; see resources/knn_amm2.yaml") from None
    if settings.nb_displacement_angstrom is not None:
        displacement = settings.nb_displacement_angstrom
    return Lattice(volume_per_formula_unit ** (1 / 3), float(displacement), f"{path.name} ({ref.get('space_group', '?')})")


def polarization_variant(class_name: str | None, axial_beam_component: int = 1) -> np.ndarray:
    """Unit <110>pc vector (x, y, z) of the Nb displacement for a class; zero for None."""
    if class_name is None:
        return np.zeros(3)
    if axial_beam_component not in (1, -1):
        raise ValueError(f"axial_beam_component must be +1 or -1, got {axial_beam_component}")
    in_plane = np.rint(class_direction(class_name) * np.sqrt(2)).clip(-1, 1)
    vector = np.array([in_plane[0], in_plane[1], 0.0])
    if np.count_nonzero(in_plane) == 1:  # axial class: the variant leans along the beam
        vector[2] = axial_beam_component
    return vector / np.linalg.norm(vector)


def build_supercell(
    repeats: tuple[int, int, int],
    class_name: str | None,
    settings: StructureSettings = StructureSettings(),
) -> ase.Atoms:
    """A (nx, ny, nz) pseudocubic KNN supercell, beam along z, Nb displaced for `class_name`
    (None: the undisplaced, centrosymmetric reference)."""
    if class_name is not None and class_name not in CLASS_NAMES:
        raise ValueError(f"unknown polarization class {class_name!r}: use one of {', '.join(CLASS_NAMES)}")
    nx, ny, nz = (int(n) for n in repeats)
    if min(nx, ny, nz) < 1:
        raise ValueError(f"supercell repeats must be positive, got {repeats}")
    lattice = load_lattice(settings)
    a = lattice.a_pc
    variant = polarization_variant(class_name, settings.axial_beam_component)
    cells = np.stack(np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz), indexing="ij"), -1).reshape(-1, 3)

    a_sites = cells * a
    nb_sites = (cells + 0.5) * a + lattice.nb_displacement * variant
    oxygen_offsets = np.array([[0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5]])
    o_sites = ((cells[:, None, :] + oxygen_offsets[None]) * a).reshape(-1, 3)

    a_symbols = _a_site_symbols(cells, settings)
    symbols = list(a_symbols) + ["Nb"] * len(cells) + ["O"] * len(o_sites)
    atoms = ase.Atoms(
        symbols,
        positions=np.concatenate([a_sites, nb_sites, o_sites]),
        cell=np.diag([nx * a, ny * a, nz * a]),
        pbc=True,
    )
    atoms.info.update(
        polarization_class=class_name or "none",
        variant=" ".join(f"{v:+.4f}" for v in variant),
        nb_displacement_angstrom=lattice.nb_displacement if class_name else 0.0,
        a_pc_angstrom=a,
        supercell=f"{nx}x{ny}x{nz}",
        a_site_order=settings.a_site_order,
        a_site_seed=settings.a_site_seed if settings.a_site_order == "random" else -1,
        lattice_source=lattice.source,
    )
    return atoms


def apply_mistilt(atoms: ase.Atoms, mistilt_mrad) -> ase.Atoms:
    """Tilt the crystal by small angles (about y: along x; about x: along y) by shearing each
    atom laterally in proportion to its depth, which keeps the supercell periodic."""
    tilted = atoms.copy()
    tilt = np.tan(np.asarray(mistilt_mrad, dtype=float) * 1e-3)
    tilted.positions[:, :2] += tilted.positions[:, 2:3] * tilt[None, :]
    tilted.wrap()
    tilted.info["mistilt_mrad"] = " ".join(f"{t:g}" for t in mistilt_mrad)
    return tilted


def _a_site_symbols(cells: np.ndarray, settings: StructureSettings) -> np.ndarray:
    if settings.a_site_order == "ordered":
        return np.where(cells.sum(axis=1) % 2 == 0, "K", "Na")
    if settings.a_site_order == "random":
        symbols = np.array(["K", "Na"] * (len(cells) // 2) + ["K"] * (len(cells) % 2))
        return np.random.default_rng(settings.a_site_seed).permutation(symbols)
    raise ValueError(f"a_site_order must be 'ordered' or 'random', got {settings.a_site_order!r}")


def lateral_symmetries(atoms: ase.Atoms, tolerance_angstrom: float = 1e-4) -> list[tuple[int, int]]:
    """Whole-cell lateral translations (i, j), in pseudocubic cells along x and y, that map the
    supercell onto itself (the identity excluded): the rock-salt ordered A sites give the
    diagonal (1, 1); a random occupation gives none. Translations along the beam do not count,
    since they move the specimen's surfaces."""
    a_pc = float(atoms.info["a_pc_angstrom"])
    nx, ny = (int(round(length / a_pc)) for length in atoms.cell.lengths()[:2])
    cell = atoms.cell.lengths()

    def keys(positions):
        wrapped = np.mod(positions, cell)
        wrapped[np.isclose(wrapped, cell, atol=tolerance_angstrom)] = 0.0
        return set(zip(atoms.numbers.tolist(), *np.rint(wrapped / tolerance_angstrom).astype(np.int64).T.tolist()))

    reference = keys(atoms.positions)
    found = []
    for i in range(nx):
        for j in range(ny):
            if (i, j) != (0, 0) and keys(atoms.positions + np.array([i * a_pc, j * a_pc, 0.0])) == reference:
                found.append((i, j))
    return found


def write_structure(atoms: ase.Atoms, path: str | Path) -> None:
    """Write extended XYZ (carries the class and variant) and a CIF beside it, atomically."""
    path = Path(path)
    for target, fmt in ((path, "extxyz"), (path.with_suffix(".cif"), "cif")):
        replace_atomically(target, lambda tmp: ase.io.write(tmp, atoms, format=fmt))


def read_structure(path: str | Path) -> ase.Atoms:
    try:
        return ase.io.read(path, format="extxyz")
    except Exception as err:  # ase raises many types for bad files
        raise ValueError(f"{path}: not a readable extended-XYZ structure ({err}); rerun `polarmap structure`") from None
