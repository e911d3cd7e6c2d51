import numpy as np

from polarmap.qstem import write_cfg, write_qsc
from polarmap.simulation import SimulationSettings
from polarmap.structures import build_supercell


def test_cfg_holds_every_atom_in_reduced_coordinates(tmp_path):
    atoms = build_supercell((2, 2, 3), "RU")
    write_cfg(atoms, tmp_path / "a.cfg")
    lines = (tmp_path / "a.cfg").read_text().splitlines()
    assert lines[0] == f"Number of particles = {len(atoms)}"
    assert lines[2] == f"H0(1,1) = {atoms.cell[0, 0]:.6f} A"
    rows = [line.split() for line in lines[lines.index("K"):] if len(line.split()) == 6]
    assert len(rows) == len(atoms)
    nb_start = lines.index("Nb") + 1
    first_nb = np.array(lines[nb_start].split()[:3], dtype=float)
    expected = atoms.get_scaled_positions()[atoms.numbers == 41][0]
    assert np.allclose(first_nb, expected, atol=1e-6)


def test_qsc_matches_the_abtem_settings(tmp_path):
    atoms = build_supercell((6, 6, 50), "LU")
    settings = SimulationSettings(gpts_per_cell=128, scan_px=128)
    write_qsc(atoms, settings, "LU.cfg", "LU_out", tmp_path / "a.qsc")
    params = dict(
        line.split(": ", 1) for line in (tmp_path / "a.qsc").read_text().splitlines() if not line.startswith("%")
    )
    assert params["mode"] == "STEM" and params["filename"] == '"LU.cfg"'
    assert float(params["v0"]) == 200 and float(params["alpha"]) == 24
    assert int(params["nx"]) == 256  # the 2x2-cell probe window, like the training data
    assert int(params["scan_x_pixels"]) == 128 and int(params["slices"]) == 100
    assert float(params["scan_x_stop"]) == np.float64(atoms.cell[0, 0] * 127 / 128).round(6)
