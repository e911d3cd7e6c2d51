"""The position-aware unit-cell model: its windows, the symmetries of the square acting on image,
field and label together, and that it learns the class of every cell of held-out lattices."""

import numpy as np
import pytest

from polarmap.cells import ScanCells
from polarmap.unitcell import (CELL_GRID, UnitCellSettings, cell_corners_px, cell_windows, lattice_windows, predict_windows, symmetry,
                              train_unit_cell_model)
from test_columns import lattice_image

CELL_PX, STEP = 8.0, 0.5


def gradient(image):
    """A CoM-like field: the periodic gradient of the image, (rows, cols, 2) = (d/drow, d/dcol)."""
    return np.stack([(np.roll(image, -1, 0) - np.roll(image, 1, 0)) / 2, (np.roll(image, -1, 1) - np.roll(image, 1, 1)) / 2], axis=-1)


def source(polarization, seed, noise=0.01):
    image, _ = lattice_image(cell_px=CELL_PX, step=STEP, polarization=polarization, seed=seed, noise=noise)
    cells = ScanCells(STEP, (0.0, 0.0), CELL_PX * STEP, (4, 4))
    return {"name": f"{polarization}-{seed}", "adf": image, "com": gradient(image), "cell_px": CELL_PX,
            "corners": cell_corners_px(cells), "label": polarization}


def nb_offset(window):
    """Where the Nb column (the bright middle of a window's ADF) lies from the window centre: (row, col)."""
    middle = slice(CELL_GRID // 4, -CELL_GRID // 4)
    adf = window[0][middle, middle] - window[0][middle, middle].min()
    grid = np.arange(CELL_GRID // 2) - (CELL_GRID // 2 - 1) / 2
    return np.array([(adf.sum(axis=1) * grid).sum(), (adf.sum(axis=0) * grid).sum()]) / adf.sum()


def test_windows_cover_one_cell_with_the_nb_column_off_centre_along_the_class():
    for k in range(8):
        s = source(k, seed=k, noise=0)
        windows = cell_windows(s["adf"], s["com"], CELL_PX, s["corners"])
        assert windows.shape == (16, 3, CELL_GRID, CELL_GRID)
        offset = nb_offset(windows[5])
        assert np.degrees(np.arctan2(offset[0], offset[1])) % 360 == pytest.approx(45 * k, abs=8)


@pytest.mark.parametrize("quarter_turns, mirror", [(1, False), (2, False), (3, False), (0, True), (1, True), (3, True)])
def test_a_symmetry_of_the_square_turns_image_field_and_label_together(quarter_turns, mirror):
    s = source(1, seed=3, noise=0)  # RU
    windows = cell_windows(s["adf"], s["com"], CELL_PX, s["corners"])
    turned, labels = symmetry(windows, np.full(len(windows), 1), quarter_turns, mirror)
    offset = nb_offset(turned[5])
    assert np.degrees(np.arctan2(offset[0], offset[1])) % 360 == pytest.approx(45 * labels[5], abs=8)
    # the field stays the gradient of the image: its components turned with it
    adf = turned[5, 0]
    d_row = (np.roll(adf, -1, 0) - np.roll(adf, 1, 0)) / 2
    d_col = (np.roll(adf, -1, 1) - np.roll(adf, 1, 1)) / 2
    inner = (slice(2, -2), slice(2, -2))
    assert np.corrcoef(turned[5, 1][inner].ravel(), d_row[inner].ravel())[0, 1] > 0.8
    assert np.corrcoef(turned[5, 2][inner].ravel(), d_col[inner].ravel())[0, 1] > 0.8


def test_the_unit_cell_model_learns_every_class_on_held_out_lattices(tmp_path):
    training = [source(k, seed=10 * k + j, noise=0.01) for k in range(8) for j in range(2)]
    validation = [source(k, seed=100 + k, noise=0.01) for k in range(8)]
    settings = UnitCellSettings(epochs=10, windows_per_cell=8, seed=1)
    record = train_unit_cell_model(training, validation, tmp_path / "model.pt", settings, learned_min_accuracy=0.25)
    assert record["learned"] and record["validation_accuracy"] >= 0.95, record["history"]
    from polarmap.unitcell import load_unit_cell_model

    model = load_unit_cell_model(tmp_path / "model.pt")
    test = source(6, seed=999, noise=0.01)  # MD, a lattice never seen
    classes, angles = predict_windows(model, cell_windows(test["adf"], test["com"], CELL_PX, test["corners"]))
    assert (classes == 6).all() and np.degrees(angles) % 360 == pytest.approx(270, abs=15)


@pytest.mark.parametrize("angle_deg", [10.0, 37.0])
def test_a_cell_turned_against_the_scan_is_the_models_upright_cell(angle_deg):
    """A real scan's cells (the lattice found, `polarmap map --unit-cell-model`) are windowed along
    their own vectors, the field taken along them: the window of a crystal turned against the scan
    is the window of the same crystal upright (RU, 30 pm), image and field."""
    from test_lattice import perovskite

    def window(angle):
        image, a, b, _ = perovskite(shape=(64, 64), angle_deg=angle, direction_deg=45, displacement_pm=30)
        nb = np.array([3.3, 2.7]) + 3 * a + 3 * b  # the lattice's origin, and a cell well inside the image
        return lattice_windows(image, gradient(image), nb - (a + b) / 2, np.array([a, b]), periodic=False)[0]

    upright, turned = window(0.0), window(angle_deg)
    for channel in range(3):
        assert np.corrcoef(upright[channel].ravel(), turned[channel].ravel())[0, 1] > 0.95, channel
    offset = nb_offset(turned)
    assert np.degrees(np.arctan2(offset[0], offset[1])) == pytest.approx(45, abs=8)  # RU in the crystal's axes
