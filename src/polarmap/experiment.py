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
from polarmap.atomic import refuse_overwriting
from polarmap.blocks import row_ranges
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


def _interpolate_scan(patterns: np.ndarray, rows: np.ndarray, cols: np.ndarray, first_row: int = 0) -> np.ndarray:
    """Patterns at fractional scan positions, bilinear on the periodic scan grid (a simulated
    supercell is periodic). `patterns` holds the scan rows from `first_row` on (the whole scan when
    0), enough of them for every position asked."""
    n_rows, n_cols = patterns.shape[:2]
    r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
    fr, fc = (rows - r0)[..., None, None], (cols - c0)[..., None, None]
    r1, c1 = (r0 + 1 - first_row) % n_rows, (c0 + 1) % n_cols
    r0, c0 = (r0 - first_row) % n_rows, c0 % n_cols
    return ((1 - fr) * (1 - fc) * patterns[r0, c0] + (1 - fr) * fc * patterns[r0, c1]
            + fr * (1 - fc) * patterns[r1, c0] + fr * fc * patterns[r1, c1])


def _halo_rows(sigma: float) -> int:
    """Scan rows a source-size blur of `sigma` rows reaches: scipy's Gaussian kernel radius (truncate=4)."""
    return int(4.0 * sigma + 0.5) if sigma > 0 else 0


def scan_effects(read_row, scan_shape, start: int, stop: int, scan_step_angstrom: float, settings: ExperimentSettings) -> np.ndarray:
    """Source size and scan jitter for scan rows [start, stop), float32. They mix neighbouring
    scan positions, so the rows around the block are read too (`read_row(i)`, wrapping at the
    scan's edges): the result equals the transform of the whole scan, at the memory of a block."""
    n_rows, n_cols = scan_shape
    rows = np.arange(start, stop)[:, None] + np.zeros((1, n_cols))
    cols = np.zeros((stop - start, 1)) + np.arange(n_cols)[None, :]
    if settings.scan_jitter_angstrom > 0:
        rng = np.random.default_rng([settings.seed, 1])  # one field for the whole scan, whatever the blocks
        error = rng.normal(0.0, settings.scan_jitter_angstrom / scan_step_angstrom, size=(2, n_rows, n_cols))
        rows, cols = rows + error[0, start:stop], cols + error[1, start:stop]
    first, last = int(np.floor(rows.min())), int(np.floor(rows.max())) + 1
    sigma = settings.source_size_angstrom / scan_step_angstrom
    halo = _halo_rows(sigma)
    data = np.stack([np.asarray(read_row(i % n_rows), dtype=np.float32) for i in range(first - halo, last + halo + 1)])
    if sigma > 0:
        data = ndimage.gaussian_filter(data, sigma=(sigma, sigma, 0, 0), mode="wrap")[halo:len(data) - halo]
    if settings.scan_jitter_angstrom > 0:
        return _interpolate_scan(data, rows, cols, first).astype(np.float32)
    return data[start - first:stop - first]


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


def experiment_rows(read_row, scan_shape, scan_step_angstrom: float, settings: ExperimentSettings, rows_per_block: int = 8):
    """The whole transform, block by block of scan rows: (first row, patterns)."""
    for start, stop in row_ranges(scan_shape[0], rows_per_block):
        scanned = scan_effects(read_row, scan_shape, start, stop, scan_step_angstrom, settings)
        yield start, np.stack([detector_effects(scanned[row - start], row, settings) for row in range(start, stop)])


def apply(patterns: np.ndarray, scan_step_angstrom: float, settings: ExperimentSettings) -> np.ndarray:
    """The whole transform on a (scan_rows, scan_cols, det_rows, det_cols) array."""
    return np.concatenate([block for _, block in experiment_rows(patterns.__getitem__, patterns.shape[:2], scan_step_angstrom, settings)])


def make_experiment_like(source, out, settings: ExperimentSettings, name: str, accepted=None, rows_per_block: int = 8) -> None:
    """Transform a simulated data set file into an experiment-like one (labels kept), streamed:
    a few scan rows in memory at a time, never the whole set."""
    source = Path(source)
    refuse_overwriting(source, out)
    with io.open_dataset(source) as f:
        attrs = io.read_attrs(f)
        patterns, labels = f["patterns"], f["labels"][()]
        new_attrs = {key: value for key, value in attrs.items() if key not in ("format", "format_version", "convention")}
        new_attrs.update(
            name=name, experiment_like=True, classes=list(accepted or attrs["classes"]),
            experiment_settings=asdict(settings), clean_source=str(source),
            **{f"experiment_{k}": v for k, v in provenance_attrs(asdict(settings)).items()},
        )
        blocks = experiment_rows(patterns.__getitem__, labels.shape, float(attrs["scan_step_angstrom"]), settings, rows_per_block)
        with io.create_dataset_file(out, labels.shape, patterns.shape[2:], new_attrs) as g:
            for start, block in tqdm(blocks, total=-(-labels.shape[0] // rows_per_block), desc=f"experiment-like {name}", unit="block"):
                io.write_rows(g, start, block, labels[start:start + len(block)], str(source))


def estimated_memory_mb(settings: ExperimentSettings, scan_shape, detector_px: int, scan_step_angstrom: float, rows_per_block: int = 8) -> int:
    """Peak memory of one streamed experiment-like job, for schedulers: a block of scan rows with
    the rows its source size reaches on either side, in float32, held about six times over (read,
    blurred, the float64 interpolation), over a fixed interpreter baseline."""
    rows = min(scan_shape[0], rows_per_block + 2 * (_halo_rows(settings.source_size_angstrom / scan_step_angstrom) + 1))
    return int(600 + 6 * rows * scan_shape[1] * detector_px**2 * 4 / 1e6)
