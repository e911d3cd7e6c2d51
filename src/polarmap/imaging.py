"""Virtual images of a data set file, simulated or real: ADF, BF and ABF through annular detectors
in mrad, the CoM field, iDPC and dDPC (`polarmap.virtual` does the maths), read a block of scan
rows at a time so that a large scan is never in memory whole."""

import json
from dataclasses import asdict, dataclass

import numpy as np

from polarmap import io
from polarmap.atomic import read_npz
from polarmap.blocks import map_blocks, rows_in_cache
from polarmap.dataset_kind import dataset_kind
from polarmap.pattern import center_of_mass, intensity_problem
from polarmap.virtual import annular_mask, deflection_mrad, differentiated_com, integrated_com


DESCRIBING_ATTRS = ("name", "classes", "supercell", "thickness_nm", "scan_step_angstrom", "scan_origin_angstrom")


@dataclass(frozen=True)
class VirtualDetectors:
    adf_mrad: tuple[float, float] = (60.0, 150.0)
    # BF: the whole bright-field disc; ABF: its outer half in angle (0.5-1 of the semiangle)
    abf_inner_fraction: float = 0.5

    def __post_init__(self):
        inner, outer = self.adf_mrad
        if not (np.isfinite(inner) and np.isfinite(outer) and 0 <= inner < outer):
            raise ValueError(f"ADF detector {inner:g}-{outer:g} mrad: give INNER OUTER with 0 <= INNER < OUTER, in mrad (--adf-mrad 60 150)")


def virtual_images(path, detectors: VirtualDetectors = VirtualDetectors()) -> dict[str, np.ndarray]:
    """The virtual images of one data set file (`scan_virtual_images`)."""
    with io.open_dataset(path) as f:
        attrs = io.read_attrs(f)
        io.refuse_preprocessed(attrs, path, "virtual imaging")
        return scan_virtual_images(f["patterns"], attrs, path, detectors)


# Detector data's optical axis (the virtual detectors' centre) is the centre of mass of the mean
# pattern of this many scan rows, spread evenly over the scan: known before the one pass over every
# pattern, at an eighth of a 128-row scan's frames (the whole scan's mean moves it by hundredths
# of a pixel: tests/test_virtual.py).
AXIS_SAMPLE_ROWS = 16


def scan_virtual_images(patterns, attrs: dict, source, detectors: VirtualDetectors = VirtualDetectors(), workers: int = 1) -> dict[str, np.ndarray]:
    """The images of one scan, each (scan_rows, scan_cols), its CoM field (..., 2) in mrad from
    the optical axis, and, for detector data, its position-averaged pattern (PACBED, the
    detector's shape): `patterns` a data set's /patterns or anything indexed like it (an
    acquisition's `io.ScanFrames`), read once, in blocks of scan rows that fit the cache
    (`polarmap.blocks.rows_in_cache`), `workers` blocks at once (`polarmap.blocks.map_blocks`: the
    same numbers); `source` names it in errors.
    The axis is the detector's centre for simulated sets, the centre of mass of a few scan rows'
    mean pattern for detector data (its bright-field disc; `AXIS_SAMPLE_ROWS`)."""
    mrad = float(attrs["detector_mrad_per_px"])
    semiangle = float(attrs["semiangle_mrad"])
    if not np.isfinite(mrad) or mrad <= 0:
        raise ValueError(f"{source}: no detector calibration (detector_mrad_per_px); import it with --mrad-per-px")
    scan_shape, detector_shape = patterns.shape[:2], patterns.shape[2:]
    through_a_detector = dataset_kind(attrs).through_a_detector
    centre = _sampled_axis(patterns) if through_a_detector else np.array(detector_shape) // 2
    masks = {
        "adf": annular_mask(detector_shape, centre, mrad, *detectors.adf_mrad),
        "bf": annular_mask(detector_shape, centre, mrad, 0.0, semiangle),
        "abf": annular_mask(detector_shape, centre, mrad, detectors.abf_inner_fraction * semiangle, semiangle),
    }
    if not masks["adf"].any():
        reach = float(np.hypot(*np.maximum(centre, np.array(detector_shape) - 1 - centre))) * mrad
        raise ValueError(f"{source}: no detector pixel lies in the ADF ring {detectors.adf_mrad[0]:g}-{detectors.adf_mrad[1]:g} mrad; "
                         f"the detector reaches {reach:.0f} mrad at {mrad:.4g} mrad/px: choose a ring within it (--adf-mrad)")
    images = {name: np.empty(scan_shape) for name in masks}
    com_px = np.empty((*scan_shape, 2))
    # One float32 matrix product over a block gives every pattern's total (the intensity check),
    # its three virtual detectors and its first moments along the detector's rows and columns (the
    # centre of mass): exact for counts while a moment stays below 2^24 (20,000 electrons a
    # pattern on 256 px), within 1e-4 px beyond, a thousandth of the shot noise's.
    detector_rows, detector_cols = np.indices(detector_shape)
    weights = np.stack([np.ones(masks["adf"].size), *(mask.ravel() for mask in masks.values()), detector_rows.ravel(), detector_cols.ravel()],
                       axis=1).astype(np.float32)
    # a detector's counts cannot fall below zero: the search for a background below zero is skipped
    unsigned = np.issubdtype(getattr(patterns, "stored_dtype", patterns.dtype), np.unsignedinteger)

    def image(start, block):
        flat = block.reshape(-1, weights.shape[0])
        sums = flat @ weights
        problem = intensity_problem(block, start, totals=sums[:, 0].reshape(block.shape[:2]), minimum=0.0 if unsigned else None)
        if problem:
            raise ValueError(f"{source}: {problem}")
        rows = slice(start, start + len(block))
        for column, name in enumerate(masks, start=1):
            images[name][rows] = sums[:, column].reshape(block.shape[:2])
        com_px[rows] = (sums[:, 4:].astype(np.float64) / sums[:, :1].astype(np.float64)).reshape(*block.shape[:2], 2)
        # the block's summed pattern, for the PACBED: exact for counts (below 2^24 a pixel)
        return np.add.reduce(flat, axis=0).astype(np.float64) if through_a_detector else None

    pattern_sums = list(map_blocks(image, patterns, rows_in_cache(patterns.shape), workers))
    field = deflection_mrad(com_px, centre, mrad)
    # a global descan offset is not the specimen's: the field's scan mean is removed
    field -= field.reshape(-1, 2).mean(axis=0)
    settings = {**asdict(detectors), "centre_px": [float(v) for v in centre], "mrad_per_px": mrad, "semiangle_mrad": semiangle}
    # what column fitting and per-cell scoring need of the set, so that they read the images only
    described = {key: attrs[key] for key in DESCRIBING_ATTRS if key in attrs}
    meta = {"dataset": attrs["name"], "source": str(source), **settings, "dataset_attrs": described}
    # detector data's position-averaged pattern comes free with the pass (a map's thickness)
    pacbed = {}
    if through_a_detector:
        pacbed["pacbed"] = (sum(pattern_sums) / np.prod(scan_shape)).reshape(detector_shape).astype(np.float32)  # in scan order, as one worker adds them
    return {**images, "com_mrad": field, "idpc": integrated_com(field), "ddpc": differentiated_com(field), **pacbed,
            "meta": np.array(json.dumps(meta, default=lambda value: value.tolist()))}


def _sampled_axis(patterns) -> np.ndarray:
    """The centre of mass (row, col) of the mean pattern of `AXIS_SAMPLE_ROWS` scan rows spread
    evenly over the scan (all rows of a smaller one)."""
    n_rows = patterns.shape[0]
    rows = np.unique(np.linspace(0, n_rows - 1, min(AXIS_SAMPLE_ROWS, n_rows)).round().astype(int))
    # a row's sum in float32 (exact for counts below 2^24 a pixel), the rows' in float64
    total = sum(np.add.reduce(np.asarray(patterns[row:row + 1], dtype=np.float32).reshape(-1, *patterns.shape[2:]), axis=0).astype(np.float64)
                for row in rows)
    return center_of_mass(total)


def read_virtual_images(path) -> dict:
    """A virtual-images .npz as `virtual_images` wrote it (meta parsed), or one line naming the
    file: damaged, foreign, not 2-D images of one scan, or holding NaN."""
    fix = "rerun polarmap virtual-images on its data set"
    images = read_npz(path, "virtual-images file", fix)
    missing = sorted({"adf", "com_mrad", "meta"} - images.keys())
    if missing:
        raise ValueError(f"{path}: not a virtual-images file (no {', '.join(missing)}); {fix}")
    scan_shape = images["adf"].shape
    for name, image in images.items():
        expected = (*scan_shape, 2) if name == "com_mrad" else image.shape[-2:] if name == "pacbed" else scan_shape
        if name != "meta" and (len(scan_shape) != 2 or image.shape != expected):
            raise ValueError(f"{path}: its {name} is {'x'.join(map(str, image.shape))}, not {'x'.join(map(str, expected))}: "
                             f"virtual images are 2-D, one value per scan position; {fix}")
        if name != "meta" and not np.isfinite(image).all():
            raise ValueError(f"{path}: its {name} holds NaN or infinite values; {fix}")
    try:
        images["meta"] = json.loads(str(images["meta"]))
        images["meta"]["dataset_attrs"]["name"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: its meta is not a virtual-images description ({type(err).__name__}: {err}); {fix}") from None
    return images
