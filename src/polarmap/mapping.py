"""`polarmap map FILE --model MODEL`: a polarization map of one acquisition, in one command.

The acquisition is read (polarmap.readers), imported into the data set convention, preprocessed
at the model's sampling and crop (resampled, bad pixels filled, descan plane, orientation given
or found), and predicted with the out-of-distribution threshold where one is given. Written to
the output folder:
  map.png/.pdf        classes (grey: unknown), one arrow per unit cell over the virtual ADF image,
                      and the CoM field, all drawn with +row up: as the microscope shows the scan
  predictions.npz     class (-1 unknown), angle, confidence (0 to 1), out-of-distribution score,
                      CoM field (mrad, in the scan's axes), ADF, per position
  predictions.tsv     the same, one line per position
  provenance.json     inputs and their hashes, versions, sampling, orientation, calibrations
  preprocessed.h5     the patterns the model saw
The imported copy of the raw frames is a working file in a new hidden folder of the output folder
(never a name the user could have given an input), removed once preprocessed; the outputs are
written only once the map is made.
"""

import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from polarmap import io
from polarmap.atomic import save_npz_atomically, write_text_atomically
from polarmap.classes import CLASS_NAMES, UNKNOWN_LABEL
from polarmap.preprocessing import PreprocessSettings, preprocess_dataset
from polarmap.provenance import write_record
from polarmap.readers import read_acquisition

# the semi-angle measured from the data's disc may differ from the model's by this fraction: the
# model saw discs of one size, and a probe 15 % wider is another pattern
SEMIANGLE_TOLERANCE = 0.15
MAP_OUTPUTS = ("map.png", "map.pdf", "predictions.npz", "predictions.tsv", "provenance.json", "preprocessed.h5")


def model_sampling(model_path) -> dict:
    """Sampling, crop, energy and semi-angle a model was trained at (model.pt or PCA+kNN model.npz)."""
    from polarmap.models import PcaKnn
    from polarmap.training import load_model

    if Path(model_path).suffix == ".npz":
        sampling = json.loads(str(PcaKnn.load(model_path).arrays["meta"])).get("sampling")
    else:
        sampling = load_model(model_path)[1]["sampling"]
    if not sampling:
        raise ValueError(f"{model_path}: trained before models recorded their sampling (mrad per pixel, crop); retrain it")
    return sampling


def map_acquisition(path, model_path, out_dir, ood_path="", job=None, geometry=None, lattice_a_angstrom=None, progress=True) -> dict:
    """The map of one acquisition (see the module's description). `job` holds the import keys of
    `polarmap import` (format, dataset, scan_shape, calibrations); `geometry` the orientation and
    vacuum reference of `polarmap preprocess`."""
    from polarmap.evaluation import load_predictor, predict_grids

    started = time.perf_counter()
    path, out_dir = Path(path), Path(out_dir)
    sampling = model_sampling(model_path)
    geometry = {"rotation_deg": None, "flip": None, "vacuum_reference": "", **(geometry or {})}
    job = {"name": path.stem, "format": "auto", "dataset": "", "scan_shape": None, "label": None, "accepted": [],
           "thickness_nm": 0.0, "supercell": "experimental", "source": "detector", "path": str(path), **(job or {})}
    acquisition = read_acquisition(path, job["format"], job["dataset"], stack_is_scan=bool(job["scan_shape"]))
    attrs = io.acquisition_attrs(job, acquisition)
    if not np.isfinite(attrs["detector_mrad_per_px"]):
        raise ValueError(f"{path}: no detector calibration (mrad per pixel) in the file; give it (--mrad-per-px), "
                         f"the model was trained at {sampling['detector_mrad_per_px']:.4g} mrad/px")
    predictor = load_predictor(model_path, ood_path=ood_path)  # a bad model or --ood is refused before any work
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".polarmap-map-", dir=out_dir) as working:
        imported, preprocessed = Path(working) / "imported.h5", Path(working) / "preprocessed.h5"
        try:
            io.import_acquisition(acquisition, imported, attrs, scan_shape=job["scan_shape"], progress=progress)
            settings = PreprocessSettings(crop_px=int(sampling["crop_px"]), mrad_per_px=float(sampling["detector_mrad_per_px"]), **geometry)
            preprocess_dataset(imported, preprocessed, settings, is_training=False, progress=progress)
        except ValueError as err:  # named by the user's file, not the working copy
            raise ValueError(str(err).replace(str(imported), str(path))) from None
        imported.unlink()
        with io.open_dataset(preprocessed) as f:
            meta = io.read_attrs(f)
            beam_shift, adf = f["beam_shift"][()], f["adf"][()]
        semiangle = float(meta["disc_radius_px"]) * float(meta["source_detector_mrad_per_px"])
        if abs(semiangle / float(sampling["semiangle_mrad"]) - 1) > SEMIANGLE_TOLERANCE:
            raise ValueError(f"{path}: its bright-field disc spans {semiangle:.1f} mrad at {meta['source_detector_mrad_per_px']:.4g} mrad/px, "
                             f"the model's {float(sampling['semiangle_mrad']):.1f} mrad: a different probe (or a wrong calibration); "
                             "check --mrad-per-px, or train a model at this semi-angle")
        _, grids = predict_grids(predictor, model_path, preprocessed)
        classes = grids[""]
        field_mrad = beam_shift * float(sampling["detector_mrad_per_px"])  # crop pixels -> mrad, in the scan's axes
        step = float(meta["scan_step_angstrom"])
        cell_px = lattice_a_angstrom / step if lattice_a_angstrom and np.isfinite(step) else None
        arrays = {"classes": classes, "com_mrad": field_mrad.astype(np.float32), "adf": adf}
        if ".angle" in grids:
            arrays["angle_deg"] = np.degrees(grids[".angle"]).astype(np.float32)
        if ".confidence" in grids:
            arrays["confidence"] = grids[".confidence"]
        if ".ood" in grids:
            arrays["ood_score"] = grids[".ood"]
        save_npz_atomically(out_dir / "predictions.npz", arrays)
        _write_tsv(out_dir / "predictions.tsv", arrays)
        from polarmap.figures import acquisition_map

        title = f"{path.name}: {Path(model_path).parent.name or Path(model_path).name}"
        acquisition_map(classes, adf, field_mrad, cell_px, title, out_dir / "map")
        known = classes != UNKNOWN_LABEL
        summary = {
            "scan_shape": list(classes.shape), "unknown_fraction": float(1 - known.mean()),
            "counts": {name: int((classes == k).sum()) for k, name in enumerate(CLASS_NAMES)},
            "majority_class": CLASS_NAMES[int(np.bincount(classes[known], minlength=len(CLASS_NAMES)).argmax())] if known.any() else "unknown",
            "scan_rotation_deg": meta["scan_rotation_deg"], "scan_flip": meta["scan_flip"], "scan_orientation_from": meta["scan_orientation_from"],
            "measured_semiangle_mrad": semiangle, "cell_px": cell_px,
        }
        write_record(out_dir / "provenance.json", [path, model_path] + ([ood_path] if ood_path else []),
                     {"job": job, "preprocessing": asdict(settings), "model_sampling": sampling}, started,
                     calibration={key: attrs[key] for key in io.CALIBRATION_ARGUMENTS}, calibration_sources=attrs["calibration_sources"],
                     orientation={key: value for key, value in meta.items() if key.startswith("scan_")},
                     descan_plane_px=meta["descan_plane_px"], descan_from=meta["descan_from"], bad_pixel_count=meta["bad_pixel_count"], **summary)
        preprocessed.replace(out_dir / "preprocessed.h5")
        return summary


def _write_tsv(path: Path, arrays: dict) -> None:
    columns = [key for key in ("angle_deg", "confidence", "ood_score") if key in arrays]
    lines = ["\t".join(["row", "col", "class", *columns, "com_row_mrad", "com_col_mrad", "adf"])]
    classes = arrays["classes"]
    for (row, col), k in np.ndenumerate(classes):
        values = [f"{float(arrays[key][row, col]):.4g}" for key in columns]
        com = arrays["com_mrad"][row, col]
        lines.append("\t".join([str(row), str(col), CLASS_NAMES[k] if k >= 0 else "unknown", *values,
                                f"{com[0]:.4g}", f"{com[1]:.4g}", f"{float(arrays['adf'][row, col]):.6g}"]))
    write_text_atomically(path, "\n".join(lines) + "\n")
