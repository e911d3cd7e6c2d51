"""Preprocessing of diffraction patterns (paper section 2.2): centre of mass, the disc-centred
crop, min-max normalisation, beam shift and the training filter (augmentation and splits are
polarmap.augmentation and polarmap.splits).

The maths works on one pattern or a block of patterns (the last two axes); `preprocess_dataset`
streams a data set through it in blocks of scan rows, so memory stays bounded at paper scale.

Two behaviours (study-notes):
  corrected  bad pixels masked and filled; each pattern's origin (its masked CoM about its disc,
             polarmap.disc), a plane fitted to the origins across the scan for detector data
             (descan; or a vacuum reference scan's plane), the detector's centre pixel for a
             clean simulation (its optical axis, known); every pattern resampled onto the model's grid in one
             interpolation: its angular sampling (mrad per pixel), the scan's rotation and flip
             (given, or found by least curl for detector data), and the sub-pixel disc origin.
             Beam shift = intensity-weighted CoM (Eq. 1) - the plane, in the scan's axes and the
             crop's pixels.
  faithful   the published code: global CoM = centroid of the pixels of the mean pattern above
             its 95th percentile; crop start = 2 * centre - CoM - crop // 2 (the offset applied
             with the wrong sign) for detector data, a plain centre crop for simulated sets;
             beam shift from the CoM of the uncropped pattern after min-max over the whole set,
             measured from the thresholded global CoM.
Even crops span [-n/2, n/2 - 1] about the centre pixel (the disc origin), which biases the CoM of
the cropped pattern by up to half a pixel (0.3-0.4 px for a centred 24 mrad disc, as large as the
polarization signal); odd crops (e.g. 65) are symmetric.
"""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from polarmap import disc, io
from polarmap.atomic import refuse_overwriting, write_text_atomically
from polarmap.blocks import cached_parts, map_blocks, scan_blocks
from polarmap.classes import CLASS_NAMES
from polarmap.dataset_kind import DatasetKind, dataset_kind
from polarmap.orientation import detector_from_scan, find_scan_orientation, to_scan_frame
from polarmap.pattern import center_of_mass, intensity_problem, min_max, threshold_centroid
from polarmap.quantities import check_quantity
from polarmap.provenance import provenance_attrs


@dataclass(frozen=True)
class PreprocessSettings:
    mode: str = "corrected"  # "corrected" or "faithful"
    crop_px: int = 64
    threshold_percentile: float = 95.0  # faithful global CoM
    rows_per_block: int = 8
    # corrected mode: the sampling of the crop (a model's); 0 = the data set's own
    mrad_per_px: float = 0.0
    # how the detector sits against the scan; None = known for a simulation (0, no flip), found
    # by least curl for detector data
    rotation_deg: float | None = None
    flip: bool | None = None
    vacuum_reference: str = ""  # a vacuum scan of the same shape whose disc plane is the descan

    def __post_init__(self):
        if self.mode not in ("corrected", "faithful"):
            raise ValueError(f"mode must be 'corrected' or 'faithful', got {self.mode!r}")
        if self.crop_px < 4:
            raise ValueError(f"crop_px must be at least 4 pixels, got {self.crop_px}")
        if self.mrad_per_px:  # 0: the data set's own
            check_quantity("detector_mrad_per_px", self.mrad_per_px, "the sampling to resample to (--to-mrad-per-px)", "give a model's sampling")
        if (self.rotation_deg is None) != (self.flip is None):
            raise ValueError("give the scan rotation and flip together, or neither (found from the data)")


def crop_origin(detector_shape, crop_px: int, global_com, simulated: bool) -> tuple[int, int]:
    """Top-left pixel of the published code's crop (faithful mode)."""
    centre = np.array(detector_shape) // 2
    start = centre - crop_px // 2 if simulated else np.rint(2 * centre - np.asarray(global_com)).astype(int) - crop_px // 2
    if (start < 0).any() or (start + crop_px > np.array(detector_shape)).any():
        raise ValueError(
            f"a {crop_px}px crop at {tuple(start)} leaves the {detector_shape[0]}x{detector_shape[1]} detector; "
            "use a smaller crop_px"
        )
    return int(start[0]), int(start[1])


def _scan_statistics(patterns, rows_per_block: int, path: Path):
    """Pass 1: per-pattern CoM, the mean pattern, and the global min and max."""
    com = np.empty((*patterns.shape[:2], 2))
    pattern_sum = np.zeros(patterns.shape[2:], dtype=np.float64)
    low, high = np.inf, -np.inf
    for start, block in scan_blocks(patterns, rows_per_block, dtype=np.float32):
        problem = intensity_problem(block, start)
        if problem:
            raise ValueError(f"{path}: {problem}")
        com[start:start + len(block)] = center_of_mass(block)
        pattern_sum += block.sum(axis=(0, 1), dtype=np.float64)
        low, high = min(low, float(block.min())), max(high, float(block.max()))
    return com, pattern_sum / (patterns.shape[0] * patterns.shape[1]), low, high


def preprocess_dataset(source, out, settings: PreprocessSettings, is_training: bool, provenance_settings=None, progress=True) -> dict:
    """Crop, normalise and measure the beam shift of every pattern of a data set file
    (`preprocess_scan`)."""
    source, out = Path(source), Path(out)
    refuse_overwriting(source, out)
    with io.open_dataset(source) as f:
        attrs = io.read_attrs(f)
        io.refuse_preprocessed(attrs, source, "preprocessing")
        extras = {key: f[key][()] for key in ("bad_pixels", "defect_mask") if key in f}
        return preprocess_scan(f["patterns"], f["labels"][()], attrs, source, out, settings, is_training, provenance_settings, progress, **extras)


def preprocess_scan(patterns, labels, attrs: dict, source, out, settings: PreprocessSettings, is_training: bool, provenance_settings=None,
                    progress=True, bad_pixels=None, defect_mask=None, workers: int = 1) -> dict:
    """Crop, normalise and measure the beam shift of every pattern of a scan: `patterns` a data
    set's /patterns or anything indexed like it (an acquisition's `io.ScanFrames`, streamed from
    the detector file), read a block of scan rows at a time; `source` names it in errors;
    `workers` blocks at a time in threads (`polarmap.blocks.map_blocks`: the same numbers).

    Writes a data set in the same format (cropped, [0, 1] patterns) plus /com, /beam_shift (corrected:
    /adf and /origin too),
    /beam_shift_magnitude and /keep (the training filter: M above the set's mean; all True for
    sets that are not training sets). Returns a summary with the filter counts.
    """
    source, out = Path(source), Path(out)
    detector_data = dataset_kind(attrs).through_a_detector
    if settings.mode == "faithful":
        com, beam_shift, low, high, geometry, crops = _published_crops(patterns, settings, source, detector_data)
        grids = {}
    else:
        com, beam_shift, low, high, geometry, crops, grids = _centred_crops(patterns, bad_pixels, attrs, settings, source, detector_data, workers)
    magnitude = np.hypot(beam_shift[..., 0], beam_shift[..., 1])
    keep = magnitude > magnitude.mean() if is_training else np.ones_like(magnitude, dtype=bool)
    new_attrs = {key: value for key, value in attrs.items() if key not in ("format", "format_version", "convention")}
    new_attrs.update(
        preprocessing=json.dumps(asdict(settings), sort_keys=True),
        raw_intensity_range=json.dumps([low, high]),
        source_file=str(source),
        **geometry,
        **{f"source_{k}": v for k, v in provenance_attrs(provenance_settings or asdict(settings)).items()},
    )
    crop_shape = (settings.crop_px, settings.crop_px)
    with io.create_dataset_file(out, patterns.shape[:2], crop_shape, new_attrs) as g:
        g.create_dataset("com", data=com.astype(np.float32))
        g.create_dataset("beam_shift", data=beam_shift.astype(np.float32))
        g.create_dataset("beam_shift_magnitude", data=magnitude.astype(np.float32))
        g.create_dataset("keep", data=keep)
        for key, grid in grids.items():
            g.create_dataset(key, data=grid.astype(np.float32))
        if defect_mask is not None:
            g.create_dataset("defect_mask", data=defect_mask)
        total = -(-patterns.shape[0] // settings.rows_per_block)
        for start, block in tqdm(crops, total=total, desc=f"preprocess {source.stem}", unit="block", disable=not progress):
            io.write_rows(g, start, min_max(block, str(source), (start, 0)), labels[start:start + len(block)], str(source))
    counts = {CLASS_NAMES[k] if k >= 0 else "unknown": int(keep[labels == k].sum()) for k in np.unique(labels)}
    return {"name": attrs["name"], "kept": counts, "total": int(labels.size), "mean_beam_shift_px": float(magnitude.mean())}


def _published_crops(patterns, settings: PreprocessSettings, source: Path, detector_data: bool):
    """The published code's crop (faithful mode): one whole-pixel crop for the scan, placed by the
    thresholded global CoM, and its beam shift."""
    com, mean_pattern, low, high = _scan_statistics(patterns, settings.rows_per_block, source)
    global_com = threshold_centroid(mean_pattern, settings.threshold_percentile)
    # CoM of the uncropped pattern after min-max over the whole set: CoM of (I - min)
    shifted_com = np.empty_like(com)
    for start, block in scan_blocks(patterns, settings.rows_per_block, dtype=np.float32):
        shifted_com[start:start + len(block)] = center_of_mass(block - np.float32(low))
    origin = crop_origin(patterns.shape[2:], settings.crop_px, global_com, not detector_data)
    crop = (slice(origin[0], origin[0] + settings.crop_px), slice(origin[1], origin[1] + settings.crop_px))
    geometry = {"global_com_px": json.dumps([float(v) for v in global_com]), "crop_origin_px": json.dumps(list(origin))}
    return com, shifted_com - global_com, low, high, geometry, scan_blocks(patterns, settings.rows_per_block, crop, np.float32)


ADF_INNER_RADII = 1.5  # the ADF signal that settles the orientation's half turn: beyond 1.5 disc radii


def _centred_crops(patterns, known_bad, attrs: dict, settings: PreprocessSettings, source: Path, detector_data: bool, workers: int = 1):
    """Corrected mode: bad pixels filled, disc plane, orientation and sampling, then the resampled
    crops block by block (polarmap.disc). Also the ADF signal and disc centres of every position
    (/adf, /origin: a map's background and what the descan plane was fitted to)."""
    bad, found = _disc_setup(patterns, settings.rows_per_block, known_bad, source)
    rows, cols = np.indices(patterns.shape[2:])
    adf_mask = np.hypot(rows - found.centre[0], cols - found.centre[1]) > ADF_INNER_RADII * found.radius
    com, centres, adf, low, high = _disc_statistics(patterns, settings.rows_per_block, source, bad, found, adf_mask, detector_data, workers)
    plane = _descan_plane(settings, centres, patterns.shape[2:], source)
    if plane is not None:
        origins, coefficients, descan_from = *plane, "vacuum reference"
    elif detector_data:
        origins, coefficients, descan_from = *disc.fit_plane(centres), "disc plane"
    else:  # a clean simulation has no descan, and its optical axis is the detector's centre pixel
        axis = np.array(patterns.shape[2:], dtype=np.float64) // 2
        centres[:] = axis
        origins, coefficients, descan_from = np.broadcast_to(axis, centres.shape).copy(), np.array([axis, [0, 0], [0, 0]]), "none: a simulation"

    native = float(attrs["detector_mrad_per_px"])
    sampling = settings.mrad_per_px or native
    if settings.mrad_per_px and not np.isfinite(native):
        raise ValueError(f"{source}: no detector calibration (mrad per pixel) to resample it to {settings.mrad_per_px:g} mrad/px; "
                         "import it with --mrad-per-px (or detector_mrad_per_px in the config)")
    scale = sampling / native if settings.mrad_per_px else 1.0
    orientation = _orientation(settings, com - origins, adf, dataset_kind(attrs) is DatasetKind.DETECTOR, source)
    matrix = detector_from_scan(orientation["scan_rotation_deg"], orientation["scan_flip"])
    reach = disc.crop_reach(scale, matrix, settings.crop_px)
    low_edge, high_edge = origins.reshape(-1, 2).min(axis=0) - reach, origins.reshape(-1, 2).max(axis=0) + reach
    if (low_edge < -0.5).any() or (high_edge > np.array(patterns.shape[2:]) - 0.5).any():  # half a pixel of edge is interpolated
        raise ValueError(f"{source}: a {settings.crop_px} px crop at {sampling:.3g} mrad/px ({settings.crop_px * sampling:.1f} mrad) around the "
                         f"disc (rows {origins[..., 0].min():.1f}-{origins[..., 0].max():.1f}, cols {origins[..., 1].min():.1f}-"
                         f"{origins[..., 1].max():.1f}) leaves the {patterns.shape[2]}x{patterns.shape[3]} detector: the disc is too near its edge "
                         "for this crop; use a smaller crop_px (for a model: one trained with a smaller crop in mrad)")
    beam_shift = to_scan_frame(com - origins, orientation["scan_rotation_deg"], orientation["scan_flip"]) / scale
    geometry = {
        "detector_mrad_per_px": sampling, "source_detector_mrad_per_px": native, "crop_mrad": settings.crop_px * sampling,
        "global_com_px": json.dumps([float(v) for v in origins.reshape(-1, 2).mean(axis=0)]),
        "descan_plane_px": json.dumps(np.round(coefficients, 6).tolist()), "descan_from": descan_from,
        "disc_radius_px": found.radius, "bad_pixel_count": int(bad.sum()), **orientation,
    }

    # the second pass reads only the detector pixels the crops use (a few percent of a frame)
    region = disc.crop_region(origins, reach, patterns.shape[2:])
    region_origins = origins - np.array([region[0].start, region[1].start])

    def crop(start, block):
        filled = disc.fill_bad_pixels(block, bad[region], in_place=True).reshape(-1, *block.shape[2:])
        resampled = disc.resample(filled, region_origins[start:start + len(block)].reshape(-1, 2), scale, matrix, settings.crop_px)
        return start, resampled.reshape(len(block), block.shape[1], settings.crop_px, settings.crop_px)

    crops = map_blocks(crop, patterns, settings.rows_per_block, workers, detector=region)
    return com, beam_shift, low, high, geometry, crops, {"adf": adf, "origin": centres}


def _disc_setup(patterns, rows_per_block: int, known_bad, path: Path):
    """From the mean pattern of the first block of scan rows: bad pixels and the disc."""
    first_block = next(scan_blocks(patterns, rows_per_block, dtype=np.float32))[1]
    problem = intensity_problem(first_block)
    if problem:
        raise ValueError(f"{path}: {problem}")
    bad = disc.bad_pixels(first_block.mean(axis=(0, 1)), known_bad)
    mean_first = disc.fill_bad_pixels(first_block.mean(axis=(0, 1)), bad)
    try:
        found = disc.find_disc(mean_first)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return bad, found


def _disc_statistics(patterns, rows_per_block: int, path: Path, bad, found, adf_mask, measure_origins: bool = True, workers: int = 1):
    """Per pattern: centre of mass, origin (polarmap.disc; NaN unless measured), ADF signal; and the
    scan's intensity range. `workers` blocks at a time (`map_blocks`: the same numbers)."""
    com = np.empty((*patterns.shape[:2], 2))
    centres = np.full((*patterns.shape[:2], 2), np.nan)
    adf = np.empty(patterns.shape[:2])
    weights = adf_mask.astype(np.float32).ravel()
    ones = np.ones(weights.size, np.float32)

    def measure(start, block):
        flat = block.reshape(-1, *block.shape[2:])
        block_com, block_centres = np.empty((len(flat), 2)), np.full((len(flat), 2), np.nan)
        block_adf = np.empty(len(flat), np.float32)
        low, high, checked = np.inf, -np.inf, False
        for part in cached_parts(len(flat)):
            patterns_part = flat[part]
            part_low, part_high = float(patterns_part.min()), float(patterns_part.max())  # the raw range, before filling
            suspect = not (np.isfinite(part_high) and part_low >= 0 and (patterns_part.reshape(len(patterns_part), -1) @ ones > 0).all())
            if suspect and not checked:  # once a block: it names the pattern, and lets read noise below zero pass
                problem, checked = intensity_problem(block, start), True
                if problem:
                    raise ValueError(f"{path}: {problem}")
            low, high = min(low, part_low), max(high, part_high)
            filled = disc.fill_bad_pixels(patterns_part, bad, in_place=True)
            block_com[part] = center_of_mass(filled)
            if measure_origins:
                discs = disc.disc_centres(filled, found)[0]
                block_centres[part] = disc.masked_centres(filled, discs, disc.ORIGIN_MASK_RADII * found.radius)
            block_adf[part] = filled.reshape(len(filled), -1) @ weights
        rows = slice(start, start + len(block))
        com[rows], centres[rows], adf[rows] = (values.reshape(*block.shape[:2], *values.shape[1:]) for values in (block_com, block_centres, block_adf))
        return low, high

    ranges = np.array(list(map_blocks(measure, patterns, rows_per_block, workers))).reshape(-1, 2)
    return com, centres, adf, float(ranges[:, 0].min()), float(ranges[:, 1].max())


def _descan_plane(settings: PreprocessSettings, centres, detector_shape, source: Path):
    """The disc plane of the vacuum reference scan, where there is one (its disc holds descan alone)."""
    if not settings.vacuum_reference:
        return None
    reference = Path(settings.vacuum_reference)
    with io.open_dataset(reference) as ref:
        vacuum = ref["patterns"]
        if vacuum.shape[:2] != centres.shape[:2]:
            raise ValueError(f"{reference}: a {vacuum.shape[0]}x{vacuum.shape[1]} vacuum scan for the "
                             f"{centres.shape[0]}x{centres.shape[1]} scan of {source}; record the reference with the same scan")
        if vacuum.shape[2:] != tuple(detector_shape):
            raise ValueError(f"{reference}: {vacuum.shape[2]}x{vacuum.shape[3]} px frames for the {detector_shape[0]}x{detector_shape[1]} px "
                             f"frames of {source}; record the reference with the same detector and binning")
        bad, found = _disc_setup(vacuum, settings.rows_per_block, ref["bad_pixels"][()] if "bad_pixels" in ref else None, reference)
        reference_centres = _disc_statistics(vacuum, settings.rows_per_block, reference, bad, found, np.zeros(vacuum.shape[2:], bool))[1]
    return disc.fit_plane(reference_centres)


def _orientation(settings: PreprocessSettings, field, adf, real_scan: bool, source: Path) -> dict:
    """Scan rotation and flip: given, known (a simulation, experiment-like or not), or found by
    least curl; a real scan whose field does not settle them is refused, not guessed."""
    if settings.rotation_deg is not None:
        return {"scan_rotation_deg": float(settings.rotation_deg), "scan_flip": bool(settings.flip), "scan_orientation_from": "given"}
    if not real_scan:
        return {"scan_rotation_deg": 0.0, "scan_flip": False, "scan_orientation_from": "simulation"}
    try:
        found = find_scan_orientation(field, adf)
    except ValueError as err:
        raise ValueError(f"{source}: the scan rotation cannot be found ({err}); give it (--rotation-deg and --flip)") from None
    if not found.settled:
        raise ValueError(f"{source}: the CoM field does not settle the scan's rotation and flip ({found.describe()}); "
                         "give them (--rotation-deg and --flip, or scan_rotation_deg and scan_flip in the config)")
    return {"scan_rotation_deg": found.rotation_deg, "scan_flip": found.flip, "scan_orientation_from": "least curl",
            "scan_curl_fraction": found.curl_fraction, "scan_other_flip_curl_fraction": found.other_flip_curl_fraction,
            "scan_divergence_adf_correlation": found.divergence_adf_correlation}


def write_filter_counts(summaries, out) -> None:
    """TSV of kept / total training patterns per class, with the total."""
    lines = ["class\tkept\ttotal\tfraction"]
    kept_all = total_all = 0
    for summary in summaries:
        for name, kept in summary["kept"].items():
            lines.append(f"{name}\t{kept}\t{summary['total']}\t{kept / summary['total']:.4f}")
            kept_all, total_all = kept_all + kept, total_all + summary["total"]
    lines.append(f"all\t{kept_all}\t{total_all}\t{kept_all / max(total_all, 1):.4f}")
    write_text_atomically(out, "\n".join(lines) + "\n")


CONFIGURATIONS = {  # the paper's Tables 1-3: (augment, filter)
    "none": (False, False),
    "augmentation": (True, False),
    "augmentation_filter": (True, True),
}
