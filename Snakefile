# polarmap: ML polarization mapping in KNN from 4D-STEM, end to end.
#   snakemake --cores 2                                  the default (small) study
#   snakemake --cores 2 --configfile workflow/presets/paper.yaml   paper scale
import sys
from pathlib import Path

from snakemake.utils import min_version, validate

from polarmap.config import other_mode_study, read_yaml, validate_config

min_version("9.0")

# Snakemake's own message on a config file that is not YAML names no file: read it first
if Path("config.yaml").exists():
    try:
        read_yaml("config.yaml")
    except ValueError as err:
        sys.exit(f"polarmap: config: {err}")


configfile: "config.yaml"


# One line naming the key and the fix, before any job runs (Snakemake's own message on a bad key
# holds the whole schema); then Snakemake's validation, which then passes. Each config file is read
# again strictly: Snakemake's YAML reading keeps the last of a key given twice.
try:
    for path in workflow.configfiles:
        read_yaml(path)
    validate_config(config, "config")
except ValueError as err:
    sys.exit(f"polarmap: {err}")
validate(config, "workflow/schemas/config.schema.yaml")


# evaluation.both_modes: the same study in the other mode, run by this very workflow as a module
# with its own results folder (its rules prefixed other_mode_); its summary is this study's
# comparison. The module's config has both_modes off, so it includes no third study.
if config["evaluation"]["both_modes"]:
    OTHER_MODE = other_mode_study(config)
    config["evaluation"]["compare_with"] = f"results/{OTHER_MODE['study']}"

    module other_mode:
        snakefile:
            "Snakefile"
        config:
            OTHER_MODE

    # what lies outside a study's folder (pseudopotentials, ImageNet weights) is shared: one
    # rule fetches it
    use rule * from other_mode exclude pseudopotentials, imagenet_weights, all as other_mode_*


# with --sdm apptainer every job runs in this image (envs/apptainer.def)
if config.get("container"):

    container: config["container"]


# Cheap jobs (seconds, little memory) are `localrule: True`: they run where snakemake runs instead
# of waiting in a cluster queue (per rule, so that the other mode's module keeps it); everything
# else is submitted.
include: "workflow/rules/common.smk"
include: "workflow/rules/structures.smk"
include: "workflow/rules/simulation.smk"
include: "workflow/rules/experiment.smk"
include: "workflow/rules/preprocessing.smk"
include: "workflow/rules/dft.smk"
include: "workflow/rules/training.smk"
include: "workflow/rules/evaluation.smk"
include: "workflow/rules/imaging.smk"


rule all:
    default_target: True
    input:
        all_outputs(),
    localrule: True
