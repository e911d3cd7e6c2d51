rule experiment_like:
    """Detector and scan effects (dose, noise, blur, source size, jitter, descan, background) on
    a clean simulation: labelled stand-ins for experimental data."""
    input:
        lambda wildcards: f"{RESULTS}/datasets/{EXPERIMENT_LIKE[wildcards.dataset]['clean']}.h5",
    output:
        f"{RESULTS}/datasets/{{dataset}}.h5",
    wildcard_constraints:
        dataset=one_of(EXPERIMENT_LIKE),
    params:
        job=experiment_settings,
    log:
        f"{RESULTS}/logs/experiment_like/{{dataset}}.log",
    conda:
        "../../envs/preprocessing.yaml"
    shell:
        "polarmap experiment-like --settings {params.job:q} --source {input} --out {output} > {log} 2>&1"


rule import_experimental:
    """A real acquisition declared in the config, read into the HDF5 format."""
    input:
        lambda wildcards: EXPERIMENTAL[wildcards.dataset]["path"],
    output:
        f"{RESULTS}/datasets/{{dataset}}.h5",
    wildcard_constraints:
        dataset=one_of(EXPERIMENTAL),
    params:
        job=experimental_settings,
    log:
        f"{RESULTS}/logs/import_experimental/{{dataset}}.log",
    conda:
        "../../envs/preprocessing.yaml"
    shell:
        "polarmap import --settings {params.job:q} --out {output} > {log} 2>&1"
