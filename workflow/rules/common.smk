import json
import re
import shlex
from pathlib import Path

from polarmap.config import (
    dataset_job_settings,
    defect_job_settings,
    dft_job_settings,
    dataset_roles,
    experiment_job_settings,
    experiment_like_datasets,
    experimental_job_settings,
    pacbed_library_job_settings,
    pca_knn_job_settings,
    preprocess_job_settings,
    simulated_datasets,
    simulation_settings,
    split_job_settings,
    sweep_points,
    training_jobs,
    training_set_names,
)
from polarmap.experiment import ExperimentSettings
from polarmap.provenance import settings_from_json
from polarmap.predictors import (
    COM,
    column_fit_name,
    describe,
    found_lattice_name,
    is_trained,
    model_file as predictor_file,
    pca_knn_name,
    unit_cell_name,
)
from polarmap.experiment import estimated_memory_mb as experiment_memory_mb
from polarmap.simulation import estimated_memory_mb

# the file names of the predictors' rules, as the registry names them
PCA_KNN_PATTERN, UNIT_CELL_PATTERN = (
    pca_knn_name("{configuration}", "{seed}"),
    unit_cell_name("{seed}"),
)
PSEUDOCUBIC_ANGSTROM = 4.0  # KNN's pseudocubic cell, to size a scan step for memory requests

STUDY = config["study"]
RESULTS = f"results/{STUDY}"
SIMULATED = simulated_datasets(config)
EXPERIMENT_LIKE = experiment_like_datasets(config)
EXPERIMENTAL = config["datasets"]["experimental"]
ROLES = dataset_roles(config)
TRAINING_JOBS = training_jobs(config)
# the base training sets, or those and the nuisance variants (issue 9), and who trains on which
TRAINING_DATA = sorted({job["training_data"] for job in TRAINING_JOBS.values()} | {"base"})
TRAINING_SETS = {data: training_set_names(config, data) for data in TRAINING_DATA}
# the training variants are made only when a model trains on them
UNUSED = {name for name, role in ROLES.items() if role == "training_variant"} if "diverse" not in TRAINING_DATA else set()
# every data set in the HDF5 format (the reference only when asked for)
DATASETS = [
    name for name, role in ROLES.items() if (role != "reference" or config["datasets"]["reference"]["simulate"]) and name not in UNUSED
]
FILTERED = [name for name in DATASETS if ROLES[name] in ("training", "training_variant")]
STRUCTURES = [name for name in SIMULATED if name not in UNUSED]
# models trained as in the paper; the others (diverse data, domain randomisation) get their own table
PAPER_MODELS = {name for name, job in TRAINING_JOBS.items() if job["training_data"] == "base" and job["augmentation_kind"] == "paper"}
# sets the models are evaluated on, and every predictor: trained models, PCA+kNN, the CoM baseline
EVALUATED = [name for name, role in ROLES.items() if role in ("test", "experiment_like", "experimental", "defect")]
# the leakage audit: every training set made, every evaluated set and the clean sources behind the
# experiment-like ones, and the split of every trained model (PCA+kNN uses the base splits)
AUDITED = EVALUATED + [name for name in DATASETS if ROLES[name] == "clean_source"]
DEFECT = config["datasets"]["defect"]["enabled"]
DFT = config["datasets"]["defect"]["dft"]
PCA_KNN = (
    [pca_knn_name(c, s) for c in config["preprocessing"]["configurations"] for s in config["seeds"]]
    if config["training"]["pca_knn"]["enabled"]
    else []
)
PREDICTORS = list(TRAINING_JOBS) + PCA_KNN + [COM]
# models whose out-of-distribution threshold is calibrated (corrected mode: the published code has none)
OOD_MODELS = list(TRAINING_JOBS) + PCA_KNN if config["evaluation"]["ood"]["enabled"] and config["mode"] == "corrected" else []
# the models that map the declared experimental sets (`polarmap map`)
MAP_MODELS = (config["evaluation"]["map_models"] or list(TRAINING_JOBS)[:1]) if EXPERIMENTAL else []
# evaluated sets whose unit cells are known (simulated, or experiment-like from a simulation):
# their virtual images, column fitting, per-cell scores and figures
LATTICE_SETS = [name for name in EVALUATED if ROLES[name] != "experimental"]
# column fitting on the known supercell, and on the lattice found in the image as for a real scan
COLUMN_FITS = (
    [name(image) for name in (column_fit_name, found_lattice_name) for image in config["evaluation"]["column_fit_images"]]
    if LATTICE_SETS
    else []
)
# the unit-cell model: validated on the last crystal of every class (one crystal: on the variants)
CRYSTALS = config["datasets"]["training"]["crystals"]
UNIT_CELL_VALIDATION = (
    [name for name in FILTERED if name.endswith(f"_crystal{CRYSTALS}")]
    if CRYSTALS > 1
    else [name for name, role in ROLES.items() if role == "training_variant"]
)
UNIT_CELL_TRAINING = [name for name in FILTERED if name not in UNIT_CELL_VALIDATION]
UNIT_CELL_MODELS = [unit_cell_name(seed) for seed in config["seeds"]] if config["training"]["unit_cell"]["enabled"] and LATTICE_SETS else []
CELL_PREDICTORS = UNIT_CELL_MODELS + COLUMN_FITS
# virtual images: every evaluated set with a calibrated detector, and the unit-cell model's sets
VIRTUAL_SETS = list(
    dict.fromkeys(
        LATTICE_SETS
        + [name for name, spec in EXPERIMENTAL.items() if spec["detector_mrad_per_px"] > 0]
        + (UNIT_CELL_TRAINING + UNIT_CELL_VALIDATION if UNIT_CELL_MODELS else [])
    )
)
# Tables 1-3: one per preprocessing configuration with any trained predictor, in the paper's order
TABLE_NUMBERS = {"none": 1, "augmentation": 2, "augmentation_filter": 3}
TABLE_CONFIGURATIONS = [
    c
    for c in TABLE_NUMBERS
    if any(job["configuration"] == c for job in TRAINING_JOBS.values()) or any(describe(p).configuration == c for p in PCA_KNN)
]
REGIME_TABLE = len(PAPER_MODELS) < len(TRAINING_JOBS)
SWEEPS = sweep_points(config)
# thickness sweeps of clean test sets: each also gets the CoM-against-thickness figure
THICKNESS_SWEEPS = [
    s
    for s, spec in config["datasets"]["sweeps"].items()
    if spec["knob"] == "thickness_cells" and spec["base"] in config["datasets"]["tests"]
]
COM_FIELD_DATASET = config["evaluation"]["com_field_dataset"] or next(iter(config["datasets"]["tests"]), "reference")


def predictors_of(configuration):
    """The predictors whose maps go in one configuration's figure: the paper's models, not those
    trained on diverse data or with domain randomisation, and in each the CoM baseline and the
    per-cell predictors (the unit-cell model, column fitting)."""
    return [
        p
        for p in PREDICTORS
        if not is_trained(p)
        or (p in PAPER_MODELS and TRAINING_JOBS[p]["configuration"] == configuration)
        or (p in PCA_KNN and describe(p).configuration == configuration)
    ] + CELL_PREDICTORS


def split_file(job):
    return f"{RESULTS}/splits/{job['training_data']}/{job['configuration']}_seed{job['seed']}.npz"


# every split a predictor trains on (PCA+kNN: the base split of its configuration and seed)
AUDITED_SPLITS = sorted(
    {split_file(job) for job in TRAINING_JOBS.values()}
    | {split_file({"training_data": "base", "configuration": describe(p).configuration, "seed": describe(p).seed}) for p in PCA_KNN}
)


def one_of(names):
    return "|".join(re.escape(name) for name in names) or "(?!x)x"


wildcard_constraints:
    dataset=one_of(ROLES),
    configuration=one_of(config["preprocessing"]["configurations"]),
    sweep=one_of(SWEEPS),
    training_data=one_of(TRAINING_DATA),
    seed=r"\d+",
    model=one_of(TRAINING_JOBS),
    predictor=one_of(PREDICTORS),
    column_fit=one_of(COLUMN_FITS),
    unit_cell_model=one_of(UNIT_CELL_MODELS),


def job_settings(wildcards):
    """The settings one data set's jobs depend on, as JSON: a change reruns exactly those jobs."""
    return json.dumps(dataset_job_settings(config, wildcards.dataset), sort_keys=True)


def experiment_settings(wildcards):
    return json.dumps(experiment_job_settings(config, wildcards.dataset), sort_keys=True)


def experimental_settings(wildcards):
    return json.dumps(experimental_job_settings(config, wildcards.dataset), sort_keys=True)


def pacbed_library_settings(wildcards):
    return json.dumps(pacbed_library_job_settings(config), sort_keys=True)


def preprocess_settings(wildcards):
    return json.dumps(preprocess_job_settings(config, wildcards.dataset), sort_keys=True)


def imagenet_weights_input(wildcards):
    job = TRAINING_JOBS[wildcards.model]
    if job["pretrained"] != "imagenet":
        return []
    from polarmap.models import imagenet_weights_file  # torch: only where a model starts from ImageNet

    return f"resources/torch/hub/checkpoints/{imagenet_weights_file(job['encoder'])}"


def training_inputs(predictor):
    """The split and preprocessed training sets a trained model or PCA+kNN learned from."""
    if predictor in PCA_KNN:
        info = describe(predictor)
        job = {"training_data": "base", "configuration": info.configuration, "seed": info.seed}
    else:
        job = TRAINING_JOBS[predictor]
    return {
        "split": split_file(job),
        "preprocessed": expand(f"{RESULTS}/preprocessed/{{dataset}}.h5", dataset=TRAINING_SETS[job["training_data"]]),
    }


def ood_file(wildcards):
    return [f"{RESULTS}/models/{wildcards.predictor}/ood.npz"] if wildcards.predictor in OOD_MODELS else []


def model_file(wildcards):
    stored = predictor_file(wildcards.predictor)
    return [f"{RESULTS}/models/{wildcards.predictor}/{stored}"] if stored else []


# Slurm: a job that needs a GPU asks for one and goes to the GPU partition, every other to the CPU one
TRAINING_GPUS = 0 if config["training"]["device"] == "cpu" else 1
SIMULATION_GPUS = 1 if config["simulation"]["device"] == "gpu" else 0


def partition(gpus):
    return config["partitions"]["gpu" if gpus else "cpu"]


def experiment_mem_mb(wildcards):
    """The experiment-like transform streams blocks of scan rows from its clean source."""
    simulation = simulation_settings(config)
    source = SIMULATED[EXPERIMENT_LIKE[wildcards.dataset]["clean"]]
    scan_step = source["supercell"][0] * PSEUDOCUBIC_ANGSTROM / simulation.scan_px
    detector = settings_from_json(ExperimentSettings, EXPERIMENT_LIKE[wildcards.dataset]["detector"])
    return experiment_memory_mb(detector, (simulation.scan_px, simulation.scan_px), simulation.detector_px, scan_step)


def simulation_mem_mb(wildcards):
    return estimated_memory_mb(simulation_settings(config), SIMULATED[wildcards.dataset]["supercell"][0])


# the paper's Tables 1-3, beside the workflow whatever folder the study runs in
PAPER_TABLES = str(Path(workflow.basedir) / "resources" / "paper_tables.csv")
# how this study's scale differs from the paper's (256 px patterns cropped to 64, 128x128 scans),
# in the header of the reproduction table
SIMULATION = simulation_settings(config)
REPRODUCTION_SCALE = (
    f"study {STUDY}: {SIMULATION.detector_px} px patterns cropped to {config['preprocessing']['crop_px']} px, "
    f"{SIMULATION.scan_px}x{SIMULATION.scan_px} scans, seeds {', '.join(map(str, config['seeds']))}, "
    f"at most {max(run.get('max_epochs', config['training']['max_epochs']) for run in config['training']['runs'])} epochs"
)


def reproduction_modes(input):
    """--faithful and --corrected: this study's summary in its mode, the other study's in the other."""
    other_mode = "corrected" if config["mode"] == "faithful" else "faithful"
    modes = {config["mode"]: input.summary} | ({other_mode: input.other[0]} if input.other else {})
    return " ".join(f"--{mode} {shlex.quote(str(path))}" for mode, path in modes.items())


def all_outputs():
    return (
        expand(f"{RESULTS}/structures/{{dataset}}.xyz", dataset=STRUCTURES)
        + expand(f"{RESULTS}/qstem/{{dataset}}/{{dataset}}.qsc", dataset=STRUCTURES)
        + expand(f"{RESULTS}/preprocessed/{{dataset}}.h5", dataset=DATASETS)
        + expand(
            f"{RESULTS}/splits/base/{{configuration}}_seed{{seed}}.npz",
            configuration=config["preprocessing"]["configurations"],
            seed=config["seeds"],
        )
        + expand(f"{RESULTS}/models/{{model}}/model.pt", model=TRAINING_JOBS)
        + (
            expand(
                f"{RESULTS}/models/{PCA_KNN_PATTERN}/model.npz",
                configuration=config["preprocessing"]["configurations"],
                seed=config["seeds"],
            )
            if config["training"]["pca_knn"]["enabled"]
            else []
        )
        + [
            f"{RESULTS}/datasets/summary.tsv",
            f"{RESULTS}/preprocessed/filter_counts.tsv",
            f"{RESULTS}/tables/summary.tsv",
            f"{RESULTS}/tables/leakage.md",
        ]
        + expand(f"{RESULTS}/figures/{{kind}}_{{configuration}}.png", kind=["distributions", "maps"], configuration=TABLE_CONFIGURATIONS)
        + expand(f"{RESULTS}/virtual/{{dataset}}.npz", dataset=VIRTUAL_SETS)
        + expand(f"{RESULTS}/figures/cells/{{dataset}}.png", dataset=LATTICE_SETS)
        + expand(f"{RESULTS}/figures/sweep_{{sweep}}.png", sweep=SWEEPS)
        + expand(f"{RESULTS}/figures/com_and_accuracy_{{sweep}}.png", sweep=THICKNESS_SWEEPS)
        + [f"{RESULTS}/figures/com_field.png"]
        + ([f"{RESULTS}/figures/training_curves.png"] if TRAINING_JOBS else [])
        + expand(f"{RESULTS}/maps/{{dataset}}/{{predictor}}/map.png", dataset=EXPERIMENTAL, predictor=MAP_MODELS)
        + ([f"{RESULTS}/tables/modes.md"] if config["evaluation"]["compare_with"] else [])
        + [f"{RESULTS}/tables/reproduction.md"]
        + ([f"{RESULTS}/tables/defect_localisation.tsv", f"{RESULTS}/dft/displacements.tsv"] if DEFECT else [])
    )
