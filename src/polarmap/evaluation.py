"""Applying a trained model (or PCA+kNN, or the CoM baseline) to any preprocessed data set.

`faithful` reproduces the published evaluation defects for external data sets: training
augmentations applied at test time, and regression decoded with argmax over (cos, sin), which
can only answer RM or RU (study-notes, defects 1 and 3).
"""

import json
import re
from pathlib import Path

import numpy as np
import torch

from polarmap import io
from polarmap.classes import CLASS_NAMES, angle_to_class, class_index
from polarmap.config import settings_from_json
from polarmap.preprocessing import CONFIGURATIONS, AugmentationSettings, augmentation_pipeline


def com_baseline(beam_shift: np.ndarray) -> np.ndarray:
    """No learning: the direction of the beam shift (row, col; +row = "up") binned into classes."""
    return angle_to_class(np.arctan2(beam_shift[..., 0], beam_shift[..., 1]))


def load_predictor(model_path, batch_size: int = 512, external: bool = True, compile_model: bool = False):
    """A function (patterns (n, px, px), beam_shift (n, 2) or None) -> classes (n,) for a
    model.pt, a PCA+kNN model.npz, or "com". The model is loaded (and compiled) once.
    `compile_model`: torch.compile first (tens of seconds once; Conv on 2 cores 760 -> 1150
    patterns/s, worth it for full 128x128 sets)."""
    if str(model_path) == "com":
        def predict_com(patterns, beam_shift):
            if beam_shift is None:
                raise ValueError("the CoM baseline needs a preprocessed data set (/beam_shift)")
            return com_baseline(beam_shift)
        return predict_com
    model_path = Path(model_path)
    if model_path.suffix == ".npz":
        from polarmap.models import PcaKnn

        pca_knn = PcaKnn.load(model_path)
        return lambda patterns, beam_shift: pca_knn.predict(patterns.reshape(len(patterns), -1))
    from polarmap.training import load_model

    model, settings = load_model(model_path)
    faithful = settings["mode"] == "faithful" and external
    pipeline = None
    if faithful and CONFIGURATIONS[settings["configuration"]][0]:
        pipeline = augmentation_pipeline(settings_from_json(AugmentationSettings, settings["augmentation"]), settings["seed"])
    model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if compile_model else model

    def predict_nn(patterns, beam_shift):
        if pipeline is not None:
            patterns = np.stack([pipeline(image=p)["image"] for p in patterns])
        predictions = []
        with torch.inference_mode():
            for start in range(0, len(patterns), batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(patterns[start:start + batch_size, None], dtype=np.float32))
                outputs = forward(batch.contiguous(memory_format=torch.channels_last))
                if faithful and settings["objective"] == "regression":
                    predictions.append(model.objective.predict_external_faithfully(outputs))
                else:
                    predictions.append(model.predict(outputs))
        return torch.cat(predictions).numpy() if predictions else np.zeros(0, np.int64)

    return predict_nn


def predict_patterns(model_path, patterns: np.ndarray, batch_size: int = 512, external: bool = True, compile_model: bool = False) -> np.ndarray:
    """Class predictions (n,) for preprocessed patterns (n, px, px) with a model.pt or model.npz."""
    return load_predictor(model_path, batch_size, external, compile_model)(patterns, None)


def _predict_one(predictor, model_path, dataset_path) -> tuple[dict, np.ndarray]:
    """Metrics and the prediction grid of one preprocessed data set."""
    with io.open_dataset(dataset_path) as f:
        attrs = io.read_attrs(f)
        patterns = f["patterns"][()]
        beam_shift = f["beam_shift"][()].reshape(-1, 2) if "beam_shift" in f else None
    scan_shape = patterns.shape[:2]
    try:
        predictions = predictor(patterns.reshape(-1, *patterns.shape[2:]), beam_shift)
    except ValueError as err:
        raise ValueError(f"{dataset_path}: {err}") from None
    accepted = [class_index(name) for name in attrs["classes"]]
    accuracy = float(np.isin(predictions, accepted).mean()) if accepted else float("nan")
    counts = np.bincount(predictions, minlength=len(CLASS_NAMES))
    result = {
        "dataset": attrs["name"], "model": str(model_path), "accuracy": accuracy,
        "majority_class": CLASS_NAMES[int(counts.argmax())],  # ties: the lowest class index
        "accepted": attrs["classes"], "counts": dict(zip(CLASS_NAMES, counts.tolist())),
    }
    return result, predictions.reshape(scan_shape).astype(np.int8)


def predict_many(model_path, dataset_paths, out, metrics_out, compile_model: bool = False) -> list[dict]:
    """One model on several preprocessed sets: prediction grids in one .npz (keyed by data set
    name), metrics in one JSON."""
    predictor = load_predictor(model_path, compile_model=compile_model)
    grids, results = {}, []
    for path in dataset_paths:
        result, grid = _predict_one(predictor, model_path, path)
        grids[result["dataset"]] = grid
        results.append(result)
    io.save_npz_atomically(out, grids)
    io.write_text_atomically(metrics_out, json.dumps(results, indent=2) + "\n")
    return results


def accuracy_table(metrics_files, out) -> None:
    """Accuracy per data set (rows) and model family (columns: encoder-objective-configuration-
    pretraining, seeds pooled): mean +- population std over seeds, with the majority class over
    all seeds' predictions marked right (+) or wrong (-)."""
    cells: dict[tuple[str, str], list[dict]] = {}
    for path in metrics_files:
        family = re.sub(r"-seed\d+$", "", Path(path).stem)
        for result in json.loads(Path(path).read_text()):
            cells.setdefault((result["dataset"], family), []).append(result)
    datasets = sorted({d for d, _ in cells})
    families = sorted({f for _, f in cells})
    lines = ["dataset\t" + "\t".join(families)]
    for dataset in datasets:
        row = [dataset]
        for family in families:
            runs = cells.get((dataset, family), [])
            if not runs:
                row.append("")
                continue
            accuracy = np.array([r["accuracy"] for r in runs])
            pooled = np.sum([[r["counts"][name] for name in CLASS_NAMES] for r in runs], axis=0)
            majority = CLASS_NAMES[int(np.argmax(pooled))]  # ties: the lowest class index
            mark = "+" if majority in runs[0]["accepted"] else "-"
            row.append(f"{accuracy.mean():.3f} ± {accuracy.std():.3f} ({majority}{mark})")
        lines.append("\t".join(row))
    io.write_text_atomically(out, "\n".join(lines) + "\n")


def predict_dataset(model_path, dataset_path, out, compile_model: bool = False) -> dict:
    """Per-pattern predictions on the scan grid, accuracy against the set's accepted classes and
    the majority class; written to `out` (.npz, arrays only)."""
    result, grid = _predict_one(load_predictor(model_path, compile_model=compile_model), model_path, dataset_path)
    io.save_npz_atomically(out, {"predictions": grid, "meta": np.array(json.dumps(result))})
    return result
