rule predict:
    """One trained model (or PCA+kNN, or the CoM baseline) on every evaluation data set."""
    input:
        model=model_file,
        datasets=expand(f"{RESULTS}/preprocessed/{{dataset}}.h5", dataset=EVALUATED),
    output:
        grids=f"{RESULTS}/predictions/{{predictor}}.npz",
        metrics=f"{RESULTS}/predictions/{{predictor}}.json",
    params:
        model=lambda wildcards, input: input.model or "com",
    threads: 2
    log:
        f"{RESULTS}/logs/predict/{{predictor}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict/{{predictor}}.tsv"
    conda:
        "../../envs/ml.yaml"
    shell:
        "OMP_NUM_THREADS={threads} polarmap predict-many {params.model} {input.datasets} "
        "--out {output.grids} --metrics {output.metrics} > {log} 2>&1"


rule accuracy_table:
    """Accuracy of every model family on every evaluation set, mean +- std over seeds."""
    input:
        expand(f"{RESULTS}/predictions/{{predictor}}.json", predictor=PREDICTORS),
    output:
        report(
            f"{RESULTS}/tables/accuracy.tsv",
            caption="../report/accuracy.rst",
            category="Evaluation",
        ),
    log:
        f"{RESULTS}/logs/accuracy_table.log",
    conda:
        "../../envs/ml.yaml"
    shell:
        "polarmap accuracy-table {input} --out {output} > {log} 2>&1"
