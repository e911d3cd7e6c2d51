"""`polarmap <stage>`: every stage of the workflow, runnable by hand.

Stages that belong to a data set of a study take `--config FILE --dataset NAME`; the
Snakemake rules pass the same settings inline with `--settings JSON`, so that Snakemake
reruns a job exactly when its own settings change.
"""

import argparse
import contextlib
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from polarmap import config as study_config
from polarmap import predictors
from polarmap.atomic import same_file
from polarmap.dataset_kind import DETECTOR_SUPERCELL
from polarmap.io import CALIBRATION_ARGUMENTS, WriteFailed
from polarmap.ood import KNOWN_QUANTILE
from polarmap.provenance import settings_from_json, write_record
from polarmap.quantities import check_quantity
from polarmap.readers import READERS


@dataclass(frozen=True)
class Command:
    """One `polarmap` command: its function, its help, the arguments it declares, and the files it
    reads and writes: names of arguments holding paths, or functions of the arguments for the files
    that follow from them (OUT.pdf, a record beside OUT, the files of an output folder). `main`
    checks the files before any work and removes the outputs after a failure. A study command
    also takes --config and --dataset (or the rules' --settings) for one data set of a study."""
    run: Callable
    help: str
    arguments: Callable
    reads: tuple = ()
    writes: tuple = ()
    study: bool = False


COMMANDS: dict[str, Command] = {}


def command(name: str, help_text: str, arguments, reads=(), writes=(), study: bool = False):
    """Registers the decorated function as `polarmap NAME`, with its arguments next to it."""
    def register(run):
        COMMANDS[name] = Command(run, help_text, arguments, tuple(reads), tuple(writes), study)
        return run

    return register


def _paths(args, *dests) -> list[tuple[str, Path]]:
    """(argument, path) of every path the arguments `dests` name (single paths or lists)."""
    named = []
    for dest in dests:
        value = getattr(args, dest, None)
        for item in value if isinstance(value, list) else [value]:
            if item:
                named.append((dest, Path(item)))
    return named


def _with_suffixes(dest, *suffixes):
    """Outputs given without suffix: OUT.png and OUT.pdf."""
    return lambda args: [(dest, Path(f"{p}{s}")) for _, p in _paths(args, dest) for s in suffixes]


def _in_folder(dest, *names):
    """The files a command writes into the output folder `dest`; a file there is refused."""
    def outputs(args):
        folders = [folder for _, folder in _paths(args, dest)]
        for folder in folders:
            if folder.is_file():
                raise ValueError(f"{folder}: is a file; give {_flag(dest)} a folder (the outputs are written into it)")
        return [(dest, folder / name) for folder in folders for name in names]
    return outputs


def _beside(dest, suffix):
    """A second output beside OUT: OUT with another suffix (a structure's CIF)."""
    return lambda args: [(dest, p.with_suffix(suffix)) for _, p in _paths(args, dest)]


def _record_of(dest):
    return lambda args: [(dest, _record_path(p)) for _, p in _paths(args, dest)]


def _map_outputs(args):
    from polarmap.mapping import MAP_OUTPUTS

    return _in_folder("out", *MAP_OUTPUTS)(args)


def _table_outputs(args):
    from polarmap.tables import CONFIGURATION_TITLES

    stems = [f"table_{name}" for name in [*CONFIGURATION_TITLES, "regimes", "cells"]]
    return _in_folder("out_dir", "results.tsv", "summary.tsv", "tables.record.json",
                      *[stem + suffix for stem in stems for suffix in (".md", ".csv", ".tex")])(args)


def _job_settings(args) -> dict:
    if args.settings:
        return json.loads(args.settings)
    if not (args.config and args.dataset):
        raise ValueError("give --config FILE and --dataset NAME (or --settings JSON)")
    return study_config.dataset_job_settings(study_config.load_config(args.config), args.dataset)


def _structure(job: dict):
    from polarmap.structures import apply_mistilt, build_supercell

    dataset = job["dataset"]
    atoms = build_supercell(tuple(dataset["supercell"]), dataset["polarization"], study_config.structure_settings(job))
    return apply_mistilt(atoms, dataset["mistilt_mrad"]) if any(dataset["mistilt_mrad"]) else atoms


def _arguments_structure(p) -> None:
    p.add_argument("--out", required=True, help="output .xyz path (a .cif is written beside it)")


@command("structure", "Build a KNN supercell; writes extended XYZ and CIF.", _arguments_structure,
         reads=("config",), writes=("out", _beside("out", ".cif")), study=True)
def cmd_structure(args) -> None:
    from polarmap.structures import write_structure

    job = _job_settings(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_structure(_structure(job), args.out)


def _arguments_simulate(p) -> None:
    p.add_argument("--structure", help="extended-XYZ structure (default: build it from the config)")
    p.add_argument("--out", required=True, help="output .h5 path")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


@command("simulate", "Simulate a 4D-STEM data set with abTEM into HDF5.", _arguments_simulate,
         reads=("config", "structure"), writes=("out",), study=True)
def cmd_simulate(args) -> None:
    from polarmap.simulation import simulate
    from polarmap.structures import read_structure

    job = _job_settings(args)
    atoms = read_structure(args.structure) if args.structure else _structure(job)
    simulate(
        atoms, args.out, job["name"], study_config.simulation_settings(job),
        classes=tuple(job["dataset"]["classes"]), provenance_settings=job, progress=not args.quiet,
    )


def _arguments_pacbed_library(p) -> None:
    p.add_argument("--out", required=True, help="output .npz (patterns, thicknesses, sampling)")
    p.add_argument("--config", help="a study config: its probe, detector sampling and crystal (default: the simulation defaults)")
    p.add_argument("--energy-kev", type=float, help="beam energy (default: the config's)")
    p.add_argument("--semiangle-mrad", type=float, help="probe semi-angle (default: the config's)")
    p.add_argument("--max-thickness-nm", type=float, default=80.0)
    p.add_argument("--step-nm", type=float, default=1.0, help="thickness step (rounded to whole slices)")
    p.add_argument("--frozen-phonons", type=int, default=4, help="frozen-phonon configurations averaged")
    p.add_argument("--settings", help=argparse.SUPPRESS)


@command("pacbed-library", "Simulate position-averaged patterns (PACBED) over a thickness series with abTEM, for "
         "`polarmap map --pacbed`: the specimen's thickness from its own PACBED.", _arguments_pacbed_library,
         reads=("config",), writes=("out",))
def cmd_pacbed_library(args) -> None:
    from polarmap.atomic import save_npz_atomically
    from polarmap.simulation import PacbedLibrarySettings, SimulationSettings, pacbed_library
    from polarmap.structures import StructureSettings

    if args.settings:  # the workflow's (config.pacbed_library_job_settings)
        job = json.loads(args.settings)
        simulation, structure = settings_from_json(SimulationSettings, job["simulation"]), study_config.structure_settings(job)
        library = settings_from_json(PacbedLibrarySettings, job["library"])
    else:
        config = study_config.load_config(args.config) if args.config else None
        simulation = study_config.simulation_settings(config) if config else SimulationSettings()
        structure = study_config.structure_settings(config) if config else StructureSettings()
        probe = {key: value for key, value in (("energy_kev", args.energy_kev), ("semiangle_mrad", args.semiangle_mrad)) if value is not None}
        for key, value in probe.items():
            check_quantity(key, value, f"--{key.replace('_', '-')}", "give it in the units named")
        simulation = replace(simulation, **probe)
        library = PacbedLibrarySettings(max_thickness_nm=args.max_thickness_nm, step_nm=args.step_nm, frozen_phonon_configs=args.frozen_phonons)
    save_npz_atomically(args.out, pacbed_library(simulation, library, structure))


def _arguments_qstem(p) -> None:
    p.add_argument("--structure", help="extended-XYZ structure (default: build it from the config)")
    p.add_argument("--out-dir", required=True, help="output folder")


@command("qstem", "Write QSTEM .cfg and .qsc inputs for a data set.", _arguments_qstem,
         reads=("config", "structure"), writes=(), study=True)
def cmd_qstem(args) -> None:
    from polarmap.qstem import write_cfg, write_qsc
    from polarmap.structures import read_structure

    job = _job_settings(args)
    atoms = read_structure(args.structure) if args.structure else _structure(job)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = job["name"]
    write_cfg(atoms, out_dir / f"{name}.cfg")
    write_qsc(atoms, study_config.simulation_settings(job), f"{name}.cfg", f"{name}_patterns", out_dir / f"{name}.qsc")


def _arguments_experiment_like(p) -> None:
    p.add_argument("--settings", required=True, help=argparse.SUPPRESS)
    p.add_argument("--source", required=True, help="clean simulated .h5")
    p.add_argument("--out", required=True, help="output .h5 path")


@command("experiment-like", "Detector and scan effects on a clean simulated set.", _arguments_experiment_like,
         reads=("source",), writes=("out",))
def cmd_experiment_like(args) -> None:
    from polarmap.experiment import ExperimentSettings, make_experiment_like

    job = json.loads(args.settings)
    detector = settings_from_json(ExperimentSettings, job["detector"])
    make_experiment_like(args.source, args.out, detector, job["name"], job["classes"])


def _arguments_import(p) -> None:
    p.add_argument("path", nargs="?", help="file, or folder of one-pattern TIFFs (row-major index as the last number)")
    p.add_argument("--out", required=True, help="output .h5 path")
    p.add_argument("--settings", help=argparse.SUPPRESS)
    add_acquisition_arguments(p)
    p.add_argument("--name", help="data set name (default: the file name)")
    p.add_argument("--label", help="class of every pattern (e.g. RM); default: unknown (-1)")
    p.add_argument("--accepted", nargs="+", help="classes counted as correct (default: the label)")
    p.add_argument("--thickness-nm", type=float, default=0.0, help="0 = unknown")
    p.add_argument("--supercell", default=DETECTOR_SUPERCELL)
    p.add_argument("--source", default="detector", help="simulator and version (e.g. QSTEM 2.5), or instrument")


@command("import", "Import a 4D-STEM acquisition (any format RosettaSciIO reads, TIFF folders and stacks) into a data set.", _arguments_import,
         reads=("path",), writes=("out",))
def cmd_import(args) -> None:
    from polarmap.io import acquisition_attrs, import_acquisition
    from polarmap.readers import read_acquisition

    if args.settings:  # an experimental set declared in the study config (same keys as below)
        job = {"label": None, "supercell": DETECTOR_SUPERCELL, "source": "detector", **json.loads(args.settings)}
    elif args.path:
        job = {
            "name": args.name or Path(args.path).stem, "format": args.format, "path": args.path, "dataset": args.dataset,
            "scan_shape": args.scan_shape, "label": args.label, "accepted": args.accepted or ([args.label] if args.label else []),
            "thickness_nm": args.thickness_nm, "supercell": args.supercell, "source": args.source,
            **{key: getattr(args, key) for key in CALIBRATION_ARGUMENTS},
        }
    else:
        raise ValueError("give the acquisition's PATH (or --settings JSON)")
    acquisition = read_acquisition(job["path"], job["format"], job["dataset"], stack_is_scan=bool(job["scan_shape"]))
    scan_shape = tuple(job["scan_shape"]) if job["scan_shape"] else None
    import_acquisition(acquisition, args.out, acquisition_attrs(job, acquisition), scan_shape=scan_shape, label=job["label"])


def _arguments_map(p) -> None:
    p.add_argument("path", help="the acquisition: any file `polarmap import` reads")
    p.add_argument("--model", default="", help="model.pt or PCA+kNN model.npz (records its sampling and crop); none: the per-cell map alone")
    p.add_argument("--cell-image", default="adf", choices=("adf", "idpc"), help="the virtual image the lattice and columns are found in")
    p.add_argument("--ood", default="", help="the model's ood.npz: patterns beyond its threshold are unknown")
    p.add_argument("--pacbed", default="", help="a PACBED library (polarmap pacbed-library at this scan's probe): the specimen's "
                   "thickness from its position-averaged pattern, and a model trained at other thicknesses flagged")
    p.add_argument("--unit-cell-model", default="", help="a unit-cell model (the model.pt of polarmap train-unit-cell): its answer for every "
                   "cell found, windowed along the lattice's own vectors, beside the column fit's")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--workers", type=int, help="blocks of scan rows read and worked on at once, in threads (default: every core "
                   "this process may use; the map does not depend on it)")
    p.add_argument("--settings", help=argparse.SUPPRESS)
    add_acquisition_arguments(p)
    add_orientation_arguments(p)


@command("map", "Polarization map of one acquisition: a vector in pm per unit cell of the lattice found in the scan; "
                           "with a model, its classes per pattern beside them, and the CoM field.", _arguments_map,
         reads=("path", "model", "ood", "pacbed", "unit_cell_model", "vacuum_reference"), writes=(_map_outputs,))
def cmd_map(args) -> None:
    from polarmap.mapping import map_acquisition
    from polarmap.structures import StructureSettings, load_lattice

    if args.settings:  # an experimental set declared in the study config
        job = json.loads(args.settings)
        geometry = {"rotation_deg": job.pop("scan_rotation_deg"), "flip": job.pop("scan_flip"), "vacuum_reference": ""}
    else:
        job = {"format": args.format, "dataset": args.dataset, "scan_shape": args.scan_shape, **{key: getattr(args, key) for key in CALIBRATION_ARGUMENTS}}
        geometry = {"rotation_deg": args.rotation_deg, "flip": args.flip, "vacuum_reference": args.vacuum_reference}
    summary = map_acquisition(args.path, args.model, args.out, args.ood, job, geometry, load_lattice(StructureSettings()).a_pc, progress=False,
                              cell_image=args.cell_image, workers=args.workers, pacbed_path=args.pacbed, unit_cell_path=args.unit_cell_model)
    print(json.dumps(summary, indent=2))


def _arguments_preprocess(p) -> None:
    p.add_argument("--settings", help=argparse.SUPPRESS)
    p.add_argument("--source", required=True, help="data set .h5")
    p.add_argument("--out", required=True, help="output .h5 path")
    p.add_argument("--summary", help="also write the filter counts as JSON here")
    p.add_argument("--mode", default="corrected", choices=["corrected", "faithful"])
    p.add_argument("--crop-px", type=int, default=64)
    p.add_argument("--training", action="store_true", help="a training set: apply the beam-shift filter")
    p.add_argument("--to-mrad-per-px", type=float, default=0.0, help="resample to this sampling (a model's); 0 = the data's own")
    add_orientation_arguments(p)


@command("preprocess", "CoM-centred crop, min-max, beam shift and filter of a data set.", _arguments_preprocess,
         reads=("source", "vacuum_reference"), writes=("out", "summary"))
def cmd_preprocess(args) -> None:
    from polarmap.preprocessing import PreprocessSettings, preprocess_dataset

    job = json.loads(args.settings) if args.settings else {
        "training": args.training, "mode": args.mode, "crop_px": args.crop_px, "mrad_per_px": args.to_mrad_per_px,
        "rotation_deg": args.rotation_deg, "flip": args.flip, "vacuum_reference": args.vacuum_reference,
    }
    fields = ("mode", "crop_px", "threshold_percentile", "rows_per_block", "mrad_per_px", "rotation_deg", "flip", "vacuum_reference")
    settings = PreprocessSettings(**{k: job[k] for k in fields if k in job})
    summary = preprocess_dataset(args.source, args.out, settings, job["training"], provenance_settings=job)
    if args.summary:
        Path(args.summary).write_text(json.dumps(summary, indent=2) + "\n")


def _arguments_info(p) -> None:
    p.add_argument("file")
    p.add_argument("--fast", action="store_true", help="skip the scan of every pattern for NaNs")


@command("info", "Validate a data set and summarise it.", _arguments_info,
         reads=("file",), writes=())
def cmd_info(args) -> None:
    from polarmap.io import info

    print(info(args.file, check_values=not args.fast))


def _arguments_split(p) -> None:
    p.add_argument("preprocessed", nargs="+", help="preprocessed training sets")
    p.add_argument("--settings", required=True, help="JSON: configuration, seed, stratified, fractions, pca_fractions")
    p.add_argument("--out", required=True, help="output .npz path")


@command("split", "Train/validation/test assignment of the training patterns for one configuration and seed.", _arguments_split,
         reads=("preprocessed",), writes=("out",))
def cmd_split(args) -> None:
    from polarmap.splits import SplitSettings, make_split

    job = json.loads(args.settings)
    blocking = {"blocked": job["stratified"], "block_cells": job["block_cells"], "guard_px": job["guard_px"]}
    settings = SplitSettings(fractions=tuple(job["fractions"]), stratified=job["stratified"], **blocking)
    pca_settings = SplitSettings(fractions=tuple(job["pca_fractions"]), stratified=job["stratified"], **blocking)
    counts = make_split(args.preprocessed, args.out, job["configuration"], job["seed"], settings, pca_settings, job["sets_per_class"])
    print(json.dumps(counts))


def _arguments_train(p) -> None:
    add_training_data_arguments(p)
    p.add_argument("--settings", required=True, help="JSON of polarmap.training.TrainSettings fields")
    p.add_argument("--out-dir", required=True, help="folder for model.pt, metrics.csv, record.json (and checkpoint.pt while running)")
    p.add_argument("--workers", type=int, help="processes that augment batches (default: none on the CPU, all but one core on a GPU; results do not depend on it)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


@command("train", "Train one model (encoder x objective x configuration x pretraining x seed).", _arguments_train,
         reads=("preprocessed", "split"), writes=(_in_folder("out_dir", "model.pt", "metrics.csv", "record.json"),))
def cmd_train(args) -> None:
    from polarmap.training import TrainSettings, train

    settings = TrainSettings.from_job(json.loads(args.settings))
    record = train(args.split, args.preprocessed, args.out_dir, settings, progress=not args.quiet, workers=args.workers)
    print(json.dumps({k: record[k] for k in ("epochs_run", "best_val_loss", "synthetic_test_accuracy", "device")}))


def _arguments_train_pca_knn(p) -> None:
    add_training_data_arguments(p)
    p.add_argument("--settings", required=True, help="JSON: configuration, seed, mode, components, neighbors, augmentation")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--record", required=True, help="output .json with the synthetic test accuracy")


@command("train-pca-knn", "Fit PCA + kNN for one configuration and seed (saved as arrays).", _arguments_train_pca_knn,
         reads=("preprocessed", "split"), writes=("out", "record"))
def cmd_train_pca_knn(args) -> None:
    from polarmap.augmentation import AugmentationSettings
    from polarmap.training import train_pca_knn

    started = time.perf_counter()
    job = json.loads(args.settings)
    result = train_pca_knn(args.split, args.preprocessed, args.out, job["configuration"], job["seed"], job["mode"],
                           job["components"], job["neighbors"], settings_from_json(AugmentationSettings, job["augmentation"]))
    write_record(args.record, [args.split, *args.preprocessed], job, started, device="cpu", **result)


def _arguments_fetch_weights(p) -> None:
    p.add_argument("encoder", help="an encoder with ImageNet weights (polarmap.models.IMAGENET_WEIGHTS)")
    p.add_argument("--torch-home", default="resources/torch", help="TORCH_HOME the training jobs use")


@command("fetch-weights", "Fetch and check torchvision's ImageNet weights for an encoder.", _arguments_fetch_weights,
         reads=(), writes=())
def cmd_fetch_weights(args) -> None:
    from polarmap.models import fetch_imagenet_weights

    print(fetch_imagenet_weights(args.encoder, args.torch_home))


def _arguments_predict(p) -> None:
    p.add_argument("model", help="model.pt, model.npz, or com (the beam-shift direction, no learning)")
    p.add_argument("dataset", help="preprocessed data set .h5")
    p.add_argument("--out", required=True, help="output .npz with the per-pattern predictions on the scan grid")
    p.add_argument("--compile", action="store_true", help="torch.compile the model first (faster on large sets)")
    p.add_argument("--ood", default="", help=OOD_HELP)


@command("predict", "Apply a model (model.pt, PCA+kNN model.npz, or 'com') to a preprocessed data set.", _arguments_predict,
         reads=("model", "dataset", "ood"), writes=("out",))
def cmd_predict(args) -> None:
    from polarmap.evaluation import predict_dataset

    print(json.dumps(predict_dataset(args.model, args.dataset, args.out, compile_model=args.compile, ood_path=args.ood), indent=2))


def _arguments_predict_many(p) -> None:
    p.add_argument("model", help="model.pt, model.npz, or com")
    p.add_argument("datasets", nargs="+", help="preprocessed data sets")
    p.add_argument("--out", required=True, help="output .npz: one prediction grid per data set")
    p.add_argument("--metrics", required=True, help="output .json: accuracy, majority class and counts per data set")
    p.add_argument("--compile", action="store_true", help="torch.compile the model first")
    p.add_argument("--ood", default="", help=OOD_HELP)


@command("predict-many", "Apply one model to several preprocessed data sets.", _arguments_predict_many,
         reads=("model", "datasets", "ood"), writes=("out", "metrics", _record_of("out")))
def cmd_predict_many(args) -> None:
    from polarmap.evaluation import predict_many

    started = time.perf_counter()
    predictor = predictors.load(args.model, args.ood, compile_model=args.compile, per_cell=False)
    predict_many(predictor, args.datasets, args.out, args.metrics)
    _record(args.out, [*predictor.files, *args.datasets], {"model": args.model, "compile": args.compile, "ood": args.ood}, started,
            device=predictor.device)


def _arguments_calibrate_ood(p) -> None:
    p.add_argument("model", help="model.pt or PCA+kNN model.npz")
    p.add_argument("preprocessed", nargs="+", help="the preprocessed training sets of its split")
    p.add_argument("--split", required=True, help="the split the model trained on (splits/.../<configuration>_seed<N>.npz)")
    p.add_argument("--quantile", type=float, default=KNOWN_QUANTILE, help="share of held-out training patterns that stay known")
    p.add_argument("--out", required=True, help="output ood.npz (arrays only)")


@command("calibrate-ood", "A model's out-of-distribution score and its threshold on held-out training patterns.", _arguments_calibrate_ood,
         reads=("model", "preprocessed", "split"), writes=("out", _record_of("out")))
def cmd_calibrate_ood(args) -> None:
    from polarmap.training import calibrate_ood

    started = time.perf_counter()
    summary = calibrate_ood(args.model, args.split, args.preprocessed, args.out, args.quantile)
    _record(args.out, [args.model, args.split, *args.preprocessed], summary, started)
    print(json.dumps(summary))


def _arguments_predict_cells(p) -> None:
    names = [name(image) for name in (predictors.column_fit_name, predictors.found_lattice_name) for image in predictors.COLUMN_FIT_IMAGES]
    p.add_argument("predictor", help=f"{', '.join(names)}, or a unit-cell model.pt")
    p.add_argument("virtual", nargs="+", help="virtual-images .npz files of simulated data sets")
    p.add_argument("--out", required=True, help="output .npz: per data set, every pattern given its cell's class (-1: no answer)")
    p.add_argument("--metrics", required=True, help="output .json: accuracy per pattern and per unit cell, per data set")


@command("predict-cells", "A per-unit-cell predictor (column fitting, a unit-cell model) on stored virtual images.", _arguments_predict_cells,
         reads=("predictor", "virtual"), writes=("out", "metrics", _record_of("out")))
def cmd_predict_cells(args) -> None:
    from polarmap.evaluation import predict_cells_many

    started = time.perf_counter()
    predict_cells_many(args.predictor, args.virtual, args.out, args.metrics)
    _record(args.out, predictors.model_inputs(args.predictor) + args.virtual, {"predictor": args.predictor}, started, device="cpu")


def _arguments_train_unit_cell(p) -> None:
    p.add_argument("--train", nargs="+", required=True, help="virtual-images .npz of the training sets (one class each)")
    p.add_argument("--validate", nargs="+", required=True, help="virtual-images .npz of held-out crystals")
    p.add_argument("--settings", default="{}", help="UnitCellSettings as JSON (epochs, lr, batch_size, windows_per_cell, jitter_fraction, seed)")
    p.add_argument("--out", required=True, help="output model.pt")
    p.add_argument("--record", required=True, help="output record.json: validation accuracy and whether it learned")


@command("train-unit-cell", "Train the position-aware unit-cell model on virtual images (ADF + CoM per cell).", _arguments_train_unit_cell,
         reads=("train", "validate"), writes=("out", "record", lambda a: [("out", Path(a.out).with_name("training.record.json"))]))
def cmd_train_unit_cell(args) -> None:
    from dataclasses import asdict

    from polarmap.atomic import write_text_atomically
    from polarmap.training import LEARNED_MIN_VALIDATION_ACCURACY
    from polarmap.unitcell import UnitCellSettings, cell_source, train_unit_cell_model

    started = time.perf_counter()
    settings = settings_from_json(UnitCellSettings, json.loads(args.settings))
    training, validation = [cell_source(p) for p in args.train], [cell_source(p) for p in args.validate]
    for source in training + validation:
        if source["label"] < 0:
            raise ValueError(f"{source['name']}: a unit-cell model trains on sets of one class")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    record = train_unit_cell_model(training, validation, Path(args.out), settings, LEARNED_MIN_VALIDATION_ACCURACY)
    record["training_sets"], record["validation_sets"] = [s["name"] for s in training], [s["name"] for s in validation]
    write_text_atomically(args.record, json.dumps(record, indent=2) + "\n")
    _record(Path(args.out).with_name("training"), args.train + args.validate, asdict(settings), started, device="cpu")


def _record_path(out) -> Path:
    """The provenance record next to a result: <out without suffix>.record.json."""
    out = Path(out)
    return out.with_name(out.name.split(".")[0] + ".record.json")


def _record(out, inputs, settings, started, **extra) -> None:
    write_record(_record_path(out), inputs, settings, started, **extra)


def _arguments_tables(p) -> None:
    p.add_argument("metrics", nargs="+", help="predict-many metrics .json files, named <predictor>.json")
    p.add_argument("--records", nargs="*", default=[], help="models/<model>/record.json files (the synthetic test row)")
    p.add_argument("--mode", required=True, choices=("corrected", "faithful"), help="the study's mode, recorded in summary.tsv")
    p.add_argument("--out-dir", required=True, help="folder for results.tsv, summary.tsv, table_<configuration>.{md,csv,tex}")
    p.add_argument("--leakage", default="", help="tables/leakage.csv of `polarmap audit`: sets not independent of training are marked")


@command("tables", "Results, per-family summary and the paper's Tables 1-3 (Markdown, CSV, LaTeX).", _arguments_tables,
         reads=("metrics", "records", "leakage"), writes=(_table_outputs,))
def cmd_tables(args) -> None:
    from polarmap.tables import write_tables

    started = time.perf_counter()
    write_tables(args.metrics, args.records, args.out_dir, args.mode, args.leakage)
    _record(Path(args.out_dir) / "tables", args.metrics + args.records + [args.leakage] * bool(args.leakage), {"mode": args.mode}, started)


def _arguments_audit(p) -> None:
    p.add_argument("--training-raw", nargs="+", required=True, help="raw .h5 of every training set")
    p.add_argument("--training", nargs="+", required=True, help="preprocessed .h5 of the same training sets, in the same order")
    p.add_argument("--evaluated-raw", nargs="*", default=[], help="raw .h5 of every set to audit")
    p.add_argument("--evaluated", nargs="*", default=[], help="preprocessed .h5 of the same sets, in the same order")
    p.add_argument("--roles", nargs="*", default=[], help="role of each audited set (test, experiment_like, ...)")
    p.add_argument("--splits", nargs="*", default=[], help="split .npz files whose synthetic-test part is audited")
    p.add_argument("--sample", type=int, default=256, help="patterns sampled per set (default 256)")
    p.add_argument("--out-md", required=True, help="output leakage.md")
    p.add_argument("--out-csv", required=True, help="output leakage.csv")


@command("audit", "Leakage audit: evaluation sets and synthetic-test parts against the training data.", _arguments_audit,
         reads=("training_raw", "training", "evaluated_raw", "evaluated", "splits"), writes=("out_md", "out_csv", _record_of("out_csv")))
def cmd_audit(args) -> None:
    from polarmap.audit import audit_sets, audit_split, write_leakage_tables

    started = time.perf_counter()
    pairs = {"--training-raw/--training": (args.training_raw, args.training), "--evaluated-raw/--evaluated": (args.evaluated_raw, args.evaluated)}
    for flags, (raw, preprocessed) in pairs.items():
        if len(raw) != len(preprocessed):
            raise ValueError(f"audit: {flags} need one raw file per preprocessed file, got {len(raw)} and {len(preprocessed)}")
    if len(args.roles) != len(args.evaluated):
        raise ValueError(f"audit: --roles needs one role per evaluated set, got {len(args.roles)} for {len(args.evaluated)}")
    rows = audit_sets(list(zip(args.training_raw, args.training)), list(zip(args.evaluated_raw, args.evaluated, args.roles)), args.sample)
    rows += [row for split in args.splits for row in audit_split(split, args.training, args.sample)]
    write_leakage_tables(rows, args.out_md, args.out_csv)
    inputs = args.training_raw + args.training + args.evaluated_raw + args.evaluated + args.splits
    _record(args.out_csv, inputs, {"sample": args.sample}, started)
    leaks = [row["set"] for row in rows if not row["independent"]]
    print(f"audit: {len(rows)} sets and splits, {len(leaks)} not independent of training" + (f": {', '.join(leaks)}" if leaks else ""))


def _arguments_compare_modes(p) -> None:
    p.add_argument("summary", help="this study's tables/summary.tsv")
    p.add_argument("other", help="the other mode's tables/summary.tsv")
    p.add_argument("--out", required=True, help="output .md")


@command("compare-modes", "Two studies' summary.tsv (corrected and faithful) side by side.", _arguments_compare_modes,
         reads=("summary", "other"), writes=("out", _record_of("out")))
def cmd_compare_modes(args) -> None:
    from polarmap.tables import compare_modes

    started = time.perf_counter()
    compare_modes(args.summary, args.other, args.out)
    _record(args.out, [args.summary, args.other], {}, started)


def _arguments_reproduction(p) -> None:
    p.add_argument("--paper", default="resources/paper_tables.csv", help="the paper's Tables 1-3 (resources/paper_tables.csv)")
    p.add_argument("--faithful", default="", help="summary.tsv of the study in faithful mode")
    p.add_argument("--corrected", default="", help="summary.tsv of the study in corrected mode")
    p.add_argument("--scale", default="", help="how our study's scale differs from the paper's, for the table's header")
    p.add_argument("--out-dir", required=True, help="folder for reproduction.md, .csv and .tex")


@command("reproduction", "The paper's Tables 1-3 beside ours in faithful and corrected mode, with a verdict per cell.", _arguments_reproduction,
         reads=("paper", "faithful", "corrected"),
         writes=(_in_folder("out_dir", "reproduction.md", "reproduction.csv", "reproduction.tex", "reproduction.record.json"),))
def cmd_reproduction(args) -> None:
    from polarmap.reproduction import read_paper_tables, reproduction_rows, write_reproduction
    from polarmap.tables import read_table

    started = time.perf_counter()
    if not (args.faithful or args.corrected):
        raise ValueError("give --faithful or --corrected (a study's tables/summary.tsv), or both")
    summaries = [read_table(path) if path else None for path in (args.faithful, args.corrected)]
    rows = reproduction_rows(read_paper_tables(args.paper), *summaries)
    write_reproduction(rows, args.out_dir, args.scale or "our scale")
    _record(Path(args.out_dir) / "reproduction", [args.paper, *filter(None, (args.faithful, args.corrected))], {"scale": args.scale}, started)


def _unlearned(args) -> set[str]:
    from polarmap.tables import read_table

    return set(read_table(args.results).query("not learned")["predictor"]) if args.results else set()


def _figure_distributions(figures, args) -> None:
    from polarmap.tables import read_table

    figures.distributions_from_results(read_table(args.inputs[0]), args.configuration, args.out)


def _figure_maps(figures, args) -> None:
    figures.maps_from_predictions(args.inputs, args.configuration, args.out, _unlearned(args))


def _figure_com_field(figures, args) -> None:
    figures.com_field_from_files(args.inputs[0], args.inputs[1], args.out)


def _figure_sweep(figures, args) -> None:
    from polarmap.tables import read_table

    sweep = json.loads(args.sweep)
    figures.sweep_from_results(read_table(args.inputs[0]), sweep["points"], sweep["knob"], args.out)


def _figure_thickness(figures, args) -> None:
    from polarmap.tables import read_table

    figures.thickness_from_files(read_table(args.inputs[0]), args.preprocessed, args.structures, args.out)


def _figure_cells(figures, args) -> None:
    figures.cells_from_files(args.virtual, args.inputs, args.metrics, args.dataset, args.out, _unlearned(args))


def _figure_training(figures, args) -> None:
    figures.training_curves_from_files(args.inputs, args.out)


# every figure kind of `polarmap figure KIND`: what it draws from the command's arguments
FIGURE_KINDS = {"distributions": _figure_distributions, "maps": _figure_maps, "com-field": _figure_com_field, "sweep": _figure_sweep,
                "thickness": _figure_thickness, "cells": _figure_cells, "training": _figure_training}


def _arguments_figure(p) -> None:
    p.add_argument("kind", choices=list(FIGURE_KINDS))
    p.add_argument("inputs", nargs="+", help="distributions, sweep, thickness: results.tsv; maps, cells: prediction .npz files; com-field: preprocessed .h5 "
                   "and its structure .xyz; training: the models' metrics.csv (each with its record.json beside it)")
    p.add_argument("--configuration", help="preprocessing configuration (distributions, maps)")
    p.add_argument("--sweep", help="sweep as JSON {knob, points: [{dataset, value}]} (sweep)")
    p.add_argument("--preprocessed", nargs="+", default=[], help="the thickness sweep's preprocessed .h5 sets (thickness)")
    p.add_argument("--structures", nargs="+", default=[], help="their structure .xyz files, in the same order (thickness)")
    p.add_argument("--results", default="", help="results.tsv, whose models that did not learn are marked (maps, cells)")
    p.add_argument("--virtual", default="", help="the data set's virtual-images .npz (cells)")
    p.add_argument("--metrics", nargs="+", default=[], help="the predictors' metrics .json files (cells)")
    p.add_argument("--dataset", help="the data set drawn (cells)")
    p.add_argument("--out", required=True, help="output path without suffix (.png and .pdf are written)")


@command("figure", "One evaluation figure as PNG and PDF.", _arguments_figure,
         reads=("inputs", "preprocessed", "structures", "results", "virtual", "metrics"), writes=(_with_suffixes("out", ".png", ".pdf"), _record_of("out")))
def cmd_figure(args) -> None:
    from polarmap import figures

    started = time.perf_counter()
    settings = {"figure": args.kind, "configuration": args.configuration, "sweep": args.sweep} | ({"dataset": args.dataset} if args.kind == "cells" else {})
    FIGURE_KINDS[args.kind](figures, args)
    inputs = [*args.inputs, *args.preprocessed, *args.structures, *[args.results] * bool(args.results), *[args.virtual] * bool(args.virtual), *args.metrics]
    _record(args.out, inputs, settings, started)


def _arguments_fetch_pseudopotentials(p) -> None:
    p.add_argument("dest", help="folder for the UPF files, e.g. resources/pseudo/PseudoDojo-0.4-PBE-SR-standard")
    p.add_argument("--wheel-dir", help="folder already holding the wheel (offline)")


@command("fetch-pseudopotentials", "Unpack and check the default pseudopotential set (PseudoDojo, from its PyPI wheel).", _arguments_fetch_pseudopotentials,
         reads=("wheel_dir",), writes=())
def cmd_fetch_pseudopotentials(args) -> None:
    from polarmap.dft import fetch_pseudopotentials

    print(fetch_pseudopotentials(args.dest, args.wheel_dir))


def _arguments_relax_vacancy(p) -> None:
    p.add_argument("--settings", required=True, help="JSON of the defect.dft settings plus polarization and structure")
    p.add_argument("--pseudo-dir", default="resources/pseudo/PseudoDojo-0.4-PBE-SR-standard", help="the checked default set")
    p.add_argument("--out-dir", required=True, help="folder for pw.in, pw.out, unrelaxed.xyz, relaxed.xyz, displacements.tsv, record.json")


@command("relax-vacancy", "Relax the O-vacancy cell with pw.x (or apply the literature displacements).", _arguments_relax_vacancy,
         reads=("pseudo_dir",), writes=(_in_folder("out_dir", "pw.in", "pw.out", "unrelaxed.xyz", "relaxed.xyz", "displacements.tsv", "record.json"),))
def cmd_relax_vacancy(args) -> None:
    """The vacancy cell, its pw.x input and run (or the literature displacements), parsed into
    unrelaxed.xyz, relaxed.xyz, displacements.tsv and record.json in --out-dir."""
    from polarmap import dft
    from polarmap.structures import write_structure

    started = time.perf_counter()
    job = json.loads(args.settings)
    settings = study_config.dft_settings(job)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atoms, vacancy = dft.vacancy_cell(settings, study_config.structure_settings(job))
    inputs = []
    if settings.mode == "qe":
        pseudo_dir, files = dft.pseudopotentials_for(settings, args.pseudo_dir, set(atoms.get_chemical_symbols()))
        inputs = [pseudo_dir / f for f in files.values()]
        version = dft.pw_version()
        dft.write_pw_input(atoms, settings, pseudo_dir, files, out / "pw.in", version=version)
        try:
            dft.run_pw(out / "pw.in", out / "pw.out", settings.mpi_ranks)
        except RuntimeError as err:
            if settings.require_convergence or "maximum number of steps" not in str(err):
                raise
            print(f"kept a capped relaxation (require_convergence: false): {err}", file=sys.stderr)
        relaxed = dft.relaxed_structure(out / "pw.out")
        relaxed.info.update(atoms.info, relaxation=f"pw.x {version[0]}.{version[1]}")
    else:
        relaxed = dft.literature_relaxation(atoms, vacancy, settings)
    write_structure(atoms, out / "unrelaxed.xyz")
    write_structure(relaxed, out / "relaxed.xyz")
    rows = dft.displacement_table(atoms, relaxed, vacancy)
    header = ["index", "symbol", "distance_to_vacancy", "dx", "dy", "dz", "displacement", "away_from_vacancy"]
    lines = [f"# relaxation: {relaxed.info['relaxation']}; Angstrom; vacancy at {' '.join(f'{v:.4f}' for v in vacancy)}", "\t".join(header)]
    lines += ["\t".join(str(r[k]) if k in ("index", "symbol") else f"{r[k]:.5f}" for k in header) for r in rows]
    from polarmap.atomic import write_text_atomically

    write_text_atomically(out / "displacements.tsv", "\n".join(lines) + "\n")
    write_record(out / "record.json", inputs, job, started, relaxation=relaxed.info["relaxation"], device="cpu")


def _arguments_hubbard_u(p) -> None:
    p.add_argument("--settings", required=True, help="JSON of the defect.dft settings plus polarization and structure")
    p.add_argument("--supercell", type=int, nargs=3, default=[1, 1, 2], help="the pristine cell (default: 1x1x2, K and Na)")
    p.add_argument("--qpoints", type=int, nargs=3, default=[1, 1, 1], help="hp.x q-mesh")
    p.add_argument("--pseudo-dir", default="resources/pseudo/PseudoDojo-0.4-PBE-SR-standard", help="the checked default set")
    p.add_argument("--out-dir", required=True, help="folder for the runs and U.json")


@command("hubbard-u", "U on Nb 4d by linear response (pw.x SCF, then hp.x), to redo the paper's 2.4 eV.", _arguments_hubbard_u,
         reads=("pseudo_dir",), writes=(_in_folder("out_dir", "U.json"),))
def cmd_hubbard_u(args) -> None:
    """U on Nb 4d from hp.x for users who redo the paper's step; writes U.json beside its runs."""
    from polarmap import dft

    started = time.perf_counter()
    job = json.loads(args.settings)
    settings = study_config.dft_settings({**job, "supercell": args.supercell})
    pseudo_dir, files = dft.pseudopotentials_for(settings, args.pseudo_dir, {"K", "Na", "Nb", "O"})
    u = dft.compute_hubbard_u(settings, pseudo_dir, files, args.out_dir, tuple(args.qpoints), study_config.structure_settings(job))
    out = Path(args.out_dir) / "U.json"
    write_record(out, [pseudo_dir / f for f in files.values()], {**job, "supercell": args.supercell, "qpoints": args.qpoints}, started,
                 hubbard_u_nb_4d_ev=u, device="cpu")
    print(f"U(Nb 4d) = {u:.3f} eV ({out})")


def _arguments_defect_structure(p) -> None:
    p.add_argument("--settings", required=True, help="JSON: supercell, radius_angstrom, dft")
    p.add_argument("--relaxation", required=True, help="relax-vacancy's output folder")
    p.add_argument("--out", required=True, help="output .xyz (a .cif is written beside it)")


@command("defect-structure", "The defect data set's supercell with the relaxed vacancy field.", _arguments_defect_structure,
         reads=("relaxation",), writes=("out", _beside("out", ".cif")))
def cmd_defect_structure(args) -> None:
    from polarmap import dft
    from polarmap.structures import read_structure, write_structure

    job = json.loads(args.settings)
    settings = study_config.dft_settings(job["dft"])
    unrelaxed, relaxed = read_structure(Path(args.relaxation) / "unrelaxed.xyz"), read_structure(Path(args.relaxation) / "relaxed.xyz")
    vacancy = dft.vacancy_position(unrelaxed)
    field = dft.vacancy_field(unrelaxed, relaxed, vacancy)
    atoms = dft.defect_supercell(job["supercell"], settings, field, job["radius_angstrom"], study_config.structure_settings(job["dft"]))
    atoms.info["relaxation"] = relaxed.info.get("relaxation", "")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_structure(atoms, args.out)


def _arguments_defect_study(p) -> None:
    p.add_argument("predictions", nargs="+", help="prediction .npz files of every predictor")
    p.add_argument("--dataset", required=True, help="the preprocessed defect set (with /defect_mask)")
    p.add_argument("--out-table", required=True, help="output .tsv: AUC per model, configuration and seed")
    p.add_argument("--out-figure", required=True, help="output path without suffix (.png, .pdf)")


@command("defect-study", "Defect maps (Fig. 8) and how well each model's errors locate the vacancy (ROC AUC).", _arguments_defect_study,
         reads=("predictions", "dataset"), writes=("out_table", _with_suffixes("out_figure", ".png", ".pdf"), _record_of("out_table")))
def cmd_defect_study(args) -> None:
    from polarmap.figures import defect_study

    started = time.perf_counter()
    defect_study(args.predictions, args.dataset, args.out_table, args.out_figure)
    _record(args.out_table, [*args.predictions, args.dataset], {"dataset": args.dataset}, started)


def _arguments_archive(p) -> None:
    p.add_argument("results", help="the study's results folder, e.g. results/default")
    p.add_argument("--out", required=True, help="output .tar.gz")
    p.add_argument("--config", nargs="*", default=[], help="config files of the study (config.yaml, a preset)")
    p.add_argument("--report", help="the HTML report from snakemake --report")
    p.add_argument("--include", nargs="*", default=[], choices=("models", "datasets"), help="also pack model weights / HDF5 data sets (large)")


@command("archive", "Pack a study's results, records, config and report into one .tar.gz for publication.", _arguments_archive,
         reads=("results", "config", "report"), writes=("out",))
def cmd_archive(args) -> None:
    from polarmap.provenance import archive

    path, members = archive(args.results, args.out, args.config, args.report, args.include)
    print(f"{path}: {members} files")


def _arguments_summary(p) -> None:
    p.add_argument("files", nargs="+")
    p.add_argument("--out", required=True, help="output .tsv path")


@command("summary", "One TSV line per data set (shape, thickness, classes, mean CoM).", _arguments_summary,
         reads=("files",), writes=("out",))
def cmd_summary(args) -> None:
    from polarmap.io import write_summary

    write_summary(args.files, args.out)


def _arguments_filter_counts(p) -> None:
    p.add_argument("summaries", nargs="+", help="preprocess --summary JSON files")
    p.add_argument("--out", required=True, help="output .tsv path")


@command("filter-counts", "Per-class counts of training patterns kept by the filter.", _arguments_filter_counts,
         reads=("summaries",), writes=("out",))
def cmd_filter_counts(args) -> None:
    from polarmap.preprocessing import write_filter_counts

    write_filter_counts([json.loads(Path(p).read_text()) for p in args.summaries], args.out)


def _arguments_virtual_images(p) -> None:
    p.add_argument("dataset", help="data set .h5 (raw patterns, calibrated: detector_mrad_per_px)")
    p.add_argument("--out", required=True, help="output .npz: adf, bf, abf, com_mrad, idpc, ddpc and the settings (meta)")
    p.add_argument("--adf-mrad", type=float, nargs=2, default=[60.0, 150.0], metavar=("INNER", "OUTER"), help="ADF detector range")
    p.add_argument("--figure", help="also draw them: this path without suffix gets .png and .pdf")


@command("virtual-images", "ADF, BF, ABF, CoM field, iDPC and dDPC of a data set (simulated or imported).", _arguments_virtual_images,
         reads=("dataset",), writes=("out", _with_suffixes("figure", ".png", ".pdf")))
def cmd_virtual_images(args) -> None:
    from polarmap import figures
    from polarmap.atomic import save_npz_atomically
    from polarmap.imaging import VirtualDetectors, virtual_images

    images = virtual_images(args.dataset, VirtualDetectors(adf_mrad=tuple(args.adf_mrad)))
    save_npz_atomically(args.out, images)
    if args.figure:
        figures.virtual_images(images, f"{Path(args.dataset).stem}: virtual images", args.figure)


def _arguments_check_config(p) -> None:
    p.add_argument("config")
    p.add_argument("--base", help="config the file is merged over, as the Snakefile's configfile (default: ./config.yaml where there is one; '' for none)")


@command("check-config", "Validate a study config (merged over config.yaml, as Snakemake merges a preset).", _arguments_check_config,
         reads=("config", "base"), writes=())
def cmd_check_config(args) -> None:
    base = args.base if args.base is not None else ("config.yaml" if Path("config.yaml").exists() else "")
    base = base if base and Path(base).resolve() != Path(args.config).resolve() else None
    config = study_config.load_config(args.config, base)
    merged = f" (merged over {base})" if base else ""
    print(f"{args.config}: valid{merged}; study '{config['study']}', data sets: {', '.join(study_config.simulated_datasets(config))}")


OOD_HELP = "the model's ood.npz (polarmap calibrate-ood): patterns beyond its threshold are unknown (-1)"


def add_training_data_arguments(p) -> None:
    """What a learner trains on: the preprocessed training sets and the split of its configuration and seed."""
    p.add_argument("preprocessed", nargs="+", help="preprocessed training sets")
    p.add_argument("--split", required=True, help="split .npz of the configuration and seed")


def add_acquisition_arguments(p) -> None:
    """How to read an acquisition, and the calibrations its file lacks."""
    p.add_argument("--format", default="auto", choices=["auto", *READERS], help="default: from the file's suffix")
    p.add_argument("--dataset", default="", help="which data set of a file holding several (the refusal lists them)")
    p.add_argument("--scan-shape", type=int, nargs=2, metavar=("ROWS", "COLS"), help="needed where the file has none")
    for key, flag in CALIBRATION_ARGUMENTS.items():
        p.add_argument(flag, dest=key, type=float, default=0.0, help=f"{key}, where the file lacks it or is wrong (0: from the file)")


def add_orientation_arguments(p) -> None:
    """How a scan's detector sits against its scan, and its descan reference."""
    p.add_argument("--rotation-deg", type=float, help="detector turned against the scan, counter-clockwise (with --flip/--no-flip); "
                   "default: known for simulations, found by least curl for real scans")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None, help="detector mirrored against the scan")
    p.add_argument("--vacuum-reference", default="", help="a vacuum scan (data set .h5) of the same shape: its disc plane is the descan")








def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="polarmap", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, declared in COMMANDS.items():
        p = sub.add_parser(name, help=declared.help, **({"description": declared.help} if declared.study else {}))
        if declared.study:
            p.add_argument("--config", help="study config YAML (e.g. config.yaml)")
            p.add_argument("--dataset", help="data set name from the config (e.g. train_RM, 1S, reference)")
            p.add_argument("--settings", help=argparse.SUPPRESS)  # inline JSON from the Snakemake rules
        declared.arguments(p)
        p.set_defaults(func=declared.run)
    return parser


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def command_files(args) -> tuple[list[tuple[str, Path]], list[tuple[str, Path]]]:
    """(argument, path) of the command's inputs and of its outputs."""
    reads, writes = COMMANDS[args.command].reads, COMMANDS[args.command].writes
    inputs = _paths(args, *reads)
    outputs = [named for spec in writes for named in (spec(args) if callable(spec) else _paths(args, spec))]
    return inputs, outputs


def check_files(args) -> list[Path]:
    """No output over an input (the input is never written, moved or deleted), no output over
    another, and no folder where a file goes: refused before any work. Returns the outputs."""
    inputs, outputs = command_files(args)
    for number, (dest, out) in enumerate(outputs):
        if out.is_dir():
            raise ValueError(f"{out}: is a folder; give {_flag(dest)} a file path")
        for source_dest, source in inputs:
            if same_file(out, source):
                link = "" if out.resolve() == source.resolve() else f", {source} by another name"
                raise ValueError(f"{out}: is the input file itself ({_flag(dest)} and {source_dest}{link}); "
                                 "write the output elsewhere (the input was left as it was)")
        for other_dest, other in outputs[:number]:
            if same_file(out, other):
                raise ValueError(f"{out}: given for two outputs ({_flag(other_dest)} and {_flag(dest)}); give each its own path")
    return [out for _, out in outputs]


def _refuse_empty_paths(parser, args) -> None:
    """A required file given as '' (an unset shell variable) would read as the current folder."""
    command = next(a for a in parser._subparsers._group_actions if a.dest == "command").choices[args.command]
    reads = COMMANDS[args.command].reads
    for action in command._actions:
        value = getattr(args, action.dest, None)
        if action.dest in reads and action.required and "" in (value if isinstance(value, list) else [value]):
            name = action.option_strings[0] if action.option_strings else action.dest
            raise ValueError(f"{name}: an empty path (an unset variable?); no {action.dest} given: name the file")


def _quiet_h5py_dealloc_errors() -> None:
    """After a failed write (a full disk) every h5py handle of the file reports the failure again
    as it is freed, a traceback each (through both hooks); the command's one line already says it."""
    unraisable_hook, except_hook = sys.unraisablehook, sys.excepthook

    def from_h5py_dealloc(exc, where: str) -> bool:
        return isinstance(exc, OSError) and "h5py" in where and "dealloc" in where

    def unraisable(u):
        if not from_h5py_dealloc(u.exc_value, f"{u.err_msg} {u.object}"):
            unraisable_hook(u)

    def uncaught(exc_type, exc, tb):
        frames = traceback.extract_tb(tb)
        if not (frames and from_h5py_dealloc(exc, f"{frames[-1].filename} {frames[-1].name}")):
            except_hook(exc_type, exc, tb)

    sys.unraisablehook, sys.excepthook = unraisable, uncaught


def main(argv=None) -> int:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_h5py_dealloc_errors()
    created = []
    try:
        _refuse_empty_paths(parser, args)
        created = [out for out in check_files(args) if not out.exists()]
        args.func(args)
    except BaseException as err:
        for out in created:  # a failed command leaves none of its outputs: all of them or nothing
            with contextlib.suppress(OSError):
                out.unlink(missing_ok=True)
        if not isinstance(err, (ValueError, OSError, KeyError, RuntimeError)):
            raise
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"polarmap {args.command}: error: {message}", file=sys.stderr, flush=True)
        if isinstance(err, WriteFailed):
            os._exit(2)  # HDF5's finalisers crash on a file whose write failed; the outputs are already removed
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
