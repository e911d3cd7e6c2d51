"""Scan rotation and flip: how the detector's axes sit against the scan's, found from the data
(issue 15). A leaf module: arrays in, arrays out, no files.

The centre-of-mass field of a thin specimen is the gradient of its projected potential, so in the
scan's frame it has no curl. Measured in a detector frame turned by theta, the field's curl in the
scan frame is cos(theta) curl F + sin(theta) div F, whose mean square is a quadratic form in
(cos theta, sin theta): its smallest eigenvector is the rotation, exactly, without a search. The
form cannot tell theta from theta + 180 degrees (the field's sign); the beam bends towards the
atomic columns, so the field converges on them: the divergence must be most negative where the
virtual ADF image is bright. A flip is the one of the two handednesses with the smaller curl.

Convention: a field (row, col) measured in detector axes is brought into the scan's axes by a
mirror of its col component (if flipped), then a counter-clockwise turn by `rotation_deg` (with +row
up). Py4DSTEM and LiberTEM find the same two numbers by grid search over the curl (read, not
copied)."""

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# Shot noise in a CoM field has as much curl as divergence; the specimen's field has divergence
# only and varies over a unit cell, not a scan step: a Gaussian of one scan step takes most of
# the noise and little of the field.
SMOOTHING_STEPS = 1.0
# the answer is settled when the other handedness has this many times the curl, and the divergence
# follows the ADF image's columns at least this closely
FLIP_CURL_RATIO = 1.5
MIN_DIVERGENCE_CORRELATION = 0.2


@dataclass(frozen=True)
class ScanOrientation:
    rotation_deg: float
    flip: bool
    # mean-square curl over mean-square field in the scan frame, for the handedness chosen and the
    # other one: near 0 for a conservative field; the two far apart means the flip is settled
    curl_fraction: float
    other_flip_curl_fraction: float
    # correlation of the divergence with the ADF image at the chosen rotation: negative
    divergence_adf_correlation: float

    @property
    def settled(self) -> bool:
        """Whether the field tells the flip and the half turn apart (a noisy or featureless scan does not)."""
        return (self.other_flip_curl_fraction >= FLIP_CURL_RATIO * self.curl_fraction
                and self.divergence_adf_correlation <= -MIN_DIVERGENCE_CORRELATION)

    def describe(self) -> str:
        return (f"curl {100 * self.curl_fraction:.0f} % of the field against {100 * self.other_flip_curl_fraction:.0f} % for the other "
                f"flip, divergence-ADF correlation {self.divergence_adf_correlation:.2f}")


def to_scan_frame(field: np.ndarray, rotation_deg: float, flip: bool) -> np.ndarray:
    """A field (..., 2) = (row, col) in detector axes, in scan axes."""
    row, col = field[..., 0], (-field[..., 1] if flip else field[..., 1])
    theta = np.deg2rad(rotation_deg)
    # (x, y) = (col, row) turned counter-clockwise: x' = x cos - y sin, y' = x sin + y cos
    return np.stack([col * np.sin(theta) + row * np.cos(theta), col * np.cos(theta) - row * np.sin(theta)], axis=-1)


def detector_from_scan(rotation_deg: float, flip: bool) -> np.ndarray:
    """The 2x2 matrix taking a (row, col) vector in scan axes to detector axes: the inverse of
    `to_scan_frame`, with which a pattern is resampled into the scan's axes."""
    to_scan = to_scan_frame(np.eye(2), rotation_deg, flip).T  # columns: the images of the row and col axes
    return np.linalg.inv(to_scan)


def _derivatives(field: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Curl and divergence per scan step by central differences, on the interior of the scan."""
    def d_row(a):
        return (a[2:, 1:-1] - a[:-2, 1:-1]) / 2

    def d_col(a):
        return (a[1:-1, 2:] - a[1:-1, :-2]) / 2

    row, col = field[..., 0], field[..., 1]
    return d_col(row) - d_row(col), d_row(row) + d_col(col)


def find_scan_orientation(field: np.ndarray, adf: np.ndarray) -> ScanOrientation:
    """The rotation (degrees) and flip that bring a CoM field measured in detector axes into the
    scan's axes: least curl, and the divergence negative on the ADF image's bright columns."""
    field, adf = np.asarray(field, dtype=np.float64), np.asarray(adf, dtype=np.float64)
    if field.ndim != 3 or field.shape[-1] != 2 or min(field.shape[:2]) < 4 or adf.shape != field.shape[:2]:
        raise ValueError(f"scan orientation needs a CoM field (rows, cols, 2) of at least 4x4 positions and an ADF image of the same "
                         f"scan; got {field.shape} and {adf.shape}")
    field = ndimage.gaussian_filter(field, (SMOOTHING_STEPS, SMOOTHING_STEPS, 0), mode="nearest")
    adf = ndimage.gaussian_filter(adf, SMOOTHING_STEPS, mode="nearest")
    power = float((field[1:-1, 1:-1] ** 2).sum(axis=-1).mean())
    if power == 0:
        raise ValueError("the CoM field is zero everywhere: no deflection to orient by (a vacuum or dark scan?)")
    candidates = []
    for flip in (False, True):
        curl, divergence = _derivatives(to_scan_frame(field, 0.0, flip))
        form = np.array([[np.mean(curl * curl), np.mean(curl * divergence)], [np.mean(curl * divergence), np.mean(divergence * divergence)]])
        values, vectors = np.linalg.eigh(form)
        cos_theta, sin_theta = vectors[:, 0]
        candidates.append((values[0] / power, flip, np.degrees(np.arctan2(sin_theta, cos_theta))))
    (best, flip, rotation), (other, _, _) = sorted(candidates)
    bright = adf[1:-1, 1:-1] - adf[1:-1, 1:-1].mean()
    divergence = _derivatives(to_scan_frame(field, rotation, flip))[1]
    correlation = float(np.corrcoef(divergence.ravel(), bright.ravel())[0, 1])
    if correlation > 0:  # the field diverges from the columns: it is turned by half a turn
        rotation, correlation = rotation + 180.0, -correlation
    return ScanOrientation(float((rotation + 180.0) % 360.0 - 180.0), flip, float(best), float(other), correlation)
