"""An "experiment-like" transform of a clean simulated data set: the detector and scan effects
that separate real 4D-STEM data from a simulation, each a physical knob. Specimen effects
(thickness, mistilt) are not applied here: the clean source is re-simulated with them.

Order, as in an instrument: source size (partial spatial coherence: the probe position is
blurred, so neighbouring patterns mix), scan jitter (each pattern recorded at a slightly wrong
position), descan (the pattern drifts on the detector, globally and linearly with the scan),
detector point-spread, then counting: dose and background in electrons, Poisson noise, and
Gaussian read noise.
"""

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from polarmap import io
from polarmap.provenance import provenance_attrs


@dataclass(frozen=True)
class ExperimentSettings:
    dose_e_per_pattern: float = 0.0  # 0: noiseless (infinite dose)
    background_e_per_px: float = 0.0
    read_noise_e: float = 0.0
    psf_sigma_px: float = 0.0
    source_size_angstrom: float = 0.0  # Gaussian sigma of the effective source
    scan_jitter_angstrom: float = 0.0  # sigma of the random probe-position error
    descan_px: tuple[float, float] = (0.0, 0.0)  # (row, col) global pattern offset
    descan_px_per_scan_px: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # d(row, col) / d(scan row, scan col)
    seed: int = 0


def _interpolate_scan(patterns: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Patterns at fractional scan positions, bilinear on the periodic scan grid (a simulated
    supercell is periodic)."""
    n_rows, n_cols = patterns.shape[:2]
    r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
    fr, fc = (rows - r0)[..., None, None], (cols - c0)[..., None, None]
    r1, c1 = (r0 + 1) % n_rows, (c0 + 1) % n_cols
    r0, c0 = r0 % n_rows, c0 % n_cols
    return ((1 - fr) * (1 - fc) * patterns[r0, c0] + (1 - fr) * fc * patterns[r0, c1]
            + fr * (1 - fc) * patterns[r1, c0] + fr * fc * patterns[r1, c1])


def scan_effects(patterns: np.ndarray, scan_step_angstrom: float, settings: ExperimentSettings) -> np.ndarray:
    """Source size and scan jitter: they mix neighbouring scan positions, so they need the whole
    scan (float32, about twice the set in memory)."""
    data = np.asarray(patterns, dtype=np.float32)
    n_rows, n_cols = data.shape[:2]
    if settings.source_size_angstrom > 0:
        sigma = settings.source_size_angstrom / scan_step_angstrom
        data = ndimage.gaussian_filter(data, sigma=(sigma, sigma, 0, 0), mode="wrap")
    if settings.scan_jitter_angstrom > 0:
        rng = np.random.default_rng([settings.seed, 1])
        error = rng.normal(0.0, settings.scan_jitter_angstrom / scan_step_angstrom, size=(2, n_rows, n_cols))
        grid_rows, grid_cols = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
        data = _interpolate_scan(data, grid_rows + error[0], grid_cols + error[1]).astype(np.float32)
    return data


def detector_effects(row_patterns: np.ndarray, scan_row: int, settings: ExperimentSettings) -> np.ndarray:
    """Descan, point-spread and counting for one scan row (seeded per row, so the result does not
    depend on how rows are grouped)."""
    rng = np.random.default_rng([settings.seed, 2, scan_row])
    data = np.asarray(row_patterns, dtype=np.float64)
    gradient = np.reshape(settings.descan_px_per_scan_px, (2, 2))
    if any(settings.descan_px) or gradient.any():
        for col in range(data.shape[0]):
            shift = np.asarray(settings.descan_px) + gradient @ np.array([scan_row, col])
            data[col] = ndimage.shift(data[col], shift, order=1, mode="constant")
    if settings.psf_sigma_px > 0:
        data = ndimage.gaussian_filter(data, sigma=(0, settings.psf_sigma_px, settings.psf_sigma_px), mode="constant")
    if settings.dose_e_per_pattern > 0:
        data = data / data.sum(axis=(-2, -1), keepdims=True) * settings.dose_e_per_pattern
        data = rng.poisson(data + settings.background_e_per_px).astype(np.float64)
    else:
        data = data + settings.background_e_per_px
    if settings.read_noise_e > 0:
        data = data + rng.normal(0.0, settings.read_noise_e, size=data.shape)
    return data.astype(np.float32)


def apply(patterns: np.ndarray, scan_step_angstrom: float, settings: ExperimentSettings) -> np.ndarray:
    """The whole transform on a (scan_rows, scan_cols, det_rows, det_cols) array."""
    data = scan_effects(patterns, scan_step_angstrom, settings)
    return np.stack([detector_effects(data[row], row, settings) for row in range(data.shape[0])])


def make_experiment_like(source, out, settings: ExperimentSettings, name: str, accepted=None) -> None:
    """Transform a simulated data set file into an experiment-like one (labels kept)."""
    source = Path(source)
    with io.open_dataset(source) as f:
        attrs = io.read_attrs(f)
        patterns, labels = f["patterns"][()], f["labels"][()]
    scanned = scan_effects(patterns, float(attrs["scan_step_angstrom"]), settings)
    new_attrs = {key: value for key, value in attrs.items() if key not in ("format", "format_version", "convention")}
    new_attrs.update(
        name=name, experiment_like=True, classes=list(accepted or attrs["classes"]),
        experiment_settings=asdict(settings), clean_source=str(source),
        **{f"experiment_{k}": v for k, v in provenance_attrs(asdict(settings)).items()},
    )
    with io.create_dataset_file(out, labels.shape, scanned.shape[2:], new_attrs) as g:
        for row in tqdm(range(labels.shape[0]), desc=f"experiment-like {name}", unit="row"):
            io.write_rows(g, row, detector_effects(scanned[row], row, settings)[None], labels[row:row + 1], str(source))
