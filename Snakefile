# polarmap: ML polarization mapping in KNN from 4D-STEM, end to end.
#   snakemake --cores 2                                  the default (small) study
#   snakemake --cores 2 --configfile workflow/presets/paper.yaml   paper scale
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/structures.smk"
include: "workflow/rules/simulation.smk"
include: "workflow/rules/experiment.smk"
include: "workflow/rules/preprocessing.smk"
include: "workflow/rules/dft.smk"
include: "workflow/rules/training.smk"
include: "workflow/rules/evaluation.smk"


rule all:
    input:
        all_outputs(),
    default_target: True
