"""Column fitting on lattices with known displacements, and the unit cells of a scan: which cell a
probe position lies in, the majority vote per cell, accuracy against the position in the cell."""

import numpy as np
import pytest

from polarmap.cells import ScanCells, accuracy_by_position, cell_majority, scan_cells
from polarmap.classes import CLASS_NAMES, class_direction
from polarmap.columns import fit_cells


def lattice_image(cells=4, cell_px=12.0, step=0.33, displacement=0.15, noise=0.01, seed=0, periodic=True, margin_px=0, polarization=None):
    """An ADF-like image: Gaussian A-site columns of random height (K or Na) at the cell corners,
    bright Nb columns displaced from the cell centres by `displacement` angstrom along the class
    of each cell (all 8 classes in turn, or every cell `polarization`), faint oxygen columns,
    Gaussian noise relative to the
    Nb height; not periodic: the lattice `margin_px` inside the image. Returns the image and the
    true (class, (row, col) displacement) of each cell."""
    rng = np.random.default_rng(seed)
    n = int(round(cells * cell_px))
    rows, cols = np.indices((n + 2 * margin_px, n + 2 * margin_px), dtype=np.float64) - margin_px
    image = np.zeros(rows.shape)
    width = 0.35 / step  # about the probe: 0.35 A

    def column(r, c, height):
        dr, dc = rows - r, cols - c
        if periodic:
            dr, dc = (dr + n / 2) % n - n / 2, (dc + n / 2) % n - n / 2
        image[:] += height * np.exp(-(dr**2 + dc**2) / (2 * width**2))

    truth = {}
    for i in range(cells + (not periodic)):
        for j in range(cells + (not periodic)):
            column(i * cell_px, j * cell_px, rng.uniform(0.3, 0.6))
            column((i + 0.5) * cell_px, j * cell_px, 0.1)
            column(i * cell_px, (j + 0.5) * cell_px, 0.1)
            if i < cells and j < cells:
                k = (i * cells + j) % len(CLASS_NAMES) if polarization is None else polarization
                col_row = class_direction(CLASS_NAMES[k]) * displacement
                truth[i, j] = k, np.array([col_row[1], col_row[0]])
                column((i + 0.5) * cell_px + col_row[1] / step, (j + 0.5) * cell_px + col_row[0] / step, 1.0)
    return image + rng.normal(0, noise, image.shape), truth


def check(fit, truth, cell_px, tolerance_angstrom, origin_px=0):
    for nb, displacement, k in zip(fit.nb_px, fit.displacement_angstrom, fit.classes):
        cell = tuple(int(v) for v in np.floor((nb - origin_px) / cell_px))
        true_class, true_displacement = truth[cell]
        assert np.hypot(*(displacement - true_displacement)) < tolerance_angstrom, (cell, displacement, true_displacement)
        assert k == true_class, cell


@pytest.mark.parametrize("cell_px, step", [(12.0, 0.33), (8.0, 0.5), (16.0, 0.25)])
def test_a_periodic_lattice_with_noise_gives_every_displacement_within_0_02_angstrom(cell_px, step):
    image, truth = lattice_image(cell_px=cell_px, step=step)
    fit = fit_cells(image, cell_px, step, periodic=True)
    assert len(fit.classes) == 16  # every cell, the ones across the edge included
    check(fit, truth, cell_px, 0.02)
    assert sorted(set(fit.classes.tolist())) == list(range(8))
    assert fit.magnitude_angstrom == pytest.approx(0.15, abs=0.02)


def test_a_scan_that_is_not_periodic_loses_only_its_edge_cells():
    image, truth = lattice_image(cells=5, periodic=False, margin_px=4)
    fit = fit_cells(image, 12.0, 0.33, periodic=False)
    assert len(fit.classes) == 25
    check(fit, truth, 12.0, 0.02, origin_px=4)
    cropped = image[10:-10, 10:-10]  # the outer A columns are cut: the cells they close have no answer
    fit = fit_cells(cropped, 12.0, 0.33, periodic=False)
    assert len(fit.classes) == 9
    check(fit, truth, 12.0, 0.02, origin_px=-6)


def test_an_image_without_columns_is_refused():
    with pytest.raises(ValueError, match="at least 4"):
        fit_cells(np.zeros((32, 32)), 3.0, 1.0, periodic=True)
    with pytest.raises(ValueError, match="finite"):
        fit_cells(np.full((32, 32), np.nan), 8.0, 0.5, periodic=True)


def test_the_cells_of_a_scan_follow_its_origin_and_the_supercell():
    attrs = {"supercell": "2x2x50", "scan_step_angstrom": 0.5, "scan_origin_angstrom": "[0.25, 3.9]"}
    cells = scan_cells(attrs, (16, 16))
    assert cells == ScanCells(0.5, (0.25, 3.9), 4.0, (2, 2)) and cells.cell_px == 8.0
    positions = cells.positions((16, 16))
    index = cells.index(positions)
    # column 0 sits at x = 3.9 A: cell column 0; column 1 at 4.4 A: cell column 1; wraps at 8 A
    assert index[0, :3].tolist() == [0, 1, 1] and index[0, 9] == 0 and index[7, 0] == 0 and index[8, 0] == 2
    assert cells.fraction(positions)[0, 0] == pytest.approx([0.0625, 0.975])
    assert scan_cells({"supercell": "experimental"}, (16, 16)) is None


def test_per_cell_voting_agrees_with_a_count_by_hand():
    # a 4x4 scan of 2x2 cells, 2x2 patterns each
    cell_ids = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
    predictions = np.array([[5, 5, 1, 2], [5, 0, 2, 1], [7, 7, 3, 3], [7, 6, 3, 3]])
    # cell 0: 5,5,5,0 -> 5; cell 1: 1,2,2,1 -> tie, the lower index 1; cell 2: 7,7,7,6 -> 7; cell 3 -> 3
    assert cell_majority(predictions, cell_ids, 4, 8).tolist() == [5, 1, 7, 3]
    assert cell_majority(predictions[:2], cell_ids[:2], 4, 8).tolist() == [5, 1, -1, -1]  # no patterns: no vote


def test_accuracy_by_position_in_the_cell_pools_the_cells():
    fractions = np.stack(np.meshgrid(np.arange(4) / 4 + 0.1, np.arange(4) / 4 + 0.1, indexing="ij"), axis=-1)
    fractions = np.concatenate([fractions, fractions])  # two cells, the same positions
    correct = np.zeros((8, 4), bool)
    correct[:4, 0] = True  # the first cell right in its left column only
    heat = accuracy_by_position(correct, fractions, bins=2)
    assert heat.tolist() == [[0.25, 0.0], [0.25, 0.0]]
    assert np.isnan(accuracy_by_position(correct[:1, :1], fractions[:1, :1], bins=2)[1, 1])
