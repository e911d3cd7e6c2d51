"""Per-pattern maths on diffraction patterns (one pattern or a block, last two axes)."""

import numpy as np


def center_of_mass(patterns: np.ndarray) -> np.ndarray:
    """Intensity-weighted centre of mass (the paper's Eq. 1) of the last two axes, as
    (..., 2) = (row, col) in pixels from the pattern's first pixel."""
    patterns = np.asarray(patterns, dtype=np.float64)
    rows = np.arange(patterns.shape[-2], dtype=np.float64)
    cols = np.arange(patterns.shape[-1], dtype=np.float64)
    total = patterns.sum(axis=(-2, -1))
    row = np.einsum("...ij,i->...", patterns, rows) / total
    col = np.einsum("...ij,j->...", patterns, cols) / total
    return np.stack([row, col], axis=-1)
