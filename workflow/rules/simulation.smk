rule simulate:
    """4D-STEM simulation of one data set with abTEM, streamed to HDF5 in scan-row blocks."""
    input:
        structure=rules.structure.output.xyz,
    output:
        f"{RESULTS}/datasets/{{dataset}}.h5",
    log:
        f"{RESULTS}/logs/simulate/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/simulate/{{dataset}}.tsv"
    wildcard_constraints:
        dataset=one_of(SIMULATED),
    conda:
        "../../envs/simulation.yaml"
    threads: 1
    resources:
        mem_mb=simulation_mem_mb,
        runtime=120,
        gpu=SIMULATION_GPUS,
        slurm_partition=partition(SIMULATION_GPUS),
    params:
        job=job_settings,
    shell:
        "OMP_NUM_THREADS={threads} NUMBA_NUM_THREADS={threads} "
        "polarmap simulate --settings {params.job:q} --structure {input.structure:q} --out {output:q} > {log:q} 2>&1"


rule pacbed_library:
    """Position-averaged patterns over a thickness series at the study's probe and detector
    sampling (one multislice run, its wave kept every step): the experimental sets' thickness
    is read from their own PACBED against it."""
    output:
        f"{RESULTS}/pacbed/library.npz",
    log:
        f"{RESULTS}/logs/pacbed_library.log",
    benchmark:
        f"{RESULTS}/benchmarks/pacbed_library.tsv"
    conda:
        "../../envs/simulation.yaml"
    threads: 1
    resources:
        runtime=60,
        gpu=SIMULATION_GPUS,
        slurm_partition=partition(SIMULATION_GPUS),
    params:
        job=pacbed_library_settings,
    shell:
        "OMP_NUM_THREADS={threads} NUMBA_NUM_THREADS={threads} "
        "polarmap pacbed-library --settings {params.job:q} --out {output:q} > {log:q} 2>&1"


rule dataset_summary:
    """One line per data set: shape, thickness, classes, CoM of the scan-mean pattern."""
    input:
        expand(f"{RESULTS}/datasets/{{dataset}}.h5", dataset=DATASETS),
    output:
        report(
            f"{RESULTS}/datasets/summary.tsv",
            caption="../report/datasets.rst",
            category="Data sets",
        ),
    log:
        f"{RESULTS}/logs/dataset_summary.log",
    localrule: True
    conda:
        "../../envs/simulation.yaml"
    shell:
        "polarmap summary {input:q} --out {output:q} > {log:q} 2>&1"
