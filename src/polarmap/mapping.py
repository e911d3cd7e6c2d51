"""`polarmap map FILE [--model MODEL]`: a polarization map of one acquisition, in one command.

Per unit cell, always and without a model: the lattice found in the scan's own virtual ADF (or
iDPC) image, and every cell's Nb displacement from its four A-site neighbours in picometres with
its uncertainty (polarmap.lattice). Written to the output folder:
  cells.csv           one row per cell (see CELL_COLUMNS), positions and vectors in the Atomap/TEMUL
                      convention: x right, y down, as the image is displayed (with a model, and no
                      lattice found: the header alone, the reason in provenance.json)
  cells.png/.pdf      the arrows over the image, the lattice found, a colour wheel
  provenance.json     inputs and their hashes, versions, the lattice, its distortion, calibrations,
                      and the specimen's thickness from its PACBED where a library is given
With a unit-cell model (--unit-cell-model), its answer for every cell found, windowed along the
lattice's own vectors, beside column fitting's in cells.csv (UNIT_CELL_COLUMNS).

With a model, per pattern as well: the acquisition is preprocessed at the model's sampling and
crop (resampled, bad pixels filled, descan plane, orientation given or found), and predicted with
the out-of-distribution threshold where one is given; each cell gets the majority of the model's
answers in it beside its own (agreement). Also written:
  map.png/.pdf        classes (grey: unknown), one arrow per unit cell over the virtual ADF image,
                      and the CoM field, all drawn with +row up: as the microscope shows the scan
  predictions.npz     class (-1 unknown), angle, confidence (0 to 1), out-of-distribution score,
                      CoM field (mrad, in the scan's axes), ADF, per position
  predictions.tsv     the same, one line per position
  provenance.json     inputs and their hashes, versions, sampling, orientation, calibrations
  preprocessed.h5     the patterns the model saw
The acquisition is streamed from the detector file a few scan rows at a time (`io.ScanFrames`):
no copy of the raw frames is written. The preprocessed patterns are written in a new hidden
folder of the output folder (never a name the user could have given an input) and moved into
place once the map is made; the other outputs are written only then too.
"""

import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from polarmap import io, predictors
from polarmap.atomic import save_npz_atomically, write_text_atomically
from polarmap.classes import CLASS_NAMES, UNKNOWN_LABEL, class_votes, majority_class
from polarmap.dataset_kind import DETECTOR_SUPERCELL
from polarmap.imaging import scan_virtual_images
from polarmap.lattice import cell_vectors, find_lattice
from polarmap.pacbed import estimate_thickness
from polarmap.preprocessing import PreprocessSettings, preprocess_scan
from polarmap.provenance import write_record
from polarmap.readers import read_acquisition

# the semi-angle measured from the data's disc may differ from the model's by this fraction: the
# model saw discs of one size, and a probe 15 % wider is another pattern
SEMIANGLE_TOLERANCE = 0.15
# a PACBED library at another energy or semi-angle than the scan's is another probe's
PROBE_TOLERANCE = 0.02
MAP_OUTPUTS = ("map.png", "map.pdf", "predictions.npz", "predictions.tsv", "provenance.json", "preprocessed.h5", "cells.csv", "cells.png", "cells.pdf")
CELL_IMAGES = ("adf", "idpc")
CELL_COLUMNS = ("cell_row", "cell_col", "x_px", "y_px", "x_angstrom", "y_angstrom", "u_pm", "v_pm", "crystal_u_pm", "crystal_v_pm",
                "uncertainty_pm", "angle_deg", "class", "method", "residual")
PER_PATTERN_COLUMNS = ("per_pattern_class", "agree")  # with a model: the majority of its answers in the cell
UNIT_CELL_COLUMNS = ("unit_cell_class", "unit_cell_agree")  # with a unit-cell model: its answer for the cell found


def load_pattern_model(model_path, ood_path=""):
    """A per-pattern predictor (model.pt or PCA+kNN model.npz), loaded once, that recorded the
    sampling, crop, energy and semi-angle it was trained at."""
    predictor = predictors.load(model_path, ood_path, per_cell=False)
    if not predictor.sampling:
        raise ValueError(f"{model_path}: trained before models recorded their sampling (mrad per pixel, crop); retrain it")
    return predictor


def map_acquisition(path, model_path, out_dir, ood_path="", job=None, geometry=None, lattice_a_angstrom=None, progress=True,
                    cell_image="adf", workers=None, pacbed_path="", unit_cell_path="") -> dict:
    """The map of one acquisition (see the module's description); `model_path` "" for the
    per-cell map alone. `job` holds the import keys of `polarmap import` (format, dataset,
    scan_shape, calibrations); `geometry` the orientation and vacuum reference of `polarmap
    preprocess`; `cell_image` the virtual image the lattice is found in; `workers` blocks of scan
    rows at once (None: every core this process may use; the same numbers for any number);
    `pacbed_path` a PACBED library: the specimen's thickness, and a model trained at other
    thicknesses flagged; `unit_cell_path` a unit-cell model, applied to the cells found."""
    from polarmap.evaluation import predict_grids

    started = time.perf_counter()
    path, out_dir = Path(path), Path(out_dir)
    if cell_image not in CELL_IMAGES:
        raise ValueError(f"the lattice is found in {' or '.join(CELL_IMAGES)}, not {cell_image!r}")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers {workers}: give at least 1 (or leave it out: every core)")
    workers = workers or len(os.sched_getaffinity(0))
    # every file given is read before any work: a bad model, --ood, --pacbed or unit-cell model first
    predictor = load_pattern_model(model_path, ood_path) if model_path else None
    sampling = predictor.sampling if model_path else None
    library = io.read_pacbed_library(pacbed_path) if pacbed_path else None
    if unit_cell_path:
        from polarmap.unitcell import load_unit_cell_model  # torch: only where a unit-cell model is given

        unit_cell_model = load_unit_cell_model(unit_cell_path)
    else:
        unit_cell_model = None
    geometry = {"rotation_deg": None, "flip": None, "vacuum_reference": "", **(geometry or {})}
    job = {"name": path.stem, "format": "auto", "dataset": "", "scan_shape": None, "label": None, "accepted": [],
           "thickness_nm": 0.0, "supercell": DETECTOR_SUPERCELL, "source": "detector", "path": str(path), **(job or {})}
    acquisition = read_acquisition(path, job["format"], job["dataset"], stack_is_scan=bool(job["scan_shape"]))
    attrs = io.acquisition_attrs(job, acquisition)
    if not np.isfinite(attrs["detector_mrad_per_px"]):
        trained = f", the model was trained at {sampling['detector_mrad_per_px']:.4g} mrad/px" if sampling else " (the virtual ADF is in mrad)"
        raise ValueError(f"{path}: no detector calibration (mrad per pixel) in the file; give it (--mrad-per-px){trained}")
    step = float(attrs["scan_step_angstrom"])
    if not model_path and not np.isfinite(step):
        raise ValueError(f"{path}: no scan step in the file; give it (--scan-step-angstrom): displacements are in picometres")
    if library:
        _check_probe(attrs, library, path, pacbed_path)
    frames = io.ScanFrames(acquisition, job["scan_shape"])
    attrs = io.stored_attrs(attrs)  # as a data set file would give them back
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".polarmap-map-", dir=out_dir) as working:
        preprocessed = Path(working) / "preprocessed.h5"
        try:
            images = scan_virtual_images(frames, attrs, path, workers=workers)
            image, image_problem = images[cell_image], ""
        except ValueError as err:  # with a model, the per-pattern map stands without the per-cell one
            if not model_path:
                raise
            images, image, image_problem = None, None, str(err)
        thickness = scan_thickness(images, library, sampling, image_problem)
        if thickness.get("outside_model"):
            print(f"warning: {path}: {thickness['outside_model']}", file=sys.stderr)
        if model_path:
            settings = PreprocessSettings(crop_px=int(sampling["crop_px"]), mrad_per_px=float(sampling["detector_mrad_per_px"]), **geometry)
            labels = np.full(frames.shape[:2], UNKNOWN_LABEL, dtype=np.int8)
            preprocess_scan(frames, labels, attrs, path, preprocessed, settings, is_training=False, progress=progress, bad_pixels=frames.bad_pixels,
                            workers=workers)
        title = f"{path.name}: {Path(model_path).parent.name or Path(model_path).name}" if model_path else path.name
        unit_cell = (unit_cell_model, images) if unit_cell_model is not None else None
        if not model_path:
            cells = cell_map(image, cell_image, step, path.name, out_dir, unit_cell=unit_cell)
            write_record(out_dir / "provenance.json", [path] + [extra for extra in (pacbed_path, unit_cell_path) if extra],
                         {"job": job, "cell_image": cell_image}, started,
                         calibration={key: attrs[key] for key in io.CALIBRATION_ARGUMENTS}, calibration_sources=attrs["calibration_sources"],
                         cells=cells, thickness=thickness)
            return {"scan_shape": list(image.shape), "cells": cells, "thickness": thickness}
        with io.open_dataset(preprocessed) as f:
            meta = io.read_attrs(f)
            beam_shift, adf = f["beam_shift"][()], f["adf"][()]
        semiangle = float(meta["disc_radius_px"]) * float(meta["source_detector_mrad_per_px"])
        if abs(semiangle / float(sampling["semiangle_mrad"]) - 1) > SEMIANGLE_TOLERANCE:
            raise ValueError(f"{path}: its bright-field disc spans {semiangle:.1f} mrad at {meta['source_detector_mrad_per_px']:.4g} mrad/px, "
                             f"the model's {float(sampling['semiangle_mrad']):.1f} mrad: a different probe (or a wrong calibration); "
                             "check --mrad-per-px, or train a model at this semi-angle")
        _, grids = predict_grids(predictor, preprocessed)
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

        flagged = f"\n{thickness['outside_model']}" if thickness.get("outside_model") else ""
        acquisition_map(classes, adf, field_mrad, cell_px, title + flagged, out_dir / "map")
        try:
            if image is None:
                raise ValueError(image_problem)
            cells = cell_map(image, cell_image, float(meta["scan_step_angstrom"]), title, out_dir, classes, unit_cell)
        except ValueError as err:  # the per-pattern map stands without it: no cells, the reason in the provenance
            cells = {"not mapped": str(err)}
            unit_cell_columns = UNIT_CELL_COLUMNS if unit_cell else ()
            write_text_atomically(out_dir / "cells.csv", ",".join([*CELL_COLUMNS, *PER_PATTERN_COLUMNS, *unit_cell_columns]) + "\n")
        known = classes != UNKNOWN_LABEL
        summary = {
            "scan_shape": list(classes.shape), "unknown_fraction": float(1 - known.mean()),
            "counts": {name: int((classes == k).sum()) for k, name in enumerate(CLASS_NAMES)},
            "majority_class": _class_name(majority_class(class_votes(classes))),
            "scan_rotation_deg": meta["scan_rotation_deg"], "scan_flip": meta["scan_flip"], "scan_orientation_from": meta["scan_orientation_from"],
            "measured_semiangle_mrad": semiangle, "cell_px": cell_px, "cells": cells, "thickness": thickness,
        }
        write_record(out_dir / "provenance.json", [path, model_path] + [extra for extra in (ood_path, pacbed_path, unit_cell_path) if extra],
                     {"job": job, "preprocessing": asdict(settings), "model_sampling": sampling}, started,
                     calibration={key: attrs[key] for key in io.CALIBRATION_ARGUMENTS}, calibration_sources=attrs["calibration_sources"],
                     orientation={key: value for key, value in meta.items() if key.startswith("scan_")},
                     descan_plane_px=meta["descan_plane_px"], descan_from=meta["descan_from"], bad_pixel_count=meta["bad_pixel_count"], **summary)
        preprocessed.replace(out_dir / "preprocessed.h5")
        return summary


def _check_probe(attrs: dict, library: dict, path: Path, library_path) -> None:
    """A PACBED library is of one probe: the scan's energy and semi-angle must be known and its."""
    for key, flag, unit in (("energy_kev", "--energy-kev", "keV"), ("semiangle_mrad", "--semiangle-mrad", "mrad")):
        value = float(attrs[key])
        if not np.isfinite(value):
            raise ValueError(f"{path}: no {key} in the file; give it ({flag}): the thickness is read against a library at "
                             f"{library[key]:g} {unit}")
        if abs(value / library[key] - 1) > PROBE_TOLERANCE:
            raise ValueError(f"{library_path}: simulated at {library[key]:g} {unit}, the scan at {value:g} {unit}; make a library at the "
                             f"scan's probe (polarmap pacbed-library {flag} {value:g})")


def scan_thickness(images: dict | None, library: dict | None, sampling: dict | None, image_problem: str) -> dict:
    """The specimen's thickness from the scan's PACBED against the library (see polarmap.pacbed),
    and with a model (its `sampling` records the thicknesses it was trained at), one line where it
    was trained at none near it. Without a library: what was not done, said."""
    if library is None:
        return {"not estimated": "no PACBED library given (--pacbed; polarmap pacbed-library makes one)"}
    if images is None:
        return {"not estimated": image_problem}
    meta = json.loads(str(images["meta"]))
    estimate = estimate_thickness(images["pacbed"], meta["centre_px"], meta["mrad_per_px"], library)
    result = {**estimate.summary(), "library": {"thickness_nm": [float(library["thickness_nm"][0]), float(library["thickness_nm"][-1])],
                                                  "source": str(library.get("source", ""))}}
    if sampling is not None:
        result["model_thickness_nm"] = sampling.get("training_thickness_nm", [])
        result["outside_model"] = estimate.outside(result["model_thickness_nm"])
    return result


def cell_map(image: np.ndarray, image_name: str, step_angstrom: float, title: str, out_dir: Path, per_pattern: np.ndarray | None = None,
             unit_cell: tuple | None = None) -> dict:
    """The per-cell map of a scan's image: the lattice found in it, a vector per cell, written as
    cells.csv and cells.png/.pdf; with `per_pattern` (a model's classes per scan position), each
    cell's majority of them beside its own class; with `unit_cell` (a unit-cell model and the
    scan's virtual images), its answer for each cell found, windowed along the lattice's own
    vectors. Returns the summary for the provenance."""
    from polarmap.figures import cell_map as draw

    if not np.isfinite(step_angstrom):
        raise ValueError("no scan step: give it (--scan-step-angstrom) for displacements in picometres")
    lattice = find_lattice(image)
    cells = cell_vectors(image, lattice, step_angstrom)
    shown = cells.shown_classes
    table = {"per_pattern_class": None}
    if per_pattern is not None:
        # each scan position belongs to the cell whose Nb site is nearest in lattice coordinates
        positions = np.indices(per_pattern.shape).reshape(2, -1).T
        owner = np.round(lattice.fractional(positions)).astype(int)
        table["per_pattern_class"] = np.array([majority_class(class_votes(per_pattern.ravel()[(owner == index).all(axis=1)]))
                                               for index in cells.index], dtype=np.int64)
    if unit_cell is not None:
        from polarmap.unitcell import lattice_windows, predict_windows

        model, images = unit_cell
        a, b = lattice.vectors_px
        windows = lattice_windows(images["adf"], images["com_mrad"], cells.nb_px - (a + b) / 2, lattice.vectors_px, periodic=False)
        table["unit_cell_class"] = predict_windows(model, windows)[0]
    rows = image.shape[0]
    names = [_class_name(k) for k in shown]
    header = [*CELL_COLUMNS, *(PER_PATTERN_COLUMNS if per_pattern is not None else []), *(UNIT_CELL_COLUMNS if unit_cell is not None else [])]
    lines = [",".join(header)]
    for n in range(len(cells.classes)):
        # displayed image coordinates (x right, y down): row 0 of the data set is the bottom line
        x_px, y_px = cells.nb_px[n, 1], rows - 1 - cells.nb_px[n, 0]
        values = [cells.index[n, 1], cells.index[n, 0], f"{x_px:.3f}", f"{y_px:.3f}", f"{x_px * step_angstrom:.4f}", f"{y_px * step_angstrom:.4f}",
                  f"{cells.scan_pm[n, 1]:.3f}", f"{-cells.scan_pm[n, 0]:.3f}", f"{cells.crystal_pm[n, 0]:.3f}", f"{cells.crystal_pm[n, 1]:.3f}",
                  f"{cells.uncertainty_pm[n]:.3f}", f"{cells.angle_deg[n]:.2f}", names[n], f"column fit ({image_name})", f"{cells.residual[n]:.4g}"]
        if per_pattern is not None:
            majority = table["per_pattern_class"][n]
            values += [_class_name(majority), str(bool(majority >= 0 and majority == shown[n])).lower()]
        if unit_cell is not None:
            answer = table["unit_cell_class"][n]
            values += [_class_name(answer), str(bool(answer == shown[n])).lower()]
        lines.append(",".join(map(str, values)))
    write_text_atomically(out_dir / "cells.csv", "\n".join(lines) + "\n")
    draw(image, lattice, cells, image_name.upper(), f"{title}: polarization per unit cell", out_dir / "cells", per_pattern)
    known = shown >= 0
    summary = {
        "image": image_name, "cells": int(len(shown)), "unknown": int((~known).sum()), "unknown_by_residual": int((~cells.well_fitted).sum()),
        "left_out_at_edge": cells.left_out,
        "counts": {name: int((shown == k).sum()) for k, name in enumerate(CLASS_NAMES)},
        "majority_class": _class_name(majority_class(class_votes(shown))),
        "median_displacement_pm": float(np.median(np.hypot(*cells.crystal_pm.T))), "median_uncertainty_pm": float(np.median(cells.uncertainty_pm)),
        "lattice": {"origin_px": lattice.origin_px.tolist(), "vectors_px": lattice.vectors_px.tolist(), "cell_px": lattice.cell_px,
                    "cell_angstrom": lattice.cell_px * step_angstrom, **lattice.distortion(),
                    "rms_deviation_cell": lattice.rms_deviation_px / lattice.cell_px, "indexing": lattice.indexing()},
    }
    if per_pattern is not None:
        answered = (table["per_pattern_class"] >= 0) & known
        summary["agreement_with_model"] = float((table["per_pattern_class"][answered] == shown[answered]).mean()) if answered.any() else float("nan")
    if unit_cell is not None:
        answers = table["unit_cell_class"]
        summary["unit_cell_counts"] = {name: int((answers == k).sum()) for k, name in enumerate(CLASS_NAMES)}
        summary["agreement_with_unit_cell"] = float((answers[known] == shown[known]).mean()) if known.any() else float("nan")
    return summary


def _write_tsv(path: Path, arrays: dict) -> None:
    columns = [key for key in ("angle_deg", "confidence", "ood_score") if key in arrays]
    lines = ["\t".join(["row", "col", "class", *columns, "com_row_mrad", "com_col_mrad", "adf"])]
    classes = arrays["classes"]
    for (row, col), k in np.ndenumerate(classes):
        values = [f"{float(arrays[key][row, col]):.4g}" for key in columns]
        com = arrays["com_mrad"][row, col]
        lines.append("\t".join([str(row), str(col), _class_name(k), *values,
                                f"{com[0]:.4g}", f"{com[1]:.4g}", f"{float(arrays['adf'][row, col]):.6g}"]))
    write_text_atomically(path, "\n".join(lines) + "\n")


def _class_name(index) -> str:
    return CLASS_NAMES[int(index)] if index >= 0 else "unknown"
