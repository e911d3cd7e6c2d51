"""The maths of one diffraction pattern (or of a stack of them, over the last two axes): centre
of mass, the published threshold centroid, min-max normalisation. A leaf module: it knows no
files, so readers, preprocessing and figures can all use it."""

import numpy as np


def center_of_mass(patterns: np.ndarray) -> np.ndarray:
    """Intensity-weighted centre of mass (Eq. 1) over the last two axes, as (..., 2) =
    (row, col) in pixels from the first pixel.

    One pass over the data: a float32 matrix product gives, for every detector row, its sum and
    its column-weighted sum (exact enough: 256 terms), which are then reduced in float64."""
    patterns = np.asarray(patterns, dtype=np.float32)
    *lead, n_rows, n_cols = patterns.shape
    weights = np.stack([np.ones(n_cols, np.float32), np.arange(n_cols, dtype=np.float32)], axis=1)
    per_row = (patterns.reshape(-1, n_cols) @ weights).reshape(*lead, n_rows, 2).astype(np.float64)
    total = per_row[..., 0].sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):  # an empty pattern gives NaN, for callers to report
        row = per_row[..., 0] @ np.arange(n_rows, dtype=np.float64) / total
        col = per_row[..., 1].sum(axis=-1) / total
    return np.stack([row, col], axis=-1)


def threshold_centroid(pattern: np.ndarray, percentile: float = 95.0) -> np.ndarray:
    """Centroid (row, col) of the binary mask of pixels above a percentile (the published code)."""
    mask = pattern > np.percentile(pattern, percentile)
    if not mask.any():
        raise ValueError("pattern is flat: no pixel above the threshold percentile")
    rows, cols = np.nonzero(mask)
    return np.array([rows.mean(), cols.mean()])


def min_max(patterns: np.ndarray, source: str = "", first_position=(0, 0)) -> np.ndarray:
    """Per-pattern min-max to [0, 1]; a flat (e.g. all-zero) pattern is an error, not a NaN."""
    low = patterns.min(axis=(-2, -1), keepdims=True)
    span = patterns.max(axis=(-2, -1), keepdims=True) - low
    if (span <= 0).any():
        flat = np.argwhere(span[..., 0, 0] <= 0)[0]
        raise ValueError(f"{source}: flat (e.g. all-zero) pattern at scan block index {tuple(int(i) for i in flat)} "
                         f"(block starting at row {first_position[0]}); remove or mask it before preprocessing")
    return ((patterns - low) / span).astype(np.float32)


def intensity_problem(block: np.ndarray, first_row: int = 0, totals: np.ndarray | None = None, minimum: float | None = None) -> str | None:
    """Why a block of scan rows (rows, cols, det_rows, det_cols), from scan row `first_row`, cannot
    be detector intensities, or None. Read noise may take single pixels below zero; a pattern
    without positive total intensity, or a background below zero (a dark level subtracted beyond
    it), would reverse the centre of mass. `totals` (each pattern's) and `minimum` (the block's
    smallest pixel): where the caller has them, saving a pass over the block each."""
    # a float32 matrix product: one pass, a fifth of a float64 sum's time, and exact enough to tell
    # a total from zero, NaN and infinity from numbers
    if totals is None:
        totals = block.reshape(*block.shape[:-2], -1) @ np.ones(block.shape[-2] * block.shape[-1], np.float32)

    def first(bad):
        row, col = np.argwhere(bad)[0]
        return f"(scan row {int(row) + first_row}, column {int(col)})"

    if not np.isfinite(totals).all():
        return (f"NaN or infinite intensities {first(~np.isfinite(totals))} (never written if the run was interrupted); "
                "regenerate the file, or mask those patterns")
    if (totals <= 0).any():
        return (f"a pattern without positive total intensity {first(totals <= 0)} (all zero, or dark-subtracted below zero); "
                "remove or mask it, or add back the subtracted dark level")
    # the median is below zero only where at least half the pixels are: any below zero at all, and
    # then how many, are asked first, as sorting a block for its median costs 20 times as much
    below = (block.min() if minimum is None else minimum) < 0 and 2 * np.count_nonzero(block < 0) >= block.size
    median = float(np.median(block)) if below else 0.0
    if median < 0:
        return (f"a background below zero (median pixel {median:.3g} in scan rows {first_row}-{first_row + len(block) - 1}): "
                "a dark level subtracted beyond the background reverses the centre of mass; add it back or clip at zero")
    return None
