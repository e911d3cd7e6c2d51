"""Applying a predictor (polarmap.predictors) to preprocessed data sets or their virtual images.

`faithful` reproduces the published evaluation defects for external data sets: training
augmentations applied at test time, and regression decoded with argmax over (cos, sin), which
can only answer RM or RU (study-notes, defects 1 and 3).
"""

import json

import numpy as np

from polarmap import io, predictors
from polarmap.atomic import save_npz_atomically, write_text_atomically
from polarmap.cells import ScanCells, accuracy_by_position, cell_majority, scan_cells
from polarmap.classes import CLASS_NAMES, class_index, class_votes, majority_class
from polarmap.columns import MIN_CELL_PX
from polarmap.dataset_kind import supercell_repeats
from polarmap.imaging import read_virtual_images


def predict_patterns(model_path, patterns: np.ndarray, batch_size: int = 512, external: bool = True, compile_model: bool = False,
                     device: str = "auto") -> np.ndarray:
    """Class predictions (n,) for preprocessed patterns (n, px, px) with a model.pt or model.npz."""
    return predictors.load(model_path, "", device, batch_size, external, compile_model).predict(patterns, None)[0]


def angular_error_deg(angles: np.ndarray, accepted: list[int]) -> np.ndarray:
    """Circular distance (degrees) from each predicted angle to the nearest accepted class angle."""
    targets = np.deg2rad(np.array(accepted) * 360.0 / len(CLASS_NAMES))
    difference = np.angle(np.exp(1j * (np.asarray(angles)[:, None] - targets[None, :])))
    return np.degrees(np.abs(difference).min(axis=1))


def dataset_label(attrs: dict) -> str:
    """The paper's row label: name-classes-supercell(a x b)-thickness for simulated sets
    (1S-LU-6x6-20nm), name-classes for detector data."""
    label = "-".join([attrs["name"]] + ["/".join(attrs["classes"])] * bool(attrs["classes"]))
    cells = supercell_repeats(attrs)
    if cells is not None:
        thickness = float(attrs["thickness_nm"])
        label += f"-{cells[0]}x{cells[1]}-{thickness:.{0 if thickness >= 10 else 1}f}nm"  # 50 cells: 19.9 nm, the paper's "20nm"
    return label


# the heat map of accuracy against the probe's position in its cell: bins per cell edge
POSITION_BINS = 8


def cell_metrics(grid: np.ndarray, accepted: list[int], cells: ScanCells) -> dict:
    """Per-unit-cell accuracy (the majority vote of a cell's patterns in an accepted class; a cell
    without an answer counts as wrong) and per-pattern accuracy against the position in the cell.
    A prediction of -1 is no answer."""
    positions = cells.positions(grid.shape)
    ids = cells.index(positions)
    answered = grid >= 0
    majority = cell_majority(grid[answered], ids[answered], cells.n_cells, len(CLASS_NAMES))
    correct = np.isin(grid, accepted)
    heat = accuracy_by_position(correct, cells.fraction(positions), POSITION_BINS)
    return {"cell_accuracy": float(np.isin(majority, accepted).mean()), "n_cells": cells.n_cells,
            "position_accuracy": [[None if np.isnan(v) else round(float(v), 6) for v in row] for row in heat]}


def grid_metrics(attrs: dict, grid: np.ndarray, angles: np.ndarray | None, model: str) -> dict:
    """Metrics of one prediction grid (scan rows, cols; -1: no answer) on one data set: accuracy
    against the set's accepted classes, angular error, class counts and majority, and per unit cell
    where the set's lattice is known."""
    accepted = [class_index(name) for name in attrs["classes"]]
    answered = grid >= 0
    counts = class_votes(grid)
    majority = int(majority_class(counts))
    errors = angular_error_deg(angles.ravel(), accepted) if angles is not None and accepted else np.full(1, np.nan)
    result = {
        "dataset": attrs["name"], "label": dataset_label(attrs), "model": model,
        "accuracy": float(np.isin(grid, accepted).mean()) if accepted else float("nan"),
        # "unknown" (out of the model's training distribution) or no answer: counted apart
        "unknown_fraction": float(1 - answered.mean()),
        "accuracy_answered": float(np.isin(grid[answered], accepted).mean()) if accepted and answered.any() else float("nan"),
        "angular_error_deg": float(np.nanmean(errors)) if np.isfinite(errors).any() else float("nan"),
        "majority_class": CLASS_NAMES[majority] if majority >= 0 else "",
        "thickness_nm": float(attrs.get("thickness_nm", "nan")),
        "accepted": list(attrs["classes"]), "counts": dict(zip(CLASS_NAMES, counts.tolist())),
    }
    cells = scan_cells(attrs, grid.shape)
    if cells is not None and accepted:
        result.update(cell_metrics(grid, accepted, cells))
    return result


def predict_grids(predictor: predictors.LoadedPredictor, dataset_path) -> tuple[dict, dict[str, np.ndarray]]:
    """Metrics and the grids of one preprocessed data set: classes ("", -1 unknown), and where
    the model gives them angles (".angle"), out-of-distribution scores (".ood") and confidence
    (".confidence", 0 to 1)."""
    with io.open_dataset(dataset_path) as f:
        attrs = io.read_attrs(f)
        patterns = f["patterns"][()]
        beam_shift = f["beam_shift"][()].reshape(-1, 2) if "beam_shift" in f else None
    scan_shape = patterns.shape[:2]
    bad = ~np.isfinite(patterns).all(axis=(-2, -1))
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{dataset_path}: {int(bad.sum())} patterns hold NaN or infinite values (first at scan {first}); "
                         "a preprocessed set has none: regenerate it with `polarmap preprocess`")
    try:
        predictions, angles, scores, confidence = predictor.predict(patterns.reshape(-1, *patterns.shape[2:]), beam_shift, attrs["name"])
    except ValueError as err:
        raise ValueError(f"{dataset_path}: {err}") from None
    grids = {"": predictions.reshape(scan_shape).astype(np.int8)}
    if angles is not None:
        grids[".angle"] = angles.reshape(scan_shape).astype(np.float32)
    if scores is not None:
        grids[".ood"] = scores.reshape(scan_shape).astype(np.float32)
    if confidence is not None:
        grids[".confidence"] = confidence.reshape(scan_shape).astype(np.float32)
    angle_grid = angles.reshape(scan_shape) if angles is not None else None
    return grid_metrics(attrs, grids[""], angle_grid, predictor.files[0] if predictor.files else predictor.name), grids


def predict_many(predictor: predictors.LoadedPredictor, dataset_paths, out, metrics_out) -> list[dict]:
    """One per-pattern predictor on several preprocessed sets: prediction grids in one .npz (keyed by data set
    name; angles, out-of-distribution scores and confidence, where there are any, as <name>.angle,
    <name>.ood and <name>.confidence), metrics in one JSON."""
    grids, results = {}, []
    for path in dataset_paths:
        result, mine = predict_grids(predictor, path)
        grids.update({result["dataset"] + suffix: grid for suffix, grid in mine.items()})
        results.append(result)
    save_npz_atomically(out, grids)
    write_text_atomically(metrics_out, json.dumps(results, indent=2) + "\n")
    return results


def predict_cells_many(predictor_name: str, virtual_paths, out, metrics_out) -> list[dict]:
    """A per-cell predictor (column fitting, a unit-cell model) on the stored virtual images of
    several data sets (`polarmap virtual-images`), written as `predict_many` writes a per-pattern
    model's: every pattern gets its cell's answer. A set without known unit cells (detector data)
    or sampled too coarsely to separate the columns is not applicable (accuracy NaN, the reason in
    `cell_predictor`); a cell without an answer counts as wrong."""
    predictor = predictors.load(predictor_name, per_cell=True)
    grids, results = {}, []
    for path in virtual_paths:
        images = read_virtual_images(path)
        attrs = images["meta"]["dataset_attrs"]
        scan_shape = images["adf"].shape
        cells = scan_cells(attrs, scan_shape)
        grid, angles = np.full(scan_shape, -1, np.int8), np.full(scan_shape, np.nan)
        if cells is None or cells.cell_px < MIN_CELL_PX:
            note = "no known unit cells" if cells is None else f"{cells.cell_px:.1f} scan px per unit cell, {MIN_CELL_PX} needed"
            results.append({**grid_metrics({**attrs, "classes": []}, grid, None, str(predictor_name)), "accepted": list(attrs["classes"]),
                            "unknown_fraction": float("nan"), "cells_answered": 0, "cell_predictor": f"not applicable: {note}"})
        else:
            try:
                cell_class, cell_angle = predictor.predict(images, cells)
                note = "answered"
            except ValueError as err:  # e.g. no lattice of columns found: no answer
                cell_class, cell_angle, note = np.full(cells.n_cells, -1), np.full(cells.n_cells, np.nan), f"no answer: {err}"
            ids = cells.index(cells.positions(scan_shape))
            grid, angles = np.asarray(cell_class, np.int8)[ids], np.asarray(cell_angle, np.float64)[ids]
            results.append({**grid_metrics(attrs, grid, angles, str(predictor_name)), "cells_answered": int((np.asarray(cell_class) >= 0).sum()),
                            "cell_predictor": note})
        grids[attrs["name"]] = grid
        grids[f"{attrs['name']}.angle"] = angles.astype(np.float32)
    save_npz_atomically(out, grids)
    write_text_atomically(metrics_out, json.dumps(results, indent=2) + "\n")
    return results


def predict_dataset(model_path, dataset_path, out, compile_model: bool = False, ood_path="") -> dict:
    """Per-pattern predictions on the scan grid (-1: unknown), accuracy against the set's accepted
    classes and the majority class; written to `out` (.npz, arrays only)."""
    result, grids = predict_grids(predictors.load(model_path, ood_path, compile_model=compile_model), dataset_path)
    names = {"": "predictions", ".angle": "angles", ".ood": "ood_scores", ".confidence": "confidence"}
    save_npz_atomically(out, {names[suffix]: grid for suffix, grid in grids.items()} | {"meta": np.array(json.dumps(result))})
    return result
