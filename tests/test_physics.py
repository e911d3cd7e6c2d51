"""Real abTEM simulations: the CoM on the Nb column follows the projected Nb displacement."""

import numpy as np
import pytest

from polarmap.classes import CLASS_NAMES, CLASS_ANGLES_DEG
from polarmap.pattern import center_of_mass
from polarmap.simulation import SimulationSettings, _Simulator, geometry, simulate
from polarmap.structures import StructureSettings, build_supercell

# 25 cells = 10 nm (the sign of the CoM is reversed below ~5 nm), 256 samples over the 2x2 cell.
SETTINGS = SimulationSettings(method="multislice", gpts_per_cell=128, scan_px=4)


def nb_column_com(class_name, structure=StructureSettings(), settings=SETTINGS):
    """CoM shift (row, col) in pixels of the pattern with the probe on the Nb column."""
    atoms = build_supercell((2, 2, 25), class_name, structure)
    geo = geometry(atoms, settings)
    step = geo.extent[0] / settings.scan_px  # a_pc / 2: position (1, 1) is the Nb column
    patterns = _Simulator(atoms, geo, settings).rows(1, 2, (step, step))
    return center_of_mass(patterns[0, 1]) - np.array(patterns.shape[-2:]) // 2


@pytest.fixture(scope="module")
def class_coms():
    return {name: nb_column_com(name) for name in CLASS_NAMES}


def test_com_points_along_each_class_angle_counter_clockwise(class_coms):
    for name, expected in zip(CLASS_NAMES, CLASS_ANGLES_DEG):
        d_row, d_col = class_coms[name]
        assert np.hypot(d_row, d_col) > 0.2, name
        angle = np.degrees(np.arctan2(d_row, d_col)) % 360
        assert min(abs(angle - expected), 360 - abs(angle - expected)) < 2.0, (name, angle)
    assert class_coms["MU"][0] > 0  # "up" is +row, as in the published data


def test_com_flips_with_reversed_displacement(class_coms):
    # diagonal variants lie in the plane: LU and RD are exact reversals
    assert np.allclose(class_coms["RD"], -class_coms["LU"], atol=0.02)
    assert np.allclose(class_coms["LD"], -class_coms["RU"], atol=0.02)
    # axial variants with the same beam component mirror each other
    assert np.allclose(class_coms["LM"], -class_coms["RM"], atol=0.02)


def test_beam_component_of_axial_variants_changes_magnitude_not_direction(class_coms):
    """(-1, 0, -1) is the full reversal of RM's (1, 0, +1): the CoM still points left, but the
    beam-parallel Nb shift changes the dynamical scattering, so it is about 3x weaker."""
    reversed_rm = nb_column_com("LM", StructureSettings(axial_beam_component=-1))
    assert reversed_rm[1] < -0.05 and abs(reversed_rm[0]) < 0.01
    assert abs(reversed_rm[1]) < 0.6 * abs(class_coms["RM"][1])


def test_com_is_zero_for_the_undisplaced_reference():
    assert np.abs(nb_column_com(None)).max() < 0.01


def test_prism_matches_multislice(tmp_path):
    atoms = build_supercell((2, 2, 10), "RU")
    common = dict(gpts_per_cell=32, scan_px=4, rows_per_block=2)
    simulate(atoms, tmp_path / "p.h5", "p", SimulationSettings(method="prism", **common), ("RU",), progress=False)
    simulate(atoms, tmp_path / "m.h5", "m", SimulationSettings(method="multislice", **common), ("RU",), progress=False)
    import h5py

    with h5py.File(tmp_path / "p.h5") as p, h5py.File(tmp_path / "m.h5") as m:
        prism, multislice = p["patterns"][()], m["patterns"][()]
    assert np.abs(prism - multislice).max() / multislice.max() < 1e-5


def test_larger_cells_share_the_training_detector_calibration(tmp_path):
    """A 6x6 cell (PRISM interpolation 3) gives the same pattern size and mrad/px as 2x2."""
    import h5py

    settings = SimulationSettings(gpts_per_cell=16, scan_px=3, rows_per_block=3)
    for cells in (2, 6):
        simulate(build_supercell((cells, cells, 4), "LU"), tmp_path / f"{cells}.h5", str(cells), settings, ("LU",), progress=False)
    with h5py.File(tmp_path / "2.h5") as small, h5py.File(tmp_path / "6.h5") as large:
        assert small["patterns"].shape[2:] == large["patterns"].shape[2:] == (32, 32)
        assert small.attrs["detector_mrad_per_px"] == pytest.approx(large.attrs["detector_mrad_per_px"])
        assert large.attrs["source"].endswith("interpolation 3)")


def test_frozen_phonons_are_seeded(tmp_path):
    import h5py

    atoms = build_supercell((2, 2, 4), "RU")
    common = dict(gpts_per_cell=16, scan_px=2, rows_per_block=2, frozen_phonon_configs=2)
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        simulate(atoms, tmp_path / f"{name}.h5", name, SimulationSettings(frozen_phonon_seed=seed, **common), ("RU",), progress=False)
    simulate(atoms, tmp_path / "static.h5", "s", SimulationSettings(gpts_per_cell=16, scan_px=2, rows_per_block=2), ("RU",), progress=False)
    data = {}
    for name in ("a", "b", "c", "static"):
        with h5py.File(tmp_path / f"{name}.h5") as f:
            data[name] = f["patterns"][()]
    assert np.array_equal(data["a"], data["b"])
    assert not np.allclose(data["a"], data["c"]) and not np.allclose(data["a"], data["static"])


def test_thickness_figure_from_a_tiny_sweep_shows_the_com_reversal_below_5_nm(tmp_path):
    """RM at 4 and 10 nm, simulated, preprocessed and drawn: the CoM on the Nb column points
    against the class direction at 4 nm and along it at 10 nm (the issue's simple simulation)."""
    import json

    from polarmap import figures
    from polarmap.tables import results_frame
    from polarmap.preprocessing import PreprocessSettings, preprocess_dataset
    from polarmap.structures import write_structure

    settings = SimulationSettings(gpts_per_cell=64, scan_px=4, rows_per_block=4)
    preprocessed, structures, metrics = [], [], []
    for cells in (10, 25):
        name = f"thickness_{cells}"
        atoms = build_supercell((2, 2, cells), "RM")
        write_structure(atoms, tmp_path / f"{name}.xyz")
        simulate(atoms, tmp_path / f"{name}.h5", name, settings, ("RM",), progress=False)
        preprocess_dataset(tmp_path / f"{name}.h5", tmp_path / f"p_{name}.h5", PreprocessSettings(crop_px=33), False, progress=False)
        preprocessed.append(tmp_path / f"p_{name}.h5")
        structures.append(tmp_path / f"{name}.xyz")
        metrics.append({"dataset": name, "label": name, "accuracy": cells / 25, "accepted": ["RM"], "thickness_nm": cells * 0.4,
                        "counts": {c: 0 for c in CLASS_NAMES}})
    (tmp_path / "com.json").write_text(json.dumps(metrics))
    fig = figures.thickness_from_files(results_frame([tmp_path / "com.json"]), preprocessed, structures, tmp_path / "thickness")
    assert (tmp_path / "thickness.png").stat().st_size > 0 and (tmp_path / "thickness.pdf").exists()
    com_axes, accuracy_axes = fig.axes
    thickness, nb_column = com_axes.lines[0].get_data()
    assert thickness == pytest.approx([4.0, 10.0], abs=0.1)
    assert nb_column[0] < -0.1 and nb_column[1] > 0.3, nb_column
    assert {t.get_text() for t in accuracy_axes.get_legend().get_texts()} == {"CoM", "chance"}
    with pytest.raises(ValueError, match="one structure per set"):
        figures.thickness_from_files(results_frame([tmp_path / "com.json"]), preprocessed, structures[:1], tmp_path / "x")


def test_one_electron_wavelength_as_abtem_computes_it():
    """Readers, config and simulation share one wavelength, abTEM's to the last bit, so that a
    declared experimental set is resampled to exactly the models' sampling (200 kV: 0.02508 A)."""
    import abtem

    from polarmap.quantities import wavelength_angstrom

    for energy_kev in (60, 80, 200, 300):
        assert wavelength_angstrom(energy_kev) == abtem.core.energy.energy2wavelength(energy_kev * 1e3)
    assert wavelength_angstrom(200) == pytest.approx(0.025079, abs=1e-6)
