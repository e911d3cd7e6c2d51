"""Virtual images of a data set file, simulated or real: ADF, BF and ABF through annular detectors
in mrad, the CoM field, iDPC and dDPC (`polarmap.virtual` does the maths), read a few scan rows at
a time so that a large scan is never in memory whole."""

import json
from dataclasses import asdict, dataclass

import numpy as np

from polarmap import io
from polarmap.atomic import read_npz
from polarmap.blocks import map_blocks
from polarmap.dataset_kind import dataset_kind
from polarmap.pattern import center_of_mass, intensity_problem
from polarmap.virtual import annular_mask, com_field, differentiated_com, integrated_com


DESCRIBING_ATTRS = ("name", "classes", "supercell", "thickness_nm", "scan_step_angstrom", "scan_origin_angstrom")


@dataclass(frozen=True)
class VirtualDetectors:
    adf_mrad: tuple[float, float] = (60.0, 150.0)
    # BF: the whole bright-field disc; ABF: its outer half in angle (0.5-1 of the semiangle)
    abf_inner_fraction: float = 0.5
    rows_per_block: int = 8

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


def scan_virtual_images(patterns, attrs: dict, source, detectors: VirtualDetectors = VirtualDetectors(), workers: int = 1) -> dict[str, np.ndarray]:
    """The images of one scan, each (scan_rows, scan_cols), its CoM field (..., 2) in mrad from
    the optical axis, and, for detector data, its position-averaged pattern (PACBED, the
    detector's shape): `patterns` a data set's /patterns or anything indexed like it (an
    acquisition's `io.ScanFrames`), read a few scan rows at a time, `workers` blocks at once
    (`polarmap.blocks.map_blocks`: the same numbers); `source` names it in errors.
    The axis is the detector's centre for simulated sets, the centre of mass of the scan-mean
    pattern for detector data (its bright-field disc)."""
    mrad = float(attrs["detector_mrad_per_px"])
    semiangle = float(attrs["semiangle_mrad"])
    if not np.isfinite(mrad) or mrad <= 0:
        raise ValueError(f"{source}: no detector calibration (detector_mrad_per_px); import it with --mrad-per-px")
    detector_shape = patterns.shape[2:]
    through_a_detector = dataset_kind(attrs).through_a_detector
    if through_a_detector:
        sums = map_blocks(lambda _, block: block.sum(axis=(0, 1), dtype=np.float64), patterns, detectors.rows_per_block, workers)
        total = sum(sums)  # in scan order, as one worker adds them
        centre = center_of_mass(total)
    else:
        centre = np.array(detector_shape) // 2
    masks = {
        "adf": annular_mask(detector_shape, centre, mrad, *detectors.adf_mrad),
        "bf": annular_mask(detector_shape, centre, mrad, 0.0, semiangle),
        "abf": annular_mask(detector_shape, centre, mrad, detectors.abf_inner_fraction * semiangle, semiangle),
    }
    if not masks["adf"].any():
        reach = float(np.hypot(*np.maximum(centre, np.array(detector_shape) - 1 - centre))) * mrad
        raise ValueError(f"{source}: no detector pixel lies in the ADF ring {detectors.adf_mrad[0]:g}-{detectors.adf_mrad[1]:g} mrad; "
                         f"the detector reaches {reach:.0f} mrad at {mrad:.4g} mrad/px: choose a ring within it (--adf-mrad)")
    images = {name: np.empty(patterns.shape[:2]) for name in masks}
    field = np.empty((*patterns.shape[:2], 2))
    # one float32 matrix product gives every pattern's total (the intensity check) and its three
    # virtual detectors: one pass over a block of patterns instead of four
    weights = np.stack([np.ones(masks["adf"].size), *(mask.ravel() for mask in masks.values())], axis=1).astype(np.float32)

    def image(start, block):
        flat = np.asarray(block, dtype=np.float32).reshape(-1, weights.shape[0])
        sums = flat @ weights
        problem = intensity_problem(block, start, totals=sums[:, 0].reshape(block.shape[:2]))
        if problem:
            raise ValueError(f"{source}: {problem}")
        rows = slice(start, start + len(block))
        for column, name in enumerate(masks, start=1):
            images[name][rows] = sums[:, column].reshape(block.shape[:2])
        field[rows] = com_field(block, centre, mrad)

    for _ in map_blocks(image, patterns, detectors.rows_per_block, workers):
        pass
    # a global descan offset is not the specimen's: the field's scan mean is removed
    field -= field.reshape(-1, 2).mean(axis=0)
    settings = {**asdict(detectors), "centre_px": [float(v) for v in centre], "mrad_per_px": mrad, "semiangle_mrad": semiangle}
    # what column fitting and per-cell scoring need of the set, so that they read the images only
    described = {key: attrs[key] for key in DESCRIBING_ATTRS if key in attrs}
    meta = {"dataset": attrs["name"], "source": str(source), **settings, "dataset_attrs": described}
    # detector data's position-averaged pattern comes free with the first pass (a map's thickness)
    pacbed = {"pacbed": (total / np.prod(patterns.shape[:2])).astype(np.float32)} if through_a_detector else {}
    return {**images, "com_mrad": field, "idpc": integrated_com(field), "ddpc": differentiated_com(field), **pacbed,
            "meta": np.array(json.dumps(meta, default=lambda value: value.tolist()))}


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
