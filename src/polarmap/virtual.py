"""Virtual detectors and the centre-of-mass field of a 4D-STEM scan: the images a microscopist
makes from one pattern per probe position (ADF, BF, ABF, CoM, iDPC, dDPC). A leaf module: arrays
in, arrays out, no files. Detector and scan share one orientation (row = +y up, col = +x right),
so the CoM field is a vector field on the scan grid."""

import numpy as np

from polarmap.pattern import center_of_mass


def annular_mask(shape, centre_px, mrad_per_px: float, inner_mrad: float, outer_mrad: float) -> np.ndarray:
    """The detector pixels whose centre lies at inner <= angle < outer from the optical axis."""
    rows, cols = np.indices(shape, dtype=np.float64)
    angle = np.hypot(rows - centre_px[0], cols - centre_px[1]) * mrad_per_px
    return (angle >= inner_mrad) & (angle < outer_mrad)


def virtual_image(patterns: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The intensity each probe position sends into the detector `mask`, over the last two axes."""
    return np.tensordot(np.asarray(patterns, dtype=np.float32), mask.astype(np.float32), axes=([-2, -1], [0, 1])).astype(np.float64)


def com_field(patterns: np.ndarray, centre_px, mrad_per_px: float) -> np.ndarray:
    """The beam's deflection at every probe position, (..., 2) = (row, col) in mrad from `centre_px`."""
    return deflection_mrad(center_of_mass(patterns), centre_px, mrad_per_px)


def deflection_mrad(com_px: np.ndarray, centre_px, mrad_per_px: float) -> np.ndarray:
    """Centres of mass (..., 2) in detector pixels as the beam's deflection in mrad from `centre_px`."""
    return (com_px - np.asarray(centre_px, dtype=np.float64)) * mrad_per_px


def integrated_com(field: np.ndarray) -> np.ndarray:
    """iDPC: the scalar image whose gradient (per scan step) best matches the CoM field, by Fourier
    integration on the periodic scan grid; mean zero. The beam is deflected towards positive
    projected potential, so atomic columns come out bright."""
    n_rows, n_cols = field.shape[:2]
    k_row = np.fft.fftfreq(n_rows)[:, None]
    k_col = np.fft.fftfreq(n_cols)[None, :]
    k_squared = k_row**2 + k_col**2
    k_squared[0, 0] = 1.0  # the mean is undetermined: set to zero below
    spectrum = (k_row * np.fft.fft2(field[..., 0]) + k_col * np.fft.fft2(field[..., 1])) / (2j * np.pi * k_squared)
    spectrum[0, 0] = 0.0
    return np.fft.ifft2(spectrum).real


def differentiated_com(field: np.ndarray) -> np.ndarray:
    """dDPC: the divergence of the CoM field per scan step (central differences, periodic), which
    follows the charge density: negative on the columns, where the field converges."""
    d_row = (np.roll(field[..., 0], -1, axis=0) - np.roll(field[..., 0], 1, axis=0)) / 2
    d_col = (np.roll(field[..., 1], -1, axis=1) - np.roll(field[..., 1], 1, axis=1)) / 2
    return d_row + d_col
