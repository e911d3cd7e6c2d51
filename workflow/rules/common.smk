import json

from polarmap.config import dataset_job_settings, simulated_datasets, validate_config

# Snakemake's validate() above reports the first bad key; this fills every nested default
# exactly as the `polarmap` command line does, so both see the same settings.
validate_config(config, "config")

STUDY = config["study"]
RESULTS = f"results/{STUDY}"
DATASETS = simulated_datasets(config)
SIMULATED = [name for name, d in DATASETS.items() if d["role"] != "reference" or config["datasets"]["reference"]["simulate"]]


wildcard_constraints:
    dataset="|".join(DATASETS),


def job_settings(wildcards):
    """The settings one data set's jobs depend on, as JSON: a change reruns exactly those jobs."""
    return json.dumps(dataset_job_settings(config, wildcards.dataset), sort_keys=True)


def simulation_mem_mb(wildcards):
    """Peak memory grows with the S-matrix (or wave batch): gpts^2 of the whole supercell."""
    sim = config["simulation"]
    cells = DATASETS[wildcards.dataset]["supercell"][0]
    gpts = sim["gpts_per_cell"] * cells
    return int(1000 + 2.5e-3 * gpts**2 * sim["rows_per_block"] * sim["scan_px"] / 64 + 4e-4 * gpts**2 * 200)


def all_outputs():
    return (
        expand(f"{RESULTS}/structures/{{dataset}}.xyz", dataset=DATASETS)
        + expand(f"{RESULTS}/qstem/{{dataset}}/{{dataset}}.qsc", dataset=DATASETS)
        + expand(f"{RESULTS}/datasets/{{dataset}}.h5", dataset=SIMULATED)
        + [f"{RESULTS}/datasets/summary.tsv"]
    )
