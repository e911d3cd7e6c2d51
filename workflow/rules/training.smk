rule train:
    """One model: encoder x objective x preprocessing configuration x pretraining x seed. Sent to
    a GPU node by the cluster profile; resumes from its checkpoint when interrupted."""
    input:
        split=lambda wildcards: split_file(TRAINING_JOBS[wildcards.model]),
        preprocessed=lambda wildcards: expand(
            f"{RESULTS}/preprocessed/{{dataset}}.h5", dataset=TRAINING_SETS[TRAINING_JOBS[wildcards.model]["training_data"]]
        ),
        weights=imagenet_weights_input,
    output:
        model=f"{RESULTS}/models/{{model}}/model.pt",
        metrics=report(
            f"{RESULTS}/models/{{model}}/metrics.csv",
            caption="../report/training.rst",
            category="Training",
            labels=lambda wildcards: {
                key: str(TRAINING_JOBS[wildcards.model][key])
                for key in ("encoder", "objective", "configuration", "pretrained", "training_data", "augmentation_kind", "seed")
            },
        ),
        record=f"{RESULTS}/models/{{model}}/record.json",
    log:
        f"{RESULTS}/logs/train/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{model}}.tsv"
    conda:
        "../../envs/ml.yaml"
    threads: 2
    resources:
        gpu=TRAINING_GPUS,
        slurm_partition=partition(TRAINING_GPUS),
        mem_mb=8000,
        runtime=240,
    params:
        job=lambda wildcards: json.dumps(TRAINING_JOBS[wildcards.model], sort_keys=True),
        out_dir=lambda wildcards, output: Path(output.model).parent,
    shell:
        "OMP_NUM_THREADS={threads} TORCH_HOME=resources/torch polarmap train {input.preprocessed:q} --split {input.split:q} "
        "--settings {params.job:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule figure_training:
    """Validation accuracy against epoch of every trained model, one line per family: which
    converged on a plateau and which were stopped at their epoch cap."""
    input:
        metrics=expand(f"{RESULTS}/models/{{model}}/metrics.csv", model=TRAINING_JOBS),
        records=expand(f"{RESULTS}/models/{{model}}/record.json", model=TRAINING_JOBS),
    output:
        png=report(
            f"{RESULTS}/figures/training_curves.png",
            caption="../report/training_curves.rst",
            category="Training",
        ),
        pdf=f"{RESULTS}/figures/training_curves.pdf",
        record=f"{RESULTS}/figures/training_curves.record.json",
    log:
        f"{RESULTS}/logs/figures/training_curves.log",
    localrule: True
    conda:
        "../../envs/ml.yaml"
    params:
        out=lambda wildcards, output: output.png.removesuffix(".png"),
    shell:
        "polarmap figure training {input.metrics:q} --out {params.out:q} > {log:q} 2>&1"


rule imagenet_weights:
    """torchvision's ImageNet weights, fetched once and checked (offline: place the file by hand)."""
    output:
        "resources/torch/hub/checkpoints/{weights_file}",
    log:
        "resources/torch/fetch_{weights_file}.log",
    conda:
        "../../envs/ml.yaml"
    resources:
        slurm_partition=partition(0),
    params:
        encoder=lambda wildcards: wildcards.weights_file.split("-")[0],
    shell:
        "polarmap fetch-weights {params.encoder:q} --torch-home resources/torch > {log:q} 2>&1"


rule train_pca_knn:
    """PCA + kNN for one configuration and seed, saved as arrays."""
    input:
        split=f"{RESULTS}/splits/base/{{configuration}}_seed{{seed}}.npz",
        preprocessed=expand(f"{RESULTS}/preprocessed/{{dataset}}.h5", dataset=TRAINING_SETS["base"]),
    output:
        model=f"{RESULTS}/models/{PCA_KNN_PATTERN}/model.npz",
        record=f"{RESULTS}/models/{PCA_KNN_PATTERN}/record.json",
    log:
        f"{RESULTS}/logs/train_pca_knn/{{configuration}}_seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_pca_knn/{{configuration}}_seed{{seed}}.tsv"
    conda:
        "../../envs/ml.yaml"
    resources:
        slurm_partition=partition(0),
    params:
        job=lambda wildcards: json.dumps(pca_knn_job_settings(config, wildcards.configuration, int(wildcards.seed)), sort_keys=True),
    shell:
        "polarmap train-pca-knn {input.preprocessed:q} --split {input.split:q} --settings {params.job:q} "
        "--out {output.model:q} --record {output.record:q} > {log:q} 2>&1"
