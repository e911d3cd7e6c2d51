"""Study configuration: YAML validated against the schema, defaults filled in, and the
per-data-set settings every stage derives from it (the Snakefile and the CLI share these)."""

from dataclasses import fields
from pathlib import Path

import jsonschema
import yaml

from polarmap.simulation import SimulationSettings
from polarmap.structures import StructureSettings

SCHEMA_FILE = Path(__file__).with_name("data") / "config.schema.yaml"


def settings_from_json(cls, values: dict):
    """A frozen settings dataclass from the config or a record, where ranges arrive as lists."""
    return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in values.items()})


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
    return config


def load_config(path: str | Path) -> dict:
    path = Path(path)
    try:
        with open(path) as f:
            config = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such config file") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})".replace("\n", " ")) from None
    return validate_config(config, str(path))


def structure_settings(config: dict) -> StructureSettings:
    return StructureSettings(**config["structure"])


def simulation_settings(config: dict) -> SimulationSettings:
    names = {f.name for f in fields(SimulationSettings)}
    return SimulationSettings(**{k: v for k, v in config["simulation"].items() if k in names})


def _experiment_like_entries(config: dict) -> dict[str, dict]:
    """Declared experiment-like sets plus one per swept value (named <sweep>_<value>), each with
    the name of its clean simulated source: its own, or its base's when only a detector knob
    varies (no re-simulation)."""
    sets = {name: {**_copy(entry), "clean": f"{name}_clean"} for name, entry in config["datasets"]["experiment_like"].items()}
    for sweep, spec in config["datasets"]["sweeps"].items():
        if spec["base"] not in config["datasets"]["experiment_like"]:
            raise ValueError(f"config: datasets.sweeps.{sweep}.base {spec['base']!r} is not an experiment_like set")
        for value in spec["values"]:
            name = f"{sweep}_{value:g}"
            entry = {**_copy(config["datasets"]["experiment_like"][spec["base"]]), "clean": f"{spec['base']}_clean"}
            if spec["knob"] == "thickness_cells":
                entry["supercell"][2], entry["clean"] = int(value), f"{name}_clean"
            else:
                entry["detector"][spec["knob"]] = value
            sets[name] = entry
    return sets


def simulated_datasets(config: dict) -> dict[str, dict]:
    """Every simulated data set: name -> {polarization (None for the reference), supercell,
    mistilt_mrad, classes accepted as correct, role}."""
    sets = {}
    training = config["datasets"]["training"]
    for name in training["classes"]:
        sets[f"train_{name}"] = {"polarization": name, "supercell": training["supercell"], "mistilt_mrad": [0, 0], "classes": [name], "role": "training"}
    for name, test in config["datasets"]["tests"].items():
        accepted = test.get("accepted") or [test["polarization"]]
        sets[name] = {"polarization": test["polarization"], "supercell": test["supercell"], "mistilt_mrad": test["mistilt_mrad"], "classes": accepted, "role": "test"}
    for entry in _experiment_like_entries(config).values():
        accepted = entry["accepted"] or [entry["polarization"]]
        sets[entry["clean"]] = {"polarization": entry["polarization"], "supercell": entry["supercell"], "mistilt_mrad": entry["mistilt_mrad"], "classes": accepted, "role": "clean_source"}
    defect = config["datasets"]["defect"]
    if defect["enabled"]:
        sets["defect"] = {"polarization": defect["polarization"], "supercell": defect["supercell"], "mistilt_mrad": [0, 0], "classes": [defect["polarization"]], "role": "defect"}
    reference = config["datasets"]["reference"]
    sets["reference"] = {"polarization": None, "supercell": reference["supercell"], "mistilt_mrad": [0, 0], "classes": [], "role": "reference"}
    return sets


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
        base = config["datasets"]["experiment_like"][spec["base"]]
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
    roles = {name: role for group in groups for name, role in group.items()}
    if len(roles) != sum(map(len, groups)):
        raise ValueError("config: data set names must be unique across training, tests, experiment_like, sweeps and experimental")
    return roles


def dataset_job_settings(config: dict, name: str) -> dict:
    """The part of the config that one data set's structure and simulation depend on; a change
    anywhere else does not rerun it."""
    sets = simulated_datasets(config)
    if name not in sets:
        raise ValueError(f"unknown data set {name!r}; the config defines {', '.join(sets)}")
    return {"name": name, "dataset": sets[name], "structure": config["structure"], "simulation": config["simulation"]}


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
    return {
        "name": name, "training": roles[name] == "training", "mode": config["mode"],
        "crop_px": settings["crop_px"], "threshold_percentile": settings["threshold_percentile"],
        "rows_per_block": settings["rows_per_block"],
    }


def split_job_settings(config: dict, configuration: str, seed: int) -> dict:
    settings = config["preprocessing"]
    return {
        "configuration": configuration, "seed": seed, "stratified": config["mode"] == "corrected",
        "fractions": settings["split_fractions"], "pca_fractions": settings["pca_split_fractions"],
    }


def training_jobs(config: dict) -> dict[str, dict]:
    """Every model to train: '<encoder>-<objective>-<configuration>-<pretrained>-seed<seed>' ->
    its TrainSettings fields."""
    training = config["training"]
    faithful = config["mode"] == "faithful"
    jobs = {}
    for run in training["runs"]:
        for encoder in run["encoders"]:
            pretrained_axis = ["scratch"] if encoder == "conv" else run.get("pretrained", training["pretrained"])
            for objective in run["objectives"]:
                for configuration in run.get("configurations", config["preprocessing"]["configurations"]):
                    for pretrained in pretrained_axis:
                        for seed in run.get("seeds", config["seeds"]):
                            name = f"{encoder}-{objective}-{configuration}-{pretrained}-seed{seed}"
                            jobs[name] = {
                                "encoder": encoder, "objective": objective, "configuration": configuration,
                                "pretrained": pretrained, "seed": seed, "mode": config["mode"],
                                "lr": training["lr"], "batch_size": training["batch_size"],
                                "weight_decay": training["weight_decay"] if training["weight_decay"] is not None else (1e-4 if faithful else 0.0),
                                "max_epochs": run.get("max_epochs", training["max_epochs"]), "patience": training["patience"],
                                "device": training["device"],
                                "standardize_inputs": training["standardize_inputs"] if training["standardize_inputs"] is not None else not faithful,
                                "augmentation": config["preprocessing"]["augmentation"],
                                "compile": training["compile"],
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
