"""Atomic-column positions in a virtual image (ADF or iDPC) and the Nb polarization of every unit
cell, as microscopists measure it: find the columns, refine each with a 2-D Gaussian, and take the
Nb column's displacement from the centre of its four A-site neighbours. A leaf module: an image in,
columns and displacements out, no files.

Own code on SciPy rather than Atomap (benchmarks/columns.md measures both on the same image):
Atomap knows no periodic boundaries, so a simulated supercell of 2x2 cells loses most of its
columns to the image edge; on a 128x128 scan it took 10.7 s against 0.9 s here, with three times
the Nb position error (median 0.0125 against 0.0043 A), and it brings HyperSpy (1.9-8 s to import).

Assumes the lattice axes along the scan axes (the scan rotation removed first) and the cell edge in
scan pixels known from the scan step and the lattice parameter."""

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, optimize

from polarmap.classes import angle_to_class


# scan pixels per cell edge below which the A and Nb columns (0.71 cells apart) cannot be told apart
MIN_CELL_PX = 4


@dataclass(frozen=True)
class ColumnFitSettings:
    # a column's Gaussian is fitted within this radius (fraction of the cell edge): clear of the
    # oxygen columns half a cell away
    window_fraction: float = 0.25
    # peaks closer than this (fraction of the cell edge) are one column; A-Nb is 0.71 cells
    min_distance_fraction: float = 0.35
    # a peak belongs to a sublattice if it lies within this (fraction of the cell) of its site
    site_tolerance_fraction: float = 0.2
    smoothing_px: float = 0.5


@dataclass(frozen=True)
class CellPolarization:
    """One vector per unit cell: where its Nb column is (px, (row, col)), the displacement from the
    centre of its four A-site neighbours (angstrom, (row, col), +row = up), and its class."""
    nb_px: np.ndarray
    displacement_angstrom: np.ndarray
    classes: np.ndarray

    @property
    def magnitude_angstrom(self) -> np.ndarray:
        return np.hypot(self.displacement_angstrom[:, 0], self.displacement_angstrom[:, 1])


@dataclass(frozen=True)
class ColumnFit:
    """A column's 2-D Gaussian: centre (row, col) px, the variance of each coordinate from the
    fit's covariance (px^2), the RMS residual in its window and the Gaussian's amplitude."""
    centre_px: np.ndarray
    variance_px2: np.ndarray
    rms_residual: float
    amplitude: float


def _gaussian_centre(image: np.ndarray, peak: np.ndarray, radius: int, periodic: bool) -> np.ndarray | None:
    """Sub-pixel centre (row, col) of the column near `peak`; None where the window leaves a
    non-periodic image."""
    fit = gaussian_column(image, peak, radius, periodic)
    return None if fit is None else fit.centre_px


def gaussian_column(image: np.ndarray, peak: np.ndarray, radius: int, periodic: bool = False) -> ColumnFit | None:
    """The column near `peak` by a least-squares 2-D Gaussian on a constant background, in a
    (2 radius + 1)^2 window; None where the window leaves a non-periodic image."""
    offsets = np.arange(-radius, radius + 1)
    rows = np.round(peak[0]).astype(int) + offsets
    cols = np.round(peak[1]).astype(int) + offsets
    if periodic:
        window = image[np.ix_(rows % image.shape[0], cols % image.shape[1])]
    elif rows[0] < 0 or cols[0] < 0 or rows[-1] >= image.shape[0] or cols[-1] >= image.shape[1]:
        return None
    else:
        window = image[np.ix_(rows, cols)]
    grid_r, grid_c = np.meshgrid(rows.astype(np.float64), cols.astype(np.float64), indexing="ij")

    def residual(p):
        background, amplitude, r0, c0, sigma = p
        return (background + amplitude * np.exp(-((grid_r - r0) ** 2 + (grid_c - c0) ** 2) / (2 * sigma**2)) - window).ravel()

    start = [window.min(), window.max() - window.min(), rows[radius], cols[radius], max(radius / 2, 0.5)]
    lower = [-np.inf, 0, rows[0], cols[0], 0.2]
    upper = [np.inf, np.inf, rows[-1], cols[-1], 2.0 * radius + 1]
    fit = optimize.least_squares(residual, start, bounds=(lower, upper), x_scale="jac")
    # the covariance of the parameters: (J^T J)^-1 times the residual variance per degree of freedom
    dof = max(window.size - len(start), 1)
    covariance = np.linalg.pinv(fit.jac.T @ fit.jac) * (2 * fit.cost / dof)
    return ColumnFit(fit.x[2:4], np.diag(covariance)[2:4].copy(), float(np.sqrt(2 * fit.cost / window.size)), float(fit.x[1]))


def _nb_peaks(image: np.ndarray, cell_px: float, periodic: bool, settings: ColumnFitSettings) -> np.ndarray:
    """Local maxima of the lightly smoothed image on the lattice of the brightest one: the Nb
    columns, which with their oxygen outweigh K or Na in ADF and in iDPC."""
    mode = "wrap" if periodic else "nearest"
    smoothed = ndimage.gaussian_filter(image, settings.smoothing_px, mode=mode)
    size = 2 * max(1, int(settings.min_distance_fraction * cell_px)) + 1
    # a column is a pixel that is the largest within its neighbourhood and above the image median
    peaks = np.argwhere((smoothed == ndimage.maximum_filter(smoothed, size=size, mode=mode)) & (smoothed > np.median(smoothed)))
    if not len(peaks):
        raise ValueError(f"found no atomic columns: not an atomic-resolution image at {cell_px:.1f} px per cell")
    reference = peaks[np.argmax(smoothed[tuple(peaks.T)])]
    phase = np.mod((peaks - reference) / cell_px + 0.5, 1.0) - 0.5
    return peaks[(np.abs(phase) < settings.site_tolerance_fraction).all(axis=1)]


CORNERS = np.array([[-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]])


def fit_cells(image: np.ndarray, cell_px: float, step_angstrom: float, periodic: bool,
              settings: ColumnFitSettings = ColumnFitSettings()) -> CellPolarization:
    """The Nb displacement of every unit cell whose Nb column and four A-site neighbours could be
    fitted. The A-site columns (K and Na, faint) are fitted where the Nb lattice puts them, half a
    cell away diagonally, each once however many cells share it. `periodic`: the image is one
    period of a supercell (simulated); otherwise cells whose windows leave the image are left out."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2 or not np.isfinite(image).all():
        raise ValueError("column fitting needs a finite 2-D image")
    if cell_px < MIN_CELL_PX:
        raise ValueError(f"a unit cell spans {cell_px:.1f} scan px: at least {MIN_CELL_PX} are needed to separate its columns")
    peaks = _nb_peaks(image, cell_px, periodic, settings)
    radius = max(1, int(round(settings.window_fraction * cell_px)))
    shape = np.array(image.shape, dtype=np.float64)
    period = np.maximum(np.round(shape / cell_px), 1).astype(int)
    reference = peaks[0]
    a_sites: dict[tuple, np.ndarray | None] = {}
    nb_list, displacements = [], []
    for peak in peaks:
        nb = _gaussian_centre(image, peak, radius, periodic)
        # each A site by its lattice index (Nb sites are integers, A sites half-integers + 0.5)
        keys = [tuple(np.round((peak - reference) / cell_px + corner + 0.5).astype(int)) for corner in CORNERS]
        if periodic:
            keys = [tuple(np.mod(key, period)) for key in keys]
        corners = []
        for key, corner in zip(keys, CORNERS):
            if key not in a_sites:
                a_sites[key] = _gaussian_centre(image, peak + corner * cell_px, radius, periodic)
            corners.append(a_sites[key])
        if nb is None or any(c is None for c in corners):
            continue
        offset = np.array(corners) - nb
        if periodic:
            offset = np.mod(offset + shape / 2, shape) - shape / 2
        nb_list.append(np.mod(nb, shape) if periodic else nb)
        displacements.append(-offset.mean(axis=0) * step_angstrom)
    displacement = np.array(displacements).reshape(-1, 2)
    classes = angle_to_class(np.arctan2(displacement[:, 0], displacement[:, 1])) if len(displacement) else np.zeros(0, np.int64)
    return CellPolarization(np.array(nb_list).reshape(-1, 2), displacement, classes)
