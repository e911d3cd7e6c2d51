"""Study configuration: YAML validated against the schema, defaults filled in, and the
per-data-set settings every stage derives from it (the Snakefile and the CLI share these)."""

from dataclasses import fields
from pathlib import Path

import jsonschema
import yaml

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
    validator = _with_defaults(jsonschema.Draft7Validator)(schema)
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


def simulated_datasets(config: dict) -> dict[str, dict]:
    """Every simulated data set: name -> {polarization (None for the reference), supercell,
    classes accepted as correct, role}."""
    sets = {}
    training = config["datasets"]["training"]
    for name in training["classes"]:
        sets[f"train_{name}"] = {"polarization": name, "supercell": training["supercell"], "classes": [name], "role": "training"}
    for name, test in config["datasets"]["tests"].items():
        accepted = test.get("accepted") or [test["polarization"]]
        sets[name] = {"polarization": test["polarization"], "supercell": test["supercell"], "classes": accepted, "role": "test"}
    reference = config["datasets"]["reference"]
    sets["reference"] = {"polarization": None, "supercell": reference["supercell"], "classes": [], "role": "reference"}
    return sets


def dataset_job_settings(config: dict, name: str) -> dict:
    """The part of the config that one data set's structure and simulation depend on; a change
    anywhere else does not rerun it."""
    sets = simulated_datasets(config)
    if name not in sets:
        raise ValueError(f"unknown data set {name!r}; the config defines {', '.join(sets)}")
    return {"name": name, "dataset": sets[name], "structure": config["structure"], "simulation": config["simulation"]}
