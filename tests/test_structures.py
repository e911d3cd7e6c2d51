import numpy as np
import pytest

from polarmap.classes import CLASS_NAMES, angle_to_class, class_direction
from polarmap.structures import StructureSettings, build_supercell, polarization_variant, read_structure, write_structure


def nb_displacements(atoms):
    """Nb positions relative to the centres of their (undisplaced) cubes."""
    a = atoms.info["a_pc_angstrom"]
    nb = atoms.positions[atoms.numbers == 41]
    return nb - (np.floor(nb / a) + 0.5) * a


def test_composition_and_size():
    atoms = build_supercell((2, 2, 50), "RM")
    symbols = atoms.get_chemical_symbols()
    assert len(atoms) == 2 * 2 * 50 * 5
    assert symbols.count("K") == symbols.count("Na") == 100
    assert symbols.count("Nb") == 200 and symbols.count("O") == 600
    assert atoms.cell.lengths()[2] / 10 == pytest.approx(19.9, abs=0.2)  # 50 cells = 20 nm


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_projected_displacement_points_along_class_angle(name):
    atoms = build_supercell((2, 2, 2), name)
    d = nb_displacements(atoms)
    assert np.allclose(d, d[0])  # every Nb displaced alike
    assert np.linalg.norm(d[0]) == pytest.approx(0.15)
    projected = d[0, :2] / np.linalg.norm(d[0, :2])
    assert np.allclose(projected, class_direction(name), atol=1e-9)


def test_twelve_variants_are_the_110_directions():
    variants = {tuple(np.round(polarization_variant(n, s) * np.sqrt(2)).astype(int)) for n in CLASS_NAMES for s in (1, -1)}
    expected = {v for v in __import__("itertools").product((-1, 0, 1), repeat=3) if sum(map(abs, v)) == 2}
    assert variants == expected and len(variants) == 12


def test_axial_classes_lean_along_the_beam_diagonal_ones_do_not():
    assert polarization_variant("RM", 1)[2] > 0 and polarization_variant("RM", -1)[2] < 0
    assert polarization_variant("RU", 1)[2] == 0


def test_reference_is_centrosymmetric():
    atoms = build_supercell((2, 2, 2), None)
    assert np.allclose(nb_displacements(atoms), 0)


def test_displacement_override_and_random_a_sites_are_seeded():
    settings = StructureSettings(nb_displacement_angstrom=0.3, a_site_order="random", a_site_seed=7)
    one, two = build_supercell((2, 2, 4), "LU", settings), build_supercell((2, 2, 4), "LU", settings)
    assert np.linalg.norm(nb_displacements(one)[0]) == pytest.approx(0.3)
    assert one.get_chemical_symbols() == two.get_chemical_symbols()
    assert one.get_chemical_symbols().count("K") == 8


def test_unknown_class_is_refused():
    with pytest.raises(ValueError, match="unknown polarization class 'XX'"):
        build_supercell((2, 2, 2), "XX")


def test_structure_files_round_trip(tmp_path):
    atoms = build_supercell((2, 2, 3), "MD")
    write_structure(atoms, tmp_path / "s.xyz")
    back = read_structure(tmp_path / "s.xyz")
    assert np.allclose(back.positions, atoms.positions)
    assert back.info["polarization_class"] == "MD"
    assert (tmp_path / "s.cif").exists()
    import ase.io

    assert len(ase.io.read(tmp_path / "s.cif")) == len(atoms)


def test_angle_binning_is_centred_on_class_angles():
    centres = np.deg2rad(np.arange(8) * 45.0)
    assert list(angle_to_class(centres)) == list(range(8))
    assert list(angle_to_class(centres + np.deg2rad(22.4))) == list(range(8))
    assert list(angle_to_class(centres + np.deg2rad(22.6))) == [1, 2, 3, 4, 5, 6, 7, 0]
