"""The perovskite lattice found in a scan's own image, and the polarization of every unit cell as a
vector in picometres with its uncertainty: no simulation, no model. A leaf module: an image in,
the lattice and one vector per cell out, no files.

How, as a microscopist would (and as Atomap and py4DSTEM's lattice tools do, read not copied):
the two cell vectors from the image's Fourier peaks (the shortest pair that spans the peaks, so
whatever their angle to the scan axes and whatever the scan step), refined by least squares on the
columns found where they put them; the B sublattice (Nb) told from the A sublattice (K, Na) by its
brightness in ADF (and in iDPC: more projected potential); each column refined with a 2-D
Gaussian (`polarmap.columns`), and the Nb column's displacement taken from the centre of its four
A-site neighbours. The lattice is affine across the scan: a linear scan drift or a few per cent of
shear or stretch is absorbed in its vectors and reported as the lattice's distortion.

Positions are (row, col) in scan pixels with +row up (the data set convention); displacements are
given in the crystal's axes (u along the cell vector nearest +col, v along the other) and in the
scan's axes."""

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from polarmap.classes import angle_to_class
from polarmap.columns import MIN_CELL_PX, ColumnFit, gaussian_column

# peaks of the image's power spectrum above this many times its median count as lattice peaks
PEAK_CONTRAST = 30.0
# the image's transform is zero-padded to this many times its size to place its peaks finely
FFT_PADDING = 4
# fewer cells than this along either axis is not a lattice
MIN_CELLS = 2
# a column's window (fraction of the cell edge): clear of the oxygen columns half a cell away
WINDOW_FRACTION = 0.25
# a cell whose fit residual exceeds this many times the scan's median is unknown: on the simulated
# detector files of benchmarks/cells_detector.md (8 classes, 3 scans, 1e4 and 1e5 electrons per
# pattern, 822 cells) no cell exceeds 1.41 (99th percentile 1.29); a column's worth of
# contamination beside a cell gives 1.9 at 300 counts per unit and 6 without noise (test_lattice)
RESIDUAL_FACTOR = 1.75
# Nb columns further than this (RMS, fraction of the cell) from the affine lattice: a distortion
# beyond a linear drift (a curved drift, several grains), reported as a poorly indexed lattice
POOR_INDEXING = 0.1


@dataclass(frozen=True)
class Lattice:
    """An Nb column at `origin_px` and the cell vectors (rows of `vectors_px`: a, then b), (row,
    col) in scan pixels; Nb sites at origin + i a + j b, A sites at the half-integers."""
    origin_px: np.ndarray
    vectors_px: np.ndarray
    rms_deviation_px: float = float("nan")  # of the Nb columns from their sites, where fitted

    def fractional(self, positions_px: np.ndarray) -> np.ndarray:
        """Lattice coordinates (..., 2) of positions (..., 2) in scan pixels."""
        return (np.asarray(positions_px, dtype=np.float64) - self.origin_px) @ np.linalg.inv(self.vectors_px)

    def position(self, fractional: np.ndarray) -> np.ndarray:
        return self.origin_px + np.asarray(fractional, dtype=np.float64) @ self.vectors_px

    @property
    def cell_px(self) -> float:
        return float(np.sqrt(abs(np.linalg.det(self.vectors_px))))

    def distortion(self) -> dict:
        """How far the cell is from a square: the angle between a and b less 90 degrees, the
        ratio of their lengths less 1, and the angle of a from +col (degrees, counter-clockwise)."""
        a, b = self.vectors_px
        angle = np.degrees(np.arccos(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))))
        return {"shear_deg": float(angle - 90), "stretch": float(np.linalg.norm(b) / np.linalg.norm(a) - 1),
                "rotation_deg": float(np.degrees(np.arctan2(a[0], a[1])))}

    def indexing(self) -> str:
        """"good", or why the columns do not sit on one affine lattice."""
        deviation = self.rms_deviation_px / self.cell_px
        if deviation > POOR_INDEXING:
            return (f"poor: the Nb columns lie {deviation:.2f} of a cell (RMS) from one lattice: a distortion beyond a linear "
                    "drift, or several grains; read the map with care")
        return "good"


def _reduced(vectors: np.ndarray) -> np.ndarray:
    """The shortest, most nearly orthogonal basis of the same lattice (Lagrange-Gauss reduction),
    a nearest +col and b turned counter-clockwise from it (a right-handed pair with +row up)."""
    a, b = (np.asarray(v, dtype=np.float64) for v in vectors)
    while True:
        if np.dot(a, a) > np.dot(b, b):
            a, b = b, a
        step = np.round(np.dot(a, b) / np.dot(a, a))
        if step == 0:
            break
        b = b - step * a
    # the four choices of a among +-a, +-b: the one nearest +col (a 4-fold cell has no other)
    choices = [a, -a, b, -b]
    a = max(choices, key=lambda v: v[1] / np.linalg.norm(v))
    b = next(v for v in choices if abs(np.dot(v, a)) < abs(np.dot(v, v)) * 0.999 and a[1] * v[0] - a[0] * v[1] > 0)
    return np.array([a, b])


def lattice_vectors(image: np.ndarray) -> np.ndarray:
    """The cell vectors (2, 2) in scan pixels from the image's Fourier peaks: the reciprocal
    lattice spanned by the strongest peaks, its shortest pair turned into real space. The
    transform is zero-padded (FFT_PADDING) and each peak placed by the centroid of its 3x3
    neighbourhood, so that a small scan still gives its vectors to a fraction of a per cent."""
    rows, cols = image.shape
    window = np.outer(np.hanning(rows), np.hanning(cols))
    size = max(FFT_PADDING * max(rows, cols), 256)
    power = np.abs(np.fft.fftshift(np.fft.fft2((image - image.mean()) * window, s=(size, size)))) ** 2
    centre = np.array([size // 2, size // 2])
    # no peak within 2 scan-Fourier pixels of the origin (the window's own width): no period
    # longer than half the scan
    radius = np.hypot(*(np.indices(power.shape) - centre[:, None, None]))
    power[radius < 2.5 * size / max(rows, cols)] = 0
    neighbourhood = 2 * (size // max(rows, cols)) + 1  # one scan-Fourier pixel either side
    peaks = np.argwhere((power == ndimage.maximum_filter(power, size=neighbourhood)) & (power > PEAK_CONTRAST * np.median(power)))
    if len(peaks) < 4:
        raise ValueError("no lattice: the image has no periodic contrast (a vacuum scan, an amorphous region, or a scan too "
                         "coarse to resolve the columns)")
    strength = power[tuple(peaks.T)]
    offsets = np.indices((3, 3)).reshape(2, -1).T - 1
    weights = np.array([[power[tuple((p + o) % size)] for o in offsets] for p in peaks])
    refined = peaks + weights @ offsets / weights.sum(axis=1, keepdims=True)
    reciprocal = (refined - centre) / size  # cycles per scan pixel
    # the strongest peaks, then the shortest two of them that are not parallel
    strong = reciprocal[np.argsort(strength)[::-1][:12]]
    strong = strong[np.argsort(np.hypot(*strong.T))]
    g1 = strong[0]
    others = [g for g in strong[1:] if abs(g1[0] * g[1] - g1[1] * g[0]) / (np.linalg.norm(g1) * np.linalg.norm(g)) > 0.5]
    if not others:
        raise ValueError("no lattice: the image's periodic contrast runs along one direction only (fringes, not columns)")
    g2 = others[0]
    real = np.linalg.inv(np.array([g1, g2])).T  # rows a, b with a.g1 = 1, a.g2 = 0, b.g1 = 0, b.g2 = 1
    return _reduced(real)


def _column_peaks(image: np.ndarray, cell_px: float) -> np.ndarray:
    """Local maxima of the lightly smoothed image, at most one per 0.35 cells: column candidates."""
    smoothed = ndimage.gaussian_filter(image, 0.5)
    size = 2 * max(1, int(0.35 * cell_px)) + 1
    return np.argwhere((smoothed == ndimage.maximum_filter(smoothed, size=size)) & (smoothed > np.median(smoothed)))


def find_lattice(image: np.ndarray) -> Lattice:
    """The Nb lattice of an atomic-resolution image (ADF, or iDPC): its vectors from the Fourier
    peaks, its origin on the brighter of the two sublattices, both refined by least squares on the
    columns' positions (so that a linear drift shows in the vectors, not as a displacement)."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2 or not np.isfinite(image).all():
        raise ValueError("lattice finding needs a finite 2-D image")
    vectors = lattice_vectors(image)
    cell_px = float(np.sqrt(abs(np.linalg.det(vectors))))
    if cell_px < MIN_CELL_PX:
        raise ValueError(f"a unit cell spans {cell_px:.1f} scan px: at least {MIN_CELL_PX} are needed to tell its columns apart; "
                         "scan with a finer step")
    cells = np.array(image.shape) / np.abs(vectors).max(axis=0)
    if (cells < MIN_CELLS).any():
        raise ValueError(f"the scan spans {cells.min():.1f} unit cells: at least {MIN_CELLS} along each axis are needed for a lattice")
    peaks = _column_peaks(image, cell_px)
    smoothed = ndimage.gaussian_filter(image, 0.5)
    brightness = smoothed[tuple(peaks.T)]
    lattice = Lattice(peaks[np.argmax(brightness)].astype(np.float64), vectors)
    for _ in range(2):  # refine: the second pass sees the columns the first one's vectors placed better
        fractional = lattice.fractional(peaks)
        # which sublattice each peak sits on: the integer sites, or the half-integer ones
        on_integer = (np.abs(fractional - np.round(fractional)) < 0.2).all(axis=1)
        on_half = (np.abs(fractional - np.floor(fractional) - 0.5) < 0.2).all(axis=1)
        if on_integer.sum() < 3:
            raise ValueError("no lattice: too few columns sit where the image's periodicity puts them")
        # B (Nb) is the brighter sublattice: move the origin half a cell if the other one is
        if on_half.sum() >= 3 and brightness[on_half].mean() > brightness[on_integer].mean():
            fractional, on_integer = fractional - 0.5, on_half
        indices = np.round(fractional[on_integer])
        lattice = _fitted(indices, peaks[on_integer].astype(np.float64))
    # last, on the Nb columns' sub-pixel centres: a linear drift shows in the vectors, to 0.1 %
    radius = max(1, int(round(WINDOW_FRACTION * cell_px)))
    fits = [(index, gaussian_column(image, lattice.position(index), radius)) for index in indices]
    fits = [(index, fit.centre_px) for index, fit in fits if fit is not None]
    if len(fits) >= 3:
        indices, positions = np.array([f[0] for f in fits]), np.array([f[1] for f in fits])
        lattice = _fitted(indices, positions)
        deviation = float(np.sqrt(np.mean(np.sum((positions - lattice.position(indices)) ** 2, axis=1))))
        lattice = Lattice(lattice.origin_px, lattice.vectors_px, deviation)
    return lattice


def _fitted(indices: np.ndarray, positions: np.ndarray) -> Lattice:
    """The lattice whose sites (integer `indices`) best match `positions`: p = origin + i a + j b."""
    design = np.column_stack([np.ones(len(indices)), indices])
    solution = np.linalg.lstsq(design, positions, rcond=None)[0]
    return Lattice(solution[0], solution[1:])


@dataclass(frozen=True)
class CellVectors:
    """One row per unit cell whose Nb column and four A-site neighbours lie in the scan: its index
    (i along a, j along b), the Nb position (scan px, (row, col)), the displacement in the crystal's
    axes (u along a, v along b) and in the scan's axes ((row, col), +row up), in picometres, its
    1-sigma uncertainty (pm), its class (from the crystal's axes) and the fit's residual (RMS over
    the five columns' windows, relative to the Nb column's amplitude)."""
    index: np.ndarray
    nb_px: np.ndarray
    crystal_pm: np.ndarray
    scan_pm: np.ndarray
    uncertainty_pm: np.ndarray
    classes: np.ndarray
    residual: np.ndarray
    left_out: int  # cells at the scan's edge without four A-site neighbours inside it

    @property
    def known(self) -> np.ndarray:
        """A cell's class is known where two sigma of its uncertainty cannot move the vector into
        another 45-degree bin (its distance to the nearest bin edge, |d| sin of the angle left to
        the edge, beyond twice the uncertainty) and where five Gaussians describe its columns
        (`well_fitted`). Otherwise it is unknown, not a guess."""
        offset = np.abs((self.angle_deg - 45 * self.classes + 180) % 360 - 180)
        margin = np.hypot(*self.crystal_pm.T) * np.sin(np.radians(np.clip(22.5 - offset, 0, None)))
        return (margin > 2 * self.uncertainty_pm) & self.well_fitted

    @property
    def well_fitted(self) -> np.ndarray:
        """A cell whose fit residual is at most RESIDUAL_FACTOR times the scan's median: relative
        to the scan's own, so that dose (which raises every cell's residual alike) does not count,
        and a cell that is not five columns (contamination, a vacancy, a grain's edge) does."""
        return self.residual <= RESIDUAL_FACTOR * np.median(self.residual)

    @property
    def shown_classes(self) -> np.ndarray:
        return np.where(self.known, self.classes, -1)

    @property
    def angle_deg(self) -> np.ndarray:
        """Counter-clockwise from the crystal's a axis, as the classes (0: RM, along a)."""
        return np.degrees(np.arctan2(self.crystal_pm[:, 1], self.crystal_pm[:, 0]))


A_CORNERS = np.array([[-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]])


def cell_vectors(image: np.ndarray, lattice: Lattice, step_angstrom: float) -> CellVectors:
    """The displacement of every cell's Nb column from the centre of its four A-site neighbours,
    each column a 2-D Gaussian fitted in a window of a quarter cell around its lattice site."""
    image = np.asarray(image, dtype=np.float64)
    radius = max(1, int(round(WINDOW_FRACTION * lattice.cell_px)))
    corners_frac = lattice.fractional(np.array([[0, 0], [0, image.shape[1] - 1], [image.shape[0] - 1, 0], [image.shape[0] - 1, image.shape[1] - 1]]))
    low, high = np.floor(corners_frac.min(axis=0)), np.ceil(corners_frac.max(axis=0))
    fitted: dict[tuple, ColumnFit | None] = {}

    def column(site) -> ColumnFit | None:
        key = tuple(np.round(np.asarray(site) * 2).astype(int))
        if key not in fitted:
            fitted[key] = gaussian_column(image, lattice.position(site), radius)
        return fitted[key]

    rows, left_out = [], 0
    for i in np.arange(low[0], high[0] + 1):
        for j in np.arange(low[1], high[1] + 1):
            site = lattice.position([i, j])
            if not (0 <= site[0] <= image.shape[0] - 1 and 0 <= site[1] <= image.shape[1] - 1):
                continue
            nb, corners = column([i, j]), [column([i + di, j + dj]) for di, dj in A_CORNERS]
            if nb is None or any(c is None for c in corners):
                left_out += 1
                continue
            centre = np.mean([c.centre_px for c in corners], axis=0)
            displacement_px = nb.centre_px - centre
            variance = nb.variance_px2 + np.sum([c.variance_px2 for c in corners], axis=0) / 16  # per axis, px^2
            residual = np.sqrt(np.mean([c.rms_residual**2 for c in (nb, *corners)])) / max(nb.amplitude, 1e-300)
            rows.append((i, j, *nb.centre_px, *displacement_px, *variance, residual))
    if not rows:
        raise ValueError("no unit cell lies whole in the scan (each needs its four A-site neighbours inside it)")
    table = np.array(rows)
    displacement_px = table[:, 4:6]
    # crystal axes: the displacement's lattice coordinates times the cell edges in pm
    lengths_pm = np.linalg.norm(lattice.vectors_px, axis=1) * step_angstrom * 100
    crystal_pm = (displacement_px @ np.linalg.inv(lattice.vectors_px)) * lengths_pm
    scan_pm = displacement_px * step_angstrom * 100
    uncertainty_pm = np.sqrt(table[:, 6:8].mean(axis=1)) * step_angstrom * 100
    classes = angle_to_class(np.arctan2(crystal_pm[:, 1], crystal_pm[:, 0]))
    return CellVectors(table[:, :2].astype(int), table[:, 2:4], crystal_pm, scan_pm, uncertainty_pm, classes, table[:, 8], left_out)
