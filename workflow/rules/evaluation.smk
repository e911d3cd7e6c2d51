rule calibrate_ood:
    """A model's out-of-distribution score and its threshold on its held-out training patterns."""
    input:
        unpack(lambda wildcards: training_inputs(wildcards.predictor)),
        model=model_file,
    output:
        ood=f"{RESULTS}/models/{{predictor}}/ood.npz",
        record=f"{RESULTS}/models/{{predictor}}/ood.record.json",
    log:
        f"{RESULTS}/logs/calibrate_ood/{{predictor}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/calibrate_ood/{{predictor}}.tsv"
    conda:
        "../../envs/ml.yaml"
    resources:
        slurm_partition=partition(0),
    params:
        quantile=config["evaluation"]["ood"]["quantile"],
    shell:
        "OMP_NUM_THREADS=1 polarmap calibrate-ood {input.model:q} {input.preprocessed:q} --split {input.split:q} "
        "--quantile {params.quantile:q} --out {output.ood:q} > {log:q} 2>&1"


rule map_experimental:
    """A declared experimental set mapped as `polarmap map` maps a file: read at its own
    calibration, resampled to the model's sampling, oriented, predicted with the model's
    out-of-distribution threshold; classes and arrows per cell over the ADF, CoM field; the
    per-cell map of the lattice found in the scan, a vector in pm per cell (cells.csv), with the
    unit-cell model's answer for each cell found; and the specimen's thickness from its PACBED, a
    model trained at none near it flagged."""
    input:
        acquisition=lambda wildcards: EXPERIMENTAL[wildcards.dataset]["path"],
        model=model_file,
        ood=ood_file,
        pacbed=rules.pacbed_library.output[0],
        # the first seed's unit-cell model, where the study trains one, on the cells found
        unit_cell=[f"{RESULTS}/models/{name}/model.pt" for name in UNIT_CELL_MODELS[:1]],
    output:
        figure=report(
            f"{RESULTS}/maps/{{dataset}}/{{predictor}}/map.png",
            caption="../report/acquisition_map.rst",
            category="Evaluation",
            subcategory="Experimental maps",
        ),
        predictions=f"{RESULTS}/maps/{{dataset}}/{{predictor}}/predictions.npz",
        table=f"{RESULTS}/maps/{{dataset}}/{{predictor}}/predictions.tsv",
        provenance=f"{RESULTS}/maps/{{dataset}}/{{predictor}}/provenance.json",
        # one row per unit cell of the lattice found in the scan (the header alone where none is)
        cells=f"{RESULTS}/maps/{{dataset}}/{{predictor}}/cells.csv",
    log:
        f"{RESULTS}/logs/map_experimental/{{dataset}}/{{predictor}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/map_experimental/{{dataset}}/{{predictor}}.tsv"
    wildcard_constraints:
        dataset=one_of(EXPERIMENTAL),
    conda:
        "../../envs/ml.yaml"
    resources:
        slurm_partition=partition(0),
    params:
        job=experimental_settings,
        ood=lambda wildcards, input: f"--ood {input.ood}" if input.ood else "",
        unit_cell=lambda wildcards, input: f"--unit-cell-model {input.unit_cell}" if input.unit_cell else "",
        out=lambda wildcards, output: str(Path(output.figure).parent),
    shell:
        "OMP_NUM_THREADS=1 polarmap map {input.acquisition:q} --model {input.model:q} {params.ood} --pacbed {input.pacbed:q} {params.unit_cell} --settings {params.job:q} "
        "--workers {threads} --out {params.out:q} > {log:q} 2>&1"


rule predict:
    """One trained model (or PCA+kNN, or the CoM baseline) on every evaluation data set; with an
    out-of-distribution calibration, patterns beyond its threshold are unknown."""
    input:
        model=model_file,
        ood=ood_file,
        datasets=expand(f"{RESULTS}/preprocessed/{{dataset}}.h5", dataset=EVALUATED),
    output:
        grids=f"{RESULTS}/predictions/{{predictor}}.npz",
        metrics=f"{RESULTS}/predictions/{{predictor}}.json",
        record=f"{RESULTS}/predictions/{{predictor}}.record.json",
    log:
        f"{RESULTS}/logs/predict/{{predictor}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict/{{predictor}}.tsv"
    conda:
        "../../envs/ml.yaml"
    threads: 2
    resources:
        slurm_partition=partition(0),
    params:
        model=lambda wildcards, input: input.model or COM,
        ood=lambda wildcards, input: input.ood or "",
    shell:
        "OMP_NUM_THREADS={threads} polarmap predict-many {params.model:q} {input.datasets:q} --ood={params.ood:q} "
        "--out {output.grids:q} --metrics {output.metrics:q} > {log:q} 2>&1"


rule audit:
    """Leakage audit: every evaluated set (and the clean source of each experiment-like set)
    against every training set, and each split's synthetic-test part against its training part."""
    input:
        training_raw=expand(f"{RESULTS}/datasets/{{dataset}}.h5", dataset=FILTERED),
        training=expand(f"{RESULTS}/preprocessed/{{dataset}}.h5", dataset=FILTERED),
        evaluated_raw=expand(f"{RESULTS}/datasets/{{dataset}}.h5", dataset=AUDITED),
        evaluated=expand(f"{RESULTS}/preprocessed/{{dataset}}.h5", dataset=AUDITED),
        splits=AUDITED_SPLITS,
    output:
        markdown=report(
            f"{RESULTS}/tables/leakage.md",
            caption="../report/leakage.rst",
            category="Evaluation",
            subcategory="Tables",
            labels={"table": "Leakage audit"},
        ),
        csv=f"{RESULTS}/tables/leakage.csv",
        record=f"{RESULTS}/tables/leakage.record.json",
    log:
        f"{RESULTS}/logs/audit.log",
    benchmark:
        f"{RESULTS}/benchmarks/audit.tsv"
    localrule: True
    conda:
        "../../envs/ml.yaml"
    params:
        roles=[ROLES[name] for name in AUDITED],
        sample=config["evaluation"]["audit_sample_patterns"],
    shell:
        "polarmap audit --training-raw {input.training_raw:q} --training {input.training:q} --evaluated-raw {input.evaluated_raw:q} "
        "--evaluated {input.evaluated:q} --roles {params.roles:q} --splits {input.splits:q} --sample {params.sample:q} "
        "--out-md {output.markdown:q} --out-csv {output.csv:q} > {log:q} 2>&1"


rule tables:
    """Per-pattern results pooled into results.tsv, the per-family summary, and Tables 1-3, with
    every set that the audit finds not independent of training marked."""
    input:
        metrics=expand(f"{RESULTS}/predictions/{{predictor}}.json", predictor=PREDICTORS + CELL_PREDICTORS),
        records=expand(f"{RESULTS}/models/{{model}}/record.json", model=list(TRAINING_JOBS) + PCA_KNN + UNIT_CELL_MODELS),
        leakage=rules.audit.output.csv,
    output:
        results=report(f"{RESULTS}/tables/results.tsv", caption="../report/results.rst", category="Evaluation", subcategory="Tables"),
        summary=report(f"{RESULTS}/tables/summary.tsv", caption="../report/summary.rst", category="Evaluation", subcategory="Tables"),
        markdown=[
            report(
                f"{RESULTS}/tables/table_{c}.md",
                caption="../report/table.rst",
                category="Evaluation",
                subcategory="Tables",
                labels={"table": f"Table {TABLE_NUMBERS[c]}", "configuration": c},
            )
            for c in TABLE_CONFIGURATIONS
        ],
        other_formats=expand(
            f"{RESULTS}/tables/table_{{configuration}}.{{suffix}}", configuration=TABLE_CONFIGURATIONS, suffix=["csv", "tex"]
        ),
        cells=report(
            f"{RESULTS}/tables/table_cells.md",
            caption="../report/table_cells.rst",
            category="Evaluation",
            subcategory="Tables",
            labels={"table": "Per unit cell"},
        ),
        cells_other_formats=expand(f"{RESULTS}/tables/table_cells.{{suffix}}", suffix=["csv", "tex"]),
        regimes=[
            report(
                f"{RESULTS}/tables/table_regimes.md",
                caption="../report/regimes.rst",
                category="Evaluation",
                subcategory="Tables",
                labels={"table": "Training regimes"},
            )
        ]
        * REGIME_TABLE,
        regimes_other_formats=expand(f"{RESULTS}/tables/table_regimes.{{suffix}}", suffix=["csv", "tex"] * REGIME_TABLE),
        record=f"{RESULTS}/tables/tables.record.json",
    log:
        f"{RESULTS}/logs/tables.log",
    localrule: True
    conda:
        "../../envs/ml.yaml"
    params:
        out_dir=lambda wildcards, output: Path(output.results).parent,
        mode=config["mode"],
    shell:
        "polarmap tables {input.metrics:q} --records {input.records:q} --leakage {input.leakage:q} --mode {params.mode:q} "
        "--out-dir {params.out_dir:q} > {log:q} 2>&1"


rule compare_modes:
    """This study's numbers beside the other mode's (evaluation.compare_with)."""
    input:
        summary=f"{RESULTS}/tables/summary.tsv",
        other=f"{config['evaluation']['compare_with']}/tables/summary.tsv",
    output:
        table=report(f"{RESULTS}/tables/modes.md", caption="../report/modes.rst", category="Evaluation", subcategory="Tables"),
        record=f"{RESULTS}/tables/modes.record.json",
    log:
        f"{RESULTS}/logs/compare_modes.log",
    localrule: True
    conda:
        "../../envs/ml.yaml"
    shell:
        "polarmap compare-modes {input.summary:q} {input.other:q} --out {output.table:q} > {log:q} 2>&1"


rule reproduction:
    """The paper's Tables 1-3 beside this study's numbers and, with evaluation.compare_with, the
    other mode's: a verdict per cell."""
    input:
        paper=PAPER_TABLES,
        summary=f"{RESULTS}/tables/summary.tsv",
        other=[f"{config['evaluation']['compare_with']}/tables/summary.tsv"] if config["evaluation"]["compare_with"] else [],
    output:
        table=report(f"{RESULTS}/tables/reproduction.md", caption="../report/reproduction.rst", category="Evaluation", subcategory="Tables"),
        csv=f"{RESULTS}/tables/reproduction.csv",
        tex=f"{RESULTS}/tables/reproduction.tex",
        record=f"{RESULTS}/tables/reproduction.record.json",
    log:
        f"{RESULTS}/logs/reproduction.log",
    localrule: True
    conda:
        "../../envs/ml.yaml"
    params:
        modes=lambda wildcards, input: reproduction_modes(input),
        scale=REPRODUCTION_SCALE,
        out_dir=lambda wildcards, output: Path(output.table).parent,
    shell:
        "polarmap reproduction --paper {input.paper:q} {params.modes} --scale {params.scale:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule figure_distributions:
    """Fig. 3/4: predicted class fractions per data set and model, mean and std over seeds."""
    input:
        f"{RESULTS}/tables/results.tsv",
    output:
        png=report(
            f"{RESULTS}/figures/distributions_{{configuration}}.png",
            caption="../report/distributions.rst",
            category="Evaluation",
            subcategory="Prediction distributions",
            labels={"configuration": "{configuration}"},
        ),
        pdf=f"{RESULTS}/figures/distributions_{{configuration}}.pdf",
        record=f"{RESULTS}/figures/distributions_{{configuration}}.record.json",
    log:
        f"{RESULTS}/logs/figures/distributions_{{configuration}}.log",
    localrule: True
    conda:
        "../../envs/ml.yaml"
    params:
        out=lambda wildcards, output: output.png.removesuffix(".png"),
    shell:
        "polarmap figure distributions {input:q} --configuration {wildcards.configuration:q} --out {params.out:q} > {log:q} 2>&1"


rule figure_maps:
    """Fig. 5/6: class maps on the scan grid, majority vote over the seeds that learned."""
    input:
        predictions=lambda wildcards: expand(f"{RESULTS}/predictions/{{predictor}}.npz", predictor=predictors_of(wildcards.configuration)),
        results=f"{RESULTS}/tables/results.tsv",
    output:
        png=report(
            f"{RESULTS}/figures/maps_{{configuration}}.png",
            caption="../report/maps.rst",
            category="Evaluation",
            subcategory="Class maps",
            labels={"configuration": "{configuration}"},
        ),
        pdf=f"{RESULTS}/figures/maps_{{configuration}}.pdf",
        record=f"{RESULTS}/figures/maps_{{configuration}}.record.json",
    log:
        f"{RESULTS}/logs/figures/maps_{{configuration}}.log",
    localrule: True
    conda:
        "../../envs/ml.yaml"
    params:
        out=lambda wildcards, output: output.png.removesuffix(".png"),
    shell:
        "polarmap figure maps {input.predictions:q} --results {input.results:q} --configuration {wildcards.configuration:q} "
        "--out {params.out:q} > {log:q} 2>&1"


rule figure_com_field:
    """Fig. 7: the beam-shift field over one unit cell with the projected structure."""
    input:
        preprocessed=f"{RESULTS}/preprocessed/{COM_FIELD_DATASET}.h5",
        structure=f"{RESULTS}/structures/{COM_FIELD_DATASET}.xyz",
    output:
        png=report(f"{RESULTS}/figures/com_field.png", caption="../report/com_field.rst", category="Evaluation", subcategory="Physics"),
        pdf=f"{RESULTS}/figures/com_field.pdf",
        record=f"{RESULTS}/figures/com_field.record.json",
    log:
        f"{RESULTS}/logs/figures/com_field.log",
    localrule: True
    conda:
        "../../envs/ml.yaml"
    params:
        out=lambda wildcards, output: output.png.removesuffix(".png"),
    shell:
        "polarmap figure com-field {input.preprocessed:q} {input.structure:q} --out {params.out:q} > {log:q} 2>&1"


rule figure_sweep:
    """Accuracy against a swept domain-gap knob, per model."""
    input:
        f"{RESULTS}/tables/results.tsv",
    output:
        png=report(
            f"{RESULTS}/figures/sweep_{{sweep}}.png",
            caption="../report/sweep.rst",
            category="Evaluation",
            subcategory="Domain gap",
            labels={"sweep": "{sweep}"},
        ),
        pdf=f"{RESULTS}/figures/sweep_{{sweep}}.pdf",
        record=f"{RESULTS}/figures/sweep_{{sweep}}.record.json",
    log:
        f"{RESULTS}/logs/figures/sweep_{{sweep}}.log",
    localrule: True
    conda:
        "../../envs/ml.yaml"
    params:
        sweep=lambda wildcards: json.dumps(SWEEPS[wildcards.sweep]),
        out=lambda wildcards, output: output.png.removesuffix(".png"),
    shell:
        "polarmap figure sweep {input:q} --sweep {params.sweep:q} --out {params.out:q} > {log:q} 2>&1"


rule figure_thickness:
    """The CoM at the Nb column and the scan-mean CoM against thickness, beside each predictor's
    accuracy against thickness (issue 9)."""
    input:
        results=f"{RESULTS}/tables/results.tsv",
        preprocessed=lambda wildcards: [f"{RESULTS}/preprocessed/{p['dataset']}.h5" for p in SWEEPS[wildcards.sweep]["points"]],
        structures=lambda wildcards: [f"{RESULTS}/structures/{p['dataset']}.xyz" for p in SWEEPS[wildcards.sweep]["points"]],
    output:
        png=report(
            f"{RESULTS}/figures/com_and_accuracy_{{sweep}}.png",
            caption="../report/thickness.rst",
            category="Evaluation",
            subcategory="Domain gap",
            labels={"sweep": "{sweep}"},
        ),
        pdf=f"{RESULTS}/figures/com_and_accuracy_{{sweep}}.pdf",
        record=f"{RESULTS}/figures/com_and_accuracy_{{sweep}}.record.json",
    log:
        f"{RESULTS}/logs/figures/com_and_accuracy_{{sweep}}.log",
    localrule: True
    conda:
        "../../envs/ml.yaml"
    params:
        out=lambda wildcards, output: output.png.removesuffix(".png"),
    shell:
        "polarmap figure thickness {input.results:q} --preprocessed {input.preprocessed:q} --structures {input.structures:q} "
        "--out {params.out:q} > {log:q} 2>&1"


rule defect_study:
    """Fig. 8: defect maps per model and configuration, and how well the errors locate the vacancy."""
    input:
        predictions=expand(f"{RESULTS}/predictions/{{predictor}}.npz", predictor=PREDICTORS + CELL_PREDICTORS),
        dataset=f"{RESULTS}/preprocessed/defect.h5",
    output:
        table=report(f"{RESULTS}/tables/defect_localisation.tsv", caption="../report/defects.rst", category="Defect study"),
        png=report(f"{RESULTS}/figures/defect_maps.png", caption="../report/defects.rst", category="Defect study"),
        pdf=f"{RESULTS}/figures/defect_maps.pdf",
        record=f"{RESULTS}/tables/defect_localisation.record.json",
    log:
        f"{RESULTS}/logs/defect_study.log",
    localrule: True
    conda:
        "../../envs/ml.yaml"
    params:
        out=lambda wildcards, output: output.png.removesuffix(".png"),
    shell:
        "polarmap defect-study {input.predictions:q} --dataset {input.dataset:q} --out-table {output.table:q} --out-figure {params.out:q} > {log:q} 2>&1"
