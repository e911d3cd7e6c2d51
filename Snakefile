# polarmap: ML polarization mapping in KNN from 4D-STEM, end to end.
#   snakemake --cores 2                                  the default (small) study
#   snakemake --cores 2 --configfile workflow/presets/paper.yaml   paper scale
import sys
from pathlib import Path

from snakemake.utils import min_version, validate

from polarmap.config import read_yaml, validate_config

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


# with --sdm apptainer every job runs in this image (envs/apptainer.def)
if config.get("container"):

    container: config["container"]


include: "workflow/rules/common.smk"
include: "workflow/rules/structures.smk"
include: "workflow/rules/simulation.smk"
include: "workflow/rules/experiment.smk"
include: "workflow/rules/preprocessing.smk"
include: "workflow/rules/dft.smk"
include: "workflow/rules/training.smk"
include: "workflow/rules/evaluation.smk"
include: "workflow/rules/imaging.smk"


# Cheap jobs (seconds, little memory) run where snakemake runs instead of waiting in a cluster
# queue; everything else is submitted.
localrules:
    all,
    structure,
    qstem_inputs,
    defect_structure,
    dataset_summary,
    filter_counts,
    split,
    tables,
    audit,
    compare_modes,
    reproduction,
    figure_distributions,
    figure_maps,
    figure_com_field,
    figure_sweep,
    figure_thickness,
    figure_cells,
    figure_training,
    column_fit,
    defect_study,


rule all:
    default_target: True
    input:
        all_outputs(),
