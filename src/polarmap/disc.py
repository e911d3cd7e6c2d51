"""The bright-field disc of a pattern and the crop a model sees (issue 15). A leaf module:
arrays in, arrays out, no files.

- Bad pixels: a hot pixel is far brighter than every neighbour, a dead one far darker than every
  neighbour, in the scan's mean pattern (where noise has averaged out); the detector's own mask
  adds to them. They are filled with the mean of their good neighbours.
- The disc: in the mean pattern, the brightest region near its bright end; in each pattern,
  near that region, each pixel weighted by where it lies between the background and the disc's
  level (scaled to the pattern's total), 0 below, 1 above: the centroid and equivalent radius of
  those weights. An edge pixel half covered counts half, so the centre is sub-pixel; a bright spot
  inside counts no more than the disc. Not the whole-frame centre of mass, which a hot pixel, a
  diffuse lobe or a bright Bragg disc drags away.
- The origin of each pattern: its centre of mass within ORIGIN_MASK_RADII disc radii of its disc
  (a mask that follows the disc, as in LiberTEM's masked CoM). It turns exactly with the detector,
  where the disc's own centre is biased by the structure inside the disc, and a hot pixel or a
  bright feature far from the disc does not reach it.
- Descan: a plane fitted to the origins across the scan (a pattern's own origin moves with the
  polarization signal too, which averages out over the scan) -- or the plane of a vacuum
  reference scan, which holds descan alone.
- The crop: every pattern resampled onto the model's grid in one cubic interpolation: its sampling
  (mrad per pixel), the scan's orientation, and the sub-pixel origin.

LiberTEM's centre-of-mass analysis and py4DSTEM's origin fitting are the references read.
"""

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from polarmap.pattern import center_of_mass
from polarmap.splines import cubic_samples

HOT_FACTOR = 4.0  # a hot pixel holds more than this times its brightest neighbour
DEAD_FACTOR = 0.1  # a dead pixel less than this times its darkest neighbour ...
DEAD_NEIGHBOUR_LEVEL = 0.05  # ... where that neighbour holds at least this fraction of the peak
DISC_LEVEL_PERCENTILE = 99.5  # the bright end of the mean pattern
SEED_LEVEL = 0.75  # the disc's core: above this fraction of the way from background to bright end
DISC_WINDOW_RADII = 1.25  # a pattern's disc is looked for this many radii around the mean one
ORIGIN_MASK_RADII = 1.5  # an origin is the CoM within this many disc radii of the disc
SPLINE_MARGIN = 8  # pixels of pattern around a crop in its spline
OUTLIER_SIGMAS = 3.0  # origins this many robust sigmas off the plane are left out of its fit
_NEIGHBOURS = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=bool)


def bad_pixels(mean_pattern: np.ndarray, known=None) -> np.ndarray:
    """Hot and dead pixels of a scan's mean pattern, with the detector's own mask `known`."""
    pattern = np.asarray(mean_pattern, dtype=np.float64)
    brightest = ndimage.maximum_filter(pattern, footprint=_NEIGHBOURS, mode="nearest")
    darkest = ndimage.minimum_filter(pattern, footprint=_NEIGHBOURS, mode="nearest")
    hot = pattern > HOT_FACTOR * np.maximum(brightest, 0) + np.finfo(float).tiny
    dead = (pattern < DEAD_FACTOR * darkest) & (darkest > DEAD_NEIGHBOUR_LEVEL * pattern.max())
    mask = hot | dead
    return mask | np.asarray(known, dtype=bool) if known is not None else mask


def fill_bad_pixels(patterns: np.ndarray, mask: np.ndarray, in_place: bool = False) -> np.ndarray:
    """Patterns (..., rows, cols) with every masked pixel set to the mean of its good neighbours
    (a copy, unless `in_place` and the patterns are float32; none left out when the mask is empty)."""
    if not mask.any():
        return patterns
    filled = patterns if in_place and patterns.dtype == np.float32 else np.array(patterns, dtype=np.float32, copy=True)
    flat = filled.reshape(-1, *mask.shape)
    rows, cols = np.nonzero(mask)
    total, count = np.zeros((len(flat), rows.size), np.float64), np.zeros(rows.size)
    for dr, dc in np.argwhere(_NEIGHBOURS) - 1:  # the 8 neighbours of every bad pixel at once
        r, c = rows + dr, cols + dc
        inside = (r >= 0) & (r < mask.shape[0]) & (c >= 0) & (c < mask.shape[1])
        r, c = np.clip(r, 0, mask.shape[0] - 1), np.clip(c, 0, mask.shape[1] - 1)
        usable = inside & ~mask[r, c]
        total += flat[:, r, c] * usable
        count += usable
    flat[:, rows, cols] = total / np.maximum(count, 1)
    return filled


@dataclass(frozen=True)
class Disc:
    """The bright-field disc of a scan's mean pattern; the levels are fractions of the pattern's
    total, so that they scale to any pattern of the scan."""
    centre: tuple[float, float]
    radius: float
    background: float
    level: float


def find_disc(mean_pattern: np.ndarray) -> Disc:
    """The disc of a scan's mean pattern: of the regions brighter than three quarters of the way to
    the pattern's bright end, the one holding the most intensity (a hot pixel, a diffuse lobe or a
    Bragg disc is another region), refined as each pattern's disc is (`disc_centres`) within
    DISC_WINDOW_RADII of that region's equivalent radius."""
    pattern = np.asarray(mean_pattern, dtype=np.float64)
    total, background = float(pattern.sum()), float(np.median(pattern))
    regions, count = ndimage.label(pattern > background + SEED_LEVEL * (np.percentile(pattern, DISC_LEVEL_PERCENTILE) - background))
    if count == 0 or total <= 0:
        raise ValueError("no bright-field disc in the mean pattern (a flat or empty scan?)")
    seed = regions == 1 + int(np.argmax(ndimage.sum(pattern, regions, index=np.arange(1, count + 1))))
    centre = np.argwhere(seed).mean(axis=0)
    first = Disc((float(centre[0]), float(centre[1])), float(np.sqrt(seed.sum() / np.pi)), background / total, float(np.median(pattern[seed])) / total)
    refined, radius = disc_centres(pattern, first)
    return Disc((float(refined[0]), float(refined[1])), float(radius), first.background, first.level)


def disc_centres(patterns: np.ndarray, found: Disc) -> tuple[np.ndarray, np.ndarray]:
    """Centroid (..., 2) = (row, col) and equivalent radius (...) of each pattern's disc weights
    (0 at the background, 1 at the disc's level) within DISC_WINDOW_RADII radii of the mean
    pattern's disc; NaN where nothing rises above the background. Only the window's bounding box
    is read past the patterns' totals."""
    patterns = np.asarray(patterns, dtype=np.float32)
    totals = patterns.sum(axis=(-2, -1), dtype=np.float64)[..., None, None]
    reach = DISC_WINDOW_RADII * found.radius
    (r0, r1), (c0, c1) = (_span(centre, reach, size) for centre, size in zip(found.centre, patterns.shape[-2:]))
    rows, cols = np.ogrid[r0:r1, c0:c1]
    window = np.hypot(rows - found.centre[0], cols - found.centre[1]) <= reach
    box = patterns[..., r0:r1, c0:c1]
    above = np.clip((box - found.background * totals) / ((found.level - found.background) * totals), 0.0, 1.0) * window
    count = above.sum(axis=(-2, -1), dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        row = (above.sum(axis=-1, dtype=np.float64) @ np.arange(r0, r1)) / count
        col = (above.sum(axis=-2, dtype=np.float64) @ np.arange(c0, c1)) / count
    return np.stack([row, col], axis=-1), np.sqrt(count / np.pi)


def masked_centres(patterns: np.ndarray, centres: np.ndarray, radius: float) -> np.ndarray:
    """Centre of mass (..., 2) of each pattern within `radius` pixels of its own `centres` (...,
    2); NaN where nothing is inside. Only the bounding box of every pattern's mask is read."""
    centres = np.asarray(centres, dtype=np.float32)
    finite = centres[np.isfinite(centres).all(axis=-1)]
    if finite.size == 0:
        return np.full(centres.shape, np.nan)
    (r0, r1), (c0, c1) = (_span((low + high) / 2, (high - low) / 2 + radius, size)
                          for low, high, size in zip(finite.min(axis=0), finite.max(axis=0), patterns.shape[-2:]))
    rows, cols = np.ogrid[r0:r1, c0:c1]
    rows, cols = rows.astype(np.float32), cols.astype(np.float32)
    inside = (rows - centres[..., 0, None, None]) ** 2 + (cols - centres[..., 1, None, None]) ** 2 <= np.float32(radius) ** 2
    return center_of_mass(np.where(inside, np.asarray(patterns, dtype=np.float32)[..., r0:r1, c0:c1], np.float32(0))) + np.array([r0, c0])


def _span(centre: float, reach: float, size: int) -> tuple[int, int]:
    """The pixels [start, stop) within `reach` of `centre` along an axis of `size` pixels."""
    return max(int(np.floor(centre - reach)), 0), min(int(np.ceil(centre + reach)) + 1, size)


def fit_plane(centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The plane origin(scan row, scan col) = a + b row + c col fitted to origins (rows, cols, 2)
    by least squares, centres off it by more than OUTLIER_SIGMAS robust sigmas left out of a second
    fit. Returns the plane over the scan (rows, cols, 2) and its coefficients (3, 2)."""
    rows, cols = np.indices(centres.shape[:2])
    design = np.stack([np.ones(rows.size), rows.ravel(), cols.ravel()], axis=1).astype(np.float64)
    values = centres.reshape(-1, 2).astype(np.float64)
    usable = np.isfinite(values).all(axis=1)
    if usable.sum() < 3:
        raise ValueError("fewer than 3 patterns with a bright-field disc: no descan plane to fit")
    coefficients = np.linalg.lstsq(design[usable], values[usable], rcond=None)[0]
    residual = np.linalg.norm(values - design @ coefficients, axis=1)
    sigma = 1.4826 * np.median(residual[usable]) + 1e-9
    kept = usable & (residual <= OUTLIER_SIGMAS * sigma)
    if kept.sum() >= 3:
        coefficients = np.linalg.lstsq(design[kept], values[kept], rcond=None)[0]
    return (design @ coefficients).reshape(*centres.shape[:2], 2), coefficients


def crop_reach(scale: float, detector_from_scan: np.ndarray, crop_px: int) -> np.ndarray:
    """How far from the origin (detector pixels, per detector axis) the crop's outermost pixel
    centres reach."""
    low, high = -(crop_px // 2), crop_px - 1 - crop_px // 2
    corners = np.array([[low, low], [low, high], [high, low], [high, high]], dtype=np.float64)
    return np.abs(scale * corners @ np.asarray(detector_from_scan, dtype=np.float64).T).max(axis=0)


def crop_region(origins: np.ndarray, reach: np.ndarray, detector_shape) -> tuple[slice, slice]:
    """The detector pixels that crops reaching `reach` (per detector axis, `crop_reach`) around
    `origins` (..., 2) use: their splines' windows (`resample`), and a pixel more for the filling of
    a bad pixel on a window's edge (`fill_bad_pixels`). Reading only these gives the same crops."""
    flat = np.asarray(origins, dtype=np.float64).reshape(-1, 2)
    low = np.maximum(np.floor(flat.min(axis=0) - reach).astype(int) - SPLINE_MARGIN - 2, 0)
    high = np.minimum(np.ceil(flat.max(axis=0) + reach).astype(int) + SPLINE_MARGIN + 3, detector_shape)
    return slice(int(low[0]), int(high[0])), slice(int(low[1]), int(high[1]))


def resample(patterns: np.ndarray, origins: np.ndarray, scale: float, detector_from_scan: np.ndarray, crop_px: int) -> np.ndarray:
    """Each pattern (n, rows, cols) on the model's crop_px x crop_px grid: output pixel (i, j) is the
    pattern at detector position origin + scale * detector_from_scan @ (i - c, j - c), c =
    crop_px // 2 (the centre pixel, as in an unresampled crop); `scale` is detector pixels per
    output pixel.

    Cubic splines, sampled at the output pixels' centres: simulated training patterns are point
    samples of the far field, and summing a finer detector's pixels into the model's first would
    smooth what a model reads (measured: 92 % against 99 % of patterns answered alike, tests/
    test_mapping.py); the counts between the samples go unused, which costs signal at low dose.
    Linear interpolation would blur a turned pattern by half a pixel. The splines overshoot at the
    disc's edge: what falls below zero is cut at zero, as no detector counts below it (a varying
    negative minimum would become a varying pedestal after min-max, which moves an even crop's CoM)."""
    origins = np.asarray(origins, dtype=np.float64)
    if scale == 1 and np.array_equal(detector_from_scan, np.eye(2)) and np.array_equal(origins, np.round(origins)):
        # whole pixels, unturned (a simulation at its own sampling): the spline would return them
        starts = origins.astype(int) - crop_px // 2
        return np.stack([p[r:r + crop_px, c:c + crop_px] for p, (r, c) in zip(np.asarray(patterns, dtype=np.float32), starts)])
    offsets = np.arange(crop_px, dtype=np.float64) - crop_px // 2
    grid = np.stack(np.meshgrid(offsets, offsets, indexing="ij"), axis=-1)  # (crop, crop, 2) scan-frame offsets
    detector = scale * grid @ np.asarray(detector_from_scan, dtype=np.float64).T  # (crop, crop, 2)
    positions = np.asarray(origins, dtype=np.float64)[:, None, None, :] + detector[None]
    # the spline of a window around each crop only: a spline's reach decays by 0.27 a pixel, so
    # SPLINE_MARGIN pixels leave the samples as the whole pattern's spline gives them
    patterns = np.asarray(patterns, dtype=np.float32)
    low = np.maximum(np.floor(positions.min(axis=(1, 2))).astype(int) - SPLINE_MARGIN, 0)
    high = np.minimum(np.ceil(positions.max(axis=(1, 2))).astype(int) + SPLINE_MARGIN + 1, patterns.shape[1:])
    out = cubic_samples(patterns, low, high, positions - low[:, None, None, :])
    return np.maximum(out, 0)
