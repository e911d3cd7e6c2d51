"""Virtual images of a data set file, simulated or real: ADF, BF and ABF through annular detectors
in mrad, the CoM field, iDPC and dDPC (`polarmap.virtual` does the maths), read a few scan rows at
a time so that a large scan is never in memory whole."""

import json
from dataclasses import asdict, dataclass

import numpy as np

from polarmap import io
from polarmap.pattern import center_of_mass
from polarmap.virtual import annular_mask, com_field, differentiated_com, integrated_com, virtual_image


DESCRIBING_ATTRS = ("name", "classes", "supercell", "thickness_nm", "scan_step_angstrom", "scan_origin_angstrom")


@dataclass(frozen=True)
class VirtualDetectors:
    adf_mrad: tuple[float, float] = (60.0, 150.0)
    # BF: the whole bright-field disc; ABF: its outer half in angle (0.5-1 of the semiangle)
    abf_inner_fraction: float = 0.5
    rows_per_block: int = 8


def virtual_images(path, detectors: VirtualDetectors = VirtualDetectors()) -> dict[str, np.ndarray]:
    """The images of one data set, each (scan_rows, scan_cols), and its CoM field (..., 2) in mrad
    from the optical axis. The axis is the detector's centre for simulated sets, the centre of mass
    of the scan-mean pattern for detector data (its bright-field disc)."""
    with io.open_dataset(path) as f:
        attrs = io.read_attrs(f)
        patterns = f["patterns"]
        mrad = float(attrs["detector_mrad_per_px"])
        semiangle = float(attrs["semiangle_mrad"])
        if not np.isfinite(mrad) or mrad <= 0:
            raise ValueError(f"{path}: no detector calibration (detector_mrad_per_px); import it with --mrad-per-px")
        blocks = range(0, patterns.shape[0], detectors.rows_per_block)
        detector_shape = patterns.shape[2:]
        if attrs["supercell"] == "experimental" or attrs.get("experiment_like"):
            mean = sum(patterns[s:s + detectors.rows_per_block].sum(axis=(0, 1), dtype=np.float64) for s in blocks)
            centre = center_of_mass(mean)
        else:
            centre = np.array(detector_shape) // 2
        masks = {
            "adf": annular_mask(detector_shape, centre, mrad, *detectors.adf_mrad),
            "bf": annular_mask(detector_shape, centre, mrad, 0.0, semiangle),
            "abf": annular_mask(detector_shape, centre, mrad, detectors.abf_inner_fraction * semiangle, semiangle),
        }
        images = {name: np.empty(patterns.shape[:2]) for name in masks}
        field = np.empty((*patterns.shape[:2], 2))
        for start in blocks:
            block = patterns[start:start + detectors.rows_per_block]
            rows = slice(start, start + len(block))
            for name, mask in masks.items():
                images[name][rows] = virtual_image(block, mask)
            field[rows] = com_field(block, centre, mrad)
    # a global descan offset is not the specimen's: the field's scan mean is removed
    field -= field.reshape(-1, 2).mean(axis=0)
    settings = {**asdict(detectors), "centre_px": [float(v) for v in centre], "mrad_per_px": mrad, "semiangle_mrad": semiangle}
    # what column fitting and per-cell scoring need of the set, so that they read the images only
    described = {key: attrs[key] for key in DESCRIBING_ATTRS if key in attrs}
    meta = {"dataset": attrs["name"], "source": str(path), **settings, "dataset_attrs": described}
    return {**images, "com_mrad": field, "idpc": integrated_com(field), "ddpc": differentiated_com(field),
            "meta": np.array(json.dumps(meta, default=lambda value: value.tolist()))}
