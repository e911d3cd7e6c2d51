"""What a predictor is, in one place: the registry of predictor kinds.

A predictor has a name (a Snakemake wildcard, a column of the tables, the stem of its prediction
files) and, where it was trained, a model file in models/<name>/. Each kind knows how to recognise
its names, describe them for the tables, name its model file, load it once (with its
out-of-distribution threshold, on a device), report the sampling it was trained at, and whether it
answers per pattern or per unit cell. Nothing outside this module parses a predictor's name; a new
kind is a subclass of `PredictorKind` registered with `@register_kind` (docs/extending.md).

Kinds, in the order of the tables' columns: per-pattern neural models
(`<encoder>-<objective>-<configuration>-<pretrained>[-diverse][-domain_randomisation]-seed<N>`),
PCA+kNN (`pca_knn-<configuration>-seed<N>`), the unit-cell model (`unit_cell-seed<N>`), the CoM
baseline (`com`), column fitting on the known supercell (`column_fit_<image>`) and on the lattice
found in the image, as `polarmap map` does for a real scan (`found_lattice_<image>`).
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from polarmap.classes import UNKNOWN_LABEL, angle_to_class

REGIME_LABELS = {"diverse": "diverse data", "domain_randomisation": "domain rand."}
COLUMN_FIT_IMAGES = ("adf", "idpc")


@dataclass(frozen=True)
class PredictorInfo:
    """What the tables show of a predictor: its family (one column; the seeds of a family are
    pooled), label, encoder (or kind), objective, configuration, pretraining, training regime
    ("paper": the paper's training data and augmentation) and seed (-1: none)."""
    family: str
    label: str
    encoder: str
    objective: str = ""
    configuration: str = ""
    pretrained: str = ""
    regime: str = "paper"
    seed: int = -1


@dataclass(frozen=True)
class LoadedPredictor:
    """A predictor loaded once. Per pattern, `predict(patterns (n, px, px), beam shift (n, 2) or
    None, data set name)` gives (classes (n,), angles in radians or None, out-of-distribution
    scores or None, confidence 0-1 or None); per cell, `predict(virtual images, ScanCells)` gives
    (class, angle) per cell. Class -1: unknown or no answer."""
    name: str
    kind: "PredictorKind"
    predict: Callable
    sampling: dict | None  # mrad per pixel, crop, energy and semi-angle it was trained at
    device: str
    files: tuple[str, ...]  # what it was loaded from (model, out-of-distribution calibration)


class PredictorKind:
    """One kind of predictor. `model_file`: its file in models/<name>/ ("" for none)."""
    key = ""
    title = ""  # in messages
    per_cell = False
    trained = True
    model_file = ""
    measures_displacement = False  # answers a continuous displacement per cell, not a class vote
    # the split column (training 0, held out 1) its out-of-distribution score is calibrated on; "": none
    split_part = ""

    def recognises(self, name: str) -> bool:
        raise NotImplementedError

    def describe(self, name: str) -> PredictorInfo:
        raise NotImplementedError

    def load(self, model: str, ood_path, device: str, batch_size: int, external: bool, compile_model: bool) -> LoadedPredictor:
        raise NotImplementedError

    def ood_features(self, model: str, images: np.ndarray, rows: tuple) -> list[np.ndarray]:
        """The features the out-of-distribution score is fitted on, of the patterns (n, 1, px, px)
        in each array of row indices."""
        raise NotImplementedError


KINDS: dict[str, PredictorKind] = {}


def register_kind(cls):
    KINDS[cls.key] = cls()
    return cls


def _seed(name: str) -> int:
    return int(name.rsplit("-", 1)[-1].removeprefix("seed"))


def neural_name(encoder: str, objective: str, configuration: str, pretrained: str, seed: int,
                training_data: str = "base", augmentation_kind: str = "paper") -> str:
    """'<encoder>-<objective>-<configuration>-<pretrained>[-diverse][-domain_randomisation]-seed<seed>':
    the paper's models keep the paper's four fields."""
    extra = [training_data] * (training_data != "base") + [augmentation_kind] * (augmentation_kind != "paper")
    return "-".join([encoder, objective, configuration, pretrained, *extra, f"seed{seed}"])


def pca_knn_name(configuration: str, seed: int) -> str:
    return f"pca_knn-{configuration}-seed{seed}"


def unit_cell_name(seed: int) -> str:
    return f"unit_cell-seed{seed}"


def column_fit_name(image: str) -> str:
    return f"column_fit_{image}"


def found_lattice_name(image: str) -> str:
    return f"found_lattice_{image}"


COM = "com"


@register_kind
class NeuralKind(PredictorKind):
    """A per-pattern model of `polarmap train` (models.py's encoders and objectives)."""
    key = "neural"
    title = "a per-pattern model"
    model_file = "model.pt"
    split_part = "part"
    _name = re.compile(r"[a-z0-9_]+-[a-z_]+-[a-z_]+-[a-z_]+(-[a-z_]+)*-seed\d+")

    def recognises(self, name):
        return bool(self._name.fullmatch(name)) and not name.startswith(("pca_knn-", "unit_cell-"))

    def describe(self, name):
        from polarmap.models import ENCODER_LABELS, OBJECTIVE_LABELS

        parts = name.split("-")
        encoder, objective, configuration, pretrained = parts[:4]
        regime = parts[4:-1]
        details = [OBJECTIVE_LABELS[objective]] + ["ImageNet"] * (pretrained == "imagenet") + [REGIME_LABELS[r] for r in regime]
        return PredictorInfo("-".join(parts[:-1]), f"{ENCODER_LABELS[encoder]} ({', '.join(details)})", encoder, objective,
                             configuration, pretrained, "+".join(regime) or "paper", _seed(name))

    def load(self, model, ood_path, device, batch_size, external, compile_model):
        import torch

        from polarmap.models import load_model, resolve_device
        from polarmap.augmentation import AugmentationSettings, DomainRandomisationSettings, augmenter
        from polarmap.preprocessing import CONFIGURATIONS
        from polarmap.seeds import derived_seed, name_key
        from polarmap.provenance import settings_from_json

        network, settings = load_model(model)
        mark_unknown = _unknown_marker(ood_path, model)
        input_px = network.input_mean.shape[-1]
        device = resolve_device(device)
        faithful = settings["mode"] == "faithful" and external
        augments = faithful and CONFIGURATIONS[settings["configuration"]][0]
        layout = torch.channels_last if device.type == "cpu" else torch.contiguous_format  # channels-last: ~2x on a CPU
        network = network.to(device, memory_format=layout)
        embed = torch.compile(network.features) if compile_model else network.features

        def predict(patterns, beam_shift, dataset=""):
            if patterns.shape[-2:] != (input_px, input_px):
                raise ValueError(f"{model} takes {input_px}x{input_px} px crops, the data set has {patterns.shape[-2]}x{patterns.shape[-1]}; "
                                 f"preprocess it with --crop-px {input_px}")
            if augments:  # the published test-time augmentation, a random stream of each set's own
                augment = augmenter(settings.get("augmentation_kind", "paper"), settings_from_json(AugmentationSettings, settings["augmentation"]),
                                    settings_from_json(DomainRandomisationSettings, settings.get("domain_randomisation", {})),
                                    derived_seed(settings["seed"], name_key(dataset)))
                patterns = np.stack([augment(p) for p in patterns])
            predictions, angles, features, confidence = [], [], [], []
            with torch.inference_mode():
                for start in range(0, len(patterns), batch_size):
                    batch = torch.from_numpy(np.ascontiguousarray(patterns[start:start + batch_size, None], dtype=np.float32))
                    embedding = embed(batch.to(device).contiguous(memory_format=layout))
                    outputs = network.head(embedding).float()
                    if faithful and settings["objective"] == "regression":
                        predictions.append(network.objective.predict_external_faithfully(outputs).cpu())
                    else:
                        predictions.append(network.predict(outputs).cpu())
                    angles.append(network.angle(outputs).cpu())
                    confidence.append(network.confidence(outputs).cpu())
                    features.append(embedding.float().cpu())
            if not predictions:
                return np.zeros(0, np.int64), np.zeros(0), None if mark_unknown is None else np.zeros(0), np.zeros(0)
            classes, scores = _mark(mark_unknown, torch.cat(predictions).numpy(), torch.cat(features).numpy() if mark_unknown else None)
            return classes, torch.cat(angles).numpy().astype(np.float64), scores, torch.cat(confidence).numpy()

        return LoadedPredictor(predictor_name(model), self, predict, settings["sampling"], str(device), _files(model, ood_path))

    def ood_features(self, model, images, rows, batch_size: int = 512):
        import torch

        from polarmap.models import load_model

        network, _ = load_model(model)
        with torch.inference_mode():
            return [np.concatenate([network.features(torch.from_numpy(images[part[start:start + batch_size]])).numpy()
                                    for start in range(0, len(part), batch_size)] or [np.zeros((0, 512), np.float32)]) for part in rows]


@register_kind
class PcaKnnKind(PredictorKind):
    """PCA + kNN on the flattened crops (`polarmap train-pca-knn`): no angle."""
    key = "pca_knn"
    title = "PCA+kNN"
    model_file = "model.npz"
    split_part = "pca_part"

    def recognises(self, name):
        return bool(re.fullmatch(r"pca_knn-[a-z_]+-seed\d+", name))

    def describe(self, name):
        return PredictorInfo(name.rsplit("-", 1)[0], "PCA", "pca_knn", configuration=name.split("-")[1], seed=_seed(name))

    def load(self, model, ood_path, device, batch_size, external, compile_model):
        from polarmap.models import PcaKnn

        pca_knn = PcaKnn.load(model)
        mark_unknown = _unknown_marker(ood_path, model)
        features = pca_knn.arrays["scaler_mean"].size

        def predict(patterns, beam_shift, dataset=""):
            if patterns[0].size != features:
                side = round(features**0.5)
                raise ValueError(f"{model} takes {side}x{side} px crops, the data set has {patterns.shape[-2]}x{patterns.shape[-1]}; "
                                 f"preprocess it with --crop-px {side}")
            flat = patterns.reshape(len(patterns), -1)
            votes = pca_knn.votes(flat)
            classes, scores = _mark(mark_unknown, votes.argmax(axis=1), pca_knn.embed(flat) if mark_unknown else None)
            return classes, None, scores, votes.max(axis=1) / max(votes.sum(axis=1).max(initial=1), 1)

        sampling = json.loads(str(pca_knn.arrays["meta"])).get("sampling") if "meta" in pca_knn.arrays else None
        return LoadedPredictor(predictor_name(model), self, predict, sampling, "cpu", _files(model, ood_path))

    def ood_features(self, model, images, rows):
        from polarmap.models import PcaKnn

        features = PcaKnn.load(model).embed(images.reshape(len(images), -1))
        return [features[part] for part in rows]


@register_kind
class UnitCellKind(PredictorKind):
    """The position-aware model of a unit cell's virtual ADF and CoM field (`polarmap train-unit-cell`)."""
    key = "unit_cell"
    title = "the unit-cell model"
    per_cell = True
    model_file = "model.pt"

    def recognises(self, name):
        return bool(re.fullmatch(r"unit_cell-seed\d+", name))

    def describe(self, name):
        return PredictorInfo("unit_cell", "Unit cell (ADF+CoM)", "unit_cell", seed=_seed(name))

    def load(self, model, ood_path, device, batch_size, external, compile_model):
        from polarmap.unitcell import cell_corners_px, cell_windows, load_unit_cell_model, predict_windows

        network = load_unit_cell_model(model)

        def predict(images, cells):
            return predict_windows(network, cell_windows(images["adf"], images["com_mrad"], cells.cell_px, cell_corners_px(cells)))

        return LoadedPredictor(predictor_name(model), self, predict, None, "cpu", _files(model, ""))


def com_baseline(beam_shift: np.ndarray) -> np.ndarray:
    """No learning: the direction of the beam shift (row, col; +row = "up") binned into classes."""
    return angle_to_class(np.arctan2(beam_shift[..., 0], beam_shift[..., 1]))


@register_kind
class ComKind(PredictorKind):
    """The CoM baseline: the beam shift's direction, no learning."""
    key = "com"
    title = "the CoM baseline"
    trained = False

    def recognises(self, name):
        return name == COM

    def describe(self, name):
        return PredictorInfo("com", "CoM", "com")

    def load(self, model, ood_path, device, batch_size, external, compile_model):
        def predict(patterns, beam_shift, dataset=""):
            if beam_shift is None:
                raise ValueError("the CoM baseline needs a preprocessed data set (/beam_shift)")
            return com_baseline(beam_shift), np.arctan2(beam_shift[..., 0], beam_shift[..., 1]), None, None

        return LoadedPredictor(COM, self, predict, None, "cpu", ())


def column_fit_cells(image: np.ndarray, cells) -> tuple[np.ndarray, np.ndarray]:
    """Column fitting as a per-cell predictor: the class and angle of the Nb displacement of every
    cell of a simulated set's virtual image (-1 and NaN where its columns could not be fitted)."""
    from polarmap.columns import fit_cells

    fit = fit_cells(image, cells.cell_px, cells.step_angstrom, periodic=True)
    cell_class = np.full(cells.n_cells, -1, np.int8)
    cell_angle = np.full(cells.n_cells, np.nan)
    fitted = cells.index(np.asarray(cells.origin_angstrom) + fit.nb_px * cells.step_angstrom)
    cell_class[fitted] = fit.classes
    cell_angle[fitted] = np.arctan2(fit.displacement_angstrom[:, 0], fit.displacement_angstrom[:, 1])
    return cell_class, cell_angle


@register_kind
class ColumnFitKind(PredictorKind):
    """Column fitting on a virtual image (polarmap.columns) of the known supercell, no learning."""
    key = "column_fit"
    title = "column fitting"
    per_cell = True
    trained = False
    measures_displacement = True
    prefix, label = "column_fit_", "Columns ({})"
    cells_of = staticmethod(column_fit_cells)  # (image, ScanCells) -> class and angle per cell

    def recognises(self, name):
        return name.startswith(self.prefix) and "/" not in name and not Path(name).suffix

    def describe(self, name):
        image = name.removeprefix(self.prefix)
        return PredictorInfo(name, self.label.format(image.upper() if image == "adf" else "iDPC"), self.key)

    def load(self, model, ood_path, device, batch_size, external, compile_model):
        image = model.removeprefix(self.prefix)
        if image not in COLUMN_FIT_IMAGES:
            raise ValueError(f"column fitting works on {' or '.join(COLUMN_FIT_IMAGES)}, not {image!r}")
        return LoadedPredictor(model, self, lambda images, cells: self.cells_of(images[image], cells), None, "cpu", ())


def found_lattice_cells(image: np.ndarray, cells) -> tuple[np.ndarray, np.ndarray]:
    """Column fitting on the lattice found in the image, as `polarmap map` does for a real scan
    (polarmap.lattice: no supercell, no scan origin, no periodic wrap): the class and angle of every
    cell of the known supercell whose Nb column and four A-site neighbours lie in the scan; -1 and
    NaN where not (at the scan's edge) and where the 2-sigma rule leaves a cell unknown. Where no
    lattice is found (a scan too small or coarse for one), the ValueError says why."""
    from polarmap.lattice import cell_vectors, find_lattice

    found = cell_vectors(image, find_lattice(image), cells.step_angstrom)
    cell_class = np.full(cells.n_cells, -1, np.int8)
    cell_angle = np.full(cells.n_cells, np.nan)
    owner = cells.index(np.asarray(cells.origin_angstrom) + found.nb_px * cells.step_angstrom)
    cell_class[owner] = found.shown_classes
    cell_angle[owner] = np.radians(found.angle_deg)
    return cell_class, cell_angle


@register_kind
class FoundLatticeKind(ColumnFitKind):
    """Column fitting on the lattice found in a virtual image (`found_lattice_cells`): the cost
    of not knowing the lattice, beside column fitting on the known one."""
    key = "found_lattice"
    title = "column fitting on the lattice found"
    prefix, label = "found_lattice_", "Columns ({}, lattice found)"
    cells_of = staticmethod(found_lattice_cells)


def predictor_name(model) -> str:
    """A predictor's name from its name or its model file (models/<name>/model.pt)."""
    text = str(model)
    return Path(text).parent.name if Path(text).suffix in (".pt", ".npz") else text


def kind_of(model, per_cell: bool | None = None) -> PredictorKind:
    """The kind of a predictor named, or of a model file: by its folder's name (models/<name>/),
    else by its suffix (.pt a per-pattern model, or a unit-cell model where `per_cell`)."""
    text = str(model)
    candidates = [kind for kind in KINDS.values() if per_cell is None or kind.per_cell == per_cell]
    suffix = Path(text).suffix
    for kind in candidates:
        if kind.recognises(text) or (suffix and suffix == Path(kind.model_file).suffix and kind.recognises(Path(text).parent.name)):
            return kind
    for kind in candidates:
        if suffix and suffix == Path(kind.model_file).suffix:
            return kind
    named = ", ".join(name for name in (COM, *(f(image) for f in (column_fit_name, found_lattice_name) for image in COLUMN_FIT_IMAGES))
                      if any(k.recognises(name) for k in candidates))
    raise ValueError(f"{text}: not a predictor; give a model file ({', '.join(sorted({k.model_file for k in candidates if k.model_file}))})"
                     + (f" or one of {named}" if named else ""))


def describe(name: str) -> PredictorInfo:
    """What the tables show of a predictor (`PredictorInfo`), from its name."""
    return kind_of(name).describe(name)


def model_file(name: str) -> str:
    """The file a predictor is stored in under models/<name>/ ("" for an untrained one)."""
    return kind_of(name).model_file


def is_per_cell(name: str) -> bool:
    return kind_of(name).per_cell


def is_trained(name: str) -> bool:
    return kind_of(name).trained


def measures_displacement(name: str) -> bool:
    return kind_of(name).measures_displacement


def model_inputs(model) -> list[str]:
    """The files a predictor reads (none for the untrained ones)."""
    return [str(model)] if kind_of(model).model_file else []


def encoder_kind(encoder: str) -> PredictorKind:
    """The kind of a `PredictorInfo.encoder`: a registered encoder's is a per-pattern neural model."""
    return KINDS.get(encoder, KINDS[NeuralKind.key])


def table_rank(encoder: str) -> int:
    """The order of the tables' columns: the registered encoders, then the other kinds."""
    from polarmap.models import ENCODERS

    order = [*ENCODERS, *(key for key in KINDS if key != NeuralKind.key)]
    return order.index(encoder)


def load(model, ood_path="", device: str = "auto", batch_size: int = 512, external: bool = True, compile_model: bool = False,
         per_cell: bool | None = None) -> LoadedPredictor:
    """A predictor loaded once, on `device` ("auto": CUDA when present). With `ood_path`
    (`polarmap calibrate-ood`), a pattern whose score passes the calibrated threshold is unknown
    (class -1). `external`: applied to data sets outside its training (the faithful mode's
    test-time augmentation). `compile_model`: torch.compile first (tens of seconds once; Conv on
    2 cores 760 -> 1150 patterns/s, worth it for full 128x128 sets)."""
    kind = kind_of(model, per_cell)
    if ood_path and not kind.split_part:
        raise ValueError(f"{kind.title} has no training distribution: no out-of-distribution score")
    return kind.load(str(model), ood_path, device, batch_size, external, compile_model)


def _files(model, ood_path) -> tuple[str, ...]:
    return (str(model),) + ((str(ood_path),) if ood_path else ())


def _unknown_marker(ood_path, model_path):
    """A function (classes, features) -> (classes with -1 where out of distribution, scores), or
    None without an out-of-distribution calibration."""
    if not ood_path:
        return None
    from polarmap.ood import ood_scores

    ood = _load_ood(ood_path, model_path)

    def mark(classes, features):
        scores = ood_scores(features, ood)
        return np.where(scores > float(ood["threshold"]), UNKNOWN_LABEL, classes), scores

    return mark


def _mark(mark_unknown, classes, features):
    return (classes, None) if mark_unknown is None else mark_unknown(classes, features)


def _load_ood(path, model_path) -> dict:
    """An ood.npz calibrated for this very model (its file's hash), with a finite threshold."""
    from polarmap.atomic import read_npz
    from polarmap.provenance import file_sha256

    arrays = read_npz(path, "out-of-distribution calibration", "rerun polarmap calibrate-ood")
    if not {"class_means", "precision", "threshold"} <= arrays.keys():
        raise ValueError(f"{path}: not an out-of-distribution calibration (no class_means, precision, threshold); rerun polarmap calibrate-ood")
    if not np.isfinite(arrays["threshold"]).all() or not np.isfinite(arrays["precision"]).all():
        raise ValueError(f"{path}: its threshold or covariance is not finite: no pattern could be judged; rerun polarmap calibrate-ood")
    if "model_sha256" not in arrays:
        raise ValueError(f"{path}: does not name the model it was calibrated for (made before ood files did); rerun polarmap calibrate-ood")
    if str(arrays["model_sha256"]) != file_sha256(model_path):
        raise ValueError(f"{path}: calibrated for another model than {model_path}; use that model's ood.npz, or rerun polarmap calibrate-ood")
    return arrays
