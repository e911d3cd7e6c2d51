rule virtual_images:
    """ADF, BF, ABF, the CoM field, iDPC and dDPC of one data set, from its raw patterns."""
    input:
        f"{RESULTS}/datasets/{{dataset}}.h5",
    output:
        images=f"{RESULTS}/virtual/{{dataset}}.npz",
        png=report(
            f"{RESULTS}/figures/virtual/{{dataset}}.png",
            caption="../report/virtual_images.rst",
            category="Virtual images",
            labels={"data set": "{dataset}"},
        ),
        pdf=f"{RESULTS}/figures/virtual/{{dataset}}.pdf",
    log:
        f"{RESULTS}/logs/virtual_images/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/virtual_images/{{dataset}}.tsv"
    conda:
        "../../envs/ml.yaml"
    resources:
        slurm_partition=partition(0),
    params:
        adf=config["evaluation"]["adf_mrad"],
        figure=lambda wildcards, output: output.png.removesuffix(".png"),
    shell:
        "polarmap virtual-images {input:q} --out {output.images:q} --adf-mrad {params.adf:q} --figure {params.figure:q} > {log:q} 2>&1"


rule train_unit_cell:
    """The position-aware model of one seed: whole unit cells (virtual ADF and CoM field) of every
    training set, validated on held-out crystals."""
    input:
        training=expand(f"{RESULTS}/virtual/{{dataset}}.npz", dataset=UNIT_CELL_TRAINING),
        validation=expand(f"{RESULTS}/virtual/{{dataset}}.npz", dataset=UNIT_CELL_VALIDATION),
    output:
        model=f"{RESULTS}/models/{UNIT_CELL_PATTERN}/model.pt",
        record=f"{RESULTS}/models/{UNIT_CELL_PATTERN}/record.json",
    log:
        f"{RESULTS}/logs/train_unit_cell/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_unit_cell/seed{{seed}}.tsv"
    conda:
        "../../envs/ml.yaml"
    threads: 2
    resources:
        slurm_partition=partition(0),
    params:
        settings=lambda wildcards: json.dumps(
            {**{k: v for k, v in config["training"]["unit_cell"].items() if k != "enabled"}, "seed": int(wildcards.seed)}
        ),
    shell:
        "OMP_NUM_THREADS={threads} polarmap train-unit-cell --train {input.training:q} --validate {input.validation:q} "
        "--settings {params.settings:q} --out {output.model:q} --record {output.record:q} > {log:q} 2>&1"


rule predict_unit_cell:
    """A unit-cell model on every evaluated set whose unit cells are known."""
    input:
        model=f"{RESULTS}/models/{{unit_cell_model}}/model.pt",
        virtual=expand(f"{RESULTS}/virtual/{{dataset}}.npz", dataset=LATTICE_SETS),
    output:
        grids=f"{RESULTS}/predictions/{{unit_cell_model}}.npz",
        metrics=f"{RESULTS}/predictions/{{unit_cell_model}}.json",
        record=f"{RESULTS}/predictions/{{unit_cell_model}}.record.json",
    log:
        f"{RESULTS}/logs/predict/{{unit_cell_model}}.log",
    conda:
        "../../envs/ml.yaml"
    resources:
        slurm_partition=partition(0),
    shell:
        "OMP_NUM_THREADS=1 polarmap predict-cells {input.model:q} {input.virtual:q} --out {output.grids:q} --metrics {output.metrics:q} > {log:q} 2>&1"


rule column_fit:
    """Column fitting as a predictor: the Nb displacement of every unit cell in one kind of
    virtual image, on every evaluated set whose lattice is known; on the known supercell, or on
    the lattice found in the image as `polarmap map` finds it in a real scan."""
    input:
        expand(f"{RESULTS}/virtual/{{dataset}}.npz", dataset=LATTICE_SETS),
    output:
        grids=f"{RESULTS}/predictions/{{column_fit}}.npz",
        metrics=f"{RESULTS}/predictions/{{column_fit}}.json",
        record=f"{RESULTS}/predictions/{{column_fit}}.record.json",
    log:
        f"{RESULTS}/logs/column_fit/{{column_fit}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/column_fit/{{column_fit}}.tsv"
    localrule: True
    conda:
        "../../envs/ml.yaml"
    resources:
        slurm_partition=partition(0),
    shell:
        "polarmap predict-cells {wildcards.column_fit} {input:q} --out {output.grids:q} --metrics {output.metrics:q} > {log:q} 2>&1"


rule figure_cells:
    """Polarization arrows per unit cell on the virtual ADF image and accuracy against the probe
    position in the cell, one column per predictor family."""
    input:
        virtual=f"{RESULTS}/virtual/{{dataset}}.npz",
        predictions=expand(f"{RESULTS}/predictions/{{predictor}}.npz", predictor=PREDICTORS + CELL_PREDICTORS),
        metrics=expand(f"{RESULTS}/predictions/{{predictor}}.json", predictor=PREDICTORS + CELL_PREDICTORS),
        results=f"{RESULTS}/tables/results.tsv",
    output:
        png=report(
            f"{RESULTS}/figures/cells/{{dataset}}.png",
            caption="../report/cells.rst",
            category="Evaluation",
            subcategory="Per unit cell",
            labels={"data set": "{dataset}"},
        ),
        pdf=f"{RESULTS}/figures/cells/{{dataset}}.pdf",
        record=f"{RESULTS}/figures/cells/{{dataset}}.record.json",
    log:
        f"{RESULTS}/logs/figures/cells_{{dataset}}.log",
    localrule: True
    conda:
        "../../envs/ml.yaml"
    params:
        out=lambda wildcards, output: output.png.removesuffix(".png"),
    shell:
        "polarmap figure cells {input.predictions:q} --virtual {input.virtual:q} --metrics {input.metrics:q} --dataset {wildcards.dataset:q} "
        "--results {input.results:q} --out {params.out:q} > {log:q} 2>&1"
