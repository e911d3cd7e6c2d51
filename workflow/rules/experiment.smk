rule experiment_like:
    """Detector and scan effects (dose, noise, blur, source size, jitter, descan, background) on
    a clean simulation: labelled stand-ins for experimental data."""
    input:
        lambda wildcards: f"{RESULTS}/datasets/{EXPERIMENT_LIKE[wildcards.dataset]['clean']}.h5",
    output:
        f"{RESULTS}/datasets/{{dataset}}.h5",
    log:
        f"{RESULTS}/logs/experiment_like/{{dataset}}.log",
    wildcard_constraints:
        dataset=one_of(EXPERIMENT_LIKE),
    conda:
        "../../envs/preprocessing.yaml"
    resources:
        slurm_partition=partition(0),
        mem_mb=experiment_mem_mb,
    params:
        job=experiment_settings,
    shell:
        "polarmap experiment-like --settings {params.job:q} --source {input:q} --out {output:q} > {log:q} 2>&1"


rule import_experimental:
    """A real acquisition declared in the config, read into the HDF5 format."""
    input:
        lambda wildcards: EXPERIMENTAL[wildcards.dataset]["path"],
    output:
        f"{RESULTS}/datasets/{{dataset}}.h5",
    log:
        f"{RESULTS}/logs/import_experimental/{{dataset}}.log",
    wildcard_constraints:
        dataset=one_of(EXPERIMENTAL),
    conda:
        "../../envs/preprocessing.yaml"
    resources:
        slurm_partition=partition(0),
    params:
        job=experimental_settings,
    shell:
        "polarmap import --settings {params.job:q} --out {output:q} > {log:q} 2>&1"
