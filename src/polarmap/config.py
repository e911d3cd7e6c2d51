"""Study configuration: YAML validated against the schema, defaults filled in, and the
per-data-set settings every stage derives from it (the Snakefile and the CLI share these)."""

import ast
import copy
from dataclasses import fields
from itertools import product
from pathlib import Path

import jsonschema
import numpy as np
import yaml

from polarmap.predictors import neural_name
from polarmap.provenance import settings_from_json
from polarmap.preprocessing import CONFIGURATIONS
from polarmap.seeds import derived_seed, name_key
from polarmap.splits import split_fractions_problem
from polarmap.quantities import RANGES, check_quantity
from polarmap.simulation import SimulationSettings
from polarmap.structures import StructureSettings

SCHEMA_FILE = Path(__file__).with_name("data") / "config.schema.yaml"


def _with_defaults(validator_class):
    """A validator that fills in each property's default before validating it."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = _copy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _copy(value):
    return yaml.safe_load(yaml.safe_dump(value))


def validate_config(config: dict, source: str = "config") -> dict:
    """Fill defaults in place and fail with one line naming the offending key."""
    with open(SCHEMA_FILE) as f:
        schema = yaml.safe_load(f)
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ValueError(f"{source}: invalid value for '{key}': {error.message}")
    _check_numbers(config, source)
    _resolve_mode_defaults(config)
    _check_consistency(config, source)
    return config


def _check_numbers(node, source: str, keys: tuple = ()) -> None:
    """No NaN or infinity anywhere (the schema's bounds let NaN through), and every physical
    quantity within what a microscope gives (polarmap.quantities; 0 where it means "not given")."""
    if isinstance(node, dict):
        for key, value in node.items():
            _check_numbers(value, source, (*keys, str(key)))
    elif isinstance(node, list):
        for number, value in enumerate(node):
            _check_numbers(value, source, (*keys, str(number)))
    elif isinstance(node, float) and not np.isfinite(node):
        raise ValueError(f"{source}: invalid value for '{'.'.join(keys)}': {node} is not a finite number")
    elif keys and keys[-1] in RANGES and node:
        check_quantity(keys[-1], node, f"{source}: invalid value for '{'.'.join(keys)}'")


def registered_encoders() -> list[str]:
    """The encoders `polarmap.models` registers (`@register(ENCODERS, "<name>")`), in its order,
    read from its source rather than imported: importing it imports torch (seconds), and the config
    is checked at every Snakemake parse and in every cluster job. So a new encoder is added in
    models.py alone."""
    tree = ast.parse((Path(__file__).parent / "models.py").read_text())
    return [decorator.args[1].value for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))
            for decorator in node.decorator_list
            if isinstance(decorator, ast.Call) and getattr(decorator.func, "id", "") == "register"
            and getattr(decorator.args[0], "id", "") == "ENCODERS"]


def _check_consistency(config: dict, source: str) -> None:
    """What the schema cannot say alone, checked before any job runs rather than after the
    simulations: settings that must agree with each other."""
    encoders = registered_encoders()
    for number, run in enumerate(config["training"]["runs"]):
        for name in run["encoders"]:
            if name not in encoders:
                raise ValueError(f"{source}: invalid value for 'training.runs.{number}.encoders': {name!r} is not a registered encoder "
                                 f"({', '.join(encoders)}); register it in polarmap.models")
    preprocessing = config["preprocessing"]
    detector_px = simulation_settings(config).detector_px
    if preprocessing["crop_px"] > detector_px:
        raise ValueError(f"{source}: preprocessing.crop_px {preprocessing['crop_px']} is larger than the simulated "
                         f"{detector_px}x{detector_px} px patterns; use at most {detector_px} (or raise simulation.gpts_per_cell)")
    for key in ("split_fractions", "pca_split_fractions"):
        if problem := split_fractions_problem(preprocessing[key]):
            raise ValueError(f"{source}: preprocessing.{key} {preprocessing[key]} {problem}")
    for name, declared in config["datasets"]["experimental"].items():
        if (declared["scan_rotation_deg"] is None) != (declared["scan_flip"] is None):
            raise ValueError(f"{source}: datasets.experimental.{name}: give scan_rotation_deg and scan_flip together, or neither "
                             "(then both are found from the data)")
    if config["evaluation"]["both_modes"] and config["evaluation"]["compare_with"]:
        raise ValueError(f"{source}: evaluation.both_modes runs the other mode itself: leave evaluation.compare_with empty, "
                         "or set both_modes: false to compare with a study run before")
    training = config["datasets"]["training"]
    if config["training"]["unit_cell"]["enabled"] and training["crystals"] < 2 and not training["variants"]:
        raise ValueError(f"{source}: training.unit_cell needs held-out crystals to validate on: set datasets.training.crystals "
                         "to 2 or more, or declare datasets.training.variants, or set training.unit_cell.enabled: false")
    dataset_roles(config)


# What `null` means, per mode. The crystal of each data set: in `corrected` every set is its own
# disordered, vibrating crystal scanned from its own origin; `faithful` keeps the published cells.
# The optimiser: `faithful` is the published code's (Adam 2e-4, batches of 128, weight decay 1e-4,
# raw inputs); `corrected` the one chosen on the validation part (docs/training.md). At 1e-3
# without standardised inputs the published Conv classifier never leaves chance (loss ln 8 until
# early stopping ends it at epoch 10); at 2e-4 in batches of 128 it learns (65 % validation
# accuracy at epoch 39).
MODE_DEFAULTS = {
    "corrected": {"structure": {"a_site_order": "random"}, "simulation": {"frozen_phonon_configs": 2, "scan_origin": "random"},
                  "training": {"lr": 1e-3, "batch_size": 64, "weight_decay": 0.0, "standardize_inputs": True}},
    "faithful": {"structure": {"a_site_order": "ordered"}, "simulation": {"frozen_phonon_configs": 0, "scan_origin": "zero"},
                 "training": {"lr": 2e-4, "batch_size": 128, "weight_decay": 1e-4, "standardize_inputs": False}},
}


def _resolve_mode_defaults(config: dict) -> None:
    for section, values in MODE_DEFAULTS[config["mode"]].items():
        for key, value in values.items():
            if config[section][key] is None:
                config[section][key] = value


def other_mode_study(config: dict) -> dict:
    """The config of the same study in the other mode (evaluation.both_modes), from this study's
    config, given or validated: its own results folder, no third study of its own, and the other
    mode's own crystals (the keys of MODE_DEFAULTS reset, whatever this study set them to or its
    mode filled in: faithful's published cells are static and ordered, and its optimiser the
    published one)."""
    other = copy.deepcopy(config)
    other["mode"] = "faithful" if config.get("mode", "corrected") == "corrected" else "corrected"
    for section, values in MODE_DEFAULTS[other["mode"]].items():
        other[section] = {**other.get(section, {}), **dict.fromkeys(values)}
    other["study"] = f"{config.get('study', 'default')}_{other['mode']}"
    other["evaluation"] = {**other.get("evaluation", {}), "both_modes": False, "compare_with": ""}
    return other


def dataset_seed(name: str, base: int) -> int:
    """A data set's own seed: from a base seed and the set's name, so that every set is a crystal
    of its own and the same name and base give the same crystal."""
    return derived_seed(base, name_key(name))


class _StrictLoader(yaml.SafeLoader):
    """YAML as the spec says it: a key given twice in one mapping is an error, not "the last wins"."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1}); keep one",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path) -> dict:
    """A config file: one YAML mapping, no key twice."""
    path = Path(path)
    try:
        with open(path) as f:
            config = yaml.load(f, Loader=_StrictLoader)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a folder, not a config file") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file; a config is YAML") from None
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err)
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ValueError(f"{path}: not valid YAML{where}: {problem}".replace("\n", " ")) from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ValueError(f"{path}: holds a YAML {type(config).__name__}, not a mapping of keys (study:, simulation:, ...)")
    return config


def merge_config(base: dict, over: dict) -> dict:
    """`over` merged over `base` as Snakemake merges a --configfile over the Snakefile's
    configfile: mappings key by key, everything else (lists too) replaced."""
    merged = dict(base)
    for key, value in over.items():
        merged[key] = merge_config(merged.get(key) or {}, value) if isinstance(value, dict) else value
    return merged


def load_config(path: str | Path, base: str | Path | None = None) -> dict:
    """A study config, merged over `base` (the workflow's config.yaml) where given, validated."""
    config = read_yaml(path)
    if base is not None:
        config = merge_config(read_yaml(base), config)
    return validate_config(config, str(path))


def structure_settings(config: dict) -> StructureSettings:
    return StructureSettings(**config["structure"])


def simulation_settings(config: dict) -> SimulationSettings:
    names = {f.name for f in fields(SimulationSettings)}
    return settings_from_json(SimulationSettings, {k: v for k, v in config["simulation"].items() if k in names})


def _experiment_like_entries(config: dict) -> dict[str, dict]:
    """Declared experiment-like sets plus one per swept value (named <sweep>_<value>), each with
    the name of its clean simulated source: its own, or its base's when only a detector knob
    varies (no re-simulation)."""
    sets = {name: {**_copy(entry), "clean": f"{name}_clean"} for name, entry in config["datasets"]["experiment_like"].items()}
    for sweep, spec in config["datasets"]["sweeps"].items():
        if _sweeps_a_test_set(config, sweep, spec):
            continue
        for value in spec["values"]:
            name = f"{sweep}_{value:g}"
            entry = {**_copy(config["datasets"]["experiment_like"][spec["base"]]), "clean": f"{spec['base']}_clean"}
            if spec["knob"] == "thickness_cells":
                entry["supercell"][2], entry["clean"] = int(value), f"{name}_clean"
            else:
                entry["detector"][spec["knob"]] = value
            sets[name] = entry
    return sets


def _sweeps_a_test_set(config: dict, sweep: str, spec: dict) -> bool:
    """True for a thickness sweep of a clean test set (its points are test sets), False for a
    sweep of an experiment-like set; an error for anything else."""
    if spec["base"] in config["datasets"]["experiment_like"]:
        return False
    if spec["base"] in config["datasets"]["tests"]:
        if spec["knob"] != "thickness_cells":
            raise ValueError(f"config: datasets.sweeps.{sweep}: a tests set is clean, so only thickness_cells can be swept on it; "
                             f"sweep {spec['knob']} on an experiment_like set")
        return True
    raise ValueError(f"config: datasets.sweeps.{sweep}.base {spec['base']!r} is neither an experiment_like nor a tests set")


def simulated_datasets(config: dict) -> dict[str, dict]:
    """Every simulated data set: name -> {polarization (None for the reference), supercell,
    mistilt_mrad, classes accepted as correct, role}; training variants also carry their
    frozen-phonon settings under "simulation"."""
    sets = {}
    training = config["datasets"]["training"]
    for crystal in _crystal_suffixes(config):
        for name in training["classes"]:
            _add(sets, f"train_{name}{crystal}", {"polarization": name, "supercell": training["supercell"], "mistilt_mrad": [0, 0], "classes": [name], "role": "training"})
    for variant, spec in training["variants"].items():
        supercell = [*training["supercell"][:2], spec["thickness_cells"] or training["supercell"][2]]
        phonons = {"frozen_phonon_seed": spec["frozen_phonon_seed"]}
        if spec["frozen_phonon_configs"] is not None:
            phonons["frozen_phonon_configs"] = spec["frozen_phonon_configs"]
        for name in training["classes"]:
            _add(sets, f"train_{name}_{variant}", {"polarization": name, "supercell": supercell, "mistilt_mrad": spec["mistilt_mrad"],
                                                   "classes": [name], "role": "training_variant", "simulation": phonons})
    for name, test in config["datasets"]["tests"].items():
        accepted = test.get("accepted") or [test["polarization"]]
        _add(sets, name, {"polarization": test["polarization"], "supercell": test["supercell"], "mistilt_mrad": test["mistilt_mrad"], "classes": accepted, "role": "test"})
    for sweep, spec in config["datasets"]["sweeps"].items():
        if _sweeps_a_test_set(config, sweep, spec):
            for value in spec["values"]:
                _add(sets, f"{sweep}_{value:g}", {**_copy(sets[spec["base"]]), "supercell": [*sets[spec["base"]]["supercell"][:2], int(value)]})
    for entry in _experiment_like_entries(config).values():
        accepted = entry["accepted"] or [entry["polarization"]]
        _add(sets, entry["clean"], {"polarization": entry["polarization"], "supercell": entry["supercell"], "mistilt_mrad": entry["mistilt_mrad"],
                                    "classes": accepted, "role": "clean_source"})
    defect = config["datasets"]["defect"]
    if defect["enabled"]:
        _add(sets, "defect", {"polarization": defect["polarization"], "supercell": defect["supercell"], "mistilt_mrad": [0, 0], "classes": [defect["polarization"]], "role": "defect"})
    reference = config["datasets"]["reference"]
    _add(sets, "reference", {"polarization": None, "supercell": reference["supercell"], "mistilt_mrad": [0, 0], "classes": [], "role": "reference"})
    return sets


def _add(sets: dict, name: str, entry: dict) -> None:
    """One more data set; a name used twice for different sets is an error naming it."""
    if sets.get(name, entry) != entry:
        raise ValueError(f"config: data set name {name!r} used twice ({sets[name]['role']} and {entry['role']}); "
                         "names must be unique across training, tests, experiment_like, sweeps and experimental")
    sets[name] = entry


def experiment_like_datasets(config: dict) -> dict[str, dict]:
    """name -> {clean (the simulated source's name), detector settings, classes}."""
    return {
        name: {"clean": entry["clean"], "detector": entry["detector"], "classes": entry["accepted"] or [entry["polarization"]]}
        for name, entry in _experiment_like_entries(config).items()
    }


def sweep_points(config: dict) -> dict[str, dict]:
    """Each sweep: its knob and the (data set, value) points, the base set's own value first."""
    sweeps = {}
    for sweep, spec in config["datasets"]["sweeps"].items():
        base = config["datasets"]["tests" if _sweeps_a_test_set(config, sweep, spec) else "experiment_like"][spec["base"]]
        base_value = base["supercell"][2] if spec["knob"] == "thickness_cells" else base["detector"].get(spec["knob"])
        points = [{"dataset": spec["base"], "value": base_value}] if base_value is not None else []
        points += [{"dataset": f"{sweep}_{value:g}", "value": value} for value in spec["values"]]
        sweeps[sweep] = {"knob": spec["knob"], "points": points}
    return sweeps


def dataset_roles(config: dict) -> dict[str, str]:
    """Every data set of the study (simulated, experiment-like, experimental) -> its role."""
    groups = [
        {name: d["role"] for name, d in simulated_datasets(config).items()},
        dict.fromkeys(experiment_like_datasets(config), "experiment_like"),
        dict.fromkeys(config["datasets"]["experimental"], "experimental"),
    ]
    roles, clashes = {}, []
    for group in groups:
        clashes += [name for name in group if name in roles]
        roles.update(group)
    if clashes:
        raise ValueError(f"config: data set name{'s' * (len(clashes) > 1)} {', '.join(sorted(set(clashes)))} used twice; "
                         "names must be unique across training, tests, experiment_like, sweeps and experimental")
    return roles


def dataset_job_settings(config: dict, name: str) -> dict:
    """The part of the config that one data set's structure and simulation depend on; a change
    anywhere else does not rerun it."""
    sets = simulated_datasets(config)
    if name not in sets:
        raise ValueError(f"unknown data set {name!r}; the config defines {', '.join(sets)}")
    dataset = dict(sets[name])
    simulation = {**config["simulation"], **dataset.pop("simulation", {})}
    seed = dataset_seed(name, simulation["frozen_phonon_seed"])
    origin = np.random.default_rng(seed).random(2) if simulation.pop("scan_origin") == "random" else np.zeros(2)
    simulation.update(frozen_phonon_seed=seed, scan_origin_steps=[round(float(v), 6) for v in origin])
    structure = {**config["structure"], "a_site_seed": dataset_seed(name, config["structure"]["a_site_seed"])}
    return {"name": name, "dataset": dataset, "structure": structure, "simulation": simulation}


def pacbed_library_job_settings(config: dict) -> dict:
    """What the study's PACBED library depends on: the probe, the detector sampling, the crystal
    and the library's own keys (not the data sets' seeds, scan origins or phonon counts)."""
    probe = ("energy_kev", "semiangle_mrad", "gpts_per_cell", "probe_window_cells", "slice_thickness_angstrom", "frozen_phonon_sigma_angstrom",
             "frozen_phonon_seed", "device")
    return {"simulation": {key: config["simulation"][key] for key in probe}, "structure": config["structure"],
            "library": config["evaluation"]["pacbed_library"]}


def experiment_job_settings(config: dict, name: str) -> dict:
    sets = experiment_like_datasets(config)
    if name not in sets:
        raise ValueError(f"unknown experiment-like data set {name!r}; the config defines {', '.join(sets) or 'none'}")
    return {"name": name, **sets[name]}


def experimental_job_settings(config: dict, name: str) -> dict:
    sets = config["datasets"]["experimental"]
    if name not in sets:
        raise ValueError(f"unknown experimental data set {name!r}; the config defines {', '.join(sets) or 'none'}")
    return {"name": name, **sets[name]}


def preprocess_job_settings(config: dict, name: str) -> dict:
    roles = dataset_roles(config)
    if name not in roles:
        raise ValueError(f"unknown data set {name!r}")
    settings = config["preprocessing"]
    job = {
        "name": name, "training": roles[name] in ("training", "training_variant"), "mode": config["mode"],
        "crop_px": settings["crop_px"], "threshold_percentile": settings["threshold_percentile"],
        "rows_per_block": settings["rows_per_block"],
    }
    if roles[name] == "experimental":  # resampled to the simulations' sampling, oriented as declared or found
        declared = config["datasets"]["experimental"][name]
        job.update(mrad_per_px=study_sampling_mrad_per_px(config), rotation_deg=declared["scan_rotation_deg"], flip=declared["scan_flip"])
    return job


def study_sampling_mrad_per_px(config: dict) -> float:
    """The angular sampling of every simulated pattern of a study (the models' sampling)."""
    from polarmap.simulation import detector_mrad_per_px
    from polarmap.structures import load_lattice

    return detector_mrad_per_px(load_lattice(structure_settings(config)).a_pc, simulation_settings(config))


def _crystal_suffixes(config: dict) -> list[str]:
    """Name suffixes of a class's independent training crystals: "", "_crystal2", ..."""
    return [""] + [f"_crystal{j}" for j in range(2, config["datasets"]["training"]["crystals"] + 1)]


def training_set_names(config: dict, training_data: str) -> list[str]:
    """The sets a model trains on: every crystal of each class, and (diverse) every variant too."""
    training = config["datasets"]["training"]
    if training_data == "diverse" and not training["variants"]:
        raise ValueError("config: training_data 'diverse' needs datasets.training.variants (e.g. {t50nm: {thickness_cells: 125}})")
    suffixes = _crystal_suffixes(config) + [f"_{variant}" for variant in training["variants"]] * (training_data == "diverse")
    return [f"train_{name}{suffix}" for suffix in suffixes for name in training["classes"]]


def split_job_settings(config: dict, configuration: str, seed: int, training_data: str = "base") -> dict:
    settings = config["preprocessing"]
    return {
        "configuration": configuration, "seed": seed, "stratified": config["mode"] == "corrected",
        "fractions": settings["split_fractions"], "pca_fractions": settings["pca_split_fractions"],
        "block_cells": settings["split_block_cells"], "guard_px": settings["split_guard_px"],
        "training_data": training_data, "sets_per_class": len(training_set_names(config, training_data)) // len(config["datasets"]["training"]["classes"]),
    }


def training_jobs(config: dict) -> dict[str, dict]:
    """Every model to train (named by `polarmap.predictors.neural_name`) -> its TrainSettings fields and training data."""
    training = config["training"]
    jobs = {}
    for run in training["runs"]:
        for encoder in run["encoders"]:
            pretrained_axis = ["scratch"] if encoder == "conv" else run.get("pretrained", training["pretrained"])
            for objective, configuration, pretrained, seed, training_data, augmentation_kind in product(
                run["objectives"], run.get("configurations", config["preprocessing"]["configurations"]), pretrained_axis,
                run.get("seeds", config["seeds"]), run["training_data"], run["augmentations"],
            ):
                if not CONFIGURATIONS[configuration][0]:
                    augmentation_kind = "paper"  # this configuration does not augment: the axis does not apply
                training_set_names(config, training_data)  # fails early on diverse without variants
                name = neural_name(encoder, objective, configuration, pretrained, seed, training_data, augmentation_kind)
                jobs[name] = {
                    "encoder": encoder, "objective": objective, "configuration": configuration,
                    "pretrained": pretrained, "seed": seed, "mode": config["mode"],
                    "lr": training["lr"], "batch_size": training["batch_size"], "weight_decay": training["weight_decay"],
                    "max_epochs": run.get("max_epochs", training["max_epochs"]), "patience": run.get("patience", training["patience"]), "early_stopping": training["early_stopping"],
                    "device": training["device"],
                    "standardize_inputs": training["standardize_inputs"],
                    "augmentation": config["preprocessing"]["augmentation"],
                    "augmentation_kind": augmentation_kind,
                    "domain_randomisation": config["preprocessing"]["domain_randomisation"],
                    "compile": training["compile"], "training_data": training_data,
                }
    return jobs


def pca_knn_job_settings(config: dict, configuration: str, seed: int) -> dict:
    pca = config["training"]["pca_knn"]
    return {"configuration": configuration, "seed": seed, "mode": config["mode"], "components": pca["components"],
            "neighbors": pca["neighbors"], "augmentation": config["preprocessing"]["augmentation"]}


def dft_job_settings(config: dict) -> dict:
    """What the vacancy relaxation depends on (envmodules only say where pw.x comes from)."""
    dft = {k: v for k, v in config["datasets"]["defect"]["dft"].items() if k != "envmodules"}
    return {**dft, "polarization": config["datasets"]["defect"]["polarization"], "structure": config["structure"]}


def dft_settings(job: dict):
    from polarmap.dft import DftSettings

    fields = {k: v for k, v in job.items() if k not in ("structure",)}
    return settings_from_json(DftSettings, fields)


def defect_job_settings(config: dict) -> dict:
    defect = config["datasets"]["defect"]
    return {"supercell": defect["supercell"], "radius_angstrom": defect["radius_angstrom"], "dft": dft_job_settings(config)}
