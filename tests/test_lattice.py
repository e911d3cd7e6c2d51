"""The lattice found in a scan's own image, and a vector per unit cell: on synthetic perovskite
images whose truth is known by construction (bright Nb columns displaced along one of the 8
directions, dim A columns), turned against the scan, sheared as a linear scan drift does, with
Poisson noise; and what is no lattice."""

import numpy as np
import pytest

from polarmap.classes import CLASS_ANGLES_DEG, CLASS_NAMES
from polarmap.lattice import cell_vectors, find_lattice

STEP = 0.5  # angstrom per scan pixel
CELL_PX = 8.0


def perovskite(shape=(48, 48), angle_deg=10.0, direction_deg=45.0, displacement_pm=15.0, drift=0.0, dose=None, seed=0, cell_px=CELL_PX):
    """An ADF-like image: Nb columns (amplitude 1) at the integer sites displaced by
    `displacement_pm` towards `direction_deg` of the crystal's a axis, A columns (0.35) at the
    half-integer ones, the crystal turned `angle_deg` against the scan (+row up), a linear drift
    along the slow scan that shears the lattice by `drift`; Poisson counts of `dose` per unit."""
    turn = np.radians(angle_deg)
    a = cell_px * np.array([np.sin(turn), np.cos(turn)])  # (row, col)
    b = cell_px * np.array([np.cos(turn), -np.sin(turn)])
    b = b + drift * np.array([0.0, np.linalg.norm(b)])  # each scan line shifted along the fast axis
    direction = np.radians(direction_deg)
    shift = displacement_pm / 100 / STEP / cell_px * (np.cos(direction) * a + np.sin(direction) * b)
    rows, cols = np.indices(shape, dtype=np.float64)
    image = np.full(shape, 0.05)
    origin = np.array([3.3, 2.7])
    for i in range(-12, 20):
        for j in range(-12, 20):
            for fraction, amplitude, offset in (((i, j), 1.0, shift), ((i + 0.5, j + 0.5), 0.35, 0.0)):
                p = origin + fraction[0] * a + fraction[1] * b + offset
                if -4 < p[0] < shape[0] + 4 and -4 < p[1] < shape[1] + 4:
                    image += amplitude * np.exp(-((rows - p[0]) ** 2 + (cols - p[1]) ** 2) / 2.0)
    if dose:
        image = np.random.default_rng(seed).poisson(image * dose) / dose
    return image, a, b, shift


@pytest.mark.parametrize("angle_deg", [0.0, 10.0, 37.0])
def test_the_lattice_whatever_its_angle_to_the_scan(angle_deg):
    image, a, b, _ = perovskite(angle_deg=angle_deg)
    lattice = find_lattice(image)
    assert lattice.vectors_px == pytest.approx(np.array([a, b]), abs=0.02)
    assert lattice.distortion()["rotation_deg"] == pytest.approx(angle_deg, abs=0.1)
    assert lattice.indexing() == "good"
    # the origin is on the Nb (bright) sublattice, not half a cell away on the A one
    fraction = lattice.fractional(np.array([3.3, 2.7]))
    assert np.abs(fraction - np.round(fraction)).max() < 0.05


def test_a_linear_scan_drift_is_in_the_lattice_not_in_the_vectors():
    """3 % drift: the lattice is sheared by that much, every cell still right, its vector unchanged."""
    image, a, b, _ = perovskite(drift=0.03)
    lattice = find_lattice(image)
    assert lattice.vectors_px == pytest.approx(np.array([a, b]), abs=0.02)
    assert abs(lattice.distortion()["shear_deg"]) == pytest.approx(np.degrees(np.arctan(0.03)) * np.cos(np.radians(10)), abs=0.3)
    cells = cell_vectors(image, lattice, STEP)
    assert (cells.shown_classes == CLASS_NAMES.index("RU")).all()
    assert np.hypot(*cells.crystal_pm.T) == pytest.approx(15.0, abs=1.0)


@pytest.mark.parametrize("k", range(8))
def test_every_direction_is_its_class_with_its_length(k):
    image, _, _, _ = perovskite(direction_deg=CLASS_ANGLES_DEG[k])
    cells = cell_vectors(image, find_lattice(image), STEP)
    assert len(cells.classes) >= 12 and cells.left_out > 0  # the cells at the edge lack a neighbour
    assert (cells.shown_classes == k).all()
    assert np.median(np.hypot(*cells.crystal_pm.T)) == pytest.approx(15.0, abs=0.5)
    assert np.median(np.abs(((cells.angle_deg - CLASS_ANGLES_DEG[k]) + 180) % 360 - 180)) < 2


def test_the_scan_axes_vector_is_the_crystal_one_turned():
    image, _, _, shift = perovskite(angle_deg=10.0, direction_deg=0.0)
    cells = cell_vectors(image, find_lattice(image), STEP)
    expected = shift * STEP * 100  # (row, col) in pm
    assert np.median(cells.scan_pm, axis=0) == pytest.approx(expected, abs=0.5)
    assert np.median(cells.crystal_pm, axis=0) == pytest.approx([15.0, 0.0], abs=0.5)


def test_the_stated_uncertainty_is_the_scatter_of_repeated_noisy_scans():
    """The same crystal under 20 independent Poisson draws: each cell's stated 1-sigma uncertainty
    (from the fits' covariance) against the scatter of its displacement over the draws."""
    draws = [cell_vectors(image, find_lattice(image), STEP) for image in (perovskite(dose=400, seed=s)[0] for s in range(20))]
    common = min(len(d.classes) for d in draws)
    stated = np.median([np.median(d.uncertainty_pm) for d in draws])
    scatter = np.median([np.std([d.scan_pm[n] for d in draws if len(d.classes) == common], axis=0).mean() for n in range(common)])
    assert 0.6 < stated / scatter < 1.6, (stated, scatter)
    shown = np.concatenate([d.shown_classes for d in draws])
    assert (shown >= 0).mean() > 0.6 and (shown[shown >= 0] == CLASS_NAMES.index("RU")).all()


def test_noise_that_hides_the_direction_makes_unknown_cells_not_wrong_ones():
    """At a dose where a third of the raw directions fall in another bin, the cells whose class two
    sigma could change are unknown, and the others right."""
    shown, raw = [], []
    for seed in range(6):
        image = perovskite(dose=60, seed=seed)[0]
        cells = cell_vectors(image, find_lattice(image), STEP)
        shown.append(cells.shown_classes)
        raw.append(cells.classes)
    shown, raw = np.concatenate(shown), np.concatenate(raw)
    assert (raw != CLASS_NAMES.index("RU")).mean() > 0.2 and (shown == -1).mean() > 0.5
    assert (shown[shown >= 0] == CLASS_NAMES.index("RU")).mean() > 0.95


@pytest.mark.parametrize("dose", [None, 300])
def test_a_cell_that_is_not_five_columns_is_unknown(dose):
    """A blob of contamination between a cell's Nb column and one of its A sites: the fit's
    residual, beyond RESIDUAL_FACTOR times the scan's median, makes that cell (and the few that
    share the column) unknown, not a vector the columns do not hold; the others are judged by
    their uncertainty alone, noisy or not (the rule is relative to the scan's own residual)."""
    image, a, b, shift = perovskite(shape=(64, 64), angle_deg=10.0)
    rows, cols = np.indices(image.shape, dtype=np.float64)
    nb = np.array([3.3, 2.7]) + 3 * a + 3 * b  # the lattice's origin, and a cell well inside the image
    blob = nb + 0.3 * (a + b)  # towards the cell's upper A site
    image = image + 0.6 * np.exp(-((rows - blob[0]) ** 2 + (cols - blob[1]) ** 2) / 4.0)
    if dose:
        image = np.random.default_rng(1).poisson(image * dose) / dose
    cells = cell_vectors(image, find_lattice(image), STEP)
    flagged = np.flatnonzero(~cells.well_fitted)
    assert np.argmin(np.hypot(*(cells.nb_px - nb - shift).T)) in flagged and len(flagged) <= 6, flagged
    assert not cells.known[flagged].any()


def test_a_lattice_bent_beyond_a_linear_drift_is_said_to_be_poorly_indexed():
    """Two grains side by side, the right one shifted by 0.4 of a cell: one affine lattice cannot
    hold both, and the map says so."""
    left, right = perovskite(angle_deg=0.0)[0], perovskite(angle_deg=0.0)[0]
    image = np.concatenate([left[:, :24], np.roll(right, (3, 3), axis=(0, 1))[:, 24:]], axis=1)
    assert find_lattice(image).indexing().startswith("poor: the Nb columns lie")


@pytest.mark.parametrize("image, message", [
    (np.random.default_rng(0).poisson(50, (48, 48)).astype(float), "no lattice: the image has no periodic contrast"),
    (np.full((48, 48), 3.0), "no lattice"),
    (np.cos(2 * np.pi * np.arange(48) / 8.0)[None, :].repeat(48, axis=0) + 2, "no lattice"),
    (perovskite(cell_px=3.0)[0], "a unit cell spans 3.0 scan px: at least 4 are needed"),
    (np.full((48, 48), np.nan), "lattice finding needs a finite 2-D image"),
], ids=["noise", "vacuum", "fringes", "3 px per cell", "NaN"])
def test_no_lattice_is_said_in_one_line(image, message):
    with pytest.raises(ValueError, match=message):
        find_lattice(image)
