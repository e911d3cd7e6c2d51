rule preprocess:
    """CoM-centred crop, per-pattern min-max, beam shift and (training sets) the filter mask."""
    input:
        f"{RESULTS}/datasets/{{dataset}}.h5",
    output:
        data=f"{RESULTS}/preprocessed/{{dataset}}.h5",
        summary=f"{RESULTS}/preprocessed/{{dataset}}.json",
    log:
        f"{RESULTS}/logs/preprocess/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/preprocess/{{dataset}}.tsv"
    conda:
        "../../envs/preprocessing.yaml"
    resources:
        slurm_partition=partition(0),
    params:
        job=preprocess_settings,
    shell:
        "polarmap preprocess --settings {params.job:q} --source {input:q} --out {output.data:q} --summary {output.summary:q} > {log:q} 2>&1"


rule filter_counts:
    """Training patterns kept by the beam-shift filter, per class (the paper's D_t)."""
    input:
        expand(f"{RESULTS}/preprocessed/{{dataset}}.json", dataset=FILTERED),
    output:
        report(
            f"{RESULTS}/preprocessed/filter_counts.tsv",
            caption="../report/filter_counts.rst",
            category="Preprocessing",
        ),
    log:
        f"{RESULTS}/logs/filter_counts.log",
    localrule: True
    conda:
        "../../envs/preprocessing.yaml"
    shell:
        "polarmap filter-counts {input:q} --out {output:q} > {log:q} 2>&1"


rule split:
    """Train / validation / test (and PCA) assignment for one configuration and seed, of the base
    training sets or (diverse) of those and the nuisance variants."""
    input:
        lambda wildcards: expand(f"{RESULTS}/preprocessed/{{dataset}}.h5", dataset=TRAINING_SETS[wildcards.training_data]),
    output:
        f"{RESULTS}/splits/{{training_data}}/{{configuration}}_seed{{seed}}.npz",
    log:
        f"{RESULTS}/logs/split/{{training_data}}/{{configuration}}_seed{{seed}}.log",
    localrule: True
    conda:
        "../../envs/preprocessing.yaml"
    params:
        job=lambda wildcards: json.dumps(split_job_settings(config, wildcards.configuration, int(wildcards.seed), wildcards.training_data)),
    shell:
        "polarmap split {input:q} --settings {params.job:q} --out {output:q} > {log:q} 2>&1"
